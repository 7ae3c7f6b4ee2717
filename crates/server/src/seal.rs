//! Secrets sealed at rest: envelope encryption of every secret value the store holds.
//!
//! - A **key-encryption key** (KEK): 32 random bytes, hex, in `DATA_DIR/secrets.key` (mode
//!   0600, created on the first start of a store that holds no data key) or the file named by
//!   `--secrets-key-file`. It never enters the store.
//! - **Data keys**: 32 random bytes each, kept in the store *wrapped* by the KEK
//!   (`/secret-keys/NNNNNNNNNN`, a [`DataKeyRecord`]). The one with the highest id is active:
//!   new values are sealed under it. Older ones stay readable until no value names them.
//! - **Values** ([`Sealed`]): XChaCha20-Poly1305 under a data key, a random 24-byte nonce per
//!   value, the data key's id beside it, and the value's identity (stack, secret name, version:
//!   [`secret_aad`]) as associated data, so a sealed value moved to another secret, stack or
//!   version does not open.
//!
//! A server whose KEK does not unwrap the store's data keys refuses to start
//! ([`SealError::WrongKey`]) instead of serving values it cannot read; one whose key file is
//! missing while the store holds data keys refuses too ([`SealError::KeyFileMissing`]): a new
//! KEK would seal new values and lose every old one.
//!
//! Rotation (`berth secret rotate-key`, see [`crate::secrets::rotate_key`]) adds a new data key
//! and re-seals every value under it; see there for why a crash in the middle loses nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use berth_store::{Compare, Op, Store, Txn};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{decode, encode, StateError};

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secrets.key";

/// Prefix of the wrapped data keys in the store.
pub const SECRET_KEYS: &str = "/secret-keys/";

/// A data key's record key: ids are zero-padded so a range lists them in order.
pub fn data_key(id: u64) -> String {
    format!("{SECRET_KEYS}{id:010}")
}

/// The associated data a secret value is sealed with: which value of which secret of which
/// stack it is. The secret's record and every instance record holding a copy use the same, so a
/// copy is the sealed value itself (the controller never opens a value to hand it on).
pub fn secret_aad(stack: &str, name: &str, version: u64) -> Vec<u8> {
    format!("berth secret v1\0{stack}\0{name}\0{version}").into_bytes()
}

/// The associated data a data key is wrapped with: its id, so a wrapped key cannot be moved.
fn data_key_aad(id: u64) -> Vec<u8> {
    format!("berth data key v1\0{id}").into_bytes()
}

/// One sealed value as the store keeps it (JSON: `{"key":1,"nonce":"…","ct":"…"}`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The id of the data key it is sealed under.
    pub key: u64,
    /// The random 24-byte nonce, hex.
    pub nonce: String,
    /// The ciphertext with its 16-byte tag, hex.
    pub ct: String,
}

/// Shows which key, not the bytes.
impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed(key {}, {} hex)", self.key, self.ct.len())
    }
}

/// A data key in the store (`/secret-keys/ID`), wrapped by the KEK.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataKeyRecord {
    /// The wrapping's nonce, hex.
    pub nonce: String,
    /// The data key sealed under the KEK, hex.
    pub wrapped: String,
    /// The first 16 hex digits of the KEK's SHA-256, so a wrong key file can be told apart
    /// from a damaged record in the error.
    pub kek_sha256: String,
    pub created_ms: u64,
}

