//! The artifact cache: files a run needs, fetched from the puppeteer before
//! the run starts, kept under `state_dir/cache/` by their SHA-256.
//!
//! - `<sha256>` is complete content whose hash was checked; it is checked
//!   again before each use, so a file damaged on disk is never handed to a
//!   run (it is deleted and fetched again).
//! - `<sha256>.part` is a download in progress. After a dropped stream, and
//!   after a restart of the puppet, the download resumes at the length of
//!   this file: what crossed the link once does not cross it again.
//! - The cache is bounded: before a download, the least recently used files
//!   that no run holds are deleted until the new content fits. A file in use
//!   by a run is never deleted, so the bound may be exceeded while runs need
//!   more than it allows.
//!
//! Content is fetched at most once at a time: runs needing the same content
//! wait for the one fetching it, then find it in the cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use geppetto_proto::v1::{
    ArtifactRef, FetchArtifactRequest, FindSourceRequest, PeerFailure, ReportFetchRequest,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::peer::PeerSource;
use crate::rpc::{self, CALL_TIMEOUT, Client, Retry};

/// The default bound of the cache: 2 GiB.
pub const DEFAULT_CACHE_MAX: u64 = 2 << 30;
/// A stream that brings no chunk for this long is taken for dead and
/// opened again (from where it stopped).
const STREAM_IDLE: Duration = Duration::from_secs(120);
/// How many times content whose hash does not match is fetched again from
/// the start before the run is given up.
const REFETCHES: u32 = 1;

/// Why the artifacts of a run could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The run was cancelled or the puppet is shutting down.
    #[error("stopped")]
    Stopped,
    /// The run cannot start; the message says why, for the operator.
    #[error("{0}")]
    Failed(String),
}

/// What a run receives: the variables to set, and a hold on its files that
/// keeps them out of eviction until dropped.
#[derive(Debug)]
pub struct Prepared {
    pub env: Vec<(String, String)>,
    _holds: Vec<Hold>,
}

/// Keeps a cached file from eviction while a run uses it.
#[derive(Debug)]
struct Hold {
    cache: ArtifactCache,
    sha256: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if let Some(n) = state.in_use.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                state.in_use.remove(&self.sha256);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// How many runs hold each content.
    in_use: HashMap<String, usize>,
    /// One lock per content being made ready, so it is fetched once.
    fetching: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Content being received (into its `.part` file), with its size: what
    /// the peer server may serve while the rest arrives.
    receiving: HashMap<String, u64>,
}

/// What the peer server may serve of some content: its file and size, and
/// whether the file is still being received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servable {
    pub path: PathBuf,
    pub size: u64,
    pub receiving: bool,
}

/// The cache. Cloning is cheap: clones share their state.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
    /// A std mutex: every section is short and never awaits.
    state: Arc<Mutex<State>>,
}

/// Where one download goes and what it must come to.
struct Wanted<'a> {
    run_id: &'a str,
    attempt: u32,
    artifact: &'a ArtifactRef,
}

impl ArtifactCache {
    pub fn new(state_dir: &Path, max_bytes: u64) -> Self {
        ArtifactCache {
            dir: state_dir.join("cache"),
            max_bytes,
            state: Arc::default(),
        }
    }

    /// The content's file for a peer, if this puppet holds it or is
    /// receiving it.
    pub fn servable(&self, sha256: &str) -> Option<Servable> {
        if !is_sha256(sha256) {
            return None;
        }
        if let Some(size) = self.lock().receiving.get(sha256).copied() {
            return Some(Servable {
                path: self.part_path(sha256),
                size,
                receiving: true,
            });
        }
        let path = self.path(sha256);
        let size = std::fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
        Some(Servable {
            path,
            size,
            receiving: false,
        })
    }

    /// Whether the content is still being received.
    pub fn is_receiving(&self, sha256: &str) -> bool {
        self.lock().receiving.contains_key(sha256)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    fn part_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }

