//! The api layer: tonic services. Thin by design: each method authenticates,
//! converts protobuf into validated domain values (see [`convert`]), calls the
//! store and the scheduler, flushes before it acknowledges, wakes whoever
//! waits, and converts back. This is the only layer that knows protobuf.

mod artifacts;
mod audit;
mod auth;
pub mod authz;
pub mod convert;
mod effects;
mod enroll;
mod error;
pub mod events;
mod fetch;
mod gates;
mod groups;
mod jobs;
mod notifications;
mod prune;
mod puppet_service;
mod puppets;
mod resources;
mod runs;
mod server_info;
mod sweep;
mod tasks;
mod users;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use auth::{Auth, Caller};
pub use error::ApiError;

use crate::hub::Hub;
use crate::presence::Presences;
use crate::store::Store;

/// Largest message the puppeteer accepts (a log chunk is at most 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest log chunk a puppet may send at once.
pub const MAX_LOG_CHUNK: usize = 1024 * 1024;

/// Settings of the api layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
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
    pub notify: crate::notify::NotifyConfig,
    /// How much of each run's output is kept; `None`: everything.
    pub log_limit: Option<crate::store::LogLimit>,
    /// What finished work is kept.
    pub retention: crate::retention::Retention,
    /// The data dir (its size is reported by `GetServerInfo`).
    pub data_dir: std::path::PathBuf,
    /// A job's approver must not be its creator.
    pub four_eyes: bool,
    /// An HTTP/2 connection without a request in progress this long is closed.
    pub connection_idle_timeout: Duration,
    /// Connections per source address: all (`None`: the default for the
    /// connection cap), and unproven ones; 0 is no bound.
    pub max_connections_per_address: Option<usize>,
    pub max_unauthenticated_per_address: usize,
    /// Connections open at most at once (`None`: from the open-file limit).
    pub max_connections: Option<usize>,
    /// A request body sending no byte this long fails.
    pub request_body_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            poll_timeout: Duration::from_secs(50),
            max_poll_hold: crate::config::DEFAULT_MAX_POLL_HOLD,
            lease_timeout: Duration::from_secs(110),
            presence: crate::presence::Thresholds::for_hold(Duration::from_secs(50)),
            event_retention: Duration::from_secs(7 * 24 * 3600),
            audit_retention: crate::config::DEFAULT_AUDIT_RETENTION,
            notify: Default::default(),
            log_limit: Some(crate::store::LogLimit::halves(
                crate::config::DEFAULT_LOG_LIMIT,
            )),
            retention: Default::default(),
            data_dir: Default::default(),
            four_eyes: false,
            connection_idle_timeout: crate::server::DEFAULT_IDLE,
            max_connections_per_address: None,
            max_unauthenticated_per_address: crate::server::DEFAULT_UNPROVEN_PER_ADDRESS,
            max_connections: None,
            request_body_timeout: crate::server::BODY_IDLE,
        }
    }
}

/// What every service shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub hub: Hub,
    pub config: ApiConfig,
    pub auth: Auth,
    pub presences: Presences,
    /// Cancelled at shutdown: held polls and streams end.
    pub shutdown: CancellationToken,
    /// Held while a poll decides and stores its offers, so that job limits
    /// (max-in-flight, rolling) see every other offer. A std mutex: the
    /// section is synchronous (planning and one store transaction).
    pub dispatch: std::sync::Mutex<()>,
    /// Prometheus counters and histograms (gauges are computed at scrape).
    pub metrics: crate::metrics::Metrics,
    /// Artifact content on disk.
    pub blobs: crate::blobs::Blobs,
    /// Bandwidth budgets shared by the artifact downloads of runs holding
    /// budgeted resources.
    pub budgets: crate::bandwidth::Budgets,
    /// What is known of each job's end between its runs' ends (see
    /// `AppState::announce_job_end`). A std mutex: held for one map access.
    pub job_ends: std::sync::Mutex<HashMap<String, effects::JobEnd>>,
    /// Artifact downloads under way, for operators to see.
    pub fetches: fetch::Fetches,
}

pub type Shared = Arc<AppState>;

pub use artifacts::{ArtifactsApi, MAX_OPEN_UPLOADS};
pub use enroll::EnrollTokensApi;
pub use events::EventsApi;
pub use groups::GroupsApi;
pub use jobs::JobsApi;
pub use notifications::NotificationsApi;
pub use prune::run_pruner;
pub use puppet_service::PuppetServiceApi;
pub use puppets::PuppetsApi;
pub use resources::ResourcesApi;
pub use runs::RunsApi;
pub use server_info::{DataSize, ServerApi, dir_bytes};
pub use sweep::run_sweeper;
pub use tasks::TasksApi;
pub use users::{AuditApi, TokensApi, UsersApi};
