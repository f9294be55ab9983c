//! `geppetto jobs`: launching a task, following and steering its job.

use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};

use crate::parse::{Limit, parse_duration, parse_limit};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Launches a task and prints the job id
    Run(RunJobArgs),
    /// Lists jobs, newest first
    List {
        /// At most this many jobs
        #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Only jobs in this state (repeat it, or comma-separate): running,
        /// awaiting_approval, succeeded, failed, cancelled, rejected
        #[arg(long, value_delimiter = ',', value_name = "STATE", value_parser = crate::parse::parse_job_state)]
        state: Vec<i32>,
    },
    /// Shows a job and one row per run
    Show {
        job: String,
        /// Only runs in this state (repeat it, or comma-separate): queued, waiting,
        /// offered, running, succeeded, failed, timed_out, cancelled, lost,
        /// interrupted, skipped
        #[arg(long, value_delimiter = ',', value_name = "STATE", value_parser = crate::parse::parse_run_state)]
        state: Vec<i32>,
        /// Only runs of the puppets this label selector matches, e.g. "site=lyon"
        #[arg(long, value_name = "SELECTOR")]
        target: Option<String>,
    },
    /// Cancels every unfinished run of a job
    Cancel { job: String },
    /// Follows a job until it is finished (through any wait for approval); exits 1
    /// if a run did not succeed
    Watch {
        job: String,
        /// The summary lists every run, not only those that did not succeed
        #[arg(long)]
        all_runs: bool,
    },
    /// Lets a job launched with --approval start; recorded with your name
    Approve { job: String },
    /// Refuses a job awaiting approval: its runs are skipped
    Reject { job: String },
    /// Gives the runs of a job that ended without success a new attempt, e.g. those
    /// skipped while their puppet was offline
    Retry {
        job: String,
        /// Which runs to try again
        #[arg(long, value_enum, default_value_t = RetryOnly::Skipped, value_name = "RUNS")]
        only: RetryOnly,
    },
    /// Skips, now, a job's runs that have not started on the named puppets (e.g.
    /// waiting for a puppet that is offline); `jobs retry JOB` runs them later
    Skip {
        job: String,
        /// The puppet whose run to skip (repeat it, or give a comma-separated list)
        #[arg(long, required = true, value_delimiter = ',', value_name = "NAME")]
        puppet: Vec<String>,
    },
    /// Marks finished jobs as seen: they leave "needs attention" in `geppetto status`
    Ack {
        /// One or more finished jobs
        #[arg(required = true)]
        jobs: Vec<String>,
    },
}

/// Which runs `jobs retry` tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RetryOnly {
    /// Runs that were skipped (offline puppet, deadline, upstream failure, ...)
    Skipped,
    /// Runs that failed, timed out, were lost or interrupted
    Failed,
    /// Every run that did not succeed
    All,
}