    /// Makes every artifact of a run ready in the cache (fetching what is
    /// missing) and returns the variables that name their paths.
    pub async fn prepare(
        &self,
        client: &Client,
        run_id: &str,
        attempt: u32,
        artifacts: &[ArtifactRef],
        stop: &CancellationToken,
    ) -> Result<Prepared, FetchError> {
        if artifacts.is_empty() {
            return Ok(Prepared {
                env: Vec::new(),
                _holds: Vec::new(),
            });
        }
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
            FetchError::Failed(format!(
                "cannot create the artifact cache {}: {e}",
                self.dir.display()
            ))
        })?;
        let mut env = Vec::new();
        let mut holds = Vec::new();
        for artifact in artifacts {
            if !is_sha256(&artifact.sha256) {
                return Err(FetchError::Failed(format!(
                    "artifact {}: {:?} is not a SHA-256",
                    artifact.name, artifact.sha256
                )));
            }
            holds.push(self.hold(&artifact.sha256));
            let wanted = Wanted {
                run_id,
                attempt,
                artifact,
            };
            let path = self.ready(client, &wanted, stop).await?;
            env.push((artifact.env.clone(), path.display().to_string()));
        }
        Ok(Prepared { env, _holds: holds })
    }

    fn hold(&self, sha256: &str) -> Hold {
        *self.lock().in_use.entry(sha256.to_string()).or_default() += 1;
        Hold {
            cache: self.clone(),
            sha256: sha256.to_string(),
        }
    }

    /// The path of the checked content, fetched if needed.
    async fn ready(
        &self,
        client: &Client,
        wanted: &Wanted<'_>,
        stop: &CancellationToken,
    ) -> Result<PathBuf, FetchError> {
        let sha256 = &wanted.artifact.sha256;
        let lock = self
            .lock()
            .fetching
            .entry(sha256.clone())
            .or_default()
            .clone();
        let _fetching = tokio::select! {
            guard = lock.lock() => guard,
            _ = stop.cancelled() => return Err(FetchError::Stopped),
        };
        let path = self.path(sha256);
        if path.exists() {
            if self.verify(&path, sha256).await? {
                touch(&path);
                tracing::info!(run_id = wanted.run_id, artifact = %wanted.artifact.name, "artifact found in the cache");
                // The puppeteer learns it is held here (its site's peers
                // may be sent to it), if it did not know.
                let held = Fetched {
                    bytes: 0,
                    source: None,
                    peers: Vec::new(),
                };
                report_fetch(client, wanted, &held, Duration::ZERO, &[]).await;
                return Ok(path);
            }
            tracing::warn!(artifact = %wanted.artifact.name, %sha256, "the cached artifact does not match its SHA-256; fetching it again");
            let _ = tokio::fs::remove_file(&path).await;
        }
        let mut refetches = 0;
        let mut failed: Vec<(String, String)> = Vec::new();
        let began = std::time::Instant::now();
        loop {
            self.make_room(wanted.artifact.size).await;
            let fetched = self.download(client, wanted, stop, &mut failed).await?;
            let part = self.part_path(sha256);
            if self.verify(&part, sha256).await? {
                tokio::fs::rename(&part, &path).await.map_err(|e| {
                    FetchError::Failed(format!(
                        "cannot move {} into the cache: {e}",
                        part.display()
                    ))
                })?;
                if let Ok(dir) = std::fs::File::open(&self.dir) {
                    let _ = dir.sync_all();
                }
                tracing::info!(run_id = wanted.run_id, artifact = %wanted.artifact.name, size = wanted.artifact.size, source = %fetched.source_name(), "artifact fetched and verified");
                report_fetch(client, wanted, &fetched, began.elapsed(), &failed).await;
                return Ok(path);
            }
            let _ = tokio::fs::remove_file(&part).await;
            // Bytes from peers that do not hash right: those peers are
            // dropped, and the content fetched again from other sources
            // (bounded: a dropped peer is not asked again).
            if !fetched.peers.is_empty() && failed.len() < MAX_FAILED_PEERS {
                for name in &fetched.peers {
                    tracing::warn!(artifact = %wanted.artifact.name, %sha256, peer = %name, "content from a peer does not match its SHA-256; fetching it again elsewhere");
                    failed.push((
                        name.clone(),
                        "served bytes that do not match the SHA-256".into(),
                    ));
                }
                continue;
            }
            if refetches == REFETCHES {
                return Err(FetchError::Failed(format!(
                    "artifact {}: the content fetched does not match its SHA-256 {} (fetched {} times); \
                     the run was not started: upload the artifact again",
                    wanted.artifact.name,
                    sha256,
                    refetches + 1
                )));
            }
            refetches += 1;
            tracing::warn!(artifact = %wanted.artifact.name, %sha256, "the fetched artifact does not match its SHA-256; fetching it again from the start");
        }
    }

    /// Whether the file hashes to `sha256`.
    async fn verify(&self, path: &Path, sha256: &str) -> Result<bool, FetchError> {
        let file = path.to_path_buf();
        let found = tokio::task::spawn_blocking(move || hash_file(&file))
            .await
            .map_err(|e| FetchError::Failed(format!("cannot hash {}: {e}", path.display())))?
            .map_err(|e| FetchError::Failed(format!("cannot read {}: {e}", path.display())))?;
        Ok(found == sha256)
    }

    /// Fetches into the partial file until it holds the whole size, from
    /// the source the puppeteer names (itself, or a peer of the site),
    /// resuming after every failure of the link and moving to another
    /// source when a peer fails (noted in `failed`).
    async fn download(
        &self,
        client: &Client,
        wanted: &Wanted<'_>,
        stop: &CancellationToken,
        failed: &mut Vec<(String, String)>,
    ) -> Result<Fetched, FetchError> {
        let artifact = wanted.artifact;
        let part = self.part_path(&artifact.sha256);
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await
            .map_err(|e| FetchError::Failed(format!("cannot write {}: {e}", part.display())))?;
        let mut have = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        if have > artifact.size {
            file.set_len(0)
                .await
                .map_err(|e| FetchError::Failed(format!("cannot write {}: {e}", part.display())))?;
            have = 0;
        }
        if have > 0 {
            tracing::info!(artifact = %artifact.name, from = have, size = artifact.size, "resuming an artifact download");
        }
        let _receiving = Receiving::new(self, &artifact.sha256, artifact.size);
        let mut fetched = Fetched {
            bytes: 0,
            source: None,
            peers: Vec::new(),
        };
        let mut source: Option<Option<PeerSource>> = None;
        let mut backoff = Backoff::standard();
        while have < artifact.size {
            let before = have;
            let chosen = match &source {
                Some(chosen) => chosen.clone(),
                None => {
                    let chosen = find_source(client, wanted, failed, stop).await?;
                    source = Some(chosen.clone());
                    chosen
                }
            };
            fetched.source = chosen.as_ref().map(|p| p.name.clone());
            if let Some(peer) = chosen {
                if !fetched.peers.contains(&peer.name) {
                    fetched.peers.push(peer.name.clone());
                }
                tracing::info!(artifact = %artifact.name, peer = %peer.name, address = %peer.address, at = have, "fetching from a peer of the site");
                let result = tokio::select! {
                    r = crate::peer::fetch_into(&peer, &artifact.sha256, artifact.size, &mut file, &mut have) => r,
                    _ = stop.cancelled() => {
                        let _ = file.flush().await;
                        return Err(FetchError::Stopped);
                    }
                };
                let _ = file.flush().await;
                fetched.bytes += have - before;
                if let Err(why) = result {
                    tracing::warn!(artifact = %artifact.name, peer = %peer.name, at = have, error = %why, "a peer failed; asking the puppeteer for another source");
                    failed.push((peer.name.clone(), why));
                    source = None;
                }
                continue;
            }
            let result = tokio::select! {
                result = stream_into(client, wanted, &mut file, &mut have) => result,
                _ = stop.cancelled() => Err(Interrupted::Stopped),
            };
            // What was written stays for the next try, even after a stop.
            let _ = file.flush().await;
            fetched.bytes += have - before;
            match result {
                Ok(()) => {}
                Err(Interrupted::Stopped) => return Err(FetchError::Stopped),
                Err(Interrupted::Disk(e)) => {
                    return Err(FetchError::Failed(format!(
                        "cannot write {}: {e}",
                        part.display()
                    )));
                }
                Err(Interrupted::Refused(status)) => {
                    return Err(FetchError::Failed(format!(
                        "the puppeteer refused artifact {}: {}",
                        artifact.name,
                        status.message()
                    )));
                }
                Err(Interrupted::Link(message)) => {
                    if have > before {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(artifact = %artifact.name, at = have, size = artifact.size, error = %message, "artifact download cut; resuming");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return Err(FetchError::Stopped),
                    }
                    // A peer may hold it by now: ask again.
                    source = None;
                }
            }
        }
        file.sync_all()
            .await
            .map_err(|e| FetchError::Failed(format!("cannot write {}: {e}", part.display())))?;
        Ok(fetched)
    }

    /// Deletes the least recently used files no run holds until `incoming`
    /// more bytes fit under the bound.
    async fn make_room(&self, incoming: u64) {
        let entries = match list_files(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list the artifact cache");
                return;
            }
        };
        let in_use: Vec<String> = self.lock().in_use.keys().cloned().collect();
        let plan = eviction_plan(&entries, &in_use, incoming, self.max_bytes);
        for name in plan.evict {
            tracing::info!(file = %name, "evicting from the artifact cache");
            let _ = tokio::fs::remove_file(self.dir.join(&name)).await;
        }
        if !plan.fits {
            tracing::warn!(
                max = self.max_bytes,
                incoming,
                "the artifact cache holds more than its bound: the runs using it need more"
            );
        }
    }
}

