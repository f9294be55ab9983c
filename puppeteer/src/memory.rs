//! Giving memory the puppeteer freed back to the system.
//!
//! glibc's allocator keeps what a burst freed inside its heaps: after a
//! listing of ten thousand puppets, or a fleet's TLS handshakes when it
//! reconnects at once, the resident size stays at the burst's height although
//! the memory is free. Every [`TRIM_EVERY`] the puppeteer asks it to return
//! the whole free pages (`malloc_trim`), on a blocking thread: resident size
//! then follows what the puppeteer holds. Memory still in use is not touched.
//!
//! Large blocks (the answer to a listing of every puppet, a big log read)
//! are mapped on their own and unmapped when freed ([`configure`]). glibc
//! would otherwise raise that threshold each time such a block is freed,
//! and serve the next ones from its heap, which then stays as high as the
//! largest of them once connections' small blocks have been placed above:
//! puppets listed every second while 10,000 of them connected left the
//! puppeteer 34 MB larger; with the threshold fixed (and the listing built
//! on a blocking thread), 2 MB.
//!
//! Elsewhere than glibc this does nothing.
//!
//! The puppeteer's only `unsafe` calls are here, each next to why it is sound.
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

/// Blocks this large or larger are mapped on their own: glibc's default
/// threshold, here kept fixed.
pub const MMAP_THRESHOLD: usize = 128 * 1024;

/// Sets how the allocator serves large blocks (see the module's doc). Called
/// once at start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) takes the allocator's own lock; the value is in
    // the range it accepts (at most HEAP_MAX_SIZE / 2, 32 MiB here).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
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
