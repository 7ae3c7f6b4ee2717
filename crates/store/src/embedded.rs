//! [`EmbeddedStore`]: the [`Store`] backed by one redb file, for a single control-plane node.
//!
//! ## Layout of the file (three redb tables)
//! - `kv`: key → [`codec::Record`] (create/mod revision, version, value): the live state.
//! - `changes`: revision → every event of that revision: the change log that watches replay.
//!   Only the last [`EmbeddedOptions::history`] revisions are kept.
//! - `meta`: `format`, `revision` (current) and `compact_revision` (newest revision dropped from
//!   `changes`).
//!
//! All three change in the same redb write transaction, committed with immediate durability
//! (fsync) before `txn` returns, so the state, the revision and the log never disagree, even
//! after `kill -9` or a power cut.
//!
//! ## Group commit
//! One fsync per transaction would cap the store at the disk's fsync rate (a few hundred per
//! second here), however many callers wait. So transactions that arrive while a commit is in
//! progress queue up ([`group`]), and the next write takes the whole queue (at most
//! [`EmbeddedOptions::max_group_txns`] transactions or [`EmbeddedOptions::max_group_bytes`])
//! and runs them one after another in ONE redb write transaction, committed with one fsync.
//! Each transaction of a group still gets its own revision, its compares see the state left by
//! the group's earlier transactions, and it gets its own change-log entry and response: the
//! result is exactly that of running them one at a time, in queue order. Every caller is
//! answered only after the fsync that holds its transaction, so the guarantee above holds per
//! caller. A transaction that changes nothing takes no revision and affects no other one; a
//! group that changes nothing is aborted (no fsync). A transaction that fails on its own (a
//! record that does not decode) is answered with its error and the rest of its group runs again
//! without it; a failed write (a full disk) fails every caller of that group with the error
//! and stores nothing of it. [`EmbeddedOptions::group_commit`] `= false` turns grouping off
//! (one transaction per commit, the A/B anchor of the benchmark).
//!
//! ## Threads and ordering
//! redb is blocking, so every call runs on tokio's blocking pool. Writes are serialised by a
//! mutex held from `begin_write` until after the group's commits have been published, in
//! revision order, on a `tokio::sync::broadcast` channel: publications are therefore in
//! revision order.
//!
//! ## Watches without gaps
//! A watch subscribes to the broadcast *before* reading anything, then replays the change log
//! from its start revision, then follows the broadcast, skipping revisions it already delivered.
//! The broadcast is bounded; a watcher that lags behind it (or sees a revision jump for any
//! reason) goes back to the change log from the next revision it owes, so it never misses an
//! event. If that history was compacted meanwhile, it yields [`StoreError::Compacted`] and ends.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{broadcast, mpsc};

use crate::codec::{self, Record};
use crate::{
    CompareTarget, EventKind, KeyValue, Op, OpResponse, RangeResponse, Store, StoreError, Txn,
    TxnResponse, WatchEvent, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const CHANGES: TableDefinition<i64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_REVISION: &str = "revision";
const META_COMPACT: &str = "compact_revision";
/// Version of this crate's layout inside the redb file (not redb's own file format).
const FORMAT: i64 = 1;

mod group;
#[cfg(test)]
mod tests;

/// Revisions read from the change log per blocking call while a watcher catches up, so one
/// far-behind watcher neither holds a read transaction long nor buffers the whole history.
const CATCH_UP_CHUNK: i64 = 512;

/// Tuning of an [`EmbeddedStore`]; `Default` suits berth.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many of the latest revisions keep their changes in the log, i.e. how far back a watch
    /// may start (default 10,000). Older ones are dropped as new ones are written; a watch from
    /// before them gets [`StoreError::Compacted`]. At least 1.
    pub history: u64,
    /// Commits buffered in memory for live watchers (default 1,024). A watcher further behind
    /// than this reads the change log instead, so this trades memory for disk reads only.
    pub broadcast_capacity: usize,
    /// Events buffered per watch for its reader (default 256). A reader slower than this makes
    /// its watch fall back to the change log; it never loses events.
    pub watch_buffer: usize,
    /// Whether transactions that arrive during a commit are committed together, with one fsync
    /// (default `true`; see the module doc). `false` commits each transaction on its own, as
    /// before group commit: the benchmark's anchor, and a way to rule grouping out.
    pub group_commit: bool,
    /// At most this many transactions per group commit (default 256; at least 1), so one
    /// commit's write stays short and the first callers of a long queue are answered soon.
    pub max_group_txns: usize,
    /// At most about this many bytes of keys and values per group commit (default 8 MiB): a
    /// group takes transactions while it is under the budget, and always takes at least one.
    pub max_group_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history: 10_000,
            broadcast_capacity: 1024,
            watch_buffer: 256,
            group_commit: true,
            max_group_txns: 256,
            max_group_bytes: 8 << 20,
        }
    }
}

/// The embedded [`Store`]: one redb file (by convention `DATA_DIR/state.redb`), exclusively
/// owned by this process while open.
///
/// Cheap to clone (all clones share the file). Dropping the last clone closes the file (once
/// calls in flight on the blocking pool return) and ends every watch, so the same process can
/// reopen it right away.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.db.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    db: Arc<Db>,
    /// Serialises writes and their publication, so the broadcast is in revision order.
    write_lock: Mutex<()>,
    /// Transactions waiting for the next group commit, and whether a writer is draining them.
    queue: Mutex<group::Queue>,
    /// Durable redb commits of transactions so far (one per group that changed something).
    commits: AtomicU64,
    live: broadcast::Sender<Arc<Commit>>,
    options: EmbeddedOptions,
}

