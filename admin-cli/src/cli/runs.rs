//! `geppetto runs`: one job on one puppet.

use clap::{ArgGroup, Subcommand};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Shows a run and its state history
    Show { run: String },
    /// Lists runs: those of a job, of a puppet, or (neither) every run not
    /// finished yet; filtered by state and by puppet selector
    #[command(group(ArgGroup::new("of").required(false).multiple(false)))]
    List {
        /// Runs of this job
        #[arg(long, value_name = "JOB", group = "of")]
        job: Option<String>,
        /// Runs on this puppet
        #[arg(long, value_name = "NAME", group = "of")]
        puppet: Option<String>,
        /// Only runs in this state (repeat it, or comma-separate): queued, waiting,
        /// offered, running, succeeded, failed, timed_out, cancelled, lost,
        /// interrupted, skipped
        #[arg(long, value_delimiter = ',', value_name = "STATE", value_parser = crate::parse::parse_run_state)]
        state: Vec<i32>,
        /// Only runs of the puppets this label selector matches, e.g. "site=lyon"
        #[arg(long, value_name = "SELECTOR")]
        target: Option<String>,
    },
    /// Cancels a run; a running one is killed on its puppet
    Cancel { run: String },
}
