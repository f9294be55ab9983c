//! The agent's validated configuration.
//!
//! Everything is checked before the first connection, so that a typo gives
//! one clear error line at start-up instead of a puppet that retries forever.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use geppetto_proto::client::Transport;
use geppetto_proto::proxy::ProxyConfig;
use secrecy::{ExposeSecret, SecretString};

/// Runs a puppet executes at the same time unless told otherwise.
pub const DEFAULT_SLOTS: u32 = 1;
/// More slots than this is certainly a typo.
pub const MAX_SLOTS: u32 = 256;
/// The range of hold times a puppet may ask for.
pub const MIN_POLL_HOLD: Duration = Duration::from_secs(1);
pub const MAX_POLL_HOLD: Duration = Duration::from_secs(600);
/// The hold asked at start: below the idle timeouts of common proxies (60 s).
pub const DEFAULT_POLL_HOLD: Duration = Duration::from_secs(50);
/// The hold is never lowered below this (unless the start hold is lower).
pub const DEFAULT_POLL_HOLD_FLOOR: Duration = Duration::from_secs(10);
/// The hold is never raised above this (unless the start hold is higher).
pub const DEFAULT_POLL_HOLD_CEILING: Duration = Duration::from_secs(300);

/// Whether log uploads are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// gzip: logs shrink several times, at a little CPU.
    #[default]
    Gzip,
    /// Sent as they are.
    None,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            other => Err(format!(
                "unknown compression {other:?}: expected gzip or none"
            )),
        }
    }
}

/// A configuration error, worded for the operator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(message.into()))
}

/// Everything [`crate::run_agent`] needs. Its Debug shows no secret: the
/// enrollment token is redacted by its type.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `https://host:port` of the puppeteer; several comma-separated for
    /// the nodes of a cluster.
    pub server: String,
    /// PEM file of the CA that signed the puppeteer's certificate.
    pub ca_file: Option<PathBuf>,
    /// Needed only until the puppet holds a credential.
    pub enroll_token: Option<SecretString>,
    /// Holds the credential, run records and spools (created with mode 0700).
    pub state_dir: PathBuf,
    /// The name the puppet asks for when it enrolls.
    pub name: String,
    /// Labels the puppet declares when it enrolls.
    pub labels: BTreeMap<String, String>,
    pub transport: Transport,
    /// How many runs may execute at the same time.
    pub slots: u32,
    /// The hold asked for an idle poll at start; `None`: [`DEFAULT_POLL_HOLD`].
    /// It then adapts to the path (see `hold`).
    pub poll_hold: Option<Duration>,
    /// The HTTP CONNECT proxy: from `HTTPS_PROXY`/`NO_PROXY` unless given
    /// (`--proxy`, `--no-proxy`). Its `Debug` hides the credentials.
    pub proxy: ProxyConfig,
    /// The bound of the artifact cache in bytes (least recently used files
    /// that no run needs are evicted).
    pub artifact_cache_max: u64,
    /// Compression of log uploads.
    pub compression: Compression,
    /// The lowest hold; `None`: [`DEFAULT_POLL_HOLD_FLOOR`] (or the start hold if lower).
    pub poll_hold_floor: Option<Duration>,
    /// The highest hold; `None`: [`DEFAULT_POLL_HOLD_CEILING`] (or the start hold if higher).
    pub poll_hold_ceiling: Option<Duration>,
    /// Where the machine's boot id is read instead of
    /// `/proc/sys/kernel/random/boot_id`: tests simulate a reboot with it.
    pub boot_id_file: Option<PathBuf>,
    /// Serve the artifact cache to the site's peers on this address
    /// (`None`: off), telling them to use `peer_advertise` (default: this
    /// address).
    pub peer_listen: Option<std::net::SocketAddr>,
    pub peer_advertise: Option<String>,
    /// Enroll if not enrolled yet, then exit (the install script).
    pub enroll_only: bool,
    /// Only check in with the puppeteer and exit (a new binary being
    /// checked by an upgrade: see `upgrade`).
    pub upgrade_check: bool,
    /// How this process was started, for an upgrade to start its new
    /// binary the same way; `None` (a puppet run inside another program):
    /// upgrades fail.
    pub relaunch: Option<crate::upgrade::Relaunch>,
}

