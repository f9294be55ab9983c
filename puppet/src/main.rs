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
            let mut config = match args.into_config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("puppet: {e}");
                    return ExitCode::from(2);
                }
            };
            config.relaunch = puppet::upgrade::Relaunch::of_this_process();
            let relaunch = config.relaunch.clone();
            match block_on(run(config)) {
                Ok(puppet::Exit::Restart) => match relaunch {
                    Some(relaunch) => restart(&relaunch),
                    None => ExitCode::FAILURE,
                },
                Ok(puppet::Exit::Stopped) => ExitCode::SUCCESS,
                Err(code) => code,
            }
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
            match block_on(simulate(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(code) => code,
            }
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

fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> Result<T, ExitCode> {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("puppet: cannot start the async runtime: {e}");
            return Err(ExitCode::FAILURE);
        }
    };
    let result = runtime.block_on(work);
    // Its threads end before an upgrade's exec replaces the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map_err(|e| {
        eprintln!("puppet: {e:#}");
        ExitCode::FAILURE
    })
}

/// Executes the executable's (new, or put back) binary in this process's
/// place, with the same arguments and environment; returns only if that
/// fails.
fn restart(relaunch: &puppet::upgrade::Relaunch) -> ExitCode {
    use std::os::unix::process::CommandExt;
    tracing::info!(exe = %relaunch.exe.display(), "restarting as the binary now at the executable's path");
    let e = std::process::Command::new(&relaunch.exe)
        .args(&relaunch.args)
        .exec();
    eprintln!(
        "puppet: cannot execute {}: {e}; exiting for the service manager to start it",
        relaunch.exe.display()
    );
    ExitCode::FAILURE
}

async fn simulate(config: puppet::SimConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = puppet::run_simulation(config, shutdown.clone()).await;
    signals.abort();
    result
}

async fn run(config: puppet::AgentConfig) -> anyhow::Result<puppet::Exit> {
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = puppet::run_puppet(config, shutdown.clone()).await;
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
