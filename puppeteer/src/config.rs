//! Configuration: a TOML file, overridden by command-line flags, validated
//! in full before any port is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::pki::TlsFiles;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
pub const DEFAULT_DATA_DIR: &str = "./geppetto-data";
pub use crate::app::{DEFAULT_AUDIT_RETENTION, DEFAULT_LOG_LIMIT, DEFAULT_MAX_POLL_HOLD};

/// The config file, every key optional. See `deploy/puppeteer.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL: the state lives there instead of the data dir.
    pub store: Option<String>,
    pub store_password_file: Option<PathBuf>,
    pub store_ca_file: Option<PathBuf>,
    pub server_names: Option<Vec<String>>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    pub poll_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub max_poll_hold: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub lease_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub event_retention: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub audit_retention: Option<Duration>,
    pub smtp: Option<crate::app::notify::SmtpConfig>,
    #[serde(default, with = "humantime_serde_opt")]
    pub notify_give_up: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub notify_retry: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub notify_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub late_after: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub offline_after: Option<Duration>,
    pub insecure_plaintext: Option<bool>,
    pub approval_four_eyes: Option<bool>,
    #[serde(default, with = "humantime_serde_opt")]
    pub connection_idle_timeout: Option<Duration>,
    pub max_connections_per_address: Option<usize>,
    pub max_unauthenticated_per_address: Option<usize>,
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    pub request_body_timeout: Option<Duration>,
    pub metrics_listen: Option<SocketAddr>,
    pub puppet_binary: Option<PathBuf>,
    /// Output kept per run: a size ("64MiB") or "off".
    pub log_limit: Option<String>,
    pub retention: Option<RetentionFile>,
}

/// The `[retention]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    #[serde(default, with = "humantime_serde_opt")]
    pub max_age: Option<Duration>,
    pub max_jobs: Option<u64>,
    pub max_log_bytes: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub upload_max_age: Option<Duration>,
}

/// Parses a size: the rule every binary follows,
/// [`geppetto_proto::units::parse_size`].
pub fn parse_size(text: &str) -> Result<u64> {
    Ok(geppetto_proto::units::parse_size(text)?)
}

