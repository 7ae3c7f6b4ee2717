//! Secrets as a service: names checked, values checked, versions bumped, values erased from
//! the store's history. `http::secrets` parses, calls these and answers.
//!
//! A stack file names the secrets a service needs; their values are set here, by an admin, and
//! never appear in a spec, a plan, a release, `berth status` or the event stream. Each write
//! bumps the secret's version; a release records the versions it was made with, so a deploy
//! after a change replaces the instances that use it (see [`crate::releases`]).
//!
//! Values are sealed before they reach the store ([`crate::seal`]): the secret record and the
//! instance records that copy it hold ciphertext only, opened for the instance's own node
//! ([`open_env`]). [`seal_plaintext`] seals what an older berth stored in the clear, and
//! [`rotate_key`] re-seals everything under a new data key.

use berth_api::control::SecretView;
use berth_store::{Compare, Op, Txn};

use std::collections::BTreeMap;

use berth_store::Store;

use crate::seal::{secret_aad, Keyring, SealError, Sealed};
use crate::state::{decode, encode, InstanceRecord, SecretRecord, StateError};
use crate::view::View;
use crate::{keys, Shared};

/// The largest value accepted: environment variables are not for files.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Why a secret operation did nothing.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("stack: {0:?} is not a stack name ([a-z][a-z0-9-]*)")]
    BadStack(String),
    #[error("name: {0:?} is not a secret name ([A-Z_][A-Z0-9_]*)")]
    BadName(String),
    #[error("value: {0} bytes is more than the {MAX_VALUE_BYTES} bytes a secret may hold")]
    TooLarge(usize),
    #[error("value: contains a NUL byte (\\0) at byte {0}, which no environment variable can hold: remove it")]
    Nul(usize),
    #[error("secret {name} of {stack} kept changing during the write: try again")]
    KeptChanging { stack: String, name: String },
    #[error("stack {stack} has no secret {name}: see `berth secret list {stack}`")]
    NotFound { stack: String, name: String },
    #[error("secret values kept changing while they were re-sealed under data key {0}: run `berth secret rotate-key` again (every value stays readable meanwhile)")]
    RotationBusy(u64),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<berth_store::StoreError> for SecretError {
    fn from(e: berth_store::StoreError) -> Self {
        SecretError::State(e.into())
    }
}

/// A secret name as the stack file accepts it: `[A-Z_][A-Z0-9_]*`.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A stack name as the stack file accepts it: `[a-z][a-z0-9-]*`.
fn valid_stack(stack: &str) -> bool {
    let mut bytes = stack.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Refuses a stack name (and a secret name, if given) the stack file would not accept.
pub fn check_names(stack: &str, name: Option<&str>) -> Result<(), SecretError> {
    if !valid_stack(stack) {
        return Err(SecretError::BadStack(stack.to_string()));
    }
    match name {
        Some(name) if !valid_name(name) => Err(SecretError::BadName(name.to_string())),
        _ => Ok(()),
    }
}

/// Refuses a value that could not be an environment variable's: longer than
/// [`MAX_VALUE_BYTES`], or holding a NUL byte (which no environment can carry: the instance
/// would fail at start with a misleading message).
pub fn check_value(value: &str) -> Result<(), SecretError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(SecretError::TooLarge(value.len()));
    }
    if let Some(at) = value.find('\0') {
        return Err(SecretError::Nul(at));
    }
    Ok(())
}

