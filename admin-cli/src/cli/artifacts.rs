//! `geppetto artifacts`: files that tasks bring to puppets.

use std::path::PathBuf;

use clap::Subcommand;

pub(super) const ARTIFACTS_HELP: &str = "\
Examples:
  geppetto artifacts upload ./patch-2.3.tar.gz            # named patch-2.3.tar.gz
  geppetto artifacts upload ./build/out.bin --name tool   # named tool
  geppetto tasks create patch --artifact patch-2.3.tar.gz \\
      --command 'tar -xzf \"$GEPPETTO_ARTIFACT_PATCH_2_3_TAR_GZ\" -C /opt'
  geppetto artifacts list
  geppetto artifacts remove tool

An upload that is cut off resumes where the puppeteer's durable copy ends when the same
command is run again. A task version pins the content its artifacts had when it was made;
uploading a name again changes what new task versions get, not existing ones.
Each run finds an artifact's path in GEPPETTO_ARTIFACT_<NAME>: the name uppercased, every
character other than a letter or digit turned into '_'. Puppets fetch artifacts into a
cache before the run (resumed after a drop, verified by SHA-256, never fetched twice), at
most at the bandwidth budget of the resources the run holds (geppetto resources create
uplink-lyon --capacity 2 --bandwidth 48KiB/s).";

#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Uploads a file as an artifact (SHA-256 computed here and checked by the
    /// puppeteer); run it again to resume an upload that was cut off
    Upload {
        /// The file to upload
        file: PathBuf,
        /// The artifact's name [default: the file name]: 1-128 of [A-Za-z0-9._-],
        /// starting with a letter or digit
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Lists artifacts with their size, hash and the tasks using them
    List,
    /// Shows an artifact
    Show { name: String },
    /// Removes an artifact's name; its content is deleted once no task version
    /// pins it. Refused while the latest version of a task uses it, unless --force
    Remove {
        name: String,
        /// Remove it even though tasks use it (their versions keep the content they pinned)
        #[arg(long)]
        force: bool,
    },
}
