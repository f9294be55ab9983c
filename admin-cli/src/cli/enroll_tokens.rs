//! `geppetto enroll-tokens`: the tokens that let new puppets enroll.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::parse::{parse_duration, parse_kv_list};

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
    /// Also print the one-line command that installs a puppet on a machine
    /// (as root): it fetches the install script from the puppeteer with the
    /// CA given to this CLI pinned (never `curl -k`), then the puppet binary
    /// for that machine's platform, checked by its SHA-256, installs it with
    /// its config, the CA, a state dir and a systemd unit, and enrolls, asking
    /// for this token on the terminal (README, "Installing puppets")
    #[arg(long)]
    pub install_command: bool,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
