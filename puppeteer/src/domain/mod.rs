//! Domain types: what the scheduler and the store talk about.
//!
//! These are plain, validated Rust types. Protobuf types never reach past the
//! api layer: it converts them into these with `TryFrom`, once, and a value
//! of one of these types is valid by construction (names checked, timeouts in
//! range).
//!
//! One file per family of types: `names` (name and label rules, `Invalid`),
//! `time`, `puppets` (with enrollment tokens, credential rotation and
//! groups), `tasks` (with run specs), `resources`, `jobs` (with strategies
//! and approval), `runs` (with states and transitions), `users` (with roles,
//! API tokens and principals), `events` (with the audit trail) and
//! `notifications`, `copies` (content held by puppets, for the peer cache). Everything is re-exported here: callers name
//! `crate::domain::X`.

mod copies;
mod events;
mod jobs;
mod names;
mod notifications;
mod puppets;
mod resources;
mod runs;
mod tasks;
mod time;
mod users;

pub use copies::*;
pub use events::*;
pub use jobs::*;
pub use names::*;
pub use notifications::*;
pub use puppets::*;
pub use resources::*;
pub use runs::*;
pub use tasks::*;
pub use time::*;
pub use users::*;
