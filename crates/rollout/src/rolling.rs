//! The rolling rollout: replace the instances of one release with instances of another, a few
//! at a time, never exceeding the surge limit and never stopping what the availability floor
//! still needs.
//!
//! Everything here is a pure function of `(RolloutState, &[Observed], now_ms)`. The decision is
//! expressed as *desired* quantities — "this many new instances should exist", "these old
//! instances should be stopped" — never as deltas ("start one more"), so a repeated call, a
//! repeated message or a restarted server cannot double anything.
//!
//! ## The rules, per step
//! Let *live* mean Pending, Starting, Healthy or Unhealthy; *new* mean `release == to_release`;
//! *old* mean any other release (usually `from_release`, but leftovers of an older interrupted
//! rollout are old too). Failed and Stopped instances are dead and ignored by the counts; Draining
//! ones are on their way out and are not counted either (the router no longer sends them traffic).
//!
//! 1. **Fail fast.** A new instance that is Failed, or live but not healthy after
//!    [`MAX_RESTARTS`] restarts, fails the rollout — unless it was already so when the rollout
//!    first looked (see [`RolloutState::failing_at_start`]).
//! 2. **Progress.** When more new instances are healthy than ever before, the progress clock is
//!    reset. While fewer than `desired` new instances are healthy, more than
//!    `progress_deadline_ms` without progress fails the rollout. Once all `desired` new
//!    instances are healthy only clean-up remains, and a slow drain never triggers a rollback of
//!    a release that works.
//! 3. **Stops.** `floor = desired − max_unavailable`. Old live instances are considered least
//!    useful first (unhealthy, pending, starting, then healthy; ties by id). A not-healthy one is
//!    always stopped: it costs no serving capacity. A healthy one is stopped only while the
//!    healthy count (old healthy not stopped + new healthy) stays ≥ `floor`. New instances beyond
//!    `desired` (a scale-down) are chosen the same way, with the same budget.
//! 4. **Starts.** `new_target = min(desired, desired + max_surge − old live kept)`: old kept plus
//!    new never exceeds `desired + max_surge`. It depends only on what is observed, so it is the
//!    same however often it is computed.
//! 5. **Done.** No old live instance, nothing draining, exactly `desired` new instances, all
//!    healthy → Succeeded.
//!
//! ## Choices, and why
//! - Draining instances count neither against the surge nor as capacity: the router has already
//!   dropped them, and counting them would make a slow drain stall the rollout.
//! - Not-healthy old instances are stopped at once, without budget: they serve nothing, and a
//!   fix for a broken release should not wait behind them.
//! - The progress deadline stops applying once `desired` new instances are healthy, so a stuck
//!   drain can never roll back a release that works.
//! - Failed and Stopped instances are ignored by the counts (garbage collection is not the
//!   rollout's job), except that a Failed *new* one fails the rollout.
//! - A failed rollout holds position (`new_target` = the new live count, no stops) until the
//!   shell replaces it with [`rollback_of`].
//!
//! The shell applies a decision by starting new instances until `new_target` live ones exist,
//! and by *draining* each instance in `stop` (remove it from every router, wait for in-flight
//! requests, up to the service's `stop_grace`) before stopping it. The shell never stops an
//! instance on its own account during a rollout: every stop is in a decision.

use std::collections::BTreeSet;
use std::fmt;

use berth_spec::model::{Rollout, Service, Strategy};
use serde::{Deserialize, Serialize};

use crate::observe::{Observed, ObservedState};

/// A new instance that is still not healthy after this many restarts fails the rollout: it is
/// crash-looping, and waiting for the progress deadline would only delay the rollback.
pub const MAX_RESTARTS: u32 = 3;

