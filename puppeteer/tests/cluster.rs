//! Several puppeteer processes on one PostgreSQL database: one puppeteer.
//! Real processes (`puppeteer serve --store postgres://…`), real puppets
//! spread over the nodes with the list of every node's URL, a node killed
//! with `kill -9` mid-job and started again.
//!
//! Needs PostgreSQL (`geppetto_test_support::postgres`): without it the
//! tests skip loudly; `.ci/run` installs it and forbids the skip.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Admin, ProcServer, RealPuppet};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

const DEADLINE: Duration = Duration::from_secs(240);

/// A node: its process, data dir and port.
struct Node {
    server: Option<ProcServer>,
    data: PathBuf,
    port: u16,
}

async fn start_node(data: &Path, port: u16, store: &str, extra: &[&str]) -> ProcServer {
    let mut args = vec!["--store", store];
    args.extend_from_slice(extra);
    ProcServer::start_with(data, &format!("127.0.0.1:{port}"), &args).await
}

struct Cluster {
    _dir: tempfile::TempDir,
    store: String,
    nodes: Vec<Node>,
    ca: PathBuf,
    token: String,
    extra: Vec<String>,
}

impl Cluster {
    /// `n` nodes on a fresh database; `None` without PostgreSQL.
    async fn start(n: usize, extra: &[&str]) -> Option<Cluster> {
        let store = geppetto_test_support::postgres::server()?.fresh_database();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let data = dir.path().join(format!("node{i}"));
            let server = start_node(&data, 0, &store, extra).await;
            nodes.push(Node {
                port: server.port,
                server: Some(server),
                data,
            });
        }
        // The first node made the CA and the first admin; the others serve
        // the same CA, kept in the database.
        let ca = nodes[0].data.join("tls/ca.pem");
        for node in &nodes[1..] {
            assert_eq!(
                std::fs::read(node.data.join("tls/ca.pem")).unwrap(),
                std::fs::read(&ca).unwrap(),
                "every node serves the cluster's CA"
            );
        }
        let token = std::fs::read_to_string(nodes[0].data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Some(Cluster {
            _dir: dir,
            store,
            nodes,
            ca,
            token,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn url(&self, i: usize) -> String {
        format!("https://localhost:{}", self.nodes[i].port)
    }

    /// Every node's URL, starting with node `first`'s.
    fn urls_from(&self, first: usize) -> String {
        (0..self.nodes.len())
            .map(|k| self.url((first + k) % self.nodes.len()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn admin_at(&self, url: &str) -> Admin {
        let slot = TokenSlot::default();
        slot.set(Some(&self.token)).unwrap();
        let endpoint = Endpoint {
            url: url.to_string(),
            ca_file: Some(self.ca.clone()),
            transport: Transport::Grpc,
        };
        Admin::new(Channel::new(&endpoint, slot).unwrap())
    }

    async fn kill9(&mut self, i: usize) {
        let server = self.nodes[i].server.take().expect("running");
        server.kill9().await;
    }

    async fn restart(&mut self, i: usize) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let node = &mut self.nodes[i];
        node.server = Some(start_node(&node.data, node.port, &self.store, &extra).await);
    }
}

/// What GetServerInfo says of the cluster's nodes (none when the call
/// failed: one in flight to a node being killed fails, the next goes to
/// another node).
async fn nodes(admin: &Admin) -> Vec<pb::ClusterNode> {
    geppetto_proto::v1::server_client::ServerClient::new(admin.channel.clone())
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .map(|r| r.into_inner().nodes)
        .unwrap_or_default()
}

/// The port of the node leading now, once exactly one of `n` nodes leads.
async fn leader_port(admin: &Admin, n: usize) -> u16 {
    let mut port = 0;
    wait_until_async("one leader among the nodes", DEADLINE, async || {
        let nodes = nodes(admin).await;
        let leaders: Vec<&pb::ClusterNode> = nodes.iter().filter(|n| n.leader).collect();
        if nodes.len() == n && leaders.len() == 1 {
            port = leaders[0]
                .listen
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            true
        } else {
            false
        }
    })
    .await;
    port
}

/// A job created through node A reaches a puppet whose poll is held on node
/// B at once (a wake-up through the database), not when the hold ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_created_on_one_node_wakes_a_poll_held_on_another() {
    let Some(cluster) = Cluster::start(2, &["--poll-timeout", "300s"]).await else {
        return;
    };
    let mut admin = cluster.admin_at(&cluster.url(0));
    let secret = admin.enroll_secret().await;
    // The puppet knows node 1 only, and holds its polls for 300 s.
    let puppet = RealPuppet::start_with(
        tempfile::tempdir().unwrap(),
        &cluster.url(1),
        Some(&cluster.ca),
        &secret,
        "p1",
        |c| c.poll_hold = Some(Duration::from_secs(300)),
    );
    admin.wait_polling("p1").await;
    admin
        .script_task("hello", "echo hello", Duration::from_secs(30))
        .await;
    let job = admin.run_on("hello", &["p1"]).await;
    // Far less than the hold: only a wake-up from node 0 to node 1 can
    // have ended the held poll.
    let job = admin.wait_job(&job.id, Duration::from_secs(30)).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    puppet.stop().await;
}

/// A script recording each execution (a line in `executions`) and when it
/// held the resource ("START END" in ns, in `file`).
fn interval_script(file: &Path, executions: &Path) -> String {
    format!(
        "echo ran >> {}\nstart=$(date +%s%N)\nsleep 0.3\nend=$(date +%s%N)\n\
         echo \"$start $end\" >> {}\necho done",
        executions.display(),
        file.display()
    )
}

/// Three nodes, thirty puppets spread over them, a capacity-1 resource, a
/// 30-puppet job; a node killed with `kill -9` mid-job, then started
/// again. The resource is never held twice at once, every run ends
/// succeeded with its whole log, and no run executes twice.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_keep_every_rule_across_a_kill_9() {
    let Some(mut cluster) = Cluster::start(3, &["--poll-timeout", "5s"]).await else {
        return;
    };
    let mut admin = cluster.admin_at(&cluster.urls_from(0));
    let secret = admin.enroll_secret().await;
    let names: Vec<String> = (0..30).map(|i| format!("p{i:02}")).collect();
    let puppets: Vec<RealPuppet> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            // Each puppet starts with another node first: spread.
            RealPuppet::start(&cluster.urls_from(i % 3), Some(&cluster.ca), &secret, n)
        })
        .collect();
    for n in &names {
        admin.wait_polling(n).await;
    }
    admin.resource("uplink", 1).await;
    let files = tempfile::tempdir().unwrap();
    let intervals = files.path().join("intervals");
    let executions = files.path().join("executions");
    admin
        .task_needing("patch", &interval_script(&intervals, &executions), "uplink")
        .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let job = admin.run_on("patch", &refs).await;

    // Kill the leader (and a third of the puppets' first node) with
    // `kill -9` once a few runs ended: another node leads within seconds,
    // the puppets and the operator's client go on through the other nodes.
    let leader = leader_port(&admin, 3).await;
    let victim = cluster.nodes.iter().position(|n| n.port == leader).unwrap();
    wait_until_async("some runs ended", DEADLINE, async || {
        std::fs::read_to_string(&intervals).map_or(0, |t| t.lines().count()) >= 3
    })
    .await;
    cluster.kill9(victim).await;
    wait_until_async("another node leads", DEADLINE, async || {
        nodes(&admin)
            .await
            .iter()
            .any(|n| n.leader && n.listen.rsplit(':').next() != Some(&leader.to_string()))
    })
    .await;
    wait_until_async("more runs ended without that node", DEADLINE, async || {
        std::fs::read_to_string(&intervals).map_or(0, |t| t.lines().count()) >= 8
    })
    .await;
    cluster.restart(victim).await;

    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");

    // No overlap on the capacity-1 resource.
    let text = std::fs::read_to_string(&intervals).unwrap();
    let mut held: Vec<(u128, u128)> = text
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(held.len(), 30, "{text}");
    held.sort();
    for pair in held.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "the resource was held twice at once: {pair:?}"
        );
    }
    // Thirty runs succeeded and thirty executions happened: none twice.
    let executed = std::fs::read_to_string(&executions).unwrap();
    assert_eq!(executed.lines().count(), 30, "executions:\n{executed}");
    // Every log complete, read through another node than the one used.
    let mut other = cluster.admin_at(&cluster.urls_from(2));
    for run in &job.runs {
        let log = other.log(&run.run_id).await;
        assert_eq!(
            String::from_utf8_lossy(&log),
            "done\n",
            "the log of {}",
            run.run_id
        );
    }
    for p in puppets {
        p.stop().await;
    }
}

