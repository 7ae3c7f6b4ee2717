//! The rollout controller: turns the target release of each stack and environment into
//! instance records, one region wave at a time, services in dependency order, through the pure
//! `berth-rollout` state machine.
//!
//! It reconciles: every pass reads a snapshot, decides from it alone, and writes its decisions
//! and its new state in one compare-and-swap transaction. A crash between passes loses nothing
//! and a repeated pass is harmless, so a restarted server simply resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth_api::control::{Release, ReleaseStatus};
use berth_api::{InstanceSpec, InstanceState};
use berth_rollout::{ObservedState, Phase as StepPhase, RolloutState};
use berth_spec::model::{Service, Stack};
use berth_store::{Compare, Op, Txn};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::state::{
    encode, Desired, InstanceRecord, SecretRecord, Snapshot, StateError, Versioned,
};
use crate::{keys, placement, table, Shared};

/// How often the controller looks even when nothing woke it (deadlines, node liveness).
const TICK: Duration = Duration::from_millis(100);
/// Longest an instance waits in `drain` for routers to let go before it is stopped anyway.
pub const DRAIN_DEADLINE_MS: u64 = 5_000;
/// The most instances one pass creates for one rollout: the per-pass work budget. A stack asking
/// for thousands of replicas gets them over several passes (a pass every [`TICK`] at least), and
/// every other stack gets its turn in each of those passes, so one large stack cannot starve the
/// cluster's other deploys, nor make one store transaction huge.
pub const CREATE_BUDGET: usize = 256;

/// Where a stack's rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Waves are being rolled out.
    Progressing,
    /// The target release runs everywhere; the controller keeps its counts.
    Succeeded,
    /// The rollout failed and there was nothing to roll back to (no other release went live, or
    /// this was an automatic rollback that failed too); the reason says which. Its instances are
    /// stopped.
    Failed { reason: String },
}

/// The persisted rollout of one stack in one environment (`/rollouts/STACK/ENV`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub stack: String,
    pub env: String,
    /// The release being replaced (`None` on a first deploy).
    pub from: Option<u64>,
    /// The release being rolled out: what the stack is meant to run.
    pub to: u64,
    pub started_ms: u64,
    /// Index of the current region wave.
    pub wave: usize,
    /// The state machine of each service that started in the current wave.
    pub services: BTreeMap<String, RolloutState>,
    /// Services finished in the current wave.
    pub done: BTreeSet<String>,
    pub phase: Phase,
    /// Set when this rollout is the automatic rollback of a failed one, with why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// A rollback (by command or automatic): every instance of the release returned to starts at
    /// once (surge 100%), and the bad ones stop as soon as enough are healthy. Capacity never
    /// drops, and a rollback takes one step instead of one per instance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Services with instances no node could take, and the scheduler's explanation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unplaced: BTreeMap<String, String>,
}

impl RolloutRecord {
    /// A new rollout from `from` to `to`.
    pub fn new(stack: &str, env: &str, from: Option<u64>, to: u64, now_ms: u64) -> Self {
        RolloutRecord {
            stack: stack.to_string(),
            env: env.to_string(),
            from,
            to,
            started_ms: now_ms,
            wave: 0,
            services: BTreeMap::new(),
            done: BTreeSet::new(),
            phase: Phase::Progressing,
            rollback_reason: None,
            rollback: false,
            unplaced: BTreeMap::new(),
        }
    }

    /// How `berth status` describes it.
    pub fn describe(&self) -> String {
        match (&self.phase, &self.rollback_reason) {
            (Phase::Progressing, Some(why)) => format!("rolling back to {} ({why})", self.to),
            (Phase::Progressing, None) => match self.from {
                Some(from) => format!("rolling out {from} → {}", self.to),
                None => format!("rolling out {}", self.to),
            },
            (Phase::Succeeded, Some(why)) => format!("rolled back to {} ({why})", self.to),
            (Phase::Succeeded, None) => "live".to_string(),
            (Phase::Failed { reason }, _) => format!("failed: {reason}"),
        }
    }
}

