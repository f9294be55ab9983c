//! Offline backup, restore and compaction of a data dir.
//!
//! A backup is one file: a consistent snapshot of every database tree (taken
//! while no puppeteer runs, so nothing moves under it) and every other file
//! of the data dir (TLS certificates and keys, the first admin's token,
//! artifacts), in a versioned stream with a SHA-256 checksum at its end.
//!
//! Format, version 1 (integers big-endian):
//!
//! ```text
//! "GEPPETTO-BACKUP\n"  u32 format version  u32 n  n bytes of JSON header
//! records, each a tag byte:
//!   'T' u32 n, name           a database tree starts
//!   'K' u32 n, key, u32 m, value   an entry of that tree
//!   'F' u32 n, relative path, u32 mode, u64 n, content   a file
//!   'Z' u64 record count, then the SHA-256 of every byte before the hash
//! ```
//!
//! A restore reads the file twice: once to check it whole (structure,
//! checksum, versions) before anything is written, once to write into a
//! fresh directory beside the target, which is then moved into place. A
//! corrupted or truncated backup is refused and changes nothing.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::backup::{RawDb, is_locked};

const MAGIC: &[u8; 16] = b"GEPPETTO-BACKUP\n";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Entries written to the database per batch during a restore.
const BATCH: usize = 1000;
/// Largest key or value (sled's own values here are far smaller).
const MAX_ENTRY: u32 = 256 << 20;
/// The database directory inside a data dir.
const DB_DIR: &str = "db";

/// The oldest schema a restore accepts (opening upgrades it).
const OLDEST_SCHEMA: u32 = 2;

/// What the header of a backup says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub schema_version: u32,
    pub puppeteer_version: String,
    pub created_at: String,
    /// Above every id the database handed out.
    pub next_id: u64,
}

/// What a backup holds (or a restore wrote).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub trees: u64,
    pub entries: u64,
    pub files: u64,
    pub file_bytes: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} database trees, {} entries, {} files ({} bytes)",
            self.trees, self.entries, self.files, self.file_bytes
        )
    }
}

fn in_use(data_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "the data dir {} is in use by a running puppeteer: stop it first (backup, restore and compact work offline, on a consistent snapshot)",
        data_dir.display()
    )
}

fn open_db(data_dir: &Path, existing: bool) -> Result<RawDb> {
    let path = data_dir.join(DB_DIR);
    let opened = if existing {
        RawDb::open_existing(&path)
    } else {
        RawDb::open(&path)
    };
    opened.map_err(|e| {
        if is_locked(&e) {
            in_use(data_dir)
        } else {
            anyhow::Error::new(e).context(format!("cannot open the database in {}", path.display()))
        }
    })
}

/// Writes a backup of `data_dir` to `to` (through a temporary file beside
/// it, so that a failed backup leaves no file that looks like one).
pub fn backup(data_dir: &Path, to: &Path) -> Result<Summary> {
    let db = open_db(data_dir, true)?;
    let schema_version = db
        .schema_version()?
        .context("the database has no schema version: is this a puppeteer data dir?")?;
    let header = Header {
        format: FORMAT_VERSION,
        schema_version,
        puppeteer_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        next_id: db.next_id()?,
    };
    let tmp = to.with_extension("partial");
    // Owner only: a backup holds the CA key, the server key and the admin
    // token. A file left from an earlier try is replaced, not reused with
    // its mode.
    let _ = std::fs::remove_file(&tmp);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = Hashing::new(BufWriter::new(file));
    let written = write_backup(&db, data_dir, to, &header, &mut out);
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(summary)
}

fn write_backup(
    db: &RawDb,
    data_dir: &Path,
    to: &Path,
    header: &Header,
    out: &mut Hashing<BufWriter<File>>,
) -> Result<Summary> {
    let mut summary = Summary::default();
    let mut records = 0u64;
    out.write_all(MAGIC)?;
    out.write_all(&FORMAT_VERSION.to_be_bytes())?;
    write_bytes(out, &serde_json::to_vec(header)?)?;
    for name in db.tree_names() {
        out.write_all(b"T")?;
        write_bytes(out, &name)?;
        records += 1;
        summary.trees += 1;
        for entry in db.entries(&name)? {
            let (k, v) = entry?;
            out.write_all(b"K")?;
            write_bytes(out, &k)?;
            write_bytes(out, &v)?;
            records += 1;
            summary.entries += 1;
        }
    }
    let skip = to.canonicalize().ok();
    for (relative, path) in data_files(data_dir)? {
        if skip.as_deref() == path.canonicalize().ok().as_deref() {
            continue;
        }
        let mut file =
            File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let meta = file.metadata()?;
        out.write_all(b"F")?;
        write_bytes(out, relative.as_bytes())?;
        out.write_all(&(meta.permissions().mode() & 0o7777).to_be_bytes())?;
        out.write_all(&meta.len().to_be_bytes())?;
        let copied = io::copy(&mut (&mut file).take(meta.len()), out)?;
        if copied != meta.len() {
            bail!("{} changed while it was read", path.display());
        }
        records += 1;
        summary.files += 1;
        summary.file_bytes += copied;
    }
    out.write_all(b"Z")?;
    out.write_all(&records.to_be_bytes())?;
    let hash = out.hasher.clone().finalize();
    out.inner.write_all(&hash)?;
    out.inner.flush()?;
    Ok(summary)
}

