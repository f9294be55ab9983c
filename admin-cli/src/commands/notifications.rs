//! `geppetto notifications ...`

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{AddRuleArgs, Format, NotificationsCommand};
use crate::error::Error;
use crate::output;
use crate::views::NotificationRuleView;

pub async fn run(api: &Api, command: NotificationsCommand, format: Format) -> Result<(), Error> {
    match command {
        NotificationsCommand::Add(args) => {
            let rule = api
                .call(api.notifications().add_rule(request(add_request(args))))
                .await?;
            let view = NotificationRuleView::from(&rule);
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => {
                    eprintln!("added notification rule {}: {}", view.id, summary(&view));
                    println!("{}", view.id);
                    Ok(())
                }
            }
        }
        NotificationsCommand::List => {
            let req = pb::ListRulesRequest {};
            let list = api
                .call(api.notifications().list_rules(request(req)))
                .await?;
            let views: Vec<_> = list.rules.iter().map(NotificationRuleView::from).collect();
            if format == Format::Json {
                return output::print_json(&views);
            }
            output::print_table(&list_table(&views, |r| {
                let rule = list.rules.iter().find(|p| p.id == r.id);
                output::ago(rule.and_then(|p| p.last_error_at.as_ref()))
            }))
        }
        NotificationsCommand::Remove { id } => {
            let req = pb::RemoveRuleRequest { id: id.clone() };
            api.call(api.notifications().remove_rule(request(req)))
                .await?;
            eprintln!("removed notification rule {id}");
            Ok(())
        }
        NotificationsCommand::Test { id } => {
            let req = pb::RemoveRuleRequest { id };
            let rule = api
                .call(api.notifications().test_rule(request(req)))
                .await?;
            let view = NotificationRuleView::from(&rule);
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => {
                    eprintln!("{}", test_line(&view));
                    Ok(())
                }
            }
        }
    }
}

/// The request of `notifications add`: clap lets through exactly one of
/// `--email` and `--webhook`, and `--secret` only with `--webhook`.
fn add_request(args: AddRuleArgs) -> pb::AddRuleRequest {
    let channel = match (args.email, args.webhook) {
        (Some(address), _) => Some(pb::add_rule_request::Channel::Email(address)),
        (None, Some(url)) => Some(pb::add_rule_request::Channel::Webhook(url)),
        (None, None) => None,
    };
    pb::AddRuleRequest {
        on: args.on,
        channel,
        secret: args
            .secret
            .map(|s| secrecy::ExposeSecret::expose_secret(&s).to_owned())
            .unwrap_or_default(),
        target: args.target.unwrap_or_default(),
    }
}

/// `on job.failed,run. → ops@example.org (puppets: site=lyon)`.
fn summary(view: &NotificationRuleView) -> String {
    let mut line = format!("on {} → {}", view.on_line(), view.to_line());
    if !view.target.is_empty() {
        line.push_str(&format!(" (puppets: {})", view.target));
    }
    line
}

fn test_line(view: &NotificationRuleView) -> String {
    format!(
        "queued a test notification through {} to {}; `geppetto notifications list` shows \
         whether it was delivered ({} pending now)",
        view.id,
        view.to_line(),
        view.pending
    )
}

/// The table of `notifications list`; `error_ago` says how long ago a
/// rule's last error was.
fn list_table(
    views: &[NotificationRuleView],
    error_ago: impl Fn(&NotificationRuleView) -> String,
) -> comfy_table::Table {
    let mut table = output::table([
        "ID",
        "ON",
        "TO",
        "TARGET",
        "DELIVERED",
        "PENDING",
        "FAILED",
        "LAST ERROR",
    ]);
    for view in views {
        let last_error = match &view.last_error {
            Some(error) => format!("{error} ({})", error_ago(view)),
            None => "-".into(),
        };
        table.add_row(vec![
            output::cell(&view.id),
            output::cell(view.on_line()),
            output::cell(view.to_line()),
            output::cell(view.target_line()),
            output::cell(view.delivered),
            output::cell(view.pending),
            output::cell(view.failed),
            output::cell(last_error),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_request_carries_the_channel() {
        let req = add_request(AddRuleArgs {
            on: vec!["job.failed".into(), "run.".into()],
            email: None,
            webhook: Some("https://hooks.example/gp".into()),
            secret: Some("s3cret".into()),
            target: Some("site=lyon".into()),
        });
        assert_eq!(
            req,
            pb::AddRuleRequest {
                on: vec!["job.failed".into(), "run.".into()],
                channel: Some(pb::add_rule_request::Channel::Webhook(
                    "https://hooks.example/gp".into()
                )),
                secret: "s3cret".into(),
                target: "site=lyon".into(),
            }
        );
        let req = add_request(AddRuleArgs {
            on: vec!["puppet.offline".into()],
            email: Some("ops@example.org".into()),
            webhook: None,
            secret: None,
            target: None,
        });
        assert_eq!(
            req.channel,
            Some(pb::add_rule_request::Channel::Email(
                "ops@example.org".into()
            ))
        );
        assert_eq!((req.secret.as_str(), req.target.as_str()), ("", ""));
    }

    fn rule(id: &str, webhook: bool, last_error: &str) -> NotificationRuleView {
        NotificationRuleView::from(&pb::NotificationRule {
            id: id.into(),
            on: vec!["job.failed".into(), "run.lost".into()],
            channel: Some(if webhook {
                pb::notification_rule::Channel::Webhook("https://h.example/x".into())
            } else {
                pb::notification_rule::Channel::Email("ops@example.org".into())
            }),
            has_secret: webhook,
            target: if webhook {
                "site=lyon".into()
            } else {
                String::new()
            },
            delivered: 12,
            pending: 1,
            failed: 2,
            last_error: last_error.into(),
            ..Default::default()
        })
    }

    #[test]
    fn table_shows_where_and_how_it_went() {
        let views = [
            rule("ntf-a", false, ""),
            rule("ntf-b", true, "connection refused"),
        ];
        let text = list_table(&views, |_| "5m ago".into()).to_string();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for column in ["ID", "ON", "TO", "TARGET", "DELIVERED", "PENDING", "FAILED"] {
            assert!(lines[0].contains(column), "{text}");
        }
        assert!(lines[0].contains("LAST ERROR"), "{text}");
        assert!(lines[1].starts_with("ntf-a"), "{text}");
        assert!(lines[1].contains("job.failed,run.lost"), "{text}");
        assert!(lines[1].contains("ops@example.org"), "{text}");
        assert!(!lines[1].contains("(signed)"), "{text}");
        assert!(lines[1].contains("all"), "{text}");
        assert!(lines[2].contains("https://h.example/x (signed)"), "{text}");
        assert!(lines[2].contains("site=lyon"), "{text}");
        assert!(lines[2].contains("connection refused (5m ago)"), "{text}");
    }

    #[test]
    fn lines_say_what_was_done() {
        let view = rule("ntf-b", true, "");
        assert_eq!(
            summary(&view),
            "on job.failed,run.lost → https://h.example/x (signed) (puppets: site=lyon)"
        );
        assert_eq!(
            summary(&rule("ntf-a", false, "")),
            "on job.failed,run.lost → ops@example.org"
        );
        let line = test_line(&view);
        assert!(
            line.contains("queued a test notification through ntf-b"),
            "{line}"
        );
        assert!(line.contains("https://h.example/x"), "{line}");
    }
}
