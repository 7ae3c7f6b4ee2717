//! The canary rollout: the new release starts beside the stable one with just enough instances
//! for its share of traffic, and the share grows step by step (`steps: [10%, 50%]`, then 100 %)
//! while the analysis ([`crate::analysis`]) compares it with the stable release on the routers'
//! own counters.
//!
//! Pure: `step(state, observed, traffic, now_ms)`, like [`crate::rolling::step`], with the
//! routers' counters behind [`TrafficWindow`]. Decisions are desired quantities, so replaying a
//! step changes nothing.
//!
//! ## The rules, per step
//! 1. **Fail fast.** A new instance that fails or crash-loops fails the rollout (as rolling).
//! 2. **Instances.** At step `i` the new release has `⌈desired × share⌉` instances (at least
//!    one, at most `desired`); the stable release keeps all of its own until 100 %, so healthy
//!    capacity never drops during the steps.
//! 3. **The step's clock** starts when the step's new instances are all healthy (a step does not
//!    bake on instances that do not serve). Until then the new release keeps the previous step's
//!    share (none before the first).
//! 4. **Analysis** on the counters since the step's clock started: a failure (or the guardrail)
//!    fails the rollout with the numbers in the reason (`on_failure: rollback`), or holds the new
//!    release out of traffic and pauses (`on_failure: pause`). A failure is acted on even while
//!    paused.
//! 5. **A step ends** when its bake time has passed **and** the analysis passes (which needs
//!    `min_requests`). With insufficient data the step is extended, up to
//!    [`extension_ms`] past the bake, then the rollout pauses and says so: never promoted on no
//!    data, never failed for it.
//! 6. **100 %.** After the last step the new release is brought to `desired`; when all of them
//!    are healthy the new release gets all traffic and the stable instances are stopped (only
//!    then, so capacity never drops below `desired`). Nothing else left → Succeeded.
//! 7. **Failed** (by the analysis, a broken instance, the progress deadline, or
//!    [`CanaryState::abort`]): all traffic to the stable release, the new instances stopped.
//!
//! Commands — [`CanaryState::pause`], [`CanaryState::resume`], [`CanaryState::promote`],
//! [`CanaryState::abort`] — are pure edits of the state that the server writes back; the next
//! step acts on them.

use std::collections::{BTreeMap, BTreeSet};

use berth_spec::model::{OnFailure, ALL_TRAFFIC};
use serde::{Deserialize, Serialize};

use crate::analysis::{analyse, Analysis, ArmCounts, Verdict};
use crate::observe::{Observed, ObservedState};
use crate::rolling::{failing_of, failure_reason, seconds, Decision, Phase};
use crate::strategy::Traffic;

/// The routers' counters for one release of the service being rolled out, summed over every
/// router from `since_ms` to now (the shell binds the stack, the service and the clock).
pub trait TrafficWindow {
    /// The counters of `release` since `since_ms`.
    fn window(&self, release: u64, since_ms: u64) -> ArmCounts;
}

/// No counters at all: what a step sees when nothing reports traffic.
pub struct NoTraffic;

impl TrafficWindow for NoTraffic {
    fn window(&self, _release: u64, _since_ms: u64) -> ArmCounts {
        ArmCounts::default()
    }
}

/// How long a step with insufficient data is extended past its bake before the rollout
/// pauses: twice the bake, at least one second (so a step that just began never pauses).
pub fn extension_ms(bake_ms: u64) -> u64 {
    bake_ms.saturating_mul(2).max(1_000)
}

/// What became of one step, kept for `berth rollout explain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's index (0-based); `steps.len()` is the 100 % step.
    pub step: usize,
    /// The new release's share at that step.
    pub basis_points: u32,
    /// When the step's clock started and when the report was made.
    pub started_ms: u64,
    /// When it ended (or paused, or failed).
    pub ended_ms: u64,
    /// The analysis that ended it; `None` when a person promoted past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// How it ended: `passed`, `promoted`, `paused: …`, `failed: …`.
    pub outcome: String,
}