/// Every regular file of the data dir outside the database, as a relative
/// path (with `/`) and a full path, sorted.
fn data_files(data_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    while let Some(dir) = dirs.pop() {
        let full = data_dir.join(&dir);
        for entry in
            std::fs::read_dir(&full).with_context(|| format!("cannot list {}", full.display()))?
        {
            let entry = entry?;
            let relative = dir.join(entry.file_name());
            if relative == Path::new(DB_DIR) {
                continue;
            }
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(relative);
            } else if kind.is_file() {
                let name = relative
                    .to_str()
                    .with_context(|| format!("{} is not UTF-8", relative.display()))?
                    .to_string();
                files.push((name, entry.path()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Options of a restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Replace the content of a data dir that is not empty.
    pub force: bool,
}

/// Restores the backup `from` into `data_dir`.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    options: &RestoreOptions,
) -> Result<(Header, Summary)> {
    let occupied = std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        if !options.force {
            bail!(
                "{} is not empty: restore into a new or empty directory, or pass --force to replace its content",
                data_dir.display()
            );
        }
        if data_dir.join(DB_DIR).exists() {
            // Refuses if a puppeteer holds it; closed again at once.
            drop(open_db(data_dir, false)?);
        }
    }
    let (header, expected) = check(from)?;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let name = data_dir
        .file_name()
        .context("the data dir needs a name")?
        .to_string_lossy()
        .into_owned();
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.restoring-"))
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let summary = write_restore(from, staging.path(), &header)?;
    if summary != expected {
        bail!("the backup read differently the second time: was it changed meanwhile?");
    }
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o700))?;
    if occupied {
        std::fs::remove_dir_all(data_dir)
            .with_context(|| format!("cannot remove the old content of {}", data_dir.display()))?;
    } else if data_dir.exists() {
        std::fs::remove_dir(data_dir)?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, data_dir)
        .with_context(|| format!("cannot move the restored data into {}", data_dir.display()))?;
    Ok((header, summary))
}

/// Reads a whole backup without writing anything: its header and what it
/// holds, or why it cannot be used.
pub fn check(from: &Path) -> Result<(Header, Summary)> {
    let mut reader = open_backup(from)?;
    let header = read_header(&mut reader)?;
    let summary = read_records(&mut reader, &mut |_| Ok(()))?;
    Ok((header, summary))
}

