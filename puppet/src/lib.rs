//! Geppetto's agent, the puppet: it long-polls the puppeteer over outgoing
//! HTTPS, executes the runs it is given, and uploads their output and results.
//!
//! # Delivery semantics
//!
//! Every call the puppet makes is unary and idempotent, and is resent until
//! the puppeteer answers it, so a dropped link only delays things. What makes
//! this safe is what the puppet records on disk, under `state_dir/runs/`:
//!
//! - `<run_id>.json` is written **before** each irreversible step: phase
//!   `accepted` when an assignment arrives (before `StartRun`), `started`
//!   before the child process is spawned, `finished` with the outcome as soon
//!   as the child is gone. Writes go through a synced temporary file and a
//!   rename, so a crash leaves either the old or the new record.
//! - `<run_id>.log` (the spool) holds the run's output as it is produced, until
//!   the puppeteer has acknowledged it with `AppendLog`; uploads resume from the
//!   server's `committed` length.
//! - Both are removed once `FinishRun` is acknowledged.
//! - `cache/<sha256>` holds artifacts runs need, fetched before the run and
//!   verified by hash; `cache/<sha256>.part` a download to resume (see
//!   `artifacts`).
//!
//! **A redelivered run is never started twice.** The puppeteer may send an
//! assignment again when an answer was lost. The poll loop puts each
//! assignment into the set of held runs synchronously, before it sends the
//! next poll, so an assignment whose run id and attempt are already held (or
//! were recently finished) is ignored; and the held set is rebuilt from the
//! records at start-up, so a restart recognises them too.
//!
//! **INTERRUPTED means the puppet cannot know how the run ended.** A record
//! found at start-up as `accepted` or `started` but not `finished` belongs to
//! a run cut short by a crash or restart of the puppet (or by a graceful
//! shutdown, which kills running children). Such a run is never executed
//! again: its spooled output is uploaded and it is reported with
//! `OUTCOME_INTERRUPTED`; the puppeteer decides whether a new attempt is made.
//! A `finished` record whose `FinishRun` was not acknowledged is simply
//! reported again.
//!
//! # Structure
//!
//! The transport ([`geppetto_proto::client`]) carries the calls; the poll
//! loop (`poll`, `held`, `hold`; shared by the agent and the simulator)
//! decides what to send; `agent` and `run` execute runs for real, with the
//! executor and the spool (`executor`, `spool`, `records`, `upload`) running
//! programs and keeping their output. `config` and `cli` validate everything before the first
//! connection.

mod agent;
mod artifacts;
mod backoff;
pub mod cli;
pub mod config;
mod enroll;
pub mod executor;
mod facts;
mod held;
pub mod hold;
mod peer;
mod poll;
pub mod records;
mod rpc;
mod run;
pub mod simulate;
pub mod spool;
mod sys;
pub mod upgrade;
mod upload;

pub use agent::{Exit, run_agent, run_puppet};

/// This puppet's version: `GEPPETTO_VERSION` when it was built, if set
/// (packagers mark their builds with it), else the crate's version.
pub const VERSION: &str = match option_env!("GEPPETTO_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// A value from the network, bounded and escaped for a message.
pub(crate) fn shown(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    format!("{:?}", cut)
}
pub use config::{AgentConfig, Compression, ConfigError, default_name};
pub use geppetto_proto::client::Transport;
pub use geppetto_proto::proxy::{ProxyConfig, ProxyUrl};
pub use simulate::{ScriptMode, SimConfig, run_simulation};