/// Runs passes until `stop`: on every kick (a deploy, a heartbeat with news) and every tick.
/// `stop` is also checked between the rollouts of a pass, so a shutdown never waits for more
/// than one rollout's (budgeted) work.
pub async fn run_controller(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = reconcile_until(&shared, &stop).await {
            tracing::warn!(error = %e, "controller pass failed; retrying");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = shared.kick.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One pass over every stack, then the drain pipeline.
pub async fn reconcile_once(shared: &Shared) -> Result<(), StateError> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    reconcile_until(shared, &stop).await
}

/// [`reconcile_once`], ending early (between rollouts) once `stop` is set.
async fn reconcile_until(
    shared: &Shared,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), StateError> {
    let snapshot = Snapshot::load(shared.store.as_ref()).await?;
    let now = shared.clock.now_ms();
    for rollout in snapshot.rollouts.values() {
        if *stop.borrow() {
            return Ok(());
        }
        // A pass is CPU work between store calls: let the API and the signal handler run.
        tokio::task::yield_now().await;
        let Some(release) = crate::state::release(
            shared.store.as_ref(),
            &rollout.value.stack,
            &rollout.value.env,
            rollout.value.to,
        )
        .await?
        else {
            tracing::warn!(stack = %rollout.value.stack, env = %rollout.value.env, release = rollout.value.to, "the target release is gone from the store");
            continue;
        };
        let secret_values =
            crate::state::secrets(shared.store.as_ref(), &rollout.value.stack).await?;
        // Only a progressing rollout can fail and need a rollback target.
        let went_live = if rollout.value.phase == Phase::Progressing {
            crate::state::releases(
                shared.store.as_ref(),
                &rollout.value.stack,
                &rollout.value.env,
            )
            .await?
            .iter()
            .filter(|r| crate::state::went_live(&r.value))
            .map(|r| r.value.number)
            .collect()
        } else {
            BTreeSet::new()
        };
        let mut pass = Pass {
            shared,
            snapshot: &snapshot,
            now,
            ops: vec![],
            compares: vec![],
            created: 0,
            wanted: Vec::new(),
            touched: Default::default(),
            unplaced: BTreeMap::new(),
            pins: &release.value.images,
            secrets: &release.value.secrets,
            secret_values: &secret_values,
            went_live: &went_live,
        };
        let mut next = pass.reconcile(&rollout.value, &release.value.spec);
        // Remember why instances could not be placed, so `berth status` can say it.
        if pass.unplaced != rollout.value.unplaced {
            let (mut record, outcome) =
                next.unwrap_or_else(|| (rollout.value.clone(), Outcome::Nothing));
            record.unplaced = std::mem::take(&mut pass.unplaced);
            next = Some((record, outcome));
        } else if let Some((record, _)) = &mut next {
            record.unplaced = std::mem::take(&mut pass.unplaced);
        }
        let mut ops = std::mem::take(&mut pass.ops);
        let mut compares = std::mem::take(&mut pass.compares);
        if let Some((record, outcome)) = next {
            if record != rollout.value || !ops.is_empty() {
                compares.push(Compare::mod_revision(
                    keys::rollout(&record.stack, &record.env),
                    rollout.mod_revision,
                ));
                ops.push(Op::put(
                    keys::rollout(&record.stack, &record.env),
                    encode(&record),
                ));
                release_ops(shared, &record, &outcome, &mut ops, &mut compares).await?;
            }
        }
        if !ops.is_empty() {
            let resp = shared
                .store
                .txn(Txn {
                    compares,
                    success: ops,
                    failure: vec![],
                })
                .await?;
            if !resp.succeeded {
                tracing::debug!(
                    "controller write raced with another change; next pass decides again"
                );
            }
        }
    }
    drain(shared, &snapshot, now, stop).await
}

/// What a pass concluded about the rollout as a whole.
enum Outcome {
    Nothing,
    /// The last wave finished: the target is live.
    Live,
    /// The target failed; the record now rolls back (or has failed for good).
    Failed {
        failed_release: u64,
        reason: String,
    },
}

/// Release status changes that go with a rollout's outcome.
///
/// Each write compares the release's `mod_revision`: a heartbeat may pin an image id in the
/// same release meanwhile (see `http::nodes`), and that pin must not be lost to a status write
/// made from an older read. A conflict fails the pass, and the next one decides again.
async fn release_ops(
    shared: &Shared,
    record: &RolloutRecord,
    outcome: &Outcome,
    ops: &mut Vec<Op>,
    compares: &mut Vec<Compare>,
) -> Result<(), StateError> {
    let store = shared.store.as_ref();
    let mut set = |mut r: Versioned<Release>,
                   status: ReleaseStatus,
                   reason: Option<String>,
                   ops: &mut Vec<Op>| {
        r.value.status = status;
        if reason.is_some() {
            r.value.reason = reason;
        }
        let key = keys::release(&r.value.stack, &r.value.env, r.value.number);
        compares.push(Compare::mod_revision(&key, r.mod_revision));
        ops.push(Op::put(key, encode(&r.value)));
    };
    match outcome {
        Outcome::Nothing => {}
        Outcome::Live => {
            if let Some(r) =
                crate::state::release(store, &record.stack, &record.env, record.to).await?
            {
                if r.value.status != ReleaseStatus::Live {
                    set(r, ReleaseStatus::Live, None, ops);
                }
            }
            // Every other release that was live or rolling out is now superseded. One that was
            // still rolling out says so: it never went live, so it is no rollback target.
            for r in crate::state::releases(store, &record.stack, &record.env).await? {
                if r.value.number == record.to {
                    continue;
                }
                match r.value.status {
                    ReleaseStatus::Live => set(r, ReleaseStatus::Superseded, None, ops),
                    ReleaseStatus::RollingOut => {
                        let why = format!(
                            "replaced by release {} before its rollout finished",
                            record.to
                        );
                        set(r, ReleaseStatus::Superseded, Some(why), ops)
                    }
                    ReleaseStatus::Superseded | ReleaseStatus::Failed => {}
                }
            }
        }
        Outcome::Failed {
            failed_release,
            reason,
        } => {
            if let Some(r) =
                crate::state::release(store, &record.stack, &record.env, *failed_release).await?
            {
                set(r, ReleaseStatus::Failed, Some(reason.clone()), ops);
            }
        }
    }
    Ok(())
}

/// The decisions of one pass over one rollout, collected as store operations.
struct Pass<'a> {
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    now: u64,
    ops: Vec<Op>,
    compares: Vec<Compare>,
    /// Instances created so far in this pass (at most [`CREATE_BUDGET`]).
    created: usize,
    /// New instances asked for in the region being reconciled, placed together by
    /// [`Pass::place_wanted`].
    wanted: Vec<Wanted>,
    /// Instances whose record this pass already rewrites.
    touched: std::collections::HashSet<String>,
    /// Why instances of a service could not be placed in this pass, for `berth status`.
    unplaced: BTreeMap<String, String>,
    /// The target release's pinned image ids by service: new instances run exactly those.
    pins: &'a BTreeMap<String, String>,
    /// The secret versions the target release was made with: an instance with older values is
    /// not the release's (see [`InstanceRecord::runs`]).
    secrets: &'a BTreeMap<String, u64>,
    /// The stack's secrets as stored now: new instances get these values.
    secret_values: &'a BTreeMap<String, Versioned<SecretRecord>>,
    /// The stack's retained releases that once went live: the only rollback targets.
    went_live: &'a BTreeSet<u64>,
}

