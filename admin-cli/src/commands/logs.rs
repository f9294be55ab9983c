//! `geppetto logs ID [--puppet NAME] [--follow]`: a run's output, byte for
//! byte, on stdout. Nothing else goes to stdout, so the output can be piped
//! or saved exactly as the run wrote it.
//!
//! One exception, on purpose: when the puppeteer dropped the middle of a long
//! output (its per-run log limit), a marker line stands where the bytes are
//! missing, a warning goes to stderr, and the command exits non-zero, so a
//! truncated log never passes for a complete one.

use std::io::Write;

use geppetto_proto::v1 as pb;
use pb::list_runs_request::Of;
use tonic::Request;

use crate::api::{Api, Reconnect, request};
use crate::cli::LogsArgs;
use crate::error::Error;
use crate::parse::{IdKind, id_kind};

pub async fn run(api: &Api, args: LogsArgs) -> Result<(), Error> {
    let run_id = match id_kind(&args.id)? {
        IdKind::Run if args.puppet.is_some() => {
            return Err(Error::Usage(
                "--puppet goes with a job id (job-...); a run id names its run already".into(),
            ));
        }
        IdKind::Run => args.id,
        IdKind::Job => find_run(api, &args.id, args.puppet.as_deref()).await?,
    };
    if args.follow {
        follow(api, &run_id).await
    } else {
        read(api, &run_id).await
    }
}

/// The run of `job_id` on `puppet`; without a puppet, the job's only run.
async fn find_run(api: &Api, job_id: &str, puppet: Option<&str>) -> Result<String, Error> {
    let req = pb::ListRunsRequest {
        of: Some(Of::JobId(job_id.into())),
        ..Default::default()
    };
    let runs = super::runs::list_runs(api, req).await?;
    pick_run(job_id, &runs, puppet)
}

pub fn pick_run(job_id: &str, runs: &[pb::Run], puppet: Option<&str>) -> Result<String, Error> {
    let puppets = || {
        let names: Vec<&str> = runs.iter().map(|r| r.puppet.as_str()).collect();
        names.join(", ")
    };
    match puppet {
        Some(name) => runs
            .iter()
            .filter(|r| r.puppet == name)
            .max_by_key(|r| r.created_at.map(|t| (t.seconds, t.nanos)))
            .map(|r| r.id.clone())
            .ok_or_else(|| {
                Error::Api(format!(
                    "not found: job {job_id} has no run on puppet {name:?} (its puppets: {})",
                    if runs.is_empty() {
                        "none".into()
                    } else {
                        puppets()
                    }
                ))
            }),
        None if runs.len() == 1 => Ok(runs[0].id.clone()),
        None if runs.is_empty() => Err(Error::Api(format!("job {job_id} has no runs"))),
        None => Err(Error::Usage(format!(
            "job {job_id} has {} runs: pick one with --puppet NAME ({})",
            runs.len(),
            puppets()
        ))),
    }
}

/// Output held so far: `ReadLog` from offset 0 until the end.
async fn read(api: &Api, run_id: &str) -> Result<(), Error> {
    let mut out = Output::default();
    loop {
        let req = pb::ReadLogRequest {
            run_id: run_id.into(),
            offset: out.offset,
            max_bytes: 0,
        };
        let chunk = api.call(api.runs().read_log(request(req))).await?;
        out.write(chunk.offset, chunk.skipped, &chunk.data)?;
        // A running run has no eof yet: stop at what the puppeteer holds.
        let nothing = chunk.data.is_empty() && chunk.skipped == 0;
        if chunk.eof || nothing || out.offset >= chunk.log_length {
            return out.finish(run_id);
        }
    }
}

