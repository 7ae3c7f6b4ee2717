//! # berth-rollout — rollout state machines
//!
//! Pure: no I/O, no threads, no clock. A rollout is a persisted state plus a function
//! `step(state, observed instances, now_ms) → (state, decision)`. The server's rollout controller
//! (the shell) calls it for one service in one region whenever something changes — an instance
//! changes state, a timer fires ([`RolloutState::next_deadline_ms`]), the server restarts —
//! stores the new state and carries out the decision. Reconciliation, not scripts: decisions are
//! desired counts and sets, so a repeated or replayed call cannot start or stop anything twice.
//!
//! ## Map
//! - [`observe`] — what a machine sees: [`Observed`] instances and their [`ObservedState`].
//! - [`rolling`] — the rolling rollout: [`RolloutState`], [`step`], [`Decision`], [`Phase`],
//!   [`rollback_of`]. The rules are listed in the module's documentation.
//! - [`rollback`] — which release a failed rollout returns to: [`rollback_target`] (only one
//!   that once went live, at most one automatic rollback in a row).
//! - [`strategy`] — the strategy seam: [`Strategy`] (rolling today), whose [`StrategyStep`]
//!   carries the [`Traffic`] split per release that the routing table's weights come from.
//! - [`waves`] — region waves and dependency order: [`waves::advance`], [`dependency_order`].
//! - `sim` (feature `sim`) — a deterministic world that applies decisions, for tests and replays;
//!   test support, outside the library's normal build (the crate's tests turn it on).
//!
//! - [`canary`] — the canary: steps of traffic share, each baked and analysed; [`analysis`] —
//!   the new release against the stable one (a sequential test valid under repeated looks).
//! - [`blue_green`] — up at full size out of traffic, a switch at once, the old kept warm.
//! - [`strategy::ServiceRollout`] — whichever of the three a service runs, persisted.
//!
//! ## Vocabulary
//! - *release* — an immutable numbered snapshot; a rollout goes from `from_release` (none on a
//!   first deploy) to `to_release` (the same one for a pure scaling).
//! - *new* / *old* instance — one running `to_release` / any other release.
//! - *live* — Pending, Starting, Healthy or Unhealthy: occupies a slot. Failed and Stopped are
//!   dead; Draining is leaving.
//! - *healthy capacity* — live instances that are Healthy; nothing else serves.
//! - *floor* — `desired − max_unavailable`: our stops never take healthy capacity below it.
//! - *ceiling* — `desired + max_surge`: live old not being stopped plus new never exceed it.
//! - *progress* — more new instances healthy than ever before in this rollout.
//!
//! ## Phases
//! ```text
//!                         each step: start new up to new_target,
//!                         drain + stop old while healthy ≥ floor
//!                              ┌──────┐
//!                              ▼      │
//!   RolloutState::new ──► Progressing ┘ ── all desired new healthy, ──► Succeeded
//!                          │       ▲       no old, nothing draining
//!   a new instance Failed  │       │
//!   or crash-looping, or   │       │  rollback_of(failed): a new rollout,
//!   no progress within     ▼       │  from to_release back to from_release
//!   progress_deadline     Failed ──┘
//! ```
//! Terminal phases are sticky. Draining before stopping is the shell's job: every instance in
//! [`Decision::stop`] is first removed from the routers (marked Draining), then stopped.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod analysis;
pub mod blue_green;
pub mod canary;
pub mod observe;
pub mod rollback;
pub mod rolling;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod strategy;
pub mod waves;

pub use observe::{Observed, ObservedState};
pub use rollback::{rollback_target, NoRollback};
pub use rolling::{rollback_of, step, Decision, Phase, RolloutError, RolloutState, MAX_RESTARTS};
pub use strategy::{ServiceRollout, ServiceStep, Strategy, StrategyStep, Traffic};
pub use waves::{dependency_order, WaveStep};
