//! `berth rollout status|explain|pause|resume|promote|abort` over HTTP. The rules live in
//! [`crate::rollouts`]; these handlers parse, call and answer.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;

use super::{AppState, Caller};
use crate::error::ApiError;
use crate::rollouts::{self, Command, CommandResponse, RolloutError, RolloutStatus};

impl From<RolloutError> for ApiError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::State(e) => e.into(),
            RolloutError::NoRollout { .. } => ApiError::not_found(e.to_string()),
            RolloutError::NotProgressing { .. }
            | RolloutError::NotApplicable { .. }
            | RolloutError::KeptChanging { .. } => ApiError::conflict(e.to_string()),
        }
    }
}

/// `GET /v1/stacks/{stack}/{env}/rollout`: the rollout, each service's step, weights, time
/// left, step reports and current analysis.
pub async fn status(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env)): Path<(String, String)>,
) -> Result<Json<RolloutStatus>, ApiError> {
    caller.require_admin()?;
    super::nodes::fresh_view(&shared).await?;
    let now = shared.clock.now_ms();
    let view = shared.view.read();
    let traffic = crate::controllers::traffic_of(&shared);
    Ok(Json(rollouts::status(&view, traffic, &stack, &env, now)?))
}

/// `?full=true` of `promote`.
#[derive(Debug, Deserialize)]
pub struct CommandQuery {
    #[serde(default)]
    full: bool,
}

/// `POST /v1/stacks/{stack}/{env}/rollout/{command}`: `pause`, `resume`, `promote`
/// (`?full=true`: to 100 %) or `abort`.
pub async fn command(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env, command)): Path<(String, String, String)>,
    Query(q): Query<CommandQuery>,
) -> Result<Json<CommandResponse>, ApiError> {
    caller.require_admin()?;
    let command = match command.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "promote" => Command::Promote { full: q.full },
        "abort" => Command::Abort,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown rollout command `{other}`: expected pause, resume, promote or abort"
            )))
        }
    };
    let changed = rollouts::command(&shared, &stack, &env, command, &caller.name()).await?;
    Ok(Json(CommandResponse { changed }))
}
