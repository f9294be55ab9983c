//! Group commit: concurrent callers of [`Store::flush`] share one flush.
//!
//! Each caller takes a ticket after its writes. If no flush is running, it
//! leads one that covers every ticket taken so far; otherwise it waits for
//! the running flush to end, and then either finds its ticket covered by a
//! later one or leads the next. A flush started before a ticket was taken
//! never answers that ticket: its writes might have missed it. So N
//! acknowledgements arriving together cost about two flushes, not N.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Tickets handed out and made durable.
#[derive(Debug, Default)]
struct Tickets {
    /// The last ticket handed out.
    taken: u64,
    /// Every ticket up to this one is durable.
    flushed: u64,
    /// A leader is flushing now.
    in_flight: bool,
}

/// The shared state of the group commit. A std mutex: it is held only to
/// read and update three numbers, never across an `.await`.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    tickets: Mutex<Tickets>,
    done: Notify,
    /// Flushes actually run (for the benchmark and tests).
    flushes: std::sync::atomic::AtomicU64,
}

/// Ends a leadership even if the leader's future is dropped mid-flush, so
/// the waiters elect another instead of waiting forever.
struct Leading<'a> {
    group: &'a GroupCommit,
    covers: Option<u64>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut t = self.group.tickets.lock().unwrap_or_else(|e| e.into_inner());
        t.in_flight = false;
        if let Some(covers) = self.covers {
            t.flushed = t.flushed.max(covers);
        }
        drop(t);
        self.group.done.notify_waiters();
    }
}

impl GroupCommit {
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes every write that happened before this call durable, with
    /// `flush` as the flush operation.
    pub(crate) async fn flush<F, Fut, E>(self: &Arc<Self>, flush: F) -> Result<(), E>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let ticket = {
            let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
            t.taken += 1;
            t.taken
        };
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let covers = {
                let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
                if t.flushed >= ticket {
                    return Ok(());
                }
                if t.in_flight {
                    None
                } else {
                    t.in_flight = true;
                    Some(t.taken)
                }
            };
            if let Some(covers) = covers {
                let mut leading = Leading {
                    group: self,
                    covers: None,
                };
                self.flushes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let result = flush().await;
                if result.is_ok() {
                    leading.covers = Some(covers);
                }
                return result;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_flushes() {
        let group = Arc::new(GroupCommit::default());
        let calls = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let group = group.clone();
            let calls = calls.clone();
            tasks.spawn(async move {
                group
                    .flush(|| {
                        let calls = calls.clone();
                        async move {
                            calls.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            Ok::<(), ()>(())
                        }
                    })
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        let flushes = calls.load(Ordering::Relaxed);
        assert!(
            (1..=3).contains(&flushes),
            "{flushes} flushes for 50 callers"
        );
        assert_eq!(group.flushes(), flushes);
    }

    #[tokio::test]
    async fn a_failed_flush_is_retried_by_the_next_caller() {
        let group = Arc::new(GroupCommit::default());
        let failed = group.flush(|| async { Err::<(), _>("disk full") }).await;
        assert_eq!(failed, Err("disk full"));
        group.flush(|| async { Ok::<(), &str>(()) }).await.unwrap();
        assert_eq!(group.flushes(), 2);
    }
}
