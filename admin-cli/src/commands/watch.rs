//! Following a job until it is finished (`jobs watch`, `jobs run --wait`),
//! with progress on stderr so stdout keeps only the result.
//!
//! On a terminal, one display updated in place: a bar of finished runs,
//! the counts by state, what the others wait for (the rollout's current
//! step), and an estimate; lines are printed above it only for what needs
//! reading (approval, runs that did not succeed). Elsewhere (a file, a
//! pipe, CI), one line per change: the counts when a run finishes, what
//! the runs wait for when that changes (one line per rollout step, not one
//! per waiting run), the same approval and failure lines.

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;

use geppetto_proto::v1 as pb;
use tonic::Request;

use crate::api::{Api, Reconnect};
use crate::error::Error;
use crate::views::{self, job_finished, run_finished};

/// Follows `WatchJob` until the job is finished and returns its last state.
pub async fn watch(api: &Api, job_id: &str) -> Result<pb::Job, Error> {
    let mut progress = Progress::new(interactive());
    let result = follow(api, job_id, &mut progress).await;
    progress.finish();
    result
}

/// Whether progress goes to a terminal that can redraw a line.
fn interactive() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

async fn follow(api: &Api, job_id: &str, progress: &mut Progress) -> Result<pb::Job, Error> {
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

/// What was already shown, so each update shows only what changed.
#[derive(Debug, Default)]
struct Progress {
    /// Runs whose end was taken into account.
    ended: HashSet<String>,
    /// What the waiting runs wait for, as last shown.
    waits: String,
    /// Finished runs when the counts were last shown.
    finished: Option<usize>,
    /// The job was seen awaiting approval.
    awaiting: bool,
    /// The display updated in place, on a terminal.
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(interactive: bool) -> Self {
        let bar = interactive.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                // The message last, cut to the terminal's width: one line.
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:20}] {pos}/{len} done, {elapsed} (~{eta} left) · {wide_msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(std::time::Duration::from_secs(1));
            bar
        });
        Progress {
            bar,
            ..Progress::default()
        }
    }

    fn update(&mut self, job: &pb::Job) {
        let lines = self.changes(job);
        match &self.bar {
            Some(bar) => {
                for line in lines {
                    bar.println(line);
                }
                let finished = job.runs.iter().filter(|r| run_finished(r.state)).count();
                bar.set_prefix(job.id.clone());
                bar.set_length(job.runs.len() as u64);
                bar.set_position(finished as u64);
                let counts = views::run_counts(job)
                    .iter()
                    .map(|(state, n)| format!("{n} {}", state.replace('_', " ")))
                    .collect::<Vec<_>>()
                    .join(", ");
                let waits = waits_line(job);
                bar.set_message(if waits.is_empty() {
                    counts
                } else {
                    format!("{counts} · {waits}")
                });
            }
            None => {
                for line in lines {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// The lines this update adds (on a terminal, only those above the
    /// display; elsewhere also the counts and the waits when they change).
    fn changes(&mut self, job: &pb::Job) -> Vec<String> {
        let mut lines = Vec::new();
        let awaiting = job.state == pb::JobState::AwaitingApproval as i32;
        if awaiting && !self.awaiting {
            lines.push(awaiting_line(job));
        } else if !awaiting && self.awaiting && !job.approved_by.is_empty() {
            let verb = if job.rejected { "rejected" } else { "approved" };
            lines.push(format!("{}: {verb} by {}", job.id, job.approved_by));
        }
        self.awaiting = awaiting;
        for run in &job.runs {
            if run_finished(run.state)
                && self.ended.insert(run.run_id.clone())
                && run.state != pb::RunState::Succeeded as i32
            {
                lines.push(ended_line(run));
            }
        }
        if self.bar.is_some() {
            return lines;
        }
        let waits = waits_line(job);
        if waits != self.waits {
            if !waits.is_empty() {
                lines.push(format!("{}: {waits}", job.id));
            }
            self.waits = waits;
        }
        let finished = job.runs.iter().filter(|r| run_finished(r.state)).count();
        if self.finished != Some(finished) {
            lines.push(format!("{}: {}", job.id, counts_line(job)));
            self.finished = Some(finished);
        }
        lines
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What the job's waiting runs wait for, most common first:
/// `web-2: waiting for resource uplink` for one run,
/// `197 runs waiting for its turn (rolling; now web-3)` for many.
fn waits_line(job: &pb::Job) -> String {
    let mut groups: BTreeMap<String, Vec<&pb::RunSummary>> = BTreeMap::new();
    let mut fetching = Vec::new();
    for run in &job.runs {
        if let Some(fetch) = &run.fetch {
            fetching.push(format!(
                "{}: {}",
                run.puppet,
                views::FetchView::from(fetch).words()
            ));
        }
        if run.state == pb::RunState::Waiting as i32 {
            groups
                .entry(crate::output::cause(run.cause.trim()))
                .or_default()
                .push(run);
        }
    }
    let mut groups: Vec<(String, Vec<&pb::RunSummary>)> = groups.into_iter().collect();
    groups.sort_by_key(|(_, runs)| std::cmp::Reverse(runs.len()));
    let parts: Vec<String> = fetching
        .into_iter()
        .chain(groups.iter().map(|(cause, runs)| {
            let what = if cause.is_empty() {
                "waiting".to_string()
            } else if cause.starts_with("waiting") {
                cause.clone()
            } else {
                format!("waiting: {cause}")
            };
            match runs.as_slice() {
                [run] => format!("{}: {what}", run.puppet),
                runs => format!("{} runs {what}", runs.len()),
            }
        }))
        .collect();
    parts.join("; ")
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
    if job.state == pb::JobState::Rejected as i32 {
        return Err(Error::Failed(format!(
            "job {} was rejected by {}: none of its {total} run{} ran",
            job.id,
            job.approved_by,
            if total == 1 { "" } else { "s" }
        )));
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
            outcome: pb::Outcome::Exited as i32,
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
            outcome: pb::Outcome::Unspecified as i32,
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
    fn a_rollout_is_one_line_per_step_not_one_per_waiting_run() {
        use pb::RunState::*;
        let mut progress = Progress::default();
        let mut job = job(pb::JobState::Running, &[Running, Waiting, Waiting, Waiting]);
        for run in &mut job.runs[1..] {
            run.cause = "waiting for its turn (rolling; now p0)".into();
        }
        assert_eq!(
            progress.changes(&job),
            vec![
                "job-1: 3 runs waiting for its turn (rolling; now p0)",
                "job-1: 4 runs: 1 running, 3 waiting",
            ]
        );
        // Nothing changed: nothing printed.
        assert!(progress.changes(&job).is_empty());
        // The next step: one line for the waits, one for the counts.
        job.runs[0].state = Succeeded as i32;
        job.runs[1].state = Running as i32;
        for run in &mut job.runs[2..] {
            run.cause = "waiting for its turn (rolling; now p1)".into();
        }
        assert_eq!(
            progress.changes(&job),
            vec![
                "job-1: 2 runs waiting for its turn (rolling; now p1)",
                "job-1: 4 runs: 1 running, 1 succeeded, 2 waiting",
            ]
        );
        // A failure has its own line; a success only the counts.
        job.runs[1].state = Failed as i32;
        job.runs[1].cause = "exited with 3".into();
        job.runs[2].state = Running as i32;
        job.runs[3].cause = "waiting for its turn (rolling; now p2)".into();
        assert_eq!(
            progress.changes(&job),
            vec![
                "p1: failed: exited with 3 (run-1)",
                "job-1: p3: waiting for its turn (rolling; now p2)",
                "job-1: 4 runs: 1 failed, 1 running, 1 succeeded, 1 waiting",
            ]
        );
    }

    #[test]
    fn on_a_terminal_only_what_needs_reading_is_printed_above_the_display() {
        use pb::RunState::*;
        let mut progress = Progress::new(true);
        let mut job = job(pb::JobState::Running, &[Running, Waiting]);
        assert!(progress.changes(&job).is_empty());
        job.runs[0].state = Succeeded as i32;
        assert!(progress.changes(&job).is_empty());
        job.runs[1].state = TimedOut as i32;
        assert_eq!(progress.changes(&job), vec!["p1: timed out (run-1)"]);
        progress.finish();
    }
}
