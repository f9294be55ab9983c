//! `puppeteer`: Geppetto's server. Parses its configuration and calls the
//! library; see `puppeteer serve --help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use puppeteer::config::{Config, DEFAULT_DATA_DIR, DEFAULT_LISTEN, FileConfig};
use puppeteer::pki::TlsFiles;

/// Geppetto's server: holds tasks, schedules runs on puppets, and serves the
/// gRPC API (native gRPC and gRPC-web) on one TLS port.
#[derive(Parser, Debug)]
#[command(name = "puppeteer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API. On an empty data dir, first creates a local CA, a server
    /// certificate and the first admin's API token, and prints where they are.
    Serve(Box<ServeArgs>),
    /// Replace the generated server certificate with a new one signed by the
    /// same local CA (for new names, or before it expires). Puppets and
    /// operators keep their CA file. Restart the puppeteer to use it.
    RenewCert(RenewArgs),
    /// Write a backup of the data dir to a file: every database tree and every
    /// other file (TLS keys and certificates, the admin token, artifacts), in a
    /// versioned format with a checksum. Offline: stop the puppeteer first (a
    /// running one holds the database, and the command says so).
    Backup(BackupArgs),
    /// Restore a backup into a data dir, then start `puppeteer serve` on it.
    /// The file is checked whole (format, version, checksum) before anything
    /// is written; a corrupted or truncated backup changes nothing. Refuses a
    /// data dir that is not empty unless --force.
    Restore(RestoreArgs),
    /// Rewrite the database offline to give freed space back to the file
    /// system (sled reuses the space of pruned data, but its files rarely
    /// shrink). A backup and a restore in place; prints the sizes.
    Compact(CompactArgs),
    /// Move a whole installation between sled and PostgreSQL, offline (stop
    /// the puppeteer first), into a new or empty destination; every tree is
    /// then checked (records counted and hashed on both sides) and every
    /// artifact's content against its hash. The source is left as it was.
    /// Then serve from the destination: `puppeteer serve --store URL
    /// --data-dir OLD_DIR` keeps the old CA and admin token.
    Migrate(MigrateArgs),
}

