//! Printing: human tables (comfy-table) or JSON, and the few formats both
//! share (times, durations, label maps).
//!
//! Colours are used only when stdout is a terminal and `NO_COLOR` is unset,
//! so piped output is plain text.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

pub use comfy_table::Cell;
use comfy_table::{Attribute, Color, ContentArrangement, Table, presets};
use serde::Serialize;

use crate::error::Error;

/// Whether stdout gets colours.
pub fn colors() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// A table with the given header, in the house style.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let color = colors();
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    if std::io::stdout().is_terminal() {
        table.set_content_arrangement(ContentArrangement::Dynamic);
    }
    table.set_header(header.map(|h| {
        let cell = Cell::new(h);
        if color {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }));
    table
}

/// Text from the API made safe for a terminal: control characters (an
/// escape sequence in a puppet's hostname, a newline forging a line) are
/// shown escaped, `\u{1b}`, never interpreted.
pub fn clean(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A table cell of text from the API, [`clean`]ed.
pub fn cell(value: impl ToString) -> Cell {
    Cell::new(clean(&value.to_string()))
}

/// A cell holding a state word, coloured by how good it is.
pub fn state_cell(word: &str) -> Cell {
    let cell = Cell::new(clean(&word.replace('_', " ")));
    match state_color(word) {
        Some(color) if colors() => cell.fg(color),
        _ => cell,
    }
}

/// The colour of a state word: green for good, red for bad, yellow for
/// waiting or ended without result; `None` for the others.
pub fn state_color(word: &str) -> Option<Color> {
    Some(match word {
        "succeeded" | "online" | "enabled" | "active" => Color::Green,
        "failed" | "timed_out" | "lost" | "interrupted" | "offline" | "revoked" => Color::Red,
        "cancelled" | "skipped" | "late" | "disabled" | "pending" | "expired" | "used_up"
        | "waiting" | "awaiting_approval" | "rejected" => Color::Yellow,
        _ => return None,
    })
}

/// Prints a table (or a key/value block) on stdout.
pub fn print_table(table: &Table) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", table.to_string().trim_end())?;
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// A JSON array written an element at a time (to stdout unless told),
/// laid out as [`print_json`] lays out a whole array: a long listing never
/// needs to be held at once.
#[derive(Debug)]
pub struct JsonArray<W: Write = std::io::Stdout> {
    out: W,
    started: bool,
}

impl Default for JsonArray {
    fn default() -> Self {
        JsonArray::to(std::io::stdout())
    }
}

impl<W: Write> JsonArray<W> {
    pub fn to(out: W) -> Self {
        JsonArray {
            out,
            started: false,
        }
    }

    pub fn push<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(value).map_err(std::io::Error::from)?;
        let out = &mut self.out;
        out.write_all(if self.started { b",\n" } else { b"[\n" })?;
        self.started = true;
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                out.write_all(b"\n")?;
            }
            write!(out, "  {line}")?;
        }
        Ok(())
    }

    /// Closes the array; returns the writer.
    pub fn finish(mut self) -> Result<W, Error> {
        let end: &[u8] = if self.started { b"\n]\n" } else { b"[]\n" };
        self.out.write_all(end)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A key/value block for `show` commands: one field per line.
pub fn fields(rows: Vec<(&str, String)>) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    let color = colors();
    for (key, value) in rows {
        let key = Cell::new(format!("{key}:"));
        let key = if color {
            key.add_attribute(Attribute::Bold)
        } else {
            key
        };
        table.add_row(vec![key, cell(value)]);
    }
    table
}

/// Prints a title line between blocks of a `show` output.
pub fn print_section(title: &str) -> Result<(), Error> {
    writeln!(std::io::stdout().lock(), "\n{title}")?;
    Ok(())
}

/// A protobuf timestamp as a time, if it is one that can be shown: from
/// 1970 to the end of year 9999 (a puppet can report any value, and
/// formatting one before 1970 panics).
pub fn to_system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(0..=LAST).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    SystemTime::try_from(*ts).ok()
}

/// RFC 3339 text of a protobuf timestamp, as JSON output shows it.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.and_then(to_system_time)
        .map(|t| humantime::format_rfc3339(t).to_string())
}

/// A timestamp for tables: RFC 3339 to the second, and how long ago.
pub fn when(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = ts.and_then(to_system_time) else {
        return "-".into();
    };
    let at = humantime::format_rfc3339_seconds(time);
    match SystemTime::now().duration_since(time) {
        Ok(ago) => format!("{at} ({} ago)", short_duration(ago)),
        Err(_) => at.to_string(),
    }
}

/// How long ago, alone, for narrow table columns.
pub fn ago(ts: Option<&prost_types::Timestamp>) -> String {
    match ts.and_then(to_system_time) {
        Some(time) => match SystemTime::now().duration_since(time) {
            Ok(ago) => format!("{} ago", short_duration(ago)),
            Err(_) => "just now".into(),
        },
        None => "-".into(),
    }
}

/// A cause for people: a time the puppeteer wrote into it (`last seen
/// 2026-12-05T16:40:12Z`) is followed by how long ago that was, which the
/// stored cause cannot say without changing every second.
pub fn cause(text: &str) -> String {
    cause_at(text, SystemTime::now())
}

