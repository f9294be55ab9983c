//! Store calls on the async runtime: which run inline, which go to the
//! blocking pool.
//!
//! The store is synchronous (sled answers from its page cache in
//! microseconds, and a miss reads the disk). A call that runs inline holds
//! one of the runtime's worker threads, two on the machines we size for,
//! and every held poll, handshake and report waits behind it. So:
//!
//! - **Inline**: calls whose cost the one request bounds: a point read or
//!   write, a transaction over one run, job or puppet, a list of at most a
//!   page, a scan of one puppet's or one job's keys.
//! - **On the blocking pool, through [`blocking`]**: calls whose cost grows
//!   with the fleet or the history: every unfinished run, every puppet,
//!   retention and pruning, metrics rendering, backups, hashing artifact
//!   content, and [`crate::store::Store::flush`] (which waits for the disk).
//!
//! A new store call is placed by that rule, and the review checks it.

/// Runs `f` on tokio's blocking pool and waits for it; a panic in `f`
/// resumes here, as if `f` had run inline.
pub async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
