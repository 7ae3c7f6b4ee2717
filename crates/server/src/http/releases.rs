//! Plans, deploys, history and rollbacks over HTTP. The rules live in [`crate::releases`];
//! these handlers parse (the stack file is rendered here), call and answer.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_api::control::{DeployRequest, DeployResponse, Release, RollbackRequest};
use berth_spec::Stack;

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::releases::{self, ReleaseError, Start};

impl From<ReleaseError> for ApiError {
    fn from(e: ReleaseError) -> Self {
        match e {
            ReleaseError::State(e) => e.into(),
            ReleaseError::MissingSecrets { ref missing, .. } => {
                let details = missing.clone();
                ApiError::invalid(e.to_string(), details)
            }
            ReleaseError::Plan(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
            ReleaseError::PlanMoved { .. }
            | ReleaseError::KeptChanging
            | ReleaseError::ConcurrentDeploy => ApiError::conflict(e.to_string()),
            ReleaseError::CapacityDrop { .. }
            | ReleaseError::Approval { .. }
            | ReleaseError::Unplaceable { .. }
            | ReleaseError::Vetoed { .. } => ApiError::refused(e.to_string()),
            ReleaseError::NoHistory { .. }
            | ReleaseError::NotRetained { .. }
            | ReleaseError::NoRollbackTarget { .. } => ApiError::not_found(e.to_string()),
        }
    }
}

/// The stack a request's file renders to in its environment: 400 with one line per problem.
fn render(req: &DeployRequest) -> Result<Stack, ApiError> {
    if req.source.len() > berth_spec::yaml::MAX_STACK_FILE_BYTES {
        return Err(super::stack_file_too_large(&req.file, req.source.len()));
    }
    berth_spec::render(req.source.as_bytes(), &req.env, &req.set).map_err(|d| {
        ApiError::invalid(
            format!(
                "{}: the stack file is not valid ({} error(s)); nothing was stored",
                req.file,
                d.0.len()
            ),
            d.0.iter()
                .map(|x| x.display_in(&req.file).to_string())
                .collect(),
        )
    })
}

/// `POST /v1/plan`: the plan against the live release; stores nothing.
pub async fn plan(
    State(shared): AppState,
    caller: Caller,
    req: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Json<DeployResponse>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    let target = render(&req)?;
    Ok(Json(releases::plan(&shared, &req.env, &target).await?))
}

/// `POST /v1/deploy`: plan, check policy, store the release and start its rollout.
pub async fn deploy(
    State(shared): AppState,
    caller: Caller,
    req: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<Json<DeployResponse>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    let target = render(&req)?;
    let how = Start {
        who: "admin",
        confirm: req.confirm.as_deref(),
        plan_id: req.plan_id.as_deref(),
        rollback_of: None,
        images: None,
        dry_run: req.dry_run,
        force: req.force,
    };
    Ok(Json(
        releases::deploy(&shared, &req.env, &target, &how).await?,
    ))
}

/// `GET /v1/stacks/{stack}/{env}/releases`: every retained release, newest first.
pub async fn history(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env)): Path<(String, String)>,
) -> Result<Json<Vec<Release>>, ApiError> {
    caller.require_admin()?;
    let releases = releases::history(&shared.view.read(), &stack, &env)?;
    Ok(Json(releases))
}

/// `POST /v1/stacks/{stack}/{env}/rollback`: a new release with an older one's content
/// (by default the newest that went live before the current one).
pub async fn rollback(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env)): Path<(String, String)>,
    req: Result<Json<RollbackRequest>, JsonRejection>,
) -> Result<Json<DeployResponse>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    Ok(Json(
        releases::rollback(&shared, &stack, &env, req.release).await?,
    ))
}
