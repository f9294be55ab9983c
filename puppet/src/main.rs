//! The `puppet` binary: parses the configuration and runs the agent until
//! Ctrl-C or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use puppet::cli::{Cli, Command, LogFormat};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(args.log_format, "info");
            let config = match args.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("puppet: {e}");
                    return ExitCode::from(2);
                }
            };
            block_on(run(config))
        }
        Command::Simulate(args) => {
            // Ten thousand puppets logging at info would drown the progress lines.
            init_logging(args.log_format, "warn");
            let config = match args.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("puppet: {e}");
                    return ExitCode::from(2);
                }
            };
            block_on(simulate(config))
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    // Colours only for a person at a terminal, never in a file or a pipe
    // (and never with NO_COLOR set).
    use std::io::IsTerminal;
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt().with_ansi(ansi).with_env_filter(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
    );
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("puppet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("puppet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn simulate(config: puppet::SimConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = puppet::run_simulation(config, shutdown.clone()).await;
    signals.abort();
    result
}

async fn run(config: puppet::AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = puppet::run_agent(config, shutdown.clone()).await;
    signals.abort();
    result
}

/// Cancels the token on the first Ctrl-C or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; shutting down"),
        _ = terminate.recv() => tracing::info!("terminated; shutting down"),
    }
    shutdown.cancel();
}
