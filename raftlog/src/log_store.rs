//! openraft's log storage over the [`Wal`]: `append` writes the entries it is given and makes
//! them durable with one fdatasync before telling openraft they are flushed. (openraft 0.9
//! waits for each flush before its next append, so group commit comes from what one append
//! carries: an entry holds a whole batch of proposals, and a follower appends every entry of an
//! AppendEntries message at once.) Recent entries are kept decoded in memory for replication;
//! older ones are read back from the segments (their CRC checked again).
//!
//! Beside the log, three small state files (written atomically, see [`crate::meta`]): `vote`,
//! `committed` and `purged` (the last log id removed after a snapshot). `committed` is only a
//! hint for replaying faster after a restart, so it is persisted at most once a second; the
//! vote is persisted before `save_vote` returns. A purge waits until the state machine's store
//! is durable past the purged entries (the `durable` watermark the state machine advances).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::meta;
use crate::proposal::{decode_wal_entry, encode_wal_entry};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::{Wal, WalError, WalOptions};

/// Decoded entries kept in memory (the newest), for followers catching up: at most this many,
/// and at most `CACHE_BYTES_MAX` of encoded entries (one entry can carry a thousand writes).
const CACHE_ENTRIES_MAX: usize = 16 * 1024;
const CACHE_BYTES_MAX: usize = 16 << 20;
/// `committed` is a hint; rewriting it costs two fsyncs, so at most this often.
const COMMITTED_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";

struct State {
    wal: Wal,
    /// Entries by index, with their encoded sizes.
    cache: BTreeMap<u64, (Entry, usize)>,
    cache_bytes: usize,
    /// Newest log id removed from the log (entries at or below it are gone even if a kept
    /// segment still holds them).
    purged: Option<LogId>,
    last: Option<LogId>,
    committed: Option<LogId>,
    committed_persisted: Option<(Option<LogId>, Instant)>,
}

/// The log storage; cheap to clone (the clones share one log).
#[derive(Clone)]
pub struct LogStore {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    /// How far the state machine's store is durable (see [`LogStore::purge`]).
    durable: watch::Receiver<u64>,
}

/// A `durable` watermark for a log whose purges need not wait (tests of the log alone).
pub fn always_durable() -> watch::Receiver<u64> {
    let (tx, rx) = watch::channel(u64::MAX);
    // The receiver keeps the value after the sender is gone.
    drop(tx);
    rx
}

fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, String> {
    match meta::read(dir, name).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", dir.join(name).display())),
    }
}

fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), meta::MetaError> {
    let bytes = serde_json::to_vec(value).expect("log ids and votes serialize");
    meta::write_atomically(dir, name, &bytes)
}

impl LogStore {
    /// Opens the log in `dir`, recovering it (see [`Wal::open`]).
    pub fn open(dir: &Path, durable: watch::Receiver<u64>) -> Result<LogStore, String> {
        let mut wal = Wal::open(dir, WalOptions::default()).map_err(|e| e.to_string())?;
        let purged: Option<LogId> = read_json(dir, PURGED_FILE)?;
        if let Some(p) = purged {
            if wal.last_index().is_some_and(|l| l <= p.index) {
                // A purge recorded but not carried out before a crash: finish it.
                wal.purge_to(p.index).map_err(|e| e.to_string())?;
            }
        }
        let committed: Option<LogId> = read_json(dir, COMMITTED_FILE)?;
        let mut last = purged;
        if let Some(index) = wal
            .last_index()
            .filter(|&i| purged.is_none_or(|p| i > p.index))
        {
            let bytes = wal
                .get(index)
                .map_err(|e| e.to_string())?
                .ok_or("the last log entry vanished")?;
            last = Some(
                decode_wal_entry(index, &bytes)
                    .map_err(|e| e.to_string())?
                    .log_id,
            );
        }
        // `committed` may name entries that were accepted but never made durable here (a
        // follower learns the commit index before its own flush): never past the log's end.
        let committed = match (committed, last) {
            (Some(c), Some(l)) if c.index > l.index => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        };
        let state = Arc::new(Mutex::new(State {
            wal,
            cache: BTreeMap::new(),
            cache_bytes: 0,
            purged,
            last,
            committed,
            committed_persisted: None,
        }));
        Ok(LogStore {
            dir: dir.to_path_buf(),
            state,
            durable,
        })
    }

    /// The newest entry's log id (after the purged one, if the log is empty).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.state.lock().expect("log lock").last
    }

    fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StorageError> {
        let st = self.state.lock().expect("log lock");
        // The log may start anywhere (after a purge, or at index 1 rather than 0).
        let (Some(last), Some(wal_first)) = (st.last, st.wal.first_index()) else {
            return Ok(Vec::new());
        };
        let first = st.purged.map_or(0, |p| p.index + 1).max(wal_first);
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        }
        .max(first);
        let end = match range.end_bound() {
            Bound::Included(&e) => e,
            Bound::Excluded(&e) => e.saturating_sub(1),
            Bound::Unbounded => u64::MAX,
        }
        .min(last.index);
        let mut out = Vec::new();
        if start > end || range.end_bound() == Bound::Excluded(&0) {
            return Ok(out);
        }
        for index in start..=end {
            if let Some((e, _)) = st.cache.get(&index) {
                out.push(e.clone());
                continue;
            }
            let read_err = |e: &dyn std::fmt::Display| {
                StorageError::from(StorageIOError::read_log_at_index(
                    index,
                    &std::io::Error::other(e.to_string()),
                ))
            };
            match st.wal.get(index).map_err(|e| read_err(&e))? {
                Some(bytes) => out.push(decode_wal_entry(index, &bytes).map_err(|e| read_err(&e))?),
                None => break,
            }
        }
        Ok(out)
    }
}