/// The persisted state of one canary rollout of one service in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryState {
    /// The stable release.
    pub from_release: u64,
    /// The new release.
    pub to_release: u64,
    /// How many instances of the new release should run at 100 %.
    pub desired: u32,
    /// The new release's share at each step, in basis points, increasing, each below 100 %.
    pub steps: Vec<u32>,
    /// The least time at each step.
    pub bake_ms: u64,
    /// The least requests to the new release at each step.
    pub min_requests: u64,
    /// What a failed analysis does.
    pub on_failure: OnFailure,
    /// Without progress (new instances becoming healthy) for longer than this, the rollout
    /// fails.
    pub progress_deadline_ms: u64,
    /// When the rollout was created.
    pub started_ms: u64,
    /// The current step; `steps.len()` means the way to 100 %.
    pub step: usize,
    /// When the current step's clock started (its instances all healthy); `None` before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_ms: Option<u64>,
    /// When the current step began waiting for its instances (the progress clock).
    pub last_progress_ms: u64,
    /// The most new instances seen healthy at once.
    pub best_healthy_new: u32,
    /// New instances already failing when the rollout first looked (they do not fail it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_at_start: Option<BTreeSet<String>>,
    /// Why the rollout waits for a person (`berth rollout resume|promote|abort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The new release is out of traffic (a failed analysis with `on_failure: pause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held_back: bool,
    /// What became of each finished step, oldest first (at most one per step and pause).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<StepReport>,
    /// Failed by a person's abort or by the canary analysis: the release's content is vetoed
    /// (deploying it again needs `--force`), unlike a crash or a timeout, which may be retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vetoed: bool,
    /// Where the rollout is.
    pub phase: Phase,
}

/// The most reports kept: every step can end once and pause a few times.
const MAX_REPORTS: usize = 64;

/// One step of a canary: the state to persist, the decision, the traffic split and the
/// analysis of the current step (for status lines; not persisted unless a step ended).
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryStep {
    /// The state to persist.
    pub state: CanaryState,
    /// What the shell does now.
    pub decision: Decision,
    /// How traffic is shared until the next step (basis points per release).
    pub traffic: Traffic,
    /// The current step's analysis, if its clock has started.
    pub analysis: Option<Analysis>,
}

/// The new release's instance count for a share: `⌈desired × share⌉`, at least one (a share
/// needs someone to serve it), at most `desired`.
pub fn instances_for_share(desired: u32, basis_points: u32) -> u32 {
    if desired == 0 {
        return 0;
    }
    let n = (u64::from(desired) * u64::from(basis_points)).div_ceil(u64::from(ALL_TRAFFIC));
    u32::try_from(n).unwrap_or(desired).clamp(1, desired)
}

/// What one step sees of the instances, counted once.
pub(crate) struct Arms<'a> {
    pub new_live: Vec<&'a Observed>,
    pub old_live: Vec<&'a Observed>,
    pub new_healthy: u32,
    pub old_healthy: u32,
    pub draining: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<'a> Arms<'a> {
    pub(crate) fn new(to_release: u64, observed: &'a [Observed]) -> Self {
        let mut new_live: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.state.is_live() && o.release == to_release)
            .collect();
        let mut old_live: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.state.is_live() && o.release != to_release)
            .collect();
        new_live.sort_by(|a, b| a.instance.cmp(&b.instance));
        old_live.sort_by(|a, b| a.instance.cmp(&b.instance));
        Arms {
            new_healthy: count(new_live.iter().filter(|o| o.state.is_healthy()).count()),
            old_healthy: count(old_live.iter().filter(|o| o.state.is_healthy()).count()),
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

    pub(crate) fn ids(v: &[&Observed]) -> Vec<String> {
        v.iter().map(|o| o.instance.clone()).collect()
    }
}

