//! `geppetto logs ID [--puppet NAME] [--follow]`: a run's output, byte for
//! byte, on stdout. Nothing else goes to stdout, so the output can be piped
//! or saved exactly as the run wrote it.

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
    };
    let runs = api.call(api.runs().list_runs(request(req))).await?.runs;
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
    let mut offset = 0u64;
    loop {
        let req = pb::ReadLogRequest {
            run_id: run_id.into(),
            offset,
            max_bytes: 0,
        };
        let chunk = api.call(api.runs().read_log(request(req))).await?;
        write_at(&mut offset, chunk.offset, &chunk.data)?;
        // A running run has no eof yet: stop at what the puppeteer holds.
        if chunk.eof || chunk.data.is_empty() || offset >= chunk.log_length {
            return Ok(());
        }
    }
}

/// Output as it comes: `FollowLog`, reopened at the current offset if the
/// link breaks, until the run is finished.
async fn follow(api: &Api, run_id: &str) -> Result<(), Error> {
    let mut offset = 0u64;
    let mut reconnect = Reconnect::default();
    loop {
        let req = Request::new(pb::ReadLogRequest {
            run_id: run_id.into(),
            offset,
            max_bytes: 0,
        });
        let mut stream = match api.call(api.runs().follow_log(req)).await {
            Ok(stream) => stream,
            Err(e) if offset > 0 && reconnect.retry(&e).await => continue,
            Err(e) => return Err(e),
        };
        let error = loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    reconnect.reset();
                    write_at(&mut offset, chunk.offset, &chunk.data)?;
                }
                Ok(None) => return Ok(()),
                Err(status) => break api.error(status),
            }
        };
        if !reconnect.retry(&error).await {
            return Err(error);
        }
    }
}

/// Writes the part of a chunk past `offset` (a resent chunk may overlap
/// what was written) and advances `offset`.
fn write_at(offset: &mut u64, at: u64, data: &[u8]) -> Result<(), Error> {
    let end = at + data.len() as u64;
    if end <= *offset {
        return Ok(());
    }
    let skip = offset.saturating_sub(at) as usize;
    let mut out = std::io::stdout().lock();
    out.write_all(&data[skip..])?;
    out.flush()?;
    *offset = end;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
