//! `geppetto groups`: named sets of puppets that jobs target.

use clap::{ArgGroup, Args, Subcommand};

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
}
