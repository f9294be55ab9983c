//! The puppet binaries this puppeteer hands out: its own build for its own
//! platform (`--puppet-binary`, default the `puppet` beside its
//! executable), and the releases operators added as artifacts named
//! `puppet-VERSION-OS-ARCH` (see `crate::releases`). The install route
//! serves them to machines being installed; upgrades fetch them as
//! artifacts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;

use super::AppState;
use crate::releases::{self, Release};
use crate::store::StoreError;

/// A puppet binary on this node's disk.
#[derive(Clone, Debug)]
pub struct PuppetBuild {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub version: String,
    pub os: String,
    pub arch: String,
}

impl PuppetBuild {
    /// The puppet binary at `path`, for this machine's platform: hashed,
    /// and asked its version (`puppet --version`).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the puppet binary {}", path.display()))?;
        let (sha256, size) = crate::blobs::hash_file(file)?;
        let output = std::process::Command::new(path)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {} --version", path.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text
            .split_whitespace()
            .nth(1)
            .filter(|_| output.status.success())
            .with_context(|| format!("{} --version said {text:?}", path.display()))?
            .to_string();
        Ok(PuppetBuild {
            path: path.to_path_buf(),
            sha256,
            size,
            version,
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
        })
    }

    /// The default: `puppet` beside the running executable, if there.
    pub fn beside_me() -> Option<PathBuf> {
        let me = std::env::current_exe().ok()?;
        let path = me.parent()?.join("puppet");
        path.is_file().then_some(path)
    }

    pub fn release(&self) -> Release {
        Release {
            version: self.version.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
        }
    }
}

/// The served build: its file, set once when the server starts, and what
/// it is, learnt at the first request that needs it (not at start: every
/// start would hash it), then kept.
#[derive(Debug, Default)]
pub struct Served {
    binary: OnceLock<Option<PathBuf>>,
    build: tokio::sync::OnceCell<Option<PuppetBuild>>,
    /// Held while the build is added as a release artifact, so that two
    /// callers never upload it at once.
    pub importing: tokio::sync::Mutex<()>,
}

impl Served {
    /// Sets the binary served (once; later calls change nothing).
    pub fn set_binary(&self, binary: Option<PathBuf>) {
        let _ = self.binary.set(binary);
    }

    /// The served build, if there is one that can be read and run.
    pub async fn build(&self) -> Option<&PuppetBuild> {
        self.build
            .get_or_init(|| async {
                let path = self.binary.get().cloned().flatten()?;
                match tokio::task::spawn_blocking(move || PuppetBuild::load(&path)).await {
                    Ok(Ok(build)) => {
                        tracing::info!(path = %build.path.display(), version = %build.version, sha256 = %build.sha256, "serving the puppet binary to machines being installed and upgraded ({}/{})", build.os, build.arch);
                        Some(build)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = format!("{e:#}"), "no puppet binary to serve to machines being installed or upgraded");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot load the puppet binary");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }
}

impl AppState {
    /// Every release artifact, newest first (blocking).
    pub fn releases(&self) -> Result<Vec<(Release, crate::artifact::Artifact)>, StoreError> {
        let mut found: Vec<_> = self
            .store
            .list_artifacts()?
            .into_iter()
            .filter_map(|a| releases::parse_name(&a.name).map(|r| (r, a)))
            .collect();
        found.sort_by(|(a, _), (b, _)| releases::newest_first(a, b));
        Ok(found)
    }

    /// The binary of an added release for a platform, on this node's disk:
    /// of version `preferred` if there is one, else the newest (blocking).
    pub fn release_binary(
        &self,
        os: &str,
        arch: &str,
        preferred: Option<&str>,
    ) -> Result<Option<PuppetBuild>, StoreError> {
        let mut candidates: Vec<_> = self
            .releases()?
            .into_iter()
            .filter(|(r, _)| r.os == os && r.arch == arch)
            .collect();
        if let Some(at) = candidates
            .iter()
            .position(|(r, _)| Some(r.version.as_str()) == preferred)
        {
            candidates.swap(0, at);
        }
        let Some((release, artifact)) = candidates.into_iter().next() else {
            return Ok(None);
        };
        let path = self.local_content(&artifact.sha256, artifact.size)?;
        Ok(Some(PuppetBuild {
            path,
            sha256: artifact.sha256,
            size: artifact.size,
            version: release.version,
            os: release.os,
            arch: release.arch,
        }))
    }

    /// The platforms something can be installed on, as `OS/ARCH` (blocking).
    pub fn release_platforms(&self) -> Result<Vec<String>, StoreError> {
        let mut platforms: Vec<String> = self
            .releases()?
            .into_iter()
            .map(|(r, _)| format!("{}/{}", r.os, r.arch))
            .collect();
        platforms.sort();
        platforms.dedup();
        Ok(platforms)
    }
}