/// The file. Watch tasks hold it weakly: they must keep neither the file open nor the broadcast
/// sender alive once the store is dropped.
///
/// The redb handle sits behind a lock so that it can be replaced while the store is shared:
/// every read and write holds the read side for its whole transaction; reopening after an I/O
/// error and compacting take the write side, when no transaction is open.
struct Db {
    db: RwLock<Option<Database>>,
    path: PathBuf,
    pid_file: PathBuf,
    /// Set by a write that failed with an I/O error (a full disk): redb then refuses every
    /// further write until the file is reopened. Cleared by a successful reopen and write.
    broken: Mutex<Option<Broken>>,
}

/// Why the store stopped accepting writes, and when recovery was last tried.
struct Broken {
    why: String,
    last_try: Option<Instant>,
}

/// How often [`Store::health`] retries a broken store (a reopen and a probe write).
const HEALTH_RETRY: Duration = Duration::from_secs(1);

/// The metadata key [`Db::probe`] writes (a timestamp; nothing reads it).
const META_PROBE: &str = "health_probe";

/// One committed revision, as published to live watchers.
struct Commit {
    revision: i64,
    events: Vec<WatchEvent>,
}

impl EmbeddedStore {
    /// Opens (creating if needed, with its parent directories) the store file at `path` with
    /// default options.
    ///
    /// Fails with [`StoreError::Locked`] if another process has it open: two writers on one
    /// file would each believe they own the revision counter.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    /// Like [`EmbeddedStore::open`], with explicit [`EmbeddedOptions`].
    pub async fn open_with(
        path: impl Into<PathBuf>,
        options: EmbeddedOptions,
    ) -> Result<Self, StoreError> {
        let path = path.into();
        let db = tokio::task::spawn_blocking(move || Db::open(path))
            .await
            .map_err(join_error)??;
        let options = EmbeddedOptions {
            history: options.history.max(1),
            broadcast_capacity: options.broadcast_capacity.max(1),
            watch_buffer: options.watch_buffer.max(1),
            group_commit: options.group_commit,
            max_group_txns: options.max_group_txns.max(1),
            max_group_bytes: options.max_group_bytes,
        };
        let (live, _) = broadcast::channel(options.broadcast_capacity);
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db: Arc::new(db),
                write_lock: Mutex::new(()),
                queue: Mutex::new(group::Queue::default()),
                commits: AtomicU64::new(0),
                live,
                options,
            }),
        })
    }

    /// The store file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.inner.db.path
    }

    /// How many durable commits (fsyncs) this handle made for transactions since it was opened:
    /// one per group that changed something. Fewer than the revisions written when group commit
    /// gathers concurrent transactions; what the benchmark and the tests count.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// The newest revision whose changes were dropped from the log (0 if none): a watch must
    /// start after it.
    pub async fn compact_revision(&self) -> Result<i64, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || db.read_meta().map(|m| m.compact)).await
    }
}

fn join_error(e: tokio::task::JoinError) -> StoreError {
    StoreError::Unavailable(format!(
        "a store worker thread stopped ({e}); the runtime may be shutting down"
    ))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.map_err(join_error)?
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let db = self.inner.db.clone();
        let key = key.to_owned();
        blocking(move || db.get(&key)).await
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let db = self.inner.db.clone();
        let prefix = prefix.to_owned();
        blocking(move || db.range(&prefix)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        validate_branch(&txn.success, "success")?;
        validate_branch(&txn.failure, "failure")?;
        if let Some(c) = txn.compares.iter().find(|c| c.key.is_empty()) {
            return Err(StoreError::InvalidTxn(format!(
                "a compare has an empty key ({c:?})"
            )));
        }
        if self.inner.options.group_commit {
            return group::submit(&self.inner, txn).await;
        }
        let inner = self.inner.clone();
        blocking(move || inner.txn(txn)).await
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        // Subscribe first: every commit after the snapshot read below is then in `live`.
        let live = self.inner.live.subscribe();
        let db = self.inner.db.clone();
        let meta = blocking(move || db.read_meta()).await?;
        let next = if from_revision <= 0 {
            meta.revision + 1
        } else {
            from_revision
        };
        if next <= meta.compact {
            return Err(StoreError::Compacted {
                requested: next,
                compact_revision: meta.compact,
            });
        }
        let (tx, rx) = mpsc::channel(self.inner.options.watch_buffer);
        tokio::spawn(watch_task(
            Arc::downgrade(&self.inner.db),
            prefix.to_owned(),
            next,
            live,
            tx,
        ));
        Ok(WatchStream::from_receiver(rx))
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let db = self.inner.db.clone();
        blocking(move || db.read_meta().map(|m| m.revision)).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.health()).await
    }

    async fn forget(&self, key: &str) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking(move || inner.forget(&key)).await
    }
}

/// Refuses what etcd refuses: a key put twice, or put and deleted, in one branch (the result
/// would depend on op order in one backend and be an error in the other).
pub(crate) fn validate_branch(ops: &[Op], branch: &str) -> Result<(), StoreError> {
    let mut puts = HashSet::new();
    for op in ops {
        let key = match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
            Op::DeletePrefix { .. } => continue,
        };
        if key.is_empty() {
            return Err(StoreError::InvalidTxn(format!(
                "an op of the {branch} branch has an empty key"
            )));
        }
        if matches!(op, Op::Put { .. }) && !puts.insert(key.as_str()) {
            return Err(StoreError::InvalidTxn(format!(
                "key {key:?} is put twice in the {branch} branch"
            )));
        }
    }
    for op in ops {
        let clash = match op {
            Op::Delete { key } => puts.contains(key.as_str()).then(|| key.clone()),
            Op::DeletePrefix { prefix } => puts
                .iter()
                .find(|k| k.starts_with(prefix.as_str()))
                .map(|k| k.to_string()),
            Op::Put { .. } => None,
        };
        if let Some(key) = clash {
            return Err(StoreError::InvalidTxn(format!(
                "key {key:?} is both put and deleted in the {branch} branch"
            )));
        }
    }
    Ok(())
}