/// Artifact content reaches every node: an upload begun through node 0 is
/// finished through node 1, and a puppet that knows only node 2 fetches it,
/// checked by its hash.
#[tokio::test(flavor = "multi_thread")]
async fn an_artifact_uploaded_through_two_nodes_is_served_by_a_third() {
    use geppetto_proto::v1::artifacts_client::ArtifactsClient;
    use sha2::Digest;
    let Some(cluster) = Cluster::start(3, &["--poll-timeout", "5s"]).await else {
        return;
    };
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let sha = hex::encode(sha2::Sha256::digest(&data));
    let (first, second) = (
        cluster.admin_at(&cluster.url(0)),
        cluster.admin_at(&cluster.url(1)),
    );
    let mut through_0 = ArtifactsClient::new(first.channel.clone());
    let status = through_0
        .begin_upload(pb::BeginUploadRequest {
            name: "blob".into(),
            sha256: sha.clone(),
            size: data.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    const MIB: usize = 1024 * 1024;
    through_0
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: status.upload_id.clone(),
            offset: 0,
            data: data[..MIB].to_vec(),
        })
        .await
        .unwrap();
    let mut through_1 = ArtifactsClient::new(second.channel.clone());
    let mut at = MIB;
    while at < data.len() {
        let end = (at + MIB).min(data.len());
        at = through_1
            .upload_chunk(pb::UploadChunkRequest {
                upload_id: status.upload_id.clone(),
                offset: at as u64,
                data: data[at..end].to_vec(),
            })
            .await
            .unwrap()
            .into_inner()
            .committed as usize;
    }
    through_1
        .commit_upload(pb::CommitUploadRequest {
            upload_id: status.upload_id,
        })
        .await
        .unwrap();

    let mut admin = cluster.admin_at(&cluster.url(0));
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&cluster.url(2), Some(&cluster.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "check".into(),
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "blob".into(),
                    ..Default::default()
                }],
                ..common::script_spec(
                    "sha256sum \"$GEPPETTO_ARTIFACT_BLOB\" | cut -d' ' -f1",
                    Duration::from_secs(60),
                )
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let job = admin.run_on("check", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let log = admin.log(&job.runs[0].run_id).await;
    assert_eq!(String::from_utf8_lossy(&log), format!("{sha}\n"));
    puppet.stop().await;
}