impl<'a> Pass<'a> {
    /// Decides the next state of `record`; `None` when there is nothing to change.
    fn reconcile(
        &mut self,
        record: &RolloutRecord,
        target: &Stack,
    ) -> Option<(RolloutRecord, Outcome)> {
        match record.phase {
            Phase::Progressing => Some(self.progress(record.clone(), target)),
            Phase::Succeeded => {
                for region in target.regions() {
                    self.keep_counts(record, target, region);
                }
                self.stop_unknown(record, target, None);
                None
            }
            Phase::Failed { .. } => {
                self.stop_all(record);
                None
            }
        }
    }

    /// Moves a progressing rollout forward within its current wave.
    fn progress(&mut self, mut record: RolloutRecord, target: &Stack) -> (RolloutRecord, Outcome) {
        let regions = target.regions().to_vec();
        let Some(region) = regions.get(record.wave).cloned() else {
            record.phase = Phase::Succeeded;
            return (record, Outcome::Live);
        };
        self.stop_unknown(&record, target, Some(&region));
        for name in dependency_order(target) {
            if record.done.contains(&name) {
                continue;
            }
            let Some(service) = target.service_for_region(&name, &region) else {
                continue;
            };
            if !service.depends_on.iter().all(|d| record.done.contains(d)) {
                continue; // waits until its dependencies are healthy in this wave
            }
            let state = match record.services.get(&name) {
                Some(s) => s.clone(),
                None => match new_state(&record, &service, self.now) {
                    Ok(s) => s,
                    Err(e) => return self.fail(record, format!("service {name}: {e}")),
                },
            };
            // Instances on a node that is down are lost: stop them and let the rollout replace them.
            let mut instances = self.instances(&record, &name, &region);
            let (lost, kept): (Vec<_>, Vec<_>) = instances.drain(..).partition(|r| {
                r.value.desired == Desired::Run
                    && !table::node_is_up(self.shared, &r.value.spec.node, self.now)
            });
            for r in lost {
                self.set_desired(r, Desired::Drain);
            }
            // An old instance that failed is given up on at once: it serves nothing, and the
            // state machine ignores dead instances, so left alone it would keep its reservation
            // for as long as the rollout (or a rollback after it) lasts.
            for r in &kept {
                if r.value.desired == Desired::Run
                    && r.value.state() == InstanceState::Failed
                    && !r.value.runs(&service, self.secrets)
                {
                    self.set_desired(r, Desired::Drain);
                }
            }
            let instances = kept;
            let observed = observe(&instances, &service, self.secrets, record.to);
            let (next, decision) = berth_rollout::step(&state, &observed, self.now);
            let live_new = observed
                .iter()
                .filter(|o| o.release == record.to && o.state.is_live())
                .count() as u32;
            self.want(
                &record,
                &name,
                &service,
                decision.new_target.saturating_sub(live_new),
            );
            for id in &decision.stop {
                let snapshot: &'a Snapshot = self.snapshot;
                if let Some(rec) = snapshot.instances.get(id) {
                    self.set_desired(rec, Desired::Drain);
                }
            }
            match &next.phase {
                StepPhase::Succeeded => {
                    record.done.insert(name.clone());
                }
                StepPhase::Failed { reason } => {
                    // The agent's own words on the failing instance (e.g. the image it cannot pull).
                    let why = instances
                        .iter()
                        .find(|r| reason.contains(r.value.spec.id.as_str()))
                        .and_then(|r| r.value.status.as_ref()?.message.clone());
                    let reason = format!(
                        "service {name} in {region}: {reason}{}",
                        why.map(|m| format!(": {m}")).unwrap_or_default()
                    );
                    return self.fail(record, reason);
                }
                StepPhase::Progressing => {}
            }
            record.services.insert(name, next);
        }
        self.place_wanted(&record, &region);
        if record.done.len() == target.services.len() {
            record.wave += 1;
            record.services.clear();
            record.done.clear();
            if record.wave >= regions.len() {
                record.phase = Phase::Succeeded;
                return (record, Outcome::Live);
            }
        }
        (record, Outcome::Nothing)
    }

