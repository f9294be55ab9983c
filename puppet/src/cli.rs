//! The command line and the optional TOML configuration file.
//!
//! Precedence, highest first: flags, environment variables, the file given
//! with `--config`, built-in defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use geppetto_proto::client::Transport;
use geppetto_proto::proxy::{ProxyConfig, ProxyUrl};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{
    AgentConfig, Compression, ConfigError, DEFAULT_SLOTS, default_name, parse_labels,
};

/// Geppetto's agent: long-polls the puppeteer over outgoing HTTPS and runs what it is given.
#[derive(Debug, Parser)]
#[command(name = "puppet", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enroll (first start only), then poll the puppeteer and execute runs until stopped.
    ///
    /// The first start needs an enrollment token; the credential it yields is
    /// kept in STATE_DIR/credential (mode 0600) and used from then on. Runs are
    /// recorded under STATE_DIR/runs, so that a run redelivered or cut short by
    /// a restart is never executed twice. Stop with Ctrl-C or SIGTERM.
    /// Logging follows RUST_LOG (default: info).
    Run(RunArgs),
    /// Simulate a fleet: COUNT lightweight puppets in this one process, for load tests.
    ///
    /// Each simulated puppet enrolls once (credentials are kept under
    /// STATE_DIR/<name>/, so a second start reuses them), holds its own TLS
    /// connection and speaks the agent's own protocol code, but executes
    /// nothing: see --script-mode. Progress lines go to stdout. Stop with
    /// Ctrl-C or SIGTERM.
    Simulate(SimArgs),
}

/// `Debug` shows the enrollment token redacted, by its type.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// How many puppets to simulate.
    #[arg(long, value_name = "N")]
    pub count: u32,
    /// The puppeteer's URL, https://host:port; for a cluster, its nodes'
    /// URLs comma-separated, tried in turn when one cannot be reached.
    #[arg(long, env = "PUPPET_SERVER", value_name = "URL[,URL...]")]
    pub server: String,
    /// PEM file of the CA that signed the puppeteer's certificate.
    #[arg(long, env = "PUPPET_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Enrollment token (with enough uses for COUNT puppets); needed only for
    /// puppets without a stored credential.
    #[arg(
        long,
        env = "PUPPET_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub enroll_token: Option<SecretString>,
    /// Labels every simulated puppet declares at enrollment, e.g. site=lab.
    #[arg(long, value_name = "K=V,...")]
    pub labels: Option<String>,
    /// What a run does: `echo` (print the script text), `sleep:D` (wait D,
    /// e.g. sleep:2s) or `fail:P` (fail with probability P, else echo).
    #[arg(long, value_name = "MODE", default_value = "echo", value_parser = parse_script_mode)]
    pub script_mode: crate::simulate::ScriptMode,
    /// Directory holding one sub-directory (credential) per simulated puppet.
    #[arg(long, value_name = "DIR", default_value = "./simulated-puppets")]
    pub state_dir: PathBuf,
    /// Simulated puppets are named PREFIX-00000, PREFIX-00001...
    #[arg(long, value_name = "PREFIX", default_value = "sim")]
    pub name_prefix: String,
    /// grpc-web (HTTP/1.1, like an agent) or grpc (HTTP/2) [default: grpc-web].
    #[arg(long, value_name = "TRANSPORT", default_value_t = Transport::GrpcWeb)]
    pub transport: Transport,
    /// The poll hold each simulated puppet asks for at start, e.g. 300s; it
    /// then adapts to the path between the floor and the ceiling, exactly as
    /// an agent's [default: the agent's, 50s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_hold: Option<Duration>,
    /// The lowest poll hold [default: the agent's, 10s, or --poll-hold if lower].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_hold_floor: Option<Duration>,
    /// The highest poll hold [default: the agent's, 300s, or --poll-hold if higher].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_hold_ceiling: Option<Duration>,
    /// How many enrollments may be in flight at once.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// How many puppets start polling (connect and handshake) per second.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub connect_rate: u32,
    /// Log format: `text` or `json`. The level comes from RUST_LOG [default: warn].
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

fn parse_script_mode(text: &str) -> Result<crate::simulate::ScriptMode, String> {
    text.parse()
}

