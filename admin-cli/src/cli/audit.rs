//! `geppetto audit`: which entries of the audit log to show.

use std::time::Duration;

use clap::Args;

use crate::parse::parse_duration;

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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
}