    /// The target failed: roll back to a release that once went live, or stop and say why there
    /// is none (see [`berth_rollout::rollback_target`]: never to a release that did not go live,
    /// and never a second automatic rollback in a row, so two failed releases cannot alternate).
    fn fail(&mut self, record: RolloutRecord, reason: String) -> (RolloutRecord, Outcome) {
        // Undo whatever this pass decided for the failed target.
        self.ops.clear();
        self.compares.clear();
        self.wanted.clear();
        self.touched.clear();
        let failed_release = record.to;
        let target = berth_rollout::rollback_target(
            failed_release,
            record.from,
            record.rollback_reason.is_some(),
            self.went_live,
        );
        let next = match target {
            Ok(previous) => {
                let mut back = RolloutRecord::new(
                    &record.stack,
                    &record.env,
                    Some(record.to),
                    previous,
                    self.now,
                );
                back.rollback_reason = Some(format!("release {failed_release} failed: {reason}"));
                back.rollback = true;
                back
            }
            Err(none) => {
                tracing::warn!(stack = %record.stack, env = %record.env, release = failed_release, why = %none, "no automatic rollback");
                let mut failed = record.clone();
                failed.phase = Phase::Failed {
                    reason: format!("{reason}; {none}"),
                };
                failed
            }
        };
        tracing::warn!(stack = %record.stack, env = %record.env, release = failed_release, %reason, "rollout failed");
        (
            next,
            Outcome::Failed {
                failed_release,
                reason,
            },
        )
    }

