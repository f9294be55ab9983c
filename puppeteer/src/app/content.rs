//! Artifact content, wherever it lives: files of this node's data dir
//! (`blobs`), and, on a cluster's shared store, the database too (see
//! `store/contents.rs`), so that any node can take an upload's next chunk
//! and serve any content. Every function here blocks (files, database):
//! call them on the blocking pool.
//!
//! On a shared store:
//! - a chunk is written to the store as well as to this node's partial
//!   file, before the upload's committed length moves;
//! - a commit rebuilds the partial file from the store's chunks (some may
//!   have reached other nodes), checks the hash as on one node, then stores
//!   the content in chunks, its size last, and drops the upload's chunks;
//! - a node asked for content it lacks makes its local copy from the
//!   store's, checked against the hash before it is served;
//! - content removed through one node leaves copies on the others: each
//!   node drops its copies of content the store no longer holds every
//!   [`super::cluster::TIDY_EVERY`] (copies younger than that are left, so
//!   content being published is never taken for removed).

use std::path::PathBuf;

use crate::store::{CONTENT_CHUNK, StoreError};

use super::AppState;

type Result<T> = std::result::Result<T, StoreError>;

fn files(e: std::io::Error) -> StoreError {
    StoreError::Files(e)
}

fn io(e: StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl AppState {
    /// Writes `data` at `at` of an upload.
    pub fn write_upload_chunk(&self, upload_id: &str, at: u64, data: &[u8]) -> Result<()> {
        self.blobs.write_chunk(upload_id, at, data).map_err(files)?;
        if self.store.is_shared() {
            self.store.put_upload_chunk(upload_id, at, data)?;
        }
        Ok(())
    }

    /// Checks a complete upload against its hash and publishes it; false
    /// (and the upload's bytes dropped) on a mismatch.
    pub fn publish_upload(&self, upload_id: &str, sha256: &str, size: u64) -> Result<bool> {
        if !self.store.is_shared() {
            return self.blobs.publish(upload_id, sha256, size).map_err(files);
        }
        if self.store.content_size(sha256)? == Some(size) {
            self.discard_upload(upload_id);
            return Ok(true);
        }
        let chunks = self.store.upload_chunks(upload_id).map(|c| c.map_err(io));
        self.blobs
            .rebuild_partial(upload_id, chunks)
            .map_err(files)?;
        if !self.blobs.publish(upload_id, sha256, size).map_err(files)? {
            self.store.discard_upload_chunks(upload_id)?;
            return Ok(false);
        }
        self.store_content(sha256, size)?;
        self.store.discard_upload_chunks(upload_id)?;
        Ok(true)
    }

    /// Copies published content from this node's file into the store.
    fn store_content(&self, sha256: &str, size: u64) -> Result<()> {
        use std::io::Read;
        let mut file = std::fs::File::open(self.blobs.content_path(sha256)).map_err(files)?;
        let mut at = 0u64;
        let mut buf = vec![0u8; CONTENT_CHUNK];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match file.read(&mut buf[filled..]).map_err(files)? {
                    0 => break,
                    n => filled += n,
                }
            }
            if filled == 0 {
                break;
            }
            self.store.put_content_chunk(sha256, at, &buf[..filled])?;
            at += filled as u64;
        }
        self.store.finish_content(sha256, size.max(at))
    }

    /// Whether the content is held (here, or in a shared store).
    pub fn content_held(&self, sha256: &str, size: u64) -> Result<bool> {
        Ok(self.blobs.has_content(sha256, size)
            || self.store.is_shared() && self.store.content_size(sha256)? == Some(size))
    }

    /// The local file of the content, made from the shared store's copy if
    /// this node lacks it. `NotFound` if nobody holds it.
    pub fn local_content(&self, sha256: &str, size: u64) -> Result<PathBuf> {
        let path = self.blobs.content_path(sha256);
        if self.blobs.has_content(sha256, size) || !self.store.is_shared() {
            return Ok(path);
        }
        if self.store.content_size(sha256)? != Some(size) {
            return Err(StoreError::NotFound {
                kind: "artifact content",
                id: sha256.to_string(),
            });
        }
        let chunks = self.store.content_chunks(sha256).map(|c| c.map_err(io));
        if !self.blobs.install(sha256, size, chunks).map_err(files)? {
            return Err(StoreError::Corrupt {
                key: format!("contents/{sha256}"),
                reason: "the stored chunks do not hash to their name".into(),
            });
        }
        Ok(path)
    }

    /// Removes content no artifact or task pins any more.
    pub fn remove_content(&self, sha256: &str) -> Result<()> {
        self.store.forget_copies(sha256)?;
        if self.store.is_shared() {
            self.store.remove_stored_content(sha256)?;
        }
        self.blobs.remove_content(sha256).map_err(files)
    }

    /// On a shared store, removes this node's copies (older than
    /// `older_than`) of content the store no longer holds: removed through
    /// another node. Returns how many.
    pub fn drop_removed_copies(&self, older_than: std::time::Duration) -> Result<usize> {
        if !self.store.is_shared() {
            return Ok(0);
        }
        let dropped = self
            .blobs
            .drop_copies(older_than, |sha| {
                self.store
                    .content_size(sha)
                    .map(|size| size.is_some())
                    .map_err(io)
            })
            .map_err(files)?;
        Ok(dropped.len())
    }

    /// Drops an upload's bytes.
    pub fn discard_upload(&self, upload_id: &str) {
        self.blobs.discard(upload_id);
        if self.store.is_shared()
            && let Err(e) = self.store.discard_upload_chunks(upload_id)
        {
            tracing::warn!(upload = upload_id, error = %e, "cannot drop an upload's stored chunks");
        }
    }
}
