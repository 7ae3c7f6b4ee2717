//! [`StoreError`]: every way the store can fail, each message naming the place and the remedy,
//! because these errors reach operators through `berth server` / `berth up` output.

use std::path::PathBuf;

/// A store failure. Messages say where (the file, the revision) and what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another handle in this one) has the store file open for writing.
    #[error(
        "store file {} is locked by another berth process{}; stop it or pick another --data-dir",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The store file.
        path: PathBuf,
        /// The holder's pid, if it recorded one next to the file.
        pid: Option<u32>,
    },

    /// The file is not a store this version of berth can read.
    #[error(
        "store file {} was written by an incompatible version ({detail}); \
         open it with the berth version that wrote it and export the state, or restore a backup",
        path.display()
    )]
    Incompatible {
        /// The store file.
        path: PathBuf,
        /// What does not match.
        detail: String,
    },

    /// Data read from disk does not decode: the file is damaged.
    #[error(
        "store file {} is corrupt: {detail}; restore it from a backup or move it aside to start empty",
        path.display()
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What was wrong, and where.
        detail: String,
    },

    /// An I/O or storage-engine failure while doing `op`.
    #[error(
        "store file {}: {op} failed: {source}; check the disk (free space, permissions, health)",
        path.display()
    )]
    Storage {
        /// The store file.
        path: PathBuf,
        /// What the store was doing ("open", "commit", "read", …).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A watch asked for history the store no longer keeps.
    #[error(
        "cannot watch from revision {requested}: changes up to revision {compact_revision} were \
         compacted away; re-list (range) and watch from the listed revision + 1"
    )]
    Compacted {
        /// The revision the watch needed next.
        requested: i64,
        /// The newest revision whose changes are gone; a watch from `compact_revision + 1` works.
        compact_revision: i64,
    },

    /// The transaction is malformed; nothing was changed.
    #[error("invalid transaction: {0}; fix the caller (nothing was written)")]
    InvalidTxn(String),

    /// The backend cannot serve requests (an etcd cluster unreachable, a runtime shutting down).
    #[error("store unavailable: {0}; retry later")]
    Unavailable(String),
}