fn cause_at(text: &str, now: SystemTime) -> String {
    const MARK: &str = "last seen ";
    let Some(at) = text.find(MARK).map(|i| i + MARK.len()) else {
        return text.to_string();
    };
    let stamp: String = text[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')')
        .collect();
    match humantime::parse_rfc3339(&stamp) {
        Ok(time) => {
            let ago = now
                .duration_since(time)
                .map(|d| format!("{} ago", short_duration(d)))
                .unwrap_or_else(|_| "just now".into());
            let end = at + stamp.len();
            format!("{} ({ago}){}", &text[..end], &text[end..])
        }
        Err(_) => text.to_string(),
    }
}

/// A duration rounded to its two largest units: `3m12s`, `2h5m`, `4d3h`.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Seconds of a protobuf duration, as JSON output shows it.
pub fn seconds(d: Option<&prost_types::Duration>) -> Option<f64> {
    d.map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// A protobuf duration for tables: `1h30m`.
pub fn human_duration(d: Option<&prost_types::Duration>) -> String {
    match d.and_then(|d| Duration::try_from(*d).ok()) {
        Some(d) => humantime::format_duration(d).to_string(),
        None => "-".into(),
    }
}

/// `k=v,k2=v2`, sorted by key.
pub fn labels<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let sorted: BTreeMap<_, _> = map.into_iter().collect();
    if sorted.is_empty() {
        return "-".into();
    }
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A byte count for humans, in `bytesize`'s style, as the puppeteer words
/// it too: `512 B`, `1.5 MiB`, `10.0 GiB`.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize(n).to_string()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A streamed array is byte for byte what printing the whole array
    /// gives, empty or not, strings with newlines included.
    #[test]
    fn a_json_array_streamed_is_the_array_printed_whole() {
        let items = [
            serde_json::json!({"name": "a", "labels": {"k": "v"}, "n": [1, 2]}),
            serde_json::json!({"name": "b\nc", "empty": {}, "list": []}),
            serde_json::json!("plain"),
        ];
        for count in 0..=items.len() {
            let mut array = JsonArray::to(Vec::new());
            for item in &items[..count] {
                array.push(item).unwrap();
            }
            let streamed = array.finish().unwrap();
            let mut whole = serde_json::to_vec_pretty(&items[..count].to_vec()).unwrap();
            whole.push(b'\n');
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(whole).unwrap()
            );
        }
    }

    proptest! {
        /// Whatever a puppet or a user puts in a field: the printed text
        /// has no control character left, and text without one is printed
        /// as it is.
        #[test]
        fn no_control_character_reaches_the_terminal(text in any::<String>()) {
            let shown = clean(&text);
            prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
            if !text.chars().any(char::is_control) {
                prop_assert_eq!(shown, text);
            }
        }
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(clean("web-1"), "web-1");
        assert_eq!(clean("evil\u{1b}[2J"), "evil\\u{1b}[2J");
        assert_eq!(clean("5.10\nfake line"), "5.10\\nfake line");
        assert_eq!(clean("été"), "été");
    }

    #[test]
    fn any_timestamp_a_puppet_can_send_is_shown_or_dashed_never_a_panic() {
        use prost_types::Timestamp;
        for (seconds, nanos) in [
            (-100_000_000_000, 0),
            (-1, 999_999_999),
            (1 << 62, 0),
            (i64::MAX, i32::MAX),
            (i64::MIN, i32::MIN),
            (1_700_000_000, -1),
            (1_700_000_000, 2_000_000_000),
        ] {
            let ts = Timestamp { seconds, nanos };
            assert_eq!(when(Some(&ts)), "-", "{ts:?}");
            assert_eq!(rfc3339(Some(&ts)), None, "{ts:?}");
            assert_eq!(ago(Some(&ts)), "-", "{ts:?}");
        }
        let last = Timestamp {
            seconds: 253_402_300_799,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&last)).unwrap(), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn a_cause_says_how_long_ago_it_last_saw_a_puppet() {
        let now = humantime::parse_rfc3339("2026-12-05T17:00:00Z").unwrap();
        assert_eq!(
            cause_at(
                "waiting for its puppet, which is offline, last seen 2026-12-05T16:48:00Z",
                now
            ),
            "waiting for its puppet, which is offline, last seen 2026-12-05T16:48:00Z (12m0s ago)"
        );
        assert_eq!(
            cause_at("waiting for approval", now),
            "waiting for approval"
        );
        assert_eq!(cause_at("last seen soon", now), "last seen soon");
    }

    #[test]
    fn formats() {
        assert_eq!(short_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(short_duration(Duration::from_secs(7500)), "2h5m");
        assert_eq!(short_duration(Duration::from_secs(5)), "5s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(bytes(10 << 30), "10.0 GiB");
        assert_eq!(bytes(5_000_000), "4.8 MiB");
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&ts)).unwrap(), "2023-11-14T22:13:20Z");
        let d = prost_types::Duration {
            seconds: 90,
            nanos: 500_000_000,
        };
        assert_eq!(seconds(Some(&d)), Some(90.5));
        assert_eq!(human_duration(Some(&d)), "1m 30s 500ms");
    }
}
