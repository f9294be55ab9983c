//! The application layer: the puppeteer's state and its background work,
//! below the tonic services (`api`) and above the pure decisions
//! (`scheduler`) and the storage (`store`). It knows no protobuf and no
//! transport: the api layer calls it, never the other way round (a test,
//! `tests/layering.rs`, keeps the arrows pointing down).
//!
//! - [`AppState`]: what every service and background task shares.
//! - `sweep`: leases, gates, presence, approvals, event and audit pruning.
//! - `effects`: what follows a run's change (job ends, wake-ups).
//! - `gates`: the scheduler's view of jobs and puppets, for its gates.
//! - `prune`: the retention policy's pruner and abandoned uploads.
//! - `authz`: which role each call needs.
//! - `blocking`: which store calls leave the async workers, and how.
//! - `events`: announcing events; `fetches`: downloads under way;
//!   `error`: the layer's error, which the api maps to gRPC statuses.

pub mod auth;
pub mod authz;
pub mod blocking;
pub mod cluster;
mod content;
pub mod effects;
pub mod error;
pub mod events;
pub mod fetches;
mod gates;
pub mod metrics;
pub mod notify;
pub mod peers;
mod prune;
pub mod served;
mod sweep;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use auth::{Auth, Refusals};
pub use blocking::blocking;
pub use error::{ApiError, ApiResult};
pub use prune::run_pruner;
pub use sweep::{SWEEP_EVERY, run_sweeper};

use crate::hub::Hub;
use crate::presence::Presences;
use crate::store::Store;

/// Output kept per run by default: the first and the last 32 MiB.
pub const DEFAULT_LOG_LIMIT: u64 = 64 << 20;

/// The longest hold a puppet may ask for by default: puppets start at 50 s
/// and probe up to 5 minutes where nothing on the path cuts their polls.
pub const DEFAULT_MAX_POLL_HOLD: Duration = Duration::from_secs(300);

/// How long the audit trail is kept by default: a year, what audits of a
/// year's changes need, and a bound on its size.
pub const DEFAULT_AUDIT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings of the application layer.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// How long a poll is held when the puppet does not ask for a hold.
    pub poll_timeout: Duration,
    /// The longest hold a puppet may ask for.
    pub max_poll_hold: Duration,
    /// A run offered to or running on a puppet that has not polled for this
    /// long is lost (its resources are released).
    pub lease_timeout: Duration,
    /// When a silent puppet is shown late, then offline.
    pub presence: crate::presence::Thresholds,
    /// How long events are kept.
    pub event_retention: Duration,
    /// How long audit entries are kept.
    pub audit_retention: Duration,
    /// Notifications: the SMTP relay, retries, give-up time.
    pub notify: crate::app::notify::NotifyConfig,
    /// How much of each run's output is kept; `None`: everything.
    pub log_limit: Option<crate::store::LogLimit>,
    /// What finished work is kept.
    pub retention: crate::retention::Retention,
    /// The data dir (its size is reported by `GetServerInfo`).
    pub data_dir: std::path::PathBuf,
    /// A job's approver must not be its creator.
    pub four_eyes: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            poll_timeout: Duration::from_secs(50),
            max_poll_hold: DEFAULT_MAX_POLL_HOLD,
            lease_timeout: Duration::from_secs(110),
            presence: crate::presence::Thresholds::for_hold(Duration::from_secs(50)),
            event_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: DEFAULT_AUDIT_RETENTION,
            notify: Default::default(),
            log_limit: Some(crate::store::LogLimit::halves(DEFAULT_LOG_LIMIT)),
            retention: Default::default(),
            data_dir: Default::default(),
            four_eyes: false,
        }
    }
}

/// What every service shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    /// This node, and whether it leads the cluster (always, on sled).
    pub node: cluster::Node,
    pub hub: Hub,
    pub config: AppConfig,
    pub auth: Auth,
    pub presences: Presences,
    /// Cancelled at shutdown: held polls and streams end.
    pub shutdown: CancellationToken,
    /// Held while a poll decides and stores its offers, so that job limits
    /// (max-in-flight, rolling) see every other offer. A std mutex: the
    /// section is synchronous (planning and one store transaction).
    pub dispatch: std::sync::Mutex<()>,
    /// Prometheus counters and histograms (gauges are computed at scrape).
    pub metrics: crate::app::metrics::Metrics,
    /// Artifact content on disk.
    pub blobs: crate::blobs::Blobs,
    /// Bandwidth budgets shared by the artifact downloads of runs holding
    /// budgeted resources.
    pub budgets: crate::bandwidth::Budgets,
    /// What is known of each job's end between its runs' ends (see
    /// `AppState::announce_job_end`). A std mutex: held for one map access.
    pub job_ends: std::sync::Mutex<HashMap<String, effects::JobEnd>>,
    /// Artifact downloads under way, for operators to see.
    pub fetches: fetches::Fetches,
    /// The puppet binaries handed out (install route, upgrades).
    pub served: served::Served,
}

pub type Shared = Arc<AppState>;