impl SimArgs {
    /// Validates the flags into the simulator's configuration.
    pub fn into_config(self) -> Result<crate::simulate::SimConfig, ConfigError> {
        if self.count == 0 {
            return Err(ConfigError("--count must be at least 1".into()));
        }
        let labels = match &self.labels {
            Some(text) => parse_labels(text)?,
            None => BTreeMap::new(),
        };
        let config = crate::simulate::SimConfig {
            count: self.count,
            server: self.server,
            ca_file: self.ca,
            // The simulator's configuration holds the token as a String.
            enroll_token: self.enroll_token,
            labels,
            script_mode: self.script_mode,
            state_dir: self.state_dir,
            name_prefix: self.name_prefix,
            transport: self.transport,
            poll_hold: self.poll_hold,
            poll_hold_floor: self.poll_hold_floor,
            poll_hold_ceiling: self.poll_hold_ceiling,
            enroll_concurrency: self.enroll_concurrency,
            connect_rate: self.connect_rate,
        };
        config.validate()?;
        Ok(config)
    }
}

/// `Debug` shows the enrollment token and the proxy URL (which may hold a
/// password) redacted, by their type.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// TOML file with the same keys as the flags (server, ca, enroll_token,
    /// enroll_token_file, state_dir, name, labels, transport, slots, poll_hold, poll_hold_floor,
    /// poll_hold_ceiling, proxy, compression, artifact_cache_max); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The puppeteer's URL, https://host:port; for a cluster, its nodes'
    /// URLs comma-separated, tried in turn when one cannot be reached.
    #[arg(long, env = "PUPPET_SERVER", value_name = "URL[,URL...]")]
    pub server: Option<String>,
    /// PEM file of the CA that signed the puppeteer's certificate.
    #[arg(long, env = "PUPPET_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Enrollment token from `geppetto enroll-tokens create`; needed only until enrolled.
    /// On the command line any user of the machine can read it (ps): prefer
    /// --enroll-token-file or the environment.
    #[arg(
        long,
        env = "PUPPET_ENROLL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "enroll_token_file"
    )]
    pub enroll_token: Option<SecretString>,
    /// File holding the enrollment token (its first line); needed only until enrolled.
    #[arg(long, env = "PUPPET_ENROLL_TOKEN_FILE", value_name = "FILE")]
    pub enroll_token_file: Option<PathBuf>,
    /// Directory for the credential, run records and output spools (created 0700).
    #[arg(long, env = "PUPPET_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Name asked for at enrollment [default: this machine's host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Labels declared at enrollment, e.g. os=debian,env=test,site=lyon.
    #[arg(long, value_name = "K=V,...")]
    pub labels: Option<String>,
    /// grpc-web (HTTP/1.1, crosses proxies) or grpc (HTTP/2) [default: grpc-web].
    #[arg(long, value_name = "TRANSPORT")]
    pub transport: Option<Transport>,
    /// How many runs may execute at the same time [default: 1].
    #[arg(long, value_name = "N")]
    pub slots: Option<u32>,
    /// How long the server should hold an idle poll at first, e.g. 50s. The
    /// puppet then adapts it: a poll cut short by a proxy or NAT on the path
    /// lowers it, polls that come back cleanly raise it step by step, within
    /// the floor and the ceiling and never above the server's maximum [default: 50s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_hold: Option<Duration>,
    /// HTTP CONNECT proxy to reach the puppeteer through,
    /// http://[user:password@]host:port, or `none`. Overrides HTTPS_PROXY,
    /// https_proxy, ALL_PROXY and NO_PROXY, which are used otherwise.
    #[arg(long, value_name = "URL", conflicts_with = "no_proxy")]
    pub proxy: Option<SecretString>,
    /// Connect directly, whatever HTTPS_PROXY says.
    #[arg(long)]
    pub no_proxy: bool,
    /// Bound of the artifact cache (STATE_DIR/cache), e.g. 500MiB or 10GiB: the least
    /// recently used artifacts no running run needs are evicted [default: 2GiB].
    #[arg(long, value_name = "SIZE", value_parser = |s: &str| crate::config::parse_size(s).map_err(|e| e.0))]
    pub artifact_cache_max: Option<u64>,
    /// Compression of log uploads: gzip or none [default: gzip].
    #[arg(long, value_name = "gzip|none")]
    pub compression: Option<Compression>,
    /// Serve the artifact cache to this puppet's site's peers on ADDR:PORT,
    /// over TLS, to those the puppeteer sends with a ticket (off by
    /// default; see README, "Sites and the peer cache").
    #[arg(long, value_name = "ADDR:PORT")]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// The HOST:PORT the site's peers reach this puppet on [default: the
    /// --peer-listen address, which must then not be 0.0.0.0 or [::]].
    #[arg(long, value_name = "HOST:PORT", requires = "peer_listen")]
    pub peer_advertise: Option<String>,
    /// Enroll (if this puppet has no credential yet), then exit: what the
    /// install script does before starting the service.
    #[arg(long)]
    pub enroll_only: bool,
    /// Check in with the puppeteer once and exit: how an upgrade checks a
    /// new binary before swapping it in.
    #[arg(long, hide = true)]
    pub upgrade_check: bool,
    /// The lowest poll hold the puppet adapts down to [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_hold_floor: Option<Duration>,
    /// The highest poll hold the puppet probes up to; equal to the floor
    /// and --poll-hold, it fixes the hold [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub poll_hold_ceiling: Option<Duration>,
    /// Read the machine's boot id from this file instead of
    /// /proc/sys/kernel/random/boot_id (for tests that simulate a reboot).
    #[arg(long, env = "GEPPETTO_BOOT_ID_FILE", value_name = "FILE", hide = true)]
    pub boot_id_file: Option<PathBuf>,
    /// Log format: `text` (human-readable) or `json` (one JSON object a
    /// line). The level comes from RUST_LOG [default: info].
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `none` or `direct`: no proxy; anything else: a proxy URL, checked now.
/// The error never quotes the URL, which may hold a password.
fn parse_proxy(text: &str, origin: &str) -> Result<ProxyConfig, ConfigError> {
    match text.trim() {
        "none" | "direct" => Ok(ProxyConfig::Direct),
        url => ProxyUrl::parse(url, origin)
            .map(ProxyConfig::Url)
            .map_err(ConfigError),
    }
}

