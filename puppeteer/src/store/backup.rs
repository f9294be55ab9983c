//! Raw access to every tree, for backups: a consistent dump of a database
//! no one else has open, and the load of such a dump into a fresh one.
//!
//! The dump is generic (every tree sled holds, whatever its name), so trees
//! added later are backed up without a change here. sled's id generator
//! (behind [`Store::next_seq`]) lives outside the trees: its position is
//! saved and restored too, so numbers handed out after a restore never
//! repeat one already stored.

use std::path::Path;

use super::{Result, SCHEMA_VERSION, StoreError};

/// Whether an error says the database is held by another process.
pub fn is_locked(e: &StoreError) -> bool {
    matches!(e, StoreError::Locked(_))
        || matches!(e, StoreError::Sled(sled::Error::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock"))
}

/// A database opened for a dump or a load, held by nobody else.
pub struct RawDb {
    db: sled::Db,
}

impl std::fmt::Debug for RawDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDb").finish_non_exhaustive()
    }
}

impl RawDb {
    /// Opens an existing database; fails if it is missing or in use.
    pub fn open_existing(path: &Path) -> Result<Self> {
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Err(StoreError::NotFound {
                kind: "database",
                id: path.display().to_string(),
            });
        }
        Self::open(path)
    }

    /// Opens (or creates) a database without looking at its content. As
    /// [`super::Store::open`], a database still held by a store of this
    /// process being dropped is waited for a few seconds (its lock goes
    /// with its last thread): a backup right after a stop found it "in use".
    pub fn open(path: &Path) -> Result<Self> {
        let deadline = std::time::Instant::now() + super::LOCK_PATIENCE;
        loop {
            match Self::open_once(path) {
                Err(e) if is_locked(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self> {
        let _opening = super::opening();
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::LowSpace)
            .open()?;
        Ok(RawDb { db })
    }

    /// The schema version written in the database, if any.
    pub fn schema_version(&self) -> Result<Option<u32>> {
        let meta = self.db.open_tree("meta")?;
        Ok(meta
            .get("schema_version")?
            .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes)))
    }

    /// The names of every tree, sorted.
    pub fn tree_names(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<Vec<u8>> = self
            .db
            .tree_names()
            .into_iter()
            .map(|n| n.to_vec())
            .collect();
        names.sort();
        names
    }

    /// Every entry of a tree, in key order.
    pub fn entries(&self, tree: &[u8]) -> Result<impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>>> {
        let tree = self.db.open_tree(tree)?;
        Ok(tree.iter().map(|kv| {
            kv.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(StoreError::from)
        }))
    }

    /// Writes entries into a tree (one batch).
    pub fn insert(&self, tree: &[u8], entries: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let tree = self.db.open_tree(tree)?;
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            batch.insert(k.as_slice(), v.as_slice());
        }
        tree.apply_batch(batch)?;
        Ok(())
    }

    /// A number above every id handed out so far (it consumes one).
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()?)
    }

    /// Moves the id generator past `id`.
    pub fn advance_ids_past(&self, id: u64) -> Result<()> {
        while self.db.generate_id()? < id {}
        Ok(())
    }

    /// Everything written is on disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The schema this build reads.
    pub fn current_schema() -> u32 {
        SCHEMA_VERSION
    }
}