struct Meta {
    revision: i64,
    compact: i64,
}

impl Db {
    fn open(path: PathBuf) -> Result<Db, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Storage {
                path: path.clone(),
                op: "creating its directory",
                source: Box::new(e),
            })?;
        }
        let mut pid_file = path.clone().into_os_string();
        pid_file.push(".pid");
        let pid_file = PathBuf::from(pid_file);
        private_file(&path).map_err(|e| StoreError::Storage {
            path: path.clone(),
            op: "creating it with mode 0600",
            source: Box::new(e),
        })?;
        let db = Self::create(&path, &pid_file)?;
        // Best effort: only read to name the holder in a `Locked` error.
        if let Err(e) = write_private(&pid_file, &format!("{}\n", std::process::id())) {
            tracing::warn!(file = %pid_file.display(), error = %e, "cannot record the store owner's pid");
        }
        let db = Db {
            db: RwLock::new(Some(db)),
            path,
            pid_file,
            broken: Mutex::new(None),
        };
        db.init()?;
        Ok(db)
    }

    fn create(path: &Path, pid_file: &Path) -> Result<Database, StoreError> {
        Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen
            | redb::DatabaseError::LockProtocolMismatch => StoreError::Locked {
                path: path.to_path_buf(),
                pid: std::fs::read_to_string(pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            },
            e => map_redb(path, "opening", e.into()),
        })
    }

    /// Runs `f` on the open database, holding it open (no reopen or compaction meanwhile).
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(StoreError::Unavailable(format!(
                "the store file {} is closed after an I/O error and could not be reopened yet ({})",
                self.path.display(),
                self.broken_reason().unwrap_or_default()
            ))),
        }
    }

    fn broken_reason(&self) -> Option<String> {
        self.broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|b| b.why.clone())
    }

    /// Remembers that a write failed with an I/O error, so the next write reopens the file.
    fn mark_broken(&self, e: &StoreError) {
        if is_io(e) {
            tracing::warn!(file = %self.path.display(), error = %e, "the store cannot write; it reopens the file on the next write");
            let mut b = self.broken.lock().unwrap_or_else(PoisonError::into_inner);
            match b.as_mut() {
                Some(b) => b.why = e.to_string(),
                None => {
                    *b = Some(Broken {
                        why: e.to_string(),
                        last_try: None,
                    })
                }
            }
        }
    }

    /// Closes and reopens the file (redb refuses every write after an I/O error until then).
    /// The caller holds the store's write lock, so no write is in flight.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // The old handle must be gone first: redb locks the file per handle.
        drop(guard.take());
        let db = Self::create(&self.path, &self.pid_file)?;
        *guard = Some(db);
        tracing::info!(file = %self.path.display(), "the store file was reopened");
        Ok(())
    }

    /// After a failed write: reopen the file, then prove it writable with a probe write.
    /// Clears the broken state on success. The caller holds the store's write lock.
    fn recover(&self) -> Result<(), StoreError> {
        if let Some(b) = self
            .broken
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            b.last_try = Some(crate::clock::now());
        }
        let probe = self.reopen().and_then(|()| self.probe());
        match probe {
            Ok(()) => {
                *self.broken.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(())
            }
            Err(e) => {
                self.mark_broken(&e);
                Err(e)
            }
        }
    }

    /// Rewrites the file: every table is copied into a new file beside it (0600), which then
    /// replaces the old one. Only live data is copied, so values erased from the tables are gone
    /// from the file (redb's own compaction leaves freed pages in place). Waits for open reads
    /// to finish; the caller holds the store's write lock.
    fn vacuum(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        let Some(old) = guard.as_ref() else {
            return Err(StoreError::Unavailable(format!(
                "the store file {} is closed after an I/O error",
                self.path.display()
            )));
        };
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".vacuum");
        let tmp = PathBuf::from(tmp);
        let io = |op: &'static str| {
            let path = self.path.clone();
            move |e: std::io::Error| StoreError::Storage {
                path,
                op,
                source: Box::new(e),
            }
        };
        let _ = std::fs::remove_file(&tmp);
        private_file(&tmp).map_err(io("creating the rewritten file"))?;
        let copied = (|| {
            let new = Database::create(&tmp).map_err(|e| map_redb(&tmp, "rewriting", e.into()))?;
            let w = |e: redb::Error| map_redb(&tmp, "rewriting", e);
            let rtx = old.begin_read().map_err(|e| self.err("rewriting", e))?;
            let mut wtx = new.begin_write().map_err(|e| w(e.into()))?;
            wtx.set_durability(Durability::Immediate)
                .map_err(|e| StoreError::Storage {
                    path: tmp.clone(),
                    op: "setting durability",
                    source: Box::new(e),
                })?;
            {
                let from = rtx.open_table(KV).map_err(|e| self.err("rewriting", e))?;
                let mut to = wtx.open_table(KV).map_err(|e| w(e.into()))?;
                for entry in from.iter().map_err(|e| self.err("rewriting", e))? {
                    let (k, v) = entry.map_err(|e| self.err("rewriting", e))?;
                    to.insert(k.value(), v.value()).map_err(|e| w(e.into()))?;
                }
                let from = rtx
                    .open_table(CHANGES)
                    .map_err(|e| self.err("rewriting", e))?;
                let mut to = wtx.open_table(CHANGES).map_err(|e| w(e.into()))?;
                for entry in from.iter().map_err(|e| self.err("rewriting", e))? {
                    let (k, v) = entry.map_err(|e| self.err("rewriting", e))?;
                    to.insert(k.value(), v.value()).map_err(|e| w(e.into()))?;
                }
                let from = rtx.open_table(META).map_err(|e| self.err("rewriting", e))?;
                let mut to = wtx.open_table(META).map_err(|e| w(e.into()))?;
                for entry in from.iter().map_err(|e| self.err("rewriting", e))? {
                    let (k, v) = entry.map_err(|e| self.err("rewriting", e))?;
                    to.insert(k.value(), v.value()).map_err(|e| w(e.into()))?;
                }
            }
            wtx.commit().map_err(|e| w(e.into()))
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // Close the old file, put the new one in its place, and open it.
        drop(guard.take());
        let renamed =
            std::fs::rename(&tmp, &self.path).map_err(io("replacing it by the rewritten file"));
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let reopened = Self::create(&self.path, &self.pid_file);
        match (renamed, reopened) {
            (Ok(()), Ok(db)) => {
                *guard = Some(db);
                Ok(())
            }
            (Err(e), Ok(db)) => {
                let _ = std::fs::remove_file(&tmp);
                *guard = Some(db);
                Err(e)
            }
            (_, Err(e)) => {
                let err = e.to_string();
                drop(guard);
                self.mark_broken(&StoreError::Storage {
                    path: self.path.clone(),
                    op: "reopening after a rewrite",
                    source: Box::new(std::io::Error::other(err)),
                });
                Err(e)
            }
        }
    }

    /// A durable write that changes no key and no revision: is the file writable?
    fn probe(&self) -> Result<(), StoreError> {
        self.with(|db| {
            let mut wtx = db.begin_write().map_err(|e| self.err("probing", e))?;
            wtx.set_durability(Durability::Immediate)
                .map_err(|e| StoreError::Storage {
                    path: self.path.clone(),
                    op: "probing",
                    source: Box::new(e),
                })?;
            {
                let mut meta = wtx.open_table(META).map_err(|e| self.err("probing", e))?;
                let now = crate::clock::unix_ms();
                meta.insert(META_PROBE, now)
                    .map_err(|e| self.err("probing", e))?;
            }
            wtx.commit().map_err(|e| self.err("probing", e))
        })
    }

    /// Creates the tables and metadata of a new file, or checks an existing file's format.
    fn init(&self) -> Result<(), StoreError> {
        self.with(|db| self.init_in(db))
    }

    fn init_in(&self, db: &Database) -> Result<(), StoreError> {
        let wtx = db.begin_write().map_err(|e| self.err("initialising", e))?;
        {
            let kv = wtx
                .open_table(KV)
                .map_err(|e| self.err("initialising", e))?;
            wtx.open_table(CHANGES)
                .map_err(|e| self.err("initialising", e))?;
            let mut meta = wtx
                .open_table(META)
                .map_err(|e| self.err("initialising", e))?;
            let format = meta
                .get(META_FORMAT)
                .map_err(|e| self.err("initialising", e))?
                .map(|g| g.value());
            match format {
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StoreError::Incompatible {
                        path: self.path.clone(),
                        detail: format!("berth store layout {other}, this berth reads {FORMAT}"),
                    })
                }
                None => {
                    if !kv.is_empty().map_err(|e| self.err("initialising", e))? {
                        return Err(self.corrupt("keys exist but the format marker is missing"));
                    }
                    for (name, value) in
                        [(META_FORMAT, FORMAT), (META_REVISION, 0), (META_COMPACT, 0)]
                    {
                        meta.insert(name, value)
                            .map_err(|e| self.err("initialising", e))?;
                    }
                }
            }
        }
        wtx.commit().map_err(|e| self.err("initialising", e))
    }

    fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> StoreError {
        map_redb(&self.path, op, e.into())
    }

    fn corrupt(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn meta_value(
        &self,
        meta: &impl ReadableTable<&'static str, i64>,
        name: &str,
    ) -> Result<i64, StoreError> {
        meta.get(name)
            .map_err(|e| self.err("reading metadata", e))?
            .map(|g| g.value())
            .ok_or_else(|| self.corrupt(format!("metadata {name:?} is missing")))
    }

    fn read_meta(&self) -> Result<Meta, StoreError> {
        self.with(|db| self.read_meta_in(db))
    }

    fn read_meta_in(&self, db: &Database) -> Result<Meta, StoreError> {
        let rtx = db.begin_read().map_err(|e| self.err("reading", e))?;
        let meta = rtx.open_table(META).map_err(|e| self.err("reading", e))?;
        Ok(Meta {
            revision: self.meta_value(&meta, META_REVISION)?,
            compact: self.meta_value(&meta, META_COMPACT)?,
        })
    }

    fn record(
        &self,
        kv: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        match kv.get(key).map_err(|e| self.err("reading", e))? {
            None => Ok(None),
            Some(g) => codec::decode_record(g.value())
                .map(Some)
                .map_err(|d| self.corrupt(format!("key {key:?}: {d}"))),
        }
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.with(|db| {
            let rtx = db.begin_read().map_err(|e| self.err("reading", e))?;
            let kv = rtx.open_table(KV).map_err(|e| self.err("reading", e))?;
            Ok(self.record(&kv, key)?.map(|r| r.into_kv(key)))
        })
    }

    fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.with(|db| {
            let rtx = db.begin_read().map_err(|e| self.err("reading", e))?;
            let meta = rtx.open_table(META).map_err(|e| self.err("reading", e))?;
            let kv = rtx.open_table(KV).map_err(|e| self.err("reading", e))?;
            let revision = self.meta_value(&meta, META_REVISION)?;
            let kvs = self.scan_prefix(&kv, prefix)?;
            Ok(RangeResponse { kvs, revision })
        })
    }

    fn scan_prefix(
        &self,
        kv: &impl ReadableTable<&'static str, &'static [u8]>,
        prefix: &str,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        for entry in kv.range(prefix..).map_err(|e| self.err("reading", e))? {
            let (k, v) = entry.map_err(|e| self.err("reading", e))?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let record = codec::decode_record(v.value())
                .map_err(|d| self.corrupt(format!("key {key:?}: {d}")))?;
            out.push(record.into_kv(key));
        }
        Ok(out)
    }

    /// Reads the change log from `next` on (at most [`CATCH_UP_CHUNK`] revisions) and returns
    /// the events under `prefix`, the last revision scanned (`next - 1` if none) and the current
    /// revision.
    fn read_changes(
        &self,
        prefix: &str,
        next: i64,
    ) -> Result<(Vec<WatchEvent>, i64, i64), StoreError> {
        self.with(|db| self.read_changes_in(db, prefix, next))
    }

    fn read_changes_in(
        &self,
        db: &Database,
        prefix: &str,
        next: i64,
    ) -> Result<(Vec<WatchEvent>, i64, i64), StoreError> {
        let rtx = db
            .begin_read()
            .map_err(|e| self.err("reading the change log", e))?;
        let meta = rtx
            .open_table(META)
            .map_err(|e| self.err("reading the change log", e))?;
        let revision = self.meta_value(&meta, META_REVISION)?;
        let compact = self.meta_value(&meta, META_COMPACT)?;
        if next <= compact {
            return Err(StoreError::Compacted {
                requested: next,
                compact_revision: compact,
            });
        }
        let last = revision.min(next.saturating_add(CATCH_UP_CHUNK - 1));
        if last < next {
            return Ok((Vec::new(), next - 1, revision));
        }
        let log = rtx
            .open_table(CHANGES)
            .map_err(|e| self.err("reading the change log", e))?;
        let mut events = Vec::new();
        let mut expected = next;
        for entry in log
            .range(next..=last)
            .map_err(|e| self.err("reading the change log", e))?
        {
            let (k, v) = entry.map_err(|e| self.err("reading the change log", e))?;
            let rev = k.value();
            if rev != expected {
                return Err(self.corrupt(format!(
                    "the change log lacks revision {expected} (next entry is {rev})"
                )));
            }
            expected += 1;
            let decoded = codec::decode_events(rev, v.value()).map_err(|d| self.corrupt(d))?;
            events.extend(decoded.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
        }
        if expected != last + 1 {
            return Err(self.corrupt(format!(
                "the change log lacks revision {expected} (store revision {revision})"
            )));
        }
        Ok((events, last, revision))
    }
}

