//! Drives the whole agent against a small in-process fake puppeteer (plain
//! HTTP/2, no TLS) that redelivers its assignment on purpose, and can rotate
//! the puppet's credential.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use geppetto_proto::v1::puppet_service_server::{PuppetService, PuppetServiceServer};
use geppetto_proto::v1::*;
use geppetto_test_support::wait_until;
use puppet::{AgentConfig, Transport, run_agent};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Seen {
    polls: Vec<PollRequest>,
    deliveries: u32,
    starts: Vec<StartRunRequest>,
    log: Vec<u8>,
    finishes: Vec<FinishRunRequest>,
    /// The credential each acknowledged FinishRun carried.
    finish_credentials: Vec<String>,
    /// Set once a poll's answer carried the new credential: from then on only
    /// the new one is accepted.
    rotation_sent: bool,
    /// Calls refused for their credential.
    refused: u32,
}

#[derive(Clone, Default)]
struct Fake {
    // A std mutex: held only to record or read, never across an await.
    seen: Arc<Mutex<Seen>>,
    assignment: Option<Assignment>,
    /// Rotates the credential to this on the first poll.
    rotate_to: Option<&'static str>,
    /// Enrolls puppets as pending an operator's approval.
    pending: bool,
}

impl Fake {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// Checks the bearer credential; returns it.
    fn authorised<T>(&self, request: &Request<T>) -> Result<&'static str, Status> {
        let mut seen = self.seen();
        let expected = match self.rotate_to {
            Some(new) if seen.rotation_sent => new,
            _ => "cred-1",
        };
        match request.metadata().get("authorization") {
            Some(value) if value == format!("Bearer {expected}").as_str() => Ok(expected),
            _ => {
                seen.refused += 1;
                Err(Status::unauthenticated("bad credential"))
            }
        }
    }
}

#[tonic::async_trait]
impl PuppetService for Fake {
    type FetchArtifactStream = tonic::codegen::BoxStream<ArtifactChunk>;

    async fn fetch_artifact(
        &self,
        _request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        Err(Status::unimplemented("no artifacts here"))
    }

    async fn find_source(
        &self,
        _request: Request<geppetto_proto::v1::FindSourceRequest>,
    ) -> Result<Response<geppetto_proto::v1::ArtifactSource>, Status> {
        Err(Status::unimplemented("no artifacts here"))
    }

    async fn report_fetch(
        &self,
        _request: Request<geppetto_proto::v1::ReportFetchRequest>,
    ) -> Result<Response<geppetto_proto::v1::ReportFetchResponse>, Status> {
        Err(Status::unimplemented("no artifacts here"))
    }

