//! `geppetto events [--follow]`: what happened, in id order. Without
//! --follow, one `ListEvents`; with it, `WatchEvents`, reopened after the
//! last event printed when the link drops, until Ctrl-C.

use std::io::Write;
use std::time::Duration;

use geppetto_proto::v1 as pb;
use tonic::Request;

use crate::api::{Api, Reconnect, request};
use crate::cli::{EventsArgs, Format};
use crate::error::Error;
use crate::output::{self, Cell};
use crate::views::EventView;

/// What the puppeteer answers at most when no limit is given.
const SERVER_DEFAULT_LIMIT: usize = 1000;

/// Reopenings of a followed stream in a row before giving up, and their
/// waits: 500ms, 1s, 2s... up to 30s (about four minutes in all).
const FOLLOW_RETRIES: u32 = 12;
const FOLLOW_FIRST_DELAY: Duration = Duration::from_millis(500);
const FOLLOW_MAX_DELAY: Duration = Duration::from_secs(30);

pub async fn run(api: &Api, args: EventsArgs, format: Format) -> Result<(), Error> {
    if args.follow {
        tokio::select! {
            result = follow(api, &args, format) => result,
            // Ctrl-C is how a follow ends: not an error.
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        list(api, &args, format).await
    }
}

/// The request of both calls, resuming after `after_id`.
pub fn events_request(args: &EventsArgs, after_id: u64) -> pb::WatchEventsRequest {
    pb::WatchEventsRequest {
        after_id,
        from_start: false,
        kinds: args.kinds.clone(),
        job_id: args.job.clone().unwrap_or_default(),
        puppet_selector: args.puppets.clone().unwrap_or_default(),
        limit: if args.follow {
            0
        } else {
            args.limit.unwrap_or(0)
        },
    }
}

async fn list(api: &Api, args: &EventsArgs, format: Format) -> Result<(), Error> {
    let limit = args.limit.map_or(SERVER_DEFAULT_LIMIT, |l| l as usize);
    // Page by id: the server answers at most 1000 events at a time.
    let mut events: Vec<pb::Event> = Vec::new();
    let mut after = args.after.unwrap_or(0);
    while events.len() < limit {
        let mut req = events_request(args, after);
        req.limit = (limit - events.len()).min(u32::MAX as usize) as u32;
        let page = api.call(api.events().list_events(request(req))).await?;
        let asked = req_len(limit - events.len());
        let got = page.events.len();
        let Some(last) = page.events.last() else {
            break;
        };
        after = last.id;
        events.extend(page.events);
        if got < asked {
            break;
        }
    }
    let list = pb::ListEventsResponse {
        events,
        oldest_id: 0,
    };
    if list.events.len() >= limit
        && let Some(last) = list.events.last()
    {
        eprintln!(
            "note: only {limit} events are shown; the next ones with --after {}",
            last.id
        );
    }
    if format == Format::Json {
        let views: Vec<_> = list.events.iter().map(EventView::from).collect();
        return output::print_json(&views);
    }
    let mut table = output::table(["ID", "TIME", "KIND", "ACTOR", "SUMMARY"]);
    for e in &list.events {
        table.add_row(vec![
            output::cell(e.id),
            output::cell(time(e.at.as_ref())),
            kind_cell(&e.kind),
            output::cell(super::puppets::or_dash(&e.actor)),
            output::cell(super::puppets::or_dash(&e.summary)),
        ]);
    }
    output::print_table(&table)
}

/// How many events one page brings at most when `wanted` are still wanted
/// (the server's page bound).
fn req_len(wanted: usize) -> usize {
    wanted.min(1000)
}

/// Prints events as they come. The stream has no deadline (it lasts as
/// long as the operator wants); opening it has one.
async fn follow(api: &Api, args: &EventsArgs, format: Format) -> Result<(), Error> {
    let mut printer = Printer::new(args.after.unwrap_or(0), format);
    let mut reconnect =
        Reconnect::with_backoff(FOLLOW_RETRIES, FOLLOW_FIRST_DELAY, FOLLOW_MAX_DELAY);
    let mut opened_once = false;
    loop {
        let req = Request::new(events_request(args, printer.last_id));
        let mut stream = match api.call(api.events().watch_events(req)).await {
            Ok(stream) => stream,
            // A first failure is a wrong server or token: say it at once.
            Err(e) if opened_once && reconnect.retry(&e).await => continue,
            Err(e) => return Err(e),
        };
        opened_once = true;
        let error = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    reconnect.reset();
                    printer.print(&event)?;
                }
                // The puppeteer closed the stream (e.g. it is restarting).
                Ok(None) => {
                    break Error::Unreachable {
                        url: api.url().into(),
                        cause: "the event stream ended".into(),
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

/// Prints followed events once each, in id order, and remembers the last
/// one to resume after.
#[derive(Debug)]
struct Printer {
    last_id: u64,
    format: Format,
}

impl Printer {
    fn new(after: u64, format: Format) -> Self {
        Printer {
            last_id: after,
            format,
        }
    }

    fn print(&mut self, event: &pb::Event) -> Result<(), Error> {
        let Some(line) = self.line(event) else {
            return Ok(());
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    }

    /// The line of a new event; `None` for one already printed (a resent
    /// event after a reconnection).
    fn line(&mut self, event: &pb::Event) -> Option<String> {
        if event.id <= self.last_id {
            return None;
        }
        self.last_id = event.id;
        Some(match self.format {
            Format::Json => {
                serde_json::to_string(&EventView::from(event)).expect("an event view serializes")
            }
            Format::Table => event_line(event),
        })
    }
}

/// `42 2024-05-01T10:00:00Z run.succeeded run-... on web-1 succeeded`
pub fn event_line(e: &pb::Event) -> String {
    format!(
        "{} {} {} {}",
        e.id,
        time(e.at.as_ref()),
        super::puppets::or_dash(&e.kind),
        e.summary.trim()
    )
    .trim_end()
    .to_string()
}

/// An event's time, to the second.
fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(output::to_system_time)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// The kind, coloured by its change word (`run.failed` as `failed`).
fn kind_cell(kind: &str) -> Cell {
    let change = kind.rsplit('.').next().unwrap_or(kind);
    match output::state_color(change) {
        Some(color) if output::colors() => output::cell(kind).fg(color),
        _ => output::cell(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> EventsArgs {
        let cli = crate::Cli::try_parse_from(["geppetto", "events"].iter().chain(extra)).unwrap();
        match cli.command {
            crate::cli::Command::Events(args) => args,
            _ => panic!("wrong command"),
        }
    }

    fn event(id: u64, kind: &str, summary: &str) -> pb::Event {
        pb::Event {
            id,
            at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            kind: kind.into(),
            summary: summary.into(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_carry_the_filters() {
        let req = events_request(
            &args(&[
                "--kind",
                "run.",
                "--job",
                "job-1",
                "--puppets",
                "env=test",
                "--limit",
                "10",
            ]),
            0,
        );
        assert_eq!(req.kinds, ["run."]);
        assert_eq!(req.job_id, "job-1");
        assert_eq!(req.puppet_selector, "env=test");
        assert_eq!((req.after_id, req.limit, req.from_start), (0, 10, false));
        let req = events_request(&args(&["--follow"]), 42);
        assert_eq!((req.after_id, req.limit), (42, 0));
        assert!(req.kinds.is_empty() && req.job_id.is_empty());
    }

    #[test]
    fn follow_lines() {
        assert_eq!(
            event_line(&event(42, "run.succeeded", "run-a on web-1 succeeded")),
            "42 2023-11-14T22:13:20Z run.succeeded run-a on web-1 succeeded"
        );
        let mut printer = Printer::new(0, Format::Json);
        let line = printer
            .line(&event(3, "job.failed", "job-1 failed"))
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["id"], 3);
        assert_eq!(value["kind"], "job.failed");
        assert!(!line.contains('\n'), "one object per line: {line}");
    }

    #[test]
    fn resent_events_are_printed_once() {
        let mut printer = Printer::new(5, Format::Table);
        assert!(printer.line(&event(5, "run.queued", "")).is_none());
        assert!(printer.line(&event(6, "run.queued", "")).is_some());
        assert!(printer.line(&event(6, "run.queued", "")).is_none());
        assert!(printer.line(&event(9, "run.started", "")).is_some());
        assert_eq!(printer.last_id, 9);
        assert!(printer.line(&event(8, "run.started", "")).is_none());
    }
}
