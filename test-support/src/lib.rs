//! Helpers shared by the integration tests of the workspace's crates.
//!
//! Tests wait on conditions with deadlines, never on bare sleeps: the helpers
//! here are the one place that loop lives.
