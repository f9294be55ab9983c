//! `geppetto jobs ...`

use geppetto_proto::v1 as pb;

use super::watch::{counts_line, verdict, watch};
use crate::api::{Api, pages_at_most, request};
use crate::cli::{Format, JobsCommand, RetryOnly, RunJobArgs, StrategyArgs};
use crate::error::Error;
use crate::output;
use crate::parse::Limit;
use crate::views::{self, JobView, RunSummaryView, TargetView};

pub async fn run(api: &Api, command: JobsCommand, format: Format) -> Result<(), Error> {
    match command {
        JobsCommand::Run(args) => launch(api, args, format).await,
        JobsCommand::List { limit, state } => {
            // A page filtered by state looks at a thousand jobs: the newest
            // ten thousand at most, so that a rare state does not read the
            // whole history.
            let max_pages = if state.is_empty() { usize::MAX } else { 10 };
            let (jobs, more) = pages_at_most(Some(limit as usize), max_pages, |page_token| {
                let req = pb::ListJobsRequest {
                    limit,
                    states: state.clone(),
                    page_token,
                };
                async move {
                    let page = api.call(api.jobs().list_jobs(request(req))).await?;
                    Ok((page.jobs, page.next_page_token))
                }
            })
            .await?;
            if more {
                eprintln!(
                    "note: only the newest 10,000 jobs were looked at for --state; fewer than {limit} matched"
                );
            }
            print_list(&jobs, format)
        }
        JobsCommand::Show { job, state, target } => {
            let req = pb::GetJobRequest { id: job.clone() };
            let mut shown = api.call(api.jobs().get_job(request(req))).await?;
            if !state.is_empty() || target.is_some() {
                // The runs the puppeteer finds for the filters, in the
                // job's own order.
                let req = pb::ListRunsRequest {
                    of: Some(pb::list_runs_request::Of::JobId(job)),
                    states: state,
                    selector: target.unwrap_or_default(),
                    ..Default::default()
                };
                let runs = super::runs::list_runs(api, req).await?;
                let kept: std::collections::HashSet<&str> =
                    runs.iter().map(|r| r.id.as_str()).collect();
                shown.runs.retain(|r| kept.contains(r.run_id.as_str()));
            }
            print_one(&shown, format)
        }
        JobsCommand::Cancel { job } => {
            let req = pb::CancelJobRequest { id: job };
            let job = api.call(api.jobs().cancel_job(request(req))).await?;
            match format {
                Format::Json => output::print_json(&JobView::from(&job)),
                Format::Table => {
                    eprintln!("cancelled job {}: {}", job.id, counts_line(&job));
                    Ok(())
                }
            }
        }
        JobsCommand::Watch { job, all_runs } => {
            let job = watch(api, &job).await?;
            print_summary(&job, all_runs, format)?;
            verdict(&job)
        }
        JobsCommand::Approve { job } => {
            let req = pb::ApproveJobRequest { id: job };
            let job = api.call(api.jobs().approve_job(request(req))).await?;
            print_changed(&job, &format!("approved job {}", job.id), format)
        }
        JobsCommand::Reject { job } => {
            let req = pb::ApproveJobRequest { id: job };
            let job = api.call(api.jobs().reject_job(request(req))).await?;
            print_changed(&job, &format!("rejected job {}", job.id), format)
        }
        JobsCommand::Retry { job, only } => {
            let req = pb::RetryJobRequest {
                id: job,
                only: only.as_str().into(),
            };
            let job = api.call(api.jobs().retry_job(request(req))).await?;
            let which = match only {
                RetryOnly::Skipped => "the skipped runs",
                RetryOnly::Failed => "the failed runs",
                RetryOnly::All => "every run that did not succeed",
            };
            let what = format!("retrying {which} of job {}", job.id);
            print_changed(&job, &what, format)
        }
        JobsCommand::Skip { job, puppet } => {
            let req = pb::SkipRunsRequest {
                job_id: job,
                puppets: puppet.clone(),
            };
            let job = api.call(api.jobs().skip_runs(request(req))).await?;
            let what = format!(
                "skipped the run{} of job {} on {}",
                if puppet.len() == 1 { "" } else { "s" },
                job.id,
                puppet.join(", ")
            );
            print_changed(&job, &what, format)
        }
        JobsCommand::Ack { jobs } => {
            let mut acknowledged = Vec::new();
            for id in jobs {
                let req = pb::GetJobRequest { id };
                let job = api.call(api.jobs().acknowledge_job(request(req))).await?;
                if format == Format::Table {
                    eprintln!(
                        "acknowledged job {} ({}, by {})",
                        job.id,
                        views::job_state(job.state).replace('_', " "),
                        job.acknowledged_by
                    );
                }
                acknowledged.push(JobView::from(&job));
            }
            match format {
                Format::Json => output::print_json(&acknowledged),
                Format::Table => Ok(()),
            }
        }
    }
}

