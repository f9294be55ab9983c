//! `geppetto`, the operator's command line for a Geppetto puppeteer.
//!
//! The binary is a thin `main.rs` over [`main`]; tests (and anyone wanting
//! to drive the CLI from Rust) call [`run`] with a parsed [`Cli`] and an
//! environment lookup of their own.
//!
//! Layout: [`cli`] is the clap definition, [`config`] merges flags,
//! environment and config file, [`api`] holds the connection (deadlines and
//! error mapping), [`commands`] has one module per command group, and
//! [`output`] and [`views`] print tables or JSON. Only `views` and the
//! commands look inside protobuf messages; JSON output goes through `views`.

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod output;
pub mod parse;
pub mod views;

use std::process::ExitCode;

use clap::Parser;

pub use cli::Cli;
pub use error::Error;

/// Runs a parsed command line. `env` looks up environment variables.
pub async fn run(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<(), Error> {
    // Completions and the man page need no config, token or server.
    if let Some(result) = commands::local(&cli.command) {
        return result;
    }
    let file = config::load_file(&cli.global, env)?;
    let settings = config::resolve(&cli.global, env, file)?;
    let api = api::Api::connect(&settings)?;
    commands::dispatch(&api, cli.command, cli.global.output).await
}

/// The whole program: parse, run, report. Usage errors exit 2 (clap prints
/// them), other errors print one `error:` line and exit 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &config::process_env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