fn write_restore(from: &Path, dir: &Path, header: &Header) -> Result<Summary> {
    let mut reader = open_backup(from)?;
    read_header(&mut reader)?;
    let db = open_db(dir, false)?;
    let mut tree: Option<Vec<u8>> = None;
    let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let summary = read_records(&mut reader, &mut |record| {
        match record {
            Record::Tree(name) => {
                if let Some(t) = &tree {
                    db.insert(t, &std::mem::take(&mut batch))?;
                }
                tree = Some(name);
            }
            Record::Entry(k, v) => {
                batch.push((k, v));
                if batch.len() >= BATCH {
                    let t = tree.as_ref().context("an entry before any tree")?;
                    db.insert(t, &std::mem::take(&mut batch))?;
                }
            }
            Record::File {
                path,
                mode,
                content,
            } => {
                let target = dir.join(&path);
                if let Some(parent) = target.parent() {
                    // Owner only, as the puppeteer makes them (tls/ holds keys).
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)?;
                }
                let mut file = File::create(&target)
                    .with_context(|| format!("cannot write {}", target.display()))?;
                io::copy(content, &mut file)?;
                file.sync_all()?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(())
    })?;
    if let Some(t) = &tree {
        db.insert(t, &batch)?;
    }
    db.advance_ids_past(header.next_id)?;
    db.flush()?;
    Ok(summary)
}

fn open_backup(from: &Path) -> Result<Hashing<BufReader<File>>> {
    let file = File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    Ok(Hashing::new(BufReader::new(file)))
}

fn read_header(r: &mut Hashing<BufReader<File>>) -> Result<Header> {
    let mut magic = [0u8; 16];
    r.read_exact(&mut magic)
        .map_err(|_| anyhow::anyhow!("not a Geppetto backup (too short)"))?;
    if &magic != MAGIC {
        bail!("not a Geppetto backup (no GEPPETTO-BACKUP header)");
    }
    let format = read_u32(r)?;
    if format != FORMAT_VERSION {
        bail!(
            "backup format version {format}: this puppeteer reads version {FORMAT_VERSION}; use the puppeteer version that made it"
        );
    }
    let header: Header = serde_json::from_slice(&read_bytes(r, 1 << 20)?)
        .map_err(|e| anyhow::anyhow!("the backup header is corrupt: {e}"))?;
    // Older schemas are upgraded when the restored database is first
    // opened (2 to 3: jobs' run lists become an index).
    if !(OLDEST_SCHEMA..=RawDb::current_schema()).contains(&header.schema_version) {
        bail!(
            "the backup holds a database of schema version {} (puppeteer {}); this puppeteer reads versions {OLDEST_SCHEMA} to {}",
            header.schema_version,
            header.puppeteer_version,
            RawDb::current_schema()
        );
    }
    Ok(header)
}

enum Record<'a> {
    Tree(Vec<u8>),
    Entry(Vec<u8>, Vec<u8>),
    File {
        path: PathBuf,
        mode: u32,
        content: &'a mut dyn Read,
    },
}

/// Reads records up to the end mark, handing each to `each`, and checks the
/// count, the checksum and that nothing follows.
fn read_records(
    r: &mut Hashing<BufReader<File>>,
    each: &mut dyn FnMut(Record<'_>) -> Result<()>,
) -> Result<Summary> {
    let truncated = |e: io::Error| -> anyhow::Error {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            anyhow::anyhow!("the backup is truncated (it ends before its end mark)")
        } else {
            e.into()
        }
    };
    let mut summary = Summary::default();
    let mut records = 0u64;
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(truncated)?;
        match &tag {
            b"T" => {
                let name = read_bytes(r, 4096).map_err(|e| e.context("a tree name"))?;
                summary.trees += 1;
                each(Record::Tree(name))?;
            }
            b"K" => {
                let k = read_bytes(r, MAX_ENTRY)?;
                let v = read_bytes(r, MAX_ENTRY)?;
                summary.entries += 1;
                each(Record::Entry(k, v))?;
            }
            b"F" => {
                let path = safe_path(&read_bytes(r, 4096)?)?;
                let mode = read_u32(r)? & 0o777;
                let len = read_u64(r)?;
                let mut content = (&mut *r).take(len);
                each(Record::File {
                    path,
                    mode,
                    content: &mut content,
                })?;
                // Whatever the handler left unread still counts in the hash.
                io::copy(&mut content, &mut io::sink())?;
                if content.limit() != 0 {
                    return Err(truncated(io::ErrorKind::UnexpectedEof.into()));
                }
                summary.files += 1;
                summary.file_bytes += len;
            }
            b"Z" => {
                let count = read_u64(r).map_err(|e| e.context("the end mark"))?;
                let computed = r.hasher.clone().finalize();
                let mut stored = [0u8; 32];
                r.inner.read_exact(&mut stored).map_err(truncated)?;
                if computed.as_slice() != stored {
                    bail!("the backup is corrupt: its checksum does not match its content");
                }
                if count != records {
                    bail!(
                        "the backup is corrupt: it announces {count} records and holds {records}"
                    );
                }
                let mut rest = [0u8; 1];
                if r.inner.read(&mut rest)? != 0 {
                    bail!("the backup is corrupt: there are bytes after its end mark");
                }
                return Ok(summary);
            }
            other => bail!(
                "the backup is corrupt: unknown record tag {:#04x} after {records} records",
                other[0]
            ),
        }
        records += 1;
    }
}

/// A relative path of plain components, or a refusal.
fn safe_path(bytes: &[u8]) -> Result<PathBuf> {
    let text =
        std::str::from_utf8(bytes).context("the backup is corrupt: a file name is not UTF-8")?;
    let path = PathBuf::from(text);
    let plain = !text.is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().next() != Some(Component::Normal(DB_DIR.as_ref()));
    if !plain {
        bail!("the backup is corrupt: unsafe file name {text:?}");
    }
    Ok(path)
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let n = u32::try_from(bytes.len()).map_err(|_| io::Error::other("record too large"))?;
    out.write_all(&n.to_be_bytes())?;
    out.write_all(bytes)
}