/// Parses a log limit: a size, or `off` for no limit.
pub fn parse_log_limit(text: &str) -> Result<Option<u64>> {
    if matches!(text.trim(), "off" | "none" | "unlimited") {
        return Ok(None);
    }
    parse_size(text).map(Some)
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Which engine holds the state.
#[derive(Clone, Debug, Default)]
pub enum StoreConfig {
    /// sled, in `data_dir/db`: one node.
    #[default]
    Sled,
    /// PostgreSQL: one node or a cluster.
    Postgres {
        /// The URL (a password in it is kept secret in logs).
        url: secrecy::SecretString,
        /// The password, from a file or the environment.
        password: Option<secrecy::SecretString>,
        /// The CA of the database's certificate (TLS per the URL's
        /// `sslmode`); `None`: the public web roots.
        ca_file: Option<PathBuf>,
    },
}

impl StoreConfig {
    /// From the `--store` URL (or `store` key), the password file, and
    /// the password from the environment.
    pub fn from_parts(
        url: Option<String>,
        password_file: Option<PathBuf>,
        password_env: Option<String>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self> {
        let Some(url) = url else {
            if password_file.is_some() {
                bail!("store_password_file is set but no store URL: give --store postgres://…");
            }
            return Ok(StoreConfig::Sled);
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!(
                "the store must be a postgres:// or postgresql:// URL (sled needs no URL: leave --store out)"
            );
        }
        let password = match password_file {
            Some(path) => {
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("cannot read the store password file {}", path.display())
                })?;
                Some(text.trim_end_matches(['\n', '\r']).to_string())
            }
            None => password_env,
        };
        Ok(StoreConfig::Postgres {
            url: url.into(),
            password: password.map(Into::into),
            ca_file,
        })
    }
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Where the state lives: sled in the data dir (`Sled`), or a
    /// PostgreSQL database shared by a cluster's nodes.
    pub store: StoreConfig,
    /// Names (DNS or IP) of the generated server certificate.
    pub server_names: Vec<String>,
    /// Your own certificate, instead of the generated one.
    pub tls: Option<TlsFiles>,
    pub poll_timeout: Duration,
    pub max_poll_hold: Duration,
    /// Runs of a puppet silent for this long are lost. `None`: the poll
    /// timeout plus one minute. (Silence is zero while a poll is held, see
    /// `presence`: the lease covers the gap between two calls, not a hold.)
    pub lease_timeout: Option<Duration>,
    /// How long events are kept for resuming watchers.
    pub event_retention: Duration,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
    /// Notifications: the SMTP relay, retries, give-up time.
    pub notify: crate::app::notify::NotifyConfig,
    /// A puppet silent for longer is shown late. `None`: poll timeout + 15s,
    /// at most the lease.
    pub late_after: Option<Duration>,
    /// A puppet silent for longer is shown offline. `None`: 3 × late_after.
    pub offline_after: Option<Duration>,
    /// Serve plain TCP without TLS. Only for tests and TLS-terminating proxies.
    pub insecure_plaintext: bool,
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP, no
    /// authentication) on this address; off when unset. Bind it to loopback
    /// or a private network.
    pub metrics_listen: Option<SocketAddr>,
    /// The puppet binary served to machines being installed (`GET
    /// /install/puppet/OS/ARCH`); `None`: the `puppet` beside this
    /// executable, if there.
    pub puppet_binary: Option<PathBuf>,
    /// Output kept per run (head and tail, half each); `None`: all of it.
    pub log_limit: Option<u64>,
    /// What finished work is kept.
    pub retention: crate::retention::Retention,
    /// Four eyes: a job's approver must not be the user who created it.
    pub approval_four_eyes: bool,
    /// An HTTP/2 connection without a request in progress this long is
    /// closed (a held poll is a request in progress).
    pub connection_idle_timeout: Duration,
    /// Connections one source address may hold (0: no bound; `None`: a
    /// quarter of the connection cap, at least 64). See `server::limits`.
    pub max_connections_per_address: Option<usize>,
    /// Connections one source address may hold before a request on them
    /// carried a valid credential (0: no bound).
    pub max_unauthenticated_per_address: usize,
    /// Connections open at most at once; `None`: from the open-file limit.
    pub max_connections: Option<usize>,
    /// A request body sending no byte this long fails.
    pub request_body_timeout: Duration,
}

impl Config {
    /// The presence thresholds in force.
    pub fn presence(&self) -> crate::presence::Thresholds {
        let defaults = crate::presence::Thresholds::for_hold(self.poll_timeout);
        // Shown late before its runs are lost.
        let late_after = self
            .late_after
            .unwrap_or(defaults.late_after.min(self.lease()));
        crate::presence::Thresholds {
            late_after,
            offline_after: self.offline_after.unwrap_or(late_after * 3),
        }
    }

    /// The lease timeout in force.
    pub fn lease(&self) -> Duration {
        self.lease_timeout
            .unwrap_or(self.poll_timeout + Duration::from_secs(60))
    }

