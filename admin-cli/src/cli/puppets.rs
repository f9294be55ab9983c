//! `geppetto puppets`: the machines the puppeteer manages.

use std::time::Duration;

use clap::Subcommand;

use crate::cli::StrategyArgs;
use crate::parse::{parse_duration, parse_kv};

const UPGRADE_HELP: &str = "\
Examples:
  geppetto puppets upgrade --target site=lyon --rolling --max-failures 1 --wait
  geppetto puppets upgrade --target '' --to 0.3.0 --max-in-flight 10% --approval
(--target '' selects every enabled puppet.) The binaries come from `geppetto puppet-releases list`: the puppet build the
puppeteer serves, and those added with `geppetto puppet-releases add`.";

/// `geppetto puppets upgrade`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("on").required(true).multiple(false)))]
pub struct UpgradeArgs {
    /// Label selector of the puppets to upgrade, e.g. "site=lyon", or group:NAME
    #[arg(long, value_name = "SELECTOR", group = "on")]
    pub target: Option<String>,
    /// Puppet to upgrade (repeatable)
    #[arg(long = "puppet", value_name = "NAME", group = "on")]
    pub puppets: Vec<String>,
    /// The version to install [default: the puppet build the puppeteer serves]
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// How long a new binary has to start and reach the puppeteer, before the
    /// swap and again after it, before it is given up (5s to 1h) [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub prove_within: Option<Duration>,
    /// Wait until the job is finished, showing progress; exits 1 if a run did
    /// not succeed
    #[arg(long)]
    pub wait: bool,
    /// With --wait: the summary lists every run
    #[arg(long, requires = "wait")]
    pub all_runs: bool,
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

#[derive(Debug, Subcommand)]
pub enum PuppetsCommand {
    /// Upgrades puppets to another version, as a job: each puppet fetches the
    /// release's binary for its platform, checks that it starts and reaches the
    /// puppeteer, swaps it in and restarts as it; one that does not come back in
    /// time is put back and its run fails (README, "Upgrading puppets")
    #[command(after_long_help = UPGRADE_HELP)]
    Upgrade(UpgradeArgs),
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
    fn queue_takes_a_name() {
        let cli = Cli::try_parse_from(["geppetto", "puppets", "queue", "web-1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Puppets(PuppetsCommand::Queue { name }) if name == "web-1"
        ));
    }
}