/// Sets a secret's value and bumps its version. Replacing a value erases the old one from
/// the store's history (as [`delete`] does). Answers the name and new version, never the
/// value, once the live view has the write.
pub async fn put(
    shared: &Shared,
    stack: &str,
    name: &str,
    value: &str,
) -> Result<SecretView, SecretError> {
    check_names(stack, Some(name))?;
    check_value(value)?;
    let version_key = keys::secret_version(stack, name);
    // Two writers racing bump the counter once each: the compare makes the loser retry.
    for _ in 0..5 {
        let (last, rev) = match shared.store.get(&version_key).await? {
            Some(kv) => (decode::<u64>(&version_key, &kv.value)?, kv.mod_revision),
            None => (0, 0),
        };
        let version = last + 1;
        let record = SecretRecord {
            value: None,
            sealed: Some(
                shared
                    .keyring
                    .seal(value.as_bytes(), &secret_aad(stack, name, version)),
            ),
            version,
            updated_ms: shared.clock.now_ms(),
        };
        let resp = shared
            .store
            .txn(Txn {
                compares: vec![Compare::mod_revision(&version_key, rev)],
                success: vec![
                    Op::put(&version_key, encode(&record.version)),
                    Op::put(keys::secret(stack, name), encode(&record)),
                ],
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            // A rotation: the old value must not stay readable in the store's history either.
            if last > 0 {
                shared.store.forget(&keys::secret(stack, name)).await?;
            }
            // The next deploy reads the view: it must see this version.
            shared.view.caught_up(resp.revision).await;
            return Ok(SecretView {
                stack: stack.to_string(),
                name: name.to_string(),
                version: record.version,
                updated_ms: record.updated_ms,
            });
        }
    }
    Err(SecretError::KeptChanging {
        stack: stack.to_string(),
        name: name.to_string(),
    })
}

/// Every secret of a stack, by name, with versions and times (never values).
pub fn list(view: &View, stack: &str) -> Result<Vec<SecretView>, SecretError> {
    check_names(stack, None)?;
    Ok(view
        .secrets_of(stack)
        .iter()
        .map(|(name, r)| SecretView {
            stack: stack.to_string(),
            name: name.clone(),
            version: r.value.version,
            updated_ms: r.value.updated_ms,
        })
        .collect())
}

/// Forgets a secret's value. Running instances keep theirs; the next deploy of a service that
/// declares it is refused until it is set again.
///
/// The value is also erased from the store's history and the file compacted
/// ([`berth_store::Store::forget`]), so it cannot be read back from `state.redb` afterwards
/// (instance records of instances started with it keep it while they exist).
pub async fn delete(shared: &Shared, stack: &str, name: &str) -> Result<(), SecretError> {
    check_names(stack, Some(name))?;
    let key = keys::secret(stack, name);
    if !shared.store.delete(&key).await? {
        return Err(SecretError::NotFound {
            stack: stack.to_string(),
            name: name.to_string(),
        });
    }
    shared.store.forget(&key).await?;
    let revision = shared.store.revision().await?;
    shared.view.caught_up(revision).await;
    Ok(())
}

/// The values of an instance's secrets, opened for its own node: `spec.secret_env` as the
/// agent needs it. A value that does not open is an error, never an empty or garbled value.
pub fn open_env(
    keyring: &Keyring,
    record: &InstanceRecord,
) -> Result<BTreeMap<String, String>, SealError> {
    let mut env = record.spec.secret_env.clone();
    for (name, sealed) in &record.sealed_env {
        let version = record.secret_versions.get(name).copied().unwrap_or(0);
        let aad = secret_aad(&record.spec.stack, name, version);
        let what = format!("secret {name} of instance {}", record.spec.id);
        env.insert(name.clone(), keyring.open_value(sealed, &aad, &what)?);
    }
    Ok(env)
}

/// How one record's sealed values change in a pass of [`reseal_all`] or [`seal_plaintext`].
enum Change {
    /// Nothing to do.
    Same,
    /// The new encoding; `plaintext`: it held a value in the clear (its history must be erased).
    Write { bytes: Vec<u8>, plaintext: bool },
}

/// A secret record with its value sealed under the active key (plaintext sealed, an older
/// key's value re-sealed).
fn reseal_secret(keyring: &Keyring, key: &str, bytes: &[u8]) -> Result<Change, SecretError> {
    let mut record: SecretRecord = decode(key, bytes)?;
    let Some((stack, name)) = key
        .strip_prefix(keys::SECRETS)
        .and_then(|rest| rest.split_once('/'))
    else {
        return Ok(Change::Same);
    };
    let aad = secret_aad(stack, name, record.version);
    if let Some(plain) = record.value.take() {
        record.sealed = Some(keyring.seal(plain.as_bytes(), &aad));
        return Ok(Change::Write {
            bytes: encode(&record),
            plaintext: true,
        });
    }
    let Some(sealed) = &record.sealed else {
        return Ok(Change::Same);
    };
    match keyring.reseal(sealed, &aad, &format!("secret {name} of stack {stack}"))? {
        Some(new) => {
            record.sealed = Some(new);
            Ok(Change::Write {
                bytes: encode(&record),
                plaintext: false,
            })
        }
        None => Ok(Change::Same),
    }
}

/// An instance record with its secrets' values sealed under the active key.
fn reseal_instance(keyring: &Keyring, key: &str, bytes: &[u8]) -> Result<Change, SecretError> {
    let mut record: InstanceRecord = decode(key, bytes)?;
    let plaintext = !record.spec.secret_env.is_empty();
    let mut changed = plaintext;
    for (name, value) in std::mem::take(&mut record.spec.secret_env) {
        let version = record.secret_versions.get(&name).copied().unwrap_or(0);
        let aad = secret_aad(&record.spec.stack, &name, version);
        record
            .sealed_env
            .insert(name, keyring.seal(value.as_bytes(), &aad));
    }
    let mut resealed: BTreeMap<String, Sealed> = BTreeMap::new();
    for (name, sealed) in &record.sealed_env {
        let version = record.secret_versions.get(name).copied().unwrap_or(0);
        let aad = secret_aad(&record.spec.stack, name, version);
        let what = format!("secret {name} of instance {}", record.spec.id);
        if let Some(new) = keyring.reseal(sealed, &aad, &what)? {
            resealed.insert(name.clone(), new);
        }
    }
    changed |= !resealed.is_empty();
    record.sealed_env.extend(resealed);
    Ok(if changed {
        Change::Write {
            bytes: encode(&record),
            plaintext,
        }
    } else {
        Change::Same
    })
}

/// What one pass over the store's sealed values did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResealPass {
    /// Records written (sealed or re-sealed).
    pub written: usize,
    /// Records that changed under the pass (their compare failed): the next pass sees them.
    pub raced: usize,
}

