//! The file a snapshot travels in (openraft's `SnapshotData`): read in chunks by the leader,
//! written chunk by chunk by the follower.
//!
//! On a real server it is a `tokio::fs::File`, whose reads and writes run on blocking threads.
//! In a simulation (see [`crate::determinism`]) the same calls run inline on the simulation's
//! thread, so a snapshot transfer takes the same course in every replay.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// A snapshot archive, open for reading and (when receiving) writing.
#[derive(Debug)]
pub enum SnapshotFile {
    Threaded(tokio::fs::File),
    /// A file read and written inline; `seek` holds the result of the last `start_seek`.
    Inline {
        file: std::fs::File,
        seek: Option<io::Result<u64>>,
    },
}

impl SnapshotFile {
    /// Opens `path` as `options` say.
    pub async fn open_with(path: &Path, options: &std::fs::OpenOptions) -> io::Result<Self> {
        if crate::determinism::simulated() {
            let file = options.open(path)?;
            return Ok(SnapshotFile::Inline { file, seek: None });
        }
        let options = tokio::fs::OpenOptions::from(options.clone());
        Ok(SnapshotFile::Threaded(options.open(path).await?))
    }

    /// Opens `path` for reading.
    pub async fn open(path: &Path) -> io::Result<Self> {
        Self::open_with(path, std::fs::OpenOptions::new().read(true)).await
    }

    /// Creates (or truncates) `path` for reading and writing.
    pub async fn create(path: &Path) -> io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(true);
        Self::open_with(path, &options).await
    }

    /// Makes what was written durable (fsync).
    pub async fn sync_all(&mut self) -> io::Result<()> {
        match self {
            SnapshotFile::Threaded(f) => f.sync_all().await,
            SnapshotFile::Inline { file, .. } => file.sync_all(),
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotFile::Threaded(f) => Pin::new(f).poll_read(cx, buf),
            SnapshotFile::Inline { file, .. } => {
                let n = file.read(buf.initialize_unfilled())?;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SnapshotFile::Threaded(f) => Pin::new(f).poll_write(cx, data),
            SnapshotFile::Inline { file, .. } => Poll::Ready(file.write(data)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotFile::Threaded(f) => Pin::new(f).poll_flush(cx),
            SnapshotFile::Inline { file, .. } => Poll::Ready(file.flush()),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotFile::Threaded(f) => Pin::new(f).poll_shutdown(cx),
            SnapshotFile::Inline { file, .. } => Poll::Ready(file.flush()),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            SnapshotFile::Threaded(f) => Pin::new(f).start_seek(position),
            SnapshotFile::Inline { file, seek } => {
                *seek = Some(file.seek(position));
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            SnapshotFile::Threaded(f) => Pin::new(f).poll_complete(cx),
            // With no seek started, `poll_complete` reports the current position.
            SnapshotFile::Inline { file, seek } => {
                Poll::Ready(seek.take().unwrap_or_else(|| file.stream_position()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    async fn round_trip(path: &Path) -> Vec<u8> {
        let mut f = SnapshotFile::create(path).await.unwrap();
        f.write_all(b"snapshot bytes").await.unwrap();
        f.sync_all().await.unwrap();
        assert_eq!(f.seek(SeekFrom::Start(9)).await.unwrap(), 9);
        let mut out = Vec::new();
        f.read_to_end(&mut out).await.unwrap();
        let mut again = SnapshotFile::open(path).await.unwrap();
        let mut all = Vec::new();
        again.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"snapshot bytes");
        out
    }

    #[tokio::test]
    async fn both_kinds_write_seek_and_read_alike() {
        let dir = tempfile::tempdir().unwrap();
        let threaded = round_trip(&dir.path().join("a")).await;
        let sim = crate::determinism::enter(1, || std::time::Duration::ZERO);
        let inline = round_trip(&dir.path().join("b")).await;
        let kind = SnapshotFile::open(&dir.path().join("b")).await.unwrap();
        drop(sim);
        assert!(matches!(kind, SnapshotFile::Inline { .. }));
        assert_eq!(threaded, b"bytes");
        assert_eq!(inline, threaded);
    }
}
