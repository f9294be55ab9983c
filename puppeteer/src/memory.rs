//! Giving memory the puppeteer freed back to the system.
//!
//! glibc's allocator keeps what a burst freed inside its heaps: after a
//! listing of ten thousand puppets, or a fleet's TLS handshakes when it
//! reconnects at once, the resident size stays at the burst's height although
//! the memory is free. Every [`TRIM_EVERY`] the puppeteer asks it to return
//! the whole free pages (`malloc_trim`), on a blocking thread: resident size
//! then follows what the puppeteer holds. Memory still in use is not touched.
//! Elsewhere than glibc this does nothing.
//!
//! The one `unsafe` call of the puppeteer is here, next to why it is sound.
#![allow(unsafe_code)]

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free memory is given back.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Gives free memory back every [`TRIM_EVERY`] until `shutdown`.
pub async fn run_trimmer(shutdown: CancellationToken) {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                let began = std::time::Instant::now();
                if tokio::task::spawn_blocking(trim).await.is_ok() {
                    tracing::trace!(took = ?began.elapsed(), "free memory given back");
                }
            }
        }
    }
}

/// Returns glibc's free pages to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim(3) only takes the allocator's own locks; 0 asks
    // for no padding to be kept at the top of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_keeps_memory_in_use() {
        let kept: Vec<Vec<u8>> = (0..1000u32).map(|i| vec![(i % 251) as u8; 4096]).collect();
        drop((0..1000).map(|_| vec![7u8; 4096]).collect::<Vec<_>>());
        super::trim();
        for (i, block) in kept.iter().enumerate() {
            assert!(block.iter().all(|&b| b == (i as u32 % 251) as u8));
        }
    }
}
