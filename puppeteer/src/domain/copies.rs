//! Copies of artifact content on puppets, for the site peer cache.

use serde::{Deserialize, Serialize};

use super::Millis;

/// A puppet's copy of some content: held (complete, hash checked by the
/// puppet), or being received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentCopy {
    pub sha256: String,
    pub puppet: String,
    /// The puppet's site when the copy began.
    pub site: String,
    pub held: bool,
    /// Where it comes (came) from: a peer's name; empty: the puppeteer.
    pub source: String,
    /// When the fetch began.
    pub since: Millis,
    /// When it was last updated (began, held, or reported failing).
    pub updated: Millis,
    /// Bytes received in its fetch, and how long that took (once held).
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub took_ms: u64,
    /// A fetcher reported this peer failing for this content: others are
    /// not sent to it before this time.
    #[serde(default)]
    pub suspect_until: Millis,
    /// The last failure reported of this peer for this content.
    #[serde(default)]
    pub last_failure: Option<String>,
}
