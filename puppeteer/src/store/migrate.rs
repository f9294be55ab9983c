//! Moving a whole installation between engines (`puppeteer migrate`):
//! every record of every tree copied as it is, then checked.
//!
//! The check: for each tree, the number of records and a SHA-256 over every
//! key and value in key order (lengths included, so no two different
//! contents hash alike), computed on both stores after the copy; the
//! migration succeeds only if every pair agrees. What describes a running
//! cluster rather than the installation (the leader's lease, the nodes'
//! records, the cluster's TLS files) is neither copied nor checked.
//! Artifact content travels separately (files on sled, chunks on
//! PostgreSQL: see `puppeteer migrate` in main.rs), checked by its hash.

use sha2::{Digest, Sha256};

use super::kv::{Batch, Tree};
use super::{Result, Store, StoreError, TREES};

/// Records copied per batch.
const BATCH: usize = 1000;

/// The trees of artifact content on a shared store: moved as content (and
/// checked by hash), not as records.
const CONTENT_TREES: [&str; 3] = ["upload_chunks", "contents", "content_sizes"];

/// One tree's records: how many, and the hash of them all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeCheck {
    pub tree: &'static str,
    pub records: u64,
    pub sha256: String,
}

/// Whether a `meta` record belongs to a running cluster, not to the data.
fn runtime_only(tree: &str, key: &[u8]) -> bool {
    tree == "meta"
        && (key == b"node_lease" || key == b"cluster_tls" || key.starts_with(b"node\x01"))
}

impl Store {
    fn tree(&self, name: &str) -> &Tree {
        match name {
            "meta" => &self.meta,
            "credentials" => &self.credentials,
            "puppets" => &self.puppets,
            "seen" => &self.seen,
            "enroll_tokens" => &self.enroll_tokens,
            "enroll_secrets" => &self.enroll_secrets,
            "tasks" => &self.tasks,
            "jobs" => &self.jobs,
            "job_order" => &self.job_order,
            "runs" => &self.runs,
            "queue" => &self.queue,
            "puppet_runs" => &self.puppet_runs,
            "logs" => &self.logs,
            "users" => &self.users,
            "api_tokens" => &self.api_tokens,
            "audit" => &self.audit,
            "resources" => &self.resources,
            "resource_usage" => &self.resource_usage,
            "groups" => &self.groups,
            "events" => &self.events,
            "rules" => &self.rules,
            "deliveries" => &self.deliveries,
            "artifacts" => &self.artifacts,
            "uploads" => &self.uploads,
            "upload_chunks" => &self.upload_chunks,
            "contents" => &self.contents,
            "content_sizes" => &self.content_sizes,
            "job_runs" => &self.job_runs,
            "job_open" => &self.job_open,
            "copies" => &self.copies,
            other => unreachable!("no tree {other}"),
        }
    }

    /// The trees `migrate` copies record by record.
    fn record_trees() -> impl Iterator<Item = &'static str> {
        TREES.into_iter().filter(|t| !CONTENT_TREES.contains(t))
    }

    /// Whether this store holds nothing but its schema version (a new
    /// database or data dir): only such a store is migrated into.
    pub fn holds_nothing(&self) -> Result<bool> {
        for name in TREES {
            for kv in self.tree(name).iter() {
                let (key, _) = kv?;
                if !(name == "meta" && (&key[..] == b"schema_version" || runtime_only(name, &key)))
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Copies every record into `to` (which holds nothing), calling
    /// `progress` with each tree and its count; then moves `to`'s id
    /// generator past this one's.
    pub fn copy_records_into(&self, to: &Store, mut progress: impl FnMut(&str, u64)) -> Result<()> {
        if !to.holds_nothing()? {
            return Err(StoreError::Conflict(
                "the destination already holds data: migrate into a new, empty database or data dir"
                    .into(),
            ));
        }
        for name in Self::record_trees() {
            let (from, into) = (self.tree(name), to.tree(name));
            let mut batch = Batch::default();
            let (mut pending, mut copied) = (0, 0u64);
            for kv in from.iter() {
                let (key, value) = kv?;
                if runtime_only(name, &key) {
                    continue;
                }
                batch.insert(&key, &value);
                pending += 1;
                copied += 1;
                if pending == BATCH {
                    into.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
            into.apply_batch(batch)?;
            progress(name, copied);
        }
        to.db.advance_ids_past(self.next_seq()?)?;
        Ok(())
    }

    /// Each record tree's count and hash (see the module doc).
    pub fn record_checks(&self) -> Result<Vec<TreeCheck>> {
        Self::record_trees()
            .map(|name| {
                let mut hash = Sha256::new();
                let mut records = 0;
                for kv in self.tree(name).iter() {
                    let (key, value) = kv?;
                    if runtime_only(name, &key) {
                        continue;
                    }
                    hash.update((key.len() as u64).to_be_bytes());
                    hash.update(&key);
                    hash.update((value.len() as u64).to_be_bytes());
                    hash.update(&value);
                    records += 1;
                }
                Ok(TreeCheck {
                    tree: name,
                    records,
                    sha256: hex::encode(hash.finalize()),
                })
            })
            .collect()
    }

    /// The content this store keeps itself (a shared store's), by hash.
    pub fn stored_contents(&self) -> Result<Vec<(String, u64)>> {
        self.content_sizes
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let size = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
                Ok((String::from_utf8_lossy(&k).into_owned(), size))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing;

    #[test]
    fn records_move_between_engines_and_check_equal() {
        let mut stores: Vec<_> = testing::stores().collect();
        if stores.len() < 2 {
            return;
        }
        let (_pg_engine, pg) = stores.pop().unwrap();
        let (_sled_engine, sled) = stores.pop().unwrap();
        sled.put_upload_chunk("upl-x", 0, b"abc").unwrap();
        sled.create_job(&testing::job(), &[testing::run("run-a")])
            .unwrap();
        let before = sled.record_checks().unwrap();
        sled.copy_records_into(&pg, |_, _| {}).unwrap();
        assert_eq!(pg.record_checks().unwrap(), before);
        assert!(before.iter().any(|c| c.tree == "runs" && c.records == 1));
        assert!(pg.next_seq().unwrap() > sled.next_seq().unwrap() - 1);
        // Not into a store holding data.
        assert!(sled.copy_records_into(&pg, |_, _| {}).is_err());
        // And back, into a fresh sled.
        let (_dir, back) = testing::temp_store();
        pg.copy_records_into(&back, |_, _| {}).unwrap();
        assert_eq!(back.record_checks().unwrap(), before);
    }
}
