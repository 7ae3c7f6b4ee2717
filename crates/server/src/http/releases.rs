//! Plans, deploys, history and rollbacks. A deploy is: render, plan against what the stack is
//! meant to run now, check policy, then store release N and its rollout in one transaction.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use berth_api::control::{
    DeployRequest, DeployResponse, PlanView, Release, ReleaseStatus, RollbackRequest,
};
use std::collections::BTreeMap;

use berth_plan::Plan;
use berth_spec::Stack;
use berth_store::{Compare, Op, Txn};

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::rollouts::RolloutRecord;
use crate::state::{self, decode, encode, Versioned};
use crate::{keys, Shared};

/// What the stack is meant to run now in `env`, and the record's revision for compare-and-swap.
async fn current(
    shared: &Shared,
    stack: &str,
    env: &str,
) -> Result<(Option<Versioned<Release>>, i64), ApiError> {
    let key = keys::rollout(stack, env);
    let Some(kv) = shared.store.get(&key).await? else {
        return Ok((None, 0));
    };
    let record: RolloutRecord = decode(&key, &kv.value)?;
    Ok((
        state::release(shared.store.as_ref(), stack, env, record.to).await?,
        kv.mod_revision,
    ))
}

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

/// The secrets a deploy of `target` would run with: every secret a service declares, with
/// its current version. Refused (400, nothing stored) when one is not set, naming the stack,
/// the service, the secret and the command that sets it.
async fn secret_versions(
    shared: &Shared,
    target: &Stack,
) -> Result<BTreeMap<String, u64>, ApiError> {
    let stored = state::secrets(shared.store.as_ref(), &target.stack).await?;
    let mut versions = BTreeMap::new();
    let mut missing = Vec::new();
    for (service, svc) in &target.services {
        for name in &svc.secrets {
            match stored.get(name) {
                Some(r) => {
                    versions.insert(name.clone(), r.value.version);
                }
                None => missing.push(format!(
                    "stack {}, service {service}: secret {name} is not set: run `berth secret set {} {name}` (it reads the value from stdin)",
                    target.stack, target.stack
                )),
            }
        }
    }
    if missing.is_empty() {
        Ok(versions)
    } else {
        Err(ApiError::invalid(
            format!(
                "{} secret(s) of stack {} not set; nothing was stored: {}",
                missing.len(),
                target.stack,
                missing.join("; ")
            ),
            missing,
        ))
    }
}

/// How the secrets of `target` move against the base release: one line per service and
/// secret whose version changed, `api: secret DB_PASSWORD: version 1 → 2` (versions only,
/// never values). A secret new to a service is already in the plan's `secrets` field diff; a
/// version is compared only when both the base and the target declare the secret.
fn secret_changes(
    base: Option<&Release>,
    target: &Stack,
    versions: &BTreeMap<String, u64>,
) -> Vec<String> {
    let Some(base) = base else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (service, svc) in &target.services {
        let Some(old_svc) = base.spec.services.get(service) else {
            continue;
        };
        for name in &svc.secrets {
            if !old_svc.secrets.contains(name) {
                continue;
            }
            let old = base.secrets.get(name).copied().unwrap_or(0);
            let new = versions.get(name).copied().unwrap_or(0);
            if old != new {
                lines.push(format!("{service}: secret {name}: version {old} → {new}"));
            }
        }
    }
    lines
}

/// The plan as the server shows and identifies it: the pure plan of the specs, plus the secret
/// version changes (which the specs cannot show, values and versions being kept out of them).
/// With secret changes the id covers them too, so `--plan ID` refuses a plan whose secrets
/// moved since.
struct FullPlan {
    plan: Plan,
    secrets: Vec<String>,
    id: String,
}

impl FullPlan {
    fn new(plan: Plan, secrets: Vec<String>) -> FullPlan {
        let id = if secrets.is_empty() {
            plan.id.clone()
        } else {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(plan.hash.as_bytes());
            for line in &secrets {
                h.update(b"\n");
                h.update(line.as_bytes());
            }
            let full = hex::encode(h.finalize());
            full[..plan.id.len().min(full.len())].to_string()
        };
        FullPlan { plan, secrets, id }
    }

    fn is_empty(&self) -> bool {
        self.plan.is_empty() && self.secrets.is_empty()
    }
}

