//! Secrets: `PUT`, `GET` (names and versions only) and `DELETE` under `/v1/secrets`. The
//! rules live in [`crate::secrets`]; these handlers parse, call and answer.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use berth_api::control::{SecretPut, SecretView};

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::secrets::{self, SecretError};

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::State(e) => e.into(),
            SecretError::NotFound { .. } => ApiError::not_found(e.to_string()),
            SecretError::KeptChanging { .. } | SecretError::RotationBusy(_) => {
                ApiError::conflict(e.to_string())
            }
            SecretError::Seal(crate::seal::SealError::Raced(_)) => {
                ApiError::conflict(e.to_string())
            }
            SecretError::Seal(crate::seal::SealError::State(e)) => e.into(),
            SecretError::Seal(e) => {
                ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            SecretError::BadStack(_)
            | SecretError::BadName(_)
            | SecretError::TooLarge(_)
            | SecretError::Nul(_) => ApiError::invalid(e.to_string(), vec![]),
        }
    }
}

/// `PUT /v1/secrets/{stack}/{name}` with `{"value": "…"}`: sets the value and bumps the
/// version (see [`secrets::put`]). Answers the secret's name and new version (never the value).
pub async fn put(
    State(shared): AppState,
    caller: Caller,
    Path((stack, name)): Path<(String, String)>,
    req: Result<Json<SecretPut>, JsonRejection>,
) -> Result<Json<SecretView>, ApiError> {
    caller.require_admin()?;
    secrets::check_names(&stack, Some(&name))?;
    let req = body(req)?;
    Ok(Json(
        secrets::put(&shared, &stack, &name, &req.value).await?,
    ))
}

/// `GET /v1/secrets/{stack}`: every secret of the stack, by name, with versions and times.
pub async fn list(
    State(shared): AppState,
    caller: Caller,
    Path(stack): Path<String>,
) -> Result<Json<Vec<SecretView>>, ApiError> {
    caller.require_admin()?;
    // A `berth secret ls` right after `berth secret set` shows the new version.
    super::nodes::fresh_view(&shared).await?;
    let views = secrets::list(&shared.view.read(), &stack)?;
    Ok(Json(views))
}

/// `DELETE /v1/secrets/{stack}/{name}`: forgets the value, also from the store's history
/// (see [`secrets::delete`]).
pub async fn delete(
    State(shared): AppState,
    caller: Caller,
    Path((stack, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    secrets::delete(&shared, &stack, &name).await?;
    Ok(Json(
        serde_json::json!({ "stack": stack, "name": name, "deleted": true }),
    ))
}

/// `POST /v1/secret-key/rotate`: a new data key, every secret value re-sealed under it while
/// the server keeps serving (see [`secrets::rotate_key`]). Answers the new key's id, how many
/// records were re-sealed and which old keys were deleted.
pub async fn rotate_key(
    State(shared): AppState,
    caller: Caller,
) -> Result<Json<secrets::Rotated>, ApiError> {
    caller.require_admin()?;
    Ok(Json(secrets::rotate_key(&shared).await?))
}
