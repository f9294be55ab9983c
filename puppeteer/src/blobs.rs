//! Artifact content on disk, outside the database: `<data>/artifacts/<sha256>`
//! for published content, `<data>/artifacts/uploads/<upload id>` for uploads
//! in progress.
//!
//! Invariants: a content file is only ever created by renaming a complete
//! upload whose SHA-256 was checked, so a file named by a hash holds exactly
//! that content; an upload's partial file is synced before the store records
//! its new committed length, so the store never claims bytes the disk lacks.
//! The metadata (names, uploads, committed lengths) lives in the store.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where artifact content lives.
#[derive(Clone, Debug)]
pub struct Blobs {
    root: PathBuf,
}

impl Blobs {
    /// Opens (creating it if needed) the content directory under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("artifacts");
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(Blobs { root })
    }

    /// The file of published content.
    pub fn content_path(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256)
    }

    fn partial_path(&self, upload_id: &str) -> PathBuf {
        self.root.join("uploads").join(upload_id)
    }

    /// Whether the content is held, with the right size.
    pub fn has_content(&self, sha256: &str, size: u64) -> bool {
        std::fs::metadata(self.content_path(sha256)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Writes `data` at `committed` in the upload's partial file (cutting
    /// off anything past `committed` first, left there by a write the store
    /// never recorded) and syncs it. Blocking.
    pub fn write_chunk(&self, upload_id: &str, committed: u64, data: &[u8]) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.partial_path(upload_id))?;
        file.set_len(committed)?;
        file.seek(SeekFrom::Start(committed))?;
        file.write_all(data)?;
        file.sync_data()
    }

    /// Checks the upload's partial file against `sha256` and `size` and, if
    /// it matches, publishes it as content. Returns `Ok(false)` on a
    /// mismatch (the partial file is then removed). Blocking.
    pub fn publish(&self, upload_id: &str, sha256: &str, size: u64) -> std::io::Result<bool> {
        if self.has_content(sha256, size) {
            self.discard(upload_id);
            return Ok(true);
        }
        let partial = self.partial_path(upload_id);
        let (found, len) = match std::fs::File::open(&partial) {
            Ok(file) => hash_file(file)?,
            // An empty artifact needs no chunk, hence no file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && size == 0 => {
                std::fs::File::create(&partial)?.sync_all()?;
                hash_file(std::fs::File::open(&partial)?)?
            }
            Err(e) => return Err(e),
        };
        if found != sha256 || len != size {
            self.discard(upload_id);
            return Ok(false);
        }
        std::fs::rename(&partial, self.content_path(sha256))?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(true)
    }

    /// Writes an upload's partial file afresh from its chunks (offset,
    /// bytes), synced: for an upload whose chunks another node of a cluster
    /// received. Blocking.
    pub fn rebuild_partial(
        &self,
        upload_id: &str,
        chunks: impl Iterator<Item = std::io::Result<(u64, Vec<u8>)>>,
    ) -> std::io::Result<()> {
        let mut file = std::fs::File::create(self.partial_path(upload_id))?;
        for chunk in chunks {
            let (at, data) = chunk?;
            file.seek(SeekFrom::Start(at))?;
            file.write_all(&data)?;
        }
        file.sync_data()
    }

    /// Installs content from its chunks (kept by a cluster's shared
    /// store), checked against `sha256` and `size` like an upload: false,
    /// and nothing installed, if they do not match. Blocking.
    pub fn install(
        &self,
        sha256: &str,
        size: u64,
        chunks: impl Iterator<Item = std::io::Result<Vec<u8>>>,
    ) -> std::io::Result<bool> {
        let id = format!("install-{sha256}-{:016x}", rand::random::<u64>());
        let written = (|| {
            let mut file = std::fs::File::create(self.partial_path(&id))?;
            for chunk in chunks {
                file.write_all(&chunk?)?;
            }
            file.sync_data()
        })();
        if let Err(e) = written {
            self.discard(&id);
            return Err(e);
        }
        self.publish(&id, sha256, size)
    }

    /// Removes an upload's partial file, if any.
    pub fn discard(&self, upload_id: &str) {
        let _ = std::fs::remove_file(self.partial_path(upload_id));
    }

    /// The ids of the partial files of uploads in progress.
    pub fn partial_ids(&self) -> std::io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.root.join("uploads"))? {
            if let Some(name) = entry?.file_name().to_str() {
                ids.push(name.to_string());
            }
        }
        Ok(ids)
    }

    /// Removes the content files at least `older_than` old that `keep`
    /// does not want (a cluster node's copies of content removed through
    /// another node); returns their hashes. Younger files are left: one
    /// may be content being published right now, not yet in the store.
    pub fn drop_copies(
        &self,
        older_than: std::time::Duration,
        mut keep: impl FnMut(&str) -> std::io::Result<bool>,
    ) -> std::io::Result<Vec<String>> {
        let mut dropped = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_content = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            let meta = entry.metadata()?;
            let age = meta
                .modified()?
                .elapsed()
                .unwrap_or(std::time::Duration::ZERO);
            if !is_content || !meta.is_file() || age < older_than || keep(&name)? {
                continue;
            }
            self.remove_content(&name)?;
            dropped.push(name);
        }
        Ok(dropped)
    }

    /// Removes published content no name or task version pins any more.
    pub fn remove_content(&self, sha256: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.content_path(sha256)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The lowercase hex SHA-256 of a file, and its length.
pub fn hash_file(mut file: std::fs::File) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn chunks_resume_at_the_committed_length_and_publish_checks_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        blobs.write_chunk("upl-1", 0, b"hello ").unwrap();
        // A write the store never recorded is cut off by the next one.
        blobs.write_chunk("upl-1", 6, b"garbage").unwrap();
        blobs.write_chunk("upl-1", 6, b"world").unwrap();
        let good = sha(b"hello world");
        assert!(!blobs.publish("upl-1", &sha(b"other"), 11).unwrap());
        assert!(!blobs.has_content(&good, 11));

        blobs.write_chunk("upl-2", 0, b"hello world").unwrap();
        assert!(blobs.publish("upl-2", &good, 11).unwrap());
        assert!(blobs.has_content(&good, 11));
        assert_eq!(
            std::fs::read(blobs.content_path(&good)).unwrap(),
            b"hello world"
        );
        // Content already held publishes without a file.
        assert!(blobs.publish("upl-3", &good, 11).unwrap());
        blobs.remove_content(&good).unwrap();
        assert!(!blobs.has_content(&good, 11));
        blobs.remove_content(&good).unwrap();
    }

    #[test]
    fn copies_are_dropped_when_unwanted_and_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let (kept, gone) = (sha(b"kept"), sha(b"gone"));
        for (id, data) in [("upl-1", b"kept"), ("upl-2", b"gone")] {
            blobs.write_chunk(id, 0, data).unwrap();
            blobs.publish(id, &sha(data), 4).unwrap();
        }
        blobs.write_chunk("upl-3", 0, b"partial").unwrap();
        // Young files stay whatever `keep` says.
        let hour = std::time::Duration::from_secs(3600);
        assert!(blobs.drop_copies(hour, |_| Ok(false)).unwrap().is_empty());
        let dropped = blobs
            .drop_copies(std::time::Duration::ZERO, |h| Ok(h == kept))
            .unwrap();
        assert_eq!(dropped, [gone.as_str()]);
        assert!(blobs.has_content(&kept, 4) && !blobs.has_content(&gone, 4));
        assert_eq!(blobs.partial_ids().unwrap(), ["upl-3"], "uploads untouched");
    }
}
