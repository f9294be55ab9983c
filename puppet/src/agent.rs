//! The agent: enrollment, recovery of the runs of an earlier process, the
//! poll loop ([`crate::poll`]) with real runs, and the drain at shutdown.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::time::Duration;

use anyhow::Context;
use geppetto_proto::client::{Channel, Endpoint, TokenSlot};
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use geppetto_proto::v1::{Assignment, Facts};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::enroll::{self, Credential};
use crate::facts;
use crate::held::{Admission, HeldRuns, Stage};
use crate::poll::{PollLoop, Runs, report_task_end};
use crate::records::RunStore;
use crate::run::{self, RunContext};

/// How long run tasks may go on reporting after a shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long run tasks may take to wind down once reporting was abandoned.
const ABANDON_GRACE: Duration = Duration::from_secs(3);

/// Runs the puppet until `shutdown` is cancelled (then returns `Ok`) or a
/// fatal error (bad configuration, enrollment refused) occurs.
pub async fn run_agent(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_puppet(config, shutdown).await.map(|_| ())
}

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Shut down, or done (`--enroll-only`, `--upgrade-check`).
    Stopped,
    /// An upgrade swapped the executable (or put the previous one back):
    /// the caller executes it in this process's place (`AgentConfig::relaunch`).
    Restart,
}

/// [`run_agent`], saying whether the process must execute its (new) binary.
pub async fn run_puppet(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<Exit> {
    config.validate()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {}",
                config.state_dir.display()
            )
        })?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| {
            format!(
                "cannot restrict the state directory {}",
                config.state_dir.display()
            )
        })?;
    let store = RunStore::open(&config.state_dir)
        .with_context(|| format!("cannot create {}/runs", config.state_dir.display()))?;
    let credential = enroll::load_credential(&config.state_dir)?;
    if credential.is_none() && config.enroll_token.is_none() {
        anyhow::bail!(
            "this puppet has no credential in {} and no enrollment token: give --enroll-token TOKEN",
            config.state_dir.display()
        );
    }

    let token_slot = TokenSlot::default();
    let endpoint = Endpoint {
        url: config.server.clone(),
        ca_file: config.ca_file.clone(),
        transport: config.transport,
    };
    let channel = Channel::with_proxy(&endpoint, token_slot.clone(), &config.proxy)?;
    let proxy = channel.proxy().unwrap_or_else(|| "none".into());
    let client = PuppetServiceClient::new(channel);
    tracing::info!(server = %config.server, transport = %config.transport, %proxy, name = %config.name, slots = config.slots, "puppet starting");

    if config.upgrade_check && credential.is_none() {
        anyhow::bail!(
            "this puppet has no credential in {}: a new binary is checked with an enrolled puppet's",
            config.state_dir.display()
        );
    }
    let credential = match credential {
        Some(credential) => credential,
        None => {
            let facts = facts::collect(&config.state_dir);
            match enroll::enroll(&config, &client, facts, &shutdown).await? {
                Some(credential) => credential,
                None => return Ok(Exit::Stopped),
            }
        }
    };
    let mut credential = Credential::new(&config.state_dir, token_slot, credential)?;
    if config.enroll_only {
        tracing::info!(name = %config.name, "enrolled; exiting (--enroll-only)");
        return Ok(Exit::Stopped);
    }
    if config.upgrade_check {
        crate::upgrade::check_mode(&client, &shutdown).await?;
        return Ok(Exit::Stopped);
    }
    if crate::upgrade::at_start(&config.state_dir, &store, &client, &shutdown).await
        == crate::upgrade::AtStart::Restart
    {
        return Ok(Exit::Restart);
    }

    let ctx = RunContext {
        log_client: crate::upload::log_client(&client, config.compression),
        client,
        store,
        held: HeldRuns::default(),
        state_dir: config.state_dir.clone(),
        shutdown: shutdown.clone(),
        abandon: CancellationToken::new(),
        artifacts: crate::artifacts::ArtifactCache::new(
            &config.state_dir,
            config.artifact_cache_max,
        ),
        boot_id: facts::boot_id(config.boot_id_file.as_deref()),
        relaunch: config.relaunch.clone(),
        restart: Default::default(),
        upgrading: Default::default(),
    };
    let offer = match config.peer_listen {
        Some(listen) => Some(
            crate::peer::serve(
                listen,
                config.peer_advertise.as_deref().unwrap_or_default(),
                ctx.artifacts.clone(),
                config.name.clone(),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let mut tasks = JoinSet::new();
    recover(&ctx, &mut tasks)?;
    let poll = PollLoop {
        client: ctx.client.clone(),
        held: ctx.held.clone(),
        slots: config.slots,
        hold_limits: config.hold_limits(),
        state_dir: config.state_dir.clone(),
        shutdown: shutdown.clone(),
        runs: AgentRuns {
            ctx: ctx.clone(),
            fixed_boot_id: config.boot_id_file.is_some(),
            offer,
        },
    };
    poll.run(&mut credential, &mut tasks).await;
    drain(&ctx, &mut tasks).await;
    if ctx.restart.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Exit::Restart);
    }
    Ok(Exit::Stopped)
}

/// The agent's runs: real child processes, with records and a spool on disk.
struct AgentRuns {
    ctx: RunContext,
    /// The boot id comes from `--boot-id-file` (tests that simulate a
    /// reboot), read at start, rather than from the system.
    fixed_boot_id: bool,
    /// What it offers its site's peers (`--peer-listen`).
    offer: Option<geppetto_proto::v1::PeerOffer>,
}

impl Runs for AgentRuns {
    fn facts(&self) -> Facts {
        let mut facts = facts::collect(&self.ctx.state_dir);
        if self.fixed_boot_id {
            facts.boot_id = self.ctx.boot_id.clone();
        }
        facts
    }

    fn run(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        run::run_assignment(self.ctx.clone(), assignment, cancel)
    }

    fn peer_offer(&self) -> Option<geppetto_proto::v1::PeerOffer> {
        self.offer.clone()
    }
}

/// Holds every run recorded by an earlier process and starts reporting it.
fn recover(ctx: &RunContext, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let records = ctx
        .store
        .load_all()
        .context("cannot read the run records")?;
    for record in records {
        match ctx.held.admit(
            &record.run_id,
            record.attempt,
            Stage::Finishing,
            &ctx.shutdown,
        ) {
            Admission::New(_) => {
                tasks.spawn(run::recover_run(ctx.clone(), record));
            }
            _ => tracing::warn!(run_id = %record.run_id, "duplicate run record ignored"),
        }
    }
    Ok(())
}

/// Lets run tasks kill their children and report for a grace period, then
/// abandons what is left to the next start.
async fn drain(ctx: &RunContext, tasks: &mut JoinSet<()>) {
    {
        let reap = async {
            while let Some(joined) = tasks.join_next().await {
                report_task_end(joined);
            }
        };
        tokio::pin!(reap);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut reap)
            .await
            .is_err()
        {
            ctx.abandon.cancel();
            if tokio::time::timeout(ABANDON_GRACE, &mut reap)
                .await
                .is_err()
            {
                // Only a task stuck on local I/O can get here. Its run record
                // is on disk, so the next start reports the run.
                tracing::warn!("run tasks did not stop in time; aborting them");
            }
        }
    }
    tasks.abort_all();
    tracing::info!("puppet stopped");
}