/// Whether `e` is an I/O failure of the file (a full disk, a failing device), after which redb
/// refuses writes until the file is reopened.
fn is_io(e: &StoreError) -> bool {
    let StoreError::Storage { source, .. } = e else {
        return false;
    };
    match source.downcast_ref::<redb::Error>() {
        Some(redb::Error::Io(_) | redb::Error::PreviousIo) => true,
        Some(_) => false,
        None => {
            source.downcast_ref::<std::io::Error>().is_some()
                || source
                    .downcast_ref::<redb::StorageError>()
                    .is_some_and(|e| {
                        matches!(
                            e,
                            redb::StorageError::Io(_) | redb::StorageError::PreviousIo
                        )
                    })
        }
    }
}

/// Creates `path` empty with mode 0600 if it does not exist, or tightens it to 0600 (with a
/// warning) if other users may read it: the store holds secret values.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                tracing::warn!(file = %path.display(), mode = format!("{mode:04o}"), "the store file was readable by other users; set it to 0600 (rotate the secrets in it if others use this machine)");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop),
        Err(e) => Err(e),
    }
}

/// Writes `content` to `path` with mode 0600.
fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(content.as_bytes())
}

impl Drop for Db {
    fn drop(&mut self) {
        // The pid names the holder in a `Locked` error; gone with the holder. Best effort.
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn map_redb(path: &Path, op: &'static str, e: redb::Error) -> StoreError {
    let path = path.to_path_buf();
    match e {
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
        redb::Error::UpgradeRequired(v) => StoreError::Incompatible {
            path,
            detail: format!("redb file format {v}, which this berth's redb must upgrade first"),
        },
        redb::Error::TableTypeMismatch { .. } => StoreError::Incompatible {
            path,
            detail: e.to_string(),
        },
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::Locked { path, pid: None }
        }
        e => StoreError::Storage {
            path,
            op,
            source: Box::new(e),
        },
    }
}

impl Inner {
    /// `Ok` while writes work. After a failed write, retries (reopen and a probe write) at most
    /// every [`HEALTH_RETRY`], so the state recovers without a write from anyone, and reports
    /// the failure meanwhile.
    fn health(&self) -> Result<(), StoreError> {
        let db = &*self.db;
        let due = {
            let b = db.broken.lock().unwrap_or_else(PoisonError::into_inner);
            match b.as_ref() {
                None => return Ok(()),
                Some(b) => b
                    .last_try
                    .is_none_or(|t| t.elapsed() >= HEALTH_RETRY)
                    .then_some(())
                    .ok_or_else(|| StoreError::Unavailable(b.why.clone())),
            }
        };
        due?;
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if db.broken_reason().is_none() {
            return Ok(()); // a write recovered it meanwhile
        }
        db.recover()
    }