/// One pass: every secret and instance record whose values are in the clear or under an older
/// data key is written again, sealed under the active one, each by compare-and-swap on its
/// `mod_revision` (a record changed meanwhile is left for the next pass, never overwritten).
/// The history of a record that held plaintext is erased ([`Store::forget`]).
pub async fn reseal_all(store: &dyn Store, keyring: &Keyring) -> Result<ResealPass, SecretError> {
    let mut pass = ResealPass::default();
    for prefix in [keys::SECRETS, keys::INSTANCES] {
        let listed = store.range(prefix).await?;
        for kv in listed.kvs {
            let change = if prefix == keys::SECRETS {
                reseal_secret(keyring, &kv.key, &kv.value)?
            } else {
                reseal_instance(keyring, &kv.key, &kv.value)?
            };
            let Change::Write { bytes, plaintext } = change else {
                continue;
            };
            match store.cas(&kv.key, kv.mod_revision, bytes).await? {
                Some(_) => {
                    pass.written += 1;
                    if plaintext {
                        store.forget(&kv.key).await?;
                    }
                }
                None => pass.raced += 1,
            }
        }
    }
    Ok(pass)
}

/// How many passes [`reseal_until_done`] makes before it gives up (a store whose records keep
/// changing under it: each pass only skips what changed during it).
const RESEAL_PASSES: usize = 20;

/// Passes of [`reseal_all`] until one finds nothing to do; returns the records written.
async fn reseal_until_done(store: &dyn Store, keyring: &Keyring) -> Result<usize, SecretError> {
    let mut written = 0;
    for _ in 0..RESEAL_PASSES {
        let pass = reseal_all(store, keyring).await?;
        written += pass.written;
        if pass.written == 0 && pass.raced == 0 {
            return Ok(written);
        }
    }
    Err(SecretError::RotationBusy(keyring.active()))
}

/// At start, before the view is loaded: seals every value an older berth stored in the clear
/// (secret records and their copies in instance records), and finishes a rotation a crash
/// interrupted (values still under an older data key). Nothing is lost: a value is replaced
/// only by its own sealed form, by compare-and-swap. Returns the records written.
pub async fn seal_plaintext(store: &dyn Store, keyring: &Keyring) -> Result<usize, SecretError> {
    reseal_until_done(store, keyring).await
}

/// What `berth secret rotate-key` did.
pub use berth_api::control::SecretKeyRotated as Rotated;

/// `berth secret rotate-key`: a new data key, every value re-sealed under it, while the server
/// keeps serving.
///
/// Crash safety: each step leaves every value readable with the keys the store holds.
/// 1. The new data key is written (wrapped by the KEK) in its own transaction and becomes the
///    active one; the old ones stay in the store.
/// 2. Each record is re-sealed by one compare-and-swap: it names the key it is sealed under, so
///    at every moment it is either the old ciphertext under a key the store still holds, or the
///    new one. A crash here leaves a mix that opens; the next start finishes the job
///    ([`seal_plaintext`] re-seals whatever is not under the active key).
/// 3. Only then are data keys deleted, and only those older than the one this rotation
///    replaced: a controller pass that read the view just before step 2 may still copy a value
///    sealed under that one into a new instance record, so it stays until the next rotation
///    (which re-seals such stragglers first).
pub async fn rotate_key(shared: &Shared) -> Result<Rotated, SecretError> {
    let store = shared.store.as_ref();
    let keyring = &shared.keyring;
    let replaced = keyring.active();
    let key = keyring.add_next(store, shared.clock.now_ms()).await?;
    tracing::info!(key, "new secrets data key; re-sealing every value under it");
    let resealed = reseal_until_done(store, keyring).await?;
    let revision = store.revision().await?;
    shared.view.caught_up(revision).await;
    let mut retired = Vec::new();
    for id in keyring.ids() {
        if id < replaced {
            keyring.retire(store, id).await?;
            retired.push(id);
        }
    }
    tracing::info!(key, resealed, ?retired, "secrets data key rotated");
    Ok(Rotated {
        key,
        resealed,
        retired,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_stack_file() {
        assert!(valid_name("DB_PASSWORD"));
        assert!(valid_name("_X1"));
        assert!(!valid_name("db_password"));
        assert!(!valid_name("1X"));
        assert!(!valid_name(""));
        assert!(!valid_name("A/B"));
    }

    #[test]
    fn values_must_fit_an_environment_variable() {
        assert!(check_value("s3cret").is_ok());
        assert!(matches!(check_value("a\0b"), Err(SecretError::Nul(1))));
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(
            matches!(check_value(&big), Err(SecretError::TooLarge(n)) if n == MAX_VALUE_BYTES + 1)
        );
        assert!(matches!(
            check_names("Shop", None),
            Err(SecretError::BadStack(_))
        ));
        assert!(matches!(
            check_names("shop", Some("x")),
            Err(SecretError::BadName(_))
        ));
    }
}
