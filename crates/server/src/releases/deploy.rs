//! Plans and deploys. A deploy is: plan against what the stack is meant to run now, check
//! policy, then store release N and its rollout in one transaction — with the releases it
//! supersedes and the ones retention retires.

use std::collections::BTreeMap;

use berth_api::control::{DeployResponse, Release, ReleaseStatus};
use berth_spec::Stack;
use berth_store::{Compare, Op, Txn};

use super::plan::{self, FullPlan};
use super::{retention, ReleaseError};
use crate::rollouts::RolloutRecord;
use crate::state::{encode, SecretRecord, Snapshot, Versioned};
use crate::view::View;
use crate::{keys, Shared};

/// How a release is being started.
#[derive(Debug, Clone, Default)]
pub struct Start<'a> {
    /// Who asked (shown by `berth history`).
    pub who: &'a str,
    /// `--confirm STACK`: accept a plan that loses more capacity than the environment allows.
    pub confirm: Option<&'a str>,
    /// `--plan ID`: store the release only if the plan is still this one.
    pub plan_id: Option<&'a str>,
    /// The release a rollback returns to.
    pub rollback_of: Option<u64>,
    /// A rollback's pinned image ids: those of the release it returns to, so it runs exactly
    /// the same bytes. `None` for a deploy, which carries the base release's pins over for
    /// services whose image reference did not change (see [`carried_pins`]).
    pub images: Option<BTreeMap<String, String>>,
    /// Plan and check only; store nothing.
    pub dry_run: bool,
    /// Deploy even though the plan says some instances cannot be placed (`--force`).
    pub force: bool,
    /// `berth stack rm`: the target is the live release without its services; the release's
    /// summary says so, and a refusal names the command to run again.
    pub removes_stack: bool,
    /// The approvers of a pending plan (`berth approve`): the environment's `approval: N` is
    /// met, and the release records them. `None`: not approved (yet).
    pub approved_by: Option<&'a [String]>,
    /// A rollback to a release that went live (approved, or needing no approval then): it
    /// needs no new approval, so getting back to a known-good state stays one command.
    pub approval_exempt: bool,
}

/// What a deploy decides from, read from the live view at one revision.
struct Read {
    /// What the stack is meant to run now (the rollout's target), if anything.
    base: Option<Versioned<Release>>,
    /// The rollout record's `mod_revision` (0: none), for compare-and-swap.
    rollout_rev: i64,
    /// The release the rollout record targets, if there is one.
    rollout_to: Option<u64>,
    /// Every retained release, oldest first.
    existing: Vec<Versioned<Release>>,
    /// The image pins kept in their own keys, by release number.
    pins: BTreeMap<u64, BTreeMap<String, String>>,
    /// The secrets each deploy must record the versions of.
    secrets: BTreeMap<String, u64>,
    /// What the scheduler could not place of the target, and whether any node is registered.
    placement: (Vec<String>, bool),
}

impl Read {
    /// Refused when a secret the target needs is not set (before anything else is decided).
    fn from(shared: &Shared, view: &View, target: &Stack, env: &str) -> Result<Read, ReleaseError> {
        let stack = &target.stack;
        let rollout = view.rollout(stack, env);
        let base = rollout.and_then(|r| view.release(stack, env, r.value.to).cloned());
        let existing: Vec<Versioned<Release>> = view
            .releases_of(stack, env)
            .map(|all| all.values().cloned().collect())
            .unwrap_or_default();
        let pins = existing
            .iter()
            .filter_map(|r| {
                let p = view.pins_of(stack, env, r.value.number)?;
                Some((r.value.number, p.clone()))
            })
            .collect();
        let secrets = secret_versions(view.secrets_of(stack), target)?;
        Ok(Read {
            base,
            rollout_rev: rollout.map(|r| r.mod_revision).unwrap_or(0),
            rollout_to: rollout.map(|r| r.value.to),
            existing,
            pins,
            secrets,
            placement: placement_check(shared, view, target, env),
        })
    }
}

/// The secrets a deploy of `target` would run with: every secret a service declares, with
/// its current version. Refused (nothing stored) when one is not set, naming the stack, the
/// service, the secret and the command that sets it.
pub fn secret_versions(
    stored: &BTreeMap<String, Versioned<SecretRecord>>,
    target: &Stack,
) -> Result<BTreeMap<String, u64>, ReleaseError> {
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
        Err(ReleaseError::MissingSecrets {
            stack: target.stack.clone(),
            missing,
        })
    }
}