fn view(full: &FullPlan, placement: Vec<String>) -> PlanView {
    let plan = &full.plan;
    let mut text = if plan.is_empty() && !full.secrets.is_empty() {
        // The pure plan says "no changes"; the secrets say otherwise.
        String::new()
    } else {
        plan.to_string()
    };
    if !full.secrets.is_empty() {
        text.push_str("secrets (their instances are replaced; values are never shown):\n");
        for line in &full.secrets {
            text.push_str(&format!("  ~ {line}\n"));
        }
    }
    if !placement.is_empty() {
        text.push_str("\nplacement (on the cluster as it is now):\n");
        for line in &placement {
            text.push_str(&format!("  ! {line}\n"));
        }
    }
    let mut detail = serde_json::to_value(plan).unwrap_or_default();
    if let Some(obj) = detail.as_object_mut() {
        obj.insert("id".into(), serde_json::json!(full.id));
        obj.insert("secret_changes".into(), serde_json::json!(full.secrets));
    }
    PlanView {
        id: full.id.clone(),
        text,
        detail,
        placement,
    }
}

/// What the scheduler could not place of `target` on the cluster as it is now.
async fn placement_check(
    shared: &Shared,
    target: &Stack,
    env: &str,
) -> Result<Vec<String>, ApiError> {
    let snapshot = crate::state::Snapshot::load(shared.store.as_ref()).await?;
    Ok(crate::placement::check(shared, &snapshot, target, env))
}

fn plan_of(base: Option<&Release>, target: &Stack) -> Result<Plan, ApiError> {
    Plan::new(base.map(|r| &r.spec), target).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot compute the plan: {e}"),
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
    let versions = secret_versions(&shared, &target).await?;
    let (base, _) = current(&shared, &target.stack, &req.env).await?;
    let base = base.as_ref().map(|b| &b.value);
    let plan = FullPlan::new(
        plan_of(base, &target)?,
        secret_changes(base, &target, &versions),
    );
    let placement = placement_check(&shared, &target, &req.env).await?;
    Ok(Json(DeployResponse {
        stack: target.stack.clone(),
        env: req.env,
        release: None,
        plan: view(&plan, placement),
    }))
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
    let response = start_release(
        &shared,
        &req.env,
        target,
        Start {
            who: "admin",
            confirm: req.confirm.as_deref(),
            plan_id: req.plan_id.as_deref(),
            rollback_of: None,
            images: None,
            dry_run: req.dry_run,
        },
    )
    .await?;
    Ok(Json(response))
}

/// How a release is being started.
struct Start<'a> {
    who: &'a str,
    confirm: Option<&'a str>,
    plan_id: Option<&'a str>,
    rollback_of: Option<u64>,
    /// A rollback's pinned image ids: those of the release it returns to, so it runs exactly
    /// the same bytes. `None` for a deploy, which carries the base release's pins over for
    /// services whose image reference did not change (see [`carried_pins`]).
    images: Option<std::collections::BTreeMap<String, String>>,
    dry_run: bool,
}

/// How many times a deploy is retried when its write lost a race with a heartbeat pinning an
/// image id in an older release (not with another deploy: that one is a conflict).
const PIN_RACE_RETRIES: usize = 5;

async fn start_release(
    shared: &Shared,
    env: &str,
    target: Stack,
    how: Start<'_>,
) -> Result<DeployResponse, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match try_start_release(shared, env, &target, &how).await? {
            Attempt::Done(response) => return Ok(response),
            Attempt::Raced if attempt < PIN_RACE_RETRIES => continue,
            Attempt::Raced => {
                return Err(ApiError::conflict(
                    "the releases of this stack kept changing during the deploy: try again",
                ))
            }
        }
    }
}

/// The outcome of one try at storing a release.
enum Attempt {
    Done(DeployResponse),
    /// Only a retained release changed under us (an image pin): try again.
    Raced,
}

