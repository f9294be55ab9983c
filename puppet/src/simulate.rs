//! `puppet simulate`: a swarm of lightweight puppets in one process, so that
//! one machine can play a large fleet against a real puppeteer.
//!
//! Each simulated puppet is a genuine client of the puppeteer, not a mock:
//!
//! - its own name and credential, enrolled once with the agent's own
//!   [`enroll::enroll`] and kept in `state_dir/<name>/credential` exactly like
//!   an agent's, so a second start of the simulator reuses them;
//! - its own [`Channel`], hence its own TCP + TLS connection (the TLS settings
//!   are built once and shared, the connections never are);
//! - the agent's own poll loop ([`PollLoop`]): the same hold tuner, deadlines,
//!   facts schedule, admission of runs, reporting before polling and backoff;
//!   only what a run does is swapped ([`Runs`]);
//! - the agent's calls for a run: the same `StartRun` / `AppendLog` /
//!   `FinishRun` with the same deadlines and retry policy
//!   ([`run::send_start`], [`LogTarget::append`], [`run::send_finish`]).
//!
//! What it does not do is execute anything: the work is simulated
//! ([`ScriptMode`]), and no run record or spool is written, so a simulated
//! run does not survive a restart of the simulator (the puppeteer then sees
//! it as interrupted, as it would for a dead machine).
//!
//! Starting ten thousand puppets must not stampede the puppeteer: enrollment
//! runs with bounded concurrency and the first polls are started at a bounded
//! rate (each first poll opens a connection and makes a TLS handshake).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use geppetto_proto::client::{Channel, ClientTls, Endpoint, TokenSlot, Transport};
use geppetto_proto::proxy::ProxyConfig;
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use geppetto_proto::v1::{Assignment, Facts};
use tokio::task::JoinSet;
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::enroll::{self, Credential};
use crate::facts;
use crate::held::{HeldRuns, Stage};
use crate::hold::HoldLimits;
use crate::poll::{PollLoop, Runs};
use crate::records::{FinishReport, Outcome};
use crate::rpc::{self, CallError, Client};
use crate::run;
use crate::upload::{LogTarget, MAX_CHUNK};

/// A simulated puppet executes one run at a time, like an agent's default.
const SLOTS: u32 = 1;

/// What a simulated run does instead of executing its program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScriptMode {
    /// Prints the run's script text (or its argv) as its output, and succeeds.
    Echo,
    /// Waits this long, prints one line, and succeeds.
    Sleep(Duration),
    /// Fails (exit code 1) with this probability, otherwise succeeds like `Echo`.
    Fail(f64),
}

impl FromStr for ScriptMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "echo" {
            return Ok(ScriptMode::Echo);
        }
        if let Some(d) = s.strip_prefix("sleep:") {
            return humantime::parse_duration(d)
                .map(ScriptMode::Sleep)
                .map_err(|e| format!("invalid duration in {s:?}: {e} (write e.g. sleep:2s)"));
        }
        if let Some(p) = s.strip_prefix("fail:") {
            return match p.parse::<f64>() {
                Ok(p) if (0.0..=1.0).contains(&p) => Ok(ScriptMode::Fail(p)),
                _ => Err(format!(
                    "invalid probability in {s:?}: write fail:P with P between 0 and 1"
                )),
            };
        }
        Err(format!(
            "unknown script mode {s:?}: write echo, sleep:DURATION or fail:PROBABILITY"
        ))
    }
}

/// Everything [`run_simulation`] needs (its Debug shows no secret).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How many puppets to simulate.
    pub count: u32,
    pub server: String,
    pub ca_file: Option<PathBuf>,
    /// Needed only for puppets without a stored credential.
    pub enroll_token: Option<secrecy::SecretString>,
    /// Labels every simulated puppet declares when it enrolls.
    pub labels: BTreeMap<String, String>,
    pub script_mode: ScriptMode,
    /// Holds one directory per simulated puppet, named after it.
    pub state_dir: PathBuf,
    /// Puppets are named `<prefix>-00000`, `<prefix>-00001`...
    pub name_prefix: String,
    pub transport: Transport,
    /// The poll hold asked at start, and its bounds, as the agent's
    /// `--poll-hold`, `--poll-hold-floor` and `--poll-hold-ceiling` (`None`:
    /// the agent's defaults).
    pub poll_hold: Option<Duration>,
    pub poll_hold_floor: Option<Duration>,
    pub poll_hold_ceiling: Option<Duration>,
    /// How many enrollments may be in flight at once.
    pub enroll_concurrency: usize,
    /// How many puppets start polling per second.
    pub connect_rate: u32,
}

