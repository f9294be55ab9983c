//! Artifact content in a shared store, for a cluster's nodes.
//!
//! On one node, artifact content lives in files of the data dir (`blobs`).
//! Nodes of a cluster have data dirs of their own, so a shared store also
//! keeps the bytes: an upload's chunks as they arrive (`upload_chunks`,
//! keyed by upload id and offset: an upload begun through one node can go
//! on through another), and published content (`contents`, keyed by hash
//! and offset, in chunks of at most [`CONTENT_CHUNK`]) with its size in
//! `content_sizes`, written last: content without its size is incomplete
//! and never read. Each node keeps a local copy of what it serves, made
//! from these and checked against the hash (see `app/content.rs`).

use super::keys::{prefix_of, seq_key, seq_of};
use super::kv::Batch;
use super::{Result, Store};

/// Bytes per stored chunk of published content.
pub const CONTENT_CHUNK: usize = 1024 * 1024;

impl Store {
    /// Keeps `data`, received at offset `at` of an upload.
    pub fn put_upload_chunk(&self, upload_id: &str, at: u64, data: &[u8]) -> Result<()> {
        self.upload_chunks.insert(seq_key(upload_id, at), data)?;
        Ok(())
    }

    /// An upload's chunks in order, with their offsets.
    pub fn upload_chunks(
        &self,
        upload_id: &str,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>)>> + '_ {
        self.upload_chunks
            .scan_prefix(prefix_of(upload_id))
            .map(|kv| kv.map(|(k, v)| (seq_of(&k), v.to_vec())))
    }

    /// Forgets an upload's chunks.
    pub fn discard_upload_chunks(&self, upload_id: &str) -> Result<()> {
        let mut batch = Batch::default();
        for kv in self.upload_chunks.scan_prefix(prefix_of(upload_id)) {
            batch.remove(kv?.0);
        }
        self.upload_chunks.apply_batch(batch)
    }

    /// Stores one chunk of published content (sizes last: see
    /// [`Store::finish_content`]).
    pub fn put_content_chunk(&self, sha256: &str, at: u64, data: &[u8]) -> Result<()> {
        self.contents.insert(seq_key(sha256, at), data)?;
        Ok(())
    }

    /// Marks content complete: `size` bytes are stored.
    pub fn finish_content(&self, sha256: &str, size: u64) -> Result<()> {
        self.content_sizes
            .insert(sha256.as_bytes(), &size.to_be_bytes())?;
        Ok(())
    }

    /// The size of complete stored content.
    pub fn content_size(&self, sha256: &str) -> Result<Option<u64>> {
        Ok(self
            .content_sizes
            .get(sha256.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Stored content's chunks in order.
    pub fn content_chunks(&self, sha256: &str) -> impl Iterator<Item = Result<Vec<u8>>> + '_ {
        self.contents
            .scan_prefix(prefix_of(sha256))
            .map(|kv| kv.map(|(_, v)| v.to_vec()))
    }

    /// Forgets stored content (its size first: never half there).
    pub fn remove_stored_content(&self, sha256: &str) -> Result<()> {
        self.content_sizes.remove(sha256.as_bytes())?;
        let mut batch = Batch::default();
        for kv in self.contents.scan_prefix(prefix_of(sha256)) {
            batch.remove(kv?.0);
        }
        self.contents.apply_batch(batch)
    }
}