/// Why a rollout could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// With neither surge nor unavailability allowed, a release cannot be replaced: no new
    /// instance may start before an old one stops, and no old one may stop before a new one is
    /// healthy.
    #[error(
        "max_surge and max_unavailable are both 0 for {desired} replicas: a rolling rollout from \
         release {from} to release {to} could neither start a new instance nor stop an old one"
    )]
    CannotProgress {
        /// The release being replaced.
        from: u64,
        /// The release replacing it.
        to: u64,
        /// The desired replica count.
        desired: u32,
    },
    /// This state machine only does rolling rollouts; the shell must pick the machine that
    /// matches the service's strategy rather than silently rolling a canary.
    #[error("strategy `{strategy}` is not a rolling rollout")]
    UnsupportedStrategy {
        /// The strategy's stack-file name.
        strategy: &'static str,
    },
    /// Only a failed rollout is rolled back.
    #[error("rollout to release {to} is {phase}, not failed: nothing to roll back")]
    NotFailed {
        /// The rollout's target release.
        to: u64,
        /// Its phase, as text.
        phase: String,
    },
    /// A first deploy (or a scaling) that fails has no previous release to return to.
    #[error("rollout to release {to} had no previous release to roll back to")]
    NothingToRollBackTo {
        /// The rollout's target release.
        to: u64,
    },
}

/// Where a rollout is. Terminal phases are sticky: stepping a finished rollout changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Still replacing instances.
    Progressing,
    /// All `desired` new instances are healthy and nothing else remains.
    Succeeded,
    /// Stopped trying; the shell rolls back with [`rollback_of`]. The reason is for people: it
    /// names the instance or says how long nothing happened.
    Failed {
        /// A one-line explanation, e.g. `no progress for 60s: 1/3 new instances healthy`.
        reason: String,
    },
}

impl Phase {
    /// Succeeded or Failed: the shell stops calling [`step`] for this rollout (calling it anyway
    /// is harmless).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Phase::Progressing)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Progressing => f.write_str("progressing"),
            Phase::Succeeded => f.write_str("succeeded"),
            Phase::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// The persisted state of one rolling rollout of one service in one region.
///
/// The shell stores it (serde) after every [`step`] and reloads it after a restart; it holds only
/// what cannot be recomputed from observations: the limits, the progress clock and the phase.
/// Everything else is observed afresh each time, which is what makes the machine resumable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The release being replaced; `None` for a first deploy.
    pub from_release: Option<u64>,
    /// The release being rolled out. Equal to `from_release` for a pure scaling.
    pub to_release: u64,
    /// How many instances of `to_release` should be healthy at the end.
    pub desired: u32,
    /// How many instances above `desired` may exist at once (resolved, rounded up).
    pub max_surge: u32,
    /// How far below `desired` healthy capacity may go because of our stops (resolved, rounded
    /// down).
    pub max_unavailable: u32,
    /// When the rollout was created (ms, the shell's clock).
    pub started_ms: u64,
    /// Without progress for longer than this, the rollout fails.
    pub progress_deadline_ms: u64,
    /// When progress last happened (starts at `started_ms`).
    pub last_progress_ms: u64,
    /// The most new instances ever seen healthy at once: progress means beating it.
    pub best_healthy_new: u32,
    /// Instances of `to_release` that were already failed or crash-looping when the rollout
    /// first looked (set by the first [`step`]). They predate this rollout — a scaling, or a
    /// rollback to a release still partly running — so they must not fail it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_at_start: Option<BTreeSet<String>>,
    /// Failed by a person's abort (`berth rollout abort`): the release's content is vetoed
    /// (deploying it again needs `--force`), unlike a crash or a timeout, which may be retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vetoed: bool,
    /// Where the rollout is.
    pub phase: Phase,
}

/// What the shell should make true now. Desired quantities, not deltas: applying the same
/// decision twice is the same as applying it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// How many live instances of `to_release` should exist: the shell starts new ones until
    /// there are this many (Pending, Starting, Healthy or Unhealthy). It never stops any to
    /// reach it; stops are only ever listed in `stop`.
    pub new_target: u32,
    /// Live instances to drain, then stop: old ones being replaced, or new ones beyond
    /// `desired` on a scale-down. Least useful first (unhealthy, pending, starting, healthy),
    /// ties by id. The shell removes each from the routers before stopping it.
    pub stop: Vec<String>,
    /// The rollout's phase after this step (the same as the returned state's).
    pub phase: Phase,
}

