//! Rollouts as people drive them: `berth rollout status|explain|pause|resume|promote|abort`.
//! Service functions of parsed input and the shared state; `http::rollouts` parses a request,
//! calls one of these and answers. A command is a pure edit of the stored rollout record
//! ([`apply_command`]) written with compare-and-swap, so it never undoes a controller pass
//! it did not see; the controller acts on it in its next pass (it is kicked at once). Every
//! write is a store event, so `berth events` shows each command and each state change.
//!
//! The controllers live in [`crate::controllers`] (one per concern); the rollout record in
//! [`crate::state`]. The re-exports below keep the paths other code still names.

use berth_rollout::analysis::analyse;
pub use berth_rollout::analysis::{Analysis, Verdict};
pub use berth_rollout::canary::StepReport;
use berth_rollout::{Phase as StepPhase, ServiceRollout, Traffic};
use serde::{Deserialize, Serialize};

pub use crate::controllers::drain::DRAIN_DEADLINE_MS;
pub use crate::controllers::{reconcile_once, run_controller, CREATE_BUDGET, TICK};
pub use crate::state::{RolloutPhase as Phase, RolloutRecord};
pub use berth_rollout::dependency_order;

use crate::state::{encode, StateError, Versioned};
use crate::{keys, Shared};

/// Whether deploying `release`'s content again is refused without `--force`: it failed by its
/// canary analysis or by `berth rollout abort` (a crash or a timeout is a retry, not a veto),
/// as the controller marked it ([`berth_api::control::Release::vetoed`]).
pub fn vetoes(release: &berth_api::control::Release) -> bool {
    release.status == berth_api::control::ReleaseStatus::Failed && release.vetoed
}

/// What a person asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Wait where it is (a canary keeps its traffic split).
    Pause,
    /// End a pause; a canary's step starts its clock (and its counts) again.
    Resume,
    /// A canary to its next step (`full`: to 100 %); a blue/green switches.
    Promote {
        /// Straight to 100 %.
        #[serde(default)]
        full: bool,
    },
    /// All traffic back to the stable release, the new instances stopped, the release failed
    /// (and vetoed: deploying its content again needs `--force`).
    Abort,
}

impl Command {
    /// The command's name as the CLI spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Promote { full: false } => "promote",
            Command::Promote { full: true } => "promote --full",
            Command::Abort => "abort",
        }
    }
}

/// Why a rollout command or status changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No rollout record for the stack in the environment.
    #[error("stack {stack} has no rollout in environment {env}: deploy it first, or check `berth status`")]
    NoRollout { stack: String, env: String },
    /// The rollout is finished (or halted), so there is nothing to pause, promote or abort.
    #[error("the rollout of {stack} in {env} to release {to} is {state}: `berth rollout {command}` applies only while it progresses")]
    NotProgressing {
        stack: String,
        env: String,
        to: u64,
        state: String,
        command: &'static str,
    },
    /// The command means nothing for the services' strategies (pausing a rolling rollout).
    #[error("no service of {stack} in {env} can `{command}` now: {why}")]
    NotApplicable {
        stack: String,
        env: String,
        command: &'static str,
        why: String,
    },
    /// The controller kept rewriting the record under the command.
    #[error("the rollout of {stack} in {env} kept changing: try again")]
    KeptChanging { stack: String, env: String },
    /// The store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Applies `command` to every service state of `record` it means something for, at `now`.
