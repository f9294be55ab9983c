//! Operators and trust: the role matrix, token life, pending puppets,
//! credential rotation, and the audit trail (with no secret in any log).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Admin, RealPuppet, TestServer};
use geppetto_proto::client::Transport;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use geppetto_proto::v1::tokens_client::TokensClient;
use geppetto_proto::v1::users_client::UsersClient;
use geppetto_test_support::{wait_until, wait_until_async};
use http::uri::PathAndQuery;
use prost::Message;
use puppeteer::app::authz::PERMISSIONS;
use puppeteer::domain::Role;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(60);

/// Everything this test binary logs, at every level, from every crate.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Creates a user with a role and returns a token of theirs.
async fn user_with_role(server: &TestServer, name: &str, role: pb::Role) -> String {
    let channel = server.channel(Transport::Grpc, Some(&server.admin_token));
    UsersClient::new(channel.clone())
        .add_user(pb::AddUserRequest {
            name: name.into(),
            role: role as i32,
        })
        .await
        .unwrap();
    TokensClient::new(channel)
        .create_token(pb::CreateTokenRequest {
            user: name.into(),
            name: "test".into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

/// Every admin RPC, from the API's own descriptors.
fn admin_rpcs() -> Vec<(String, bool)> {
    let fds = prost_types::FileDescriptorSet::decode(geppetto_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut rpcs = Vec::new();
    for file in fds.file {
        for service in file.service {
            let name = service.name.unwrap();
            if name == "PuppetService" {
                continue;
            }
            for method in service.method {
                rpcs.push((
                    format!("{name}/{}", method.name.unwrap()),
                    method.server_streaming.unwrap_or(false),
                ));
            }
        }
    }
    rpcs
}

/// Calls an RPC with an empty request and returns the status code.
async fn call_empty(channel: &geppetto_proto::client::Channel, rpc: &str, streaming: bool) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = PathAndQuery::try_from(format!("/geppetto.v1.{rpc}")).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let request = tonic::Request::new(());
    if streaming {
        match grpc.server_streaming(request, path, codec).await {
            // An accepted stream may wait for news forever (WatchEvents):
            // no refusal within a moment means it was accepted.
            Ok(mut stream) => {
                match tokio::time::timeout(Duration::from_secs(2), stream.get_mut().message()).await
                {
                    Ok(Ok(_)) | Err(_) => Code::Ok,
                    Ok(Err(status)) => status.code(),
                }
            }
            Err(status) => status.code(),
        }
    } else {
        match grpc.unary(request, path, codec).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
}

#[tokio::test]
async fn every_admin_rpc_answers_each_role_as_documented() {
    let server = TestServer::start().await;
    let tokens = [
        (
            Role::Viewer,
            user_with_role(&server, "vera", pb::Role::Viewer).await,
        ),
        (
            Role::Operator,
            user_with_role(&server, "otto", pb::Role::Operator).await,
        ),
        (
            Role::Admin,
            user_with_role(&server, "ada", pb::Role::Admin).await,
        ),
    ];
    // One connection per role, reused by every call.
    let channels: Vec<(Role, geppetto_proto::client::Channel)> = tokens
        .iter()
        .map(|(role, token)| (*role, server.channel(Transport::Grpc, Some(token))))
        .collect();
    let rpcs = admin_rpcs();
    assert!(rpcs.len() >= 30, "{rpcs:?}");
    for (rpc, streaming) in &rpcs {
        let needed = PERMISSIONS
            .iter()
            .find(|(a, _)| a == rpc)
            .unwrap_or_else(|| panic!("{rpc} is missing from PERMISSIONS"))
            .1;
        for (role, channel) in &channels {
            let code = call_empty(channel, rpc, *streaming).await;
            if *role >= needed {
                assert_ne!(code, Code::PermissionDenied, "{rpc} as {role:?}");
                assert_ne!(code, Code::Unauthenticated, "{rpc} as {role:?}");
            } else {
                assert_eq!(code, Code::PermissionDenied, "{rpc} as {role:?}");
            }
        }
    }
    assert_eq!(
        PERMISSIONS.len(),
        rpcs.len(),
        "PERMISSIONS lists unknown RPCs"
    );
    server.stop().await;
}

#[tokio::test]
async fn roles_and_token_lifecycle() {
    let server = TestServer::start().await;
    let viewer = user_with_role(&server, "vera", pb::Role::Viewer).await;
    let operator = user_with_role(&server, "otto", pb::Role::Operator).await;
    let mut admin = server.admin();
    admin.script_task("t", "true", Duration::from_secs(5)).await;

    // A viewer cannot start a job.
    let mut as_viewer = Admin::new(server.channel(Transport::Grpc, Some(&viewer)));
    let err = as_viewer
        .jobs
        .create_job(pb::CreateJobRequest {
            task_name: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // An operator cannot create users.
    let err = UsersClient::new(server.channel(Transport::Grpc, Some(&operator)))
        .add_user(pb::AddUserRequest {
            name: "eve".into(),
            role: pb::Role::Admin as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let list_as = |token: String| {
        let channel = server.channel(Transport::Grpc, Some(&token));
        async move {
            Admin::new(channel)
                .tasks
                .list_tasks(pb::ListTasksRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }
    };
    // A revoked token is refused at once.
    let mut tokens = TokensClient::new(server.channel(Transport::Grpc, Some(&viewer)));
    let mine = tokens
        .create_token(pb::CreateTokenRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list_as(mine.secret.clone()).await, Ok(()));
    tokens
        .revoke_token(pb::RevokeTokenRequest {
            id: mine.token.unwrap().id,
        })
        .await
        .unwrap();
    assert_eq!(list_as(mine.secret).await, Err(Code::Unauthenticated));

    // An expired token is refused.
    let short = tokens
        .create_token(pb::CreateTokenRequest {
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    wait_until_async("the short-lived token expired", DEADLINE, async || {
        list_as(short.clone()).await != Ok(())
    })
    .await;
    assert_eq!(list_as(short).await, Err(Code::Unauthenticated));

    // A removed user's tokens die with them.
    assert_eq!(list_as(operator.clone()).await, Ok(()));
    UsersClient::new(server.channel(Transport::Grpc, Some(&server.admin_token)))
        .remove_user(pb::RemoveUserRequest {
            name: "otto".into(),
        })
        .await
        .unwrap();
    assert_eq!(list_as(operator).await, Err(Code::Unauthenticated));

    // A viewer cannot make a token for someone else; the last admin stays.
    let err = tokens
        .create_token(pb::CreateTokenRequest {
            user: "admin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = UsersClient::new(server.channel(Transport::Grpc, Some(&server.admin_token)))
        .remove_user(pb::RemoveUserRequest {
            name: "admin".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn a_pending_puppet_gets_work_only_after_approval() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin
        .tokens
        .create_enroll_token(pb::CreateEnrollTokenRequest::default())
        .await
        .unwrap()
        .into_inner()
        .secret;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "newcomer");
    admin.wait_polling("newcomer").await;
    let shown = admin
        .puppets
        .get_puppet(pb::GetPuppetRequest {
            name: "newcomer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.state, pb::PuppetState::Pending as i32);
    assert!(
        !shown.facts.unwrap().hostname.is_empty(),
        "its facts are visible"
    );

    admin
        .script_task("t", "echo approved", Duration::from_secs(30))
        .await;
    let job = admin.run_on("t", &["newcomer"]).await;
    // The job woke its held poll; it was answered with nothing and held again.
    admin.wait_polling("newcomer").await;
    let run = admin
        .runs
        .get_run(pb::GetRunRequest {
            id: job.runs[0].run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        run.state,
        pb::RunState::Queued as i32,
        "no work while pending"
    );

    admin
        .puppets
        .approve_puppet(pb::GetPuppetRequest {
            name: "newcomer".into(),
        })
        .await
        .unwrap();
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(admin.log(&job.runs[0].run_id).await, b"approved\n");
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_rotated_credential_is_picked_up_and_the_old_one_expires() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let credential_file = puppet.state_dir.path().join("state/credential");
    let old = std::fs::read_to_string(&credential_file)
        .unwrap()
        .trim()
        .to_string();

    admin
        .puppets
        .rotate_puppet_credential(pb::RotatePuppetCredentialRequest {
            name: "p1".into(),
            grace: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        })
        .await
        .unwrap();
    // The puppet picks it up on its next poll, with nothing done on its side.
    wait_until("the puppet stores its new credential", DEADLINE, || {
        std::fs::read_to_string(&credential_file).is_ok_and(|c| c.trim() != old)
    })
    .await;
    // Past the grace period the old credential is refused.
    let mut with_old = PuppetServiceClient::new(server.channel(Transport::GrpcWeb, Some(&old)));
    wait_until_async("the old credential is refused", DEADLINE, async || {
        let answer = with_old
            .poll(pb::PollRequest {
                free_slots: 0,
                hold: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
                ..Default::default()
            })
            .await;
        answer.is_err_and(|status| status.code() == Code::Unauthenticated)
    })
    .await;
    // The puppet keeps working with the new one.
    admin
        .script_task("t", "echo rotated", Duration::from_secs(30))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    let shown = admin
        .puppets
        .get_puppet(pb::GetPuppetRequest { name: "p1".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!shown.rotation_pending);

    // Revocation cuts it off at once.
    let new = std::fs::read_to_string(&credential_file)
        .unwrap()
        .trim()
        .to_string();
    admin
        .puppets
        .revoke_puppet_credential(pb::GetPuppetRequest { name: "p1".into() })
        .await
        .unwrap();
    let err = PuppetServiceClient::new(server.channel(Transport::GrpcWeb, Some(&new)))
        .poll(pb::PollRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_audit_trail_records_each_mutation_and_no_secret_leaks() {
    let logs = captured_logs();
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let mut secrets = vec![server.admin_token.clone()];

    let enroll = admin.enroll_secret().await;
    secrets.push(enroll.clone());
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &enroll, "p1");
    admin.wait_polling("p1").await;
    let credential =
        std::fs::read_to_string(puppet.state_dir.path().join("state/credential")).unwrap();
    secrets.push(credential.trim().to_string());
    admin
        .script_task("t", "echo audited", Duration::from_secs(30))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    admin.wait_job(&job.id, DEADLINE).await;
    // A refused attempt is recorded too.
    let viewer = user_with_role(&server, "vera", pb::Role::Viewer).await;
    secrets.push(viewer.clone());
    let mut as_viewer = Admin::new(server.channel(Transport::Grpc, Some(&viewer)));
    as_viewer
        .tasks
        .remove_task(pb::RemoveTaskRequest { name: "t".into() })
        .await
        .unwrap_err();
    admin
        .puppets
        .rotate_puppet_credential(pb::RotatePuppetCredentialRequest {
            name: "p1".into(),
            grace: None,
        })
        .await
        .unwrap();
    let credential_file = puppet.state_dir.path().join("state/credential");
    let old = credential.trim().to_string();
    wait_until("the rotated credential is stored", DEADLINE, || {
        std::fs::read_to_string(&credential_file).is_ok_and(|c| c.trim() != old)
    })
    .await;
    secrets.push(
        std::fs::read_to_string(&credential_file)
            .unwrap()
            .trim()
            .to_string(),
    );

    let entries = admin_audit(&server).await;
    let actions: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("admin", "EnrollTokens/CreateEnrollToken", "ok"),
            ("puppet:p1", "PuppetService/Enroll", "ok"),
            ("admin", "Tasks/CreateTask", "ok"),
            ("admin", "Jobs/CreateJob", "ok"),
            ("admin", "Users/AddUser", "ok"),
            ("admin", "Tokens/CreateToken", "ok"),
            ("vera", "Tasks/RemoveTask", "PermissionDenied"),
            ("admin", "Puppets/RotatePuppetCredential", "ok"),
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e.at.is_some() && e.remote_addr.starts_with("127.0.0.1:"))
    );
    assert!(entries[3].target.starts_with("job-"), "{:?}", entries[3]);
    puppet.stop().await;
    server.stop().await;

    let mut haystack = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    haystack.push_str(&format!("{entries:?}"));
    assert!(haystack.len() > 1000, "the logs were captured");
    for secret in &secrets {
        assert!(!secret.is_empty());
        assert!(
            !haystack.contains(secret.as_str()),
            "a secret leaked: {}…",
            &secret[..8]
        );
    }
}

async fn admin_audit(server: &TestServer) -> Vec<pb::AuditEntry> {
    geppetto_proto::v1::audit_client::AuditClient::new(
        server.channel(Transport::Grpc, Some(&server.admin_token)),
    )
    .list_audit(pb::ListAuditRequest::default())
    .await
    .unwrap()
    .into_inner()
    .entries
}

#[tokio::test]
async fn a_renewed_server_certificate_needs_nothing_from_puppets() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(5)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let tls = server.dir.path().join("data/tls");
    let before = std::fs::read(tls.join("server.pem")).unwrap();
    let ca_before = std::fs::read(tls.join("ca.pem")).unwrap();

    let TestServer {
        dir,
        running,
        store,
        ..
    } = server;
    let running = running.unwrap();
    let addr = running.addr;
    running.stop().await.unwrap();
    puppeteer::pki::renew_server_cert(&tls, &["localhost".into(), "127.0.0.1".into()]).unwrap();
    assert_ne!(std::fs::read(tls.join("server.pem")).unwrap(), before);
    assert_eq!(std::fs::read(tls.join("ca.pem")).unwrap(), ca_before);
    let mut config = puppeteer::Config::new(dir.path().join("data"), addr);
    config.store = store.clone();
    config.poll_timeout = Duration::from_secs(5);
    let running = puppeteer::start(config).await.unwrap();
    let server = TestServer {
        store,
        url: running.url(false),
        ca: running.ca_file.clone().unwrap(),
        admin_token: running.admin_token().unwrap(),
        running: Some(running),
        dir,
    };
    let mut admin = server.admin();
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo renewed", Duration::from_secs(30))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    puppet.stop().await;
    server.stop().await;
}

/// A webhook URL may hold credentials: only admins read it whole; other
/// roles, the logs and the errors see its scheme and host. An invalid one
/// is refused without repeating it (the refusal goes to the audit trail).
#[tokio::test]
async fn a_webhook_url_is_shown_whole_to_admins_only() {
    use geppetto_proto::v1::notifications_client::NotificationsClient;
    let server = TestServer::start().await;
    let secret_url = "https://bot:S3CRET-PASS@hooks.example.org/services/T0/XYZ-TOKEN";
    let admin_channel = server.channel(Transport::Grpc, Some(&server.admin_token));
    let mut as_admin = NotificationsClient::new(admin_channel);
    as_admin
        .add_rule(pb::AddRuleRequest {
            on: vec!["job.failed".into()],
            channel: Some(pb::add_rule_request::Channel::Webhook(secret_url.into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = as_admin
        .add_rule(pb::AddRuleRequest {
            on: vec!["job.failed".into()],
            channel: Some(pb::add_rule_request::Channel::Webhook(
                "ftp://bot:S3CRET-PASS@hooks.example.org/".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        !refused.message().contains("S3CRET"),
        "{}",
        refused.message()
    );

    let url_seen = |rules: pb::ListRulesResponse| match &rules.rules[0].channel {
        Some(pb::notification_rule::Channel::Webhook(url)) => url.clone(),
        other => panic!("{other:?}"),
    };
    let full = as_admin.list_rules(pb::ListRulesRequest {}).await.unwrap();
    assert_eq!(url_seen(full.into_inner()), secret_url);
    for (name, role) in [("vic", pb::Role::Viewer), ("otto", pb::Role::Operator)] {
        let token = user_with_role(&server, name, role).await;
        let mut client = NotificationsClient::new(server.channel(Transport::Grpc, Some(&token)));
        let seen = url_seen(
            client
                .list_rules(pb::ListRulesRequest {})
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(seen, "https://hooks.example.org/…", "{name}");
    }
    server.stop().await;
}
