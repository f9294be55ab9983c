//! `geppetto tokens`: operators' API tokens.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::parse::{parse_duration, parse_token_id};

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
}