impl RolloutState {
    /// A rolling rollout of `desired` replicas from `from_release` to `to_release` with the
    /// service's rollout settings. Percentages are resolved against `desired` the way
    /// [`berth_spec::model::Amount::resolve`] documents (surge up, unavailability down), once,
    /// here, so a persisted rollout keeps the limits it started with.
    pub fn new(
        from_release: Option<u64>,
        to_release: u64,
        desired: u32,
        rollout: &Rollout,
        now_ms: u64,
    ) -> Result<Self, RolloutError> {
        let strategy = match rollout.strategy {
            Strategy::Rolling => None,
            Strategy::BlueGreen => Some("blue_green"),
            Strategy::Canary => Some("canary"),
        };
        if let Some(strategy) = strategy {
            return Err(RolloutError::UnsupportedStrategy { strategy });
        }
        Self::with_limits(
            from_release,
            to_release,
            desired,
            rollout.max_surge.resolve(desired, true),
            rollout.max_unavailable.resolve(desired, false),
            rollout.progress_deadline.millis,
            now_ms,
        )
    }

    /// [`RolloutState::new`] with the replicas and rollout settings of a rendered service: what
    /// the shell calls when a release changes a service.
    pub fn for_service(
        from_release: Option<u64>,
        to_release: u64,
        service: &Service,
        now_ms: u64,
    ) -> Result<Self, RolloutError> {
        Self::new(
            from_release,
            to_release,
            berth_spec::model::desired_replicas(service),
            &service.rollout,
            now_ms,
        )
    }

    /// A rollout with limits already resolved to counts (used by [`rollback_of`], and by tests).
    ///
    /// Refuses `max_surge == 0 && max_unavailable == 0` when a release is being replaced:
    /// such a rollout could never move. A first deploy or a pure scaling needs neither, so
    /// they are accepted.
    pub fn with_limits(
        from_release: Option<u64>,
        to_release: u64,
        desired: u32,
        max_surge: u32,
        max_unavailable: u32,
        progress_deadline_ms: u64,
        now_ms: u64,
    ) -> Result<Self, RolloutError> {
        if let Some(from) = from_release {
            if from != to_release && desired > 0 && max_surge == 0 && max_unavailable == 0 {
                return Err(RolloutError::CannotProgress {
                    from,
                    to: to_release,
                    desired,
                });
            }
        }
        Ok(RolloutState {
            from_release,
            to_release,
            desired,
            max_surge,
            max_unavailable,
            started_ms: now_ms,
            progress_deadline_ms,
            last_progress_ms: now_ms,
            best_healthy_new: 0,
            failing_at_start: None,
            vetoed: false,
            phase: Phase::Progressing,
        })
    }

    /// The lowest healthy count our stops may leave: `desired − max_unavailable`.
    pub fn floor(&self) -> u32 {
        self.desired.saturating_sub(self.max_unavailable)
    }

    /// The most live instances (old not being stopped + new) the rollout lets exist at once:
    /// `desired + max_surge`.
    pub fn ceiling(&self) -> u32 {
        self.desired.saturating_add(self.max_surge)
    }

    /// When the shell should call [`step`] again if nothing else happens, so the progress
    /// deadline is noticed without a busy loop. `None` once the rollout is finished.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.phase {
            Phase::Progressing => Some(
                self.last_progress_ms
                    .saturating_add(self.progress_deadline_ms)
                    .saturating_add(1),
            ),
            _ => None,
        }
    }
}