/// What a failed (or aborted) canary or blue/green does: all traffic to the stable release and
/// the new instances stopped — as far as the stable release can carry it. When the stable
/// instances were already being replaced (the 100 % step, or after `keep_previous`), new ones
/// stop only while `desired` healthy instances remain, unhealthy ones first, and traffic stays
/// where it can be served; the shell's rollback brings the stable release back first.
pub(crate) fn failed(
    arms: &Arms<'_>,
    desired: u32,
    from: u64,
    to: u64,
    phase: Phase,
) -> (Decision, Traffic) {
    if arms.old_healthy >= desired.max(1) || arms.new_live.is_empty() {
        let decision = Decision {
            new_target: 0,
            stop: Arms::ids(&arms.new_live),
            phase,
        };
        return (decision, split(from, to, 0));
    }
    let mut budget = (arms.old_healthy + arms.new_healthy).saturating_sub(desired);
    let mut stop = Vec::new();
    let mut candidates: Vec<&&Observed> = arms.new_live.iter().collect();
    candidates.sort_by_key(|o| (o.state.is_healthy(), o.instance.clone()));
    for o in candidates {
        if !o.state.is_healthy() {
            stop.push(o.instance.clone());
        } else if budget > 0 {
            budget -= 1;
            stop.push(o.instance.clone());
        }
    }
    let kept = count(arms.new_live.len()).saturating_sub(count(stop.len()));
    let share = if arms.old_healthy == 0 {
        ALL_TRAFFIC
    } else {
        0
    };
    (
        Decision {
            new_target: kept,
            stop,
            phase,
        },
        split(from, to, share),
    )
}

/// A split of all traffic: `to` gets `share` basis points, `from` the rest.
pub(crate) fn split(from: u64, to: u64, share: u32) -> Traffic {
    let share = share.min(ALL_TRAFFIC);
    if from == to {
        return Traffic::PerRelease(BTreeMap::from([(to, ALL_TRAFFIC)]));
    }
    Traffic::PerRelease(BTreeMap::from([(from, ALL_TRAFFIC - share), (to, share)]))
}

impl CanaryState {
    /// A canary from `from_release` (stable) to `to_release`, with shares in basis points.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        from_release: u64,
        to_release: u64,
        desired: u32,
        steps: Vec<u32>,
        bake_ms: u64,
        min_requests: u64,
        on_failure: OnFailure,
        progress_deadline_ms: u64,
        now_ms: u64,
    ) -> Self {
        CanaryState {
            from_release,
            to_release,
            desired,
            steps,
            bake_ms,
            min_requests,
            on_failure,
            progress_deadline_ms,
            started_ms: now_ms,
            step: 0,
            step_started_ms: None,
            last_progress_ms: now_ms,
            best_healthy_new: 0,
            failing_at_start: None,
            paused: None,
            held_back: false,
            reports: Vec::new(),
            vetoed: false,
            phase: Phase::Progressing,
        }
    }

    /// The new release's share at the current step (10,000 on the way to 100 %).
    pub fn step_share(&self) -> u32 {
        self.steps.get(self.step).copied().unwrap_or(ALL_TRAFFIC)
    }

    /// How many new instances the current step needs.
    pub fn step_instances(&self) -> u32 {
        instances_for_share(self.desired, self.step_share())
    }

    /// The new release's share of traffic now (see the module's rules 3 and 6).
    pub fn current_share(&self, new_healthy: u32) -> u32 {
        if !matches!(self.phase, Phase::Progressing) || self.held_back {
            return if self.phase == Phase::Succeeded {
                ALL_TRAFFIC
            } else {
                0
            };
        }
        if self.step_started_ms.is_some() {
            return self.step_share();
        }
        match self.step.checked_sub(1).and_then(|i| self.steps.get(i)) {
            Some(previous) if new_healthy > 0 => *previous,
            _ => 0,
        }
    }

    /// When the shell should step again if nothing else happens: the bake's end, the
    /// extension's end, or the progress deadline. `None` once finished.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        if self.phase.is_terminal() {
            return None;
        }
        Some(match self.step_started_ms {
            Some(at) if at.saturating_add(self.bake_ms) > self.last_progress_ms => {
                at.saturating_add(self.bake_ms)
            }
            Some(at) => at
                .saturating_add(self.bake_ms)
                .saturating_add(extension_ms(self.bake_ms)),
            None => self
                .last_progress_ms
                .saturating_add(self.progress_deadline_ms)
                .saturating_add(1),
        })
    }

    fn report(&mut self, now_ms: u64, analysis: Option<Analysis>, outcome: String) {
        if self.reports.len() >= MAX_REPORTS {
            self.reports.remove(0);
        }
        self.reports.push(StepReport {
            step: self.step,
            basis_points: self.step_share(),
            started_ms: self.step_started_ms.unwrap_or(now_ms),
            ended_ms: now_ms,
            analysis,
            outcome,
        });
    }

    /// Moves to step `to` (at most 100 %): its clock starts once its instances are healthy.
    fn enter(&mut self, to: usize, now_ms: u64) {
        self.step = to.min(self.steps.len());
        self.step_started_ms = None;
        self.last_progress_ms = now_ms;
        self.paused = None;
        self.held_back = false;
    }

    /// `berth rollout pause`: the rollout waits where it is (traffic unchanged).
    pub fn pause(&mut self, why: &str) {
        if self.phase == Phase::Progressing && self.paused.is_none() {
            self.paused = Some(why.to_string());
        }
    }

    /// `berth rollout resume`: the pause ends and the step's clock starts again (its counts
    /// with it), so a step paused for lack of data gets a fresh window.
    pub fn resume(&mut self, now_ms: u64) {
        if self.phase == Phase::Progressing {
            self.paused = None;
            self.held_back = false;
            if self.step_started_ms.is_some() {
                self.step_started_ms = Some(now_ms);
            }
            self.last_progress_ms = now_ms;
        }
    }

    /// `berth rollout promote [--full]`: to the next step now (or to 100 %), without waiting for
    /// the bake or the analysis.
    pub fn promote(&mut self, full: bool, now_ms: u64) {
        if self.phase != Phase::Progressing {
            return;
        }
        let who = if full { "promoted to 100%" } else { "promoted" };
        self.report(now_ms, None, who.to_string());
        let to = if full {
            self.steps.len()
        } else {
            self.step + 1
        };
        self.enter(to, now_ms);
    }

    /// `berth rollout abort` (or a failed analysis): all traffic back to the stable release,
    /// the new instances stopped, the rollout failed with `reason`.
    pub fn abort(&mut self, reason: &str) {
        if self.phase == Phase::Progressing {
            self.vetoed = true;
            self.phase = Phase::Failed {
                reason: reason.to_string(),
            };
        }
    }
}