/// What the scheduler could not place of `target` on the cluster as it is now, and whether
/// the cluster has any node registered at all.
fn placement_check(shared: &Shared, view: &View, target: &Stack, env: &str) -> (Vec<String>, bool) {
    let snapshot = Snapshot {
        revision: view.revision,
        nodes: view.nodes().clone(),
        instances: view.instances().clone(),
        rollouts: view.rollouts().clone(),
    };
    (
        crate::placement::check(shared, &snapshot, target, env),
        !snapshot.nodes.is_empty(),
    )
}

/// The full plan of `target` against `read`'s base, with its retry note.
fn full_plan(read: &Read, target: &Stack) -> Result<FullPlan, ReleaseError> {
    let base = read.base.as_ref().map(|b| &b.value);
    let mut full = FullPlan::new(
        plan::plan_of(base, target)?,
        plan::secret_changes(base, target, &read.secrets),
        target,
    );
    full.note = plan::retry_note(base, &full);
    Ok(full)
}

/// `berth plan`: the plan of `target` in `env` against the live release; stores nothing.
/// Planned on a view with every write made before the call (as [`deploy`] is), so the plan a
/// `--plan ID` names is the one a deploy right after computes.
pub async fn plan(
    shared: &Shared,
    env: &str,
    target: &Stack,
) -> Result<DeployResponse, ReleaseError> {
    catch_up(shared).await?;
    let read = Read::from(shared, &shared.view.read(), target, env)?;
    let full = full_plan(&read, target)?;
    Ok(DeployResponse {
        stack: target.stack.clone(),
        env: env.to_string(),
        release: None,
        plan: plan::view(&full, read.placement.0),
        unchanged: None,
    })
}

/// How many times a deploy is retried when its write lost a race that was not another
/// deploy: the controller moving the rollout along, or changing an older release's status.
const RACE_RETRIES: usize = 5;

/// `berth deploy` and `berth rollback`: plans `target` in `env`, checks policy and stores
/// the release and its rollout (or, with nothing to change or `dry_run`, only answers).
pub async fn deploy(
    shared: &Shared,
    env: &str,
    target: &Stack,
    how: &Start<'_>,
) -> Result<DeployResponse, ReleaseError> {
    // Decide on a view that has every write made before this call (the store's revision is
    // one read, not a scan).
    let mut seen = catch_up(shared).await?;
    for _ in 0..RACE_RETRIES {
        shared.view.caught_up(seen).await;
        match try_deploy(shared, env, target, how, seen).await? {
            Attempt::Done(response) => return Ok(response),
            Attempt::Raced(revision) => seen = revision,
        }
    }
    Err(ReleaseError::KeptChanging)
}

/// Waits until the live view has every write the store had when called (reading the store's
/// revision, one read, not a scan); answers that revision.
pub async fn catch_up(shared: &Shared) -> Result<i64, ReleaseError> {
    let revision = shared
        .store
        .revision()
        .await
        .map_err(crate::state::StateError::from)?;
    shared.view.caught_up(revision).await;
    Ok(revision)
}

/// The outcome of one try at storing a release.
enum Attempt {
    Done(DeployResponse),
    /// Something other than a deploy changed what this one read (the store is at this
    /// revision now): try again once the view has it.
    Raced(i64),
}