#[derive(clap::Args, Debug)]
struct MigrateArgs {
    /// Where the installation is: a data dir, or postgres://USER@HOST/DB.
    #[arg(long, value_name = "DIR|URL")]
    from: String,
    /// Where it goes (new or empty): a data dir, or postgres://USER@HOST/DB.
    #[arg(long, value_name = "DIR|URL")]
    to: String,
    /// The database password, from a file (also: PUPPETEER_STORE_PASSWORD).
    #[arg(long, value_name = "FILE")]
    store_password_file: Option<PathBuf>,
    /// The CA (PEM) of the database's certificate, for TLS to it.
    #[arg(long, value_name = "FILE")]
    store_ca: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct BackupArgs {
    /// The backup file to write (replaced if it exists).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Data dir of the puppeteer [default: ./geppetto-data].
    #[arg(long, alias = "data", env = "PUPPETEER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The backup file to read.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The data dir to restore into: new or empty, unless --force
    /// [default: ./geppetto-data].
    #[arg(long, alias = "data", env = "PUPPETEER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Replace the content of a data dir that is not empty (its database,
    /// TLS files and token are lost). Still refused while a puppeteer runs
    /// on it.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct CompactArgs {
    /// Data dir of the puppeteer [default: ./geppetto-data].
    #[arg(long, alias = "data", env = "PUPPETEER_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct RenewArgs {
    /// Data dir of the puppeteer [default: ./geppetto-data].
    #[arg(long, env = "PUPPETEER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Name (DNS or IP) for the certificate; repeat for several
    /// [default: localhost, 127.0.0.1, ::1].
    #[arg(long = "server-name")]
    server_names: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML config file; flags override it (see deploy/puppeteer.toml).
    #[arg(long, env = "PUPPETEER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of the database, the TLS files and the first admin token
    /// [default: ./geppetto-data].
    #[arg(long, env = "PUPPETEER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the state in this PostgreSQL database instead of sled in the
    /// data dir: `postgres://USER@HOST:PORT/DB?sslmode=disable`. Several
    /// puppeteers on one database form a cluster (README: "Running a
    /// cluster"). The data dir still holds the TLS files and artifacts.
    #[arg(long, value_name = "URL", env = "PUPPETEER_STORE")]
    store: Option<String>,
    /// A file holding the database password (rather than in the URL,
    /// where the process list would show it). Also: PUPPETEER_STORE_PASSWORD.
    #[arg(long, value_name = "FILE")]
    store_password_file: Option<PathBuf>,
    /// The CA (PEM) that signed the database's certificate, for TLS to it
    /// (`sslmode=require` in the URL insists on TLS; the default, `prefer`,
    /// uses it when the server offers it) [default: the public web roots].
    #[arg(long, value_name = "FILE")]
    store_ca: Option<PathBuf>,
    /// Name (DNS or IP) for the generated server certificate; repeat for
    /// several [default: localhost, 127.0.0.1, ::1].
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// Your own certificate chain (PEM) instead of the generated one.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed --tls-cert, shown to operators.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// How long a puppet's poll is held when there is no work [default: 50s].
    #[arg(long, value_parser = humantime::parse_duration)]
    poll_timeout: Option<Duration>,
    /// The longest hold a puppet may ask for; puppets probe up to it where
    /// nothing on the path cuts their polls [default: 5m, or the poll
    /// timeout when only that is given].
    #[arg(long, value_parser = humantime::parse_duration)]
    max_poll_hold: Option<Duration>,
    /// A run offered to or running on a puppet silent for this long is lost
    /// and its resources released [default: poll timeout + 1m]. Silence is
    /// zero while a poll of the puppet is held, however long its hold; it
    /// counts from its last call or the end of its last held poll.
    #[arg(long, value_parser = humantime::parse_duration)]
    lease_timeout: Option<Duration>,
    /// A puppet silent for longer is shown late [default: poll timeout +
    /// 15s, at most the lease timeout].
    #[arg(long, value_parser = humantime::parse_duration)]
    late_after: Option<Duration>,
    /// A puppet silent for longer is shown offline [default: 3 × late-after].
    #[arg(long, value_parser = humantime::parse_duration)]
    offline_after: Option<Duration>,
    /// Serve plain TCP without TLS: credentials travel in clear text. Only
    /// for tests, or behind a proxy that terminates TLS on the same host.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Four eyes: a job launched with --approval must be approved by another
    /// user than the one who created it (its creator may still reject it)
    /// [default: off]
    #[arg(long)]
    approval_four_eyes: bool,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9464) at GET /metrics
    /// [default: off]. Plain HTTP without authentication: bind it to loopback
    /// or a private network only your Prometheus reaches.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The puppet binary served to machines being installed (the install
    /// script, README "Installing puppets") [default: the `puppet` beside
    /// this executable, if there]
    #[arg(long, value_name = "FILE")]
    puppet_binary: Option<PathBuf>,
    /// Close an HTTP/2 connection without a request in progress for this
    /// long (a held poll is one) [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    connection_idle_timeout: Option<Duration>,
    /// Connections one source address (IPv6: /64) may hold at once, 0 for no
    /// bound [default: a quarter of the connection cap, at least 64].
    #[arg(long, value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// Connections open at most at once [default: the open-file limit less
    /// what the database needs (a sixteenth, at least 256)].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Fail a request whose body sends no byte for this long [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    request_body_timeout: Option<Duration>,
    /// Connections one source address may hold before any request on them
    /// carried a valid credential, 0 for no bound [default: 256].
    #[arg(long, value_name = "N")]
    max_unauthenticated_per_address: Option<usize>,
    /// Output kept per run: past this size the first and the last half are
    /// kept and the middle is dropped (marked as truncated). A size such as
    /// 64MiB, or `off` [default: 64MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_log_limit)]
    log_limit: Option<LogLimitArg>,
    /// Log format on stderr: `text` (human-readable) or `json` (one object a
    /// line). The level comes from RUST_LOG [default: info].
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// A parsed `--log-limit`: `None` inside means no limit.
#[derive(Clone, Copy, Debug)]
struct LogLimitArg(Option<u64>);

fn parse_log_limit(text: &str) -> Result<LogLimitArg> {
    puppeteer::config::parse_log_limit(text).map(LogLimitArg)
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only for a person at a terminal, never in a file or a pipe
    // (and never with NO_COLOR set).
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn config_from(args: ServeArgs) -> Result<Config> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
    let mut config = Config::new(data_dir, listen);
    config.store = puppeteer::config::StoreConfig::from_parts(
        args.store.or(file.store),
        args.store_password_file.or(file.store_password_file),
        std::env::var("PUPPETEER_STORE_PASSWORD").ok(),
        args.store_ca.or(file.store_ca_file),
    )?;
    if !args.server_names.is_empty() {
        config.server_names = args.server_names;
    } else if let Some(names) = file.server_names {
        config.server_names = names;
    }
    let cert = args.tls_cert.or(file.tls_cert);
    let key = args.tls_key.or(file.tls_key);
    let ca = args.tls_ca.or(file.tls_ca);
    config.tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key, ca }),
        (None, None) => None,
        _ => bail!("tls_cert and tls_key go together: give both or neither"),
    };
    if let Some(t) = args.poll_timeout.or(file.poll_timeout) {
        config.poll_timeout = t;
        config.max_poll_hold = t;
    }
    if let Some(t) = args.max_poll_hold.or(file.max_poll_hold) {
        config.max_poll_hold = t;
    }
    config.lease_timeout = args.lease_timeout.or(file.lease_timeout);
    config.late_after = args.late_after.or(file.late_after);
    if let Some(r) = file.event_retention {
        config.event_retention = r;
    }
    if let Some(r) = file.audit_retention {
        config.audit_retention = r;
    }
    config.notify.smtp = file.smtp;
    if let Some(d) = file.notify_give_up {
        config.notify.give_up = d;
    }
    if let Some(d) = file.notify_retry {
        config.notify.retry_base = d;
    }
    if let Some(d) = file.notify_timeout {
        config.notify.webhook_timeout = d;
    }
    config.offline_after = args.offline_after.or(file.offline_after);
    config.insecure_plaintext = args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false);
    config.approval_four_eyes = args.approval_four_eyes || file.approval_four_eyes.unwrap_or(false);
    config.metrics_listen = args.metrics_listen.or(file.metrics_listen);
    config.puppet_binary = args.puppet_binary.or(file.puppet_binary);
    if let Some(idle) = args
        .connection_idle_timeout
        .or(file.connection_idle_timeout)
    {
        config.connection_idle_timeout = idle;
    }
    config.max_connections = args.max_connections.or(file.max_connections);
    if let Some(t) = args.request_body_timeout.or(file.request_body_timeout) {
        config.request_body_timeout = t;
    }
    config.max_connections_per_address = args
        .max_connections_per_address
        .or(file.max_connections_per_address);
    if let Some(n) = args
        .max_unauthenticated_per_address
        .or(file.max_unauthenticated_per_address)
    {
        config.max_unauthenticated_per_address = n;
    }
    if let Some(LogLimitArg(limit)) = args.log_limit {
        config.log_limit = limit;
    } else if let Some(text) = &file.log_limit {
        config.log_limit = puppeteer::config::parse_log_limit(text).context("log_limit")?;
    }
    if let Some(r) = file.retention {
        let retention = &mut config.retention;
        if let Some(age) = r.max_age {
            retention.max_age = age;
        }
        if let Some(jobs) = r.max_jobs {
            retention.max_jobs = jobs;
        }
        if let Some(bytes) = &r.max_log_bytes {
            retention.max_log_bytes =
                puppeteer::config::parse_size(bytes).context("[retention] max_log_bytes")?;
        }
        if let Some(interval) = r.interval {
            retention.interval = interval;
        }
        if let Some(age) = r.upload_max_age {
            retention.upload_max_age = age;
        }
    }
    config.validate()?;
    Ok(config)
}