/// The step's name in a reason: `step 1 (10%)`, or `100%`.
fn step_name(state: &CanaryState) -> String {
    if state.step >= state.steps.len() {
        "the 100% step".to_string()
    } else {
        format!(
            "step {} ({})",
            state.step + 1,
            berth_spec::model::BasisPoints(state.step_share())
        )
    }
}

/// One step of the canary (see the module's rules). `observed` holds every instance of the
/// service in the region; `traffic` gives the routers' counters.
pub fn step(
    state: &CanaryState,
    observed: &[Observed],
    traffic: &dyn TrafficWindow,
    now_ms: u64,
) -> CanaryStep {
    let mut next = state.clone();
    let arms = Arms::new(state.to_release, observed);
    let failing = failing_of(state.to_release, observed);
    let at_start = next
        .failing_at_start
        .get_or_insert_with(|| failing.iter().map(|o| o.instance.clone()).collect());
    let broken = failing
        .iter()
        .find(|o| !at_start.contains(&o.instance))
        .map(|o| failure_reason(o));

    if state.phase == Phase::Progressing {
        if let Some(reason) = broken {
            next.phase = Phase::Failed { reason };
        }
    }
    let mut analysis = None;
    if next.phase == Phase::Progressing {
        analysis = progress(&mut next, &arms, traffic, now_ms);
    }
    finish(next, &arms, analysis)
}