fn puppeteer_cmd(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_puppeteer"))
        .args(args)
        .output()
        .expect("the puppeteer binary runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn admin_for(port: u16, ca: &Path, token: &str) -> Admin {
    let slot = TokenSlot::default();
    slot.set(Some(token)).unwrap();
    let endpoint = Endpoint {
        url: format!("https://localhost:{port}"),
        ca_file: Some(ca.to_path_buf()),
        transport: Transport::Grpc,
    };
    Admin::new(Channel::new(&endpoint, slot).unwrap())
}

async fn task_names(admin: &mut Admin) -> Vec<String> {
    admin
        .tasks
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// `puppeteer migrate`: a sled installation into PostgreSQL (served from
/// there with its old data dir: same CA, same token, its tasks and
/// artifacts), and back into a new data dir; never into a store that holds
/// data.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_moves_an_installation_to_postgres_and_back() {
    let Some(pg) = geppetto_test_support::postgres::server() else {
        return;
    };
    let url = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let server = ProcServer::start(&old, 0, "5s").await;
    let ca = old.join("tls/ca.pem");
    let token = std::fs::read_to_string(old.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let mut admin = admin_for(server.port, &ca, &token);
    admin
        .script_task("hello", "echo hello", Duration::from_secs(30))
        .await;
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 253) as u8).collect();
    let artifact = admin.upload_artifact("blob", &data).await;
    let port = server.kill9().await;

    let (ok, out) = puppeteer_cmd(&["migrate", "--from", old.to_str().unwrap(), "--to", &url]);
    assert!(ok, "{out}");
    assert!(out.contains("Migrated and checked"), "{out}");
    assert!(out.contains("1 artifact contents"), "{out}");
    let (ok, out) = puppeteer_cmd(&["migrate", "--from", old.to_str().unwrap(), "--to", &url]);
    assert!(!ok && out.contains("already holds data"), "{out}");

    // Served from PostgreSQL, with the old data dir: the same CA and token.
    let server = start_node(&old, port, &url, &["--poll-timeout", "5s"]).await;
    let mut admin = admin_for(server.port, &ca, &token);
    assert_eq!(task_names(&mut admin).await, ["hello"]);
    let listed = geppetto_proto::v1::artifacts_client::ArtifactsClient::new(admin.channel.clone())
        .get_artifact(pb::GetArtifactRequest {
            name: "blob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sha256, artifact.sha256);
    server.kill9().await;

    // And back into a new data dir.
    let back = dir.path().join("back");
    let (ok, out) = puppeteer_cmd(&["migrate", "--from", &url, "--to", back.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        std::fs::read(back.join("artifacts").join(&artifact.sha256)).unwrap() == data,
        "the content came back whole"
    );
    let server = ProcServer::start(&back, 0, "5s").await;
    let mut admin = admin_for(server.port, &back.join("tls/ca.pem"), &token);
    assert_eq!(task_names(&mut admin).await, ["hello"]);
    server.kill9().await;
}

/// How many of the intervals ("START END" lines) overlap at most at once.
fn most_at_once(text: &str) -> usize {
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for line in text.lines() {
        let (a, b) = line.split_once(' ').unwrap();
        edges.push((a.parse().unwrap(), 1));
        edges.push((b.parse().unwrap(), -1));
    }
    // An end before a start at the same instant: touching is not overlapping.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Two nodes racing: an enrollment token's use count is exact however the
/// enrollments spread over the nodes, a job's max-in-flight holds for runs
/// offered by either node, and the event ids both nodes hand out are one
/// gap-free sequence.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_racing_keep_counts_limits_and_event_ids() {
    use geppetto_proto::v1::events_client::EventsClient;
    use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
    let Some(cluster) = Cluster::start(2, &["--poll-timeout", "5s"]).await else {
        return;
    };
    let mut admin = cluster.admin_at(&cluster.urls_from(0));

    // Twelve enrollments at once, half through each node, on a 5-use token.
    let limited = admin
        .tokens
        .create_enroll_token(pb::CreateEnrollTokenRequest {
            uses: 5,
            auto_approve: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let attempts = (0..12).map(|i| {
        let endpoint = Endpoint {
            url: cluster.url(i % 2),
            ca_file: Some(cluster.ca.clone()),
            transport: Transport::Grpc,
        };
        let channel = Channel::new(&endpoint, TokenSlot::default()).unwrap();
        let secret = limited.clone();
        tokio::spawn(async move {
            PuppetServiceClient::new(channel)
                .enroll(pb::EnrollRequest {
                    enroll_token: secret,
                    name: format!("racer{i}"),
                    labels: Default::default(),
                    facts: None,
                })
                .await
                .is_ok()
        })
    });
    let mut enrolled = 0;
    for attempt in attempts {
        enrolled += usize::from(attempt.await.unwrap());
    }
    assert_eq!(enrolled, 5, "a 5-use token enrolled {enrolled} puppets");

    // Eight real puppets over both nodes, a job of eight runs, two at most
    // in flight.
    let secret = admin.enroll_secret().await;
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let puppets: Vec<RealPuppet> = names
        .iter()
        .enumerate()
        .map(|(i, n)| RealPuppet::start(&cluster.urls_from(i % 2), Some(&cluster.ca), &secret, n))
        .collect();
    for n in &names {
        admin.wait_polling(n).await;
    }
    let files = tempfile::tempdir().unwrap();
    let intervals = files.path().join("intervals");
    admin
        .script_task(
            "patch",
            &format!(
                "start=$(date +%s%N)\nsleep 0.5\nend=$(date +%s%N)\necho \"$start $end\" >> {}",
                intervals.display()
            ),
            Duration::from_secs(60),
        )
        .await;
    let job = admin
        .jobs
        .create_job(pb::CreateJobRequest {
            task_name: "patch".into(),
            task_version: 0,
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Puppets(pb::PuppetNames {
                    names: names.clone(),
                })),
            }),
            strategy: Some(pb::Strategy {
                max_in_flight: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(2)),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let text = std::fs::read_to_string(&intervals).unwrap();
    assert_eq!(text.lines().count(), 8, "{text}");
    let most = most_at_once(&text);
    assert!(
        most <= 2,
        "{most} runs at once under max-in-flight 2:\n{text}"
    );

    // One gap-free sequence of event ids, the same through either node.
    let mut seen = Vec::new();
    for i in 0..2 {
        let other = cluster.admin_at(&cluster.url(i));
        let events = EventsClient::new(other.channel.clone())
            .list_events(pb::WatchEventsRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        assert!(ids.len() > 20, "{ids:?}");
        for pair in ids.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "a gap in the event ids: {ids:?}");
        }
        seen.push(ids);
    }
    let shorter = seen[0].len().min(seen[1].len());
    assert_eq!(seen[0][..shorter], seen[1][..shorter]);
    for p in puppets {
        p.stop().await;
    }
}

/// What the webhook receiver saw: per request, the delivery id and the
/// resource its event is about, and whether it was answered.
#[derive(Clone, Default)]
struct Hooks {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, bool)>>>,
    /// While set, requests are recorded and never answered.
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Hooks {
    fn seen(&self) -> Vec<(String, String, bool)> {
        self.seen.lock().unwrap().clone()
    }

    fn hold(&self, on: bool) {
        self.hold.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests about `resource`: (delivery id, answered).
    fn about(&self, resource: &str) -> Vec<(String, bool)> {
        self.seen()
            .into_iter()
            .filter(|(_, r, _)| r == resource)
            .map(|(id, _, answered)| (id, answered))
            .collect()
    }
}

/// A plain HTTP webhook receiver on a free loopback port.
async fn hook_receiver() -> (u16, Hooks) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hooks = Hooks::default();
    let shared = hooks.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let hooks = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let hooks = hooks.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await?.to_bytes();
                            let id = parts.headers["x-geppetto-delivery"]
                                .to_str()
                                .unwrap()
                                .to_string();
                            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let resource = json["event"]["resource"].as_str().unwrap().to_string();
                            let held = hooks.hold.load(std::sync::atomic::Ordering::SeqCst);
                            hooks.seen.lock().unwrap().push((id, resource, !held));
                            if held {
                                std::future::pending::<()>().await;
                            }
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(
                                hyper::body::Bytes::from("ok"),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, hooks)
}

/// Creates resource `name` through `admin`, which a rule notifies.
async fn create_resource(admin: &Admin, name: &str) {
    create_resource_with(admin, name, 1, 0).await;
}

async fn create_resource_with(admin: &Admin, name: &str, capacity: u32, bandwidth: u64) {
    geppetto_proto::v1::resources_client::ResourcesClient::new(admin.channel.clone())
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: name.into(),
            capacity,
            bandwidth,
        })
        .await
        .unwrap();
}

/// The leader is paused (SIGSTOP) in the middle of sending a notification,
/// then resumed; later the new leader is killed (`kill -9`) in the middle of
/// another. Each time the next leader sends the interrupted notification
/// again, with the same delivery id, once the claim of the old one lapsed;
/// the resumed node neither sends nor counts anything; every other event
/// reaches the receiver exactly once, and the rule counts each delivery
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_is_delivered_once_across_changes_of_leader() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("puppeteer.toml");
    // Attempts cut at 2 × 2 s, claims lapsing 10 s after.
    std::fs::write(&config, "notify_timeout = \"2s\"\nnotify_retry = \"1s\"\n").unwrap();
    let Some(mut cluster) = Cluster::start(2, &["--config", config.to_str().unwrap()]).await else {
        return;
    };
    let (port, hooks) = hook_receiver().await;
    let via = |cluster: &Cluster, i: usize| cluster.admin_at(&cluster.url(i));
    let admin = via(&cluster, 0);
    geppetto_proto::v1::notifications_client::NotificationsClient::new(admin.channel.clone())
        .add_rule(pb::AddRuleRequest {
            on: vec!["resource.created".into()],
            channel: Some(pb::add_rule_request::Channel::Webhook(format!(
                "http://127.0.0.1:{port}/hook"
            ))),
            ..Default::default()
        })
        .await
        .unwrap();
    let index_of = |cluster: &Cluster, port: u16| {
        cluster
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of ours leads")
    };
    let delivered = async |resource: &str| {
        wait_until_async(
            &format!("the notification about {resource} answered"),
            DEADLINE,
            async || hooks.about(resource).iter().any(|(_, answered)| *answered),
        )
        .await;
    };

    // 1. The leader paused mid-send.
    let first = index_of(&cluster, leader_port(&admin, 2).await);
    let other = 1 - first;
    hooks.hold(true);
    create_resource(&via(&cluster, other), "r0").await;
    wait_until_async("the leader sends about r0", DEADLINE, async || {
        !hooks.about("r0").is_empty()
    })
    .await;
    cluster.nodes[first].server.as_ref().unwrap().signal("STOP");
    hooks.hold(false);
    let survivor = via(&cluster, other);
    delivered("r0").await;
    assert_eq!(index_of(&cluster, leader_port(&survivor, 2).await), other);
    cluster.nodes[first].server.as_ref().unwrap().signal("CONT");
    for name in ["r1", "r2", "r3"] {
        create_resource(&via(&cluster, first), name).await;
        delivered(name).await;
    }

    // 2. The new leader killed mid-send.
    hooks.hold(true);
    create_resource(&via(&cluster, first), "r4").await;
    wait_until_async("the leader sends about r4", DEADLINE, async || {
        !hooks.about("r4").is_empty()
    })
    .await;
    cluster.kill9(other).await;
    hooks.hold(false);
    let resumed = via(&cluster, first);
    delivered("r4").await;
    cluster.restart(other).await;
    for (i, name) in [(other, "r5"), (first, "r6"), (other, "r7")] {
        create_resource(&via(&cluster, i), name).await;
        delivered(name).await;
    }

    // Whatever is still in flight has had time to arrive.
    let rules = async || {
        geppetto_proto::v1::notifications_client::NotificationsClient::new(resumed.channel.clone())
            .list_rules(pb::ListRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules
            .remove(0)
    };
    wait_until_async("no delivery pending", DEADLINE, async || {
        rules().await.pending == 0
    })
    .await;
    let rule = rules().await;
    assert_eq!((rule.delivered, rule.failed), (8, 0), "{rule:?}");
    for name in ["r0", "r4"] {
        let seen = hooks.about(name);
        assert_eq!(seen.len(), 2, "{name}: cut once, then sent again: {seen:?}");
        assert_eq!(
            seen[0].0, seen[1].0,
            "{name}: the same delivery id both times"
        );
        assert!(!seen[0].1 && seen[1].1, "{name}: {seen:?}");
    }
    for name in ["r1", "r2", "r3", "r5", "r6", "r7"] {
        assert_eq!(hooks.about(name).len(), 1, "{name}: {:?}", hooks.seen());
    }
    let ids: std::collections::HashSet<String> =
        hooks.seen().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(
        ids.len(),
        8,
        "one delivery id per event: {:?}",
        hooks.seen()
    );
}

/// What GetServerInfo says through `admin`.
async fn server_info(admin: &Admin) -> Option<pb::ServerInfo> {
    geppetto_proto::v1::server_client::ServerClient::new(admin.channel.clone())
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A resource's bandwidth budget holds for the cluster, not per node: two
/// puppets, each on its own node, fetch one artifact at once under a
/// budgeted resource; together they cannot beat the budget (each node
/// paces at half of it). Measured from the job's creation to the later
/// script's start, which comes after its fetch: a lower bound only.
#[tokio::test(flavor = "multi_thread")]
async fn a_bandwidth_budget_is_shared_by_the_nodes() {
    const BUDGET: u64 = 64 * 1024;
    let Some(cluster) = Cluster::start(2, &["--poll-timeout", "5s"]).await else {
        return;
    };
    for i in 0..2 {
        let admin = cluster.admin_at(&cluster.url(i));
        wait_until_async(
            &format!("node {i} counts two nodes alive"),
            DEADLINE,
            async || {
                server_info(&admin)
                    .await
                    .is_some_and(|s| s.nodes_alive == 2)
            },
        )
        .await;
    }
    let mut admin = cluster.admin_at(&cluster.url(0));
    create_resource_with(&admin, "uplink", 2, BUDGET).await;
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    admin.upload_artifact("blob", &data).await;
    let secret = admin.enroll_secret().await;
    let puppets = [
        RealPuppet::start(&cluster.url(0), Some(&cluster.ca), &secret, "p0"),
        RealPuppet::start(&cluster.url(1), Some(&cluster.ca), &secret, "p1"),
    ];
    admin.wait_polling("p0").await;
    admin.wait_polling("p1").await;
    let files = tempfile::tempdir().unwrap();
    let starts = files.path().join("starts");
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "fetch".into(),
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "blob".into(),
                    ..Default::default()
                }],
                ..common::script_spec(
                    &format!("date +%s%N >> {}", starts.display()),
                    Duration::from_secs(120),
                )
            }),
            resources: vec![pb::ResourceNeed {
                name: "uplink".into(),
                count: 1,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let created = unix_ns();
    let job = admin.run_on("fetch", &["p0", "p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let text = std::fs::read_to_string(&starts).unwrap();
    let last: u128 = text
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .max()
        .unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let elapsed = Duration::from_nanos((last - created) as u64);
    // Each node's bucket lets one burst of at most a sixteenth of the
    // budget through at once.
    let floor =
        Duration::from_secs_f64((2 * data.len() as u64 - BUDGET / 8) as f64 / BUDGET as f64);
    eprintln!(
        "two fetches of {} bytes through two nodes on a {BUDGET} B/s budget: {elapsed:?} (floor {floor:?})",
        data.len()
    );
    assert!(
        elapsed >= floor,
        "{elapsed:?} < {floor:?}: the budget was spent twice"
    );
    for p in puppets {
        p.stop().await;
    }
}
