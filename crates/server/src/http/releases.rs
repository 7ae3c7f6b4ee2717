//! Plans, deploys, history and rollbacks over HTTP. The rules live in [`crate::releases`];
//! these handlers parse (the stack file is rendered here), call and answer.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use berth_api::control::{
    DeployRequest, DeployResponse, Release, RollbackRequest, StackRemoveRequest,
};
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
            | ReleaseError::Destructive { .. }
            | ReleaseError::Pending { .. }
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
    let who = caller.name();
    let how = Start {
        who: &who,
        confirm: req.confirm.as_deref(),
        plan_id: req.plan_id.as_deref(),
        rollback_of: None,
        images: None,
        dry_run: req.dry_run,
        force: req.force,
        removes_stack: false,
        approved_by: None,
        approval_exempt: false,
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
    // What the event stream has shown must be in the answer (`deploy --wait` reads it when
    // woken by an event): the view first catches up with the store.
    super::nodes::fresh_view(&shared).await?;
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
        releases::rollback(&shared, &stack, &env, req.release, &caller.name()).await?,
    ))
}

/// `DELETE /v1/stacks/{stack}/{env}`: `berth stack rm` — a release without the live one's
/// services, refused (428, exit 3) unless `confirm` is the stack's name. The history stays.
pub async fn remove(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env)): Path<(String, String)>,
    req: Result<Json<StackRemoveRequest>, JsonRejection>,
) -> Result<Json<DeployResponse>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    // The caller's name: a pending `stack rm` (approval: N) is authored by them.
    let who = caller.name();
    let how = Start {
        who: &who,
        confirm: req.confirm.as_deref(),
        dry_run: req.dry_run,
        ..Start::default()
    };
    Ok(Json(releases::remove(&shared, &stack, &env, &how).await?))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::extract::{Path, State};
    use berth_api::control::{Release, ReleaseStatus};
    use berth_store::EmbeddedStore;

    use crate::http::Caller;
    use crate::{keys, Clock, ServerConfig, Shared};

    /// `berth deploy --wait` reads the history when the event stream says the release went
    /// live: the history must hold every write the store had when it was asked, even if the
    /// view's follower has not applied it yet (it answered from the view as it was, and a wait
    /// woken by the last event of a settled cluster then waited forever — `disruptions` hung in
    /// the full suite). The follower starts only after the write, and a current-thread runtime
    /// runs it only when the handler yields, so the old handler read the stale view every time.
    #[tokio::test]
    async fn the_history_shows_what_the_store_holds_when_asked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path().join("state.redb"))
            .await
            .expect("store");
        let shared = Shared::new(ServerConfig {
            data_dir: dir.path().to_path_buf(),
            store: Arc::new(store),
            clock: Clock::system(),
            tls: None,
            secrets_key_file: None,
        })
        .await
        .expect("shared");
        let source = "stack: shop\nenvironments:\n  staging:\n    regions: [local]\nservices:\n  web:\n    image: example/web:1\n";
        let release = Release {
            number: 1,
            stack: "shop".into(),
            env: "staging".into(),
            created_ms: 0,
            who: "admin".into(),
            status: ReleaseStatus::Live,
            summary: String::new(),
            plan_id: String::new(),
            rollback_of: None,
            reason: None,
            images: Default::default(),
            secrets: Default::default(),
            vetoed: false,
            approved_by: Vec::new(),
            spec: berth_spec::render(source.as_bytes(), "staging", &[]).expect("stack"),
        };
        shared
            .store
            .put(
                &keys::release("shop", "staging", 1),
                crate::state::encode(&release),
            )
            .await
            .expect("put");
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let follower = shared.clone();
        tokio::spawn(async move { follower.view.follow(follower.store.as_ref(), stopped).await });
        let answer = super::history(
            State(shared.clone()),
            Caller::Admin,
            Path(("shop".to_string(), "staging".to_string())),
        )
        .await;
        let releases = answer.expect("the release is in the history").0;
        assert_eq!(releases.len(), 1);
        assert_eq!(releases[0].status, ReleaseStatus::Live);
    }
}
