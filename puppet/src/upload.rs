//! Streams a run's spool to the puppeteer with `AppendLog`.
//!
//! Output is sent as soon as it exists: each call carries everything the
//! spool holds beyond what the server has committed, up to [`MAX_CHUNK`], so
//! a live `logs --follow` sees lines as they are printed and a busy run is
//! batched into large chunks. The server's `committed` answer is the truth:
//! the next chunk starts there, whatever was sent before.
//!
//! The chunk size adapts to the link: each failed try of a chunk halves it
//! (down to [`MIN_CHUNK`]), each acknowledged one doubles it again (up to
//! [`MAX_CHUNK`]). On a link whose connections die before a full chunk can
//! cross (a middlebox closing connections after a few seconds, a slow uplink)
//! the upload would otherwise resend the same large chunk forever.
//!
//! Logs are text and compress well (see BENCHMARKS.md, "Compression"), so
//! their chunks travel gzip-compressed by default. Only this client
//! compresses: on the idle poll, compression headers would cost more than
//! they save.

use std::path::Path;

use geppetto_proto::v1::AppendLogRequest;
use tokio::sync::watch;
use tokio_util::bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::config::Compression;
use crate::rpc::{self, CALL_TIMEOUT, CallError, Client};
use crate::spool::read_chunk;

/// The largest chunk sent in one call.
pub const MAX_CHUNK: usize = 256 * 1024;
/// The smallest chunk a failing link shrinks the chunks to.
pub const MIN_CHUNK: usize = 4 * 1024;

/// How many times in a row a refused chunk makes the uploader ask the
/// server where it stands, before it gives up on the log.
const MAX_RESYNCS: u32 = 3;

/// The client for log uploads: sends `AppendLog` compressed and accepts
/// compressed answers, unless compression is off. A puppeteer that does not
/// accept gzip answers `Unimplemented`, which is not retried: turn
/// compression off for it (`--compression none`).
pub fn log_client(client: &Client, compression: Compression) -> Client {
    match compression {
        Compression::Gzip => client
            .clone()
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        Compression::None => client.clone(),
    }
}

/// One run attempt's log on the server.
#[derive(Clone, Debug)]
pub struct LogTarget {
    pub run_id: String,
    pub attempt: u32,
    /// What the server keeps of the output (`None`: all of it).
    pub limit: Option<LogLimit>,
}

/// The server's log limit for a run, as its assignment tells it: the
/// first `head` and the last `tail` bytes are kept, the middle dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLimit {
    pub head: u64,
    pub tail: u64,
}

impl LogLimit {
    /// The limit an assignment names, if any.
    pub fn of(assignment: &geppetto_proto::v1::Assignment) -> Option<Self> {
        (assignment.log_head > 0 || assignment.log_tail > 0).then_some(LogLimit {
            head: assignment.log_head,
            tail: assignment.log_tail,
        })
    }
}

/// What of the spool to send next, under the server's log limit: the chunk
/// starts at `from`, after `skipped` bytes left out, and may go up to `end`
/// (`from >= end`: nothing to send now). Pure.
///
/// Only what will be kept crosses the link: the head as it comes (it is
/// always kept); past the head nothing more until the run ended (the bytes
/// after it may end up in the dropped middle), then the rest if the whole
/// output fits in the limit, or else only the last `tail` bytes, skipping
/// the middle.
pub fn next_span(
    limit: Option<LogLimit>,
    committed: u64,
    available: u64,
    finished: bool,
) -> (u64, u64, u64) {
    let Some(limit) = limit else {
        return (committed, 0, available);
    };
    if committed < limit.head {
        return (committed, 0, available.min(limit.head));
    }
    if !finished {
        return (committed, 0, committed);
    }
    if available <= limit.head.saturating_add(limit.tail) {
        return (committed, 0, available);
    }
    let tail_from = available - limit.tail;
    if committed < tail_from {
        (tail_from, tail_from - committed, available)
    } else {
        (committed, 0, available)
    }
}

impl LogTarget {
    /// Appends `data` at `offset` until answered, returning the server's
    /// committed length and the size of the chunk that got through: each
    /// failed try sends a smaller prefix of `data`.
    pub(crate) async fn append(
        &self,
        client: &Client,
        offset: u64,
        data: Bytes,
        stop: &CancellationToken,
    ) -> Result<(u64, usize), CallError> {
        self.append_after(client, offset, 0, data, stop).await
    }

    /// [`LogTarget::append`] of a chunk that follows `skipped` bytes left
    /// out under the log limit.
    pub(crate) async fn append_after(
        &self,
        client: &Client,
        offset: u64,
        skipped: u64,
        data: Bytes,
        stop: &CancellationToken,
    ) -> Result<(u64, usize), CallError> {
        let mut size = data.len();
        let mut sent = size;
        let answer = rpc::retry("AppendLog", stop, || {
            let mut client = client.clone();
            sent = size;
            let message = AppendLogRequest {
                run_id: self.run_id.clone(),
                attempt: self.attempt,
                offset,
                data: data.slice(..size),
                skipped,
            };
            // Should this try fail, the next one sends half as much.
            size = (size / 2).max(MIN_CHUNK).min(data.len());
            async move {
                rpc::with_deadline(
                    CALL_TIMEOUT,
                    client.append_log(rpc::request(message, CALL_TIMEOUT)),
                )
                .await
            }
        })
        .await?;
        Ok((answer.committed, sent))
    }

