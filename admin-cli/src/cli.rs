//! The command line as clap sees it: every command, flag and help text.
//!
//! Parsing stops at syntax: values that clap can check alone (durations,
//! `k=v` pairs) are parsed here by the functions of [`crate::parse`];
//! everything that needs the config file, the environment or the server is
//! left to [`crate::config`] and the command modules.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::config::Secret;
use crate::parse::{
    Limit, parse_bandwidth, parse_duration, parse_event_kind, parse_kv, parse_kv_list, parse_limit,
    parse_resource_need, parse_rule_event, parse_token_id,
};

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
    /// URL of the puppeteer [env: GEPPETTO_SERVER] [default: https://localhost:7443]
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
    pub token: Option<Secret>,
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

const EVENTS_HELP: &str = "\
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

const ARTIFACTS_HELP: &str = "\
Examples:
  geppetto artifacts upload ./patch-2.3.tar.gz            # named patch-2.3.tar.gz
  geppetto artifacts upload ./build/out.bin --name tool   # named tool
  geppetto tasks create patch --artifact patch-2.3.tar.gz \\
      --command 'tar -xzf \"$GEPPETTO_ARTIFACT_PATCH_2_3_TAR_GZ\" -C /opt'
  geppetto artifacts list
  geppetto artifacts remove tool

An upload that is cut off resumes where the puppeteer's durable copy ends when the same
command is run again. A task version pins the content its artifacts had when it was made;
uploading a name again changes what new task versions get, not existing ones.
Each run finds an artifact's path in GEPPETTO_ARTIFACT_<NAME>: the name uppercased, every
character other than a letter or digit turned into '_'. Puppets fetch artifacts into a
cache before the run (resumed after a drop, verified by SHA-256, never fetched twice), at
most at the bandwidth budget of the resources the run holds (geppetto resources create
uplink-lyon --capacity 2 --bandwidth 48KiB/s).";

const NOTIFICATIONS_HELP: &str = "\
Event kinds a rule can be on: job.succeeded, job.failed, job.awaiting_approval, run.failed,
run.lost, puppet.offline, puppet.online, puppet.pending, ... (the kinds of `geppetto events`).
A kind ending in '.' is a prefix: --on run. fires on every run event.

Examples:
  geppetto notifications add --on job.failed,run.lost --email ops@example.org
  geppetto notifications add --on puppet.offline --webhook https://hooks.example/gp --secret \"$S\" --target site=lyon
  geppetto notifications list
  geppetto notifications test ntf-...     # queue a test notification through the rule
  geppetto notifications remove ntf-...

