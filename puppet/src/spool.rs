//! The spool: a run's output on disk until the puppeteer has acknowledged it.
//!
//! The child process writes its output straight into the spool file (it is
//! its stdout and stderr), so whatever it printed is on disk the moment
//! `write(2)` returns, even if the puppet is `kill -9`ed right after: there
//! is no pipe buffer in between to lose. The executor watches the file's
//! length and publishes it on a watch channel; the uploader reads from the
//! file at the offset the server has committed. Memory stays flat however
//! much a run prints, and the output survives a restart of the puppet.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// The writing end of a spool. Dropping it tells readers the output is complete.
#[derive(Debug)]
pub struct SpoolWriter {
    file: tokio::fs::File,
    path: std::path::PathBuf,
    len: u64,
    progress: watch::Sender<u64>,
}

impl SpoolWriter {
    /// Opens (creating, mode 0600) the spool for appending. The receiver
    /// sees the length of the spool after every append.
    pub async fn open(path: &Path) -> io::Result<(Self, watch::Receiver<u64>)> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await?;
        let len = file.metadata().await?.len();
        let (progress, receiver) = watch::channel(len);
        Ok((
            SpoolWriter {
                file,
                path: path.to_path_buf(),
                len,
                progress,
            },
            receiver,
        ))
    }

    /// Appends output and tells the readers.
    pub async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).await?;
        // tokio's File buffers a write in a background task; flushing makes
        // the bytes visible to readers of the path before they are told.
        self.file.flush().await?;
        self.len += data.len() as u64;
        self.progress.send_replace(self.len);
        Ok(())
    }

    /// A handle on the spool file, opened for appending, to give a child
    /// process as its stdout and stderr.
    pub fn child_output(&self) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new().append(true).open(&self.path)
    }

    /// Re-reads the length of the file (a child writes to it directly) and
    /// tells the readers when it grew.
    pub async fn refresh(&mut self) -> io::Result<u64> {
        let len = tokio::fs::metadata(&self.path).await?.len();
        if len > self.len {
            self.len = len;
            self.progress.send_replace(len);
        }
        Ok(self.len)
    }

    /// Bytes in the spool.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads up to `max` bytes of the spool at `offset` (fewer at its end).
pub async fn read_chunk(path: &Path, offset: u64, max: usize) -> io::Result<Vec<u8>> {
    let path: PathBuf = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let mut buf = vec![0u8; max];
        let mut filled = 0;
        while filled < max {
            let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf)
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_are_visible_to_readers_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.log");
        let (mut writer, progress) = SpoolWriter::open(&path).await.unwrap();
        writer.append(b"hello ").await.unwrap();
        writer.append(b"world").await.unwrap();
        assert_eq!(*progress.borrow(), 11);
        assert_eq!(read_chunk(&path, 0, 5).await.unwrap(), b"hello");
        assert_eq!(read_chunk(&path, 6, 100).await.unwrap(), b"world");
        assert!(read_chunk(&path, 11, 100).await.unwrap().is_empty());
        drop(writer);
        // Reopening continues at the end, as a restarted puppet would.
        let (writer, progress) = SpoolWriter::open(&path).await.unwrap();
        assert_eq!((writer.len(), *progress.borrow()), (11, 11));
    }
}
