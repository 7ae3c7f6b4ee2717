//! Users: named people or CI jobs with a role and optional stack / environment scopes, kept in
//! the store (`/users/NAME`, so the etcd backend replicates them) with their token's SHA-256
//! only. The admin token (`DATA_DIR/admin.token`) stays the bootstrap admin, named `admin`.
//!
//! A token is `berth_u_NAME.SECRET` ([`berth_api::identity::USER_TOKEN_PREFIX`]): the prefix is
//! for secret scanners, the name lets the server check a token with one store read (no cache,
//! so `berth user rm` and `berth token rotate` take effect on every server at once).

use berth_api::identity::{Role, UserAdd, UserView, USER_TOKEN_PREFIX};
use berth_store::{Compare, Op, Txn};
use serde::{Deserialize, Serialize};

use crate::auth::TokenHash;
use crate::state::StateError;
use crate::{keys, Shared};

/// The bootstrap admin's name (the admin token's user).
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// Longest user name.
pub const MAX_USER_NAME: usize = 63;
/// Most stacks or environments one user may be scoped to.
pub const MAX_SCOPES: usize = 64;

/// A user as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// The stacks the user may act on (empty: all).
    #[serde(default)]
    pub stacks: Vec<String>,
    /// The environments the user may act in (empty: all).
    #[serde(default)]
    pub envs: Vec<String>,
    /// When the user was added (ms).
    pub created_ms: u64,
    /// When the current token was issued (ms).
    pub token_issued_ms: u64,
    /// Hex SHA-256 of the current token.
    pub token_sha256: String,
}

impl UserRecord {
    /// The record as the API shows it (no hash).
    pub fn view(&self) -> UserView {
        UserView {
            name: self.name.clone(),
            role: self.role,
            stacks: self.stacks.clone(),
            envs: self.envs.clone(),
            created_ms: self.created_ms,
            token_issued_ms: self.token_issued_ms,
        }
    }
}

/// Why a user operation failed; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    BadInput(String),
    #[error("user {0} already exists: pick another name, or `berth user rm {0}` first")]
    Exists(String),
    #[error("no user {0}: see `berth user list`")]
    NotFound(String),
    #[error("the admin token's user (`admin`) has no stored token to rotate: delete DATA_DIR/admin.token and restart the server to replace it")]
    Bootstrap,
    #[error("only a user's own token can be rotated this way, and this caller is not a user")]
    NotAUser,
    #[error("user {0} changed while its token was rotated: retry")]
    Changed(String),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<berth_store::StoreError> for UserError {
    fn from(e: berth_store::StoreError) -> Self {
        UserError::State(e.into())
    }
}

/// Checks a user name: `[a-z][a-z0-9-]*`, at most [`MAX_USER_NAME`] characters, not `admin`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
    if !first_ok
        || name.len() > MAX_USER_NAME
        || !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "user name `{}`: use [a-z][a-z0-9-]*, at most {MAX_USER_NAME} characters",
            name.escape_debug()
        ));
    }
    if name == BOOTSTRAP_ADMIN {
        return Err(
            "`admin` is the admin token's user (DATA_DIR/admin.token): pick another name"
                .to_string(),
        );
    }
    Ok(())
}

/// Checks a stack or environment scope name: `[a-z][a-z0-9-]*` (the stack file's rule).
fn validate_scope(kind: &str, names: &[String]) -> Result<(), String> {
    if names.len() > MAX_SCOPES {
        return Err(format!("at most {MAX_SCOPES} --{kind} values per user"));
    }
    for n in names {
        let mut bytes = n.bytes();
        let ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && n.len() <= MAX_USER_NAME
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(format!(
                "--{kind} `{}`: use [a-z][a-z0-9-]* as in stack files",
                n.escape_debug()
            ));
        }
    }
    Ok(())
}

/// A new token for `name`: `berth_u_NAME.SECRET`.
pub fn new_token(name: &str) -> String {
    format!("{USER_TOKEN_PREFIX}{name}.{}", crate::auth::generate())
}

/// The user a presented token claims, if it has a user token's form.
pub fn token_user(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(USER_TOKEN_PREFIX)?;
    let (name, secret) = rest.rsplit_once('.')?;
    let hex = secret.len() == crate::auth::NODE_SECRET_LEN
        && secret
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && validate_name(name).is_ok()).then_some(name)
}

