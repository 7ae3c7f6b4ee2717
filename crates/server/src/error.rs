//! API errors: a status code and a JSON body that says what went wrong and what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::control::ErrorBody;

use crate::state::StateError;

/// An error an API handler returns; it becomes `{"error": …, "details": […]}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: message.into(),
                details: vec![],
            },
        }
    }

    /// 400 with one line per problem (for a bad stack file: `FILE:LINE:COL: message`).
    pub fn invalid(message: impl Into<String>, details: Vec<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                error: message.into(),
                details,
            },
        }
    }

    /// 404 for a named thing that does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 401: no or wrong credential.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token: pass --token or set BERTH_TOKEN (see DATA_DIR/admin.token)")
    }

    /// 409: the state moved since the caller looked; re-plan and retry.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 428: a policy needs the caller to confirm (the CLI exits 3).
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_REQUIRED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        tracing::error!(error = %e, "store error in an API call");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store failed: {e}; retry, and check the server's log"),
        )
    }
}

impl From<berth_store::StoreError> for ApiError {
    fn from(e: berth_store::StoreError) -> Self {
        StateError::from(e).into()
    }
}