/// The reverse of a failed rollout: from its `to_release` back to its `from_release`, with the
/// same replica count, limits and deadline, starting at `now_ms`.
///
/// The shell calls this when [`step`] returns [`Phase::Failed`], persists the result in place
/// of the failed state (keeping the failed one in history for `berth history`), and steps it
/// like any other rollout. Instances of the old release that are still running are "new" for
/// the reverse rollout, so they are kept, not restarted. If the release rolled back to had a
/// different replica count or rollout settings, the shell should build the reverse rollout with
/// [`RolloutState::for_service`] and that release's service instead.
pub fn rollback_of(failed: &RolloutState, now_ms: u64) -> Result<RolloutState, RolloutError> {
    if !matches!(failed.phase, Phase::Failed { .. }) {
        return Err(RolloutError::NotFailed {
            to: failed.to_release,
            phase: failed.phase.to_string(),
        });
    }
    let back_to = match failed.from_release {
        Some(from) if from != failed.to_release => from,
        _ => {
            return Err(RolloutError::NothingToRollBackTo {
                to: failed.to_release,
            })
        }
    };
    RolloutState::with_limits(
        Some(failed.to_release),
        back_to,
        failed.desired,
        failed.max_surge,
        failed.max_unavailable,
        failed.progress_deadline_ms,
        now_ms,
    )
}

/// What one step sees, counted once.
struct View<'a> {
    new_live: Vec<&'a Observed>,
    old_live: Vec<&'a Observed>,
    new_healthy: u32,
    old_healthy: u32,
    draining: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'a> View<'a> {
    fn new(state: &RolloutState, observed: &'a [Observed]) -> Self {
        let is_new = |o: &&Observed| o.release == state.to_release;
        let mut new_live: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.state.is_live())
            .filter(is_new)
            .collect();
        let mut old_live: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.state.is_live())
            .filter(|o| !is_new(o))
            .collect();
        // Least useful first, ties by id (then release, so even duplicate ids order the same).
        let order = |a: &&Observed, b: &&Observed| {
            (a.state.stop_rank(), &a.instance, a.release).cmp(&(
                b.state.stop_rank(),
                &b.instance,
                b.release,
            ))
        };
        new_live.sort_by(order);
        old_live.sort_by(order);
        let healthy = |v: &[&Observed]| count(v.iter().filter(|o| o.state.is_healthy()).count());
        View {
            new_healthy: healthy(&new_live),
            old_healthy: healthy(&old_live),
            draining: count(
                observed
                    .iter()
                    .filter(|o| o.state == ObservedState::Draining)
                    .count(),
            ),
            new_live,
            old_live,
        }
    }
}

/// New instances that are failing: Failed, or live and not healthy after [`MAX_RESTARTS`]
/// restarts, by id.
fn failing_new<'a>(state: &RolloutState, observed: &'a [Observed]) -> Vec<&'a Observed> {
    failing_of(state.to_release, observed)
}

/// Instances of `release` that are failing (see [`failing_new`]), by id: shared with the other
/// strategies, which fail fast on the same signs.
pub(crate) fn failing_of(release: u64, observed: &[Observed]) -> Vec<&Observed> {
    let mut failing: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.release == release)
        .filter(|o| {
            o.state == ObservedState::Failed
                || (o.state.is_live() && !o.state.is_healthy() && o.restarts >= MAX_RESTARTS)
        })
        .collect();
    failing.sort_by(|a, b| a.instance.cmp(&b.instance));
    failing
}

/// A deadline in seconds (`60s`, or `1500ms` when not whole) — seconds read better in a status
/// line than the stack file's canonical `1m`.
pub(crate) fn seconds(ms: u64) -> String {
    let d = std::time::Duration::from_millis(ms);
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{ms}ms")
    }
}

pub(crate) fn failure_reason(o: &Observed) -> String {
    if o.state == ObservedState::Failed {
        format!(
            "instance {} of release {} failed after {} restarts",
            o.instance, o.release, o.restarts
        )
    } else {
        let state = match o.state {
            ObservedState::Pending => "pending",
            ObservedState::Starting => "starting",
            _ => "unhealthy",
        };
        format!(
            "instance {} of release {} is still {state} after {} restarts",
            o.instance, o.release, o.restarts
        )
    }
}

