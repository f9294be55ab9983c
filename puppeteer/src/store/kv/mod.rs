//! The two engines under the store, behind one ordered key-value interface.
//!
//! The store keeps its records in named trees of ordered byte keys (see the
//! table in `store/mod.rs`), and changes several trees at once in
//! transactions. This module is that interface, and the only code that
//! knows which engine holds the bytes:
//!
//! - **sled** (the default, `--data-dir`): a [`Tree`] is a sled tree and a
//!   transaction is a sled transaction over the trees it names;
//! - **PostgreSQL** (`--store postgres://…`, see `pg.rs`): a tree is a table
//!   `kv_<tree>(key bytea primary key, value bytea)`, and a transaction is a
//!   `SERIALIZABLE` PostgreSQL transaction, retried from the start on a
//!   serialization failure or a deadlock, exactly as sled reruns a
//!   transaction that met a concurrent one.
//!
//! Both engines order keys the same way (bytewise; `bytea` compares like
//! `memcmp`), so a range or prefix scan returns the same records in the same
//! order whichever engine answers. A transaction's closure may run more
//! than once: it must have no effect outside the trees it is given.
//!
//! Why serializable transactions rather than hand-placed row locks: every
//! rule the store keeps on one node (a resource's capacity, a run offered
//! once, an attempt fenced, token use counts, gap-free event ids) is
//! already written as "read, check, write" inside one transaction. Under
//! `SERIALIZABLE`, PostgreSQL guarantees that transactions from any number
//! of nodes have the effect of running one at a time, so each of those
//! rules holds across nodes with the code that keeps it on one. The price
//! is a retry when two transactions touch the same rows at once.

pub(crate) mod pg;

use std::ops::{Bound, RangeBounds};

use super::{Result, StoreError};

/// The bytes of a key or a value.
pub(crate) type Bytes = sled::IVec;

/// The database: the engine's handle.
#[derive(Clone)]
pub(crate) enum Db {
    Sled(sled::Db),
    Pg(std::sync::Arc<pg::Pg>),
}

impl Db {
    pub(crate) fn open_tree(&self, name: &'static str) -> Result<Tree> {
        Ok(match self {
            Db::Sled(db) => Tree::Sled(db.open_tree(name)?),
            Db::Pg(pg) => Tree::Pg(pg.table(name)?),
        })
    }

    /// A fresh number, increasing across restarts (and across nodes).
    pub(crate) fn generate_id(&self) -> Result<u64> {
        match self {
            Db::Sled(db) => Ok(db.generate_id()?),
            Db::Pg(pg) => pg.next_id(),
        }
    }

    /// Moves the id generator past `id`: the next id is greater.
    pub(crate) fn advance_ids_past(&self, id: u64) -> Result<()> {
        match self {
            Db::Sled(db) => {
                while db.generate_id()? <= id {}
                Ok(())
            }
            Db::Pg(pg) => pg.advance_ids_past(id),
        }
    }

    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        match self {
            Db::Sled(db) => Ok(db.size_on_disk()?),
            Db::Pg(pg) => pg.size(),
        }
    }

    /// Waits until every write so far is durable. PostgreSQL made each
    /// durable at its commit already.
    pub(crate) async fn flush(&self) -> Result<()> {
        match self {
            Db::Sled(db) => {
                db.flush_async().await?;
                Ok(())
            }
            Db::Pg(_) => Ok(()),
        }
    }

    pub(crate) fn flush_blocking(&self) -> Result<()> {
        match self {
            Db::Sled(db) => {
                db.flush()?;
                Ok(())
            }
            Db::Pg(_) => Ok(()),
        }
    }

    /// Milliseconds since the epoch: the database's clock when it is
    /// shared (one clock for every node), this machine's otherwise.
    pub(crate) fn now_ms(&self) -> Result<i64> {
        match self {
            Db::Sled(_) => Ok(crate::domain::Millis::now().0),
            Db::Pg(pg) => pg.now_ms(),
        }
    }

    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Db::Pg(_))
    }
}

/// One tree of ordered keys.
#[derive(Clone)]
pub(crate) enum Tree {
    Sled(sled::Tree),
    Pg(pg::Table),
}