/// The base release's pins for the services of `target` whose image reference is unchanged:
/// the same tag keeps naming the same bytes across releases (tags are meant to be immutable),
/// and the instances a deploy carries over unchanged keep the pin of the release they came
/// from.
fn carried_pins(
    base: Option<&Release>,
    target: &Stack,
) -> std::collections::BTreeMap<String, String> {
    let Some(base) = base else {
        return Default::default();
    };
    base.images
        .iter()
        .filter(|(service, _)| {
            let old = base
                .spec
                .services
                .get(*service)
                .and_then(|s| s.image.as_ref());
            let new = target.services.get(*service).and_then(|s| s.image.as_ref());
            old.is_some() && old == new
        })
        .map(|(s, id)| (s.clone(), id.clone()))
        .collect()
}

async fn try_start_release(
    shared: &Shared,
    env: &str,
    target: &Stack,
    how: &Start<'_>,
) -> Result<Attempt, ApiError> {
    let target = target.clone();
    let stack = target.stack.clone();
    let versions = secret_versions(shared, &target).await?;
    let (base, rollout_rev) = current(shared, &stack, env).await?;
    let full = FullPlan::new(
        plan_of(base.as_ref().map(|b| &b.value), &target)?,
        secret_changes(base.as_ref().map(|b| &b.value), &target, &versions),
    );
    let plan = &full.plan;
    let placement = placement_check(shared, &target, env).await?;
    let respond = |release| DeployResponse {
        stack: stack.clone(),
        env: env.to_string(),
        release,
        plan: view(&full, placement.clone()),
    };
    if let Some(id) = how.plan_id {
        if id != full.id {
            return Err(ApiError::conflict(format!("the live state moved since plan {id} (the plan is now {}): run `berth plan` again and review it", full.id)));
        }
    }
    if full.is_empty() || how.dry_run {
        return Ok(Attempt::Done(respond(None)));
    }
    if plan.exceeds_capacity_drop && how.confirm != Some(stack.as_str()) {
        let worst = plan.blast_radius.worst_service.clone().unwrap_or_default();
        return Err(ApiError::refused(format!(
            "this plan loses {}% of {worst}'s healthy capacity, more than {env}'s max_capacity_drop of {}: review it, then deploy again with --confirm {stack}",
            plan.blast_radius.worst_capacity_lost_percent, plan.max_capacity_drop
        )));
    }
    if plan.approval {
        return Err(ApiError::refused(format!("environment {env} requires a second person's approval, which this server does not support yet: remove `approval: true` from {env} to deploy without it")));
    }
    let existing = state::releases(shared.store.as_ref(), &stack, env).await?;
    let number = existing.last().map(|r| r.value.number + 1).unwrap_or(1);
    let now = shared.clock.now_ms();
    let summary = summarize(&full, how.rollback_of);
    let release = Release {
        number,
        stack: stack.clone(),
        env: env.to_string(),
        created_ms: now,
        who: how.who.to_string(),
        status: ReleaseStatus::RollingOut,
        summary,
        plan_id: full.id.clone(),
        rollback_of: how.rollback_of,
        reason: None,
        images: match &how.images {
            Some(pins) => pins
                .iter()
                .filter(|(s, _)| target.services.get(*s).is_some_and(|s| s.image.is_some()))
                .map(|(s, id)| (s.clone(), id.clone()))
                .collect(),
            None => carried_pins(base.as_ref().map(|b| &b.value), &target),
        },
        secrets: versions,
        spec: target.clone(),
    };
    let from = base.as_ref().map(|b| b.value.number);
    let mut record = RolloutRecord::new(&stack, env, from, number, now);
    record.rollback = how.rollback_of.is_some();
    let mut compares = vec![
        Compare::mod_revision(keys::rollout(&stack, env), rollout_rev),
        Compare::absent(keys::release(&stack, env, number)),
    ];
    let mut ops = vec![
        Op::put(keys::release(&stack, env, number), encode(&release)),
        Op::put(keys::rollout(&stack, env), encode(&record)),
    ];
    // Keep `history` releases, never the one being replaced.
    let keep = target.history.max(1) as usize;
    let total = existing.len() + 1;
    if total > keep {
        for old in existing.iter().take(total - keep) {
            if Some(old.value.number) != from {
                ops.push(Op::delete(keys::release(&stack, env, old.value.number)));
            }
        }
    }
    // A release still rolling out is replaced before it finished.
    for old in &existing {
        if old.value.status == ReleaseStatus::RollingOut {
            let mut superseded = old.value.clone();
            superseded.status = ReleaseStatus::Superseded;
            superseded.reason = Some(format!(
                "replaced by release {number} before its rollout finished"
            ));
            let key = keys::release(&stack, env, old.value.number);
            if !ops
                .iter()
                .any(|op| matches!(op, Op::Delete { key: k } if *k == key))
            {
                // Compared, so an image pinned meanwhile is not overwritten.
                compares.push(Compare::mod_revision(&key, old.mod_revision));
                ops.push(Op::put(key, encode(&superseded)));
            }
        }
    }
    let resp = shared
        .store
        .txn(Txn {
            compares,
            success: ops,
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        let (_, now_rev) = current(shared, &stack, env).await?;
        let release_taken = shared
            .store
            .get(&keys::release(&stack, env, number))
            .await?
            .is_some();
        if now_rev == rollout_rev && !release_taken {
            return Ok(Attempt::Raced);
        }
        return Err(ApiError::conflict(
            "another deploy of this stack landed at the same time: plan again and retry",
        ));
    }
    shared.kick.notify_one();
    Ok(Attempt::Done(respond(Some(number))))
}

/// One line for `berth history`.
fn summarize(full: &FullPlan, rollback_of: Option<u64>) -> String {
    let plan = &full.plan;
    let mut parts = Vec::new();
    if let Some(n) = rollback_of {
        parts.push(format!("rollback to {n}"));
    }
    for s in &plan.services {
        let what = match s.kind {
            berth_plan::ChangeKind::Added => format!("+{}", s.name),
            berth_plan::ChangeKind::Removed => format!("-{}", s.name),
            berth_plan::ChangeKind::Changed => {
                let fields: Vec<&str> = s.fields.iter().map(|f| f.path.as_str()).take(3).collect();
                format!("~{} ({})", s.name, fields.join(", "))
            }
        };
        parts.push(what);
    }
    for line in &full.secrets {
        parts.push(format!("~{line}"));
    }
    if parts.is_empty() {
        "no changes".to_string()
    } else {
        parts.join("; ")
    }
}

/// `GET /v1/stacks/{stack}/{env}/releases`: every retained release, newest first, without specs.
pub async fn history(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env)): Path<(String, String)>,
) -> Result<Json<Vec<Release>>, ApiError> {
    caller.require_admin()?;
    let mut releases: Vec<Release> = state::releases(shared.store.as_ref(), &stack, &env)
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    if releases.is_empty() {
        return Err(ApiError::not_found(format!("stack {stack} has no release in environment {env}: deploy it first, or check `berth status`")));
    }
    releases.reverse();
    Ok(Json(releases))
}