    /// See [`Store::forget`]: blanks `key`'s values in every change-log entry, then rewrites
    /// the file ([`Db::vacuum`]) so the pages that held them are gone.
    fn forget(&self, key: &str) -> Result<(), StoreError> {
        let db = &*self.db;
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let scrubbed = db.with(|handle| {
            let w = |e: redb::Error| map_redb(&db.path, "erasing a value from the change log", e);
            let mut wtx = handle.begin_write().map_err(|e| w(e.into()))?;
            wtx.set_durability(Durability::Immediate)
                .map_err(|e| StoreError::Storage {
                    path: db.path.clone(),
                    op: "setting durability",
                    source: Box::new(e),
                })?;
            {
                let mut log = wtx.open_table(CHANGES).map_err(|e| w(e.into()))?;
                let mut rewrites = Vec::new();
                for entry in log.iter().map_err(|e| w(e.into()))? {
                    let (k, v) = entry.map_err(|e| w(e.into()))?;
                    let rev = k.value();
                    let mut events =
                        codec::decode_events(rev, v.value()).map_err(|d| db.corrupt(d))?;
                    let mut touched = false;
                    for e in &mut events {
                        if e.kv.key == key {
                            touched |= !e.kv.value.is_empty();
                            e.kv.value.clear();
                        }
                        if let Some(prev) = e.prev.as_mut().filter(|p| p.key == key) {
                            touched |= !prev.value.is_empty();
                            prev.value.clear();
                        }
                    }
                    if touched {
                        rewrites.push((rev, codec::encode_events(&events)));
                    }
                }
                for (rev, bytes) in &rewrites {
                    log.insert(*rev, bytes.as_slice())
                        .map_err(|e| w(e.into()))?;
                }
            }
            wtx.commit().map_err(|e| w(e.into()))
        });
        if let Err(e) = &scrubbed {
            db.mark_broken(e);
        }
        scrubbed?;
        db.vacuum()
    }