/// The `--config` file. `Debug` shows the enrollment token and the proxy
/// URL redacted, by their type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_secret")]
    pub enroll_token: Option<SecretString>,
    pub enroll_token_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub name: Option<String>,
    pub labels: Option<FileLabels>,
    pub transport: Option<String>,
    pub slots: Option<u32>,
    pub poll_hold: Option<String>,
    #[serde(default, deserialize_with = "optional_secret")]
    pub proxy: Option<SecretString>,
    pub artifact_cache_max: Option<String>,
    pub compression: Option<String>,
    pub poll_hold_floor: Option<String>,
    pub poll_hold_ceiling: Option<String>,
    pub peer_listen: Option<std::net::SocketAddr>,
    pub peer_advertise: Option<String>,
}

/// Reads a secret from the file as a string: secrecy's own `serde` support
/// is a feature the workspace leaves off.
fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// Labels in the file: a table (`[labels]`) or a `k=v,...` string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileLabels {
    Table(BTreeMap<String, String>),
    Text(String),
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(&text)
            .map_err(|e| ConfigError(format!("config file {}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.message().to_string()))
    }
}

impl RunArgs {
    /// Merges the flags over the file and validates the result.
    pub fn into_config(self) -> Result<AgentConfig, ConfigError> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        self.merge(file)
    }

    fn merge(self, file: FileConfig) -> Result<AgentConfig, ConfigError> {
        let server = self.server.or(file.server).ok_or_else(|| {
            ConfigError("no server given: use --server https://host:port (or PUPPET_SERVER)".into())
        })?;
        let state_dir = self.state_dir.or(file.state_dir).ok_or_else(|| {
            ConfigError(
                "no state directory given: use --state-dir DIR (or PUPPET_STATE_DIR)".into(),
            )
        })?;
        // Resolved once, here, against the working directory the puppet was
        // started in: runs execute in working directories of their own, and
        // the paths of their scripts and spools must not depend on them.
        let state_dir = std::path::absolute(&state_dir).map_err(|e| {
            ConfigError(format!(
                "cannot resolve the state directory {}: {e}",
                state_dir.display()
            ))
        })?;
        let labels = match (self.labels, file.labels) {
            (Some(text), _) | (None, Some(FileLabels::Text(text))) => parse_labels(&text)?,
            (None, Some(FileLabels::Table(table))) => {
                for (key, value) in &table {
                    crate::config::validate_label(key, value)?;
                }
                table
            }
            (None, None) => BTreeMap::new(),
        };
        let transport = match (self.transport, file.transport) {
            (Some(t), _) => t,
            (None, Some(text)) => text.parse().map_err(ConfigError)?,
            (None, None) => Transport::default(),
        };
        let proxy = match (self.no_proxy, self.proxy, file.proxy) {
            (true, _, _) => ProxyConfig::Direct,
            (false, Some(text), _) => parse_proxy(text.expose_secret(), "--proxy")?,
            (false, None, Some(text)) => {
                parse_proxy(text.expose_secret(), "the config file's proxy")?
            }
            (false, None, None) => ProxyConfig::FromEnv,
        };
        let artifact_cache_max = match (self.artifact_cache_max, file.artifact_cache_max) {
            (Some(max), _) => max,
            (None, Some(text)) => crate::config::parse_size(&text)
                .map_err(|e| ConfigError(format!("artifact_cache_max: {}", e.0)))?,
            (None, None) => crate::artifacts::DEFAULT_CACHE_MAX,
        };
        let compression = match (self.compression, file.compression) {
            (Some(c), _) => c,
            (None, Some(text)) => text.parse().map_err(ConfigError)?,
            (None, None) => Compression::default(),
        };
        let poll_hold = flag_or_file("poll_hold", self.poll_hold, file.poll_hold)?;
        let poll_hold_floor = flag_or_file(
            "poll_hold_floor",
            self.poll_hold_floor,
            file.poll_hold_floor,
        )?;
        let poll_hold_ceiling = flag_or_file(
            "poll_hold_ceiling",
            self.poll_hold_ceiling,
            file.poll_hold_ceiling,
        )?;
        if self.enroll_token.is_some() && std::env::var_os("PUPPET_ENROLL_TOKEN").is_none() {
            tracing::warn!(
                "the enrollment token was given on the command line, where any user of this \
                 machine can read it (ps, /proc): prefer --enroll-token-file FILE or \
                 PUPPET_ENROLL_TOKEN"
            );
        }
        let enroll_token = match (self.enroll_token, self.enroll_token_file) {
            (Some(token), _) => Some(token),
            (None, Some(path)) => Some(read_token_file(&path)?),
            (None, None) => match (file.enroll_token, file.enroll_token_file) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError(
                        "enroll_token and enroll_token_file: give one, not both".into(),
                    ));
                }
                (Some(token), None) => Some(token),
                (None, Some(path)) => Some(read_token_file(&path)?),
                (None, None) => None,
            },
        };
        let config = AgentConfig {
            server,
            ca_file: self.ca.or(file.ca),
            // The agent's configuration holds the token as a String.
            enroll_token,
            state_dir,
            name: self.name.or(file.name).unwrap_or_else(default_name),
            labels,
            transport,
            slots: self.slots.or(file.slots).unwrap_or(DEFAULT_SLOTS),
            poll_hold,
            proxy,
            artifact_cache_max,
            compression,
            poll_hold_floor,
            poll_hold_ceiling,
            boot_id_file: self.boot_id_file,
            peer_listen: self.peer_listen.or(file.peer_listen),
            peer_advertise: self.peer_advertise.or(file.peer_advertise),
            enroll_only: self.enroll_only,
            upgrade_check: self.upgrade_check,
            relaunch: None,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The enrollment token kept in `path`: its first line, trimmed.
fn read_token_file(path: &std::path::Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read the enrollment token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(ConfigError(format!(
            "the enrollment token file {} is empty",
            path.display()
        )));
    }
    Ok(token.into())
}

