//! Content versions: a short hash of a value's JSON, so equal content has an equal version,
//! whoever computes it and whenever. Long-polls compare them; placement groups by them.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A short content hash of `value`'s JSON form.
pub fn content_version<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    of_bytes(&bytes)
}

/// The content version of bytes already serialised (what [`content_version`] hashes).
pub fn of_bytes(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}
