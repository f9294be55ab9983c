//! `geppetto tasks`: versioned definitions of what to run.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};

use crate::parse::{parse_duration, parse_kv, parse_resource_need};

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
}
