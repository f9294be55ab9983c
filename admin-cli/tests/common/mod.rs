//! Helpers to run the `geppetto` binary in tests.
//!
//! [`geppetto`] gives a command isolated from the developer's own settings:
//! no `GEPPETTO_*` variable and no config file leak in, and it cannot hang
//! for long. An end-to-end test against a real puppeteer adds the
//! connection itself:
//!
//! ```ignore
//! geppetto()
//!     .args(["--server", &url, "--ca", ca_path, "--token-file", token_path])
//!     .args(["-o", "json", "tasks", "list"])
//!     .assert()
//!     .success();
//! ```

use std::time::Duration;

use assert_cmd::Command;

/// The binary, with a clean environment and a deadline.
pub fn geppetto() -> Command {
    let mut cmd = Command::from_std(geppetto_std());
    cmd.timeout(Duration::from_secs(60));
    cmd
}

/// The binary with a clean environment, as a plain [`std::process::Command`]
/// (no deadline): for a process the test spawns and talks to while it runs.
pub fn geppetto_std() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_geppetto"));
    for var in [
        "GEPPETTO_SERVER",
        "GEPPETTO_CA",
        "GEPPETTO_TOKEN",
        "GEPPETTO_TOKEN_FILE",
        "GEPPETTO_TRANSPORT",
        "GEPPETTO_CONFIG",
    ] {
        cmd.env_remove(var);
    }
    // No config file from the developer's home.
    cmd.env("XDG_CONFIG_HOME", "/nonexistent");
    cmd.env("NO_COLOR", "1");
    cmd
}