impl RetryOnly {
    /// The word the API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOnly::Skipped => "skipped",
            RetryOnly::Failed => "failed",
            RetryOnly::All => "all",
        }
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("on").required(true).multiple(false)))]
pub struct RunJobArgs {
    /// Name of the task
    pub task: String,
    /// Label selector of the enabled puppets to run on, e.g. "os=debian,env=test",
    /// or group:NAME for the members of a group (see `geppetto groups`)
    #[arg(long, value_name = "SELECTOR", group = "on")]
    pub target: Option<String>,
    /// Puppet to run on (repeatable)
    #[arg(long = "puppet", value_name = "NAME", group = "on")]
    pub puppets: Vec<String>,
    /// Task version to run [default: the latest]
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,
    /// Wait until the job is finished, show progress on stderr (one updating
    /// display on a terminal, one line per change otherwise), then a summary of
    /// the runs that did not succeed; exits 1 if a run did not succeed. With
    /// --approval, keeps waiting while the job awaits approval
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the summary lists every run, not only those that did not succeed
    #[arg(long, requires = "wait")]
    pub all_runs: bool,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

/// How a job's runs are rolled out. Without any of these, every run starts as
/// soon as its puppet can take it.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Rollout")]
pub struct StrategyArgs {
    /// At most this many runs offered or running at once: a count (3) or a
    /// percentage of the job's runs (25%, rounded up) [default: no limit]
    #[arg(
        long,
        value_parser = parse_limit,
        value_name = "N|P%",
        allow_negative_numbers = true
    )]
    pub max_in_flight: Option<Limit>,
    /// Once this many runs failed (failed, timed out, lost, interrupted), no new run
    /// starts and the rest are skipped: a count (1) or a percentage (10%)
    /// [default: no limit]
    #[arg(
        long,
        value_parser = parse_limit,
        value_name = "N|P%",
        allow_negative_numbers = true
    )]
    pub max_failures: Option<Limit>,
    /// One puppet after another, in name order: the next starts when the current
    /// one succeeded or was skipped; a failure stops the rollout unless
    /// --max-failures allows more
    #[arg(long)]
    pub rolling: bool,
    /// Runs not started this long after the launch are skipped, e.g. 2h
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub deadline: Option<Duration>,
    /// A run whose puppet has not polled for this long is skipped (cause "offline")
    /// instead of waiting for it, e.g. 30s; `jobs retry` gives it another try
    /// [default: the puppeteer's; `jobs show` tells]
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub offline_wait: Option<Duration>,
    /// Start only once this job succeeded; if it fails, this job's runs are skipped
    #[arg(long, value_name = "JOB")]
    pub after: Option<String>,
    /// With --after: each puppet's run starts once that puppet's run of the other
    /// job succeeded, instead of waiting for the whole job
    #[arg(long, requires = "after")]
    pub per_puppet: bool,
    /// The job waits as "awaiting approval" until `geppetto jobs approve JOB`
    /// (or `jobs reject JOB`)
    #[arg(long)]
    pub approval: bool,
    /// Keep strict queue order on each puppet: a run waiting for a resource holds
    /// back this job's later runs on the same puppet
    #[arg(long)]
    pub ordered: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn jobs_run_takes_rollout_options() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "jobs",
            "run",
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
            "--offline-wait",
            "30s",
            "--wait",
        ])
        .unwrap();
        let Command::Jobs(JobsCommand::Run(args)) = cli.command else {
            panic!("wrong command");
        };
        let s = args.strategy;
        assert_eq!(s.max_failures, Some(Limit::Count(1)));
        assert_eq!(s.max_in_flight, Some(Limit::Percent(25)));
        assert_eq!(s.offline_wait, Some(Duration::from_secs(30)));
        assert_eq!(s.after.as_deref(), Some("job-1"));
        assert!(s.per_puppet && s.approval && s.rolling && !s.ordered && args.wait);
        assert!(s.deadline.is_none());

        let run = |extra: &[&str]| {
            Cli::try_parse_from(
                ["geppetto", "jobs", "run", "t", "--target", "a=b"]
                    .iter()
                    .chain(extra),
            )
        };
        let err = run(&["--per-puppet"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--after"), "{err}");
        for bad in ["0", "0%", "101%", "x%", "-1"] {
            let err = run(&["--max-failures", bad]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains("invalid limit"), "{bad}: {err}");
        }
        assert_eq!(
            run(&["--deadline", "soon"]).unwrap_err().exit_code(),
            2,
            "bad deadline"
        );
    }

    #[test]
    fn jobs_approve_reject_retry() {
        let cli = Cli::try_parse_from(["geppetto", "jobs", "approve", "job-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Jobs(JobsCommand::Approve { job }) if job == "job-1"
        ));
        let cli = Cli::try_parse_from(["geppetto", "jobs", "reject", "job-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Jobs(JobsCommand::Reject { .. })
        ));
        let cli = Cli::try_parse_from(["geppetto", "jobs", "retry", "job-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Jobs(JobsCommand::Retry {
                only: RetryOnly::Skipped,
                ..
            })
        ));
        for (word, only) in [
            ("skipped", RetryOnly::Skipped),
            ("failed", RetryOnly::Failed),
            ("all", RetryOnly::All),
        ] {
            let cli = Cli::try_parse_from(["geppetto", "jobs", "retry", "job-1", "--only", word])
                .unwrap();
            let Command::Jobs(JobsCommand::Retry { only: got, .. }) = cli.command else {
                panic!("wrong command");
            };
            assert_eq!(got, only);
            assert_eq!(got.as_str(), word);
        }
        let err = Cli::try_parse_from(["geppetto", "jobs", "retry", "job-1", "--only", "lost"])
            .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
