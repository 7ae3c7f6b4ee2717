//! Secrets as a service: names checked, values checked, versions bumped, values erased from
//! the store's history. `http::secrets` parses, calls these and answers.
//!
//! A stack file names the secrets a service needs; their values are set here, by an admin, and
//! never appear in a spec, a plan, a release, `berth status` or the event stream. Each write
//! bumps the secret's version; a release records the versions it was made with, so a deploy
//! after a change replaces the instances that use it (see [`crate::releases`]).

use berth_api::control::SecretView;
use berth_store::{Compare, Op, Txn};

use crate::state::{decode, encode, SecretRecord, StateError};
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
        let record = SecretRecord {
            value: value.to_string(),
            version: last + 1,
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
