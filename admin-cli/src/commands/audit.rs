//! `geppetto audit`

use std::time::{Duration, SystemTime};

use geppetto_proto::v1 as pb;

use crate::api::{Api, pages, request};
use crate::cli::{AuditArgs, Format};
use crate::error::Error;
use crate::output::{self, Cell};
use crate::views::AuditEntryView;

/// How many entries are shown when no limit is given.
const DEFAULT_LIMIT: usize = 1000;

pub async fn run(api: &Api, args: AuditArgs, format: Format) -> Result<(), Error> {
    let since = args
        .since
        .map(|ago| since(SystemTime::now(), ago))
        .transpose()?;
    let limit = args.limit.map_or(DEFAULT_LIMIT, |l| l as usize);
    let actor = args.user.unwrap_or_default();
    // Pages go back in time, each oldest first: newest first here, then
    // turned round once the newest `limit` are in.
    let mut entries = pages(Some(limit), |page_token| {
        let req = pb::ListAuditRequest {
            since,
            actor: actor.clone(),
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            page_token,
        };
        async move {
            let page = api.call(api.audit().list_audit(request(req))).await?;
            let mut newest_first = page.entries;
            newest_first.reverse();
            Ok((newest_first, page.next_page_token))
        }
    })
    .await?;
    entries.reverse();
    if format == Format::Json {
        let views: Vec<_> = entries.iter().map(AuditEntryView::from).collect();
        return output::print_json(&views);
    }
    let mut table = output::table(["TIME", "ACTOR", "ACTION", "TARGET", "FROM", "OUTCOME"]);
    for e in &entries {
        table.add_row(vec![
            output::cell(time(e.at.as_ref())),
            output::cell(or_dash(&e.actor)),
            output::cell(or_dash(&e.action)),
            output::cell(or_dash(&e.target)),
            output::cell(or_dash(&e.remote_addr)),
            outcome_cell(e),
        ]);
    }
    output::print_table(&table)?;
    if entries.len() >= limit {
        eprintln!(
            "note: only the newest {limit} entries are shown; use --since or a larger --limit"
        );
    }
    Ok(())
}

/// The start of the last `ago`: `--since 1h` is one hour before now.
pub fn since(now: SystemTime, ago: Duration) -> Result<prost_types::Timestamp, Error> {
    let at = now
        .checked_sub(ago)
        .filter(|at| *at >= SystemTime::UNIX_EPOCH)
        .ok_or_else(|| Error::Usage("--since goes back before 1970".into()))?;
    Ok(prost_types::Timestamp::from(at))
}

/// An entry's time, to the second: audit entries are read as a sequence of
/// moments, not as "how long ago".
fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(output::to_system_time)
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "-".into())
}

/// `ok`, or the refusal and its message.
fn outcome_text(e: &pb::AuditEntry) -> String {
    let outcome = or_dash(&e.outcome);
    if e.message.is_empty() {
        outcome
    } else {
        format!("{outcome}: {}", e.message)
    }
}

fn outcome_cell(e: &pb::AuditEntry) -> Cell {
    let text = outcome_text(e);
    if !output::colors() {
        return output::cell(text);
    }
    let color = if e.outcome == "ok" {
        comfy_table::Color::Green
    } else {
        comfy_table::Color::Red
    };
    output::cell(text).fg(color)
}

fn or_dash(s: &str) -> String {
    super::puppets::or_dash(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_now_minus_the_duration() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_003_600);
        let ts = since(now, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            ts,
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0
            }
        );
        let err = since(now, Duration::from_secs(2_000_000_000)).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
    }

    #[test]
    fn outcomes_carry_their_message() {
        let ok = pb::AuditEntry {
            outcome: "ok".into(),
            ..Default::default()
        };
        assert_eq!(outcome_text(&ok), "ok");
        let refused = pb::AuditEntry {
            outcome: "PermissionDenied".into(),
            message: "admins only".into(),
            ..Default::default()
        };
        assert_eq!(outcome_text(&refused), "PermissionDenied: admins only");
        assert_eq!(time(None), "-");
        let at = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123,
        };
        assert_eq!(time(Some(&at)), "2023-11-14T22:13:20Z");
    }
}