    /// Instances of one service of this stack in one region that are not being stopped.
    fn instances(
        &self,
        record: &RolloutRecord,
        service: &str,
        region: &str,
    ) -> Vec<&'a Versioned<InstanceRecord>> {
        let snapshot: &'a Snapshot = self.snapshot;
        snapshot
            .instances
            .values()
            .filter(|r| {
                let v = &r.value;
                v.spec.stack == record.stack
                    && v.env == record.env
                    && v.region == region
                    && v.spec.service == service
                    && v.desired != Desired::Stop
            })
            .collect()
    }

    /// After success: hold the replica count. Instances the agent gave up on, or on nodes that
    /// are down, are replaced. Instances on a draining node are replaced too, but each is only
    /// stopped once enough replacements elsewhere are healthy (a drain costs no capacity).
    fn keep_counts(&mut self, record: &RolloutRecord, target: &Stack, region: &str) {
        for name in target.services.keys() {
            let Some(service) = target.service_for_region(name, region) else {
                continue;
            };
            let instances = self.instances(record, name, region);
            let mut alive: Vec<&'a Versioned<InstanceRecord>> = Vec::new();
            let mut on_draining: Vec<&'a Versioned<InstanceRecord>> = Vec::new();
            for inst in instances {
                let v = &inst.value;
                if v.desired != Desired::Run {
                    continue;
                }
                if !v.runs(&service, self.secrets)
                    || v.state() == InstanceState::Failed
                    || !table::node_is_up(self.shared, &v.spec.node, self.now)
                {
                    self.set_desired(inst, Desired::Drain);
                } else if self.node_draining(&v.spec.node) {
                    on_draining.push(inst);
                } else {
                    alive.push(inst);
                }
            }
            let want = service.replicas as usize;
            let missing = want.saturating_sub(alive.len());
            self.want(
                record,
                name,
                &service,
                u32::try_from(missing).unwrap_or(u32::MAX),
            );
            let healthy_alive = alive
                .iter()
                .filter(|r| r.value.state() == InstanceState::Healthy)
                .count();
            let keep = want.saturating_sub(healthy_alive);
            // Keep the healthy ones on draining nodes as long as they are needed.
            on_draining.sort_by_key(|r| {
                (
                    r.value.state() != InstanceState::Healthy,
                    r.value.spec.id.clone(),
                )
            });
            for extra in on_draining.iter().skip(keep) {
                self.set_desired(extra, Desired::Drain);
            }
            if alive.len() > want {
                alive.sort_by_key(|r| {
                    (
                        r.value.state() == InstanceState::Healthy,
                        std::cmp::Reverse(r.value.spec.id.clone()),
                    )
                });
                for extra in &alive[..alive.len() - want] {
                    self.set_desired(extra, Desired::Drain);
                }
            }
        }
        self.place_wanted(record, region);
    }

    /// Whether `berth drain` was run on the node.
    fn node_draining(&self, node: &str) -> bool {
        self.snapshot
            .nodes
            .get(node)
            .is_some_and(|n| n.value.draining)
    }

    /// Stops instances of services the target no longer has (in one region, or all).
    fn stop_unknown(&mut self, record: &RolloutRecord, target: &Stack, region: Option<&str>) {
        let regions: BTreeSet<&str> = target.regions().iter().map(String::as_str).collect();
        let snapshot: &'a Snapshot = self.snapshot;
        let doomed: Vec<&'a Versioned<InstanceRecord>> = snapshot
            .instances
            .values()
            .filter(|r| {
                r.value.spec.stack == record.stack
                    && r.value.env == record.env
                    && r.value.desired == Desired::Run
            })
            .filter(|r| region.is_none_or(|g| g == r.value.region))
            .filter(|r| {
                !target.services.contains_key(&r.value.spec.service)
                    || !regions.contains(r.value.region.as_str())
            })
            .collect();
        for r in doomed {
            self.set_desired(r, Desired::Drain);
        }
    }

    fn stop_all(&mut self, record: &RolloutRecord) {
        let snapshot: &'a Snapshot = self.snapshot;
        let doomed: Vec<&'a Versioned<InstanceRecord>> = snapshot
            .instances
            .values()
            .filter(|r| {
                r.value.spec.stack == record.stack
                    && r.value.env == record.env
                    && r.value.desired == Desired::Run
            })
            .collect();
        for r in doomed {
            self.set_desired(r, Desired::Drain);
        }
    }

    fn set_desired(&mut self, rec: &Versioned<InstanceRecord>, desired: Desired) {
        // Once per instance and pass (a set, not a scan of `ops`: a stack may have thousands).
        if rec.value.desired == desired || !self.touched.insert(rec.value.spec.id.clone()) {
            return;
        }
        let mut next = rec.value.clone();
        next.desired = desired;
        next.desired_since_ms = Some(self.now);
        self.compares.push(Compare::mod_revision(
            keys::instance(&rec.value.spec.id),
            rec.mod_revision,
        ));
        self.ops
            .push(Op::put(keys::instance(&rec.value.spec.id), encode(&next)));
    }

    /// Asks for `count` more instances of `service` in the region being reconciled; they are
    /// placed, all services of the region together, by [`Pass::place_wanted`]. A service whose
    /// secret was deleted since the deploy gets none, and `berth status` says why.
    fn want(&mut self, record: &RolloutRecord, name: &str, service: &Service, count: u32) {
        if count == 0 {
            return;
        }
        // The current values of the service's secrets (the deploy checked they were set).
        let mut secret_env = BTreeMap::new();
        let mut secret_versions = BTreeMap::new();
        for secret in &service.secrets {
            match self.secret_values.get(secret) {
                Some(r) => {
                    secret_env.insert(secret.clone(), r.value.value.clone());
                    secret_versions.insert(secret.clone(), r.value.version);
                }
                None => {
                    self.unplaced.insert(
                        name.to_string(),
                        format!(
                            "secret {secret} is not set: run `berth secret set {} {secret}`",
                            record.stack
                        ),
                    );
                    return;
                }
            }
        }
        self.wanted.push(Wanted {
            name: name.to_string(),
            service: service.clone(),
            count,
            secret_env,
            secret_versions,
        });
    }

    /// Places what [`Pass::want`] collected for `region` with one scheduler call, within what is
    /// left of the pass's [`CREATE_BUDGET`], and records the new instances. Without a feasible
    /// node nothing is created for a service; the rollout then waits and, past its progress
    /// deadline, fails with the reason. What the budget held back is asked for again next pass.
    fn place_wanted(&mut self, record: &RolloutRecord, region: &str) {
        let mut wanted = std::mem::take(&mut self.wanted);
        let mut left = CREATE_BUDGET.saturating_sub(self.created);
        for w in &mut wanted {
            let n = (w.count as usize).min(left);
            left -= n;
            w.count = n as u32;
        }
        wanted.retain(|w| w.count > 0);
        if wanted.is_empty() {
            return;
        }
        // Instances this pass already decided (an earlier region) hold their nodes too.
        let pending: Vec<InstanceRecord> = self
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { key, value } if key.starts_with(keys::INSTANCES) => {
                    serde_json::from_slice::<InstanceRecord>(value).ok()
                }
                _ => None,
            })
            .collect();
        let wants: Vec<placement::Want<'_>> = wanted
            .iter()
            .map(|w| placement::Want {
                name: &w.name,
                service: &w.service,
                count: w.count,
            })
            .collect();
        let placed = placement::place_many(
            self.shared,
            self.snapshot,
            &pending,
            &record.stack,
            &record.env,
            region,
            &wants,
            self.now ^ self.created as u64,
        );
        for (w, placed) in wanted.iter().zip(placed) {
            if let Some(why) = placed.unplaced {
                tracing::debug!(stack = %record.stack, service = %w.name, %region, %why, "no feasible node for a new instance");
                self.unplaced.insert(w.name.clone(), why);
            }
            for node in placed.nodes {
                self.create(record, w, region, node);
            }
        }
    }

    /// Records a new instance of `w` on `node`.
    fn create(&mut self, record: &RolloutRecord, w: &Wanted, region: &str, node: String) {
        let name = w.name.as_str();
        let service = &w.service;
        let mut suffix = [0u8; 4];
        rand::rngs::OsRng.fill_bytes(&mut suffix);
        let id = format!(
            "{}-{}-{}-{}",
            record.stack,
            name,
            record.to,
            hex::encode(suffix)
        );
        let rec = InstanceRecord {
            spec: InstanceSpec {
                id: id.clone(),
                stack: record.stack.clone(),
                service: name.to_string(),
                release: record.to,
                node,
                spec: service.clone(),
                // Only an image service runs an image; a pin for a service that became a
                // process service would be meaningless.
                image_id: service
                    .image
                    .as_ref()
                    .and_then(|_| self.pins.get(name).cloned()),
                secret_env: w.secret_env.clone(),
            },
            env: record.env.clone(),
            region: region.to_string(),
            desired: Desired::Run,
            created_ms: self.now,
            desired_since_ms: None,
            status: None,
            secret_versions: w.secret_versions.clone(),
        };
        self.created += 1;
        self.compares.push(Compare::absent(keys::instance(&id)));
        self.ops.push(Op::put(keys::instance(&id), encode(&rec)));
    }
}