/// Rules 2 to 6 for a progressing canary; returns the current step's analysis.
fn progress(
    next: &mut CanaryState,
    arms: &Arms<'_>,
    traffic: &dyn TrafficWindow,
    now_ms: u64,
) -> Option<Analysis> {
    if arms.new_healthy > next.best_healthy_new {
        next.best_healthy_new = arms.new_healthy;
        next.last_progress_ms = next.last_progress_ms.max(now_ms);
    }
    let wanted = next.step_instances();
    if next.step_started_ms.is_none() {
        if arms.new_healthy >= wanted {
            next.step_started_ms = Some(now_ms);
        } else if now_ms.saturating_sub(next.last_progress_ms) > next.progress_deadline_ms {
            next.phase = Phase::Failed {
                reason: format!(
                    "no progress for {} at {}: {}/{} new instances healthy",
                    seconds(next.progress_deadline_ms),
                    step_name(next),
                    arms.new_healthy,
                    wanted
                ),
            };
            return None;
        }
    }
    if next.step >= next.steps.len() {
        return None; // the 100 % step has no analysis: every step before it passed
    }
    let since = next.step_started_ms?;
    let new = traffic.window(next.to_release, since);
    let stable = traffic.window(next.from_release, since);
    let a = analyse(new, stable, next.min_requests);
    let elapsed = now_ms.saturating_sub(since);
    match &a.verdict {
        Verdict::Fail(why) | Verdict::Abort(why) => {
            let reason = format!("canary analysis failed at {}: {why}", step_name(next));
            next.report(now_ms, Some(a.clone()), format!("failed: {why}"));
            match next.on_failure {
                OnFailure::Rollback => {
                    next.vetoed = true;
                    next.phase = Phase::Failed { reason };
                }
                OnFailure::Pause => {
                    if !next.held_back {
                        next.held_back = true;
                        next.paused = Some(reason);
                    } else {
                        next.reports.pop(); // already reported when it was held back
                    }
                }
            }
        }
        _ if next.paused.is_some() => {}
        Verdict::Pass if elapsed >= next.bake_ms => {
            next.report(now_ms, Some(a.clone()), "passed".to_string());
            let to = next.step + 1;
            next.enter(to, now_ms);
            if arms.new_healthy >= next.step_instances() {
                next.step_started_ms = Some(now_ms);
            }
        }
        Verdict::InsufficientData
            if elapsed >= next.bake_ms.saturating_add(extension_ms(next.bake_ms)) =>
        {
            let why = format!(
                "insufficient data at {}: {} of {} requests to the new release after {}",
                step_name(next),
                a.new.requests,
                next.min_requests,
                seconds(elapsed)
            );
            next.report(now_ms, Some(a.clone()), format!("paused: {why}"));
            next.paused = Some(why);
        }
        _ => {}
    }
    Some(a)
}

