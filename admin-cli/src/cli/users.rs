//! `geppetto users`: operators' accounts and their roles.

use clap::{Subcommand, ValueEnum};

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
}