/// The decision that holds position: start nothing more, stop nothing. Used once a rollout has
/// failed, so that the shell's next move is the rollback and not more of the broken release.
fn hold(view: &View<'_>, phase: Phase) -> Decision {
    Decision {
        new_target: count(view.new_live.len()),
        stop: Vec::new(),
        phase,
    }
}

/// Stops and target for a progressing rollout (rules 3 and 4 of the module doc).
fn plan(state: &RolloutState, view: &View<'_>) -> (u32, Vec<String>) {
    let healthy = view.old_healthy.saturating_add(view.new_healthy);
    let mut budget = healthy.saturating_sub(state.floor());
    let mut stop = Vec::new();
    let mut old_kept: u32 = 0;
    for o in &view.old_live {
        if !o.state.is_healthy() {
            stop.push(o.instance.clone());
        } else if budget > 0 {
            budget -= 1;
            stop.push(o.instance.clone());
        } else {
            old_kept = old_kept.saturating_add(1);
        }
    }
    let mut excess = count(view.new_live.len()).saturating_sub(state.desired);
    for o in &view.new_live {
        if excess == 0 {
            break;
        }
        if !o.state.is_healthy() {
            stop.push(o.instance.clone());
        } else if budget > 0 {
            budget -= 1;
            stop.push(o.instance.clone());
        } else {
            break;
        }
        excess -= 1;
    }
    let new_target = state.desired.min(state.ceiling().saturating_sub(old_kept));
    (new_target, stop)
}

/// One step of the rolling rollout: the next state and what the shell should make true.
///
/// Pure and deterministic: the same `(state, observed, now_ms)` always give the same answer,
/// whatever the order of `observed`. Stepping the returned state again with the same
/// observations and clock returns the same state and decision (a fixed point), so the shell may
/// call it on every event, after every restart, as often as it likes.
///
/// `observed` holds every instance of the service in the region (any release, any state).
/// `now_ms` is the shell's clock; a clock that moves backwards is tolerated (elapsed time
/// saturates at zero).
pub fn step(state: &RolloutState, observed: &[Observed], now_ms: u64) -> (RolloutState, Decision) {
    let mut next = state.clone();
    let view = View::new(state, observed);
    let failing = failing_new(state, observed);
    let failing_at_start = next
        .failing_at_start
        .get_or_insert_with(|| failing.iter().map(|o| o.instance.clone()).collect());
    let broken = failing
        .iter()
        .find(|o| !failing_at_start.contains(&o.instance))
        .map(|o| failure_reason(o));

    match &state.phase {
        Phase::Progressing => {}
        Phase::Succeeded => {
            let decision = Decision {
                new_target: state.desired,
                stop: Vec::new(),
                phase: Phase::Succeeded,
            };
            return (next, decision);
        }
        Phase::Failed { .. } => {
            let decision = hold(&view, state.phase.clone());
            return (next, decision);
        }
    }

    // 1. Fail fast on a broken new instance.
    if let Some(reason) = broken {
        next.phase = Phase::Failed { reason };
        let decision = hold(&view, next.phase.clone());
        return (next, decision);
    }

    // 2. Progress and the deadline.
    if view.new_healthy > next.best_healthy_new {
        next.best_healthy_new = view.new_healthy;
        next.last_progress_ms = next.last_progress_ms.max(now_ms);
    }
    if view.new_healthy < state.desired
        && now_ms.saturating_sub(next.last_progress_ms) > state.progress_deadline_ms
    {
        next.phase = Phase::Failed {
            reason: format!(
                "no progress for {}: {}/{} new instances healthy",
                seconds(state.progress_deadline_ms),
                view.new_healthy,
                state.desired
            ),
        };
        let decision = hold(&view, next.phase.clone());
        return (next, decision);
    }

    // 3 and 4. Stops and starts.
    let (new_target, stop) = plan(state, &view);

    // 5. Done?
    if stop.is_empty()
        && view.old_live.is_empty()
        && view.draining == 0
        && count(view.new_live.len()) == state.desired
        && view.new_healthy == state.desired
    {
        next.phase = Phase::Succeeded;
    }
    let decision = Decision {
        new_target,
        stop,
        phase: next.phase.clone(),
    };
    (next, decision)
}