/// What a command that changes a job prints: the job as JSON, or one line
/// on stderr (stdout stays empty, as for `jobs cancel`).
fn print_changed(job: &pb::Job, what: &str, format: Format) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(&JobView::from(job)),
        Format::Table => {
            eprintln!(
                "{what}: {}, {}",
                views::job_state(job.state).replace('_', " "),
                counts_line(job)
            );
            Ok(())
        }
    }
}

fn limit(limit: Option<Limit>) -> Option<pb::Limit> {
    limit.map(|l| pb::Limit {
        kind: Some(match l {
            Limit::Count(n) => pb::limit::Kind::Count(n),
            Limit::Percent(p) => pb::limit::Kind::Percent(p),
        }),
    })
}

fn duration(
    d: Option<std::time::Duration>,
    flag: &str,
) -> Result<Option<prost_types::Duration>, Error> {
    d.map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| Error::Usage(format!("{flag} is too long")))
}

/// The strategy of `jobs run`, or none when no rollout option was given (the
/// puppeteer's default: every run starts as soon as it can).
fn strategy(args: StrategyArgs) -> Result<Option<pb::Strategy>, Error> {
    let strategy = pb::Strategy {
        max_in_flight: limit(args.max_in_flight),
        max_failures: limit(args.max_failures),
        rolling: args.rolling,
        deadline: duration(args.deadline, "--deadline")?,
        offline_wait: duration(args.offline_wait, "--offline-wait")?,
        after_job: args.after.unwrap_or_default(),
        per_puppet: args.per_puppet,
        approval: args.approval,
        ordered: args.ordered,
    };
    Ok((strategy != pb::Strategy::default()).then_some(strategy))
}

/// The request of `jobs run`.
fn create_request(args: &RunJobArgs) -> Result<pb::CreateJobRequest, Error> {
    let target = match &args.target {
        Some(selector) => pb::target::Kind::Selector(selector.clone()),
        None => pb::target::Kind::Puppets(pb::PuppetNames {
            names: args.puppets.clone(),
        }),
    };
    Ok(pb::CreateJobRequest {
        task_name: args.task.clone(),
        task_version: args.version.unwrap_or(0),
        target: Some(pb::Target { kind: Some(target) }),
        strategy: strategy(args.strategy.clone())?,
    })
}

pub(crate) async fn launch(api: &Api, args: RunJobArgs, format: Format) -> Result<(), Error> {
    let req = create_request(&args)?;
    let job = api.call(api.jobs().create_job(request(req))).await?;
    if !args.wait {
        return match format {
            Format::Json => output::print_json(&JobView::from(&job)),
            Format::Table => {
                println!("{}", job.id);
                Ok(())
            }
        };
    }
    if format == Format::Table {
        println!("{}", job.id);
    }
    let job = watch(api, &job.id).await?;
    print_summary(&job, args.all_runs, format)?;
    verdict(&job)
}

/// The end of a watch: the runs that did not succeed (`all`: every run),
/// or the job as JSON.
fn print_summary(job: &pb::Job, all: bool, format: Format) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(&JobView::from(job)),
        Format::Table => {
            eprintln!(
                "{} {}: {}",
                job.id,
                views::job_state(job.state).replace('_', " "),
                counts_line(job)
            );
            let shown: Vec<pb::RunSummary> = job
                .runs
                .iter()
                .filter(|r| all || r.state != pb::RunState::Succeeded as i32)
                .cloned()
                .collect();
            if shown.is_empty() {
                return Ok(());
            }
            print_runs(&shown)
        }
    }
}

fn print_runs(runs: &[pb::RunSummary]) -> Result<(), Error> {
    let mut table = output::table(["RUN", "PUPPET", "STATE", "EXIT", "CAUSE"]);
    for run in runs {
        let view = RunSummaryView::from(run);
        table.add_row(vec![
            output::cell(&view.run_id),
            output::cell(&view.puppet),
            output::state_cell(&view.state),
            output::cell(view.exit_code.map_or("-".into(), |c| c.to_string())),
            output::cell(match &view.fetch {
                Some(fetch) => fetch.words(),
                None => output::cause(&view.cause),
            }),
        ]);
    }
    output::print_table(&table)
}

fn print_list(jobs: &[pb::Job], format: Format) -> Result<(), Error> {
    if format == Format::Json {
        let views: Vec<_> = jobs.iter().map(JobView::from).collect();
        return output::print_json(&views);
    }
    let mut table = output::table(["JOB", "TASK", "TARGET", "STATE", "RUNS", "CREATED"]);
    for job in jobs {
        table.add_row(vec![
            output::cell(&job.id),
            output::cell(format!("{} v{}", job.task_name, job.task_version)),
            output::cell(TargetView::from(job.target.as_ref())),
            output::state_cell(&views::job_state(job.state)),
            output::cell(counts_line(job)),
            output::cell(output::ago(job.created_at.as_ref())),
        ]);
    }
    output::print_table(&table)
}