fn read_u32(r: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(eof)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(eof)?;
    Ok(u64::from_be_bytes(b))
}

fn read_bytes(r: &mut impl Read, max: u32) -> Result<Vec<u8>> {
    let n = read_u32(r)?;
    if n > max {
        bail!("the backup is corrupt: a record claims {n} bytes");
    }
    let mut bytes = vec![0; n as usize];
    r.read_exact(&mut bytes).map_err(eof)?;
    Ok(bytes)
}

fn eof(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        anyhow::anyhow!("the backup is truncated (it ends before its end mark)")
    } else {
        e.into()
    }
}

/// Compacts a data dir offline: a backup into a file beside it, restored
/// over it. sled reuses freed space but rarely gives it back to the file
/// system; a rewrite holds only live data. Returns the database sizes
/// before and after.
pub fn compact(data_dir: &Path) -> Result<(u64, u64)> {
    let before = crate::store::dir_bytes(&data_dir.join(DB_DIR));
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = tempfile::Builder::new()
        .prefix(".geppetto-compact-")
        .tempfile_in(parent)?;
    backup(data_dir, file.path())?;
    restore(file.path(), data_dir, &RestoreOptions { force: true })?;
    let after = crate::store::dir_bytes(&data_dir.join(DB_DIR));
    Ok((before, after))
}

/// Passes bytes through while hashing them.
struct Hashing<T> {
    inner: T,
    hasher: Sha256,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }
}

impl<T: Write> Write for Hashing<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Hashing<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// One side of a migration: a sled data dir, or a PostgreSQL database.
#[derive(Clone, Debug)]
pub enum Location {
    DataDir(PathBuf),
    Postgres {
        url: String,
        password: Option<String>,
        ca_file: Option<PathBuf>,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::DataDir(dir) => write!(f, "the data dir {}", dir.display()),
            Location::Postgres { .. } => f.write_str("the PostgreSQL database"),
        }
    }
}

impl Location {
    /// `postgres://…` (or `postgresql://…`) is a database, anything else a
    /// data dir.
    pub fn parse(text: &str, password: Option<String>, ca_file: Option<PathBuf>) -> Location {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Location::Postgres {
                url: text.to_string(),
                password,
                ca_file,
            }
        } else {
            Location::DataDir(PathBuf::from(text))
        }
    }

    fn open(&self) -> Result<crate::store::Store> {
        match self {
            Location::DataDir(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                crate::store::Store::open(&dir.join(DB_DIR))
                    .with_context(|| format!("cannot open the database in {}", dir.display()))
            }
            Location::Postgres {
                url,
                password,
                ca_file,
            } => crate::store::Store::open_postgres_with(
                url,
                password.as_deref(),
                ca_file.as_deref(),
            )
            .context("cannot open the PostgreSQL store"),
        }
    }
}

/// What a migration moved and checked.
#[derive(Debug)]
pub struct Migrated {
    pub trees: Vec<crate::store::TreeCheck>,
    /// Artifact contents moved, each checked against its hash.
    pub contents: usize,
}

/// Moves a whole installation from one engine to the other (offline: no
/// puppeteer may use either side), then checks every tree (counts and
/// hashes, see `store/migrate.rs`) and every artifact's content (its
/// hash). The destination must be new or empty. Nothing is removed from
/// the source.
pub fn migrate(from: &Location, to: &Location, mut progress: impl FnMut(&str)) -> Result<Migrated> {
    let sled_to_pg = match (from, to) {
        (Location::DataDir(_), Location::Postgres { .. }) => true,
        (Location::Postgres { .. }, Location::DataDir(_)) => false,
        (Location::DataDir(_), Location::DataDir(_)) => {
            bail!("both sides are data dirs: use `puppeteer backup` and `puppeteer restore`")
        }
        _ => bail!("both sides are PostgreSQL databases: use pg_dump and pg_restore"),
    };
    let source = from.open()?;
    let dest = to.open()?;
    progress(&format!("copying the records from {from} to {to}"));
    source
        .copy_records_into(&dest, |tree, n| progress(&format!("  {tree}: {n} records")))
        .with_context(|| format!("cannot copy into {to}"))?;
    let contents = if sled_to_pg {
        let Location::DataDir(dir) = from else {
            unreachable!()
        };
        contents_into_store(&dir.join("artifacts"), &dest)?
    } else {
        let Location::DataDir(dir) = to else {
            unreachable!()
        };
        contents_into_files(&source, dir)?
    };
    progress(&format!(
        "  artifact contents: {contents}, each checked against its hash"
    ));
    let (ours, theirs) = (source.record_checks()?, dest.record_checks()?);
    for (a, b) in ours.iter().zip(&theirs) {
        if a != b {
            bail!(
                "the check failed for {}: {} records (sha256 {}) in the source, {} (sha256 {}) in the destination; the destination is incomplete, do not use it",
                a.tree,
                a.records,
                a.sha256,
                b.records,
                b.sha256
            );
        }
    }
    Ok(Migrated {
        trees: ours,
        contents,
    })
}