/// New instances of one service asked for in one pass, with the secret values they start with.
struct Wanted {
    name: String,
    service: Service,
    count: u32,
    secret_env: BTreeMap<String, String>,
    secret_versions: BTreeMap<String, u64>,
}

/// The state machine's view of a service's instances. An instance that runs the target's
/// spec with secrets at least as new as the target's versions counts as the target release (it carries over unchanged, and after a rollback the
/// old release's instances are exactly what is wanted).
fn observe(
    instances: &[&Versioned<InstanceRecord>],
    target: &Service,
    secrets: &BTreeMap<String, u64>,
    to: u64,
) -> Vec<berth_rollout::Observed> {
    instances
        .iter()
        .map(|r| {
            let v = &r.value;
            let matches = v.desired == Desired::Run && v.runs(target, secrets);
            let state = if v.desired == Desired::Drain {
                ObservedState::Draining
            } else {
                match v.state() {
                    InstanceState::Pending => ObservedState::Pending,
                    InstanceState::Starting => ObservedState::Starting,
                    InstanceState::Healthy => ObservedState::Healthy,
                    InstanceState::Unhealthy => ObservedState::Unhealthy,
                    InstanceState::Draining => ObservedState::Draining,
                    InstanceState::Stopped => ObservedState::Stopped,
                    InstanceState::Failed => ObservedState::Failed,
                }
            };
            berth_rollout::Observed {
                instance: v.spec.id.clone(),
                // Anything that does not match is old, even if it carries the target's number.
                release: if matches {
                    to
                } else if v.spec.release == to {
                    0
                } else {
                    v.spec.release
                },
                state,
                restarts: v.status.as_ref().map(|s| s.restarts).unwrap_or(0),
            }
        })
        .collect()
}