    /// Runs one transaction on its own (a group of one): evaluate, apply, log, compact, commit
    /// durably, then publish.
    fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.run_group(std::slice::from_ref(&txn))
            .pop()
            .unwrap_or_else(|| {
                Err(StoreError::Unavailable(
                    "the store's writer returned no answer (a bug); retry".into(),
                ))
            })
    }

    /// Runs a group of transactions, in order, in ONE redb write transaction committed with
    /// one fsync, then publishes each revision's [`Commit`] in revision order. Returns one
    /// result per transaction, in the same order; the caller answers them (after this returns,
    /// so after the fsync that holds them).
    ///
    /// Each transaction keeps its own revision, its compares see the state left by the earlier
    /// ones of the group, and it gets its own change-log entry and response, exactly as if the
    /// group had run one transaction at a time. If one transaction fails on its own (a record
    /// that does not decode), the write is rolled back, that one is answered with its error and
    /// the others run again without it; a failure of the write itself (an I/O error: a full
    /// disk) fails every transaction of the group with that error and nothing of it is stored.
    fn run_group(&self, txns: &[Txn]) -> Vec<Result<TxnResponse, StoreError>> {
        if txns.is_empty() {
            return Vec::new();
        }
        let db = &*self.db;
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut results: Vec<Option<Result<TxnResponse, StoreError>>> =
            txns.iter().map(|_| None).collect();
        // After an I/O error (a full disk), redb refuses writes until the file is reopened.
        let recovered = match db.broken_reason() {
            Some(_) => db.recover(),
            None => Ok(()),
        };
        if let Err(e) = recovered {
            return fan_out(e, txns.len());
        }
        loop {
            let pending: Vec<usize> = (0..txns.len()).filter(|&i| results[i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            let attempt = db
                .with(|handle| Ok(self.group_in(db, handle, txns, &pending)))
                .unwrap_or_else(|closed| Err(GroupFailure::Write(closed)));
            match attempt {
                Ok(outcomes) => {
                    let mut commits = 0;
                    for Outcome {
                        index,
                        response,
                        events,
                    } in outcomes
                    {
                        if let Some(events) = events {
                            commits += 1;
                            // Still under the write lock: publications stay in revision order.
                            // No receiver is not an error.
                            let _ = self.live.send(Arc::new(Commit {
                                revision: response.revision,
                                events,
                            }));
                        }
                        results[index] = Some(Ok(response));
                    }
                    if commits > 0 {
                        self.commits.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Err(GroupFailure::Txn(i, e)) if !is_io(&e) => {
                    // That transaction's own fault: the others run again without it.
                    results[i] = Some(Err(e));
                }
                Err(GroupFailure::Txn(_, e) | GroupFailure::Write(e)) => {
                    // Nothing of the group is stored: every caller still waiting gets the error.
                    db.mark_broken(&e);
                    let mut errors = fan_out(e, pending.len()).into_iter();
                    for &i in &pending {
                        results[i] = errors.next();
                    }
                    break;
                }
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "the store's writer left a transaction unanswered (a bug); retry".into(),
                    ))
                })
            })
            .collect()
    }