/// The decision and traffic that go with the (already advanced) state.
fn finish(next: CanaryState, arms: &Arms<'_>, analysis: Option<Analysis>) -> CanaryStep {
    let (from, to) = (next.from_release, next.to_release);
    let (decision, traffic) = match &next.phase {
        Phase::Failed { .. } => failed(arms, next.desired, from, to, next.phase.clone()),
        Phase::Succeeded => (
            Decision {
                new_target: next.desired,
                stop: Vec::new(),
                phase: Phase::Succeeded,
            },
            split(from, to, ALL_TRAFFIC),
        ),
        Phase::Progressing if next.step >= next.steps.len() => {
            let full = arms.new_healthy >= next.desired;
            let stop = if full {
                Arms::ids(&arms.old_live)
            } else {
                Vec::new()
            };
            let share = if full {
                ALL_TRAFFIC
            } else {
                next.current_share(arms.new_healthy)
            };
            let mut phase = Phase::Progressing;
            if full
                && arms.old_live.is_empty()
                && arms.draining == 0
                && count(arms.new_live.len()) == next.desired
            {
                phase = Phase::Succeeded;
            }
            (
                Decision {
                    new_target: next.desired,
                    stop,
                    phase,
                },
                split(from, to, share),
            )
        }
        Phase::Progressing => (
            Decision {
                new_target: next
                    .step_instances()
                    .max(count(arms.new_live.len()).min(next.desired)),
                stop: Vec::new(),
                phase: Phase::Progressing,
            },
            split(from, to, next.current_share(arms.new_healthy)),
        ),
    };
    let mut state = next;
    state.phase = decision.phase.clone();
    CanaryStep {
        state,
        decision,
        traffic,
        analysis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters growing with time: `rate` requests per second to each release since `since`,
    /// with an error share per release, so a test can script a good or a bad canary.
    struct Steady {
        now_ms: u64,
        per_second: BTreeMap<u64, (u64, u64)>,
    }

    impl TrafficWindow for Steady {
        fn window(&self, release: u64, since_ms: u64) -> ArmCounts {
            let secs = self.now_ms.saturating_sub(since_ms) / 1000;
            let (rps, errors_per_mille) = self.per_second.get(&release).copied().unwrap_or((0, 0));
            let requests = rps * secs;
            ArmCounts {
                requests,
                errors_5xx: requests * errors_per_mille / 1000,
                p99_ms: Some(10),
            }
        }
    }

    fn obs(id: &str, release: u64, state: ObservedState) -> Observed {
        Observed {
            instance: id.to_string(),
            release,
            state,
            restarts: 0,
        }
    }

    fn canary(desired: u32) -> CanaryState {
        CanaryState::new(
            1,
            2,
            desired,
            vec![1_000, 5_000],
            10_000,
            200,
            OnFailure::Rollback,
            60_000,
            0,
        )
    }

    fn world(old: usize, new: usize) -> Vec<Observed> {
        let mut v: Vec<Observed> = (0..old)
            .map(|i| obs(&format!("o{i}"), 1, ObservedState::Healthy))
            .collect();
        v.extend((0..new).map(|i| obs(&format!("n{i}"), 2, ObservedState::Healthy)));
        v
    }

    fn share(t: &Traffic, release: u64) -> u32 {
        t.endpoint_weight(release)
    }

    #[test]
    fn a_good_canary_walks_its_steps_to_100_percent() {
        let rates = |canary_errors| BTreeMap::from([(1, (90, 10)), (2, (10, canary_errors))]);
        let mut s = canary(4);
        let first = step(&s, &world(4, 0), &NoTraffic, 0);
        assert_eq!(first.decision.new_target, 1, "⌈4 × 10 %⌉");
        assert_eq!(
            share(&first.traffic, 2),
            0,
            "no share before the instance serves"
        );
        s = first.state;
        let t = step(&s, &world(4, 1), &NoTraffic, 1_000);
        assert_eq!(share(&t.traffic, 2), 1_000);
        assert_eq!(share(&t.traffic, 1), 9_000);
        assert_eq!(t.state.step_started_ms, Some(1_000));
        s = t.state;
        // Baked but only 100 requests: extended, not promoted.
        let traffic = Steady {
            now_ms: 11_000,
            per_second: rates(10),
        };
        let t = step(&s, &world(4, 1), &traffic, 11_000);
        assert_eq!(
            t.analysis.as_ref().map(|a| a.verdict.clone()),
            Some(Verdict::InsufficientData)
        );
        assert_eq!(t.state.step, 0);
        s = t.state;
        let traffic = Steady {
            now_ms: 21_000,
            per_second: rates(10),
        };
        let t = step(&s, &world(4, 1), &traffic, 21_000);
        assert_eq!(t.state.step, 1, "{:?}", t.analysis);
        assert_eq!(t.decision.new_target, 2);
        assert_eq!(t.state.reports.len(), 1);
        assert_eq!(
            share(&t.traffic, 2),
            1_000,
            "keeps 10 % until the second instance serves"
        );
        s = t.state;
        let t = step(&s, &world(4, 2), &NoTraffic, 22_000);
        assert_eq!(share(&t.traffic, 2), 5_000);
        s = t.state;
        let traffic = Steady {
            now_ms: 42_000,
            per_second: rates(10),
        };
        let t = step(&s, &world(4, 2), &traffic, 42_000);
        assert_eq!(t.state.step, 2, "to 100 %");
        assert_eq!(t.decision.new_target, 4);
        assert!(
            t.decision.stop.is_empty(),
            "old ones stay until the new are all healthy"
        );
        s = t.state;
        let t = step(&s, &world(4, 4), &NoTraffic, 43_000);
        assert_eq!(share(&t.traffic, 2), ALL_TRAFFIC);
        assert_eq!(t.decision.stop, ["o0", "o1", "o2", "o3"]);
        s = t.state;
        let t = step(&s, &world(0, 4), &NoTraffic, 44_000);
        assert_eq!(t.state.phase, Phase::Succeeded);
    }

    #[test]
    fn a_bad_canary_is_rolled_back_at_its_first_step_with_the_numbers() {
        let mut s = canary(4);
        s = step(&s, &world(4, 1), &NoTraffic, 0).state;
        let traffic = Steady {
            now_ms: 3_000,
            per_second: BTreeMap::from([(1, (90, 0)), (2, (10, 300))]),
        };
        let t = step(&s, &world(4, 1), &traffic, 3_000);
        match &t.state.phase {
            Phase::Failed { reason } => {
                assert!(reason.contains("step 1 (10%)"), "{reason}");
                assert!(reason.contains("error rate 30.00%"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(share(&t.traffic, 1), ALL_TRAFFIC);
        assert_eq!(t.decision.stop, ["n0"]);
        assert_eq!(t.decision.new_target, 0);
    }

    #[test]
    fn no_traffic_extends_the_step_then_pauses_and_never_promotes() {
        let mut s = canary(2);
        s = step(&s, &world(2, 1), &NoTraffic, 0).state;
        s = step(&s, &world(2, 1), &NoTraffic, 10_000).state;
        assert_eq!(s.paused, None, "extended first");
        s = step(&s, &world(2, 1), &NoTraffic, 30_000).state;
        let why = s.paused.clone().expect("paused");
        assert!(
            why.starts_with("insufficient data at step 1 (10%): 0 of 200"),
            "{why}"
        );
        for t in [40_000, 100_000, 10_000_000] {
            let t = step(&s, &world(2, 1), &NoTraffic, t);
            assert_eq!(t.state.step, 0);
            assert_eq!(t.state.phase, Phase::Progressing);
            assert_eq!(
                share(&t.traffic, 2),
                1_000,
                "a pause keeps the traffic where it is"
            );
        }
        s.resume(50_000);
        assert_eq!(s.paused, None);
        assert_eq!(s.step_started_ms, Some(50_000));
    }

    #[test]
    fn on_failure_pause_holds_the_new_release_out_of_traffic() {
        let mut s = canary(2);
        s.on_failure = OnFailure::Pause;
        s = step(&s, &world(2, 1), &NoTraffic, 0).state;
        let traffic = Steady {
            now_ms: 3_000,
            per_second: BTreeMap::from([(1, (90, 0)), (2, (10, 300))]),
        };
        let t = step(&s, &world(2, 1), &traffic, 3_000);
        assert_eq!(t.state.phase, Phase::Progressing);
        assert!(t.state.held_back);
        assert_eq!(share(&t.traffic, 2), 0);
        assert!(t.decision.stop.is_empty(), "kept for a person to look at");
        let again = step(&t.state, &world(2, 1), &traffic, 3_000);
        assert_eq!(again.state, t.state, "replaying changes nothing");
    }

    #[test]
    fn commands_promote_and_abort() {
        let mut s = canary(2);
        s = step(&s, &world(2, 1), &NoTraffic, 0).state;
        s.promote(false, 1_000);
        assert_eq!(s.step, 1);
        s.promote(true, 2_000);
        assert_eq!(s.step, 2);
        assert_eq!(s.reports.len(), 2);
        s.abort("aborted by alice");
        let t = step(&s, &world(2, 2), &NoTraffic, 3_000);
        assert_eq!(share(&t.traffic, 1), ALL_TRAFFIC);
        assert_eq!(t.decision.stop, ["n0", "n1"]);
    }

    #[test]
    fn shares_need_enough_instances_and_at_least_one() {
        assert_eq!(
            instances_for_share(10, 50),
            1,
            "0.5 % of 10 is still one instance"
        );
        assert_eq!(instances_for_share(10, 1_000), 1);
        assert_eq!(instances_for_share(10, 1_001), 2);
        assert_eq!(instances_for_share(3, 9_999), 3);
        assert_eq!(instances_for_share(0, 5_000), 0);
    }
}