/// `POST /v1/stacks/{stack}/{env}/rollback`: a new release with an older one's content
/// (by default the latest that was live before the current one).
pub async fn rollback(
    State(shared): AppState,
    caller: Caller,
    Path((stack, env)): Path<(String, String)>,
    req: Result<Json<RollbackRequest>, JsonRejection>,
) -> Result<Json<DeployResponse>, ApiError> {
    caller.require_admin()?;
    let req = body(req)?;
    let releases = state::releases(shared.store.as_ref(), &stack, &env).await?;
    let (current, _) = current(&shared, &stack, &env).await?;
    let current_number = current.as_ref().map(|c| c.value.number);
    let target = match req.release {
        Some(n) => releases.iter().find(|r| r.value.number == n).ok_or_else(|| ApiError::not_found(format!("release {n} of {stack} in {env} is not retained: see `berth history {stack} --env {env}`")))?,
        None => releases
            .iter()
            .rev()
            .find(|r| Some(r.value.number) != current_number && r.value.status == ReleaseStatus::Superseded && r.value.spec != current.as_ref().map(|c| c.value.spec.clone()).unwrap_or_else(|| r.value.spec.clone()))
            .ok_or_else(|| ApiError::not_found(format!("{stack} in {env} has no earlier successful release to roll back to")))?,
    };
    let number = target.value.number;
    let response = start_release(
        &shared,
        &env,
        target.value.spec.clone(),
        Start {
            who: "admin",
            confirm: Some(&stack),
            plan_id: None,
            rollback_of: Some(number),
            images: Some(target.value.images.clone()),
            dry_run: false,
        },
    )
    .await?;
    Ok(Json(response))
}