/// At most this many peers are reported failed in one fetch.
const MAX_FAILED_PEERS: usize = 16;

/// What one download brought: the bytes, the last source (a peer; `None`:
/// the puppeteer) and every peer it used.
struct Fetched {
    bytes: u64,
    source: Option<String>,
    peers: Vec<String>,
}

impl Fetched {
    fn source_name(&self) -> String {
        self.source
            .clone()
            .map_or_else(|| "the puppeteer".to_string(), |p| format!("peer {p}"))
    }
}

/// Marks content as being received (servable to peers) while it lives.
pub(crate) struct Receiving {
    cache: ArtifactCache,
    sha256: String,
}

impl Receiving {
    pub(crate) fn new(cache: &ArtifactCache, sha256: &str, size: u64) -> Self {
        cache.lock().receiving.insert(sha256.to_string(), size);
        Receiving {
            cache: cache.clone(),
            sha256: sha256.to_string(),
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.cache.lock().receiving.remove(&self.sha256);
    }
}

/// The last failures, as a request carries them.
fn failures(failed: &[(String, String)]) -> Vec<PeerFailure> {
    failed
        .iter()
        .rev()
        .take(MAX_FAILED_PEERS)
        .map(|(peer, reason)| PeerFailure {
            peer: peer.clone(),
            reason: reason.chars().take(200).collect(),
            gone: reason.starts_with(crate::peer::GONE),
        })
        .collect()
}

/// Asks the puppeteer where to fetch from (`None`: itself), retrying on a
/// bad link; a puppeteer that does not know the call means itself.
async fn find_source(
    client: &Client,
    wanted: &Wanted<'_>,
    failed: &[(String, String)],
    stop: &CancellationToken,
) -> Result<Option<PeerSource>, FetchError> {
    let mut backoff = Backoff::standard();
    loop {
        let request = FindSourceRequest {
            run_id: wanted.run_id.to_string(),
            attempt: wanted.attempt,
            sha256: wanted.artifact.sha256.clone(),
            failed: failures(failed),
        };
        let mut client = client.clone();
        let status = match rpc::with_deadline(CALL_TIMEOUT, client.find_source(request)).await {
            Ok(source) => {
                if source.peer.is_empty() {
                    tracing::info!(artifact = %wanted.artifact.name, reason = %source.reason, "fetching from the puppeteer");
                    return Ok(None);
                }
                tracing::info!(artifact = %wanted.artifact.name, peer = %source.peer, reason = %source.reason, "fetching from a peer");
                return Ok(Some(PeerSource {
                    name: source.peer,
                    address: source.address,
                    cert_sha256: source.cert_sha256,
                    ticket: source.ticket,
                }));
            }
            Err(status) => status,
        };
        if status.code() == tonic::Code::Unimplemented {
            return Ok(None);
        }
        if rpc::classify(&status) == Retry::Never {
            return Err(FetchError::Failed(format!(
                "the puppeteer refused artifact {}: {}",
                wanted.artifact.name,
                status.message()
            )));
        }
        tracing::warn!(code = ?status.code(), error = status.message(), "cannot ask where to fetch an artifact; retrying");
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return Err(FetchError::Stopped),
        }
    }
}

