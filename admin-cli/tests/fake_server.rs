//! The streaming and paging commands (`logs`, `logs --follow`, `jobs run
//! --wait`, `runs list`) against a small in-process fake of the Runs and
//! Jobs services, served over plain HTTP/2 on port 0. It checks what the
//! CLI does with the answers, not what the puppeteer does: that is the
//! end-to-end tests' job.

mod common;

use std::pin::Pin;

use geppetto_proto::v1 as pb;
use pb::jobs_server::{Jobs, JobsServer};
use pb::runs_server::{Runs, RunsServer};
use predicates::prelude::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use common::geppetto;

const LOG: &[u8] = b"hello\nworld\n\xff binary too\n";
const TOKEN: &str = "secret-token";

type Answer<T> = Result<Response<T>, Status>;
type Chunks<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn check_token<T>(request: &Request<T>) -> Result<(), Status> {
    let expected = format!("Bearer {TOKEN}");
    match request.metadata().get("authorization") {
        Some(value) if value == expected.as_str() => Ok(()),
        _ => Err(Status::unauthenticated("unknown token")),
    }
}

fn run_summary(id: &str, puppet: &str, state: pb::RunState, exit_code: i32) -> pb::RunSummary {
    pb::RunSummary {
        run_id: id.into(),
        puppet: puppet.into(),
        state: state as i32,
        outcome: pb::Outcome::Exited as i32,
        exit_code,
        cause: String::new(),
        ..Default::default()
    }
}

struct FakeRuns;

