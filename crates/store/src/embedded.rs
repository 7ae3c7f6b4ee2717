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
//! ## Threads and ordering
//! redb is blocking, so every call runs on tokio's blocking pool. Writes are serialised by a
//! mutex held from `begin_write` until after the commit has been published on a
//! `tokio::sync::broadcast` channel: publications are therefore in revision order.
//!
//! ## Watches without gaps
//! A watch subscribes to the broadcast *before* reading anything, then replays the change log
//! from its start revision, then follows the broadcast, skipping revisions it already delivered.
//! The broadcast is bounded; a watcher that lags behind it (or sees a revision jump for any
//! reason) goes back to the change log from the next revision it owes, so it never misses an
//! event. If that history was compacted meanwhile, it yields [`StoreError::Compacted`] and ends.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

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
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history: 10_000,
            broadcast_capacity: 1024,
            watch_buffer: 256,
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
    live: broadcast::Sender<Arc<Commit>>,
    options: EmbeddedOptions,
}

/// The file. Watch tasks hold it weakly: they must keep neither the file open nor the broadcast
/// sender alive once the store is dropped.
struct Db {
    db: Database,
    path: PathBuf,
    pid_file: PathBuf,
}

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
        };
        let (live, _) = broadcast::channel(options.broadcast_capacity);
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db: Arc::new(db),
                write_lock: Mutex::new(()),
                live,
                options,
            }),
        })
    }

    /// The store file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.inner.db.path
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
}

/// Refuses what etcd refuses: a key put twice, or put and deleted, in one branch (the result
/// would depend on op order in one backend and be an error in the other).
fn validate_branch(ops: &[Op], branch: &str) -> Result<(), StoreError> {
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
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen
            | redb::DatabaseError::LockProtocolMismatch => StoreError::Locked {
                path: path.clone(),
                pid: std::fs::read_to_string(&pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            },
            e => map_redb(&path, "opening", e.into()),
        })?;
        // Best effort: only read to name the holder in a `Locked` error.
        if let Err(e) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!(file = %pid_file.display(), error = %e, "cannot record the store owner's pid");
        }
        let db = Db { db, path, pid_file };
        db.init()?;
        Ok(db)
    }

    /// Creates the tables and metadata of a new file, or checks an existing file's format.
    fn init(&self) -> Result<(), StoreError> {
        let wtx = self
            .db
            .begin_write()
            .map_err(|e| self.err("initialising", e))?;
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
        let rtx = self.db.begin_read().map_err(|e| self.err("reading", e))?;
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
        let rtx = self.db.begin_read().map_err(|e| self.err("reading", e))?;
        let kv = rtx.open_table(KV).map_err(|e| self.err("reading", e))?;
        Ok(self.record(&kv, key)?.map(|r| r.into_kv(key)))
    }

    fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let rtx = self.db.begin_read().map_err(|e| self.err("reading", e))?;
        let meta = rtx.open_table(META).map_err(|e| self.err("reading", e))?;
        let kv = rtx.open_table(KV).map_err(|e| self.err("reading", e))?;
        let revision = self.meta_value(&meta, META_REVISION)?;
        let kvs = self.scan_prefix(&kv, prefix)?;
        Ok(RangeResponse { kvs, revision })
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
        let rtx = self
            .db
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
    /// Runs one transaction: evaluate, apply, log, compact, commit durably, then publish.
    fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let db = &*self.db;
        let _serial = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut wtx = db
            .db
            .begin_write()
            .map_err(|e| db.err("starting a write", e))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Storage {
                path: db.path.clone(),
                op: "setting durability",
                source: Box::new(e),
            })?;
        let w = |e: redb::Error| map_redb(&db.path, "writing", e);
        let (response, events) = {
            let mut kv = wtx.open_table(KV).map_err(|e| w(e.into()))?;
            let mut log = wtx.open_table(CHANGES).map_err(|e| w(e.into()))?;
            let mut meta = wtx.open_table(META).map_err(|e| w(e.into()))?;
            let revision = db.meta_value(&meta, META_REVISION)?;

            let mut succeeded = true;
            for c in &txn.compares {
                let current = db.record(&kv, &c.key)?;
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
            let ops = if succeeded { txn.success } else { txn.failure };

            let new_rev = revision + 1;
            let mut events = Vec::new();
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        let prev = db.record(&kv, &key)?;
                        let (create_revision, version) = match &prev {
                            Some(p) => (p.create_revision, p.version + 1),
                            None => (new_rev, 1),
                        };
                        let bytes = codec::encode_record(create_revision, new_rev, version, &value);
                        kv.insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| w(e.into()))?;
                        let prev = prev.map(|p| p.into_kv(&key));
                        events.push(WatchEvent {
                            revision: new_rev,
                            kind: EventKind::Put,
                            kv: KeyValue {
                                key,
                                value,
                                create_revision,
                                mod_revision: new_rev,
                                version,
                            },
                            prev,
                        });
                        responses.push(OpResponse::Put);
                    }
                    Op::Delete { key } => {
                        let prev = db.record(&kv, &key)?;
                        let deleted = match prev {
                            None => 0,
                            Some(p) => {
                                kv.remove(key.as_str()).map_err(|e| w(e.into()))?;
                                events.push(tombstone(new_rev, p.into_kv(&key)));
                                1
                            }
                        };
                        responses.push(OpResponse::Delete { deleted });
                    }
                    Op::DeletePrefix { prefix } => {
                        let doomed = db.scan_prefix(&kv, &prefix)?;
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
                let response = TxnResponse {
                    succeeded,
                    revision,
                    responses,
                };
                (response, None)
            } else {
                meta.insert(META_REVISION, new_rev)
                    .map_err(|e| w(e.into()))?;
                log.insert(new_rev, codec::encode_events(&events).as_slice())
                    .map_err(|e| w(e.into()))?;
                // Keep exactly the last `history` revisions in the log.
                let compact = db.meta_value(&meta, META_COMPACT)?;
                let keep = i64::try_from(self.options.history).unwrap_or(i64::MAX);
                let new_compact = new_rev.saturating_sub(keep);
                if new_compact > compact {
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
                    meta.insert(META_COMPACT, new_compact)
                        .map_err(|e| w(e.into()))?;
                }
                let response = TxnResponse {
                    succeeded,
                    revision: new_rev,
                    responses,
                };
                (response, Some(events))
            }
        };
        match events {
            None => {
                wtx.abort().map_err(|e| db.err("aborting a write", e))?;
            }
            Some(events) => {
                wtx.commit().map_err(|e| db.err("committing", e))?;
                // Still under the write lock: publications stay in revision order. No receiver
                // is not an error.
                let _ = self.live.send(Arc::new(Commit {
                    revision: response.revision,
                    events,
                }));
            }
        }
        Ok(response)
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
