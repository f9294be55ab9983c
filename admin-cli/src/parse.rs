//! Parsers of the values operators type: durations, `k=v` pairs, resource
//! needs, limits, ids.
//!
//! Each returns a message that says what was wrong and what is expected, so
//! clap can print it as a usage error.

use std::collections::BTreeMap;
use std::time::Duration;

use geppetto_proto::v1 as pb;

use crate::error::Error;

/// A duration written like `30s`, `10m`, `1h30m` or `2days`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}): write e.g. 30s, 10m, 1h30m"))?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: it must be more than zero"));
    }
    Ok(d)
}

/// One `key=value` pair. The key is non-empty and holds no `=`, `,` or
/// whitespace; the value may be empty.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!("invalid pair {s:?}: write key=value"));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("invalid pair {s:?}: the key is empty"));
    }
    if key.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(format!(
            "invalid pair {s:?}: the key {key:?} holds a space or a comma"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A comma-separated list of `key=value` pairs: `os=debian,site=lyon`.
pub fn parse_kv_list(s: &str) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<_> = s
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(parse_kv)
        .collect::<Result<_, _>>()?;
    if pairs.is_empty() {
        return Err(format!("invalid list {s:?}: write key=value,key2=value2"));
    }
    Ok(pairs)
}

/// Turns pairs into a map, refusing a key given twice (which value would
/// the operator have meant?).
pub fn pairs_to_map(
    what: &str,
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, Error> {
    let mut map = BTreeMap::new();
    for (key, value) in pairs {
        if map.contains_key(&key) {
            return Err(Error::Usage(format!("{what} {key:?} is given twice")));
        }
        map.insert(key, value);
    }
    Ok(map)
}

/// An event kind for `events --kind`: exact (`run.failed`) or a prefix
/// ending in `.` (`run.`); the puppeteer does the matching.
pub fn parse_event_kind(s: &str) -> Result<String, String> {
    let kind = s.trim();
    if kind.is_empty() {
        return Err("invalid kind \"\": write e.g. run.failed, or run. for every run event".into());
    }
    if kind.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(format!(
            "invalid kind {s:?}: one kind per --kind, without spaces or commas"
        ));
    }
    Ok(kind.to_string())
}

/// One event kind of `notifications add --on` (clap splits the list at
/// commas first): exact (`job.failed`) or a prefix ending in `.` (`run.`).
pub fn parse_rule_event(s: &str) -> Result<String, String> {
    let kind = s.trim();
    if kind.is_empty() {
        return Err(
            "invalid event \"\": write e.g. job.failed,run.lost, or run. for every run event"
                .into(),
        );
    }
    if kind.contains(char::is_whitespace) {
        return Err(format!("invalid event {s:?}: an event kind holds no space"));
    }
    Ok(kind.to_string())
}

/// A resource a task needs, written `NAME` or `NAME:COUNT`: `uplink`,
/// `uplink:2`. The count defaults to 1 and must be at least 1; the name is
/// left for the puppeteer to judge beyond being non-empty and unspaced.
pub fn parse_resource_need(s: &str) -> Result<(String, u32), String> {
    const HOW: &str = "write NAME or NAME:COUNT, e.g. uplink or uplink:2";
    let (name, count) = match s.trim().split_once(':') {
        Some((name, count)) => (name.trim(), Some(count.trim())),
        None => (s.trim(), None),
    };
    if name.is_empty() {
        return Err(format!("invalid resource {s:?}: the name is empty: {HOW}"));
    }
    if name.contains(|c: char| c.is_whitespace() || c == ',') {
        return Err(format!(
            "invalid resource {s:?}: the name {name:?} holds a space or a comma: {HOW}"
        ));
    }
    let count = match count {
        None => 1,
        Some(count) => count.parse::<u32>().map_err(|_| {
            format!("invalid resource {s:?}: the count {count:?} is not a whole number: {HOW}")
        })?,
    };
    if count == 0 {
        return Err(format!(
            "invalid resource {s:?}: the count must be at least 1 (leave the resource out \
             instead, or remove it with --no-resources)"
        ));
    }
    Ok((name.to_string(), count))
}

/// A bandwidth budget in bytes per second, written with its unit: `B/s`,
/// `KiB/s`, `MiB/s`, `GiB/s` (powers of 1024), `kB/s`, `MB/s` (powers of
/// 1000), or `kbit/s`, `Mbit/s` (bits, powers of 1000): `48KiB/s`,
/// `512kbit/s`, `1.5 MiB/s`. `0` (no unit needed) removes the budget.
pub fn parse_bandwidth(s: &str) -> Result<u64, String> {
    const HOW: &str = "write a number and a unit: B/s, KiB/s, MiB/s, GiB/s, kB/s, MB/s, \
                       kbit/s or Mbit/s, e.g. 48KiB/s or 512kbit/s (0 for no budget)";
    let text = s.trim();
    if text == "0" {
        return Ok(0);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("invalid bandwidth {s:?}: the unit is missing: {HOW}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid bandwidth {s:?}: {number:?} is not a number: {HOW}"))?;
    let per_second = match unit.trim() {
        "B/s" => 1.0,
        "KiB/s" => 1024.0,
        "MiB/s" => 1024.0 * 1024.0,
        "GiB/s" => 1024.0 * 1024.0 * 1024.0,
        "kB/s" => 1000.0,
        "MB/s" => 1e6,
        "kbit/s" => 1000.0 / 8.0,
        "Mbit/s" => 1e6 / 8.0,
        other => {
            return Err(format!(
                "invalid bandwidth {s:?}: unknown unit {other:?}: {HOW}"
            ));
        }
    };
    let bytes = (number * per_second).round();
    if bytes < 1.0 {
        return Err(format!(
            "invalid bandwidth {s:?}: less than 1 byte per second (0 removes the budget)"
        ));
    }
    if bytes > u64::MAX as f64 {
        return Err(format!("invalid bandwidth {s:?}: too large"));
    }
    Ok(bytes as u64)
}

/// A budget for people, in the unit it was most likely given in: a link's
/// rate in bits (`480 kbit/s`) when it is a whole number of kbit/s and not
/// of KiB/s, else in powers of 1024 (`48 KiB/s`); the other one follows in
/// brackets when it differs (`480 kbit/s (58.6 KiB/s)`).
pub fn format_bandwidth(bytes_per_second: u64) -> String {
    let bytes = format_bytes_rate(bytes_per_second);
    let bits = format_bits_rate(bytes_per_second);
    let in_bits = bytes_per_second.is_multiple_of(125) && !bytes_per_second.is_multiple_of(1024);
    match bits {
        Some(bits) if in_bits => format!("{bits} ({bytes})"),
        Some(bits) if bytes_per_second >= 1024 => format!("{bytes} ({bits})"),
        _ => bytes,
    }
}

/// `58.6 KiB/s`, `1.5 MiB/s`, `200 B/s`.
fn format_bytes_rate(bytes_per_second: u64) -> String {
    let b = bytes_per_second as f64;
    let (value, unit) = if b >= 1024.0 * 1024.0 {
        (b / (1024.0 * 1024.0), "MiB/s")
    } else if b >= 1024.0 {
        (b / 1024.0, "KiB/s")
    } else {
        return format!("{bytes_per_second} B/s");
    };
    let text = format!("{value:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// `480 kbit/s`, `2 Mbit/s`, `1.5 Mbit/s`; `None` below 1 kbit/s.
fn format_bits_rate(bytes_per_second: u64) -> Option<String> {
    let bits = bytes_per_second as f64 * 8.0;
    let (value, unit) = if bits >= 1e6 {
        (bits / 1e6, "Mbit/s")
    } else if bits >= 1e3 {
        (bits / 1e3, "kbit/s")
    } else {
        return None;
    };
    let text = format!("{value:.1}");
    Some(format!(
        "{} {unit}",
        text.strip_suffix(".0").unwrap_or(&text)
    ))
}

/// A limit of a job's strategy: a count of runs, or a percentage of the
/// job's runs (the puppeteer rounds it up, to at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Count(u32),
    Percent(u32),
}

/// A limit written `N` or `P%`: `3`, `25%`. A count is at least 1 (leave
/// the option out for no limit); a percentage is from 1 to 100.
pub fn parse_limit(s: &str) -> Result<Limit, String> {
    const HOW: &str = "write a count N or a percentage P%, e.g. 3 or 25%";
    let text = s.trim();
    let (number, percent) = match text.strip_suffix('%') {
        Some(number) => (number.trim(), true),
        None => (text, false),
    };
    if number.is_empty() {
        return Err(format!("invalid limit {s:?}: {HOW}"));
    }
    let n = number
        .parse::<u32>()
        .map_err(|_| format!("invalid limit {s:?}: {number:?} is not a whole number: {HOW}"))?;
    if percent {
        if !(1..=100).contains(&n) {
            return Err(format!(
                "invalid limit {s:?}: a percentage must be from 1% to 100%"
            ));
        }
        Ok(Limit::Percent(n))
    } else {
        if n == 0 {
            return Err(format!(
                "invalid limit {s:?}: the count must be at least 1 (leave the option out \
                 for no limit)"
            ));
        }
        Ok(Limit::Count(n))
    }
}

/// The id of an API token (`tok-...`). An enroll token's id (`enr-...`) is
/// refused with a pointer to the command that revokes those; other ids are
/// left for the puppeteer to judge.
pub fn parse_token_id(s: &str) -> Result<String, String> {
    let id = s.trim();
    if id.is_empty() {
        return Err("the token id is empty: write e.g. tok-01hx...".into());
    }
    if id.starts_with("enr-") {
        return Err(format!(
            "{id:?} is an enroll token: revoke it with `geppetto enroll-tokens revoke {id}`"
        ));
    }
    Ok(id.to_string())
}

/// What an id names, from its prefix: ids carry their kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdKind {
    Run,
    Job,
}

/// Tells a run id from a job id.
pub fn id_kind(id: &str) -> Result<IdKind, Error> {
    if id.starts_with("run-") && id.len() > 4 {
        Ok(IdKind::Run)
    } else if id.starts_with("job-") && id.len() > 4 {
        Ok(IdKind::Job)
    } else {
        Err(Error::Usage(format!(
            "{id:?} is neither a run id (run-...) nor a job id (job-...)"
        )))
    }
}

/// A run state as the API names it (`timed_out`, or `timed out`).
pub fn parse_run_state(s: &str) -> Result<i32, String> {
    let name = format!(
        "RUN_STATE_{}",
        s.trim().replace([' ', '-'], "_").to_uppercase()
    );
    match pb::RunState::from_str_name(&name) {
        Some(state) if state != pb::RunState::Unspecified => Ok(state as i32),
        _ => Err(format!(
            "unknown run state {s:?}: queued, waiting, offered, running, succeeded, failed, timed_out, cancelled, lost, interrupted or skipped"
        )),
    }
}

/// A job state as the API names it (`awaiting_approval`).
pub fn parse_job_state(s: &str) -> Result<i32, String> {
    let name = format!(
        "JOB_STATE_{}",
        s.trim().replace([' ', '-'], "_").to_uppercase()
    );
    match pb::JobState::from_str_name(&name) {
        Some(state) if state != pb::JobState::Unspecified => Ok(state as i32),
        _ => Err(format!(
            "unknown job state {s:?}: running, awaiting_approval, succeeded, failed, cancelled or rejected"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse() {
        assert_eq!(
            parse_run_state("timed out"),
            Ok(pb::RunState::TimedOut as i32)
        );
        assert_eq!(parse_run_state("FAILED"), Ok(pb::RunState::Failed as i32));
        assert!(parse_run_state("unspecified").is_err());
        assert!(parse_run_state("nope").unwrap_err().contains("skipped"));
        assert_eq!(
            parse_job_state("awaiting-approval"),
            Ok(pb::JobState::AwaitingApproval as i32)
        );
        assert!(parse_job_state("lost").is_err());
    }

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("48KiB/s").unwrap(), 48 * 1024);
        assert_eq!(parse_bandwidth(" 1.5 MiB/s ").unwrap(), 1_572_864);
        assert_eq!(parse_bandwidth("512kbit/s").unwrap(), 64_000);
        assert_eq!(parse_bandwidth("2Mbit/s").unwrap(), 250_000);
        assert_eq!(parse_bandwidth("100B/s").unwrap(), 100);
        assert_eq!(parse_bandwidth("10kB/s").unwrap(), 10_000);
        assert_eq!(parse_bandwidth("0").unwrap(), 0);
        assert!(
            parse_bandwidth("48")
                .unwrap_err()
                .contains("unit is missing")
        );
        assert!(
            parse_bandwidth("48 KB/s")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_bandwidth("fast").unwrap_err().contains("KiB/s"));
        assert!(parse_bandwidth("0.001B/s").is_err());
        assert_eq!(format_bandwidth(48 * 1024), "48 KiB/s (393.2 kbit/s)");
        assert_eq!(format_bandwidth(1_572_864), "1.5 MiB/s (12.6 Mbit/s)");
        assert_eq!(format_bandwidth(200), "200 B/s");
        // Given in bits: echoed in bits.
        assert_eq!(format_bandwidth(60_000), "480 kbit/s (58.6 KiB/s)");
        assert_eq!(format_bandwidth(250_000), "2 Mbit/s (244.1 KiB/s)");
        assert_eq!(format_bandwidth(64_000), "512 kbit/s (62.5 KiB/s)");
    }

    #[test]
    fn rule_events() {
        assert_eq!(parse_rule_event(" job.failed ").unwrap(), "job.failed");
        assert_eq!(parse_rule_event("run.").unwrap(), "run.");
        assert!(parse_rule_event("").unwrap_err().contains("job.failed"));
        assert!(parse_rule_event("job failed").is_err());
    }

    #[test]
    fn event_kinds() {
        assert_eq!(parse_event_kind("run.failed").unwrap(), "run.failed");
        assert_eq!(parse_event_kind(" run. ").unwrap(), "run.");
        assert_eq!(
            parse_event_kind("admin.Tasks/CreateTask").unwrap(),
            "admin.Tasks/CreateTask"
        );
        assert!(parse_event_kind("").unwrap_err().contains("run."));
        assert!(parse_event_kind("run.failed,job.failed").is_err());
        assert!(parse_event_kind("run failed").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration(" 2days ").unwrap(),
            Duration::from_secs(172_800)
        );
        let err = parse_duration("10").unwrap_err();
        assert!(err.contains("\"10\"") && err.contains("30s"), "{err}");
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
    }

    #[test]
    fn pairs() {
        assert_eq!(
            parse_kv("os=debian").unwrap(),
            ("os".into(), "debian".into())
        );
        assert_eq!(parse_kv("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_kv("EMPTY=").unwrap(), ("EMPTY".into(), String::new()));
        assert!(parse_kv("debian").unwrap_err().contains("key=value"));
        assert!(parse_kv("=x").unwrap_err().contains("key is empty"));
        assert!(parse_kv("a b=x").unwrap_err().contains("space"));
    }

    #[test]
    fn pair_lists() {
        assert_eq!(
            parse_kv_list("os=debian,site=lyon,").unwrap(),
            vec![
                ("os".into(), "debian".into()),
                ("site".into(), "lyon".into())
            ]
        );
        assert!(
            parse_kv_list("os=debian,lyon")
                .unwrap_err()
                .contains("\"lyon\"")
        );
        assert!(parse_kv_list(",").is_err());
        let twice = pairs_to_map("label", parse_kv_list("a=1,a=2").unwrap()).unwrap_err();
        assert_eq!(twice.to_string(), "label \"a\" is given twice");
    }

    #[test]
    fn resource_needs() {
        assert_eq!(parse_resource_need("uplink").unwrap(), ("uplink".into(), 1));
        assert_eq!(
            parse_resource_need("uplink:2").unwrap(),
            ("uplink".into(), 2)
        );
        assert_eq!(
            parse_resource_need(" db.main-1 : 3 ").unwrap(),
            ("db.main-1".into(), 3)
        );
        let zero = parse_resource_need("uplink:0").unwrap_err();
        assert!(
            zero.contains("\"uplink:0\"") && zero.contains("at least 1"),
            "{zero}"
        );
        let nameless = parse_resource_need(":2").unwrap_err();
        assert!(
            nameless.contains("\":2\"") && nameless.contains("name is empty"),
            "{nameless}"
        );
        let countless = parse_resource_need("a:b").unwrap_err();
        assert!(
            countless.contains("\"a:b\"") && countless.contains("not a whole number"),
            "{countless}"
        );
        assert!(countless.contains("NAME:COUNT"), "{countless}");
        for bad in ["", "a:", "a:-1", "a:1:2", "a b:1", "a:99999999999"] {
            assert!(parse_resource_need(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("3").unwrap(), Limit::Count(3));
        assert_eq!(parse_limit("25%").unwrap(), Limit::Percent(25));
        assert_eq!(parse_limit(" 100% ").unwrap(), Limit::Percent(100));
        assert_eq!(parse_limit("1%").unwrap(), Limit::Percent(1));
        let zero = parse_limit("0").unwrap_err();
        assert!(
            zero.contains("\"0\"") && zero.contains("at least 1"),
            "{zero}"
        );
        for bad in ["0%", "101%"] {
            let err = parse_limit(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("from 1% to 100%"),
                "{err}"
            );
        }
        for bad in ["x%", "-1", "x", "1.5", "3%%", "99999999999"] {
            let err = parse_limit(bad).unwrap_err();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("not a whole number"),
                "{err}"
            );
            assert!(err.contains("e.g. 3 or 25%"), "{err}");
        }
        for bad in ["", "%", " "] {
            let err = parse_limit(bad).unwrap_err();
            assert!(err.contains("e.g. 3 or 25%"), "{err}");
        }
    }

    #[test]
    fn token_ids() {
        assert_eq!(parse_token_id(" tok-01hx ").unwrap(), "tok-01hx");
        assert!(parse_token_id("").unwrap_err().contains("empty"));
        let err = parse_token_id("enr-1").unwrap_err();
        assert!(err.contains("geppetto enroll-tokens revoke enr-1"), "{err}");
    }

    #[test]
    fn id_kinds() {
        assert_eq!(id_kind("run-01hx").unwrap(), IdKind::Run);
        assert_eq!(id_kind("job-01hx").unwrap(), IdKind::Job);
        for bad in ["enr-1", "01hx", "run-", "", "jobs-1"] {
            let err = id_kind(bad).unwrap_err();
            assert!(matches!(err, Error::Usage(_)), "{bad}");
            assert!(err.to_string().contains("run id (run-...)"), "{err}");
        }
    }
}