/// Output as it comes: `FollowLog`, reopened at the current offset if the
/// link breaks, until the run is finished.
async fn follow(api: &Api, run_id: &str) -> Result<(), Error> {
    // Before any output, a run may spend minutes fetching its artifacts:
    // say so on stderr (stdout keeps only the output).
    let quiet = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fetching = tokio::spawn(show_fetch(api.clone(), run_id.to_string(), quiet.clone()));
    let result = follow_output(api, run_id, &quiet).await;
    fetching.abort();
    result
}

/// How often the fetch is looked at while nothing is printed.
const FETCH_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Prints the run's fetch on stderr while `quiet` (no output yet): a line
/// when it changes, at most every [`FETCH_EVERY`] (every 30 s when stderr
/// is not a terminal).
async fn show_fetch(
    api: Api,
    run_id: String,
    quiet: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::IsTerminal;
    use std::sync::atomic::Ordering;
    let every = if std::io::stderr().is_terminal() {
        FETCH_EVERY
    } else {
        std::time::Duration::from_secs(30)
    };
    let mut last = None;
    while quiet.load(Ordering::Relaxed) {
        let req = pb::GetRunRequest { id: run_id.clone() };
        let Ok(run) = api.call(api.runs().get_run(request(req))).await else {
            return;
        };
        if crate::views::run_finished(run.state) {
            return;
        }
        if let Some(fetch) = &run.fetch {
            let line = crate::views::FetchView::from(fetch).words();
            if last.as_ref() != Some(&line) && quiet.load(Ordering::Relaxed) {
                eprintln!("run {run_id}: {line}");
                last = Some(line);
            }
        } else if last.take().is_some() {
            eprintln!("run {run_id}: artifacts fetched");
        }
        tokio::time::sleep(if run.fetch.is_some() {
            every
        } else {
            FETCH_EVERY
        })
        .await;
    }
}

async fn follow_output(
    api: &Api,
    run_id: &str,
    quiet: &std::sync::atomic::AtomicBool,
) -> Result<(), Error> {
    let mut out = Output::default();
    let mut reconnect = Reconnect::default();
    loop {
        let req = Request::new(pb::ReadLogRequest {
            run_id: run_id.into(),
            offset: out.offset,
            max_bytes: 0,
        });
        let mut stream = match api.call(api.runs().follow_log(req)).await {
            Ok(stream) => stream,
            Err(e) if out.offset > 0 && reconnect.retry(&e).await => continue,
            Err(e) => return Err(e),
        };
        let error = loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    reconnect.reset();
                    if !chunk.data.is_empty() {
                        quiet.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    out.write(chunk.offset, chunk.skipped, &chunk.data)?;
                }
                Ok(None) => {
                    out.finish(run_id)?;
                    return outcome(api, run_id).await;
                }
                Err(status) => break api.error(status),
            }
        };
        if !reconnect.retry(&error).await {
            return Err(error);
        }
    }
}

/// How a followed run ended, on stderr (stdout holds only its output);
/// an error, so a non-zero exit, unless it succeeded.
async fn outcome(api: &Api, run_id: &str) -> Result<(), Error> {
    let req = pb::GetRunRequest { id: run_id.into() };
    let run = api.call(api.runs().get_run(request(req))).await?;
    let text = ending_words(&run);
    if run.state == pb::RunState::Succeeded as i32 {
        eprintln!("{text}");
        Ok(())
    } else {
        Err(Error::Failed(text))
    }
}

/// `run run-1 succeeded (exit 0)`, `run run-1 failed (exit 3): ...`.
pub fn ending_words(run: &pb::Run) -> String {
    let state = crate::views::run_state(run.state).replace('_', " ");
    let view = crate::views::RunView::from(run);
    let how = match (view.exit_code, view.signal) {
        (Some(code), _) => format!(" (exit {code})"),
        (_, Some(signal)) => format!(" (signal {signal})"),
        _ => String::new(),
    };
    let cause = if run.state == pb::RunState::Succeeded as i32 || run.cause.is_empty() {
        String::new()
    } else {
        format!(": {}", run.cause)
    };
    format!("run {} {state}{how}{cause}", run.id)
}