Webhooks receive a JSON POST; with --secret the body is signed with HMAC-SHA256 in the
X-Geppetto-Signature header (\"sha256=HEX\"). The secret is never shown again.";

const COMPLETIONS_HELP: &str = "\
Install them, e.g.:
  geppetto completions bash > /etc/bash_completion.d/geppetto     # or ~/.local/share/bash-completion/completions/geppetto
  geppetto completions zsh > \"${fpath[1]}/_geppetto\"               # a directory of your $fpath
  geppetto completions fish > ~/.config/fish/completions/geppetto.fish";

const MAN_HELP: &str = "\
Install it, e.g.:
  geppetto man > /usr/local/share/man/man1/geppetto.1 && mandb
  man geppetto";

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

#[derive(Debug, Subcommand)]
pub enum PuppetsCommand {
    /// Lists puppets with their state, presence and labels
    List {
        /// Label selector, e.g. "os=debian,env!=prod,gpu"
        #[arg(long, short = 's', value_name = "SEL")]
        selector: Option<String>,
    },
    /// Shows a puppet: labels, facts, state
    Show { name: String },
    /// Sets or removes operator labels of a puppet (they win over its own)
    Label {
        name: String,
        /// Labels to set, as key=value
        #[arg(value_name = "KEY=VALUE", value_parser = parse_kv, required_unless_present = "remove")]
        labels: Vec<(String, String)>,
        /// Label keys to remove (repeatable)
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Stops offering new runs to a puppet; it keeps polling
    Disable { name: String },
    /// Lets a disabled puppet receive runs again (a pending one needs `puppets approve`)
    Enable { name: String },
    /// Removes a puppet and revokes its credential
    Remove {
        name: String,
        /// Remove it even if it has unfinished runs; they are cancelled
        #[arg(long)]
        force: bool,
    },
    /// Admits pending puppets: they start receiving runs
    Approve {
        /// One or more pending puppets
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Refuses a pending puppet: it is removed, its credential revoked, its runs skipped
    Reject { name: String },
    /// Gives a puppet a new credential, picked up at its next poll; the old one
    /// keeps working for a grace period
    Rotate {
        name: String,
        /// How long the old credential keeps working once the puppet uses the new one
        /// (or, if it never does, after the rotation), e.g. 10m, 1h [default: 24h]
        #[arg(long, value_parser = parse_duration, value_name = "DUR")]
        grace: Option<Duration>,
    },
    /// Revokes a puppet's credential at once: it is cut off and disabled, and can
    /// come back only by being removed and enrolled again
    Revoke { name: String },
    /// Shows what a puppet will run next, in order, and why each run waits
    Queue { name: String },
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokensCommand {
    /// Creates an enroll token and prints its secret (shown only once); puppets
    /// enrolling with it wait as pending unless --auto-approve
    Create(CreateEnrollTokenArgs),
    /// Lists enroll tokens (without their secrets)
    List,
    /// Revokes an enroll token: no puppet can enroll with it any more
    Revoke {
        /// Id of the token (enr-...)
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateEnrollTokenArgs {
    /// How many puppets may enroll with it; 0 means no limit
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub uses: u32,
    /// How long it stays valid, e.g. 30m, 1h, 7days; without it, it never expires
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub expires: Option<Duration>,
    /// Labels given to every puppet enrolling with it: k=v,k2=v2
    // `std::vec::Vec` spelled out: clap then takes the list `parse_kv_list`
    // returns as one value, instead of expecting one pair per value.
    #[arg(long, value_parser = parse_kv_list, value_name = "K=V,...")]
    pub labels: Option<std::vec::Vec<(String, String)>>,
    /// What the token is for
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Puppets enrolling with it are enabled at once. Without it they wait as
    /// pending, visible but given no run, until `geppetto puppets approve NAME`
    #[arg(long)]
    pub auto_approve: bool,
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Everything: users, tokens, enrollment, removal and credentials of puppets
    Admin,
    /// Tasks, jobs, approvals, puppets' labels and states
    Operator,
    /// Read only
    Viewer,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Adds a user; give them a token with `geppetto tokens create --user NAME`
    Add {
        /// 1-63 of [a-z0-9._-], starting with a letter or digit
        name: String,
        /// What the user may do
        #[arg(long, value_enum, value_name = "ROLE")]
        role: RoleArg,
    },
    /// Lists users with their role and number of working tokens
    List,
    /// Changes a user's role
    SetRole {
        name: String,
        /// The new role
        #[arg(long, value_enum, value_name = "ROLE")]
        role: RoleArg,
    },
    /// Removes a user; their tokens stop working at once
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Creates an API token and prints its secret (shown only once)
    Create(CreateTokenArgs),
    /// Lists API tokens (without their secrets): yours, or everyone's for admins
    List {
        /// Only the tokens of this user (admins only)
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
    /// Revokes an API token at once: yours, or anyone's for admins
    Revoke {
        /// Id of the token (tok-...)
        #[arg(value_parser = parse_token_id)]
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateTokenArgs {
    /// Whose token it is (admins only) [default: yours]
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// A name to recognise it by, e.g. ci or laptop
    #[arg(long, value_name = "TEXT")]
    pub name: Option<String>,
    /// How long it stays valid (at most 2 years), e.g. 12h, 90days; without it, it
    /// never expires
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub expires: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries of the last DUR, e.g. 1h for the last hour, 7days
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub since: Option<Duration>,
    /// Only calls by this user ("puppet:NAME" for a puppet)
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// At most this many entries, the newest [default: 1000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Creates a task (version 1)
    Create(Box<CreateTaskArgs>),
    /// Makes a new version of a task; options not given keep their current value
    Update(Box<UpdateTaskArgs>),
    /// Lists the latest version of each task
    List,
    /// Shows a task
    Show {
        name: String,
        /// Which version; the latest by default
        #[arg(long, value_name = "N")]
        version: Option<u32>,
    },
    /// Removes a task and all its versions (jobs already launched are kept)
    Remove { name: String },
}

/// What a task runs. `--command` and `--script` both give a script run by an
/// interpreter (`/bin/sh` unless `--interpreter`); `--exec` gives an argv
/// executed without a shell.
#[derive(Debug, Clone, Default, Args)]
pub struct ProgramArgs {
    /// Shell command line, run as a script by the interpreter
    #[arg(long, value_name = "STR", group = "program")]
    pub command: Option<String>,
    /// Script file whose content is run by the interpreter
    #[arg(long, value_name = "FILE", group = "program")]
    pub script: Option<PathBuf>,
    /// Program and arguments executed directly, without a shell; put it last,
    /// every following word is an argument: --exec apt-get -y upgrade
    #[arg(long, value_name = "ARG", num_args = 1.., allow_hyphen_values = true, group = "program")]
    pub exec: Option<Vec<String>>,
    /// Interpreter of --command/--script, e.g. /bin/bash [default: /bin/sh]
    #[arg(long, value_name = "PATH")]
    pub interpreter: Option<String>,
    /// Argument given to the interpreter before the script (repeatable), e.g. -eu
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        requires = "interpreter"
    )]
    pub interpreter_arg: Vec<String>,
}

/// Everything of a task but its program.
#[derive(Debug, Clone, Default, Args)]
pub struct SpecArgs {
    /// The run is killed when it lasts longer, e.g. 30s, 10m, 1h30m
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub timeout: Option<Duration>,
    /// Environment variable for the run, K=V (repeatable)
    #[arg(long, value_parser = parse_kv, value_name = "K=V")]
    pub env: Vec<(String, String)>,
    /// Working directory of the run [default: the puppet's state directory]
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// What the task does
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Resource a run holds while it runs, as NAME or NAME:COUNT (repeatable; COUNT
    /// defaults to 1). A run takes all its resources at once or waits. On update, adds
    /// the resource or changes its count; the others are kept
    #[arg(long = "resource", value_parser = parse_resource_need, value_name = "NAME[:COUNT]")]
    pub resources: Vec<(String, u32)>,
    /// Artifact the puppet fetches before each run (repeatable); the run finds its path
    /// in GEPPETTO_ARTIFACT_<NAME> (uppercased, non-alphanumerics as '_'). Pinned to
    /// the artifact's current content. On update, adds it (or re-pins it to its
    /// current content); the others are kept
    #[arg(long = "artifact", value_name = "NAME")]
    pub artifacts: Vec<String>,
    /// New attempts of a run that is lost, interrupted or timed out [default on create: 0]
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Label selector of the puppets the task is valid for, e.g. "os=debian": a job
    /// makes no run on other puppets. On update, '' accepts any puppet again
    #[arg(long, value_name = "SELECTOR")]
    pub requires: Option<String>,
    /// The task ends by rebooting (or stopping) the machine: the puppet's
    /// shutdown leaves the run running, and the run succeeds (outcome
    /// "rebooted") when the puppet comes back with a new boot id within the
    /// reboot window, instead of being "interrupted" (same boot id, or too
    /// late: interrupted). A script that exits before the machine goes down
    /// is judged by its exit status as usual
    #[arg(long)]
    pub expect_reboot: bool,
    /// How long after the run started the puppet may come back from the
    /// reboot, at most 1d [default: 30m]
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub reboot_window: Option<Duration>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("program").required(true).multiple(false)))]
pub struct CreateTaskArgs {
    /// 1-63 of [a-z0-9-_.], starting with a letter or digit
    pub name: String,
    #[command(flatten)]
    pub program: ProgramArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("program").required(false).multiple(false)))]
pub struct UpdateTaskArgs {
    pub name: String,
    #[command(flatten)]
    pub program: ProgramArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Environment variable to remove (repeatable)
    #[arg(long, value_name = "KEY")]
    pub unset_env: Vec<String>,
    /// Remove every resource of the task (with --resource: replace them by those given)
    #[arg(long)]
    pub no_resources: bool,
    /// Remove every artifact of the task (with --artifact: replace them by those given)
    #[arg(long)]
    pub clear_artifacts: bool,
    /// The task no longer expects a reboot (clears the reboot window)
    #[arg(long, conflicts_with_all = ["expect_reboot", "reboot_window"])]
    pub no_expect_reboot: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Launches a task and prints the job id
    Run(RunJobArgs),
    /// Lists jobs, newest first
    List {
        /// At most this many jobs
        #[arg(long, default_value_t = 20, value_name = "N")]
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

#[derive(Debug, Subcommand)]
pub enum ResourcesCommand {
    /// Creates a resource: a named capacity that runs of the tasks needing it hold
    /// while they are offered or running
    Create {
        /// 1-63 of [a-z0-9._-], starting with a letter or digit
        name: String,
        /// How much of it runs may hold at once, e.g. 1 for one run at a time
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        capacity: u32,
        /// Bandwidth budget shared by all artifact downloads of the runs holding it,
        /// e.g. 48KiB/s, 512kbit/s, 2MiB/s (units: B/s, KiB/s, MiB/s, GiB/s, kB/s,
        /// MB/s, kbit/s, Mbit/s) [default: none]
        #[arg(long, value_name = "RATE", value_parser = parse_bandwidth)]
        bandwidth: Option<u64>,
    },
    /// Lists resources with their capacity, use, holders and waiters
    List,
    /// Shows a resource, the runs holding it and those waiting for it, in order
    Show { name: String },
    /// Changes the capacity or the bandwidth budget; lowering the capacity stops
    /// nothing running, new runs wait until enough is released
    #[command(group(ArgGroup::new("change").required(true).multiple(true)))]
    Update {
        name: String,
        /// The new capacity
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), group = "change")]
        capacity: Option<u32>,
        /// The new bandwidth budget, e.g. 48KiB/s; 0 removes it. Downloads in
        /// progress follow it from their next chunk
        #[arg(long, value_name = "RATE", value_parser = parse_bandwidth, group = "change")]
        bandwidth: Option<u64>,
    },
    /// Removes a resource; refused while it is held or a task needs it
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Uploads a file as an artifact (SHA-256 computed here and checked by the
    /// puppeteer); run it again to resume an upload that was cut off
    Upload {
        /// The file to upload
        file: PathBuf,
        /// The artifact's name [default: the file name]: 1-128 of [A-Za-z0-9._-],
        /// starting with a letter or digit
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Lists artifacts with their size, hash and the tasks using them
    List,
    /// Shows an artifact
    Show { name: String },
    /// Removes an artifact's name; its content is deleted once no task version
    /// pins it. Refused while the latest version of a task uses it, unless --force
    Remove {
        name: String,
        /// Remove it even though tasks use it (their versions keep the content they pinned)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// Creates a group: a saved selector, or a list of puppet names
    Create(CreateGroupArgs),
    /// Lists groups with their selector or puppets
    List,
    /// Shows a group and the puppets it stands for now
    Show { name: String },
    /// Removes a group (jobs already launched on it are kept)
    Remove { name: String },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("members").required(true).multiple(false)))]
pub struct CreateGroupArgs {
    /// 1-63 of [a-z0-9._-], starting with a letter or digit
    pub name: String,
    /// Label selector of its puppets, e.g. "role in (web,proxy)"; evaluated each
    /// time a job targets the group
    #[arg(long, value_name = "SEL", group = "members")]
    pub selector: Option<String>,
    /// Puppet in the group (repeatable)
    #[arg(long = "puppet", value_name = "NAME", group = "members")]
    pub puppets: Vec<String>,
    /// What the group is for
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum NotificationsCommand {
    /// Adds a rule: on these events, send an email or call a webhook; prints its id
    #[command(after_long_help = NOTIFICATIONS_HELP)]
    Add(AddRuleArgs),
    /// Lists rules with their deliveries: done, pending (being retried), failed
    List,
    /// Removes a rule; notifications it still owes are dropped
    Remove {
        /// Id of the rule (ntf-...)
        id: String,
    },
    /// Queues a test notification through a rule, like any other delivery
    Test {
        /// Id of the rule (ntf-...)
        id: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("channel").required(true).multiple(false)))]
pub struct AddRuleArgs {
    /// Event kinds that fire the rule, comma-separated, repeatable: exact (job.failed)
    /// or a prefix ending in '.' (run.). Kinds: job.succeeded, job.failed,
    /// job.awaiting_approval, run.failed, run.lost, puppet.offline, puppet.online,
    /// puppet.pending, ...
    #[arg(
        long = "on",
        value_name = "EVENT[,EVENT]",
        value_delimiter = ',',
        value_parser = parse_rule_event,
        required = true
    )]
    pub on: Vec<String>,
    /// Send a mail to this address (through the puppeteer's SMTP relay)
    #[arg(long, value_name = "ADDR", group = "channel")]
    pub email: Option<String>,
    /// POST a JSON body to this http(s) URL
    #[arg(long, value_name = "URL", group = "channel")]
    pub webhook: Option<String>,
    /// Sign webhook bodies with HMAC-SHA256 using this secret (X-Geppetto-Signature
    /// header); it is never shown again
    #[arg(long, value_name = "S", conflicts_with = "email")]
    pub secret: Option<Secret>,
    /// Only events about puppets matching this label selector, e.g. "site=lyon"
    /// (events about no puppet, such as job events, always match) [default: all]
    #[arg(long, value_name = "SELECTOR")]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// A run id (run-...), or a job id (job-...) with --puppet
    pub id: String,
    /// With a job id: the puppet whose run to show
    #[arg(long, value_name = "NAME")]
    pub puppet: Option<String>,
    /// Keep printing output as it comes, until the run is finished
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_every_following_word() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "tasks",
            "create",
            "up",
            "--timeout",
            "1m",
            "--exec",
            "apt-get",
            "-y",
            "upgrade",
        ])
        .unwrap();
        let Command::Tasks(TasksCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            args.program.exec.unwrap(),
            vec!["apt-get".to_string(), "-y".into(), "upgrade".into()]
        );
        assert_eq!(args.spec.timeout, Some(Duration::from_secs(60)));
    }

    #[test]
    fn create_needs_exactly_one_program() {
        let none = Cli::try_parse_from(["geppetto", "tasks", "create", "t"]).unwrap_err();
        assert_eq!(none.exit_code(), 2);
        let two = Cli::try_parse_from([
            "geppetto",
            "tasks",
            "create",
            "t",
            "--command",
            "x",
            "--script",
            "f",
        ])
        .unwrap_err();
        assert_eq!(two.exit_code(), 2);
    }

    #[test]
    fn enroll_token_labels_are_one_list() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "enroll-tokens",
            "create",
            "--labels",
            "site=lyon,env=test",
        ])
        .unwrap();
        let Command::EnrollTokens(EnrollTokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            args.labels.unwrap(),
            vec![
                ("site".to_string(), "lyon".to_string()),
                ("env".into(), "test".into())
            ]
        );
        let cli = Cli::try_parse_from(["geppetto", "enroll-tokens", "create"]).unwrap();
        let Command::EnrollTokens(EnrollTokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.labels.is_none());
    }

    #[test]
    fn interpreter_args_may_start_with_a_dash() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "tasks",
            "create",
            "t",
            "--command",
            "x",
            "--interpreter",
            "/bin/bash",
            "--interpreter-arg",
            "-eu",
        ])
        .unwrap();
        let Command::Tasks(TasksCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.program.interpreter_arg, vec!["-eu".to_string()]);
    }

    #[test]
    fn users_take_a_role() {
        let cli = Cli::try_parse_from(["geppetto", "users", "add", "alice", "--role", "operator"])
            .unwrap();
        let Command::Users(UsersCommand::Add { name, role }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((name.as_str(), role), ("alice", RoleArg::Operator));
        let cli = Cli::try_parse_from(["geppetto", "users", "set-role", "bob", "--role", "admin"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Users(UsersCommand::SetRole {
                role: RoleArg::Admin,
                ..
            })
        ));
        for bad in [
            &["geppetto", "users", "add", "alice"][..],
            &["geppetto", "users", "add", "alice", "--role", "root"],
            &["geppetto", "users", "set-role", "alice"],
        ] {
            assert_eq!(
                Cli::try_parse_from(bad).unwrap_err().exit_code(),
                2,
                "{bad:?}"
            );
        }
        let cli = Cli::try_parse_from(["geppetto", "whoami"]).unwrap();
        assert!(matches!(cli.command, Command::Whoami));
    }

    #[test]
    fn tokens_parse() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "tokens",
            "create",
            "--user",
            "alice",
            "--name",
            "ci",
            "--expires",
            "90days",
        ])
        .unwrap();
        let Command::Tokens(TokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.user.as_deref(), Some("alice"));
        assert_eq!(args.name.as_deref(), Some("ci"));
        assert_eq!(args.expires, Some(Duration::from_secs(90 * 86_400)));
        let cli = Cli::try_parse_from(["geppetto", "tokens", "create"]).unwrap();
        let Command::Tokens(TokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.user.is_none() && args.name.is_none() && args.expires.is_none());
        let cli = Cli::try_parse_from(["geppetto", "tokens", "revoke", "tok-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Tokens(TokensCommand::Revoke { id }) if id == "tok-1"
        ));
        let err = Cli::try_parse_from(["geppetto", "tokens", "revoke", "enr-1"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("enroll-tokens revoke"), "{err}");
    }

    #[test]
    fn audit_parses_since_and_limit() {
        let cli = Cli::try_parse_from([
            "geppetto", "audit", "--since", "1h", "--user", "alice", "--limit", "50",
        ])
        .unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.since, Some(Duration::from_secs(3600)));
        assert_eq!(args.user.as_deref(), Some("alice"));
        assert_eq!(args.limit, Some(50));
        let cli = Cli::try_parse_from(["geppetto", "audit"]).unwrap();
        let Command::Audit(args) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.since.is_none() && args.user.is_none() && args.limit.is_none());
        for bad in [
            &["--since", "soon"][..],
            &["--limit", "0"],
            &["--limit", "x"],
        ] {
            let err = Cli::try_parse_from(["geppetto", "audit"].iter().chain(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn puppet_credentials_and_approval() {
        let cli = Cli::try_parse_from(["geppetto", "puppets", "rotate", "web-1", "--grace", "10m"])
            .unwrap();
        assert!(matches!(
            cli.command,
            Command::Puppets(PuppetsCommand::Rotate { name, grace })
                if name == "web-1" && grace == Some(Duration::from_secs(600))
        ));
        let cli = Cli::try_parse_from(["geppetto", "puppets", "rotate", "web-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Puppets(PuppetsCommand::Rotate { grace: None, .. })
        ));
        for (word, check) in [
            (
                "approve",
                (|c| matches!(c, Command::Puppets(PuppetsCommand::Approve { .. })))
                    as fn(&Command) -> bool,
            ),
            ("reject", |c| {
                matches!(c, Command::Puppets(PuppetsCommand::Reject { .. }))
            }),
            ("revoke", |c| {
                matches!(c, Command::Puppets(PuppetsCommand::Revoke { .. }))
            }),
        ] {
            let cli = Cli::try_parse_from(["geppetto", "puppets", word, "web-1"]).unwrap();
            assert!(check(&cli.command), "{word}");
            let err = Cli::try_parse_from(["geppetto", "puppets", word]).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{word} needs a name");
        }
    }

    #[test]
    fn tasks_take_resources_retries_and_requires() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "tasks",
            "create",
            "upgrade",
            "--command",
            "x",
            "--resource",
            "uplink-lyon",
            "--resource",
            "db:2",
            "--retries",
            "2",
            "--requires",
            "os=debian",
        ])
        .unwrap();
        let Command::Tasks(TasksCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            args.spec.resources,
            vec![("uplink-lyon".to_string(), 1), ("db".into(), 2)]
        );
        assert_eq!(args.spec.retries, Some(2));
        assert_eq!(args.spec.requires.as_deref(), Some("os=debian"));

        for bad in ["uplink:0", ":2", "a:b"] {
            let err = Cli::try_parse_from([
                "geppetto",
                "tasks",
                "create",
                "t",
                "--command",
                "x",
                "--resource",
                bad,
            ])
            .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.to_string().contains("invalid resource"), "{err}");
        }

        let cli =
            Cli::try_parse_from(["geppetto", "tasks", "update", "t", "--no-resources"]).unwrap();
        let Command::Tasks(TasksCommand::Update(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.no_resources && args.spec.resources.is_empty());
        let err = Cli::try_parse_from(["geppetto", "tasks", "create", "t", "--no-resources"])
            .unwrap_err();
        assert_eq!(err.exit_code(), 2, "--no-resources is for update only");
    }

    #[test]
    fn resources_parse() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "resources",
            "create",
            "uplink-lyon",
            "--capacity",
            "1",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Resources(ResourcesCommand::Create { name, capacity: 1, bandwidth: None }) if name == "uplink-lyon"
        ));
        let cli = Cli::try_parse_from([
            "geppetto",
            "resources",
            "update",
            "uplink-lyon",
            "--capacity",
            "3",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Resources(ResourcesCommand::Update {
                capacity: Some(3),
                ..
            })
        ));
        for word in ["show", "remove"] {
            assert!(Cli::try_parse_from(["geppetto", "resources", word, "r"]).is_ok());
        }
        assert!(matches!(
            Cli::try_parse_from(["geppetto", "resources", "list"])
                .unwrap()
                .command,
            Command::Resources(ResourcesCommand::List)
        ));
        for bad in [
            &["resources", "create", "r"][..],
            &["resources", "create", "r", "--capacity", "0"],
            &["resources", "update", "r", "--capacity", "x"],
            &["resources", "show"],
        ] {
            let err = Cli::try_parse_from(["geppetto"].iter().chain(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

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
        let cli = Cli::try_parse_from(["geppetto", "puppets", "queue", "web-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Puppets(PuppetsCommand::Queue { name }) if name == "web-1"
        ));
    }

    #[test]
    fn notifications_parse() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "notifications",
            "add",
            "--on",
            "job.failed,run.",
            "--on",
            "puppet.offline",
            "--webhook",
            "https://hooks.example/gp",
            "--secret",
            "s3cret",
            "--target",
            "site=lyon",
        ])
        .unwrap();
        let Command::Notifications(NotificationsCommand::Add(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.on, ["job.failed", "run.", "puppet.offline"]);
        assert_eq!(args.webhook.as_deref(), Some("https://hooks.example/gp"));
        assert_eq!(args.secret, Some(Secret::new("s3cret")));
        assert!(!format!("{args:?}").contains("s3cret"));
        assert_eq!(args.target.as_deref(), Some("site=lyon"));
        assert!(args.email.is_none());
        let cli = Cli::try_parse_from([
            "geppetto",
            "notifications",
            "add",
            "--on",
            "job.failed",
            "--email",
            "ops@example.org",
        ])
        .unwrap();
        let Command::Notifications(NotificationsCommand::Add(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.email.as_deref(), Some("ops@example.org"));
        assert!(args.webhook.is_none() && args.secret.is_none() && args.target.is_none());
        assert!(matches!(
            Cli::try_parse_from(["geppetto", "notifications", "list"])
                .unwrap()
                .command,
            Command::Notifications(NotificationsCommand::List)
        ));
        for word in ["remove", "test"] {
            assert!(Cli::try_parse_from(["geppetto", "notifications", word, "ntf-1"]).is_ok());
            assert!(Cli::try_parse_from(["geppetto", "notifications", word]).is_err());
        }
        for bad in [
            // No channel, two channels, a secret for an email, no --on, an empty kind.
            &["--on", "job.failed"][..],
            &[
                "--on",
                "job.failed",
                "--email",
                "a@b",
                "--webhook",
                "https://x",
            ],
            &["--on", "job.failed", "--email", "a@b", "--secret", "s"],
            &["--email", "a@b"],
            &["--on", "job.failed,,run.", "--email", "a@b"],
            &["--on", "job failed", "--email", "a@b"],
        ] {
            let args = ["geppetto", "notifications", "add"].iter().chain(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn groups_parse() {
        let cli = Cli::try_parse_from([
            "geppetto",
            "groups",
            "create",
            "webs",
            "--selector",
            "role in (web,proxy)",
            "--description",
            "front",
        ])
        .unwrap();
        let Command::Groups(GroupsCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.name, "webs");
        assert_eq!(args.selector.as_deref(), Some("role in (web,proxy)"));
        assert!(args.puppets.is_empty());
        assert_eq!(args.description.as_deref(), Some("front"));
        let cli = Cli::try_parse_from([
            "geppetto", "groups", "create", "db", "--puppet", "db-1", "--puppet", "db-2",
        ])
        .unwrap();
        let Command::Groups(GroupsCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.puppets, vec!["db-1".to_string(), "db-2".into()]);
        assert!(args.selector.is_none() && args.description.is_none());
        assert!(matches!(
            Cli::try_parse_from(["geppetto", "groups", "list"])
                .unwrap()
                .command,
            Command::Groups(GroupsCommand::List)
        ));
        for word in ["show", "remove"] {
            assert!(Cli::try_parse_from(["geppetto", "groups", word, "g"]).is_ok());
        }
        for bad in [
            &["groups", "create", "g"][..],
            &[
                "groups",
                "create",
                "g",
                "--selector",
                "a=b",
                "--puppet",
                "p",
            ],
            &["groups", "create", "--selector", "a=b"],
            &["groups", "show"],
            &["groups", "remove"],
        ] {
            let err = Cli::try_parse_from(["geppetto"].iter().chain(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

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

    #[test]
    fn enroll_tokens_auto_approve_is_a_flag() {
        let cli =
            Cli::try_parse_from(["geppetto", "enroll-tokens", "create", "--auto-approve"]).unwrap();
        let Command::EnrollTokens(EnrollTokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.auto_approve);
        let cli = Cli::try_parse_from(["geppetto", "enroll-tokens", "create"]).unwrap();
        let Command::EnrollTokens(EnrollTokensCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(!args.auto_approve);
    }
}