/// Published artifact files (named by their SHA-256) into a store's chunks.
fn contents_into_store(dir: &Path, dest: &crate::store::Store) -> Result<usize> {
    let mut moved = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() || crate::artifact::check_sha256(&name).is_err() {
            continue;
        }
        let mut file = File::open(entry.path())?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; crate::store::CONTENT_CHUNK];
        let mut at = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            dest.put_content_chunk(&name, at, &buf[..n])?;
            at += n as u64;
        }
        if hex::encode(hash.finalize()) != name {
            bail!(
                "the artifact file {} does not hash to its name: the data dir is damaged",
                entry.path().display()
            );
        }
        dest.finish_content(&name, at)?;
        moved += 1;
    }
    Ok(moved)
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A store's chunks of content into artifact files, each checked.
fn contents_into_files(source: &crate::store::Store, dir: &Path) -> Result<usize> {
    let blobs = crate::blobs::Blobs::open(dir)?;
    let contents = source.stored_contents()?;
    for (sha, size) in &contents {
        let chunks = source
            .content_chunks(sha)
            .map(|c| c.map_err(|e| io::Error::other(e.to_string())));
        if !blobs.install(sha, *size, chunks)? {
            bail!("the stored content {sha} does not hash to its name: the database is damaged");
        }
    }
    Ok(contents.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir_with_state() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = crate::store::Store::open(&data.join(DB_DIR)).unwrap();
        for _ in 0..5 {
            store.next_seq().unwrap();
        }
        drop(store);
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::write(data.join("tls/ca.pem"), "CA").unwrap();
        std::fs::write(data.join("admin-token"), "secret").unwrap();
        std::fs::set_permissions(
            data.join("admin-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_backup_round_trips_and_damage_is_refused() {
        let dir = data_dir_with_state();
        let data = dir.path().join("data");
        let file = dir.path().join("backup.gpb");
        let made = backup(&data, &file).unwrap();
        assert_eq!(made.files, 2);
        let (header, checked) = check(&file).unwrap();
        assert_eq!(checked, made);
        assert!(header.next_id >= 5);

        let restored = dir.path().join("restored");
        restore(&file, &restored, &RestoreOptions::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(restored.join("admin-token")).unwrap(),
            "secret"
        );
        let mode = std::fs::metadata(restored.join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // The backup holds keys and tokens: owner only, and so is tls/.
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&restored.join("tls")), 0o700);
        let store = crate::store::Store::open(&restored.join(DB_DIR)).unwrap();
        assert!(
            store.next_seq().unwrap() > header.next_id,
            "ids never repeat"
        );
        drop(store);

        // Not into a non-empty dir without --force; with it, fine.
        let err = restore(&file, &restored, &RestoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        restore(&file, &restored, &RestoreOptions { force: true }).unwrap();

        let bytes = std::fs::read(&file).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        for (what, damaged) in [
            ("truncated", bytes[..bytes.len() - 40].to_vec()),
            ("truncated", bytes[..bytes.len() / 2].to_vec()),
            ("checksum", {
                let mut b = bytes.clone();
                let i = b.len() - 60;
                b[i] ^= 0x55;
                b
            }),
            ("not a Geppetto backup", b"hello".to_vec()),
        ] {
            let bad = dir.path().join("bad.gpb");
            std::fs::write(&bad, &damaged).unwrap();
            let err = restore(&bad, &elsewhere, &RestoreOptions::default()).unwrap_err();
            assert!(format!("{err:#}").contains(what), "{what}: {err:#}");
            assert!(!elsewhere.exists(), "nothing written");
        }
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(safe_path(b"tls/ca.pem").is_ok());
        for bad in [&b"../x"[..], b"/etc/passwd", b"db/conf", b"", b"a/../../b"] {
            assert!(safe_path(bad).is_err(), "{bad:?}");
        }
    }
}