fn print_one(job: &pb::Job, format: Format) -> Result<(), Error> {
    if format == Format::Json {
        return output::print_json(&JobView::from(job));
    }
    let strategy = job.strategy.clone().unwrap_or_default();
    let mut rows = vec![
        ("job", job.id.clone()),
        ("task", format!("{} v{}", job.task_name, job.task_version)),
        ("target", TargetView::from(job.target.as_ref()).to_string()),
        ("state", views::job_state(job.state).replace('_', " ")),
        ("strategy", views::strategy_line(&strategy)),
    ];
    if let Some(line) = approval_line(job) {
        rows.push(("approval", line));
    }
    rows.extend([
        ("created", output::when(job.created_at.as_ref())),
        ("finished", output::when(job.finished_at.as_ref())),
        ("runs", counts_line(job)),
    ]);
    output::print_table(&output::fields(rows))?;
    if !job.not_targeted.is_empty() {
        output::print_section("not targeted:")?;
        let mut table = output::table(["PUPPET", "CAUSE"]);
        for skipped in &job.not_targeted {
            table.add_row(vec![
                output::cell(&skipped.puppet),
                output::cell(&skipped.cause),
            ]);
        }
        output::print_table(&table)?;
    }
    if job.runs.is_empty() {
        return Ok(());
    }
    output::print_section("runs:")?;
    print_runs(&job.runs)
}

/// Who approved or rejected the job and when, or what it waits for; none
/// for a job without an approval gate.
fn approval_line(job: &pb::Job) -> Option<String> {
    if !job.approved_by.is_empty() {
        let verb = if job.rejected { "rejected" } else { "approved" };
        return Some(format!(
            "{verb} by {} at {}",
            job.approved_by,
            output::when(job.approved_at.as_ref())
        ));
    }
    if job.state == pb::JobState::AwaitingApproval as i32 {
        return Some(format!(
            "awaiting: geppetto jobs approve {} (or jobs reject {0})",
            job.id
        ));
    }
    job.strategy
        .as_ref()
        .is_some_and(|s| s.approval)
        .then(|| "required, not given".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn request_of(args: &[&str]) -> pb::CreateJobRequest {
        let cli = Cli::try_parse_from(["geppetto", "jobs", "run"].iter().chain(args)).unwrap();
        let Command::Jobs(JobsCommand::Run(args)) = cli.command else {
            panic!("wrong command");
        };
        create_request(&args).unwrap()
    }

    #[test]
    fn no_rollout_option_sends_no_strategy() {
        let req = request_of(&["patch", "--target", "env=test"]);
        assert_eq!(req.task_name, "patch");
        assert_eq!(
            req.target.unwrap().kind,
            Some(pb::target::Kind::Selector("env=test".into()))
        );
        assert_eq!(req.strategy, None);
    }

    #[test]
    fn rollout_options_make_the_strategy() {
        let req = request_of(&[
            "patch",
            "--target",
            "env=prod",
            "--after",
            "job-1",
            "--per-puppet",
            "--approval",
            "--rolling",
            "--max-failures",
            "1",
            "--max-in-flight",
            "25%",
            "--deadline",
            "2h",
            "--offline-wait",
            "30s",
            "--ordered",
        ]);
        let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        assert_eq!(
            req.strategy.unwrap(),
            pb::Strategy {
                max_in_flight: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Percent(25))
                }),
                max_failures: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(1))
                }),
                rolling: true,
                deadline: secs(7200),
                offline_wait: secs(30),
                after_job: "job-1".into(),
                per_puppet: true,
                approval: true,
                ordered: true,
            }
        );
        let req = request_of(&["patch", "--puppet", "web-1", "--approval"]);
        assert_eq!(
            req.strategy.unwrap(),
            pb::Strategy {
                approval: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn approval_lines() {
        let mut job = pb::Job {
            id: "job-1".into(),
            state: pb::JobState::Running as i32,
            ..Default::default()
        };
        assert_eq!(approval_line(&job), None);
        job.state = pb::JobState::AwaitingApproval as i32;
        job.strategy = Some(pb::Strategy {
            approval: true,
            ..Default::default()
        });
        assert_eq!(
            approval_line(&job).unwrap(),
            "awaiting: geppetto jobs approve job-1 (or jobs reject job-1)"
        );
        job.state = pb::JobState::Running as i32;
        job.approved_by = "alice".into();
        assert_eq!(approval_line(&job).unwrap(), "approved by alice at -");
        job.rejected = true;
        assert!(
            approval_line(&job)
                .unwrap()
                .starts_with("rejected by alice")
        );
    }
}