impl SimConfig {
    /// Checks what can be checked before anything starts: the poll hold's
    /// bounds, by the agent's rules.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        crate::config::validate_hold(self.hold_limits())
    }

    fn hold_limits(&self) -> HoldLimits {
        self.agent_config(&self.name_prefix, &self.state_dir)
            .hold_limits()
    }

    /// The configuration of an agent in the simulated puppet's place.
    fn agent_config(&self, name: &str, state_dir: &std::path::Path) -> AgentConfig {
        AgentConfig {
            server: self.server.clone(),
            ca_file: self.ca_file.clone(),
            enroll_token: self.enroll_token.clone(),
            state_dir: state_dir.to_path_buf(),
            name: name.to_string(),
            labels: self.labels.clone(),
            transport: self.transport,
            slots: SLOTS,
            poll_hold: self.poll_hold,
            poll_hold_floor: self.poll_hold_floor,
            poll_hold_ceiling: self.poll_hold_ceiling,
            proxy: ProxyConfig::FromEnv,
            compression: Default::default(),
            artifact_cache_max: crate::artifacts::DEFAULT_CACHE_MAX,
            boot_id_file: None,
            peer_listen: None,
            peer_advertise: None,
            enroll_only: false,
            upgrade_check: false,
            relaunch: None,
        }
    }
}

/// Counters of the whole swarm, printed when it stops.
#[derive(Debug, Default)]
struct Stats {
    polls_answered: AtomicU64,
    poll_errors: AtomicU64,
    runs_started: AtomicU64,
    runs_finished: AtomicU64,
    log_bytes: AtomicU64,
}

/// What every simulated puppet shares.
#[derive(Debug)]
struct Swarm {
    mode: ScriptMode,
    hold_limits: HoldLimits,
    facts: Facts,
    stats: Stats,
    shutdown: CancellationToken,
    /// Fires a grace period after `shutdown`: report calls stop.
    abandon: CancellationToken,
}

/// One simulated puppet: a few hundred bytes besides its connection.
struct SimPuppet {
    name: String,
    state_dir: PathBuf,
    client: Client,
    token: TokenSlot,
    held: HeldRuns,
}

