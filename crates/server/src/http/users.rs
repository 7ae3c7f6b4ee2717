//! `berth user add|list|rm`, `berth token rotate` and `berth audit [verify]` over HTTP. The
//! rules live in [`crate::users`] and [`crate::audit`]; who may call each route is the policy
//! table's ([`crate::policy::POLICY`]).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use berth_api::identity::{AuditEntry, AuditVerify, UserAdd, UserToken, UserView};

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::users::{self, UserError};

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::State(e) => e.into(),
            UserError::BadInput(_) | UserError::Bootstrap | UserError::NotAUser => {
                ApiError::invalid(e.to_string(), vec![])
            }
            UserError::Exists(_) | UserError::Changed(_) => ApiError::conflict(e.to_string()),
            UserError::NotFound(_) => ApiError::not_found(e.to_string()),
        }
    }
}

/// `POST /v1/users`: adds a user; the answer holds its token, shown this once.
pub async fn add(
    State(shared): AppState,
    caller: Caller,
    req: Result<Json<UserAdd>, JsonRejection>,
) -> Result<Json<UserToken>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    let (record, token) = users::add(&shared, &req).await?;
    tracing::info!(user = %record.name, role = %record.role, by = %caller.name(), "user added");
    Ok(Json(UserToken {
        user: record.view(),
        token,
    }))
}

/// `GET /v1/users`: every user (never a token or its hash).
pub async fn list(
    State(shared): AppState,
    caller: Caller,
) -> Result<Json<Vec<UserView>>, ApiError> {
    caller.require_admin()?;
    let users = users::list(&shared).await?;
    Ok(Json(users.iter().map(|u| u.view()).collect()))
}

/// `DELETE /v1/users/{name}`: removes a user; its token stops working at once.
pub async fn remove(
    State(shared): AppState,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    users::remove(&shared, &name).await?;
    tracing::info!(user = %name, by = %caller.name(), "user removed");
    Ok(Json(serde_json::json!({ "name": name, "removed": true })))
}

/// `POST /v1/token/rotate`: a new token for the calling user; the old one stops working.
pub async fn rotate(State(shared): AppState, caller: Caller) -> Result<Json<UserToken>, ApiError> {
    let name = match &caller {
        Caller::User(u) => u.name.clone(),
        Caller::Admin => return Err(UserError::Bootstrap.into()),
        _ => return Err(UserError::NotAUser.into()),
    };
    let (record, token) = users::rotate(&shared, &name).await?;
    Ok(Json(UserToken {
        user: record.view(),
        token,
    }))
}

/// `GET /v1/audit?since=MS&user=U&stack=S&limit=N`: the newest matching entries, oldest first.
pub async fn audit(
    State(shared): AppState,
    caller: Caller,
    Query(filter): Query<crate::audit::Filter>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    caller.require_admin()?;
    let (_, entries) = crate::audit::read_all(&shared).await?;
    Ok(Json(crate::audit::select(&entries, &filter)))
}

/// `GET /v1/audit/verify`: checks the hash chain and names every edited or removed entry.
pub async fn audit_verify(
    State(shared): AppState,
    caller: Caller,
) -> Result<Json<AuditVerify>, ApiError> {
    caller.require_admin()?;
    let (head, entries) = crate::audit::read_all(&shared).await?;
    Ok(Json(crate::audit::verify(head.as_ref(), &entries)))
}