#[cfg(test)]
mod tests {
    use berth_spec::model::{Amount, Duration, Percent};

    use super::*;
    use crate::sim::{run, Fate, World};

    const MINUTE: u64 = 60_000;

    fn settings(surge: Amount, unavailable: Amount) -> Rollout {
        Rollout::rolling(surge, unavailable, Duration::from_millis(MINUTE))
    }

    fn counts(surge: u32, unavailable: u32) -> Rollout {
        settings(Amount::Count(surge), Amount::Count(unavailable))
    }

    /// A world with `n` healthy instances of `release`.
    fn world_with(release: u64, n: usize, fates: Vec<Fate>) -> World {
        let mut world = World::new(1, fates);
        for _ in 0..n {
            world.spawn(release, ObservedState::Healthy);
        }
        world
    }

    fn live(world: &World, release: u64) -> usize {
        world
            .observe()
            .iter()
            .filter(|o| o.release == release && o.state.is_live())
            .count()
    }

    fn healthy(world: &World, release: u64) -> usize {
        world
            .observe()
            .iter()
            .filter(|o| o.release == release && o.state.is_healthy())
            .count()
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn first_deploy_brings_up_desired_regardless_of_surge() -> Result<(), RolloutError> {
        let state = RolloutState::new(None, 1, 3, &counts(0, 0), 0)?;
        let mut world = World::new(1, vec![]);
        let (_, first) = step(&state, &world.observe(), 0);
        assert_eq!(first.new_target, 3);
        assert!(first.stop.is_empty());
        let done = run(state, &mut world, 0, 1000, 20);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 1), 3);
        Ok(())
    }

    #[test]
    fn rolling_with_surge_one_and_no_unavailability() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(1, 0), 0)?;
        let mut world = world_with(1, 3, vec![]);
        let (s, d) = step(&state, &world.observe(), 0);
        assert_eq!(d.new_target, 1, "one surge slot");
        assert!(
            d.stop.is_empty(),
            "nothing may stop before a new one is healthy"
        );
        world.apply(2, &d);
        world.tick();
        world.tick();
        world.tick();
        // The first new instance is healthy: one old may go, and its slot is refilled at once.
        let (_, d) = step(&s, &world.observe(), 3000);
        assert_eq!(d.stop, ids(&["i-0000"]));
        assert_eq!(d.new_target, 2);

        let mut world = world_with(1, 3, vec![]);
        let done = run(state, &mut world, 0, 1000, 100);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 2), 3);
        assert_eq!(live(&world, 1), 0);
        Ok(())
    }

    #[test]
    fn rolling_with_no_surge_and_one_unavailable() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(0, 1), 0)?;
        let mut world = world_with(1, 3, vec![]);
        let (_, d) = step(&state, &world.observe(), 0);
        assert_eq!(d.stop, ids(&["i-0000"]), "one old stops first");
        assert_eq!(d.new_target, 1, "and its slot goes to a new one");
        let done = run(state, &mut world, 0, 1000, 100);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 2), 3);
        Ok(())
    }

    #[test]
    fn percentages_resolve_against_desired() -> Result<(), RolloutError> {
        let quarter = Amount::Percent(Percent(25));
        let state = RolloutState::new(Some(1), 2, 10, &settings(quarter, quarter), 0)?;
        assert_eq!((state.max_surge, state.max_unavailable), (3, 2));
        let mut world = world_with(1, 10, vec![]);
        let (_, d) = step(&state, &world.observe(), 0);
        assert_eq!(d.stop, ids(&["i-0000", "i-0001"]));
        assert_eq!(d.new_target, 5, "10 + 3 − 8 old kept");
        let done = run(state, &mut world, 0, 1000, 100);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 2), 10);
        Ok(())
    }

    #[test]
    fn scaling_up_the_same_release_keeps_what_runs() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 1, 5, &counts(0, 0), 0)?;
        let mut world = world_with(1, 2, vec![]);
        let (_, d) = step(&state, &world.observe(), 0);
        assert_eq!(d.new_target, 5);
        assert!(d.stop.is_empty());
        let done = run(state, &mut world, 0, 1000, 20);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 1), 5);
        Ok(())
    }

    #[test]
    fn scaling_down_stops_the_least_useful_first() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 1, 3, &counts(1, 0), 0)?;
        let mut world = world_with(1, 5, vec![]);
        world.set_state("i-0003", ObservedState::Unhealthy);
        let (_, d) = step(&state, &world.observe(), 0);
        assert_eq!(d.stop, ids(&["i-0003", "i-0000"]));
        assert_eq!(d.new_target, 3);
        let done = run(state, &mut world, 0, 1000, 20);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 1), 3);
        assert_eq!(live(&world, 1), 3);
        Ok(())
    }

    #[test]
    fn old_unhealthy_instances_are_stopped_first_and_freely() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(1, 0), 0)?;
        let mut world = world_with(1, 3, vec![]);
        world.set_state("i-0002", ObservedState::Unhealthy);
        let (_, d) = step(&state, &world.observe(), 0);
        assert_eq!(d.stop, ids(&["i-0002"]));
        assert_eq!(d.new_target, 2, "4 − 2 old kept");
        Ok(())
    }

    #[test]
    fn no_progress_within_the_deadline_fails() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(1, 0), 0)?;
        let fates = vec![Fate::Healthy { after: 0 }, Fate::Healthy { after: 10_000 }];
        let mut world = world_with(1, 3, fates);
        let done = run(state, &mut world, 0, 1000, 1000);
        assert_eq!(
            done.state.phase,
            Phase::Failed {
                reason: "no progress for 60s: 1/3 new instances healthy".to_string()
            }
        );
        // The first new instance became healthy at t=2s; the deadline is strict.
        assert_eq!(done.now_ms, 2000 + MINUTE + 1000);
        assert_eq!(done.state.next_deadline_ms(), None);
        assert_eq!(healthy(&world, 1) + healthy(&world, 2), 3, "capacity kept");
        Ok(())
    }

    #[test]
    fn a_failing_new_instance_fails_the_rollout_and_it_rolls_back() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(1, 0), 0)?;
        let mut world = world_with(1, 3, vec![Fate::Fails { after: 0 }]);
        let done = run(state, &mut world, 0, 1000, 100);
        assert_eq!(
            done.state.phase,
            Phase::Failed {
                reason: "instance i-0003 of release 2 failed after 0 restarts".to_string()
            }
        );
        let (_, again) = step(&done.state, &world.observe(), done.now_ms + 5000);
        assert_eq!(again.new_target, 0, "a failed rollout starts nothing more");
        assert!(again.stop.is_empty());

        let back = rollback_of(&done.state, done.now_ms)?;
        assert_eq!((back.from_release, back.to_release), (Some(2), 1));
        let done = run(back, &mut world, done.now_ms, 1000, 100);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(healthy(&world, 1), 3);
        assert_eq!(live(&world, 2), 0);
        Ok(())
    }

    #[test]
    fn a_crash_loop_fails_before_the_deadline() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(1, 0), 0)?;
        let mut world = world_with(1, 3, vec![Fate::CrashLoops { after: 0 }]);
        let done = run(state, &mut world, 0, 1000, 100);
        assert_eq!(
            done.state.phase,
            Phase::Failed {
                reason: "instance i-0003 of release 2 is still starting after 3 restarts"
                    .to_string()
            }
        );
        assert!(done.now_ms < MINUTE);
        let back = rollback_of(&done.state, done.now_ms)?;
        let done = run(back, &mut world, done.now_ms, 1000, 100);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(live(&world, 2), 0, "the crash-looping instance was stopped");
        Ok(())
    }

    #[test]
    fn failures_that_predate_the_rollout_do_not_fail_it() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 1, 3, &counts(1, 0), 0)?;
        let mut world = world_with(1, 2, vec![]);
        world.spawn(1, ObservedState::Failed);
        let done = run(state, &mut world, 0, 1000, 20);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(
            done.state.failing_at_start,
            Some(BTreeSet::from(["i-0002".to_string()]))
        );
        Ok(())
    }

    #[test]
    fn resumes_after_a_serde_round_trip_with_the_same_decisions(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let quarter = Amount::Percent(Percent(25));
        let mut state = RolloutState::new(Some(1), 2, 8, &settings(quarter, quarter), 0)?;
        let mut world = world_with(1, 8, vec![Fate::Healthy { after: 2 }]);
        let mut now = 0;
        for _ in 0..4 {
            let (next, d) = step(&state, &world.observe(), now);
            world.apply(2, &d);
            world.tick();
            state = next;
            now += 1000;
        }
        assert_eq!(state.phase, Phase::Progressing, "mid-rollout");
        let stored = serde_json::to_string(&state)?;
        let reloaded: RolloutState = serde_json::from_str(&stored)?;
        assert_eq!(reloaded, state);
        let observed = world.observe();
        let (a, da) = step(&state, &observed, now);
        let (b, db) = step(&reloaded, &observed, now);
        assert_eq!((&a, &da), (&b, &db));
        // Idempotent: stepping the result again with the same inputs changes nothing.
        let (c, dc) = step(&a, &observed, now);
        assert_eq!((&c, &dc), (&a, &da));
        // And the order observations arrive in does not matter.
        let reversed: Vec<Observed> = observed.iter().rev().cloned().collect();
        assert_eq!(step(&state, &reversed, now), (a, da));
        Ok(())
    }

    #[test]
    fn refuses_what_cannot_progress_and_what_is_not_rolling() {
        assert_eq!(
            RolloutState::new(Some(1), 2, 3, &counts(0, 0), 0),
            Err(RolloutError::CannotProgress {
                from: 1,
                to: 2,
                desired: 3
            })
        );
        let mut blue_green = counts(1, 0);
        blue_green.strategy = Strategy::BlueGreen;
        assert_eq!(
            RolloutState::new(Some(1), 2, 3, &blue_green, 0),
            Err(RolloutError::UnsupportedStrategy {
                strategy: "blue_green"
            })
        );
    }

    #[test]
    fn rollback_needs_a_failed_rollout_with_a_previous_release() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 3, &counts(1, 0), 0)?;
        assert!(matches!(
            rollback_of(&state, 0),
            Err(RolloutError::NotFailed { to: 2, .. })
        ));
        let mut first = RolloutState::new(None, 1, 3, &counts(1, 0), 0)?;
        first.phase = Phase::Failed {
            reason: "test".to_string(),
        };
        assert_eq!(
            rollback_of(&first, 0),
            Err(RolloutError::NothingToRollBackTo { to: 1 })
        );
        Ok(())
    }

    #[test]
    fn scale_to_zero_stops_everything() -> Result<(), RolloutError> {
        let state = RolloutState::new(Some(1), 2, 0, &counts(0, 0), 0)?;
        let mut world = world_with(1, 3, vec![]);
        let done = run(state, &mut world, 0, 1000, 20);
        assert_eq!(done.state.phase, Phase::Succeeded);
        assert_eq!(live(&world, 1) + live(&world, 2), 0);
        Ok(())
    }
}
