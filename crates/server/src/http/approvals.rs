//! `berth approve`, `berth reject` and `berth approvals` over HTTP. The rules live in
//! [`crate::approvals`]; who may call each route is the policy table's
//! ([`crate::policy::POLICY`]: approve and reject take the approve capability in the plan's
//! stack and environment).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use berth_api::control::{ApprovalView, ApproveResponse, RejectRequest};

use super::{body, AppState, Caller};
use crate::approvals::{self, ApprovalError, Approver};
use crate::error::ApiError;

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::Refused(_) => ApiError::refused(e.to_string()),
            ApprovalError::NotFound { .. } => ApiError::not_found(e.to_string()),
            ApprovalError::BadInput(_) => ApiError::invalid(e.to_string(), vec![]),
            ApprovalError::KeptChanging(_) => ApiError::conflict(e.to_string()),
            ApprovalError::Release(e) => e.into(),
            ApprovalError::State(e) => e.into(),
        }
    }
}

/// `POST /v1/stacks/{stack}/{env}/approvals/{plan}/approve`: one more approval; the N-th
/// runs the plan.
pub async fn approve(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env, plan)): Path<(String, String, String)>,
) -> Result<Json<ApproveResponse>, ApiError> {
    caller.require_admin()?;
    // The policy table checked the approve capability and the scope before this handler.
    let approver = Approver {
        name: caller.name(),
        may_approve: true,
    };
    Ok(Json(
        approvals::approve(&shared, &stack, &env, &plan, &approver).await?,
    ))
}

/// `POST /v1/stacks/{stack}/{env}/approvals/{plan}/reject`: refuses a pending plan.
pub async fn reject(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env, plan)): Path<(String, String, String)>,
    req: Result<Json<RejectRequest>, JsonRejection>,
) -> Result<Json<ApprovalView>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    Ok(Json(
        approvals::reject(&shared, &stack, &env, &plan, &caller.name(), &req.reason).await?,
    ))
}

/// `?stack=S&env=E` of `GET /v1/approvals`.
#[derive(Debug, serde::Deserialize)]
pub struct ListQuery {
    stack: Option<String>,
    env: Option<String>,
}

/// `GET /v1/approvals`: the plans waiting for approval.
pub async fn list(
    State(shared): AppState,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ApprovalView>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(
        approvals::list(&shared, q.stack.as_deref(), q.env.as_deref()).await?,
    ))
}