    async fn check(
        &self,
        _request: Request<geppetto_proto::v1::CheckRequest>,
    ) -> Result<Response<geppetto_proto::v1::CheckResponse>, Status> {
        Err(Status::unimplemented("no upgrades here"))
    }

    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let request = request.into_inner();
        if request.enroll_token != "tok" {
            return Err(Status::permission_denied("unknown enrollment token"));
        }
        assert!(request.facts.is_some_and(|f| !f.arch.is_empty()));
        Ok(Response::new(EnrollResponse {
            name: request.name,
            credential: "cred-1".into(),
            approved: !self.pending,
            max_poll_hold: None,
        }))
    }

    async fn poll(&self, request: Request<PollRequest>) -> Result<Response<PollResponse>, Status> {
        let used = self.authorised(&request)?;
        let request = request.into_inner();
        // Sent on every poll, even after the puppet switched (as by a server
        // that has not recorded the switch yet): taking it again is harmless.
        let new_credential = self.rotate_to.unwrap_or_default();
        let deliver = {
            let mut seen = self.seen();
            seen.polls.push(request);
            seen.rotation_sent |= self.rotate_to.is_some();
            // With a rotation, work goes only to a puppet that switched.
            let switched = self.rotate_to.is_none_or(|new| new == used);
            // The same assignment goes out on the first three polls, as
            // after lost answers: the agent reports a quick run before it
            // polls again, so the later ones arrive after its finish.
            let deliver = switched && seen.deliveries < 3;
            if deliver {
                seen.deliveries += 1;
            }
            deliver
        };
        let assignments = match (&self.assignment, deliver) {
            (Some(assignment), true) => vec![assignment.clone()],
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Vec::new()
            }
        };
        Ok(Response::new(PollResponse {
            assignments,
            cancel_runs: Vec::new(),
            server_time: None,
            hold: None,
            new_credential: new_credential.into(),
        }))
    }

    async fn start_run(
        &self,
        request: Request<StartRunRequest>,
    ) -> Result<Response<StartRunResponse>, Status> {
        self.authorised(&request)?;
        self.seen().starts.push(request.into_inner());
        Ok(Response::new(StartRunResponse { proceed: true }))
    }

    async fn append_log(
        &self,
        request: Request<AppendLogRequest>,
    ) -> Result<Response<AppendLogResponse>, Status> {
        self.authorised(&request)?;
        let request = request.into_inner();
        let mut seen = self.seen();
        let held = seen.log.len() as u64;
        if request.offset > held {
            return Err(Status::failed_precondition(format!(
                "gap: the log holds {held} bytes"
            )));
        }
        let skip = (held - request.offset) as usize;
        if skip < request.data.len() {
            seen.log.extend_from_slice(&request.data[skip..]);
        }
        Ok(Response::new(AppendLogResponse {
            committed: seen.log.len() as u64,
        }))
    }

    async fn finish_run(
        &self,
        request: Request<FinishRunRequest>,
    ) -> Result<Response<FinishRunResponse>, Status> {
        let used = self.authorised(&request)?;
        let request = request.into_inner();
        let mut seen = self.seen();
        if request.log_length != seen.log.len() as u64 {
            return Err(Status::failed_precondition("the log is short"));
        }
        seen.finishes.push(request);
        seen.finish_credentials.push(used.to_string());
        Ok(Response::new(FinishRunResponse {
            state: RunState::Succeeded as i32,
        }))
    }
}

async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            // Like the puppeteer, it takes the puppet's gzip-compressed log chunks.
            .add_service(
                PuppetServiceServer::new(fake)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(incoming),
    );
    format!("http://{addr}")
}

fn config(server: String, state_dir: &std::path::Path) -> AgentConfig {
    let mut config = AgentConfig::new(server, state_dir);
    config.name = "test-puppet".into();
    config.transport = Transport::Grpc;
    config.enroll_token = Some("tok".into());
    config.poll_hold = Some(Duration::from_secs(1));
    config
}

/// How long the agent may take to do what a test waits for.
const DEADLINE: Duration = Duration::from_secs(20);

