//! Following a job until it is finished (`jobs watch`, `jobs run --wait`),
//! with progress on stderr so stdout keeps only the result.

use std::collections::{HashMap, HashSet};

use geppetto_proto::v1 as pb;
use tonic::Request;

use crate::api::{Api, Reconnect};
use crate::error::Error;
use crate::views::{self, job_finished, run_finished};

/// Follows `WatchJob` until the job is finished and returns its last state.
pub async fn watch(api: &Api, job_id: &str) -> Result<pb::Job, Error> {
    let mut progress = Progress::default();
    let mut reconnect = Reconnect::default();
    let mut received_any = false;
    loop {
        // No deadline on the stream itself (a job may last hours); only
        // opening it has one.
        let req = Request::new(pb::GetJobRequest { id: job_id.into() });
        let opened = api.call(api.jobs().watch_job(req)).await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) if received_any && reconnect.retry(&e).await => continue,
            Err(e) => return Err(e),
        };
        let error = loop {
            match stream.message().await {
                Ok(Some(job)) => {
                    received_any = true;
                    reconnect.reset();
                    progress.update(&job);
                    if job_finished(job.state) {
                        return Ok(job);
                    }
                }
                Ok(None) => {
                    break Error::Unreachable {
                        url: api.url().into(),
                        cause: format!("the watch of {job_id} ended before the job finished"),
                    };
                }
                Err(status) => break api.error(status),
            }
        };
        if !reconnect.retry(&error).await {
            return Err(error);
        }
    }
}

/// What was already shown, so each update prints only what changed.
#[derive(Debug, Default)]
struct Progress {
    ended: HashSet<String>,
    /// The cause last shown for each waiting run.
    waiting: HashMap<String, String>,
    last_counts: String,
    /// The job was seen awaiting approval.
    awaiting: bool,
}

impl Progress {
    fn update(&mut self, job: &pb::Job) {
        let awaiting = job.state == pb::JobState::AwaitingApproval as i32;
        if awaiting && !self.awaiting {
            eprintln!("{}", awaiting_line(job));
        } else if !awaiting && self.awaiting && !job.approved_by.is_empty() {
            let verb = if job.rejected { "rejected" } else { "approved" };
            eprintln!("{}: {verb} by {}", job.id, job.approved_by);
        }
        self.awaiting = awaiting;
        for run in &job.runs {
            if run_finished(run.state) && self.ended.insert(run.run_id.clone()) {
                eprintln!("{}", ended_line(run));
            }
            if run.state == pb::RunState::Waiting as i32 {
                if self.waiting.get(&run.run_id) != Some(&run.cause) {
                    eprintln!("{}", waiting_line(run));
                    self.waiting.insert(run.run_id.clone(), run.cause.clone());
                }
            } else {
                self.waiting.remove(&run.run_id);
            }
        }
        let counts = counts_line(job);
        if counts != self.last_counts {
            eprintln!("{}: {counts}", job.id);
            self.last_counts = counts;
        }
    }
}

/// `web-1: failed, exit code 3: cause (run-...)`
fn ended_line(run: &pb::RunSummary) -> String {
    let view = views::RunSummaryView::from(run);
    let mut line = format!("{}: {}", run.puppet, view.state.replace('_', " "));
    if let Some(code) = view.exit_code.filter(|c| *c != 0) {
        line.push_str(&format!(", exit code {code}"));
    }
    if !run.cause.is_empty() {
        line.push_str(&format!(": {}", run.cause));
    }
    line.push_str(&format!(" ({})", run.run_id));
    line
}

/// `job-1: awaiting approval (geppetto jobs approve job-1)`
fn awaiting_line(job: &pb::Job) -> String {
    format!("{}: awaiting approval (geppetto jobs approve {0})", job.id)
}

/// `web-2: waiting for resource uplink-lyon (run-...)`
fn waiting_line(run: &pb::RunSummary) -> String {
    let cause = crate::output::cause(run.cause.trim());
    let cause = cause.as_str();
    let what = if cause.is_empty() {
        "waiting".to_string()
    } else if cause.starts_with("waiting") {
        cause.to_string()
    } else {
        format!("waiting: {cause}")
    };
    format!("{}: {what} ({})", run.puppet, run.run_id)
}

