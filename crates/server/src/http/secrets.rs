//! Secrets: `PUT`, `GET` (names and versions only) and `DELETE` under `/v1/secrets`.
//!
//! A stack file names the secrets a service needs; their values are set here, by an admin, and
//! never appear in a spec, a plan, a release, `berth status` or the event stream. Each write
//! bumps the secret's version; a release records the versions it was made with, so a deploy
//! after a change replaces the instances that use it (see `http::releases`).

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use berth_api::control::{SecretPut, SecretView};
use berth_store::{Compare, Op, Txn};

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::keys;
use crate::state::{self, decode, encode, SecretRecord};

/// The largest value accepted: environment variables are not for files.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

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

fn check_names(stack: &str, name: Option<&str>) -> Result<(), ApiError> {
    if !valid_stack(stack) {
        return Err(ApiError::invalid(
            format!("stack: {stack:?} is not a stack name ([a-z][a-z0-9-]*)"),
            vec![],
        ));
    }
    if let Some(name) = name {
        if !valid_name(name) {
            return Err(ApiError::invalid(
                format!("name: {name:?} is not a secret name ([A-Z_][A-Z0-9_]*)"),
                vec![],
            ));
        }
    }
    Ok(())
}

/// Refuses a value that could not be an environment variable's: longer than
/// [`MAX_VALUE_BYTES`], or holding a NUL byte (which no environment can carry: the instance
/// would fail at start with a misleading message). Used by the handler and the fuzz target.
pub fn check_value(req: &SecretPut) -> Result<(), ApiError> {
    if req.value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::invalid(
            format!(
                "value: {} bytes is more than the {MAX_VALUE_BYTES} bytes a secret may hold",
                req.value.len()
            ),
            vec![],
        ));
    }
    if let Some(at) = req.value.find('\0') {
        return Err(ApiError::invalid(
            format!("value: contains a NUL byte (\\0) at byte {at}, which no environment variable can hold: remove it"),
            vec![],
        ));
    }
    Ok(())
}

/// `PUT /v1/secrets/{stack}/{name}` with `{"value": "…"}`: sets the value and bumps the
/// version. Replacing a value erases the old one from the store's history (as `DELETE` does).
/// Answers the secret's name and new version (never the value).
pub async fn put(
    State(shared): AppState,
    caller: Caller,
    Path((stack, name)): Path<(String, String)>,
    req: Result<Json<SecretPut>, JsonRejection>,
) -> Result<Json<SecretView>, ApiError> {
    caller.require_admin()?;
    check_names(&stack, Some(&name))?;
    let req = body(req)?;
    check_value(&req)?;
    let version_key = keys::secret_version(&stack, &name);
    // Two writers racing bump the counter once each: the compare makes the loser retry.
    for _ in 0..5 {
        let (last, rev) = match shared.store.get(&version_key).await? {
            Some(kv) => (decode::<u64>(&version_key, &kv.value)?, kv.mod_revision),
            None => (0, 0),
        };
        let record = SecretRecord {
            value: req.value.clone(),
            version: last + 1,
            updated_ms: shared.clock.now_ms(),
        };
        let resp = shared
            .store
            .txn(Txn {
                compares: vec![Compare::mod_revision(&version_key, rev)],
                success: vec![
                    Op::put(&version_key, encode(&record.version)),
                    Op::put(keys::secret(&stack, &name), encode(&record)),
                ],
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            // A rotation: the old value must not stay readable in the store's history either.
            if last > 0 {
                shared.store.forget(&keys::secret(&stack, &name)).await?;
            }
            return Ok(Json(SecretView {
                stack,
                name,
                version: record.version,
                updated_ms: record.updated_ms,
            }));
        }
    }
    Err(ApiError::conflict(format!(
        "secret {name} of {stack} kept changing during the write: try again"
    )))
}

/// `GET /v1/secrets/{stack}`: every secret of the stack, by name, with versions and times.
pub async fn list(
    State(shared): AppState,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    caller.require_admin()?;
    check_names(&stack, None)?;
    let secrets = state::secrets(shared.store.as_ref(), &stack).await?;
    Ok(Json(views(&stack, &secrets)))
}

fn views(
    stack: &str,
    secrets: &BTreeMap<String, state::Versioned<SecretRecord>>,
) -> Vec<SecretView> {
    secrets
        .iter()
        .map(|(name, r)| SecretView {
            stack: stack.to_string(),
            name: name.clone(),
            version: r.value.version,
            updated_ms: r.value.updated_ms,
        })
        .collect()
}

/// `DELETE /v1/secrets/{stack}/{name}`: forgets the value. Running instances keep theirs;
/// the next deploy of a service that declares it is refused until it is set again.
///
/// The value is also erased from the store's history and the file compacted
/// ([`berth_store::Store::forget`]), so it cannot be read back from `state.redb` afterwards
/// (instance records of instances started with it keep it while they exist).
pub async fn delete(
    State(shared): AppState,
    caller: Caller,
    Path((stack, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    check_names(&stack, Some(&name))?;
    let key = keys::secret(&stack, &name);
    if !shared.store.delete(&key).await? {
        return Err(ApiError::not_found(format!(
            "stack {stack} has no secret {name}: see `berth secret list {stack}`"
        )));
    }
    shared.store.forget(&key).await?;
    Ok(Json(
        serde_json::json!({ "stack": stack, "name": name, "deleted": true }),
    ))
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
}