/// Tells the puppeteer the content is held now, and from where (best
/// effort, in the background so that the run does not wait for it: a lost
/// report only means the puppeteer sends fewer peers here).
async fn report_fetch(
    client: &Client,
    wanted: &Wanted<'_>,
    fetched: &Fetched,
    took: Duration,
    failed: &[(String, String)],
) {
    let request = ReportFetchRequest {
        run_id: wanted.run_id.to_string(),
        attempt: wanted.attempt,
        sha256: wanted.artifact.sha256.clone(),
        source: fetched.source.clone().unwrap_or_default(),
        bytes: fetched.bytes,
        took: Some(rpc::to_proto_duration(took)),
        failed: failures(failed),
    };
    let client = client.clone();
    tokio::spawn(async move {
        for _ in 0..3 {
            let mut client = client.clone();
            match rpc::with_deadline(CALL_TIMEOUT, client.report_fetch(request.clone())).await {
                Ok(_) => return,
                Err(status) if status.code() == tonic::Code::Unimplemented => return,
                Err(status) if rpc::classify(&status) == Retry::Never => {
                    tracing::warn!(
                        error = status.message(),
                        "the puppeteer refused a fetch report"
                    );
                    return;
                }
                Err(status) => {
                    tracing::warn!(error = status.message(), "cannot report a fetch; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// How one stream ended early.
enum Interrupted {
    Stopped,
    /// The link or the server failed: try again from where it stopped.
    Link(String),
    /// The server refused: trying again will not help.
    Refused(tonic::Status),
    Disk(std::io::Error),
}

/// Opens one stream from `have` and appends what it brings to `file`.
/// How often a download in progress is logged.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

async fn stream_into(
    client: &Client,
    wanted: &Wanted<'_>,
    file: &mut tokio::fs::File,
    have: &mut u64,
) -> Result<(), Interrupted> {
    let request = FetchArtifactRequest {
        run_id: wanted.run_id.to_string(),
        attempt: wanted.attempt,
        sha256: wanted.artifact.sha256.clone(),
        offset: *have,
    };
    let mut client = client.clone();
    let failed = |status: tonic::Status| match rpc::classify(&status) {
        Retry::Never => Interrupted::Refused(status),
        _ => Interrupted::Link(format!("{:?}: {}", status.code(), status.message())),
    };
    // No deadline on the whole stream (a download may take hours on a slow
    // uplink): each chunk must come within STREAM_IDLE instead.
    let mut stream = rpc::with_deadline(CALL_TIMEOUT, client.fetch_artifact(request))
        .await
        .map_err(failed)?;
    // A long download says how it goes, not only how it ended.
    let began = std::time::Instant::now();
    let from = *have;
    let mut said = began;
    loop {
        if said.elapsed() >= PROGRESS_EVERY {
            said = std::time::Instant::now();
            let rate = (*have - from) * 1000 / (began.elapsed().as_millis().max(1) as u64);
            tracing::info!(
                run_id = wanted.run_id,
                artifact = %wanted.artifact.name,
                received = *have,
                size = wanted.artifact.size,
                bytes_per_second = rate,
                "fetching an artifact"
            );
        }
        let message = match tokio::time::timeout(STREAM_IDLE, stream.message()).await {
            Ok(message) => message.map_err(failed)?,
            Err(_) => {
                return Err(Interrupted::Link(format!(
                    "no data for {}",
                    humantime::format_duration(STREAM_IDLE)
                )));
            }
        };
        let Some(chunk) = message else {
            return if *have >= wanted.artifact.size {
                Ok(())
            } else {
                Err(Interrupted::Link(format!(
                    "the stream ended at byte {have} of {}",
                    wanted.artifact.size
                )))
            };
        };
        if chunk.offset != *have || *have + chunk.data.len() as u64 > wanted.artifact.size {
            return Err(Interrupted::Link(format!(
                "a chunk at byte {} of {} bytes does not follow byte {have}",
                chunk.offset,
                chunk.data.len()
            )));
        }
        file.write_all(&chunk.data)
            .await
            .map_err(Interrupted::Disk)?;
        *have += chunk.data.len() as u64;
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// The lowercase hex SHA-256 of a file.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Marks a file as just used (its modification time orders eviction).
fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// A file of the cache as eviction sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    pub name: String,
    pub size: u64,
    pub used: SystemTime,
}

fn list_files(dir: &Path) -> std::io::Result<Vec<CachedFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_file() {
            out.push(CachedFile {
                name: entry.file_name().to_string_lossy().into_owned(),
                size: meta.len(),
                used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
    }
    Ok(out)
}

/// What to delete so that `incoming` bytes fit under `max`.
#[derive(Debug, PartialEq, Eq)]
pub struct EvictionPlan {
    /// File names, least recently used first.
    pub evict: Vec<String>,
    /// Whether the incoming bytes fit after the eviction.
    pub fits: bool,
}

/// Picks the least recently used files whose content no run holds
/// (complete or partial) until `incoming` more bytes fit under `max`.
pub fn eviction_plan(
    files: &[CachedFile],
    in_use: &[String],
    incoming: u64,
    max: u64,
) -> EvictionPlan {
    let mut total: u64 = files.iter().map(|f| f.size).sum();
    let mut candidates: Vec<&CachedFile> = files
        .iter()
        .filter(|f| {
            let sha = f.name.strip_suffix(".part").unwrap_or(&f.name);
            !in_use.iter().any(|u| u == sha)
        })
        .collect();
    candidates.sort_by_key(|f| f.used);
    let mut evict = Vec::new();
    for file in candidates {
        if total.saturating_add(incoming) <= max {
            break;
        }
        total -= file.size;
        evict.push(file.name.clone());
    }
    EvictionPlan {
        evict,
        fits: total.saturating_add(incoming) <= max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64, age: u64) -> CachedFile {
        CachedFile {
            name: name.into(),
            size,
            used: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age),
        }
    }

    #[test]
    fn eviction_takes_the_least_recently_used_files_not_in_use() {
        let files = [
            file("aaa", 40, 10),
            file("bbb", 30, 30),
            file("ccc", 20, 20),
            file("ddd.part", 5, 50),
        ];
        // 95 held, bound 100, 30 coming: 25 must go. The oldest, ddd.part
        // (5) then bbb (30), are enough.
        let plan = eviction_plan(&files, &[], 30, 100);
        assert_eq!(plan.evict, ["ddd.part", "bbb"]);
        assert!(plan.fits);
        // bbb is in use: ccc goes instead, then aaa.
        let plan = eviction_plan(&files, &["bbb".into()], 30, 100);
        assert_eq!(plan.evict, ["ddd.part", "ccc"]);
        assert!(plan.fits);
        // Nothing to evict when it fits.
        assert_eq!(
            eviction_plan(&files, &[], 5, 100).evict,
            Vec::<String>::new()
        );
        // What runs hold stays even if the bound is exceeded.
        let all: Vec<String> = ["aaa", "bbb", "ccc", "ddd"].map(String::from).to_vec();
        let plan = eviction_plan(&files, &all, 30, 100);
        assert!(plan.evict.is_empty() && !plan.fits);
    }

    #[test]
    fn files_hash_to_lowercase_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            hash_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256(&hash_file(&path).unwrap()));
        assert!(!is_sha256("ABC"));
    }

    #[tokio::test]
    async fn holds_are_released_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path(), DEFAULT_CACHE_MAX);
        let a = cache.hold("x");
        let b = cache.hold("x");
        assert_eq!(cache.lock().in_use["x"], 2);
        drop(a);
        assert_eq!(cache.lock().in_use["x"], 1);
        drop(b);
        assert!(cache.lock().in_use.is_empty());
    }
}