/// `3 runs: 1 running, 2 succeeded`
pub fn counts_line(job: &pb::Job) -> String {
    let counts = views::run_counts(job);
    let total: u32 = counts.values().sum();
    if total == 0 {
        return "no runs".into();
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.replace('_', " ")))
        .collect();
    format!(
        "{total} run{}: {}",
        if total == 1 { "" } else { "s" },
        parts.join(", ")
    )
}

/// Ok if every run succeeded, else the error that makes the exit code 1.
pub fn verdict(job: &pb::Job) -> Result<(), Error> {
    let total = job.runs.len();
    let bad = job
        .runs
        .iter()
        .filter(|r| r.state != pb::RunState::Succeeded as i32)
        .count();
    if job.state == pb::JobState::Succeeded as i32 && bad == 0 {
        return Ok(());
    }
    Err(Error::Failed(format!(
        "job {} {}: {bad} of {total} run{} did not succeed",
        job.id,
        views::job_state(job.state),
        if total == 1 { "" } else { "s" }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(state: pb::JobState, runs: &[pb::RunState]) -> pb::Job {
        pb::Job {
            id: "job-1".into(),
            state: state as i32,
            runs: runs
                .iter()
                .enumerate()
                .map(|(i, s)| pb::RunSummary {
                    run_id: format!("run-{i}"),
                    puppet: format!("p{i}"),
                    state: *s as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn verdict_and_counts() {
        use pb::RunState::*;
        let ok = job(pb::JobState::Succeeded, &[Succeeded, Succeeded]);
        assert!(verdict(&ok).is_ok());
        assert_eq!(counts_line(&ok), "2 runs: 2 succeeded");
        let bad = job(pb::JobState::Failed, &[Succeeded, TimedOut]);
        assert_eq!(
            verdict(&bad).unwrap_err().to_string(),
            "job job-1 failed: 1 of 2 runs did not succeed"
        );
        assert_eq!(counts_line(&bad), "2 runs: 1 succeeded, 1 timed out");
    }

    #[test]
    fn ended_lines() {
        let run = pb::RunSummary {
            run_id: "run-a".into(),
            puppet: "web-1".into(),
            state: pb::RunState::Failed as i32,
            exit_code: 3,
            cause: "exited with 3".into(),
            ..Default::default()
        };
        assert_eq!(
            ended_line(&run),
            "web-1: failed, exit code 3: exited with 3 (run-a)"
        );
        let lost = pb::RunSummary {
            state: pb::RunState::Lost as i32,
            cause: "no word from the puppet for 2m".into(),
            ..run
        };
        assert_eq!(
            ended_line(&lost),
            "web-1: lost: no word from the puppet for 2m (run-a)"
        );
    }

    #[test]
    fn awaiting_approval_is_shown_once() {
        let mut awaiting = job(pb::JobState::AwaitingApproval, &[pb::RunState::Queued]);
        assert_eq!(
            awaiting_line(&awaiting),
            "job-1: awaiting approval (geppetto jobs approve job-1)"
        );
        let mut progress = Progress::default();
        progress.update(&awaiting);
        assert!(progress.awaiting);
        awaiting.state = pb::JobState::Running as i32;
        awaiting.approved_by = "alice".into();
        progress.update(&awaiting);
        assert!(!progress.awaiting);
    }

    #[test]
    fn waiting_lines() {
        let run = pb::RunSummary {
            run_id: "run-b".into(),
            puppet: "web-2".into(),
            state: pb::RunState::Waiting as i32,
            cause: "waiting for resource uplink-lyon".into(),
            ..Default::default()
        };
        assert_eq!(
            waiting_line(&run),
            "web-2: waiting for resource uplink-lyon (run-b)"
        );
        let disabled = pb::RunSummary {
            cause: "puppet disabled".into(),
            ..run.clone()
        };
        assert_eq!(
            waiting_line(&disabled),
            "web-2: waiting: puppet disabled (run-b)"
        );
        let bare = pb::RunSummary {
            cause: String::new(),
            ..run
        };
        assert_eq!(waiting_line(&bare), "web-2: waiting (run-b)");
    }
}
