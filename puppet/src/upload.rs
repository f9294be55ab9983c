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
    loop {
        let available = *progress.borrow_and_update();
        if committed >= available {
            let writer_gone = tokio::select! {
                changed = progress.changed() => changed.is_err(),
                _ = stop.cancelled() => return Err(CallError::Stopped),
            };
            if writer_gone && committed >= *progress.borrow() {
                return Ok(committed);
            }
            continue;
        }
        let want = usize::try_from(available - committed)
            .unwrap_or(chunk)
            .min(chunk);
        let data = match read_chunk(spool, committed, want).await {
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
        match target.append(client, committed, data, stop).await {
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