fn assignment(body: &str) -> Assignment {
    Assignment {
        run_id: "run-1".into(),
        attempt: 1,
        job_id: "job-1".into(),
        task_name: "hello".into(),
        task_version: 1,
        spec: Some(RunSpec {
            program: Some(Program {
                kind: Some(program::Kind::Script(Script {
                    body: body.into(),
                    interpreter: Vec::new(),
                })),
            }),
            timeout: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            env: Default::default(),
            workdir: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn enrolls_runs_a_redelivered_assignment_once_and_reports_it() {
    let fake = Fake {
        assignment: Some(assignment("echo hello; echo err >&2")),
        ..Fake::default()
    };
    let server = serve(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_agent(config(server, dir.path()), shutdown.clone()));

    wait_until("the run is finished", DEADLINE, || {
        !fake.seen().finishes.is_empty()
    })
    .await;
    wait_until(
        "the run was redelivered and a poll after it forgets it",
        DEADLINE,
        || {
            let seen = fake.seen();
            seen.deliveries >= 3
                && seen
                    .polls
                    .last()
                    .is_some_and(|p| p.known_runs.is_empty() && p.free_slots == 1)
        },
    )
    .await;
    {
        let seen = fake.seen();
        assert!(seen.deliveries >= 2, "the fake redelivered the assignment");
        assert_eq!(seen.starts.len(), 1, "a redelivered run was started again");
        assert_eq!(seen.log, b"hello\nerr\n");
        let finish = &seen.finishes[0];
        assert_eq!(finish.outcome, Outcome::Exited as i32);
        assert_eq!((finish.exit_code, finish.log_length), (0, 10));
        // The first poll carries facts; idle ones after it do not.
        assert!(seen.polls[0].facts.is_some());
        assert!(seen.polls.last().unwrap().facts.is_none());
    }
    use std::os::unix::fs::PermissionsExt;
    let credential = dir.path().join("credential");
    assert_eq!(std::fs::read_to_string(&credential).unwrap(), "cred-1");
    assert_eq!(
        std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("runs")).unwrap().count(),
        0
    );

    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), agent).await;
    stopped
        .expect("the agent stops when cancelled")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_run_cut_short_by_a_restart_is_reported_interrupted_not_executed() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(&runs).unwrap();
    std::fs::write(dir.path().join("credential"), "cred-1").unwrap();
    std::fs::write(
        runs.join("run-9.json"),
        r#"{"run_id":"run-9","attempt":4,"phase":"started"}"#,
    )
    .unwrap();
    std::fs::write(runs.join("run-9.log"), "partial").unwrap();
    let mut config = config(server, dir.path());
    config.enroll_token = None;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_agent(config, shutdown.clone()));

    wait_until("the interrupted run is reported", DEADLINE, || {
        !fake.seen().finishes.is_empty()
    })
    .await;
    {
        let seen = fake.seen();
        let finish = &seen.finishes[0];
        assert_eq!((finish.run_id.as_str(), finish.attempt), ("run-9", 4));
        assert_eq!(finish.outcome, Outcome::Interrupted as i32);
        assert_eq!(finish.log_length, 7);
        assert_eq!(seen.log, b"partial");
        assert!(seen.starts.is_empty());
        assert!(
            seen.polls
                .first()
                .is_some_and(|p| p.known_runs == ["run-9"] && p.finishing_runs == ["run-9"])
        );
    }
    wait_until("the record is removed", DEADLINE, || {
        !runs.join("run-9.json").exists()
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_rotated_credential_is_stored_and_used_for_every_later_call() {
    let fake = Fake {
        assignment: Some(assignment("echo rotated")),
        rotate_to: Some("cred-2"),
        pending: true,
        ..Fake::default()
    };
    let server = serve(fake.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_agent(
        config(server.clone(), dir.path()),
        shutdown.clone(),
    ));

    wait_until("the run is finished", DEADLINE, || {
        !fake.seen().finishes.is_empty()
    })
    .await;
    wait_until(
        "the puppet polled a few times with the resent credential",
        DEADLINE,
        || fake.seen().polls.len() >= 6,
    )
    .await;
    {
        let seen = fake.seen();
        assert_eq!(seen.finish_credentials, ["cred-2"]);
        assert_eq!(seen.starts.len(), 1);
        assert_eq!(seen.log, b"rotated\n");
        assert_eq!(
            seen.refused, 0,
            "a call used the old credential after the rotation"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let credential = dir.path().join("credential");
    assert_eq!(std::fs::read_to_string(&credential).unwrap(), "cred-2");
    assert_eq!(
        std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!dir.path().join("credential.tmp").exists());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // A restart uses the stored, new credential.
    let polls_before = fake.seen().polls.len();
    let mut restarted = config(server, dir.path());
    restarted.enroll_token = None;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run_agent(restarted, shutdown.clone()));
    wait_until("the restarted puppet polls", DEADLINE, || {
        fake.seen().polls.len() > polls_before
    })
    .await;
    assert_eq!(fake.seen().refused, 0);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn enrollment_problems_are_fatal_with_a_clear_message() {
    let server = serve(Fake::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut no_token = config(server.clone(), dir.path());
    no_token.enroll_token = None;
    let e = run_agent(no_token, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--enroll-token"), "{e}");

    let mut bad_token = config(server, dir.path());
    bad_token.enroll_token = Some("wrong".into());
    let e = run_agent(bad_token, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unknown enrollment token"), "{e}");
    assert!(!dir.path().join("credential").exists());
}