/// The line that stands for the dropped middle of a truncated log.
pub fn gap_marker(dropped: u64) -> String {
    format!(
        "[geppetto: {dropped} bytes dropped here: the log exceeded the server's per-run log limit (log_limit)]"
    )
}

/// What was written to stdout so far.
#[derive(Debug, Default)]
struct Output {
    /// The next offset to write.
    offset: u64,
    /// Bytes of the output the server dropped.
    dropped: u64,
    /// The last byte written was not a newline.
    mid_line: bool,
}

impl Output {
    /// Writes the part of a chunk past `offset` (a resent chunk may overlap
    /// what was written), with a marker line first if the server skipped
    /// dropped bytes before it, and advances `offset`.
    fn write(&mut self, at: u64, skipped: u64, data: &[u8]) -> Result<(), Error> {
        let mut out = std::io::stdout().lock();
        if skipped > 0 && at > self.offset {
            let newline = if self.mid_line { "\n" } else { "" };
            writeln!(out, "{newline}{}", gap_marker(skipped))?;
            self.dropped += skipped;
            self.offset = at;
            self.mid_line = false;
        }
        let end = at + data.len() as u64;
        if end <= self.offset {
            return Ok(());
        }
        let skip = self.offset.saturating_sub(at) as usize;
        out.write_all(&data[skip..])?;
        out.flush()?;
        self.offset = end;
        if let Some(last) = data.last() {
            self.mid_line = *last != b'\n';
        }
        Ok(())
    }

    /// Fails loudly if bytes were missing.
    fn finish(&self, run_id: &str) -> Result<(), Error> {
        if self.dropped == 0 {
            return Ok(());
        }
        Err(Error::Failed(format!(
            "the output of {run_id} is INCOMPLETE: the puppeteer dropped {} bytes in its middle (its per-run log limit); only the head and the tail were printed",
            self.dropped
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_run_ends_with_its_state_exit_and_cause() {
        let mut run = pb::Run {
            id: "run-1".into(),
            state: pb::RunState::Succeeded as i32,
            outcome: pb::Outcome::Exited as i32,
            exit_code: 0,
            cause: "finished".into(),
            ..Default::default()
        };
        assert_eq!(ending_words(&run), "run run-1 succeeded (exit 0)");
        run.state = pb::RunState::Failed as i32;
        run.exit_code = 3;
        run.cause = "exited with 3".into();
        assert_eq!(
            ending_words(&run),
            "run run-1 failed (exit 3): exited with 3"
        );
        run.outcome = pb::Outcome::Signaled as i32;
        run.signal = 9;
        run.cause = "killed by signal 9".into();
        assert_eq!(
            ending_words(&run),
            "run run-1 failed (signal 9): killed by signal 9"
        );
        // A program that could not start has no exit code at all.
        run.outcome = pb::Outcome::StartFailed as i32;
        run.cause = "could not be started".into();
        assert_eq!(ending_words(&run), "run run-1 failed: could not be started");
    }

    fn run(id: &str, puppet: &str, created: i64) -> pb::Run {
        pb::Run {
            id: id.into(),
            puppet: puppet.into(),
            created_at: Some(prost_types::Timestamp {
                seconds: created,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn picks_the_puppets_run() {
        let runs = [
            run("run-a", "web-1", 1),
            run("run-b", "web-2", 1),
            run("run-c", "web-2", 5),
        ];
        assert_eq!(pick_run("job-1", &runs, Some("web-1")).unwrap(), "run-a");
        assert_eq!(pick_run("job-1", &runs, Some("web-2")).unwrap(), "run-c");
        let err = pick_run("job-1", &runs, Some("db-1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no run on puppet \"db-1\"") && err.contains("web-1"),
            "{err}"
        );
        let err = pick_run("job-1", &runs, None).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(pick_run("job-1", &runs[..1], None).unwrap(), "run-a");
    }
}