/// The state machine of one service's rollout: the service's own surge and unavailability, or,
/// for a rollback, everything at once with no capacity lost.
fn new_state(
    record: &RolloutRecord,
    service: &Service,
    now: u64,
) -> Result<RolloutState, berth_rollout::RolloutError> {
    if record.rollback {
        RolloutState::with_limits(
            record.from,
            record.to,
            service.replicas,
            service.replicas.max(1),
            0,
            service.rollout.progress_deadline.millis,
            now,
        )
    } else {
        RolloutState::for_service(record.from, record.to, service, now)
    }
}

/// Services in an order where each comes after what it depends on (the validator refused
/// cycles; anything left over is appended so nothing is forgotten).
pub fn dependency_order(stack: &Stack) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    loop {
        let mut progressed = false;
        for (name, svc) in &stack.services {
            if !placed.contains(name.as_str())
                && svc
                    .depends_on
                    .iter()
                    .all(|d| placed.contains(d.as_str()) || !stack.services.contains_key(d))
            {
                placed.insert(name);
                order.push(name.clone());
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for name in stack.services.keys() {
        if !placed.contains(name.as_str()) {
            order.push(name.clone());
        }
    }
    order
}

/// Moves drained instances to `stop` once the routers let go (or the deadline passes), and
/// forgets stopped instances on nodes that are gone.
///
/// At most [`CREATE_BUDGET`] writes per pass (each is its own compare-and-swap and fsync); the
/// rest wait for the next pass, which comes at least every [`TICK`].
async fn drain(
    shared: &Shared,
    snapshot: &Snapshot,
    now: u64,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), StateError> {
    let mut writes = 0;
    for rec in snapshot.instances.values() {
        if writes >= CREATE_BUDGET || *stop.borrow() {
            return Ok(());
        }
        let v = &rec.value;
        let since = v.desired_since_ms.unwrap_or(v.created_ms);
        let next = match v.desired {
            Desired::Drain
                if table::released_by_routers(shared, &v.spec.id, now)
                    || now.saturating_sub(since) > DRAIN_DEADLINE_MS =>
            {
                Some(Desired::Stop)
            }
            _ => None,
        };
        if let Some(desired) = next {
            writes += 1;
            let mut updated = v.clone();
            updated.desired = desired;
            updated.desired_since_ms = Some(now);
            shared
                .store
                .cas(
                    &keys::instance(&v.spec.id),
                    rec.mod_revision,
                    encode(&updated),
                )
                .await?;
        } else if v.desired == Desired::Stop
            && !table::node_is_up(shared, &v.spec.node, now)
            && now.saturating_sub(since) > 60_000
        {
            // Its node is gone; nobody will confirm the stop.
            writes += 1;
            shared
                .store
                .txn(Txn {
                    compares: vec![Compare::mod_revision(
                        keys::instance(&v.spec.id),
                        rec.mod_revision,
                    )],
                    success: vec![Op::delete(keys::instance(&v.spec.id))],
                    failure: vec![],
                })
                .await?;
        }
    }
    Ok(())
}