/// Why values could not be sealed or opened, or why the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the secrets key file {path}: {source}; check --secrets-key-file and its permissions")]
    KeyFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot write the secrets key file {path}: {source}; check the --data-dir is writable"
    )]
    KeyFileWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secrets key file {path} does not hold a key (64 hex digits): restore the file this store was sealed with")]
    KeyFileMalformed { path: PathBuf },
    #[error("the secrets key file {path} can be read by others (mode {mode:o}): run `chmod 600 {path}` and start again")]
    KeyFileOpen { path: PathBuf, mode: u32 },
    #[error("the store holds sealed secrets but the secrets key file {path} does not exist: restore it (or pass --secrets-key-file FILE); a new key would not open them")]
    KeyFileMissing { path: PathBuf },
    #[error("the secrets key file {path} (key {file_sha256}…) does not open the store's data key {id} (sealed with key {store_sha256}…): it is not the key this store's secrets were sealed with. Start with the right --secrets-key-file; the server does not start rather than serve values it cannot read")]
    WrongKey {
        path: PathBuf,
        id: u64,
        file_sha256: String,
        store_sha256: String,
    },
    #[error("a sealed value names data key {0}, which the store does not hold")]
    UnknownKey(u64),
    #[error("a sealed value of {what} does not open: it was changed or moved outside berth")]
    Corrupt { what: String },
    #[error("another server added data key {0} at the same time: try again")]
    Raced(u64),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<berth_store::StoreError> for SealError {
    fn from(e: berth_store::StoreError) -> Self {
        SealError::State(e.into())
    }
}

/// The data keys this server can use, unwrapped, and the active one.
struct Ring {
    keys: BTreeMap<u64, Arc<XChaCha20Poly1305>>,
    active: u64,
}

