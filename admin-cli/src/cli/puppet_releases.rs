//! `geppetto puppet-releases`: the puppet binaries installs and upgrades use.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum PuppetReleasesCommand {
    /// Uploads a puppet binary for a platform (an artifact named
    /// puppet-VERSION-OS-ARCH): machines of that platform install it, and
    /// `geppetto puppets upgrade --to VERSION` hands it to them
    Add {
        /// The puppet binary
        file: PathBuf,
        /// Its operating system, as Rust names it: linux
        #[arg(long, value_name = "OS")]
        os: String,
        /// Its architecture, as Rust names it: x86_64, aarch64, arm, riscv64...
        #[arg(long, value_name = "ARCH")]
        arch: String,
        /// Its version [default: what `FILE --version` says, when FILE runs here]
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
    },
    /// Lists the releases, newest first, with the build the puppeteer serves
    List,
    /// Removes a release's binary for a platform
    Remove {
        version: String,
        #[arg(long, value_name = "OS")]
        os: String,
        #[arg(long, value_name = "ARCH")]
        arch: String,
    },
}