impl AgentConfig {
    /// A configuration with defaults for everything but the server and the state directory.
    pub fn new(server: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            server: server.into(),
            ca_file: None,
            enroll_token: None,
            state_dir: state_dir.into(),
            name: default_name(),
            labels: BTreeMap::new(),
            transport: Transport::default(),
            slots: DEFAULT_SLOTS,
            poll_hold: None,
            proxy: ProxyConfig::default(),
            artifact_cache_max: crate::artifacts::DEFAULT_CACHE_MAX,
            compression: Compression::default(),
            poll_hold_floor: None,
            poll_hold_ceiling: None,
            boot_id_file: None,
            peer_listen: None,
            peer_advertise: None,
            enroll_only: false,
            upgrade_check: false,
            relaunch: None,
        }
    }

    /// The start, floor and ceiling of the poll hold, defaults applied.
    pub fn hold_limits(&self) -> crate::hold::HoldLimits {
        let start = self.poll_hold.unwrap_or(DEFAULT_POLL_HOLD);
        crate::hold::HoldLimits {
            start,
            floor: self
                .poll_hold_floor
                .unwrap_or(DEFAULT_POLL_HOLD_FLOOR.min(start)),
            ceiling: self
                .poll_hold_ceiling
                .unwrap_or(DEFAULT_POLL_HOLD_CEILING.max(start)),
        }
    }

    /// Checks everything that can be checked without the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_server(&self.server, self.ca_file.is_some())?;
        if let Some(ca) = &self.ca_file
            && !ca.is_file()
        {
            return err(format!(
                "the CA file {} does not exist or is not a file",
                ca.display()
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return err("the state directory is empty: give --state-dir DIR");
        }
        if self.state_dir.exists() && !self.state_dir.is_dir() {
            return err(format!(
                "the state directory {} is not a directory",
                self.state_dir.display()
            ));
        }
        validate_name(&self.name)?;
        if let Some(listen) = self.peer_listen {
            crate::peer::check_advertise(listen, self.peer_advertise.as_deref())
                .map_err(ConfigError)?;
        }
        for (key, value) in &self.labels {
            validate_label(key, value)?;
        }
        if self
            .enroll_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().trim().is_empty())
        {
            return err("the enrollment token is empty");
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return err(format!(
                "slots must be between 1 and {MAX_SLOTS}, not {}",
                self.slots
            ));
        }
        validate_hold(self.hold_limits())
    }
}

pub(crate) fn validate_hold(limits: crate::hold::HoldLimits) -> Result<(), ConfigError> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    for (what, hold) in [
        ("poll hold", limits.start),
        ("poll hold floor", limits.floor),
        ("poll hold ceiling", limits.ceiling),
    ] {
        if !(MIN_POLL_HOLD..=MAX_POLL_HOLD).contains(&hold) {
            return err(format!(
                "the {what} must be between {} and {}, not {}",
                show(MIN_POLL_HOLD),
                show(MAX_POLL_HOLD),
                show(hold)
            ));
        }
    }
    if limits.floor > limits.start || limits.start > limits.ceiling {
        return err(format!(
            "the poll hold {} must lie between its floor {} and its ceiling {} (--poll-hold-floor, --poll-hold-ceiling)",
            show(limits.start),
            show(limits.floor),
            show(limits.ceiling)
        ));
    }
    Ok(())
}

/// Parses a size: the rule every binary follows,
/// [`geppetto_proto::units::parse_size`].
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    geppetto_proto::units::parse_size(s).map_err(|e| ConfigError(e.to_string()))
}

/// Checks the server URL, or each of the comma-separated URLs of a
/// cluster's nodes.
fn validate_server(servers: &str, has_ca: bool) -> Result<(), ConfigError> {
    if servers.trim().is_empty() {
        return err("no server given: use --server https://host:port");
    }
    servers
        .split(',')
        .try_for_each(|server| validate_one_server(server.trim(), has_ca))
}

fn validate_one_server(server: &str, has_ca: bool) -> Result<(), ConfigError> {
    if server.is_empty() {
        return err("an empty server URL in the list: write https://a:7443,https://b:7443");
    }
    if let Some(rest) = server.strip_prefix("https://") {
        if rest.is_empty() {
            return err(format!("the server URL {server:?} has no host"));
        }
        if !has_ca {
            return err("an https server needs the CA that signed its certificate: give --ca FILE");
        }
        Ok(())
    } else if server.starts_with("http://") {
        Ok(())
    } else {
        err(format!(
            "the server URL {server:?} must start with https://"
        ))
    }
}

/// The default puppet name: this machine's host name, lower-cased.
pub fn default_name() -> String {
    crate::facts::hostname().to_ascii_lowercase()
}

/// Checks a puppet name: 1-63 of `[a-z0-9-.]`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let well_formed = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if well_formed {
        Ok(())
    } else {
        err(format!(
            "invalid puppet name {name:?}: use 1-63 of a-z 0-9 - . starting with a letter or digit (--name)"
        ))
    }
}

/// Checks one label: a key of 1-63 of `[a-z0-9._/-]` starting with a letter
/// or digit, and a value of 0-63 of `[A-Za-z0-9._-]`.
pub fn validate_label(key: &str, value: &str) -> Result<(), ConfigError> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_' | '/')
        });
    if !key_ok {
        return err(format!(
            "invalid label key {key:?}: use 1-63 of a-z 0-9 - . _ / starting with a letter or digit"
        ));
    }
    let value_ok = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !value_ok {
        return err(format!(
            "invalid value {value:?} of label {key:?}: use at most 63 of A-Z a-z 0-9 - . _"
        ));
    }
    Ok(())
}

