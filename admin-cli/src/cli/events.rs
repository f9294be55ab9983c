//! `geppetto events`: which events to print, and whether to follow them.

use clap::Args;

use crate::parse::parse_event_kind;

pub(super) const EVENTS_HELP: &str = "\
Kinds are \"subject.change\": run.queued, run.started, run.succeeded, run.failed, run.lost,
job.succeeded, job.failed, job.awaiting_approval, job.approved, puppet.online, puppet.offline,
puppet.pending, puppet.enrolled, resource.updated, admin.Tasks/CreateTask, ...
A --kind ending in '.' keeps every kind starting with it: --kind run. keeps all run events.

Examples:
  geppetto events                                  # the oldest events kept
  geppetto events --after 1200 --limit 50          # the 50 events after id 1200
  geppetto events --follow --kind job.failed       # one line per failed job, until Ctrl-C
  geppetto events --follow --puppets site=lyon -o json   # one JSON object per line

With --follow a dropped connection is reopened (with growing waits) from the last event
printed, so no event is missed or printed twice; if the puppeteer no longer keeps the
events to resume from, the command says so and exits 1.";

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen (from now on, or after --after), until
    /// Ctrl-C; with -o json, one JSON object per line
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events of this kind (repeatable): exact (run.failed) or a prefix ending
    /// in '.' (run.)
    #[arg(long = "kind", value_name = "KIND", value_parser = parse_event_kind)]
    pub kinds: Vec<String>,
    /// Only events of this job
    #[arg(long, value_name = "JOB")]
    pub job: Option<String>,
    /// Only events about puppets matching this label selector, e.g. "site=lyon"
    #[arg(long, value_name = "SELECTOR")]
    pub puppets: Option<String>,
    /// Only events with a larger id [default: from the oldest kept; with --follow,
    /// from now on]
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
    /// At most this many events [default: 1000]
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        conflicts_with = "follow"
    )]
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    #[test]
    fn events_parse() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "events",
            "--follow",
            "--kind",
            "run.",
            "--kind",
            "job.failed",
            "--job",
            "job-1",
            "--puppets",
            "site=lyon",
            "--after",
            "42",
        ])
        .unwrap();
        let Command::Events(args) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.follow);
        assert_eq!(args.kinds, ["run.", "job.failed"]);
        assert_eq!(args.job.as_deref(), Some("job-1"));
        assert_eq!(args.puppets.as_deref(), Some("site=lyon"));
        assert_eq!(args.after, Some(42));
        assert_eq!(args.limit, None);
        let cli = Cli::try_parse_from(["geppetto", "events", "--limit", "5"]).unwrap();
        let Command::Events(args) = cli.command else {
            panic!("wrong command");
        };
        assert!(!args.follow && args.kinds.is_empty() && args.limit == Some(5));
        for bad in [
            &["--kind", ""][..],
            &["--kind", "run failed"],
            &["--after", "-1"],
            &["--after", "x"],
            &["--limit", "0"],
            &["--follow", "--limit", "5"],
        ] {
            let err = Cli::try_parse_from(["geppetto", "events"].iter().chain(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