/// Prints a line for the operator; a closed stdout (a detached daemon, a
/// reader gone) must not stop the server, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn renew(args: RenewArgs) -> Result<()> {
    let data_dir = args
        .data_dir
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let names = if args.server_names.is_empty() {
        Config::new(data_dir.clone(), DEFAULT_LISTEN.parse()?).server_names
    } else {
        args.server_names
    };
    let files = puppeteer::pki::renew_server_cert(&data_dir.join("tls"), &names)?;
    println!(
        "Wrote a new server certificate {} for {} (the previous one is kept as .old).",
        files.cert.display(),
        names.join(", ")
    );
    println!("Restart the puppeteer to use it; clients keep their CA file.");
    Ok(())
}

fn data_dir_or_default(dir: Option<PathBuf>) -> PathBuf {
    dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

fn backup(args: BackupArgs) -> Result<()> {
    let data_dir = data_dir_or_default(args.data_dir);
    let summary = puppeteer::backup::backup(&data_dir, &args.to)?;
    println!(
        "Wrote {} from {}: {summary}.",
        args.to.display(),
        data_dir.display()
    );
    Ok(())
}

fn restore(args: RestoreArgs) -> Result<()> {
    let data_dir = data_dir_or_default(args.data_dir);
    let options = puppeteer::backup::RestoreOptions { force: args.force };
    let (header, summary) = puppeteer::backup::restore(&args.from, &data_dir, &options)?;
    println!(
        "Restored {} (made {} by puppeteer {}) into {}: {summary}.",
        args.from.display(),
        header.created_at,
        header.puppeteer_version,
        data_dir.display()
    );
    println!(
        "Start it with: puppeteer serve --data-dir {}",
        data_dir.display()
    );
    Ok(())
}

fn compact(args: CompactArgs) -> Result<()> {
    let data_dir = data_dir_or_default(args.data_dir);
    let (before, after) = puppeteer::backup::compact(&data_dir)?;
    println!(
        "Compacted the database in {}: {before} bytes before, {after} bytes after.",
        data_dir.display()
    );
    Ok(())
}

fn migrate(args: MigrateArgs) -> Result<()> {
    let password = match &args.store_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        None => std::env::var("PUPPETEER_STORE_PASSWORD").ok(),
    };
    let ca = args.store_ca.clone();
    let from = puppeteer::backup::Location::parse(&args.from, password.clone(), ca.clone());
    let to = puppeteer::backup::Location::parse(&args.to, password, ca);
    let migrated = puppeteer::backup::migrate(&from, &to, |line| println!("{line}"))?;
    let records: u64 = migrated.trees.iter().map(|t| t.records).sum();
    println!(
        "Migrated and checked: {records} records in {} trees (each counted and hashed on both sides), {} artifact contents (each hashed).",
        migrated.trees.len(),
        migrated.contents
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    });
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let args = match cli.command {
        Command::Serve(args) => *args,
        Command::RenewCert(args) => return renew(args),
        Command::Backup(args) => return backup(args),
        Command::Restore(args) => return restore(args),
        Command::Compact(args) => return compact(args),
        Command::Migrate(args) => return migrate(args),
    };
    let config = config_from(args)?;
    let insecure = config.insecure_plaintext;
    if insecure {
        tracing::warn!(
            "serving PLAIN TCP without TLS (--insecure-plaintext): credentials travel in clear text"
        );
    }
    let data_dir = config.data_dir.clone();
    let server_name = config.server_names.first().cloned();
    // Process-wide allocator behaviour: the binary's to set, not the
    // library's (tests run several puppeteers in one process).
    puppeteer::memory::configure();
    let running = puppeteer::start(config).await?;
    let url = running.url(insecure);
    if running.created_tls {
        say!(
            "Created a local CA and a server certificate in {}",
            data_dir.join("tls").display()
        );
    }
    if running.new_admin_token.is_some() {
        say!(
            "Created the first admin's API token in {} (mode 0600)",
            running.admin_token_file.display()
        );
    }
    if running.addr.ip().is_unspecified() {
        // Bound to every interface: say so, and how clients name it.
        let scheme = if insecure { "http" } else { "https" };
        let port = running.addr.port();
        let public = server_name
            .filter(|name| name != "localhost")
            .map(|name| format!("{scheme}://{name}:{port}, "))
            .unwrap_or_default();
        say!(
            "puppeteer listening on {} (every interface; gRPC and gRPC-web): reach it as {public}{url} from this machine",
            running.addr
        );
    } else {
        say!("puppeteer listening on {url} (gRPC and gRPC-web)");
    }
    if let Some(at) = running.metrics_addr {
        say!("Prometheus metrics on http://{at}/metrics (no authentication)");
    }
    let ca = running
        .ca_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<your CA file>".into());
    say!("Connect the CLI with:");
    say!("  export GEPPETTO_SERVER={url}");
    if !insecure {
        say!("  export GEPPETTO_CA={ca}");
    }
    say!(
        "  export GEPPETTO_TOKEN=$(cat {})",
        running.admin_token_file.display()
    );
    say!("Enroll a puppet with: geppetto enroll-tokens create, then");
    say!("  puppet run --server {url} --ca {ca} --enroll-token-file TOKEN_FILE --state-dir DIR");

    let shutdown = running.shutdown_token();
    tokio::spawn(puppeteer::memory::run_trimmer(shutdown.clone()));
    let signals = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    };
    tokio::select! {
        result = running.wait() => result,
        () = signals => Ok(()),
    }
}