fn io_error(e: WalError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.entries(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self.state.lock().expect("log lock");
        Ok(LogState {
            last_purged_log_id: st.purged,
            last_log_id: st.last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        write_json(&self.dir, VOTE_FILE, vote).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_json(&self.dir, VOTE_FILE)
            .map_err(|e| StorageIOError::read_vote(&std::io::Error::other(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut st = self.state.lock().expect("log lock");
        st.committed = committed;
        let due = st
            .committed_persisted
            .is_none_or(|(c, at)| c != committed && at.elapsed() >= COMMITTED_PERSIST_INTERVAL);
        if due {
            write_json(&self.dir, COMMITTED_FILE, &committed)
                .map_err(|e| StorageIOError::write(&e))?;
            st.committed_persisted = Some((committed, Instant::now()));
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.state.lock().expect("log lock").committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, encode_wal_entry(e)))
            .collect();
        {
            let mut st = self.state.lock().expect("log lock");
            st.wal
                .append(encoded.iter().map(|(i, b)| (*i, b.as_slice())))
                .map_err(|e| StorageIOError::write_logs(&io_error(e)))?;
            if let Some(e) = entries.last() {
                st.last = Some(e.log_id);
            }
            for (e, (_, bytes)) in entries.into_iter().zip(&encoded) {
                st.cache_bytes += bytes.len();
                if let Some((_, old)) = st.cache.insert(e.log_id.index, (e, bytes.len())) {
                    st.cache_bytes -= old;
                }
            }
            while st.cache.len() > CACHE_ENTRIES_MAX || st.cache_bytes > CACHE_BYTES_MAX {
                match st.cache.pop_first() {
                    Some((_, (_, bytes))) => st.cache_bytes -= bytes,
                    None => break,
                }
            }
        }
        // openraft waits for this flush before its next append, so a thread of its own
        // would batch nothing: sync here (the batching is in the entries, one per batch of
        // proposals, and in appends of many entries at once on followers). The sync blocks
        // this worker thread for its duration; the other worker (the server runs at least
        // two) steals the queued tasks, except the one in this worker's LIFO slot, which waits
        // out the fsync. (`block_in_place` cost a thread hand-off per append: 256-client puts
        // were ~8% slower with it, and 16-client puts ~10%.)
        let handle = self.state.lock().expect("log lock").wal.sync_handle();
        let result = match &handle {
            Some((file, path)) => file
                .sync_data()
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            None => Ok(()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log fdatasync failed");
        }
        callback.log_io_completed(result);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut st = self.state.lock().expect("log lock");
        tracing::info!(from = log_id.index, "truncating a conflicting log suffix");
        st.wal
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&io_error(e)))?;
        let dropped = st.cache.split_off(&log_id.index);
        st.cache_bytes -= dropped.values().map(|(_, b)| b).sum::<usize>();
        st.last = match log_id.index.checked_sub(1) {
            Some(prev) if st.purged.is_none_or(|p| prev > p.index) => match st.cache.get(&prev) {
                Some((e, _)) => Some(e.log_id),
                None => {
                    let bytes = st
                        .wal
                        .get(prev)
                        .map_err(|e| StorageIOError::read_logs(&io_error(e)))?;
                    match bytes {
                        Some(b) => Some(
                            decode_wal_entry(prev, &b)
                                .map_err(|e| StorageIOError::read_logs(&e))?
                                .log_id,
                        ),
                        None => st.purged,
                    }
                }
            },
            _ => st.purged,
        };
        Ok(())
    }

    /// Entries may only go once the state machine holds their effect durably (it writes
    /// without fsync, and after installing a snapshot it is ahead of the log only once the
    /// install is done): the purge waits for the `durable` watermark to reach `log_id`, or a
    /// crash could leave a hole between the store and the log. On a follower installing a
    /// snapshot, openraft's core waits here until the install is done (it cannot serve
    /// anything meanwhile anyway; the leader sees it as slow).
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut durable = self.durable.clone();
        if *durable.borrow() < log_id.index {
            tracing::debug!(
                upto = log_id.index,
                "purge waits for the store to be durable that far"
            );
            durable
                .wait_for(|&d| d >= log_id.index)
                .await
                .map_err(|_| {
                    StorageIOError::write_logs(&std::io::Error::other("state machine stopped"))
                })?;
        }
        let mut st = self.state.lock().expect("log lock");
        // Record the purge first: if the segments go and the record does not, the log would
        // look like it starts later than it does.
        write_json(&self.dir, PURGED_FILE, &Some(log_id))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        st.purged = Some(log_id);
        if st.last.is_none_or(|l| l.index < log_id.index) {
            st.last = Some(log_id);
        }
        st.wal
            .purge_to(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&io_error(e)))?;
        st.cache = st.cache.split_off(&(log_id.index + 1));
        st.cache_bytes = st.cache.values().map(|(_, b)| b).sum();
        Ok(())
    }
}