    /// Asks how many bytes the server holds: an empty append at offset 0
    /// can never leave a gap, and its answer is the committed length.
    pub async fn committed(
        &self,
        client: &Client,
        stop: &CancellationToken,
    ) -> Result<u64, CallError> {
        Ok(self.append(client, 0, Bytes::new(), stop).await?.0)
    }
}

/// Uploads the spool from `committed` on, following `progress` (the spool's
/// length) until its writer is gone and everything is acknowledged.
/// Returns the committed length.
pub async fn stream_log(
    client: &Client,
    target: &LogTarget,
    spool: &Path,
    mut progress: watch::Receiver<u64>,
    mut committed: u64,
    stop: &CancellationToken,
) -> Result<u64, CallError> {
    let mut resyncs = 0;
    let mut chunk = MAX_CHUNK;
    let mut writer_gone = false;
    loop {
        let available = *progress.borrow_and_update();
        let (from, skipped, end) = next_span(target.limit, committed, available, writer_gone);
        if from >= end {
            if writer_gone {
                return Ok(committed);
            }
            writer_gone = tokio::select! {
                changed = progress.changed() => changed.is_err(),
                _ = stop.cancelled() => return Err(CallError::Stopped),
            };
            continue;
        }
        if skipped > 0 {
            tracing::info!(run_id = %target.run_id, skipped, kept_tail = end - from, "output past the log limit: sending only its tail");
        }
        let want = usize::try_from(end - from).unwrap_or(chunk).min(chunk);
        let data = match read_chunk(spool, from, want).await {
            Ok(data) if !data.is_empty() => Bytes::from(data),
            Ok(_) => {
                tracing::error!(run_id = %target.run_id, "the spool is shorter than expected; the log ends here");
                return Ok(committed);
            }
            Err(e) => {
                tracing::error!(run_id = %target.run_id, error = %e, "cannot read the spool; the log ends here");
                return Ok(committed);
            }
        };
        let tried = data.len();
        match target.append_after(client, from, skipped, data, stop).await {
            Ok((server_committed, sent)) => {
                committed = server_committed;
                resyncs = 0;
                // Shrunk by failures: go on at the size that got through;
                // otherwise grow back towards the largest chunk.
                chunk = if sent < tried {
                    sent.max(MIN_CHUNK)
                } else {
                    chunk.saturating_mul(2).min(MAX_CHUNK)
                };
            }
            Err(CallError::Refused(status))
                if status.code() == Code::FailedPrecondition && resyncs < MAX_RESYNCS =>
            {
                // The server's log does not end where we thought (a gap or
                // an overlap it refuses): ask where it stands and go on from there.
                tracing::warn!(run_id = %target.run_id, error = status.message(), "chunk refused; resuming from the server's committed length");
                resyncs += 1;
                committed = target.committed(client, stop).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Option<LogLimit> = Some(LogLimit { head: 10, tail: 10 });

    #[test]
    fn without_a_limit_everything_goes_as_it_comes() {
        assert_eq!(next_span(None, 5, 1000, false), (5, 0, 1000));
    }

    #[test]
    fn the_head_goes_as_it_comes_the_rest_when_the_run_ended() {
        assert_eq!(next_span(LIMIT, 0, 7, false), (0, 0, 7));
        assert_eq!(next_span(LIMIT, 4, 50, false), (4, 0, 10));
        // Past the head, nothing while the run goes on: it may end up in
        // the dropped middle.
        assert_eq!(next_span(LIMIT, 10, 15, false), (10, 0, 10));
        assert_eq!(next_span(LIMIT, 10, 50, false), (10, 0, 10));
        // Ended within the limit: the rest, all kept.
        assert_eq!(next_span(LIMIT, 10, 15, true), (10, 0, 15));
        // Ended past it: the last 10 bytes, skipping the middle.
        assert_eq!(next_span(LIMIT, 10, 50, true), (40, 30, 50));
        // Part of the tail acknowledged: the rest, no skip.
        assert_eq!(next_span(LIMIT, 44, 50, true), (44, 0, 50));
        assert_eq!(next_span(LIMIT, 50, 50, true), (50, 0, 50));
    }

    /// Over any output length, exactly what is kept crosses the link, and
    /// all of it.
    #[test]
    fn only_what_will_be_kept_crosses_the_link() {
        let limit = LogLimit { head: 8, tail: 8 };
        for total in 0..60u64 {
            // The run writes one byte at a time; the uploader sends all it
            // may after each, then once more after the end.
            let (mut committed, mut sent, mut spans) = (0u64, 0u64, Vec::new());
            let mut send = |available: u64, finished: bool, committed: &mut u64| loop {
                let (from, _, end) = next_span(Some(limit), *committed, available, finished);
                if from >= end {
                    break;
                }
                sent += end - from;
                spans.push((from, end));
                *committed = end;
            };
            for available in 1..=total {
                send(available, false, &mut committed);
            }
            send(total, true, &mut committed);
            assert_eq!(committed, total, "everything acknowledged at {total}");
            let kept = total.min(limit.head + limit.tail);
            assert_eq!(sent, kept, "total {total}");
            let covered = |b: u64| spans.iter().any(|(f, e)| *f <= b && b < *e);
            for b in (0..total.min(limit.head)).chain(total.saturating_sub(limit.tail)..total) {
                assert!(covered(b), "byte {b} of {total} not sent");
            }
        }
    }
}
