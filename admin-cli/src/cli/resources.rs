//! `geppetto resources`: named capacities that runs hold while they run.

use clap::{ArgGroup, Subcommand};

use crate::parse::parse_bandwidth;

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
        /// The site whose uplink this resource models (puppets with the label
        /// site=SITE): every fetch from the puppeteer by those puppets draws on
        /// its bandwidth budget, whatever the task holds; fetches between the
        /// site's peers do not (see README, "Sites and the peer cache")
        #[arg(long, value_name = "SITE")]
        site: Option<String>,
    },
    /// Lists resources with their capacity, use, holders and waiters
    List,
    /// Shows a resource, the runs holding it and those waiting for it, in order
    Show { name: String },
    /// Changes the capacity, the bandwidth budget or the site; lowering the capacity stops
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
        /// The site whose uplink it models; "" for none
        #[arg(long, value_name = "SITE", group = "change")]
        site: Option<String>,
    },
    /// Removes a resource; refused while it is held or a task needs it
    Remove { name: String },
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
            Command::Resources(ResourcesCommand::Create { name, capacity: 1, bandwidth: None, site: None }) if name == "uplink-lyon"
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
}
