//! Raft snapshots as files: a snapshot is a checkpoint of the store (taken between two apply
//! batches, so it holds exactly the applied log id it is labelled with) packed into one archive
//! (`store::snapshot`'s format, SHA-256 checked on unpack), plus a JSON file with openraft's
//! snapshot metadata (last log id, membership). Only the newest snapshot is kept.
//!
//! Installing a received snapshot replaces the store's contents. To survive a crash part-way,
//! the archive is first kept under its final name and an `installing` marker (naming it, with
//! its metadata) written; on start, a marker left behind means the install is done again from
//! the kept archive.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use openraft::storage::RaftSnapshotBuilder;
use openraft::StorageIOError;
use store::{Store, Writer};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::meta;
use crate::snapshot_file::SnapshotFile;
use crate::types::{LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const RECEIVING: &str = "receiving.part";
/// Names the archive being installed while an install is under way.
pub const INSTALL_MARKER: &str = "installing";
const RESTORE_DIR: &str = "restore.tmp";

fn snap_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

fn name_of(last: Option<LogId>) -> String {
    let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
    format!("{term:016x}-{index:016x}")
}

/// The snapshot directory, and the watermark of how far the store is durable (a snapshot's
/// checkpoint, or an installed snapshot, is).
#[derive(Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
    durable: Arc<watch::Sender<u64>>,
}

/// What the install marker records: the archive and its metadata.
#[derive(serde::Serialize, serde::Deserialize)]
struct Installing {
    name: String,
    meta: SnapshotMeta,
}

