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
    let mut cmd = Command::cargo_bin("geppetto").expect("the geppetto binary is built");
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
    cmd.timeout(Duration::from_secs(60));
    cmd
}