    /// Defaults for a data dir, listening on `listen`.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        Config {
            listen,
            data_dir,
            store: StoreConfig::Sled,
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            tls: None,
            poll_timeout: Duration::from_secs(50),
            max_poll_hold: DEFAULT_MAX_POLL_HOLD,
            lease_timeout: None,
            event_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            notify: Default::default(),
            late_after: None,
            offline_after: None,
            insecure_plaintext: false,
            metrics_listen: None,
            puppet_binary: None,
            log_limit: Some(DEFAULT_LOG_LIMIT),
            retention: Default::default(),
            approval_four_eyes: false,
            connection_idle_timeout: crate::server::DEFAULT_IDLE,
            max_connections_per_address: None,
            max_unauthenticated_per_address: crate::server::DEFAULT_UNPROVEN_PER_ADDRESS,
            max_connections: None,
            request_body_timeout: crate::server::BODY_IDLE,
        }
    }

    /// Checks what cannot be checked field by field.
    pub fn validate(&self) -> Result<()> {
        if self.poll_timeout < Duration::from_secs(1)
            || self.poll_timeout > Duration::from_secs(3600)
        {
            bail!("poll timeout must be between 1s and 1h");
        }
        if self.max_poll_hold < self.poll_timeout {
            bail!("max poll hold must not be shorter than the poll timeout");
        }
        if self.max_poll_hold > Duration::from_secs(3600) {
            bail!("max poll hold must be at most 1h");
        }
        if self
            .lease_timeout
            .is_some_and(|l| l < Duration::from_secs(1) || l > Duration::from_secs(7 * 24 * 3600))
        {
            bail!("lease timeout must be between 1s and 7 days");
        }
        let presence = self.presence();
        if presence.late_after > self.lease() {
            bail!(
                "late_after ({}) must not be longer than the lease timeout ({}): a puppet would lose its runs while shown online",
                humantime::format_duration(presence.late_after),
                humantime::format_duration(self.lease())
            );
        }
        if presence.offline_after < presence.late_after {
            bail!("offline_after must not be shorter than late_after");
        }
        if self.connection_idle_timeout < Duration::from_secs(1)
            || self.connection_idle_timeout > Duration::from_secs(3600)
        {
            bail!("connection_idle_timeout must be between 1s and 1h");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.request_body_timeout)
        {
            bail!("request_body_timeout must be between 1s and 1h");
        }
        if self.max_connections.is_some_and(|n| n < 16) {
            bail!("max_connections must be at least 16");
        }
        if self.log_limit.is_some_and(|l| l < 1024) {
            bail!("the log limit must be at least 1KiB (or \"off\")");
        }
        self.retention.validate()?;
        if self.tls.is_none() && self.server_names.is_empty() && !self.insecure_plaintext {
            bail!("give at least one server name for the generated certificate");
        }
        if let Some(tls) = &self.tls {
            for path in [&tls.cert, &tls.key] {
                if !path.exists() {
                    bail!("TLS file {} does not exist", path.display());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config in deploy/ parses, with every option uncommented.
    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../deploy/puppeteer.toml");
        toml::from_str::<FileConfig>(text).expect("deploy/puppeteer.toml as shipped");
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|rest| {
                        rest.starts_with('[')
                            || rest
                                .split_once(" = ")
                                .is_some_and(|(k, _)| !k.contains(' '))
                    })
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: FileConfig = toml::from_str(&uncommented).expect("every option uncommented");
        assert!(parsed.smtp.is_some());
        assert!(parsed.tls_cert.is_some());
        assert!(parsed.retention.is_some());
        parse_log_limit(&parsed.log_limit.unwrap()).unwrap();
    }

    #[test]
    fn a_puppet_is_shown_late_before_its_runs_are_lost() {
        let mut config = Config::new(PathBuf::from("/tmp/x"), "127.0.0.1:0".parse().unwrap());
        // The defaults: late at 65 s, lost at 110 s, offline at 195 s.
        config.validate().unwrap();
        let presence = config.presence();
        assert_eq!(presence.late_after, Duration::from_secs(65));
        assert_eq!(config.lease(), Duration::from_secs(110));
        // A short lease pulls the default late_after down with it.
        config.lease_timeout = Some(Duration::from_secs(3));
        config.validate().unwrap();
        assert_eq!(config.presence().late_after, Duration::from_secs(3));
        // Set by hand past the lease: refused, saying why.
        config.late_after = Some(Duration::from_secs(10));
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("lose its runs while shown online"),
            "{error}"
        );
    }

    #[test]
    fn sizes_follow_bytesize_in_any_case() {
        for (text, bytes) in [
            ("4096", 4096),
            ("0", 0),
            ("512B", 512),
            ("64MiB", 64 << 20),
            ("64mib", 64 << 20),
            ("64 MIB", 64 << 20),
            (" 64Mi ", 64 << 20),
            ("1.5 KiB", 1536),
            ("10GiB", 10 << 30),
            ("1TiB", 1 << 40),
            ("10GB", 10_000_000_000),
            ("10gb", 10_000_000_000),
            ("100MB", 100_000_000),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text:?}");
        }
        // A lone letter is refused: earlier versions read `64m` as MiB.
        for bad in [
            "",
            "ten",
            "3 parsecs",
            "GiB",
            "-1MiB",
            "1.5",
            "64MiB/s",
            "64m",
            "1K",
        ] {
            let error = parse_size(bad).unwrap_err().to_string();
            assert!(
                error.contains("invalid size") && error.contains("64MiB"),
                "{bad:?}: {error}"
            );
        }
        assert_eq!(parse_log_limit("off").unwrap(), None);
        assert_eq!(parse_log_limit("16mib").unwrap(), Some(16 << 20));
    }
}