impl Tree {
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        match self {
            Tree::Sled(t) => Ok(t.get(key)?),
            Tree::Pg(t) => t.get(key.as_ref()),
        }
    }

    /// Stores `value` under `key`; returns the value it replaced.
    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
    ) -> Result<Option<Bytes>> {
        match self {
            Tree::Sled(t) => Ok(t.insert(key, value)?),
            Tree::Pg(t) => t.insert(key.as_ref(), &value.into()),
        }
    }

    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        match self {
            Tree::Sled(t) => Ok(t.remove(key)?),
            Tree::Pg(t) => t.remove(key.as_ref()),
        }
    }

    /// Replaces the value under `key` only if it is still `old` (`None`:
    /// absent); `new` `None` removes it. True when it was replaced.
    pub(crate) fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<Bytes>,
    ) -> Result<bool> {
        match self {
            Tree::Sled(t) => Ok(t.compare_and_swap(key, old, new)?.is_ok()),
            Tree::Pg(t) => t.compare_and_swap(key, old, new.as_deref()),
        }
    }

    /// Applies the batch's writes at once (all or none).
    pub(crate) fn apply_batch(&self, batch: Batch) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                let mut b = sled::Batch::default();
                for (key, value) in batch.writes {
                    match value {
                        Some(v) => b.insert(key, v),
                        None => b.remove(key),
                    }
                }
                Ok(t.apply_batch(b)?)
            }
            Tree::Pg(t) => t.apply_batch(batch.writes),
        }
    }

    /// How many records the tree holds (a full count: not for hot paths).
    pub(crate) fn len(&self) -> Result<usize> {
        match self {
            Tree::Sled(t) => Ok(t.len()),
            Tree::Pg(t) => t.len(),
        }
    }

    /// Every record, in key order.
    pub(crate) fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The records whose keys fall in `range`, in key order.
    pub(crate) fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Iter {
        let lo = own(range.start_bound());
        let hi = own(range.end_bound());
        match self {
            Tree::Sled(t) => Iter::Sled {
                inner: t.range::<Vec<u8>, _>((lo, hi)),
                rev: false,
            },
            Tree::Pg(t) => Iter::Pg(t.scan(lo, hi)),
        }
    }

    /// The records whose keys start with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        let hi = match successor(prefix) {
            Some(next) => Bound::Excluded(next),
            None => Bound::Unbounded,
        };
        self.range::<Vec<u8>, _>((Bound::Included(prefix.to_vec()), hi))
    }
}

fn own<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest key greater than every key starting with `prefix` (None:
/// no such key, every key from `prefix` on starts with it).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last < u8::MAX {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

/// Writes to apply to one tree at once.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub(crate) fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.writes
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.writes.push((key.as_ref().to_vec(), None));
    }
}

/// Records in key order (or reverse order after [`Iter::rev`]).
pub(crate) enum Iter {
    Sled { inner: sled::Iter, rev: bool },
    Pg(pg::Scan),
}

impl Iter {
    /// The same records, last first. (An inherent method: it replaces
    /// `Iterator::rev`, and must be called before the first `next`.)
    pub(crate) fn rev(self) -> Self {
        match self {
            Iter::Sled { inner, rev } => Iter::Sled { inner, rev: !rev },
            Iter::Pg(scan) => Iter::Pg(scan.reversed()),
        }
    }

    /// The last record (call it on a fresh iterator, instead of `next`).
    pub(crate) fn next_back(&mut self) -> Option<Result<(Bytes, Bytes)>> {
        match self {
            Iter::Sled { inner, rev } => {
                let r = if *rev {
                    inner.next()
                } else {
                    inner.next_back()
                };
                r.map(|r| r.map_err(StoreError::from))
            }
            Iter::Pg(scan) => scan.next_back(),
        }
    }

    pub(crate) fn keys(self) -> impl Iterator<Item = Result<Bytes>> {
        self.map(|kv| kv.map(|(k, _)| k))
    }
}

impl Iterator for Iter {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Sled { inner, rev: false } => inner.next().map(|r| r.map_err(StoreError::from)),
            Iter::Sled { inner, rev: true } => {
                inner.next_back().map(|r| r.map_err(StoreError::from))
            }
            Iter::Pg(scan) => scan.next(),
        }
    }
}

/// Why a step of a transaction failed.
#[derive(Debug)]
pub(crate) enum TxError {
    /// The store's own refusal: the transaction is abandoned, nothing of
    /// it is kept, and the caller gets this error.
    Abort(StoreError),
    /// A concurrent transaction got in the way: run again from the start.
    Conflict,
    /// The engine failed: abandoned, reported as this error.
    Storage(StoreError),
}

pub(crate) type TxResult<T> = std::result::Result<T, TxError>;

impl From<sled::transaction::UnabortableTransactionError> for TxError {
    fn from(e: sled::transaction::UnabortableTransactionError) -> Self {
        match e {
            sled::transaction::UnabortableTransactionError::Conflict => TxError::Conflict,
            sled::transaction::UnabortableTransactionError::Storage(e) => {
                TxError::Storage(StoreError::Sled(e))
            }
        }
    }
}

/// Aborts a transaction with a store error.
pub(crate) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