/// Runs the swarm until `shutdown` is cancelled.
pub async fn run_simulation(config: SimConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    config.validate()?;
    crate::config::validate_name(&format!("{}-{:05}", config.name_prefix, 0))
        .map_err(|e| anyhow::anyhow!("invalid --name-prefix: {e}"))?;
    let open_files =
        crate::sys::raise_open_files_limit().context("cannot raise the limit on open files")?;
    if open_files < u64::from(config.count) + 64 {
        tracing::warn!(
            open_files,
            count = config.count,
            "the open-file limit is below one socket per simulated puppet; raise the hard limit (ulimit -Hn)"
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    let endpoint = Endpoint {
        url: config.server.clone(),
        ca_file: config.ca_file.clone(),
        transport: config.transport,
    };
    let tls = ClientTls::new(&endpoint)?;
    let swarm = Arc::new(Swarm {
        mode: config.script_mode,
        hold_limits: config.hold_limits(),
        facts: facts::collect(&config.state_dir),
        stats: Stats::default(),
        shutdown: shutdown.clone(),
        abandon: CancellationToken::new(),
    });

    let began = Instant::now();
    let mut puppets = Vec::with_capacity(config.count as usize);
    for i in 0..config.count {
        let name = format!("{}-{i:05}", config.name_prefix);
        let state_dir = config.state_dir.join(&name);
        let token = TokenSlot::default();
        let channel = Channel::with_tls(&endpoint, token.clone(), &ProxyConfig::FromEnv, &tls)?;
        puppets.push(SimPuppet {
            name,
            state_dir,
            client: PuppetServiceClient::new(channel),
            token,
            held: HeldRuns::default(),
        });
    }
    let connect = || -> anyhow::Result<Client> {
        let channel =
            Channel::with_tls(&endpoint, TokenSlot::default(), &ProxyConfig::FromEnv, &tls)?;
        Ok(PuppetServiceClient::new(channel))
    };
    let (credentials, enrolled) = enroll_all(&config, &swarm, &puppets, connect).await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    say(format!(
        "simulate: {} puppets ready ({enrolled} enrolled now) in {:.1}s",
        config.count,
        began.elapsed().as_secs_f64()
    ));

    let mut loops = JoinSet::new();
    let rate = config.connect_rate.max(1);
    let ramp_began = tokio::time::Instant::now();
    for (i, (puppet, credential)) in puppets.into_iter().zip(credentials).enumerate() {
        let credential = Credential::new(&puppet.state_dir, puppet.token.clone(), credential)?;
        loops.spawn(puppet_loop(puppet, credential, swarm.clone()));
        let due = ramp_began + Duration::from_secs_f64((i + 1) as f64 / f64::from(rate));
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    say(format!(
        "simulate: {} puppets polling after {:.1}s",
        loops.len(),
        began.elapsed().as_secs_f64()
    ));

    shutdown.cancelled().await;
    // Run reports get a grace period, then everything stops.
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while loops.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        swarm.abandon.cancel();
        loops.shutdown().await;
    }
    let s = &swarm.stats;
    say(format!(
        "simulate: stopped; {} polls answered, {} poll errors, {} runs started, {} finished, {} log bytes",
        s.polls_answered.load(Ordering::Relaxed),
        s.poll_errors.load(Ordering::Relaxed),
        s.runs_started.load(Ordering::Relaxed),
        s.runs_finished.load(Ordering::Relaxed),
        s.log_bytes.load(Ordering::Relaxed),
    ));
    Ok(())
}

/// Progress lines go to stdout, for the benchmark harness and the operator.
fn say(line: String) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Loads every stored credential and enrolls the puppets without one, at
/// most `enroll_concurrency` at a time. Each enrollment has a connection of
/// its own (from `connect`), closed once it is done: the simulator polls only
/// once every puppet is enrolled, and thousands of connections left idle
/// without a credential would be what the puppeteer's per-address cap on
/// unauthenticated connections refuses (an agent polls at once on the
/// connection it enrolled on, which proves it). Returns the credentials in the
/// puppets' order and how many were enrolled now.
async fn enroll_all(
    config: &SimConfig,
    swarm: &Arc<Swarm>,
    puppets: &[SimPuppet],
    connect: impl Fn() -> anyhow::Result<Client>,
) -> anyhow::Result<(Vec<String>, usize)> {
    let mut credentials = vec![String::new(); puppets.len()];
    let mut missing = Vec::new();
    for (i, puppet) in puppets.iter().enumerate() {
        match enroll::load_credential(&puppet.state_dir)? {
            Some(credential) => credentials[i] = credential,
            None => missing.push(i),
        }
    }
    if !missing.is_empty() && config.enroll_token.is_none() {
        anyhow::bail!(
            "{} simulated puppets have no credential under {}: give --enroll-token TOKEN",
            missing.len(),
            config.state_dir.display()
        );
    }
    let enrolled = missing.len();
    let mut in_flight = JoinSet::new();
    let mut pending = missing.into_iter();
    loop {
        while in_flight.len() < config.enroll_concurrency.max(1) {
            let Some(i) = pending.next() else { break };
            let puppet = &puppets[i];
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&puppet.state_dir)
                .with_context(|| format!("cannot create {}", puppet.state_dir.display()))?;
            let agent = config.agent_config(&puppet.name, &puppet.state_dir);
            let client = connect()?;
            let swarm = swarm.clone();
            in_flight.spawn(async move {
                let result =
                    enroll::enroll(&agent, &client, swarm.facts.clone(), &swarm.shutdown).await;
                (i, result)
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (i, result) = joined.context("an enrollment task failed")?;
        match result.with_context(|| format!("cannot enroll {}", puppets[i].name))? {
            Some(credential) => credentials[i] = credential,
            // Shut down meanwhile.
            None => return Ok((credentials, 0)),
        }
    }
    Ok((credentials, enrolled))
}

/// The runs of one simulated puppet: started, "executed" as the script mode
/// says, their output uploaded and their result reported, with the agent's
/// calls; nothing is written to disk.
struct SimRuns {
    client: Client,
    held: HeldRuns,
    swarm: Arc<Swarm>,
}

impl Runs for SimRuns {
    fn facts(&self) -> Facts {
        self.swarm.facts.clone()
    }

    fn run(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        simulated_run(
            self.client.clone(),
            self.held.clone(),
            assignment,
            cancel,
            self.swarm.clone(),
        )
    }

    fn polled(&self, answered: bool) {
        let counter = if answered {
            &self.swarm.stats.polls_answered
        } else {
            &self.swarm.stats.poll_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One simulated puppet polls with the agent's own loop until shutdown,
/// then lets its runs report.
async fn puppet_loop(puppet: SimPuppet, mut credential: Credential, swarm: Arc<Swarm>) {
    let poll = PollLoop {
        runs: SimRuns {
            client: puppet.client.clone(),
            held: puppet.held.clone(),
            swarm: swarm.clone(),
        },
        client: puppet.client,
        held: puppet.held,
        slots: SLOTS,
        hold_limits: swarm.hold_limits,
        state_dir: puppet.state_dir,
        shutdown: swarm.shutdown.clone(),
    };
    let mut tasks = JoinSet::new();
    poll.run(&mut credential, &mut tasks)
        .instrument(tracing::warn_span!("simulated", puppet = %puppet.name))
        .await;
    while tasks.join_next().await.is_some() {}
}

/// Starts, "executes", uploads the output of and finishes one run.
async fn simulated_run(
    client: Client,
    held: HeldRuns,
    assignment: Assignment,
    cancel: CancellationToken,
    swarm: Arc<Swarm>,
) {
    let _guard = held.guard(&assignment.run_id);
    let target = LogTarget {
        run_id: assignment.run_id.clone(),
        attempt: assignment.attempt,
        limit: crate::upload::LogLimit::of(&assignment),
    };
    match run::send_start(&client, run::start_request(&target), &cancel).await {
        Ok(answer) if answer.proceed => {}
        Ok(_) | Err(CallError::Refused(_)) => return,
        Err(CallError::Stopped) => {
            if !swarm.shutdown.is_cancelled() {
                let report = run::report_without_output(
                    Outcome::Cancelled,
                    "cancelled before it started".into(),
                );
                let _ = run::send_finish(&client, &target, &report, &swarm.abandon).await;
            }
            return;
        }
    }
    swarm.stats.runs_started.fetch_add(1, Ordering::Relaxed);
    held.set_stage(&target.run_id, Stage::Executing);
    let began = Instant::now();
    let (output, mut report) = perform(swarm.mode, &assignment, &cancel).await;
    report.duration = began.elapsed();
    held.set_stage(&target.run_id, Stage::Finishing);

    let mut committed = 0u64;
    for chunk in output.chunks(MAX_CHUNK) {
        let data = Bytes::copy_from_slice(chunk);
        match target
            .append(&client, committed, data, &swarm.abandon)
            .await
        {
            Ok((server_committed, _)) => committed = server_committed,
            Err(_) => break,
        }
    }
    swarm
        .stats
        .log_bytes
        .fetch_add(committed, Ordering::Relaxed);
    report.log_length = committed;
    if run::send_finish(&client, &target, &report, &swarm.abandon)
        .await
        .is_ok()
    {
        swarm.stats.runs_finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The simulated work: its output and its report (duration filled in by the caller).
async fn perform(
    mode: ScriptMode,
    assignment: &Assignment,
    cancel: &CancellationToken,
) -> (Vec<u8>, FinishReport) {
    let exited = |exit_code| FinishReport {
        outcome: Outcome::Exited,
        exit_code,
        signal: 0,
        duration: Duration::ZERO,
        log_length: 0,
        message: String::new(),
    };
    match mode {
        ScriptMode::Echo => (echo_text(assignment), exited(0)),
        ScriptMode::Sleep(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = cancel.cancelled() => {
                    let report = run::report_without_output(Outcome::Cancelled, "cancelled while sleeping".into());
                    return (Vec::new(), report);
                }
            }
            (
                format!("slept {}\n", humantime::format_duration(d)).into_bytes(),
                exited(0),
            )
        }
        ScriptMode::Fail(p) => {
            if rand::random::<f64>() < p {
                (b"simulated failure\n".to_vec(), exited(1))
            } else {
                (echo_text(assignment), exited(0))
            }
        }
    }
}

/// The script text of the run, or its argv, as the echo mode prints it.
fn echo_text(assignment: &Assignment) -> Vec<u8> {
    let program = assignment
        .spec
        .as_ref()
        .and_then(rpc::program_of)
        .map(|program| match program {
            crate::executor::Program::Script { body, .. } => body,
            crate::executor::Program::Argv(args) => args.join(" "),
        })
        .unwrap_or_default();
    let mut text = program.into_bytes();
    if text.last() != Some(&b'\n') {
        text.push(b'\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_modes_parse() {
        assert_eq!("echo".parse(), Ok(ScriptMode::Echo));
        assert_eq!(
            "sleep:2s".parse(),
            Ok(ScriptMode::Sleep(Duration::from_secs(2)))
        );
        assert_eq!("fail:0.25".parse(), Ok(ScriptMode::Fail(0.25)));
        for bad in ["", "run", "sleep:soon", "fail:2", "fail:x"] {
            assert!(bad.parse::<ScriptMode>().is_err(), "{bad}");
        }
    }
}
