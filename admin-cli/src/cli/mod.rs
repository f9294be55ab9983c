//! The command line as clap sees it: every command, flag and help text.
//!
//! Parsing stops at syntax: values that clap can check alone (durations,
//! `k=v` pairs) are parsed here by the functions of [`crate::parse`];
//! everything that needs the config file, the environment or the server is
//! left to [`crate::config`] and the command modules.
//!
//! The top-level [`Cli`], its global options and the [`Command`] tree are
//! here; each command group's subcommands and arguments are in a module of
//! their own, named as in [`crate::commands`], and re-exported from here.

mod artifacts;
mod audit;
mod enroll_tokens;
mod events;
mod groups;
mod jobs;
mod logs;
mod notifications;
mod puppet_releases;
mod puppets;
mod resources;
mod runs;
mod tasks;
mod tokens;
mod users;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use artifacts::ARTIFACTS_HELP;
pub use artifacts::ArtifactsCommand;
pub use audit::AuditArgs;
pub use enroll_tokens::{CreateEnrollTokenArgs, EnrollTokensCommand};
use events::EVENTS_HELP;
pub use events::EventsArgs;
pub use groups::{CreateGroupArgs, GroupsCommand};
pub use jobs::{JobsCommand, RetryOnly, RunJobArgs, StrategyArgs};
pub use logs::LogsArgs;
use notifications::NOTIFICATIONS_HELP;
pub use notifications::{AddRuleArgs, NotificationsCommand};
pub use puppet_releases::PuppetReleasesCommand;
pub use puppets::{PuppetsCommand, UpgradeArgs};
pub use resources::ResourcesCommand;
pub use runs::RunsCommand;
pub use tasks::{CreateTaskArgs, ProgramArgs, SpecArgs, TasksCommand, UpdateTaskArgs};
pub use tokens::{CreateTokenArgs, TokensCommand};
pub use users::{RoleArg, UsersCommand};

use secrecy::SecretString;

const TOUR: &str = "\
Connection settings come from flags, then the environment (GEPPETTO_SERVER, GEPPETTO_CA,
GEPPETTO_TOKEN, GEPPETTO_TOKEN_FILE, GEPPETTO_TRANSPORT, GEPPETTO_CONFIG), then the config file
(~/.config/geppetto/config.toml, TOML keys `server`, `ca`, `token`, `token_file`, `transport`).

A short tour:

  # Where the puppeteer is, its CA, and the admin token it wrote at its first start.
  export GEPPETTO_SERVER=https://puppeteer.example:7443
  export GEPPETTO_CA=/etc/geppetto/ca.pem
  export GEPPETTO_TOKEN_FILE=/var/lib/puppeteer/admin.token

  # Let machines join: make an enroll token, start a puppet with it on each machine.
  # With --auto-approve they get work at once; without it they wait as pending
  # until `geppetto puppets approve NAME` (or `puppets reject NAME`).
  SECRET=$(geppetto enroll-tokens create --uses 10 --expires 1h --labels site=lyon,env=test --auto-approve)
  puppet run --server https://puppeteer.example:7443 --ca ca.pem --enroll-token \"$SECRET\"   # on the machine
  geppetto puppets list --selector site=lyon

  # Define a task, run it on the test machines and wait for the result.
  geppetto tasks create disk-usage --command 'df -h /' --timeout 1m
  JOB=$(geppetto jobs run disk-usage --target env=test)
  geppetto jobs watch \"$JOB\"

  # Read what a run printed.
  geppetto jobs show \"$JOB\"
  geppetto logs \"$JOB\" --puppet web-1
  geppetto logs run-... --follow

  # Let at most one run at a time use the Lyon uplink: runs of tasks that need it
  # wait for it (`runs show` says why); lost or interrupted runs are tried again.
  geppetto resources create uplink-lyon --capacity 1
  geppetto tasks create upgrade --script upgrade.sh --resource uplink-lyon --retries 2
  geppetto resources show uplink-lyon

  # A task that ends by rebooting: its run succeeds (outcome \"rebooted\") when the
  # puppet comes back after the reboot within the window.
  geppetto tasks create patch --command 'apt-get -y upgrade && systemctl reboot' --expect-reboot --reboot-window 20m

  # Name a set of puppets once and target it by name; a selector group is
  # evaluated when each job is created.
  geppetto groups create webs --selector 'role in (web,proxy)'
  geppetto jobs run deploy --target group:webs

  # Be told by mail when a job fails or a machine is lost (or by a signed webhook).
  geppetto notifications add --on job.failed,run.lost,puppet.offline --email ops@example.org

  # Promote a patch: test machines first, then production once the test job
  # succeeded and someone approved it, one machine at a time, stopping at the
  # first failure. `puppets queue NAME` says what a machine runs next, and why.
  TEST=$(geppetto jobs run patch --target env=test)
  geppetto jobs run patch --target env=prod --after $TEST --approval --rolling --max-failures 1
  geppetto jobs show job-...      # state: awaiting approval
  geppetto jobs approve job-...   # or `jobs reject job-...`
  geppetto jobs retry job-...     # give skipped runs (e.g. of offline machines) a new try

  # Give a colleague an account and a token of their own; see who did what.
  geppetto users add alice --role operator
  geppetto tokens create --user alice --name laptop --expires 90days
  geppetto audit --since 1h

  # One screen of what is going on and what needs attention; then follow what happens.
  geppetto status
  geppetto events --follow --kind run. --kind job.failed
  geppetto events --job job-... -o json

  # Shell completions and the man page.
  geppetto completions bash > /etc/bash_completion.d/geppetto
  geppetto man > /usr/local/share/man/man1/geppetto.1