/// Pure. Returns what changed, one line per service, or why nothing could.
pub fn apply_command(
    record: &mut RolloutRecord,
    command: Command,
    who: &str,
    now: u64,
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut why = Vec::new();
    for (name, state) in record.services.iter_mut() {
        if state.phase().is_terminal() {
            continue;
        }
        let line = match (state, command) {
            (ServiceRollout::Canary(c), Command::Pause) => {
                c.pause(&format!("paused by {who}"));
                Some(format!("{name}: paused at step {}", c.step + 1))
            }
            (ServiceRollout::Canary(c), Command::Resume) => {
                c.resume(now);
                Some(format!("{name}: resumed at step {}", c.step + 1))
            }
            (ServiceRollout::Canary(c), Command::Promote { full }) => {
                c.promote(full, now);
                Some(format!("{name}: promoted to step {}", c.step + 1))
            }
            (ServiceRollout::Canary(c), Command::Abort) => {
                c.abort(&format!("aborted by {who} at step {}", c.step + 1));
                Some(format!("{name}: aborted"))
            }
            (ServiceRollout::BlueGreen(b), Command::Promote { .. }) => {
                b.promote();
                Some(format!("{name}: switching"))
            }
            (ServiceRollout::BlueGreen(b), Command::Abort) => {
                let when = if b.switched_ms.is_some() {
                    "after the switch"
                } else {
                    "before the switch"
                };
                b.abort(&format!("aborted by {who} {when}"));
                Some(format!("{name}: switching back"))
            }
            (ServiceRollout::Rolling(r), Command::Abort) => {
                r.vetoed = true;
                r.phase = StepPhase::Failed {
                    reason: format!("aborted by {who}"),
                };
                Some(format!("{name}: aborted"))
            }
            (s, c) => {
                why.push(format!(
                    "{name} is a {} rollout, which cannot {}",
                    s.strategy_name(),
                    c.name()
                ));
                None
            }
        };
        done.extend(line);
    }
    if done.is_empty() {
        if why.is_empty() {
            why.push("no service is rolling out in the current wave yet".to_string());
        }
        return Err(why.join("; "));
    }
    Ok(done)
}

/// `berth rollout pause|resume|promote|abort`: edits the stored record and kicks the controller.
pub async fn command(
    shared: &Shared,
    stack: &str,
    env: &str,
    command: Command,
    who: &str,
) -> Result<Vec<String>, RolloutError> {
    for _ in 0..5 {
        let revision = shared.store.revision().await.map_err(StateError::from)?;
        shared.view.caught_up(revision).await;
        let stored: Versioned<RolloutRecord> = {
            let view = shared.view.read();
            view.rollout(stack, env)
                .cloned()
                .ok_or_else(|| RolloutError::NoRollout {
                    stack: stack.to_string(),
                    env: env.to_string(),
                })?
        };
        if stored.value.phase != Phase::Progressing || stored.value.halted.is_some() {
            return Err(RolloutError::NotProgressing {
                stack: stack.to_string(),
                env: env.to_string(),
                to: stored.value.to,
                state: stored
                    .value
                    .halted
                    .clone()
                    .unwrap_or_else(|| stored.value.describe()),
                command: command.name(),
            });
        }
        let mut record = stored.value.clone();
        let now = shared.clock.now_ms();
        let done = apply_command(&mut record, command, who, now).map_err(|why| {
            RolloutError::NotApplicable {
                stack: stack.to_string(),
                env: env.to_string(),
                command: command.name(),
                why,
            }
        })?;
        let key = keys::rollout(stack, env);
        let txn = berth_store::Txn {
            compares: vec![berth_store::Compare::mod_revision(
                &key,
                stored.mod_revision,
            )],
            success: vec![berth_store::Op::put(&key, encode(&record))],
            failure: vec![],
        };
        let resp = shared.store.txn(txn).await.map_err(StateError::from)?;
        if resp.succeeded {
            shared.view.caught_up(resp.revision).await;
            shared.kick.notify_one();
            tracing::info!(%stack, %env, command = command.name(), %who, "rollout command");
            return Ok(done);
        }
    }
    Err(RolloutError::KeptChanging {
        stack: stack.to_string(),
        env: env.to_string(),
    })
}

/// What a command changed, one line per service (the answer of
/// `POST /v1/stacks/S/E/rollout/COMMAND`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResponse {
    pub changed: Vec<String>,
}

/// One service's rollout as `berth rollout status` and `explain` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    /// `rolling`, `canary` or `blue_green`.
    pub strategy: String,
    /// `progressing`, `succeeded`, `failed: …`.
    pub phase: String,
    /// A canary's current step (1-based; `steps + 1` is the way to 100 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// A canary's steps, in basis points.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<u32>,
    /// Basis points per release now (empty: every endpoint alike).
    pub weights: std::collections::BTreeMap<u64, u32>,
    /// Why it waits for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// Until the step's bake (a canary) or the switch / the old release's stop (blue/green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_left_ms: Option<u64>,
    /// What became of each finished step (explain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reports: Vec<StepReport>,
    /// The current step's analysis on the counters so far (explain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Analysis>,
}