/// A duration from a flag, else from the file (as text such as `50s`).
fn flag_or_file(
    key: &str,
    flag: Option<Duration>,
    file: Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    match (flag, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(text)) => humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| ConfigError(format!("invalid {key} {text:?}: {e} (write e.g. 50s)"))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> RunArgs {
        let mut argv = vec!["puppet", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args,
            Command::Simulate(_) => unreachable!("parsed `run`"),
        }
    }

    #[test]
    fn simulate_flags_build_a_config() {
        let cli = Cli::try_parse_from([
            "puppet",
            "simulate",
            "--count",
            "3",
            "--server",
            "https://localhost:7443",
            "--enroll-token",
            "s3cret",
            "--script-mode",
            "sleep:1s",
            "--labels",
            "bench=1",
        ])
        .unwrap();
        let Command::Simulate(args) = cli.command else {
            panic!("parsed another command");
        };
        assert!(!format!("{args:?}").contains("s3cret"));
        let config = args.into_config().unwrap();
        assert_eq!(config.count, 3);
        assert_eq!(
            config.script_mode,
            crate::simulate::ScriptMode::Sleep(Duration::from_secs(1))
        );
        assert_eq!(config.labels["bench"], "1");
        assert!(
            Cli::try_parse_from([
                "puppet",
                "simulate",
                "--count",
                "1",
                "--server",
                "x",
                "--script-mode",
                "boom"
            ])
            .is_err()
        );
    }

    /// The token can come from a file (first line, trimmed), so that it is
    /// on no command line; a missing or empty file is a clear error, and
    /// both forms at once are refused.
    #[test]
    fn the_enrollment_token_is_read_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "gpe_secret \nsecond line\n").unwrap();
        let token = token_file.to_str().unwrap();
        let config = parse(&[
            "--server",
            "http://127.0.0.1:7",
            "--state-dir",
            "/tmp/p",
            "--enroll-token-file",
            token,
        ])
        .into_config()
        .unwrap();
        assert_eq!(
            config.enroll_token.as_ref().map(|t| t.expose_secret()),
            Some("gpe_secret")
        );

        let toml = dir.path().join("puppet.toml");
        std::fs::write(
            &toml,
            format!(
                "server = \"http://127.0.0.1:7\"\nstate_dir = \"/tmp/p\"\nenroll_token_file = {token:?}\n"
            ),
        )
        .unwrap();
        let config = parse(&["--config", toml.to_str().unwrap()])
            .into_config()
            .unwrap();
        assert_eq!(
            config.enroll_token.as_ref().map(|t| t.expose_secret()),
            Some("gpe_secret")
        );

        std::fs::write(&token_file, "\n").unwrap();
        let e = parse(&[
            "--server",
            "http://127.0.0.1:7",
            "--state-dir",
            "/tmp/p",
            "--enroll-token-file",
            token,
        ])
        .into_config()
        .unwrap_err();
        assert!(e.0.contains("is empty"), "{e}");
        let missing = dir.path().join("nope");
        let e = parse(&[
            "--server",
            "http://127.0.0.1:7",
            "--state-dir",
            "/tmp/p",
            "--enroll-token-file",
            missing.to_str().unwrap(),
        ])
        .into_config()
        .unwrap_err();
        assert!(e.0.contains("cannot read the enrollment token file"), "{e}");
        assert!(
            Cli::try_parse_from([
                "puppet",
                "run",
                "--enroll-token",
                "a",
                "--enroll-token-file",
                "b"
            ])
            .is_err()
        );
    }

    #[test]
    fn flags_build_a_config() {
        let config = parse(&[
            "--server",
            "http://127.0.0.1:7",
            "--state-dir",
            "/tmp/p",
            "--name",
            "web-1",
            "--labels",
            "os=debian,env=test",
            "--transport",
            "grpc",
            "--slots",
            "3",
            "--poll-hold",
            "20s",
            "--enroll-token",
            "tok",
            "--artifact-cache-max",
            "500MiB",
        ])
        .into_config()
        .unwrap();
        assert_eq!(config.name, "web-1");
        assert_eq!(config.artifact_cache_max, 500 << 20);
        assert_eq!(config.labels.len(), 2);
        assert_eq!(config.transport, Transport::Grpc);
        assert_eq!(config.slots, 3);
        assert_eq!(config.poll_hold, Some(Duration::from_secs(20)));
        assert_eq!(
            config.enroll_token.as_ref().map(|t| t.expose_secret()),
            Some("tok")
        );
        assert_eq!(config.compression, Compression::Gzip);
        assert_eq!(config.state_dir, std::path::Path::new("/tmp/p"));
    }

    #[test]
    fn a_relative_state_dir_is_resolved_once_at_start() {
        let config = parse(&["--server", "http://127.0.0.1:7", "--state-dir", "p1"])
            .into_config()
            .unwrap();
        assert!(config.state_dir.is_absolute(), "{:?}", config.state_dir);
        assert_eq!(
            config.state_dir,
            std::env::current_dir().unwrap().join("p1")
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse(
            "server = \"http://file:1\"\nstate_dir = \"/var/lib/puppet\"\nname = \"from-file\"\nslots = 2\npoll_hold = \"30s\"\npoll_hold_ceiling = \"2m\"\nartifact_cache_max = \"1GiB\"\n[labels]\nos = \"debian\"\n",
        )
        .unwrap();
        let config = parse(&["--name", "from-flag"]).merge(file).unwrap();
        assert_eq!(config.server, "http://file:1");
        assert_eq!(config.name, "from-flag");
        assert_eq!(config.slots, 2);
        assert_eq!(config.labels["os"], "debian");
        assert_eq!(config.poll_hold, Some(Duration::from_secs(30)));
        assert_eq!(config.artifact_cache_max, 1 << 30);
        let args = ["--server", "http://s:1", "--state-dir", "/tmp/p"];
        let file = FileConfig::parse("compression = \"none\"").unwrap();
        assert_eq!(
            parse(&args).merge(file).unwrap().compression,
            Compression::None
        );
        let file = FileConfig::parse("compression = \"none\"").unwrap();
        let mut flagged = args.to_vec();
        flagged.extend(["--compression", "gzip"]);
        assert_eq!(
            parse(&flagged).merge(file).unwrap().compression,
            Compression::Gzip
        );
        let file = FileConfig::parse("compression = \"zip\"").unwrap();
        assert!(
            parse(&args)
                .merge(file)
                .unwrap_err()
                .0
                .contains("gzip or none")
        );
        assert_eq!(config.poll_hold_ceiling, Some(Duration::from_secs(120)));
    }

    #[test]
    fn the_proxy_comes_from_flags_then_the_file_then_the_environment() {
        let base = ["--server", "http://s:1", "--state-dir", "/tmp/p"];
        let with = |extra: &[&str], file: &str| {
            let mut args = base.to_vec();
            args.extend_from_slice(extra);
            let file = FileConfig::parse(file).unwrap();
            parse(&args).merge(file).map(|config| config.proxy)
        };
        assert_eq!(with(&[], ""), Ok(ProxyConfig::FromEnv));
        assert_eq!(
            with(&["--no-proxy"], "proxy = \"http://f:1\""),
            Ok(ProxyConfig::Direct)
        );
        assert_eq!(with(&[], "proxy = \"none\""), Ok(ProxyConfig::Direct));
        let Ok(ProxyConfig::Url(url)) = with(
            &["--proxy", "http://u:pw@flag:3128"],
            "proxy = \"http://f:1\"",
        ) else {
            panic!("--proxy was not used");
        };
        assert_eq!(url.to_string(), "http://flag:3128 (from --proxy)");
        assert!(url.has_credentials());
        let Ok(ProxyConfig::Url(url)) = with(&[], "proxy = \"f:1\"") else {
            panic!("the file's proxy was not used");
        };
        assert_eq!(url.address(), "f:1");
        let e = with(&["--proxy", "socks5://u:pw-secret@x:1"], "").unwrap_err();
        assert!(e.0.contains("--proxy") && !e.0.contains("pw-secret"), "{e}");
        assert!(Cli::try_parse_from(["puppet", "run", "--proxy", "x:1", "--no-proxy"]).is_err());
        let args = parse(&["--proxy", "http://u:pw-secret@x:1"]);
        let file = FileConfig::parse("proxy = \"http://u:pw-secret@x:1\"").unwrap();
        for shown in [format!("{args:?}"), format!("{file:?}")] {
            assert!(!shown.contains("pw-secret"), "{shown}");
        }
    }

    #[test]
    fn the_example_config_file_parses() {
        let file = FileConfig::parse(include_str!("../../deploy/puppet.toml")).unwrap();
        assert!(file.server.is_some());
    }

    #[test]
    fn debug_redacts_the_enroll_token() {
        let args = parse(&["--enroll-token", "s3cret-token"]);
        let file = FileConfig::parse("enroll_token = \"s3cret-file\"").unwrap();
        for shown in [format!("{args:?}"), format!("{file:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(shown.contains("REDACTED"), "{shown}");
        }
        let sim = Cli::try_parse_from([
            "puppet",
            "simulate",
            "--server",
            "http://127.0.0.1:1",
            "--count",
            "1",
            "--enroll-token",
            "s3cret-sim",
        ])
        .unwrap();
        let shown = format!("{sim:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn bad_input_is_one_clear_error() {
        assert!(
            FileConfig::parse("sever = \"x\"")
                .unwrap_err()
                .0
                .contains("sever")
        );
        let file = FileConfig::parse("labels = \"os=debian,bad\"").unwrap();
        let e = parse(&[
            "--server",
            "http://x:1",
            "--state-dir",
            "/tmp/p",
            "--name",
            "a",
        ])
        .merge(file)
        .unwrap_err();
        assert!(e.0.contains("bad"), "{e}");
        let e = parse(&["--state-dir", "/tmp/p"])
            .merge(FileConfig::default())
            .unwrap_err();
        assert!(e.0.contains("--server"), "{e}");
        assert!(Cli::try_parse_from(["puppet", "run", "--transport", "smoke"]).is_err());
    }
}