    /// One attempt at a group: the transactions `pending` (indices into `txns`, in order) in
    /// one redb write transaction, committed durably if any of them changed something and
    /// aborted otherwise. Returns each one's response and, if it changed something, its events.
    fn group_in(
        &self,
        db: &Db,
        handle: &Database,
        txns: &[Txn],
        pending: &[usize],
    ) -> Result<Vec<Outcome>, GroupFailure> {
        let mut wtx = handle
            .begin_write()
            .map_err(|e| GroupFailure::Write(db.err("starting a write", e)))?;
        wtx.set_durability(Durability::Immediate).map_err(|e| {
            GroupFailure::Write(StoreError::Storage {
                path: db.path.clone(),
                op: "setting durability",
                source: Box::new(e),
            })
        })?;
        let applied = (|| {
            let w = |e: redb::Error| GroupFailure::Write(map_redb(&db.path, "writing", e));
            let mut kv = wtx.open_table(KV).map_err(|e| w(e.into()))?;
            let mut log = wtx.open_table(CHANGES).map_err(|e| w(e.into()))?;
            let mut meta = wtx.open_table(META).map_err(|e| w(e.into()))?;
            let first = db
                .meta_value(&meta, META_REVISION)
                .map_err(GroupFailure::Write)?;
            let first_compact = db
                .meta_value(&meta, META_COMPACT)
                .map_err(GroupFailure::Write)?;
            let mut state = LogState {
                revision: first,
                compact: first_compact,
            };
            let mut outcomes = Vec::with_capacity(pending.len());
            for &i in pending {
                let (response, events) = self
                    .apply(db, &mut kv, &mut log, &txns[i], &mut state)
                    .map_err(|e| GroupFailure::Txn(i, e))?;
                outcomes.push(Outcome {
                    index: i,
                    response,
                    events,
                });
            }
            if state.revision != first {
                meta.insert(META_REVISION, state.revision)
                    .map_err(|e| w(e.into()))?;
            }
            if state.compact != first_compact {
                meta.insert(META_COMPACT, state.compact)
                    .map_err(|e| w(e.into()))?;
            }
            Ok((outcomes, state.revision != first))
        })();
        match applied {
            Ok((outcomes, true)) => {
                wtx.commit()
                    .map_err(|e| GroupFailure::Write(db.err("committing", e)))?;
                Ok(outcomes)
            }
            Ok((outcomes, false)) => {
                // Nothing changed: no fsync, and no other transaction is affected.
                wtx.abort()
                    .map_err(|e| GroupFailure::Write(db.err("aborting a write", e)))?;
                Ok(outcomes)
            }
            Err(failure) => {
                // Roll back everything of this attempt; the abort's own error (after an I/O
                // failure redb may refuse it) changes nothing about what the callers are told.
                let _ = wtx.abort();
                Err(failure)
            }
        }
    }

    /// Evaluates and applies one transaction inside the group's write: the next revision if it
    /// changes something (its log entry written, the log compacted to `history`), none if not.
    fn apply(
        &self,
        db: &Db,
        kv: &mut redb::Table<&'static str, &'static [u8]>,
        log: &mut redb::Table<i64, &'static [u8]>,
        txn: &Txn,
        state: &mut LogState,
    ) -> Result<(TxnResponse, Option<Vec<WatchEvent>>), StoreError> {
        let w = |e: redb::Error| map_redb(&db.path, "writing", e);
        let mut succeeded = true;
        for c in &txn.compares {
            let current = db.record(kv, &c.key)?;
            let holds = match &c.target {
                CompareTarget::ModRevision(r) => {
                    current.as_ref().map_or(0, |c| c.mod_revision) == *r
                }
                CompareTarget::Value(v) => current.as_ref().is_some_and(|c| &c.value == v),
            };
            if !holds {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };

        let new_rev = state.revision + 1;
        let mut events = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let prev = db.record(kv, key)?;
                    let (create_revision, version) = match &prev {
                        Some(p) => (p.create_revision, p.version + 1),
                        None => (new_rev, 1),
                    };
                    let bytes = codec::encode_record(create_revision, new_rev, version, value);
                    kv.insert(key.as_str(), bytes.as_slice())
                        .map_err(|e| w(e.into()))?;
                    let prev = prev.map(|p| p.into_kv(key));
                    events.push(WatchEvent {
                        revision: new_rev,
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: new_rev,
                            version,
                        },
                        prev,
                    });
                    responses.push(OpResponse::Put);
                }
                Op::Delete { key } => {
                    let prev = db.record(kv, key)?;
                    let deleted = match prev {
                        None => 0,
                        Some(p) => {
                            kv.remove(key.as_str()).map_err(|e| w(e.into()))?;
                            events.push(tombstone(new_rev, p.into_kv(key)));
                            1
                        }
                    };
                    responses.push(OpResponse::Delete { deleted });
                }
                Op::DeletePrefix { prefix } => {
                    let doomed = db.scan_prefix(kv, prefix)?;
                    let deleted = doomed.len() as i64;
                    for p in doomed {
                        kv.remove(p.key.as_str()).map_err(|e| w(e.into()))?;
                        events.push(tombstone(new_rev, p));
                    }
                    responses.push(OpResponse::Delete { deleted });
                }
            }
        }

        if events.is_empty() {
            // Changes nothing: the revision so far (including the group's earlier ones, which
            // the caller learns only once they are durable).
            let response = TxnResponse {
                succeeded,
                revision: state.revision,
                responses,
            };
            return Ok((response, None));
        }
        log.insert(new_rev, codec::encode_events(&events).as_slice())
            .map_err(|e| w(e.into()))?;
        state.revision = new_rev;
        // Keep exactly the last `history` revisions in the log.
        let keep = i64::try_from(self.options.history).unwrap_or(i64::MAX);
        let new_compact = new_rev.saturating_sub(keep);
        if new_compact > state.compact {
            loop {
                let first = log
                    .first()
                    .map_err(|e| w(e.into()))?
                    .map(|(k, _)| k.value());
                match first {
                    Some(r) if r <= new_compact => {
                        log.remove(r).map_err(|e| w(e.into()))?;
                    }
                    _ => break,
                }
            }
            state.compact = new_compact;
        }
        let response = TxnResponse {
            succeeded,
            revision: new_rev,
            responses,
        };
        Ok((response, Some(events)))
    }
}