/// The base release's pins for the services of `target` whose image reference is unchanged:
/// the same tag keeps naming the same bytes across releases (tags are meant to be immutable),
/// and the instances a deploy carries over unchanged keep the pin of the release they came
/// from.
pub fn carried_pins(base: Option<&Release>, target: &Stack) -> BTreeMap<String, String> {
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

/// One line per service that loses capacity: `web 75% (4 → 1: eu 2 → 1, us 2 → 0)`.
fn capacity_lost(plan: &berth_plan::Plan) -> Vec<String> {
    plan.services
        .iter()
        .filter(|s| s.lost > 0)
        .map(|s| {
            let regions: Vec<String> = s
                .regions
                .iter()
                .filter(|d| d.before > d.after)
                .map(|d| format!("{} {} → {}", d.region, d.before, d.after))
                .collect();
            format!(
                "{} {}% ({} → {}: {})",
                s.name,
                s.capacity_lost_percent,
                s.before,
                s.after,
                regions.join(", ")
            )
        })
        .collect()
}

/// The policy checks a plan must pass before it is stored.
fn check_policy(
    full: &FullPlan,
    how: &Start<'_>,
    placement: &(Vec<String>, bool),
    stack: &str,
    env: &str,
) -> Result<(), ReleaseError> {
    let plan = &full.plan;
    if plan.needs_confirm && how.confirm != Some(stack) {
        if !plan.emptying.is_empty() {
            return Err(ReleaseError::Destructive {
                stack: stack.to_string(),
                env: env.to_string(),
                lost: plan.emptying.iter().map(ToString::to_string).collect(),
                again: if how.removes_stack {
                    format!("If that is what you want, run `berth stack rm {stack} --env {env} --confirm {stack}` (the history is kept: `berth rollback {stack} --env {env}` brings it back)")
                } else {
                    format!("Review it with `berth plan`, then deploy again with --confirm {stack}")
                },
            });
        }
        return Err(ReleaseError::CapacityDrop {
            percent: plan.blast_radius.worst_capacity_lost_percent,
            worst: plan.blast_radius.worst_service.clone().unwrap_or_default(),
            env: env.to_string(),
            max: plan.max_capacity_drop.to_string(),
            stack: stack.to_string(),
            lost: capacity_lost(plan),
        });
    }
    // A cluster with no node yet (agents still joining, as at `berth up`'s start) is not
    // refused: the plan shows the lines, and the rollout places once nodes arrive.
    let (lines, has_nodes) = placement;
    if !lines.is_empty() && *has_nodes && !how.force {
        return Err(ReleaseError::Unplaceable {
            reasons: lines.clone(),
        });
    }
    Ok(())
}

async fn try_deploy(
    shared: &Shared,
    env: &str,
    target: &Stack,
    how: &Start<'_>,
    seen: i64,
) -> Result<Attempt, ReleaseError> {
    let stack = target.stack.clone();
    let read = Read::from(shared, &shared.view.read(), target, env)?;
    let full = full_plan(&read, target)?;
    let base = read.base.as_ref().map(|b| &b.value);
    let respond = |release| DeployResponse {
        stack: stack.clone(),
        env: env.to_string(),
        release,
        plan: plan::view(&full, read.placement.0.clone()),
        unchanged: None,
    };
    if let Some(id) = how.plan_id {
        if id != full.id {
            return Err(ReleaseError::PlanMoved {
                given: id.to_string(),
                now: full.id.clone(),
            });
        }
    }
    // "Already runs this" only when it is live (or on its way there): the same content as a
    // release that failed is a retry, stored as a new release.
    let unchanged = if full.is_empty() {
        plan::unchanged(base, &stack, env)
    } else {
        None
    };
    if unchanged.is_some() || how.dry_run {
        return Ok(Attempt::Done(DeployResponse {
            unchanged,
            ..respond(None)
        }));
    }
    check_policy(&full, how, &read.placement, &stack, env)?;
    // Last: a plan that passed every other check waits for its approvers (stored as pending,
    // exit 3 with its id) instead of becoming a release.
    if full.plan.approval && how.approved_by.is_none() && !how.approval_exempt {
        return Err(crate::approvals::pend(shared, env, target, how, &full.id).await?);
    }
    if let Some(vetoed) = read
        .existing
        .iter()
        .rev()
        .find(|r| r.value.spec == *target && crate::rollouts::vetoes(&r.value))
        .filter(|_| !how.force)
    {
        return Err(ReleaseError::Vetoed {
            number: vetoed.value.number,
            reason: vetoed.value.reason.clone().unwrap_or_default(),
            stack: stack.clone(),
            env: env.to_string(),
        });
    }
    let number = read
        .existing
        .last()
        .map(|r| r.value.number + 1)
        .unwrap_or(1);
    let now = shared.clock.now_ms();
    let release = Release {
        number,
        stack: stack.clone(),
        env: env.to_string(),
        created_ms: now,
        who: how.who.to_string(),
        status: ReleaseStatus::RollingOut,
        summary: if how.removes_stack {
            format!("stack rm: {}", plan::summarize(&full, None))
        } else {
            plan::summarize(&full, how.rollback_of)
        },
        plan_id: full.id.clone(),
        rollback_of: how.rollback_of,
        reason: None,
        vetoed: false,
        images: match &how.images {
            Some(pins) => pins
                .iter()
                .filter(|(s, _)| target.services.get(*s).is_some_and(|s| s.image.is_some()))
                .map(|(s, id)| (s.clone(), id.clone()))
                .collect(),
            None => carried_pins(base, target),
        },
        secrets: read.secrets.clone(),
        approved_by: how.approved_by.map(<[String]>::to_vec).unwrap_or_default(),
        spec: target.clone(),
    };
    let from = base.map(|b| b.number);
    let mut record = RolloutRecord::new(&stack, env, from, number, now);
    record.rollback = how.rollback_of.is_some();
    let txn = release_txn(&read, &release, &record, target.history.max(1) as usize);
    let resp = shared
        .store
        .txn(txn)
        .await
        .map_err(crate::state::StateError::from)?;
    if !resp.succeeded {
        return lost(shared, &stack, env, number, &read, seen, resp.revision).await;
    }
    shared.kick.notify_one();
    // Read-your-writes: `berth history` right after sees this release.
    shared.view.caught_up(resp.revision).await;
    Ok(Attempt::Done(respond(Some(number))))
}

/// Release `release`, its rollout `record`, the releases it supersedes and the ones
/// retention retires (keeping `keep`), as one transaction that holds only if nothing it was
/// decided from changed.
fn release_txn(read: &Read, release: &Release, record: &RolloutRecord, keep: usize) -> Txn {
    let (stack, env, number) = (&release.stack, &release.env, release.number);
    let from = read.base.as_ref().map(|b| b.value.number);
    let mut compares = vec![
        Compare::mod_revision(keys::rollout(stack, env), read.rollout_rev),
        Compare::absent(keys::release(stack, env, number)),
    ];
    let mut ops = vec![
        Op::put(keys::release(stack, env, number), encode(release)),
        Op::put(keys::rollout(stack, env), encode(record)),
    ];
    let numbers: Vec<u64> = read.existing.iter().map(|r| r.value.number).collect();
    let retired = retention::retired(&numbers, keep, from);
    ops.extend(retention::delete_ops(stack, env, &retired));
    // A release still rolling out is replaced before it finished.
    for old in &read.existing {
        if old.value.status != ReleaseStatus::RollingOut || retired.contains(&old.value.number) {
            continue;
        }
        let mut superseded = old.value.clone();
        superseded.status = ReleaseStatus::Superseded;
        superseded.reason = Some(format!(
            "replaced by release {number} before its rollout finished"
        ));
        // The record as it was written: pins stay in their own keys.
        if let Some(pins) = read.pins.get(&old.value.number) {
            crate::state::record_images(&mut superseded, pins);
        }
        let key = keys::release(stack, env, old.value.number);
        // Compared, so a status the controller wrote meanwhile is not overwritten.
        compares.push(Compare::mod_revision(&key, old.mod_revision));
        ops.push(Op::put(key, encode(&superseded)));
    }
    Txn {
        compares,
        success: ops,
        failure: vec![],
    }
}

/// After a lost compare: another deploy if, since `seen` (the revision this try's view was
/// caught up to), release `number` was taken or the rollout moved to another release (409).
/// Otherwise try again: the controller moved the rollout or an older release along meanwhile,
/// or the view had not applied all of a transaction made before `seen` (a transaction's keys
/// arrive as several watch events at one revision).
async fn lost(
    shared: &Shared,
    stack: &str,
    env: &str,
    number: u64,
    read: &Read,
    seen: i64,
    revision: i64,
) -> Result<Attempt, ReleaseError> {
    let taken = shared
        .store
        .get(&keys::release(stack, env, number))
        .await
        .map_err(crate::state::StateError::from)?
        .is_some_and(|kv| kv.mod_revision > seen);
    let key = keys::rollout(stack, env);
    let moved = match shared
        .store
        .get(&key)
        .await
        .map_err(crate::state::StateError::from)?
    {
        Some(kv) if kv.mod_revision > seen => {
            Some(crate::state::decode::<RolloutRecord>(&key, &kv.value)?.to) != read.rollout_to
        }
        _ => false,
    };
    if taken || moved {
        return Err(ReleaseError::ConcurrentDeploy);
    }
    Ok(Attempt::Raced(revision))
}