/// The KEK and the unwrapped data keys: what seals and opens secret values.
pub struct Keyring {
    kek: XChaCha20Poly1305,
    kek_sha256: String,
    path: PathBuf,
    ring: RwLock<Ring>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("kek_sha256", &self.kek_sha256)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

fn cipher(key: &[u8]) -> Option<XChaCha20Poly1305> {
    XChaCha20Poly1305::new_from_slice(key).ok()
}

fn seal_with(c: &XChaCha20Poly1305, key: u64, msg: &[u8], aad: &[u8]) -> Sealed {
    let nonce: [u8; 24] = random();
    // Encryption fails only for messages beyond 256 GiB; secret values are bounded far below.
    let ct = c
        .encrypt(&XNonce::from(nonce), Payload { msg, aad })
        .unwrap_or_default();
    Sealed {
        key,
        nonce: hex::encode(nonce),
        ct: hex::encode(ct),
    }
}

fn open_with(c: &XChaCha20Poly1305, nonce: &str, ct: &str, aad: &[u8]) -> Option<Vec<u8>> {
    let nonce: [u8; 24] = hex::decode(nonce).ok()?.try_into().ok()?;
    let ct = hex::decode(ct).ok()?;
    c.decrypt(&XNonce::from(nonce), Payload { msg: &ct, aad })
        .ok()
}

/// Reads the KEK from `path`, or creates it (0600) when absent and `may_create`.
fn read_or_create_kek(path: &Path, may_create: bool) -> Result<[u8; 32], SealError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map_err(|source| SealError::KeyFileRead {
                    path: path.to_path_buf(),
                    source,
                })?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(SealError::KeyFileOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| SealError::KeyFileMalformed {
                    path: path.to_path_buf(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !may_create {
                return Err(SealError::KeyFileMissing {
                    path: path.to_path_buf(),
                });
            }
            let kek: [u8; 32] = random();
            crate::auth::write_secret(path, &hex::encode(kek)).map_err(|source| {
                SealError::KeyFileWrite {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            Ok(kek)
        }
        Err(source) => Err(SealError::KeyFileRead {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Keyring {
    /// Opens the store's data keys with the KEK in `key_file` (default `DATA_DIR/secrets.key`),
    /// creating the key file and the first data key on a store that has none.
    pub async fn open(
        store: &dyn Store,
        data_dir: &Path,
        key_file: Option<&Path>,
        now_ms: u64,
    ) -> Result<Keyring, SealError> {
        let path = key_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join(KEY_FILE));
        let stored = store.range(SECRET_KEYS).await?;
        let kek = read_or_create_kek(&path, stored.kvs.is_empty())?;
        let keyring = Keyring {
            kek: cipher(&kek).ok_or_else(|| SealError::KeyFileMalformed { path: path.clone() })?,
            kek_sha256: hex::encode(Sha256::digest(kek))[..16].to_string(),
            path,
            ring: RwLock::new(Ring {
                keys: BTreeMap::new(),
                active: 0,
            }),
        };
        keyring.refresh(store).await?;
        if keyring.active() == 0 {
            keyring.add_key(store, 1, now_ms).await?;
        }
        Ok(keyring)
    }

    /// The id of the data key new values are sealed under.
    pub fn active(&self) -> u64 {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .active
    }

    /// The ids of every data key held.
    pub fn ids(&self) -> Vec<u64> {
        self.ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys
            .keys()
            .copied()
            .collect()
    }

    /// Reads the store's data keys again (another server rotated): unwraps the new ones, forgets
    /// deleted ones, and makes the highest the active one.
    pub async fn refresh(&self, store: &dyn Store) -> Result<(), SealError> {
        let stored = store.range(SECRET_KEYS).await?;
        let mut keys = BTreeMap::new();
        for kv in &stored.kvs {
            let Some(id) = kv
                .key
                .strip_prefix(SECRET_KEYS)
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let record: DataKeyRecord = decode(&kv.key, &kv.value)?;
            let key = open_with(&self.kek, &record.nonce, &record.wrapped, &data_key_aad(id))
                .and_then(|k| cipher(&k))
                .ok_or_else(|| SealError::WrongKey {
                    path: self.path.clone(),
                    id,
                    file_sha256: self.kek_sha256.clone(),
                    store_sha256: record.kek_sha256.clone(),
                })?;
            keys.insert(id, Arc::new(key));
        }
        let mut ring = self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.active = keys.keys().next_back().copied().unwrap_or(0);
        ring.keys = keys;
        Ok(())
    }

    /// Writes data key `id` (only if absent) and makes it the active one.
    async fn add_key(&self, store: &dyn Store, id: u64, now_ms: u64) -> Result<(), SealError> {
        let bytes: [u8; 32] = random();
        let wrapped = seal_with(&self.kek, 0, &bytes, &data_key_aad(id));
        let record = DataKeyRecord {
            nonce: wrapped.nonce,
            wrapped: wrapped.ct,
            kek_sha256: self.kek_sha256.clone(),
            created_ms: now_ms,
        };
        let key = data_key(id);
        let resp = store
            .txn(Txn {
                compares: vec![Compare::absent(&key)],
                success: vec![Op::put(&key, encode(&record))],
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            // Another server wrote it first: use theirs.
            self.refresh(store).await?;
            return if id == 1 {
                Ok(())
            } else {
                Err(SealError::Raced(id))
            };
        }
        let c = cipher(&bytes).ok_or(SealError::UnknownKey(id))?;
        let mut ring = self
            .ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ring.keys.insert(id, Arc::new(c));
        ring.active = ring.active.max(id);
        Ok(())
    }

    /// Adds a new data key (the active one's id + 1) and makes it active: the first step of a
    /// rotation. Returns its id.
    pub async fn add_next(&self, store: &dyn Store, now_ms: u64) -> Result<u64, SealError> {
        self.refresh(store).await?;
        let id = self.active() + 1;
        self.add_key(store, id, now_ms).await?;
        Ok(id)
    }

    /// Deletes data key `id` from the store and the ring (no value may name it any more).
    pub async fn retire(&self, store: &dyn Store, id: u64) -> Result<(), SealError> {
        store.delete(&data_key(id)).await?;
        self.ring
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys
            .remove(&id);
        Ok(())
    }

    /// Seals `value` under the active data key with `aad`.
    pub fn seal(&self, value: &[u8], aad: &[u8]) -> Sealed {
        let ring = self
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match ring.keys.get(&ring.active) {
            Some(c) => seal_with(c, ring.active, value, aad),
            // `open` always leaves an active key; an empty ring cannot seal anything.
            None => Sealed {
                key: 0,
                nonce: String::new(),
                ct: String::new(),
            },
        }
    }

    /// Opens a sealed value; `what` names it in the error.
    pub fn open_value(&self, sealed: &Sealed, aad: &[u8], what: &str) -> Result<String, SealError> {
        let c = self
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys
            .get(&sealed.key)
            .cloned()
            .ok_or(SealError::UnknownKey(sealed.key))?;
        open_with(&c, &sealed.nonce, &sealed.ct, aad)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| SealError::Corrupt {
                what: what.to_string(),
            })
    }

    /// Opens `sealed` and seals its value again under the active key (same `aad`); `None`
    /// when it already is under the active key.
    pub fn reseal(
        &self,
        sealed: &Sealed,
        aad: &[u8],
        what: &str,
    ) -> Result<Option<Sealed>, SealError> {
        if sealed.key == self.active() {
            return Ok(None);
        }
        let value = self.open_value(sealed, aad, what)?;
        Ok(Some(self.seal(value.as_bytes(), aad)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::EmbeddedStore;

    async fn store(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir.join("state.redb"))
            .await
            .expect("store")
    }

    #[tokio::test]
    async fn a_value_opens_only_with_its_own_identity() {
        let dir = tempfile::tempdir().expect("dir");
        let s = store(dir.path()).await;
        let ring = Keyring::open(&s, dir.path(), None, 1).await.expect("open");
        let aad = secret_aad("shop", "DB_PASSWORD", 3);
        let sealed = ring.seal(b"hunter2", &aad);
        assert_eq!(sealed.key, 1);
        assert!(!sealed.ct.contains(&hex::encode("hunter2")));
        assert_eq!(
            ring.open_value(&sealed, &aad, "x").expect("opens"),
            "hunter2"
        );
        for other in [
            secret_aad("shop", "DB_PASSWORD", 4),
            secret_aad("shop", "API_KEY", 3),
            secret_aad("blog", "DB_PASSWORD", 3),
        ] {
            assert!(matches!(
                ring.open_value(&sealed, &other, "x"),
                Err(SealError::Corrupt { .. })
            ));
        }
        // Two seals of one value differ (random nonces).
        assert_ne!(ring.seal(b"hunter2", &aad).ct, sealed.ct);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_file_is_refused_once_the_store_holds_keys() {
        let dir = tempfile::tempdir().expect("dir");
        let s = store(dir.path()).await;
        Keyring::open(&s, dir.path(), None, 1).await.expect("first");
        let other = dir.path().join("other.key");
        crate::auth::write_secret(&other, &hex::encode([7u8; 32])).expect("write");
        let wrong = Keyring::open(&s, dir.path(), Some(&other), 1)
            .await
            .expect_err("wrong key");
        assert!(
            matches!(wrong, SealError::WrongKey { id: 1, .. }),
            "{wrong}"
        );
        assert!(wrong.to_string().contains("not the key"), "{wrong}");
        let missing = dir.path().join("missing.key");
        let err = Keyring::open(&s, dir.path(), Some(&missing), 1)
            .await
            .expect_err("missing key");
        assert!(matches!(err, SealError::KeyFileMissing { .. }), "{err}");
        assert!(!missing.exists(), "no new key made for a sealed store");
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let open = Keyring::open(&s, dir.path(), Some(&other), 1)
            .await
            .expect_err("loose mode");
        assert!(matches!(open, SealError::KeyFileOpen { .. }), "{open}");
    }

    #[tokio::test]
    async fn a_rotation_keeps_old_values_readable_until_resealed() {
        let dir = tempfile::tempdir().expect("dir");
        let s = store(dir.path()).await;
        let ring = Keyring::open(&s, dir.path(), None, 1).await.expect("open");
        let aad = secret_aad("shop", "X", 1);
        let old = ring.seal(b"v", &aad);
        assert_eq!(ring.add_next(&s, 2).await.expect("rotate"), 2);
        assert_eq!(ring.active(), 2);
        // A second server (the same store and key) sees both keys.
        let again = Keyring::open(&s, dir.path(), None, 3)
            .await
            .expect("reopen");
        assert_eq!(again.ids(), vec![1, 2]);
        assert_eq!(again.open_value(&old, &aad, "x").expect("old opens"), "v");
        let new = again
            .reseal(&old, &aad, "x")
            .expect("reseal")
            .expect("moved");
        assert_eq!(new.key, 2);
        assert!(again.reseal(&new, &aad, "x").expect("reseal").is_none());
        ring.retire(&s, 1).await.expect("retire");
        assert!(matches!(
            ring.open_value(&old, &aad, "x"),
            Err(SealError::UnknownKey(1))
        ));
    }
}