/// The log's counters while a group is applied: written to `meta` once, at the group's end.
struct LogState {
    /// The last revision assigned (the store's, plus the group's so far).
    revision: i64,
    /// The newest revision dropped from the change log.
    compact: i64,
}

/// What one transaction of a group did, once the group's write is committed.
struct Outcome {
    /// Its position in the group.
    index: usize,
    response: TxnResponse,
    /// Its events (at `response.revision`) if it changed something.
    events: Option<Vec<WatchEvent>>,
}

/// Why an attempt at a group failed.
enum GroupFailure {
    /// The transaction at this index failed on its own (or the write failed while applying it:
    /// [`is_io`] tells).
    Txn(usize, StoreError),
    /// The write itself failed (starting, metadata, committing): every transaction of the group.
    Write(StoreError),
}

/// `e` for each of `n` callers (the first gets `e` itself).
fn fan_out(e: StoreError, n: usize) -> Vec<Result<TxnResponse, StoreError>> {
    let mut out = Vec::with_capacity(n);
    out.extend((1..n).map(|_| Err(duplicate(&e))));
    out.insert(0, Err(e));
    out
}

/// A copy of `e` for another caller of the same failed group: the same variant, place and
/// message (a storage error's source becomes its message, still an I/O error if it was one, so
/// [`is_io`] answers the same).
fn duplicate(e: &StoreError) -> StoreError {
    match e {
        StoreError::Locked { path, pid } => StoreError::Locked {
            path: path.clone(),
            pid: *pid,
        },
        StoreError::Incompatible { path, detail } => StoreError::Incompatible {
            path: path.clone(),
            detail: detail.clone(),
        },
        StoreError::Corrupt { path, detail } => StoreError::Corrupt {
            path: path.clone(),
            detail: detail.clone(),
        },
        StoreError::Storage { path, op, source } => StoreError::Storage {
            path: path.clone(),
            op,
            source: if is_io(e) {
                Box::new(std::io::Error::other(source.to_string()))
            } else {
                source.to_string().into()
            },
        },
        StoreError::Compacted {
            requested,
            compact_revision,
        } => StoreError::Compacted {
            requested: *requested,
            compact_revision: *compact_revision,
        },
        StoreError::InvalidTxn(m) => StoreError::InvalidTxn(m.clone()),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
    }
}

/// The delete event of `prev` at `revision`, in etcd's shape.
fn tombstone(revision: i64, prev: KeyValue) -> WatchEvent {
    WatchEvent {
        revision,
        kind: EventKind::Delete,
        kv: KeyValue {
            key: prev.key.clone(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        },
        prev: Some(prev),
    }
}

/// Feeds one [`WatchStream`]: replay from the log, then follow `live`, falling back to the log
/// whenever `live` skipped something. `next` is always the next revision owed to the reader.
async fn watch_task(
    db: Weak<Db>,
    prefix: String,
    mut next: i64,
    mut live: broadcast::Receiver<Arc<Commit>>,
    out: mpsc::Sender<Result<WatchEvent, StoreError>>,
) {
    let mut behind = true;
    loop {
        if behind {
            match catch_up(&db, &prefix, &mut next, &out).await {
                Ok(true) => behind = false,
                Ok(false) => return, // the reader or the store is gone
                Err(e) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
            }
        }
        let msg = tokio::select! {
            m = live.recv() => m,
            _ = out.closed() => return,
        };
        match msg {
            Ok(commit) if commit.revision < next => {} // already replayed from the log
            Ok(commit) if commit.revision > next => behind = true, // the log has the gap
            Ok(commit) => {
                for e in commit
                    .events
                    .iter()
                    .filter(|e| e.kv.key.starts_with(&prefix))
                {
                    if out.send(Ok(e.clone())).await.is_err() {
                        return;
                    }
                }
                next += 1;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => behind = true,
            Err(broadcast::error::RecvError::Closed) => return, // the store was dropped
        }
    }
}

/// Delivers the change log from `next` up to the current revision. `Ok(false)` if the reader
/// or the store went away.
async fn catch_up(
    db: &Weak<Db>,
    prefix: &str,
    next: &mut i64,
    out: &mpsc::Sender<Result<WatchEvent, StoreError>>,
) -> Result<bool, StoreError> {
    loop {
        let Some(db2) = db.upgrade() else {
            return Ok(false);
        };
        let (prefix2, from) = (prefix.to_owned(), *next);
        let (events, last, current) = blocking(move || db2.read_changes(&prefix2, from)).await?;
        for e in events {
            if out.send(Ok(e)).await.is_err() {
                return Ok(false);
            }
        }
        *next = (*next).max(last + 1);
        if *next > current {
            return Ok(true);
        }
    }
}