impl SnapshotFiles {
    pub fn open(dir: &Path, durable: watch::Sender<u64>) -> Result<SnapshotFiles, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            durable: Arc::new(durable),
        })
    }

    /// Records that the store holds everything up to log index `index` durably.
    pub fn advance_durable(&self, index: u64) {
        self.durable.send_if_modified(|d| {
            let advanced = index > *d;
            if advanced {
                *d = index;
            }
            advanced
        });
    }

    fn archive(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.snap"))
    }

    /// The newest complete snapshot's name and metadata.
    fn newest(&self) -> Result<Option<(String, SnapshotMeta)>, String> {
        let mut best: Option<String> = None;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| e.to_string())? {
            let name = entry.map_err(|e| e.to_string())?.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".meta")) else {
                continue;
            };
            if best.as_deref().is_none_or(|b| stem > b) {
                best = Some(stem.to_string());
            }
        }
        let Some(name) = best else { return Ok(None) };
        let bytes = meta::read(&self.dir, &format!("{name}.meta"))
            .map_err(|e| e.to_string())?
            .ok_or("snapshot metadata vanished")?;
        let m = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(Some((name, m)))
    }

    /// Records `name` as complete and removes every older snapshot.
    fn commit(&self, name: &str, m: &SnapshotMeta) -> Result<(), String> {
        let json = serde_json::to_vec(m).expect("snapshot metadata serializes");
        meta::write_atomically(&self.dir, &format!("{name}.meta"), &json)
            .map_err(|e| e.to_string())?;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| e.to_string())? {
            let entry = entry.map_err(|e| e.to_string())?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let stem = file.split('.').next().unwrap_or_default();
            let ours = file.ends_with(".snap") || file.ends_with(".meta");
            if ours && stem < name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    pub async fn current(&self) -> Result<Option<Snapshot>, StorageError> {
        let Some((name, m)) = self.newest().map_err(snap_err)? else {
            return Ok(None);
        };
        let file = SnapshotFile::open(&self.archive(&name))
            .await
            .map_err(snap_err)?;
        Ok(Some(Snapshot {
            meta: m,
            snapshot: Box::new(file),
        }))
    }

    pub async fn begin_receiving(&self) -> Result<Box<SnapshotFile>, StorageError> {
        let file = SnapshotFile::create(&self.dir.join(RECEIVING))
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    /// Installs a received snapshot into the store; see the module comment.
    pub async fn install(
        &self,
        m: &SnapshotMeta,
        mut file: Box<SnapshotFile>,
        writer: &mut Writer,
    ) -> Result<(), StorageError> {
        // The data is read back through the handle openraft gives, wherever it was written.
        file.flush().await.map_err(snap_err)?;
        file.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(snap_err)?;
        let name = name_of(m.last_log_id);
        let tmp = self.dir.join(format!("{name}.snap.tmp"));
        let mut out = SnapshotFile::create(&tmp).await.map_err(snap_err)?;
        tokio::io::copy(&mut *file, &mut out)
            .await
            .map_err(snap_err)?;
        out.sync_all().await.map_err(snap_err)?;
        drop((file, out));
        std::fs::rename(&tmp, self.archive(&name)).map_err(snap_err)?;
        let _ = std::fs::remove_file(self.dir.join(RECEIVING));
        let marker = serde_json::to_vec(&Installing {
            name: name.clone(),
            meta: m.clone(),
        })
        .expect("the marker serializes");
        meta::write_atomically(&self.dir, INSTALL_MARKER, &marker).map_err(snap_err)?;
        self.restore(&name, writer).map_err(snap_err)?;
        self.commit(&name, m).map_err(snap_err)?;
        std::fs::remove_file(self.dir.join(INSTALL_MARKER)).map_err(snap_err)?;
        self.advance_durable(m.last_log_id.map_or(0, |l| l.index));
        tracing::info!(snapshot = %name, revision = writer.revision(), "installed snapshot");
        Ok(())
    }

    fn restore(&self, name: &str, writer: &mut Writer) -> Result<(), String> {
        let tmp = self.dir.join(RESTORE_DIR);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| e.to_string())?;
        }
        store::snapshot::unpack(&self.archive(name), &tmp).map_err(|e| e.to_string())?;
        writer.restore_from(&tmp).map_err(|e| e.to_string())?;
        std::fs::remove_dir_all(&tmp).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Finishes an install a crash interrupted (see the module comment); returns whether
    /// there was one.
    pub fn finish_interrupted_install(&self, writer: &mut Writer) -> Result<bool, String> {
        let Some(marker) = meta::read(&self.dir, INSTALL_MARKER).map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let Installing { name, meta } =
            serde_json::from_slice(&marker).map_err(|e| e.to_string())?;
        tracing::warn!(snapshot = %name, "finishing an interrupted snapshot install");
        self.restore(&name, writer)?;
        self.commit(&name, &meta)?;
        std::fs::remove_file(self.dir.join(INSTALL_MARKER)).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// Builds one snapshot from a checkpoint taken when the builder was made.
pub struct SnapshotBuilder {
    files: SnapshotFiles,
    checkpoint: Result<PathBuf, String>,
    meta: SnapshotMeta,
}

impl SnapshotBuilder {
    /// Takes the checkpoint now (the caller is between two apply batches).
    pub fn new(
        files: SnapshotFiles,
        store: Store,
        applied: Option<LogId>,
        membership: StoredMembership,
    ) -> SnapshotBuilder {
        let name = name_of(applied);
        let dir = files.dir.join(format!("{name}.checkpoint"));
        let checkpoint = (|| {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
            }
            store.checkpoint(&dir).map_err(|e| e.to_string())?;
            Ok(dir)
        })();
        if checkpoint.is_ok() {
            // A checkpoint flushes the memtables: the store is durable up to `applied`.
            files.advance_durable(applied.map_or(0, |l| l.index));
        }
        SnapshotBuilder {
            files,
            checkpoint,
            meta: SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: name,
            },
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let checkpoint = self.checkpoint.clone().map_err(snap_err)?;
        let files = self.files.clone();
        let m = self.meta.clone();
        let name = m.snapshot_id.clone();
        let archive = files.archive(&name);
        let tmp = files.dir.join(format!("{name}.snap.tmp"));
        let size = crate::determinism::blocking(move || -> Result<u64, String> {
            let size = store::snapshot::pack(&checkpoint, &tmp).map_err(|e| e.to_string())?;
            std::fs::rename(&tmp, &archive).map_err(|e| e.to_string())?;
            std::fs::remove_dir_all(&checkpoint).map_err(|e| e.to_string())?;
            files.commit(&name, &m)?;
            Ok(size)
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        tracing::info!(snapshot = %self.meta.snapshot_id, bytes = size, "built snapshot");
        let file = SnapshotFile::open(&self.files.archive(&self.meta.snapshot_id))
            .await
            .map_err(snap_err)?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(file),
        })
    }
}
