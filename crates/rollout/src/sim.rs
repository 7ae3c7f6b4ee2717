//! A tiny deterministic world that carries out decisions, for tests and replays.
//!
//! It plays the shell, the scheduler and the agents at once, in discrete ticks: [`World::apply`]
//! does what a [`Decision`] asks (instances to stop start draining at once; missing new
//! instances are created Pending), and [`World::tick`] moves every instance one step along its
//! life. How each started instance ends is scripted by a [`Fate`], so a test (or a proptest
//! strategy) decides health delays and failures, and the same script always gives the same
//! history. No randomness, no clock: the caller owns both.
//!
//! Instance ids are `i-0000`, `i-0001`, … in creation order, so "by id" means "oldest first".

use crate::observe::{Observed, ObservedState};
use crate::rolling::{step, Decision, RolloutState};

/// How a started instance's life goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Becomes Healthy after `after` extra ticks in Starting, and stays so.
    Healthy {
        /// Ticks spent Starting beyond the first.
        after: u32,
    },
    /// Fails for good after `after` extra ticks in Starting (a bad image, a missing secret).
    Fails {
        /// Ticks spent Starting beyond the first.
        after: u32,
    },
    /// Turns Unhealthy after `after` extra ticks in Starting, is restarted by its agent, and
    /// does the same again, forever: a crash loop.
    CrashLoops {
        /// Ticks spent Starting beyond the first, each time.
        after: u32,
    },
}

#[derive(Debug, Clone)]
struct SimInstance {
    id: String,
    release: u64,
    state: ObservedState,
    restarts: u32,
    fate: Fate,
    age: u32,
    drain_left: u32,
}

/// The simulated instances of one service in one region.
#[derive(Debug, Clone)]
pub struct World {
    instances: Vec<SimInstance>,
    fates: Vec<Fate>,
    started: usize,
    drain_ticks: u32,
}

impl World {
    /// An empty world. Started instances take their fates from `fates` in turn (cycling; all
    /// `Healthy { after: 1 }` if empty); a drained instance is Stopped after `drain_ticks`
    /// further ticks (0: on the next tick).
    pub fn new(drain_ticks: u32, fates: Vec<Fate>) -> Self {
        World {
            instances: Vec::new(),
            fates,
            started: 0,
            drain_ticks,
        }
    }

    /// Adds an instance that already exists (e.g. the old release, Healthy) and returns its id.
    /// It is not restarted by the world if made Unhealthy later.
    pub fn spawn(&mut self, release: u64, state: ObservedState) -> String {
        let id = format!("i-{:04}", self.instances.len());
        self.instances.push(SimInstance {
            id: id.clone(),
            release,
            state,
            restarts: 0,
            fate: Fate::Healthy { after: 0 },
            age: 0,
            drain_left: self.drain_ticks,
        });
        id
    }

    /// Forces an instance into a state (an outside event: a node dies, a health check flaps).
    /// Returns whether the instance exists.
    pub fn set_state(&mut self, id: &str, state: ObservedState) -> bool {
        match self.instances.iter_mut().find(|i| i.id == id) {
            Some(i) => {
                i.state = state;
                if state == ObservedState::Draining {
                    i.drain_left = self.drain_ticks;
                }
                true
            }
            None => false,
        }
    }

    /// Every instance, as the rollout would observe it, in id order.
    pub fn observe(&self) -> Vec<Observed> {
        self.instances
            .iter()
            .map(|i| Observed {
                instance: i.id.clone(),
                release: i.release,
                state: i.state,
                restarts: i.restarts,
            })
            .collect()
    }

    /// Carries out a decision as the shell would: each live instance in `stop` starts draining
    /// (so it leaves the routers at once), then new Pending instances of `to_release` are
    /// created until `new_target` live ones exist. Idempotent, like the shell must be.
    pub fn apply(&mut self, to_release: u64, decision: &Decision) {
        for i in &mut self.instances {
            if i.state.is_live() && decision.stop.contains(&i.id) {
                i.state = ObservedState::Draining;
                i.drain_left = self.drain_ticks;
            }
        }
        let live_new = self
            .instances
            .iter()
            .filter(|i| i.release == to_release && i.state.is_live())
            .count();
        let target = usize::try_from(decision.new_target).unwrap_or(usize::MAX);
        for _ in live_new..target {
            let fate = match self.fates.len() {
                0 => Fate::Healthy { after: 1 },
                n => self.fates[self.started % n],
            };
            self.started += 1;
            let id = format!("i-{:04}", self.instances.len());
            self.instances.push(SimInstance {
                id,
                release: to_release,
                state: ObservedState::Pending,
                restarts: 0,
                fate,
                age: 0,
                drain_left: self.drain_ticks,
            });
        }
    }

    /// Moves every instance one step: Pending → Starting → its fate; a crash-looping Unhealthy
    /// instance is restarted; a draining one counts down to Stopped.
    pub fn tick(&mut self) {
        for i in &mut self.instances {
            match i.state {
                ObservedState::Pending => {
                    i.state = ObservedState::Starting;
                    i.age = 0;
                }
                ObservedState::Starting => {
                    let (after, outcome) = match i.fate {
                        Fate::Healthy { after } => (after, ObservedState::Healthy),
                        Fate::Fails { after } => (after, ObservedState::Failed),
                        Fate::CrashLoops { after } => (after, ObservedState::Unhealthy),
                    };
                    if i.age >= after {
                        i.state = outcome;
                    } else {
                        i.age += 1;
                    }
                }
                ObservedState::Unhealthy => {
                    if matches!(i.fate, Fate::CrashLoops { .. }) {
                        i.restarts = i.restarts.saturating_add(1);
                        i.state = ObservedState::Starting;
                        i.age = 0;
                    }
                }
                ObservedState::Draining => {
                    if i.drain_left == 0 {
                        i.state = ObservedState::Stopped;
                    } else {
                        i.drain_left -= 1;
                    }
                }
                ObservedState::Healthy | ObservedState::Failed | ObservedState::Stopped => {}
            }
        }
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct Run {
    /// The rollout's state after the last step.
    pub state: RolloutState,
    /// Every decision, in order (one per step).
    pub decisions: Vec<Decision>,
    /// The clock at the last step.
    pub now_ms: u64,
}

/// Drives a rollout to its end (or `max_steps`): observe, [`step`], apply, tick, advance the
/// clock by `tick_ms`. Stops right after the step that reaches a terminal phase.
pub fn run(
    state: RolloutState,
    world: &mut World,
    start_ms: u64,
    tick_ms: u64,
    max_steps: usize,
) -> Run {
    let mut state = state;
    let mut now_ms = start_ms;
    let mut decisions = Vec::new();
    for n in 0..max_steps {
        if n > 0 {
            world.tick();
            now_ms = now_ms.saturating_add(tick_ms);
        }
        let (next, decision) = step(&state, &world.observe(), now_ms);
        world.apply(next.to_release, &decision);
        state = next;
        let done = decision.phase.is_terminal();
        decisions.push(decision);
        if done {
            break;
        }
    }
    Run {
        state,
        decisions,
        now_ms,
    }
}