/// The user `token` belongs to, checked against the store (one read), if it is one.
pub async fn authenticate(shared: &Shared, token: &str) -> Result<Option<UserRecord>, StateError> {
    let Some(name) = token_user(token) else {
        return Ok(None);
    };
    let key = keys::user(name);
    let Some(kv) = shared.store.get(&key).await? else {
        return Ok(None);
    };
    let record: UserRecord = crate::state::decode(&key, &kv.value)?;
    let ok = TokenHash::from_hex(&record.token_sha256).is_some_and(|h| h.matches(token));
    Ok(ok.then_some(record))
}

/// Adds a user; answers its record and its token (to be shown once).
pub async fn add(shared: &Shared, req: &UserAdd) -> Result<(UserRecord, String), UserError> {
    validate_name(&req.name).map_err(UserError::BadInput)?;
    validate_scope("stack", &req.stacks).map_err(UserError::BadInput)?;
    validate_scope("env", &req.envs).map_err(UserError::BadInput)?;
    if req.role == Role::Admin && !(req.stacks.is_empty() && req.envs.is_empty()) {
        return Err(UserError::BadInput(
            "an admin does everything, users and nodes included, so --stack and --env cannot limit it: give a scoped user the deployer role".to_string(),
        ));
    }
    let now = shared.clock.now_ms();
    let token = new_token(&req.name);
    let dedup = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    let record = UserRecord {
        name: req.name.clone(),
        role: req.role,
        stacks: dedup(&req.stacks),
        envs: dedup(&req.envs),
        created_ms: now,
        token_issued_ms: now,
        token_sha256: TokenHash::of(&token).to_hex(),
    };
    let key = keys::user(&req.name);
    let resp = shared
        .store
        .txn(Txn {
            compares: vec![Compare::mod_revision(key.clone(), 0)],
            success: vec![Op::Put {
                key,
                value: crate::state::encode(&record),
            }],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(UserError::Exists(req.name.clone()));
    }
    Ok((record, token))
}

/// Every user, by name.
pub async fn list(shared: &Shared) -> Result<Vec<UserRecord>, UserError> {
    let resp = shared.store.range(keys::USERS).await?;
    let mut users = Vec::with_capacity(resp.kvs.len());
    for kv in resp.kvs {
        users.push(crate::state::decode::<UserRecord>(&kv.key, &kv.value)?);
    }
    users.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(users)
}

/// Removes a user: its token stops working at once.
pub async fn remove(shared: &Shared, name: &str) -> Result<(), UserError> {
    if name == BOOTSTRAP_ADMIN {
        return Err(UserError::BadInput(
            "`admin` is the admin token's user: it cannot be removed (replace DATA_DIR/admin.token to change its token)".to_string(),
        ));
    }
    validate_name(name).map_err(UserError::BadInput)?;
    if !shared.store.delete(&keys::user(name)).await? {
        return Err(UserError::NotFound(name.to_string()));
    }
    Ok(())
}

/// Issues `name` a new token; the old one stops working at once.
pub async fn rotate(shared: &Shared, name: &str) -> Result<(UserRecord, String), UserError> {
    let key = keys::user(name);
    let Some(kv) = shared.store.get(&key).await? else {
        return Err(UserError::NotFound(name.to_string()));
    };
    let mut record: UserRecord = crate::state::decode(&key, &kv.value)?;
    let token = new_token(name);
    record.token_sha256 = TokenHash::of(&token).to_hex();
    record.token_issued_ms = shared.clock.now_ms();
    let resp = shared
        .store
        .txn(Txn {
            compares: vec![Compare::mod_revision(key.clone(), kv.mod_revision)],
            success: vec![Op::Put {
                key,
                value: crate::state::encode(&record),
            }],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(UserError::Changed(name.to_string()));
    }
    Ok((record, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_tokens_carry_the_prefix_and_the_name() {
        let t = new_token("ci-bot");
        assert!(t.starts_with("berth_u_ci-bot."));
        assert_eq!(token_user(&t), Some("ci-bot"));
        assert_eq!(token_user("berth_u_ci-bot.1234"), None, "short secret");
        assert_eq!(token_user(&t.replace("berth_u_", "berth_x_")), None);
        assert_eq!(
            token_user(&format!("berth_u_admin.{}", "0".repeat(64))),
            None
        );
        assert_eq!(token_user(&format!("berth_u_Bad.{}", "0".repeat(64))), None);
    }

    #[test]
    fn user_names_follow_the_stack_rule_and_admin_is_taken() {
        for ok in ["alice", "ci-bot", "a1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "1a", "a_b", "a.b", "admin", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
