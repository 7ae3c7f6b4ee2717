//! `berth store export` / `berth store import`: every key of a store at one revision, as one
//! JSON document, and back into an empty store: a backup, and the way a cluster moves from the
//! embedded store to etcd (or back, or across redb's file-format versions).
//!
//! The format (version 1):
//!
//! ```json
//! {
//!   "format": "berth-store-export",
//!   "version": 1,
//!   "revision": 42,
//!   "keys": [
//!     { "key": "/nodes/n1", "value": { "registration": { "...": "..." } } },
//!     { "key": "/odd", "value_hex": "00ff" }
//!   ]
//! }
//! ```
//!
//! - `revision`: the store revision the snapshot was read at (one [`Store::range`], so it is
//!   consistent). An import does not keep revisions: the target store numbers its own writes.
//! - `keys`: every key, sorted. `value` holds the value when its bytes are JSON (berth's
//!   records always are), else `value_hex` holds its bytes in hex.
//! - Secret values stay sealed: the export holds ciphertext and wrapped data keys, never a
//!   value in the clear. The server that opens the imported store needs the same
//!   `secrets.key`.

use serde::{Deserialize, Serialize};

use crate::{Compare, Op, Store, StoreError, Txn};

/// The `format` field of an export.
pub const FORMAT: &str = "berth-store-export";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// At most this many keys per import transaction (etcd's default `--max-txn-ops` is 128, and
/// each key takes a compare and a put).
const BATCH_KEYS: usize = 50;
/// About this many value bytes per import transaction (etcd's default request limit is 1.5 MiB).
const BATCH_BYTES: usize = 1024 * 1024;

/// A whole store at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Export {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The revision the snapshot was read at.
    pub revision: i64,
    /// Every key, sorted.
    pub keys: Vec<ExportedKey>,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedKey {
    /// The key.
    pub key: String,
    /// The value, when its bytes are JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The value's bytes in hex, when they are not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hex: Option<String>,
}

/// Why an export could not be read or imported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    /// The store failed.
    Store(#[from] StoreError),
    /// The file is not an export this berth reads.
    #[error("not a berth store export: {0}")]
    Format(String),
    /// The target already holds keys.
    #[error("the target store is not empty (it holds {count} keys, the first {first:?}): import only into an empty store (a new --data-dir, or an unused --etcd-prefix)")]
    NotEmpty {
        /// How many keys it holds.
        count: usize,
        /// Its first key.
        first: String,
    },
    /// A key changed in the target during the import.
    #[error("key {0:?} appeared in the target store during the import: another server is using it; stop it, empty the store and import again")]
    Raced(String),
}

impl ExportedKey {
    /// The value's bytes.
    fn bytes(&self) -> Result<Vec<u8>, ExportError> {
        match (&self.value, &self.value_hex) {
            (Some(v), None) => {
                serde_json::to_vec(v).map_err(|e| ExportError::Format(e.to_string()))
            }
            (None, Some(h)) => decode_hex(h).ok_or_else(|| {
                ExportError::Format(format!("key {:?}: value_hex is not hex", self.key))
            }),
            _ => Err(ExportError::Format(format!(
                "key {:?} needs exactly one of value and value_hex",
                self.key
            ))),
        }
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Reads every key of `store` at one revision.
pub async fn export(store: &dyn Store) -> Result<Export, StoreError> {
    let snapshot = store.range("").await?;
    let keys = snapshot
        .kvs
        .into_iter()
        .map(
            |kv| match serde_json::from_slice::<serde_json::Value>(&kv.value) {
                Ok(v) => ExportedKey {
                    key: kv.key,
                    value: Some(v),
                    value_hex: None,
                },
                Err(_) => ExportedKey {
                    key: kv.key,
                    value: None,
                    value_hex: Some(encode_hex(&kv.value)),
                },
            },
        )
        .collect();
    Ok(Export {
        format: FORMAT.to_string(),
        version: VERSION,
        revision: snapshot.revision,
        keys,
    })
}

/// Parses an export, checking its format and version.
pub fn parse(text: &[u8]) -> Result<Export, ExportError> {
    let export: Export =
        serde_json::from_slice(text).map_err(|e| ExportError::Format(e.to_string()))?;
    if export.format != FORMAT || export.version != VERSION {
        return Err(ExportError::Format(format!(
            "format {:?} version {}, this berth reads {FORMAT:?} version {VERSION}",
            export.format, export.version
        )));
    }
    Ok(export)
}

/// Writes every key of `export` into `store`, which must be empty; returns how many. Each
/// batch is one transaction that writes its keys only if they are still absent, so a server
/// started on the target meanwhile makes the import fail rather than mix two states.
pub async fn import(store: &dyn Store, export: &Export) -> Result<usize, ExportError> {
    let existing = store.range("").await?;
    if let Some(first) = existing.kvs.first() {
        return Err(ExportError::NotEmpty {
            count: existing.kvs.len(),
            first: first.key.clone(),
        });
    }
    let mut written = 0;
    let mut batch: Vec<(String, Vec<u8>)> = Vec::new();
    let mut bytes = 0;
    for key in &export.keys {
        let value = key.bytes()?;
        if !batch.is_empty() && (batch.len() >= BATCH_KEYS || bytes + value.len() > BATCH_BYTES) {
            written += commit(store, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
        bytes += value.len();
        batch.push((key.key.clone(), value));
    }
    if !batch.is_empty() {
        written += commit(store, batch).await?;
    }
    Ok(written)
}

async fn commit(store: &dyn Store, batch: Vec<(String, Vec<u8>)>) -> Result<usize, ExportError> {
    let n = batch.len();
    let first = batch.first().map(|(k, _)| k.clone()).unwrap_or_default();
    let resp = store
        .txn(Txn {
            compares: batch.iter().map(|(k, _)| Compare::absent(k)).collect(),
            success: batch.into_iter().map(|(k, v)| Op::put(k, v)).collect(),
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(ExportError::Raced(first));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedStore;

    #[tokio::test]
    async fn an_export_round_trips_into_an_empty_store_only() {
        let dir = tempfile::tempdir().expect("dir");
        let a = EmbeddedStore::open(dir.path().join("a.redb"))
            .await
            .expect("a");
        a.put("/r/1", br#"{"n":1}"#.to_vec()).await.expect("put");
        a.put("/raw", vec![0, 255, 7]).await.expect("put");
        for i in 0..120 {
            a.put(&format!("/many/{i:03}"), b"1".to_vec())
                .await
                .expect("put");
        }
        let export = export(&a).await.expect("export");
        let text = serde_json::to_vec_pretty(&export).expect("json");
        let parsed = parse(&text).expect("parse");
        assert_eq!(parsed, export);
        let b = EmbeddedStore::open(dir.path().join("b.redb"))
            .await
            .expect("b");
        assert_eq!(import(&b, &parsed).await.expect("import"), 122);
        let (ra, rb) = (a.range("").await.expect("a"), b.range("").await.expect("b"));
        let pairs = |r: crate::RangeResponse| -> Vec<(String, Vec<u8>)> {
            r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
        };
        assert_eq!(pairs(ra), pairs(rb));
        let again = import(&b, &parsed).await.expect_err("not empty");
        assert!(
            matches!(again, ExportError::NotEmpty { count: 122, .. }),
            "{again}"
        );
        assert!(parse(br#"{"format":"x","version":1,"revision":0,"keys":[]}"#).is_err());
    }
}