#[tonic::async_trait]
impl Runs for FakeRuns {
    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Answer<pb::Run> {
        check_token(&request)?;
        let id = request.into_inner().id;
        if id != "run-web-2" {
            return Err(Status::not_found(format!("no run {id:?}")));
        }
        Ok(Response::new(pb::Run {
            id,
            job_id: "job-1".into(),
            puppet: "web-2".into(),
            state: pb::RunState::Succeeded as i32,
            outcome: pb::Outcome::Exited as i32,
            ..Default::default()
        }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Answer<pb::ListRunsResponse> {
        check_token(&request)?;
        let req = request.into_inner();
        if req.of == Some(pb::list_runs_request::Of::Puppet("busy".into())) {
            return Ok(Response::new(busy_page(&req)?));
        }
        let runs = ["web-1", "web-2"]
            .iter()
            .map(|p| pb::Run {
                id: format!("run-{p}"),
                job_id: "job-1".into(),
                puppet: p.to_string(),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(pb::ListRunsResponse {
            runs,
            ..Default::default()
        }))
    }

    async fn cancel_run(&self, _: Request<pb::GetRunRequest>) -> Answer<pb::Run> {
        Err(Status::unimplemented("fake"))
    }

    /// Answers at most 5 bytes at a time, so the CLI has to loop.
    async fn read_log(&self, request: Request<pb::ReadLogRequest>) -> Answer<pb::ReadLogResponse> {
        check_token(&request)?;
        let req = request.into_inner();
        if req.run_id != "run-web-2" {
            return Err(Status::not_found(format!("no run {:?}", req.run_id)));
        }
        let start = (req.offset as usize).min(LOG.len());
        let end = (start + 5).min(LOG.len());
        Ok(Response::new(pb::ReadLogResponse {
            data: LOG[start..end].to_vec().into(),
            offset: start as u64,
            log_length: LOG.len() as u64,
            eof: end == LOG.len(),
            ..Default::default()
        }))
    }

    type FollowLogStream = Chunks<pb::LogChunk>;

    /// Sends overlapping chunks, as a resending server may.
    async fn follow_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Answer<Self::FollowLogStream> {
        check_token(&request)?;
        let chunks = vec![
            Ok(pb::LogChunk {
                offset: 0,
                data: LOG[..8].to_vec().into(),
                skipped: 0,
            }),
            Ok(pb::LogChunk {
                offset: 4,
                data: LOG[4..12].to_vec().into(),
                skipped: 0,
            }),
            Ok(pb::LogChunk {
                offset: 12,
                data: LOG[12..].to_vec().into(),
                skipped: 0,
            }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// Runs of the puppet "busy": more than a page holds.
const BUSY_RUNS: usize = 2500;

/// A page of the "busy" puppet's runs, as the puppeteer pages: at most
/// 1000 (or page_size), the token the position of the next; a short page
/// before the end, as a filtering server may answer.
fn busy_page(req: &pb::ListRunsRequest) -> Result<pb::ListRunsResponse, Status> {
    let from: usize = match req.page_token.as_str() {
        "" => 0,
        token => token
            .strip_prefix("runs.")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Status::invalid_argument("invalid page_token"))?,
    };
    let size = match req.page_size {
        0 => 1000,
        n => (n as usize).min(1000),
    };
    let size = if from == 1000 { 3 } else { size };
    let end = (from + size).min(BUSY_RUNS);
    let runs = (from..end)
        .map(|i| pb::Run {
            id: format!("run-{i:05}"),
            job_id: "job-1".into(),
            puppet: "busy".into(),
            ..Default::default()
        })
        .collect();
    let next_page_token = if end < BUSY_RUNS {
        format!("runs.{end}")
    } else {
        String::new()
    };
    Ok(pb::ListRunsResponse {
        runs,
        next_page_token,
    })
}

struct FakeJobs;

fn job(state: pb::JobState, runs: Vec<pb::RunSummary>) -> pb::Job {
    pb::Job {
        id: "job-1".into(),
        task_name: "disk".into(),
        task_version: 1,
        state: state as i32,
        runs,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Jobs for FakeJobs {
    async fn create_job(&self, request: Request<pb::CreateJobRequest>) -> Answer<pb::Job> {
        check_token(&request)?;
        let req = request.into_inner();
        if req.task_name != "disk" {
            return Err(Status::not_found(format!(
                "no task named {:?}",
                req.task_name
            )));
        }
        Ok(Response::new(job(pb::JobState::Running, vec![])))
    }

    async fn get_job(&self, _: Request<pb::GetJobRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_jobs(&self, _: Request<pb::ListJobsRequest>) -> Answer<pb::ListJobsResponse> {
        Err(Status::unimplemented("fake"))
    }

    async fn cancel_job(&self, _: Request<pb::CancelJobRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    async fn approve_job(&self, _: Request<pb::ApproveJobRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    async fn reject_job(&self, _: Request<pb::ApproveJobRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    async fn retry_job(&self, _: Request<pb::RetryJobRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    async fn skip_runs(&self, _: Request<pb::SkipRunsRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    async fn acknowledge_job(&self, _: Request<pb::GetJobRequest>) -> Answer<pb::Job> {
        Err(Status::unimplemented("fake"))
    }

    type WatchJobStream = Chunks<pb::Job>;

    /// "job-1" ends with a failed run; "job-ok" succeeds.
    async fn watch_job(&self, request: Request<pb::GetJobRequest>) -> Answer<Self::WatchJobStream> {
        check_token(&request)?;
        use pb::RunState::*;
        let ok = request.into_inner().id == "job-ok";
        let last = if ok { Succeeded } else { Failed };
        let updates = vec![
            Ok(job(
                pb::JobState::Running,
                vec![
                    run_summary("run-a", "web-1", Running, 0),
                    run_summary("run-b", "web-2", Queued, 0),
                ],
            )),
            Ok(job(
                pb::JobState::Running,
                vec![
                    run_summary("run-a", "web-1", Succeeded, 0),
                    run_summary("run-b", "web-2", Running, 0),
                ],
            )),
            Ok(job(
                if ok {
                    pb::JobState::Succeeded
                } else {
                    pb::JobState::Failed
                },
                vec![
                    run_summary("run-a", "web-1", Succeeded, 0),
                    run_summary("run-b", "web-2", last, if ok { 0 } else { 3 }),
                ],
            )),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(updates))))
    }
}

/// Starts the fake on a runtime of its own; the runtime lives as long as
/// the returned guard.
fn start() -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(RunsServer::new(FakeRuns))
            .add_service(JobsServer::new(FakeJobs))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (runtime, url)
}

fn connected(url: &str) -> assert_cmd::Command {
    let mut cmd = geppetto();
    cmd.args(["--server", url, "--token", TOKEN]);
    cmd
}

#[test]
fn logs_prints_the_exact_bytes() {
    let (_server, url) = start();
    connected(&url)
        .args(["logs", "run-web-2"])
        .assert()
        .success()
        .stdout(LOG);
    connected(&url)
        .args(["logs", "job-1", "--puppet", "web-2"])
        .assert()
        .success()
        .stdout(LOG);
    // --follow: the same bytes; how the run ended on stderr.
    connected(&url)
        .args(["logs", "run-web-2", "--follow"])
        .assert()
        .success()
        .stdout(LOG)
        .stderr("run run-web-2 succeeded (exit 0)\n");
}

#[test]
fn logs_errors_are_readable() {
    let (_server, url) = start();
    connected(&url)
        .args(["logs", "run-nope"])
        .assert()
        .code(1)
        .stderr("error: not found: no run \"run-nope\"\n");
    connected(&url)
        .args(["logs", "job-1", "--puppet", "db-1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no run on puppet \"db-1\""));
    connected(&url)
        .args(["logs", "job-1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--puppet"));
    geppetto()
        .args(["--server", &url, "--token", "wrong", "logs", "run-web-2"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not authenticated: unknown token"))
        .stderr(predicate::str::contains("GEPPETTO_TOKEN"));
}

#[test]
fn jobs_run_prints_only_the_id() {
    let (_server, url) = start();
    connected(&url)
        .args(["jobs", "run", "disk", "--target", "os=debian"])
        .assert()
        .success()
        .stdout("job-1\n");
    connected(&url)
        .args(["jobs", "run", "nope", "--puppet", "web-1"])
        .assert()
        .code(1)
        .stderr("error: not found: no task named \"nope\"\n");
}

#[test]
fn jobs_run_wait_fails_when_a_run_fails() {
    let (_server, url) = start();
    let assert = connected(&url)
        .args(["jobs", "run", "disk", "--target", "os=debian", "--wait"])
        .assert()
        .code(1);
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(out.starts_with("job-1\n"), "{out}");
    // The summary lists the run that failed, not the one that succeeded.
    assert!(out.contains("run-b") && out.contains("failed"), "{out}");
    assert!(!out.contains("run-a"), "{out}");
    // Progress (not a terminal): a line for the failure, the counts.
    assert!(!err.contains("web-1: succeeded (run-a)"), "{err}");
    assert!(err.contains("web-2: failed, exit code 3 (run-b)"), "{err}");
    assert!(
        err.contains("job-1: 2 runs: 1 failed, 1 succeeded"),
        "{err}"
    );
    assert!(
        err.ends_with("error: job job-1 failed: 1 of 2 runs did not succeed\n"),
        "{err}"
    );
}

#[test]
fn jobs_watch_succeeds_when_every_run_does() {
    let (_server, url) = start();
    let assert = connected(&url)
        .args(["-o", "json", "jobs", "watch", "job-ok"])
        .assert()
        .success();
    let job: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["counts"]["succeeded"], 2);
}

#[test]
fn output_is_one_error_line_on_a_wrong_transport() {
    // The fake serves native gRPC only (no gRPC-web layer): a gRPC-web
    // request must fail with one readable line, proving the flag is used.
    let (_server, url) = start();
    let assert = connected(&url)
        .args(["--transport", "grpc-web", "logs", "run-web-2"])
        .assert()
        .code(1)
        .stdout("");
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn runs_list_pages_through_every_run() {
    let (_server, url) = start();
    let assert = connected(&url)
        .args(["-o", "json", "runs", "list", "--puppet", "busy"])
        .assert()
        .success();
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&assert.get_output().stdout).unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..BUSY_RUNS).map(|i| format!("run-{i:05}")).collect();
    assert_eq!(ids, expected, "every page, in order, nothing twice");
}
