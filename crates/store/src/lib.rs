//! # berth-store — the one store interface
//!
//! Every piece of berth state (releases, rollouts, desired instances, node heartbeats, endpoints)
//! lives in a versioned key-value store. This crate defines that store once, as the [`Store`]
//! trait, with etcd's semantics, so that two backends can sit behind it:
//!
//! - [`EmbeddedStore`] — the default: one file (`DATA_DIR/state.redb`), for a single control-plane
//!   node. Built on `redb` (ACID, copy-on-write B-trees, an fsync per commit;
//!   concurrent transactions share one commit: group commit).
//! - [`EtcdStore`] — an etcd cluster (`etcd-client`), for several `berth server` replicas, with
//!   berth's keys under a prefix (`/berth` by default).
//!
//! Controllers are written against [`Store`] only, usually as `Arc<dyn Store>`.
//!
//! ## Map
//! - [`Store`] — the trait: [`Store::get`], [`Store::range`], [`Store::txn`], [`Store::watch`],
//!   and the conveniences [`Store::put`], [`Store::delete`], [`Store::delete_prefix`],
//!   [`Store::cas`] built on `txn`.
//! - [`Txn`], [`Compare`], [`Op`], [`TxnResponse`] — the one way to write: compare, then apply
//!   one of two op lists atomically.
//! - [`KeyValue`], [`RangeResponse`] — what reads return.
//! - [`WatchStream`], [`WatchEvent`], [`EventKind`] — ordered, gap-free change notifications.
//! - [`StoreError`] — every failure, each saying where it happened and what to do.
//! - [`EmbeddedStore`], [`EmbeddedOptions`] — the redb backend.
//! - [`EtcdStore`] — the etcd backend ([`etcd::parse_url`] reads `etcd://h1:2379,…`).
//! - [`export`] — every key at one revision as JSON, and back into an empty store.
//!
//! ## Vocabulary (etcd's)
//! - **revision** — a store-wide counter (`i64`). It starts at 0 on an empty store and grows by
//!   exactly 1 for every transaction that changed something. A transaction that changes nothing
//!   (a failed compare with an empty failure branch, a delete of an absent key) leaves it alone.
//! - **create_revision** — the revision at which a key was created (since its last deletion).
//! - **mod_revision** — the revision of the last change to a key. A key that does not exist has
//!   mod_revision 0, which is how "create only if absent" is written: [`Compare::absent`].
//! - **version** — how many times a key was written since it was created (1 after creation).
//! - **watch from revision R** — every change with revision ≥ R, in revision order, then live
//!   changes, with no gap and no duplicate. Reading a snapshot with [`Store::range`] and watching
//!   from its `revision + 1` therefore sees every later change exactly once.
//! - **compaction** — the store keeps a bounded history of changes. A watch from a revision whose
//!   history is gone fails with [`StoreError::Compacted`]; the caller re-lists and watches again.
//!
//! Keys are UTF-8 strings (berth uses `/`-separated paths); values are bytes (callers put JSON).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod clock;
mod codec;
mod embedded;
mod error;
pub mod etcd;
pub mod export;
mod types;
mod watch;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::StoreError;
pub use etcd::EtcdStore;
pub use types::{
    Compare, CompareTarget, EventKind, KeyValue, Op, OpResponse, RangeResponse, Txn, TxnResponse,
    WatchEvent,
};
pub use watch::WatchStream;

use async_trait::async_trait;

/// The versioned key-value store every berth controller reads and writes.
///
/// Object-safe (through `async_trait`) so the server can hold an `Arc<dyn Store>` and pick the
/// backend at start-up. Native `async fn` in traits would not allow `dyn Store`; the boxed future
/// `async_trait` makes per call costs nothing next to an fsync or an etcd round-trip.
///
/// Every write goes through [`Store::txn`]; the other write methods are shorthands for a one-op
/// transaction, so a backend implements only the five required methods.
#[async_trait]
pub trait Store: Send + Sync {
    /// Reads one key. `None` if it does not exist.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads every key starting with `prefix`, sorted by key, from one consistent snapshot.
    ///
    /// The response carries the snapshot's revision so the caller can [`Store::watch`] from
    /// `revision + 1` and miss nothing (the list-then-watch pattern).
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError>;

    /// Atomically evaluates `txn.compares` (all must hold) and applies `txn.success` if they do,
    /// `txn.failure` otherwise. The change is durable when this returns.
    ///
    /// Fails with [`StoreError::InvalidTxn`] (changing nothing) if a branch writes the same key
    /// twice, as etcd refuses it.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;

    /// Streams every change to keys starting with `prefix` from `from_revision` (inclusive) on.
    ///
    /// `from_revision <= 0` means "changes after now". Fails with [`StoreError::Compacted`] if the
    /// history from `from_revision` is gone; the stream itself may later yield that error and
    /// end if its reader falls so far behind that its history is compacted meanwhile.
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError>;

    /// The store's current revision (the last committed change).
    async fn revision(&self) -> Result<i64, StoreError>;

    /// Whether the store accepts writes now. `Err` says why not (a full disk, and the file could
    /// not be written again yet): the server's `/v1/health` answers 503 with it. A backend that
    /// cannot tell answers `Ok`. May try to recover (the embedded store reopens its file).
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Erases the values `key` had from the store's history (the change log) and reclaims the
    /// file's free space, so a deleted value (a secret) cannot be read back from the store's
    /// files. Call it after deleting `key`; watches replaying that history see empty values
    /// for it. A backend without local history does nothing.
    async fn forget(&self, key: &str) -> Result<(), StoreError> {
        let _ = key;
        Ok(())
    }

    /// Writes `key` unconditionally; returns the revision of the write.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<i64, StoreError> {
        let resp = self
            .txn(Txn {
                compares: vec![],
                success: vec![Op::put(key, value)],
                failure: vec![],
            })
            .await?;
        Ok(resp.revision)
    }

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let resp = self
            .txn(Txn {
                compares: vec![],
                success: vec![Op::delete(key)],
                failure: vec![],
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes every key starting with `prefix`; returns how many existed.
    async fn delete_prefix(&self, prefix: &str) -> Result<i64, StoreError> {
        let resp = self
            .txn(Txn {
                compares: vec![],
                success: vec![Op::delete_prefix(prefix)],
                failure: vec![],
            })
            .await?;
        Ok(resp.deleted())
    }

    /// Compare-and-swap: writes `value` only if `key`'s mod_revision is still
    /// `expected_mod_revision` (0: only if the key is absent).
    ///
    /// Returns `Some(revision)` of the write, or `None` if someone else changed the key first
    /// (re-read it and decide again). This is how controllers update state without lost updates.
    async fn cas(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: Vec<u8>,
    ) -> Result<Option<i64>, StoreError> {
        let resp = self
            .txn(Txn {
                compares: vec![Compare::mod_revision(key, expected_mod_revision)],
                success: vec![Op::put(key, value)],
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }
}
