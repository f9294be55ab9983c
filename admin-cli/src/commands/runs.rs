//! `geppetto runs ...`

use geppetto_proto::v1 as pb;
use pb::list_runs_request::Of;

use crate::api::{Api, pages, request};
use crate::cli::{Format, RunsCommand};
use crate::error::Error;
use crate::output;
use crate::views::{self, RunView};

/// Every run the request asks for, a page at a time.
pub async fn list_runs(api: &Api, req: pb::ListRunsRequest) -> Result<Vec<pb::Run>, Error> {
    pages(None, |page_token| {
        let req = pb::ListRunsRequest {
            page_token,
            ..req.clone()
        };
        async move {
            let page = api.call(api.runs().list_runs(request(req))).await?;
            Ok((page.runs, page.next_page_token))
        }
    })
    .await
}

pub async fn run(api: &Api, command: RunsCommand, format: Format) -> Result<(), Error> {
    match command {
        RunsCommand::Show { run } => {
            let req = pb::GetRunRequest { id: run };
            let run = api.call(api.runs().get_run(request(req))).await?;
            print_one(&run, format)
        }
        RunsCommand::List {
            job,
            puppet,
            state,
            target,
        } => {
            let of = match (job, puppet) {
                (Some(job), _) => Some(Of::JobId(job)),
                (None, Some(puppet)) => Some(Of::Puppet(puppet)),
                (None, None) => None,
            };
            let req = pb::ListRunsRequest {
                of,
                states: state,
                selector: target.unwrap_or_default(),
                ..Default::default()
            };
            let runs = list_runs(api, req).await?;
            print_list(&runs, format)
        }
        RunsCommand::Cancel { run } => {
            let req = pb::GetRunRequest { id: run };
            let run = api.call(api.runs().cancel_run(request(req))).await?;
            match format {
                Format::Json => output::print_json(&RunView::from(&run)),
                Format::Table => {
                    eprintln!(
                        "run {}: {}",
                        run.id,
                        views::run_state(run.state).replace('_', " ")
                    );
                    Ok(())
                }
            }
        }
    }
}

/// `exit 3`, `signal 9`, `timed out`... or `-` while it runs.
fn ending(run: &RunView) -> String {
    match (run.exit_code, run.signal, &run.outcome) {
        (Some(code), _, _) => code.to_string(),
        (_, Some(signal), _) => format!("signal {signal}"),
        (_, _, Some(outcome)) => outcome.replace('_', " "),
        _ => "-".into(),
    }
}

fn print_list(runs: &[pb::Run], format: Format) -> Result<(), Error> {
    let views: Vec<_> = runs.iter().map(RunView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    let mut table = output::table([
        "RUN", "JOB", "PUPPET", "TASK", "STATE", "ATTEMPT", "EXIT", "CREATED", "CAUSE",
    ]);
    for (view, run) in views.iter().zip(runs) {
        table.add_row(vec![
            output::cell(&view.id),
            output::cell(&view.job_id),
            output::cell(&view.puppet),
            output::cell(format!("{} v{}", view.task_name, view.task_version)),
            output::state_cell(&view.state),
            output::cell(view.attempt),
            output::cell(ending(view)),
            output::cell(output::ago(run.created_at.as_ref())),
            output::cell(output::cause(&view.cause)),
        ]);
    }
    output::print_table(&table)
}

/// The log's size, and loudly whether it is incomplete.
fn log_words(run: &pb::Run) -> String {
    if run.log_truncated {
        format!(
            "{}: TRUNCATED, {} bytes dropped (head and tail kept; the server's per-run log limit)",
            output::bytes(run.log_length),
            run.log_dropped
        )
    } else {
        output::bytes(run.log_length)
    }
}

/// Both durations: the process's, and the run's from its start to its end
/// (artifacts fetched, process started, output sent), which can be far
/// longer over a slow link.
fn duration_words(run: &pb::Run) -> String {
    let process = run
        .duration
        .as_ref()
        .map(|_| output::human_duration(run.duration.as_ref()));
    let whole = match (
        run.started_at.as_ref().and_then(output::to_system_time),
        run.finished_at.as_ref().and_then(output::to_system_time),
    ) {
        (Some(start), Some(end)) => end.duration_since(start).ok(),
        _ => None,
    };
    match (process, whole) {
        (Some(process), Some(whole)) => format!(
            "{process} of its process; {} from start to end (artifacts fetched, output sent)",
            output::short_duration(whole)
        ),
        (Some(process), None) => format!("{process} of its process"),
        (None, Some(whole)) => format!("{} from start to end", output::short_duration(whole)),
        (None, None) => "-".into(),
    }
}

fn print_one(run: &pb::Run, format: Format) -> Result<(), Error> {
    let view = RunView::from(run);
    if format == Format::Json {
        return output::print_json(&view);
    }
    let mut rows = vec![
        ("run", view.id.clone()),
        ("job", view.job_id.clone()),
        ("puppet", view.puppet.clone()),
        ("task", format!("{} v{}", view.task_name, view.task_version)),
        ("state", view.state.replace('_', " ")),
        ("attempt", view.attempt.to_string()),
        (
            "cause",
            super::puppets::or_dash(&output::cause(&view.cause)),
        ),
        (
            "outcome",
            view.outcome.clone().unwrap_or("-".into()).replace('_', " "),
        ),
        ("exit", ending(&view)),
        ("created", output::when(run.created_at.as_ref())),
        ("started", output::when(run.started_at.as_ref())),
        ("finished", output::when(run.finished_at.as_ref())),
        ("duration", duration_words(run)),
        ("log", log_words(run)),
        ("duplicate reports", run.duplicate_reports.to_string()),
    ];
    if let Some(fetch) = &view.fetch {
        rows.insert(6, ("now", fetch.words()));
    }
    output::print_table(&output::fields(rows))?;
    if run.history.is_empty() {
        return Ok(());
    }
    output::print_section("history:")?;
    let mut table = output::table(["STATE", "AT", "ATTEMPT", "CAUSE"]);
    for t in &run.history {
        table.add_row(vec![
            output::state_cell(&views::run_state(t.state)),
            output::cell(output::rfc3339(t.at.as_ref()).unwrap_or("-".into())),
            output::cell(t.attempt),
            output::cell(&t.cause),
        ]);
    }
    output::print_table(&table)
}
