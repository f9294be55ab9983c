//! The api layer: tonic services. Thin by design: each method authenticates,
//! converts protobuf into validated domain values (see [`convert`]), calls the
//! store and the scheduler, flushes before it acknowledges, wakes whoever
//! waits, and converts back. This is the only layer that knows protobuf.

mod artifacts;
mod audit;
mod auth;
pub mod convert;
mod enroll;
mod error;
pub mod events;
mod fetch;
mod groups;
mod jobs;
mod notifications;
mod pages;
mod puppet_service;
mod puppets;
mod resources;
mod runs;
mod server_info;
mod tasks;
mod users;

use std::time::Duration;

pub use auth::Caller;
pub use error::ApiError;

pub use crate::app::{AppConfig, AppState, Shared};

/// Largest message the puppeteer accepts (a log chunk is at most 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Largest log chunk a puppet may send at once.
pub const MAX_LOG_CHUNK: usize = 1024 * 1024;

pub use artifacts::{ArtifactsApi, MAX_OPEN_UPLOADS};
pub use enroll::EnrollTokensApi;
pub use events::EventsApi;
pub use groups::GroupsApi;
pub use jobs::JobsApi;
pub use notifications::NotificationsApi;
pub use puppet_service::PuppetServiceApi;
pub use puppets::PuppetsApi;
pub use resources::ResourcesApi;
pub use runs::RunsApi;
pub use server_info::{DataSize, ServerApi, dir_bytes};
pub use tasks::TasksApi;
pub use users::{AuditApi, TokensApi, UsersApi};

/// A `grpc-timeout` header's value as a duration: at most 8 digits and a
/// unit, as the gRPC over HTTP/2 spec says; `None` when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match &value[digits.len()..] {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
