//! What authentication keeps: the count of calls refused for their
//! credential, logged sparingly. The checks themselves, which read the
//! call's metadata, are the api layer's (`api::auth`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

#[derive(Debug, Default)]
pub struct Auth {
    refusals: Refusals,
}

impl Auth {
    /// Authentication counting its refusals on `count` (a metric).
    pub fn new(count: Counter) -> Self {
        Auth {
            refusals: Refusals {
                count,
                log: Default::default(),
            },
        }
    }

    /// Calls refused for their credential.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }
}

/// At most one log line about refused credentials this often.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Calls refused for their credential: counted, and logged sparingly.
#[derive(Debug, Default)]
pub struct Refusals {
    count: Counter,
    /// When the last line was logged, and the refusals since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Refusals {
    /// Counts a refusal of a call from `peer` to `action`; logs it if no
    /// line was logged for [`REFUSAL_LOG_EVERY`] (with how many came since).
    pub fn refused(&self, action: &str, peer: &str, why: &dyn std::fmt::Display) {
        self.count.inc();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        let now = Instant::now();
        if log.0.is_some_and(|last| now - last < REFUSAL_LOG_EVERY) {
            return;
        }
        let refused = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        // `action` is one of ours; the error text is ours and bounded.
        tracing::warn!(
            %peer,
            action = %super::error::bounded(action.to_string(), 128),
            error = %why,
            refused_since_last_line = refused,
            "refused a call without a valid credential"
        );
    }

    /// How many calls were refused.
    pub fn count(&self) -> u64 {
        self.count.get()
    }
}