/// Parses `k=v,k2=v2` (spaces around items are ignored; empty is no labels).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let Some((key, value)) = item.split_once('=') else {
            return err(format!("invalid label {item:?}: write key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        validate_label(key, value)?;
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return err(format!("label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_bytesize_in_any_case() {
        for (text, bytes) in [
            ("4096", 4096),
            ("4096B", 4096),
            ("2GiB", 2 << 30),
            ("2gib", 2 << 30),
            ("2 GI", 2 << 30),
            (" 1.5 MiB ", 1_572_864),
            ("500MiB", 500 << 20),
            ("100MB", 100_000_000),
            ("100mb", 100_000_000),
            ("10kB", 10_000),
            ("10KB", 10_000),
            ("1TB", 1_000_000_000_000),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text:?}");
        }
        for bad in ["", "2 gigs", "GiB", "-2GiB", "1.5", "2GiB!", "2g"] {
            let error = parse_size(bad).unwrap_err().0;
            assert!(
                error.contains("invalid size") && error.contains("64MiB"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn a_cluster_is_a_list_of_urls_each_checked() {
        assert_eq!(
            validate_server("https://a:7443, https://b:7443", true),
            Ok(())
        );
        assert_eq!(validate_server("http://a:1,http://b:2", false), Ok(()));
        let e = validate_server("https://a:7443,,https://b:7443", true).unwrap_err();
        assert!(e.0.contains("empty server URL"), "{e}");
        let e = validate_server("https://a:7443,ftp://b", true).unwrap_err();
        assert!(e.0.contains("ftp://b"), "{e}");
        let e = validate_server("http://a:1,https://b:2", false).unwrap_err();
        assert!(e.0.contains("--ca"), "{e}");
    }

    fn valid() -> AgentConfig {
        let mut config = AgentConfig::new("http://127.0.0.1:1", std::env::temp_dir());
        config.name = "web-1".into();
        config
    }

    #[test]
    fn labels_parse_and_bad_ones_are_rejected() {
        let labels = parse_labels("os=debian, env=test,site=lyon").unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["env"], "test");
        assert!(parse_labels("").unwrap().is_empty());
        assert_eq!(parse_labels("k=").unwrap()["k"], "");
        for bad in [
            "os",
            "=debian",
            "Os=debian",
            "os=deb ian",
            "a=1,a=2",
            "os=debian;rm",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn names_follow_the_server_rules() {
        assert!(validate_name("web-1.lyon").is_ok());
        for bad in ["", "-web", "Web", "web_1", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn validation_catches_mistakes_before_connecting() {
        assert_eq!(valid().validate(), Ok(()));
        type Mutation = fn(&mut AgentConfig);
        let cases: Vec<(Mutation, &str)> = vec![
            (|c| c.server = "ftp://x".into(), "must start with https://"),
            (|c| c.server = "https://x:1".into(), "--ca"),
            (|c| c.server = String::new(), "no server"),
            (
                |c| c.ca_file = Some("/nonexistent/ca.pem".into()),
                "CA file",
            ),
            (|c| c.slots = 0, "slots"),
            (
                |c| c.poll_hold = Some(Duration::from_millis(10)),
                "poll hold",
            ),
            (|c| c.enroll_token = Some(" ".into()), "token"),
            (
                |c| c.poll_hold_floor = Some(Duration::from_secs(60)),
                "floor",
            ),
            (
                |c| c.poll_hold_ceiling = Some(Duration::from_secs(3600)),
                "ceiling",
            ),
            (|c| c.name = "Bad Name".into(), "puppet name"),
        ];
        for (mutate, expected) in cases {
            let mut config = valid();
            mutate(&mut config);
            let e = config.validate().unwrap_err();
            assert!(e.0.contains(expected), "{e} does not mention {expected}");
        }
    }

    #[test]
    fn hold_defaults_bend_around_a_given_start() {
        let mut config = valid();
        let limits = config.hold_limits();
        assert_eq!(limits.start, DEFAULT_POLL_HOLD);
        assert_eq!(limits.floor, DEFAULT_POLL_HOLD_FLOOR);
        assert_eq!(limits.ceiling, DEFAULT_POLL_HOLD_CEILING);
        config.poll_hold = Some(Duration::from_secs(2));
        assert_eq!(config.hold_limits().floor, Duration::from_secs(2));
        config.poll_hold = Some(Duration::from_secs(420));
        assert_eq!(config.hold_limits().ceiling, Duration::from_secs(420));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn debug_redacts_the_enroll_token() {
        let mut config = valid();
        config.enroll_token = Some("s3cret-token".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("REDACTED"));
    }
}
