//! The values that cross the [`crate::Store`] interface. Plain data, shaped after etcd's
//! messages so both backends can produce them without loss.

/// One key with its value and version metadata, as a read or a watch event sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key (a `/`-separated path by berth's convention).
    pub key: String,
    /// The value; callers store JSON. Empty in the `kv` of a [`EventKind::Delete`] event.
    pub value: Vec<u8>,
    /// Revision at which the key was created (0 in a delete event's `kv`).
    pub create_revision: i64,
    /// Revision of the key's last change; what [`Compare::mod_revision`] checks.
    pub mod_revision: i64,
    /// Number of writes since creation (1 right after creation, 0 in a delete event's `kv`).
    pub version: i64,
}

/// The result of [`crate::Store::range`]: the keys, and the revision of the snapshot they were
/// read from, so that a following watch from `revision + 1` misses nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// Matching keys, sorted by key (byte order).
    pub kvs: Vec<KeyValue>,
    /// Store revision at the time of the read.
    pub revision: i64,
}

/// What a [`Compare`] checks on its key. Equality only: that is all berth's controllers need
/// (optimistic concurrency), and it maps one-to-one onto etcd's compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The key's mod_revision equals this; 0 means "the key does not exist".
    ModRevision(i64),
    /// The key exists and its value equals this (an absent key never matches, as in etcd).
    Value(Vec<u8>),
}

/// One condition of a [`Txn`]; all of a transaction's compares must hold for its success branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// The key checked.
    pub key: String,
    /// What is checked on it.
    pub target: CompareTarget,
}

impl Compare {
    /// Holds if `key`'s mod_revision is `revision` (0: the key is absent).
    pub fn mod_revision(key: impl Into<String>, revision: i64) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::ModRevision(revision),
        }
    }

    /// Holds if `key` does not exist — "create only if absent".
    pub fn absent(key: impl Into<String>) -> Self {
        Self::mod_revision(key, 0)
    }

    /// Holds if `key` exists with exactly this value.
    pub fn value(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            target: CompareTarget::Value(value.into()),
        }
    }
}

/// One write in a [`Txn`] branch. Deliberately small (no reads, no nested transactions) so the
/// etcd backend maps it directly; read with [`crate::Store::get`] / [`crate::Store::range`] and
/// guard with a [`Compare`] instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or overwrite a key.
    Put {
        /// The key written.
        key: String,
        /// Its new value.
        value: Vec<u8>,
    },
    /// Remove one key (a no-op if absent).
    Delete {
        /// The key removed.
        key: String,
    },
    /// Remove every key starting with `prefix` (the empty prefix removes everything).
    DeletePrefix {
        /// The prefix removed.
        prefix: String,
    },
}

impl Op {
    /// Shorthand for [`Op::Put`].
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Shorthand for [`Op::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// Shorthand for [`Op::DeletePrefix`].
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}

/// An atomic compare-then-write: if every compare holds, `success` is applied, otherwise
/// `failure`; either way as one change at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold (an empty list always holds).
    pub compares: Vec<Compare>,
    /// Ops applied when the compares hold.
    pub success: Vec<Op>,
    /// Ops applied when a compare fails.
    pub failure: Vec<Op>,
}

/// What one [`Op`] of the executed branch did, in the same order as the ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// The put was applied.
    Put,
    /// A delete or delete-prefix removed this many keys.
    Delete {
        /// Number of keys that existed and were removed.
        deleted: i64,
    },
}

/// The result of [`crate::Store::txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (so the success branch ran).
    pub succeeded: bool,
    /// The revision of this transaction's change if it changed anything; otherwise the store's
    /// current revision (as etcd's response header).
    pub revision: i64,
    /// One entry per op of the executed branch.
    pub responses: Vec<OpResponse>,
}

impl TxnResponse {
    /// Total keys removed by the executed branch's deletes.
    pub fn deleted(&self) -> i64 {
        self.responses
            .iter()
            .map(|r| match r {
                OpResponse::Delete { deleted } => *deleted,
                OpResponse::Put => 0,
            })
            .sum()
    }
}

/// Whether a [`WatchEvent`] is a write or a removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was removed.
    Delete,
}

/// One change to one key, as delivered by a [`crate::WatchStream`].
///
/// A transaction touching several keys yields several events with the same `revision`, in the
/// order of its ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Revision of the change (equal to `kv.mod_revision`).
    pub revision: i64,
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change; for a delete: the key, an empty value, `mod_revision` = the
    /// deletion's revision, `create_revision` and `version` 0 (etcd's tombstone shape).
    pub kv: KeyValue,
    /// The key before the change, if it existed; lets a consumer undo what it derived from it
    /// (e.g. remove a route) without its own cache.
    pub prev: Option<KeyValue>,
}