/// One tree, seen from inside a transaction.
#[derive(Clone, Copy)]
pub(crate) enum TxTree<'a> {
    Sled(&'a sled::transaction::TransactionalTree),
    Pg(pg::TxTable<'a>),
}

impl TxTree<'_> {
    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> TxResult<Option<Bytes>> {
        match self {
            TxTree::Sled(t) => Ok(t.get(key)?),
            TxTree::Pg(t) => t.get(key.as_ref()),
        }
    }

    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<Bytes>,
    ) -> TxResult<Option<Bytes>> {
        match self {
            TxTree::Sled(t) => Ok(t.insert(key.as_ref(), value)?),
            TxTree::Pg(t) => t.insert(key.as_ref(), &value.into()),
        }
    }

    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> TxResult<Option<Bytes>> {
        match self {
            TxTree::Sled(t) => Ok(t.remove(key.as_ref())?),
            TxTree::Pg(t) => t.remove(key.as_ref()),
        }
    }
}

fn sled_trees<'t>(trees: &[&'t Tree]) -> Option<Vec<&'t sled::Tree>> {
    trees
        .iter()
        .map(|t| match t {
            Tree::Sled(t) => Some(t),
            Tree::Pg(_) => None,
        })
        .collect()
}

fn pg_tables<'t>(trees: &[&'t Tree]) -> Option<Vec<&'t pg::Table>> {
    trees
        .iter()
        .map(|t| match t {
            Tree::Pg(t) => Some(t),
            Tree::Sled(_) => None,
        })
        .collect()
}

/// Runs `body` as one transaction over `trees` (all of one engine), handing
/// it one view per tree.
fn run_transaction<A>(trees: &[&Tree], body: impl Fn(&[TxTree<'_>]) -> TxResult<A>) -> Result<A> {
    use sled::Transactional as _;
    use sled::transaction::{ConflictableTransactionError as C, TransactionError};
    if let Some(sled) = sled_trees(trees) {
        let _gate = super::OPEN_GATE
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = sled.as_slice().transaction(|views| {
            let views: Vec<TxTree<'_>> = views.iter().map(TxTree::Sled).collect();
            body(&views).map_err(|e| match e {
                TxError::Abort(e) => C::Abort(e),
                TxError::Conflict => C::Conflict,
                TxError::Storage(StoreError::Sled(e)) => C::Storage(e),
                TxError::Storage(e) => C::Abort(e),
            })
        });
        return match result {
            Ok(a) => Ok(a),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        };
    }
    let tables = pg_tables(trees).expect("a transaction over trees of one engine");
    pg::transaction(&tables, |tx| {
        let views: Vec<TxTree<'_>> = tables
            .iter()
            .map(|table| TxTree::Pg(tx.table(table)))
            .collect();
        body(&views)
    })
}

/// Trees that change together in one transaction: a tree, or a tuple of
/// them. The closure sees one [`TxTree`] per tree, in the same shape.
pub(crate) trait Transactional {
    type View<'a>;

    fn transaction<A>(&self, f: impl Fn(&Self::View<'_>) -> TxResult<A>) -> Result<A>;
}

impl Transactional for Tree {
    type View<'a> = TxTree<'a>;

    fn transaction<A>(&self, f: impl Fn(&TxTree<'_>) -> TxResult<A>) -> Result<A> {
        run_transaction(&[self], |views| f(&views[0]))
    }
}

impl Transactional for &Tree {
    type View<'a> = TxTree<'a>;

    fn transaction<A>(&self, f: impl Fn(&TxTree<'_>) -> TxResult<A>) -> Result<A> {
        run_transaction(&[*self], |views| f(&views[0]))
    }
}

/// `$sub`, once per `$_t`: spells a tuple type of as many elements.
macro_rules! each {
    ($_t:tt, $sub:ty) => {
        $sub
    };
}

macro_rules! transactional_tuple {
    ($($i:tt),+) => {
        impl Transactional for ($(each!($i, &Tree),)+) {
            type View<'a> = ($(each!($i, TxTree<'a>),)+);

            fn transaction<A>(&self, f: impl Fn(&Self::View<'_>) -> TxResult<A>) -> Result<A> {
                run_transaction(&[$(self.$i),+], |views| f(&($(views[$i],)+)))
            }
        }
    };
}

transactional_tuple!(0, 1);
transactional_tuple!(0, 1, 2);
transactional_tuple!(0, 1, 2, 3);
transactional_tuple!(0, 1, 2, 3, 4);
transactional_tuple!(0, 1, 2, 3, 4, 5);
transactional_tuple!(0, 1, 2, 3, 4, 5, 6);
transactional_tuple!(0, 1, 2, 3, 4, 5, 6, 7);
transactional_tuple!(0, 1, 2, 3, 4, 5, 6, 7, 8);
