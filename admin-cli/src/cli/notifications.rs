//! `geppetto notifications`: rules that send an email or a webhook on events.

use clap::{ArgGroup, Args, Subcommand};
use secrecy::SecretString;

use crate::parse::parse_rule_event;

pub(super) const NOTIFICATIONS_HELP: &str = "\
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
    pub secret: Option<SecretString>,
    /// Only events about puppets matching this label selector, e.g. "site=lyon"
    /// (events about no puppet, such as job events, always match) [default: all]
    #[arg(long, value_name = "SELECTOR")]
    pub target: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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
        let secret = args
            .secret
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret);
        assert_eq!(secret, Some("s3cret"));
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
}
