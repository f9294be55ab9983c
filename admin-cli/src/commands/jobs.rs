//! `geppetto jobs ...`

use geppetto_proto::v1 as pb;

use super::watch::{counts_line, verdict, watch};
use crate::api::{Api, request};
use crate::cli::{Format, JobsCommand, RunJobArgs};
use crate::error::Error;
use crate::output::{self, Cell};
use crate::views::{self, JobView, RunSummaryView, TargetView};

pub async fn run(api: &Api, command: JobsCommand, format: Format) -> Result<(), Error> {
    match command {
        JobsCommand::Run(args) => launch(api, args, format).await,
        JobsCommand::List { limit } => {
            let req = pb::ListJobsRequest { limit };
            let list = api.call(api.jobs().list_jobs(request(req))).await?;
            print_list(&list.jobs, format)
        }
        JobsCommand::Show { job } => {
            let req = pb::GetJobRequest { id: job };
            let job = api.call(api.jobs().get_job(request(req))).await?;
            print_one(&job, format)
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
        JobsCommand::Watch { job } => {
            let job = watch(api, &job).await?;
            print_summary(&job, format)?;
            verdict(&job)
        }
    }
}

async fn launch(api: &Api, args: RunJobArgs, format: Format) -> Result<(), Error> {
    let target = match args.target {
        Some(selector) => pb::target::Kind::Selector(selector),
        None => pb::target::Kind::Puppets(pb::PuppetNames {
            names: args.puppets,
        }),
    };
    let req = pb::CreateJobRequest {
        task_name: args.task,
        task_version: args.version.unwrap_or(0),
        target: Some(pb::Target { kind: Some(target) }),
        strategy: None,
    };
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
    print_summary(&job, format)?;
    verdict(&job)
}

/// The end of a watch: the runs table, or the job as JSON.
fn print_summary(job: &pb::Job, format: Format) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(&JobView::from(job)),
        Format::Table => {
            eprintln!(
                "{} {}: {}",
                job.id,
                views::job_state(job.state),
                counts_line(job)
            );
            print_runs(&job.runs)
        }
    }
}

fn print_runs(runs: &[pb::RunSummary]) -> Result<(), Error> {
    let mut table = output::table(["RUN", "PUPPET", "STATE", "EXIT", "CAUSE"]);
    for run in runs {
        let view = RunSummaryView::from(run);
        table.add_row(vec![
            Cell::new(&view.run_id),
            Cell::new(&view.puppet),
            output::state_cell(&view.state),
            Cell::new(view.exit_code.map_or("-".into(), |c| c.to_string())),
            Cell::new(&view.cause),
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
            Cell::new(&job.id),
            Cell::new(format!("{} v{}", job.task_name, job.task_version)),
            Cell::new(TargetView::from(job.target.as_ref())),
            output::state_cell(&views::job_state(job.state)),
            Cell::new(counts_line(job)),
            Cell::new(output::ago(job.created_at.as_ref())),
        ]);
    }
    output::print_table(&table)
}

fn print_one(job: &pb::Job, format: Format) -> Result<(), Error> {
    if format == Format::Json {
        return output::print_json(&JobView::from(job));
    }
    let rows = vec![
        ("job", job.id.clone()),
        ("task", format!("{} v{}", job.task_name, job.task_version)),
        ("target", TargetView::from(job.target.as_ref()).to_string()),
        ("state", views::job_state(job.state)),
        ("created", output::when(job.created_at.as_ref())),
        ("finished", output::when(job.finished_at.as_ref())),
        ("runs", counts_line(job)),
    ];
    output::print_table(&output::fields(rows))?;
    if job.runs.is_empty() {
        return Ok(());
    }
    output::print_section("runs:")?;
    print_runs(&job.runs)
}