Read commands print tables; add `-o json` for scripts.";

/// The operator's command line for a Geppetto puppeteer.
#[derive(Debug, Parser)]
#[command(name = "geppetto", version, about, long_about = None, after_long_help = TOUR)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// URL of the puppeteer; a cluster's nodes comma-separated, tried in turn when one cannot be reached [env: GEPPETTO_SERVER] [default: https://localhost:7443]
    #[arg(long, global = true, value_name = "URL")]
    pub server: Option<String>,
    /// PEM file of the CA that signed the puppeteer's certificate [env: GEPPETTO_CA]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// API token sent as a bearer token [env: GEPPETTO_TOKEN]
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    pub token: Option<SecretString>,
    /// File holding the API token, e.g. the one the puppeteer wrote at its first start
    /// [env: GEPPETTO_TOKEN_FILE]
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How requests travel: native gRPC over HTTP/2, or gRPC-web over HTTP/1.1 (crosses
    /// HTTP proxies) [env: GEPPETTO_TRANSPORT] [default: grpc]
    #[arg(long, global = true, value_enum, value_name = "TRANSPORT")]
    pub transport: Option<TransportArg>,
    /// Config file (TOML) [env: GEPPETTO_CONFIG] [default: ~/.config/geppetto/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format of read commands: human tables, or JSON for scripts
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Grpc,
    GrpcWeb,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Machines managed by the puppeteer: list, inspect, approve, label, enable, disable,
    /// rotate or revoke credentials, remove
    #[command(subcommand)]
    Puppets(PuppetsCommand),
    /// Tokens that let new puppets enroll
    #[command(subcommand)]
    EnrollTokens(EnrollTokensCommand),
    /// Puppet binaries that installs and upgrades hand out: the build the puppeteer
    /// serves, and those added for other versions or platforms: add, list, remove
    #[command(subcommand)]
    PuppetReleases(PuppetReleasesCommand),
    /// Operators' accounts and their roles (admins only)
    #[command(subcommand)]
    Users(UsersCommand),
    /// Shows who the API token belongs to: user, role, token id
    Whoami,
    /// API tokens of operators: create, list, revoke
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Shows the audit log: who called what, from where, with what outcome
    Audit(AuditArgs),
    /// Versioned definitions of what to run: a script or an argv, timeout, environment
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Launches of a task on a set of puppets
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Runs: one job on one puppet
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Writes a run's output to stdout, byte for byte
    Logs(LogsArgs),
    /// Named capacities runs hold while they run (e.g. a link, a licence): create,
    /// list, show holders and waiters, resize, remove
    #[command(subcommand)]
    Resources(ResourcesCommand),
    /// Files that tasks bring to puppets (packages, patches), stored by content on
    /// the puppeteer: upload (resumable), list, show, remove
    #[command(subcommand, after_long_help = ARTIFACTS_HELP)]
    Artifacts(ArtifactsCommand),
    /// Named sets of puppets, by selector or by name, that jobs target with
    /// `--target group:NAME`: create, list, show current members, remove
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// Rules that send an email or a webhook when events happen (a job failed, a
    /// puppet went offline, ...): add, list, remove, test
    #[command(subcommand, after_long_help = NOTIFICATIONS_HELP)]
    Notifications(NotificationsCommand),
    /// What happened, in order: runs, jobs, puppets, resources, API calls; --follow
    /// keeps printing new events as they happen
    #[command(after_long_help = EVENTS_HELP)]
    Events(EventsArgs),
    /// One screen: the fleet, running jobs, resources in use, and what needs attention
    Status,
    /// Prints a shell completion script for bash, zsh, fish, elvish or powershell
    #[command(after_long_help = COMPLETIONS_HELP)]
    Completions {
        /// The shell to complete for
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Prints the man page of geppetto (roff)
    #[command(after_long_help = MAN_HELP)]
    Man,
}
const COMPLETIONS_HELP: &str = "\
Install them, e.g.:
  geppetto completions bash > /etc/bash_completion.d/geppetto     # or ~/.local/share/bash-completion/completions/geppetto
  geppetto completions zsh > \"${fpath[1]}/_geppetto\"               # a directory of your $fpath
  geppetto completions fish > ~/.config/fish/completions/geppetto.fish";

const MAN_HELP: &str = "\
Install it, e.g.:
  geppetto man > /usr/local/share/man/man1/geppetto.1 && mandb
  man geppetto";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_completions_and_man_parse() {
        assert!(matches!(
            Cli::try_parse_from(["geppetto", "status"]).unwrap().command,
            Command::Status
        ));
        assert!(matches!(
            Cli::try_parse_from(["geppetto", "man"]).unwrap().command,
            Command::Man
        ));
        for (word, shell) in [
            ("bash", clap_complete::Shell::Bash),
            ("zsh", clap_complete::Shell::Zsh),
            ("fish", clap_complete::Shell::Fish),
        ] {
            let cli = Cli::try_parse_from(["geppetto", "completions", word]).unwrap();
            assert!(
                matches!(cli.command, Command::Completions { shell: s } if s == shell),
                "{word}"
            );
        }
        for bad in [&["completions"][..], &["completions", "tcsh"]] {
            let err = Cli::try_parse_from(["geppetto"].iter().chain(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}