/// A stack's rollout as `berth rollout status|explain` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub stack: String,
    pub env: String,
    pub from: Option<u64>,
    pub to: u64,
    /// `berth status`'s words for the rollout.
    pub state: String,
    /// Why it stopped where it is (`waves.on_failure: halt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// Each region wave: `done`, `rolling out`, `baking`, `waiting`, `halted`, or `reverted`
    /// (the wave `waves.on_failure: revert_wave` returned to the previous release).
    pub waves: Vec<(String, String)>,
    pub services: Vec<ServiceStatus>,
}

/// `berth rollout status|explain`: the stored record, with each canary's current analysis
/// computed from `traffic` (nothing is written).
pub fn status(
    view: &crate::view::View,
    traffic: &dyn crate::controllers::TrafficSource,
    stack: &str,
    env: &str,
    now: u64,
) -> Result<RolloutStatus, RolloutError> {
    let stored = view
        .rollout(stack, env)
        .ok_or_else(|| RolloutError::NoRollout {
            stack: stack.to_string(),
            env: env.to_string(),
        })?;
    let r = &stored.value;
    let regions: Vec<String> = view
        .release(stack, env, r.to)
        .map(|rel| rel.value.spec.regions().to_vec())
        .unwrap_or_default();
    let waves = regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let state = if r.phase == Phase::Succeeded || i < r.wave {
                "done"
            } else if i == r.wave && r.halted.is_some() && r.revert_wave {
                "reverted"
            } else if i == r.wave && r.halted.is_some() {
                "halted"
            } else if i == r.wave && r.wave_done_ms.is_some() {
                "baking"
            } else if i == r.wave && r.phase == Phase::Progressing {
                "rolling out"
            } else {
                "waiting"
            };
            (region.clone(), state.to_string())
        })
        .collect();
    let mut services = Vec::new();
    for (name, state) in &r.services {
        let new_healthy = view
            .instances_of(stack, env)
            .filter(|i| {
                i.value.spec.service == *name
                    && i.value.spec.release == r.to
                    && i.value.desired == crate::state::Desired::Run
                    && i.value.state() == berth_api::InstanceState::Healthy
            })
            .count();
        let traffic_now = crate::controllers::rollout::service_traffic(r, name, new_healthy as u32);
        let weights = match traffic_now {
            Traffic::Equal => Default::default(),
            Traffic::PerRelease(m) => m,
        };
        let mut s = ServiceStatus {
            service: name.clone(),
            strategy: state.strategy_name().to_string(),
            phase: state.phase().to_string(),
            step: None,
            steps: Vec::new(),
            weights,
            paused: None,
            time_left_ms: None,
            reports: Vec::new(),
            current: None,
        };
        match state {
            ServiceRollout::Canary(c) => {
                s.step = Some(c.step + 1);
                s.steps = c.steps.clone();
                s.paused = c.paused.clone();
                s.reports = c.reports.clone();
                if let Some(since) = c.step_started_ms {
                    s.time_left_ms = Some(since.saturating_add(c.bake_ms).saturating_sub(now));
                    if c.step < c.steps.len() {
                        let new = traffic.window(stack, name, c.to_release, since, now);
                        let stable = traffic.window(stack, name, c.from_release, since, now);
                        s.current = Some(analyse(new, stable, c.min_requests));
                    }
                }
            }
            ServiceRollout::BlueGreen(b) => {
                s.time_left_ms = match (b.switched_ms, b.ready_ms) {
                    (Some(at), _) => {
                        Some(at.saturating_add(b.keep_previous_ms).saturating_sub(now))
                    }
                    (None, Some(at)) if b.auto_promote => {
                        Some(at.saturating_add(b.bake_ms).saturating_sub(now))
                    }
                    _ => None,
                };
                if b.ready_ms.is_some() && !b.auto_promote && b.switched_ms.is_none() {
                    s.paused = Some("ready: waiting for `berth rollout promote`".to_string());
                }
            }
            ServiceRollout::Rolling(_) => {}
        }
        services.push(s);
    }
    Ok(RolloutStatus {
        stack: stack.to_string(),
        env: env.to_string(),
        from: r.from,
        to: r.to,
        state: r.describe(),
        halted: r.halted.clone(),
        waves,
        services,
    })
}
