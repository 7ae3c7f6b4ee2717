//! The controllers: one per concern, each a pure function of the cluster [`View`], the
//! [`Facts`] that are not in the store, and the clock, returning [`Effect`]s. This module is the
//! shell around them: the run loop, and the one place their effects reach the store.
//!
//! ## The controllers
//! - [`rollout`] — a progressing rollout: region waves, services in dependency order, each
//!   service through its strategy's state machine; a failure rolls back automatically (only to a
//!   release that once went live) and the releases' statuses follow.
//! - [`replicas`] — a finished rollout: keep each service's count, replace lost and failed
//!   instances, stop surplus and what the release no longer has; a failed rollout keeps none.
//! - [`drain`] — drained instances are stopped once the routers let go (or a deadline passed);
//!   stopped instances on nodes that are gone are forgotten.
//! - [`liveness`] — node liveness: marks a node that went down (and clears the mark when it
//!   returns), with its own shell on a one-second tick; no store write per heartbeat.
//!
//! A new controller is a new file here with a `decide(view, facts, now, …) -> effects`
//! function, called from [`decide`]; it never writes to the store itself.
//!
//! ## One pass
//! Read the live view (a read guard, dropped before any `.await`), run every controller, apply
//! the effects, then wait until the view has caught up with what was written, so the next pass
//! never decides again from a view that predates its own writes.
//!
//! ## Applying a pass: one transaction, split on conflict
//! Every effect carries the `mod_revision` of the record it was decided from, and becomes a
//! compare plus an op. The effects are grouped in [`Batch`]es: what must happen together (one
//! rollout's instance changes, its record and its releases' statuses), or a single drain step.
//! The pass is first tried as **one** store transaction, fenced by [`crate::leadership`].
//!
//! At scale that transaction may keep failing: heartbeats rewrite an instance's record whenever
//! its status changes (100,000 instances starting at once are 100,000 such writes, spread over
//! the seconds the controllers work in), and one changed record among the thousands a pass
//! compares fails it all. So on a conflict the shell **splits**: each batch is tried alone, and only the
//! batches whose own records changed are dropped (the next pass decides them again from the
//! newer view). A batch compares only what its decision read — the instances it rewrites, the
//! rollout record, the releases whose status it sets — and its size is bounded by
//! [`CREATE_BUDGET`] creations (and drain by as many writes per pass), so a pass is bounded work
//! however large a stack is, and one busy stack cannot starve the others. Without contention a
//! pass costs one transaction (one fsync); with it, one per batch, as before the split.
//!
//! A rollout's batch writes its rollout record last and always compares it: a pass that read a
//! view older than the previous pass's write of that rollout (or a view the follower had
//! applied only part of a transaction to) fails on that compare instead of creating the same
//! instances twice.

pub mod drain;
pub mod liveness;
#[cfg(test)]
mod properties;
pub mod replicas;
pub mod rollout;
#[cfg(test)]
pub(crate) mod testing;
mod work;

use std::sync::Arc;
use std::time::Duration;

use berth_api::control::Release;
use berth_store::{Compare, Op, Txn};
use rand::RngCore;

use crate::keys;
use crate::state::{encode, InstanceRecord, RolloutRecord, StateError};
use crate::view::View;
use crate::{table, Shared};

/// How often the controllers look even when nothing woke them (deadlines, node liveness).
pub const TICK: Duration = Duration::from_millis(100);
/// The most instances one pass creates for one rollout: the per-pass work budget. A stack asking
/// for thousands of replicas gets them over several passes (a pass every [`TICK`] at least), and
/// every other stack gets its turn in each of those passes, so one large stack cannot starve the
/// cluster's other deploys, nor make one store transaction huge.
pub const CREATE_BUDGET: usize = 256;

/// The longest a pass waits for the view to show its own writes.
const CATCH_UP: Duration = Duration::from_secs(2);

/// What the controllers need to know that is not in the store: kept in memory by the server
/// (heartbeats, router acknowledgements, routers' traffic counters), filled by the shell, plain
/// functions in tests.
pub struct Facts<'a> {
    /// Whether a node has been heard from within the liveness TTL.
    pub node_up: &'a dyn Fn(&str) -> bool,
    /// Whether every live router has applied a table without this instance.
    pub released: &'a dyn Fn(&str) -> bool,
    /// The routers' counters, for canary analysis and wave gates.
    pub traffic: &'a dyn TrafficSource,
}

/// The routers' per-release counters, summed over every router: what canary analysis and
/// `waves.min_requests` read. A trait so a controller test builds the counts itself; the
/// server's in-memory aggregator of router reports implements it.
pub trait TrafficSource {
    /// The counters of `release` of `stack`'s `service` between `since_ms` and `now_ms`.
    fn window(
        &self,
        stack: &str,
        service: &str,
        release: u64,
        since_ms: u64,
        now_ms: u64,
    ) -> berth_rollout::analysis::ArmCounts;
}

/// The routers' counters as the server has them: the in-memory book of their traffic reports
/// ([`crate::traffic`]).
pub fn traffic_of(shared: &Shared) -> &dyn TrafficSource {
    &shared.traffic
}

impl TrafficSource for crate::traffic::Traffic {
    fn window(
        &self,
        stack: &str,
        service: &str,
        release: u64,
        since_ms: u64,
        now_ms: u64,
    ) -> berth_rollout::analysis::ArmCounts {
        let w = crate::traffic::Traffic::window(self, stack, service, release, since_ms, now_ms);
        berth_rollout::analysis::ArmCounts {
            requests: w.requests,
            errors_5xx: w.errors_5xx,
            p99_ms: w.p99_ms(),
        }
    }
}

/// No counters: a canary sees "insufficient data" (and pauses, never promotes) and a wave
/// with `min_requests` waits. What the shell uses until routers report their traffic.
pub struct NoTraffic;

impl TrafficSource for NoTraffic {
    fn window(
        &self,
        _stack: &str,
        _service: &str,
        _release: u64,
        _since_ms: u64,
        _now_ms: u64,
    ) -> berth_rollout::analysis::ArmCounts {
        berth_rollout::analysis::ArmCounts::default()
    }
}

/// One change a controller decided, with the `mod_revision` of the record it was decided from
/// (the shell's compare: a record changed since makes the change fail instead of being lost).
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A new instance record (compared absent).
    CreateInstance(InstanceRecord),
    /// An instance's `desired` changed: `record` is the whole record with the new value.
    SetDesired {
        record: InstanceRecord,
        from_revision: i64,
    },
    /// Forget an instance record.
    DeleteInstance { id: String, from_revision: i64 },
    /// A rollout's new state (`from_revision` 0: none was stored).
    PutRollout {
        record: RolloutRecord,
        from_revision: i64,
    },
    /// A release's status (and reason) changed: `release` is the whole record.
    SetReleaseStatus {
        release: Release,
        from_revision: i64,
    },
}

impl Effect {
    /// The store key it changes.
    pub fn key(&self) -> String {
        match self {
            Effect::CreateInstance(r) | Effect::SetDesired { record: r, .. } => {
                keys::instance(&r.spec.id)
            }
            Effect::DeleteInstance { id, .. } => keys::instance(id),
            Effect::PutRollout { record, .. } => keys::rollout(&record.stack, &record.env),
            Effect::SetReleaseStatus { release, .. } => {
                keys::release(&release.stack, &release.env, release.number)
            }
        }
    }

    /// What must still hold for it to apply.
    pub fn compare(&self) -> Compare {
        match self {
            Effect::CreateInstance(_) => Compare::absent(self.key()),
            Effect::SetDesired { from_revision, .. }
            | Effect::DeleteInstance { from_revision, .. }
            | Effect::PutRollout { from_revision, .. }
            | Effect::SetReleaseStatus { from_revision, .. } => {
                Compare::mod_revision(self.key(), *from_revision)
            }
        }
    }

    /// The write.
    pub fn op(&self) -> Op {
        match self {
            Effect::CreateInstance(r) | Effect::SetDesired { record: r, .. } => {
                Op::put(self.key(), encode(r))
            }
            Effect::DeleteInstance { .. } => Op::delete(self.key()),
            Effect::PutRollout { record, .. } => Op::put(self.key(), encode(record)),
            Effect::SetReleaseStatus { release, .. } => Op::put(self.key(), encode(release)),
        }
    }
}

/// Effects that apply together or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub effects: Vec<Effect>,
}

impl Batch {
    /// The batch as one transaction, with `fence` (leadership) compared first.
    pub fn txn(&self, fence: &[Compare]) -> Txn {
        let mut compares = fence.to_vec();
        compares.extend(self.effects.iter().map(Effect::compare));
        Txn {
            compares,
            success: self.effects.iter().map(Effect::op).collect(),
            failure: vec![],
        }
    }
}

/// The inputs of one pass besides the view.
#[derive(Clone, Copy)]
pub struct Pass<'a> {
    pub facts: &'a Facts<'a>,
    /// The clock, read once per pass.
    pub now: u64,
    /// Where the pass's randomness comes from (new instance ids, the scheduler's tie-breaks):
    /// random in the server, fixed in tests, so a pass is a function of its inputs.
    pub seed: u64,
}

/// Runs every controller once over `view`: one batch per rollout with something to do, then
/// one per drain step (never for an instance a rollout batch already rewrites, so no key is
/// written twice in a pass).
pub fn decide(view: &View, pass: Pass<'_>) -> Vec<Batch> {
    let mut batches: Vec<Batch> = Vec::new();
    for (i, rollout) in view.rollouts().values().enumerate() {
        let pass = Pass {
            seed: pass.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..pass
        };
        let batch = match rollout.value.phase {
            crate::state::RolloutPhase::Progressing => rollout::decide(view, pass, rollout),
            _ => replicas::decide(view, pass, rollout),
        };
        if let Some(batch) = batch {
            batches.push(batch);
        }
    }
    let touched: std::collections::HashSet<String> = batches
        .iter()
        .flat_map(|b| b.effects.iter().map(Effect::key))
        .collect();
    for effect in drain::decide(view, pass.facts, pass.now) {
        if !touched.contains(&effect.key()) {
            batches.push(Batch {
                effects: vec![effect],
            });
        }
    }
    batches
}

/// The shell's facts, from the server's memory.
fn facts_of(shared: &Shared, now: u64) -> (impl Fn(&str) -> bool + '_, impl Fn(&str) -> bool + '_) {
    (
        move |node: &str| table::node_is_up(shared, node, now),
        move |instance: &str| table::released_by_routers(shared, instance, now),
    )
}

/// Runs passes until `stop`, while leading: on every kick (a deploy, a heartbeat with news) and
/// every tick. `stop` is also checked between the batches of a split pass, so a shutdown never
/// waits for more than one batch's (budgeted) work.
pub async fn run_controller(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut leading = shared.leadership.leading();
    loop {
        if *stop.borrow() {
            return;
        }
        if !*leading.borrow() {
            tokio::select! {
                _ = stop.changed() => return,
                r = leading.changed() => if r.is_err() { return },
            }
            continue;
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

/// One pass of every controller (tests and tools; the server runs [`run_controller`]).
pub async fn reconcile_once(shared: &Shared) -> Result<(), StateError> {
    let (_never, stop) = tokio::sync::watch::channel(false);
    reconcile_until(shared, &stop).await
}

/// One pass: decide from the live view, apply, wait for the view to see the writes.
async fn reconcile_until(
    shared: &Shared,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), StateError> {
    let now = shared.clock.now_ms();
    let seed = rand::rngs::OsRng.next_u64();
    let batches = {
        let (node_up, released) = facts_of(shared, now);
        let facts = Facts {
            node_up: &node_up,
            released: &released,
            traffic: traffic_of(shared),
        };
        let view = shared.view.read();
        decide(
            &view,
            Pass {
                facts: &facts,
                now,
                seed,
            },
        )
    };
    // A pass is CPU work between store calls: let the API and the signal handler run.
    tokio::task::yield_now().await;
    apply(shared, &batches, stop).await
}

/// Writes a pass's batches: all in one transaction, or, when that meets a conflict, each batch
/// alone (see the module documentation). Every transaction carries the leadership fence.
async fn apply(
    shared: &Shared,
    batches: &[Batch],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), StateError> {
    if batches.is_empty() {
        return Ok(());
    }
    let fenced =
        |batch: &Batch| crate::leadership::fenced(shared.leadership.as_ref(), batch.txn(&[]));
    let all = Batch {
        effects: batches.iter().flat_map(|b| b.effects.clone()).collect(),
    };
    let resp = shared.store.txn(fenced(&all)).await?;
    let mut revision = resp.revision;
    if !resp.succeeded {
        if !shared.leadership.is_leading() {
            return Ok(());
        }
        tracing::debug!("a controller pass raced with another change; applying it batch by batch");
        for batch in batches {
            if *stop.borrow() {
                break;
            }
            let resp = shared.store.txn(fenced(batch)).await?;
            revision = revision.max(resp.revision);
            if !resp.succeeded {
                tracing::debug!(
                    "a controller batch raced with another change; the next pass decides again"
                );
            }
        }
    }
    // Bounded: a view that stopped following (it relists) must not stall the controllers; the
    // compares keep a pass from a stale view harmless anyway.
    let _ = tokio::time::timeout(CATCH_UP, shared.view.caught_up(revision)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{shop, World};
    use crate::leadership::Leadership;
    use crate::state::Desired;
    use berth_store::EmbeddedStore;

    /// A server's shared state on an embedded store in `dir`, its view followed until the
    /// returned sender is dropped or set.
    async fn shared(
        dir: &std::path::Path,
        leadership: Option<Arc<dyn Leadership>>,
    ) -> (Arc<Shared>, tokio::sync::watch::Sender<bool>) {
        let store = EmbeddedStore::open(dir.join("state.redb"))
            .await
            .expect("store");
        let mut shared = Shared::new(crate::ServerConfig {
            data_dir: dir.to_path_buf(),
            store: Arc::new(store),
            clock: crate::Clock::from_fn(|| 1_000_000),
            tls: None,
            secrets_key_file: None,
        })
        .await
        .expect("shared");
        if let Some(l) = leadership {
            Arc::get_mut(&mut shared)
                .expect("not shared yet")
                .leadership = l;
        }
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let s = shared.clone();
        tokio::spawn(async move { s.view.follow(s.store.as_ref(), stop).await });
        (shared, stop_tx)
    }

    /// The batches a world's first pass decides for a fresh deploy, with the world's records
    /// written to `shared`'s store first.
    async fn seeded(shared: &Shared) -> Vec<Batch> {
        let mut w = World::new();
        w.node("a", None);
        w.deploy(&shop(2, "local", "1"), 1, None, false);
        for (key, value) in w.records() {
            shared.store.put(&key, value).await.expect("put");
        }
        let rev = shared.store.revision().await.expect("revision");
        shared.view.caught_up(rev).await;
        let view = shared.view.read().clone();
        let node_up = |_: &str| true;
        let released = |_: &str| true;
        decide(
            &view,
            Pass {
                facts: &Facts {
                    node_up: &node_up,
                    released: &released,
                    traffic: &NoTraffic,
                },
                now: 1_000_000,
                seed: 1,
            },
        )
    }

    fn instances(shared: &Shared) -> usize {
        shared
            .view
            .read()
            .instances()
            .values()
            .filter(|r| r.value.desired == Desired::Run)
            .count()
    }

    #[tokio::test]
    async fn a_conflict_drops_only_the_batch_whose_records_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (shared, _stop) = shared(dir.path(), None).await;
        let mut batches = seeded(&shared).await;
        assert_eq!(batches.len(), 1);
        // A second batch decided from a record that has changed since.
        batches.push(Batch {
            effects: vec![Effect::DeleteInstance {
                id: "gone".into(),
                from_revision: 12_345,
            }],
        });
        let (_never, stop) = tokio::sync::watch::channel(false);
        apply(&shared, &batches, &stop).await.expect("apply");
        assert_eq!(instances(&shared), 2, "the good batch applied alone");
    }

    /// Leads when its sender says so; fenced on a key nobody wrote while it does not.
    struct Elected(tokio::sync::watch::Sender<bool>);

    impl Leadership for Elected {
        fn is_leading(&self) -> bool {
            *self.0.borrow()
        }
        fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
            self.0.subscribe()
        }
        fn fence(&self) -> Option<Compare> {
            (!self.is_leading()).then(|| Compare::value("/leader", b"someone else".to_vec()))
        }
    }

    #[tokio::test]
    async fn controllers_run_only_while_leading_and_their_writes_carry_the_fence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elected = tokio::sync::watch::channel(false).0;
        let (shared, _stop) = shared(dir.path(), Some(Arc::new(Elected(elected.clone())))).await;
        let batches = seeded(&shared).await;
        // A write made while not leading fails on the fence.
        let (_never, stop) = tokio::sync::watch::channel(false);
        apply(&shared, &batches, &stop).await.expect("apply");
        assert_eq!(instances(&shared), 0, "the fence held the write back");
        // The loop waits while not leading, kicks or not, and runs once elected.
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(run_controller(shared.clone(), stop));
        for _ in 0..10 {
            shared.kick.notify_one();
            tokio::task::yield_now().await;
        }
        assert_eq!(instances(&shared), 0, "a follower decided nothing");
        elected.send_replace(true);
        let deadline = crate::clock::tokio_now() + Duration::from_secs(10);
        while instances(&shared) < 2 {
            assert!(
                crate::clock::tokio_now() < deadline,
                "the leader never placed the instances"
            );
            let mut changed = shared.view.subscribe();
            let _ = tokio::time::timeout(TICK, changed.changed()).await;
        }
        stop_tx.send(true).expect("stop");
        run.await.expect("the loop ends");
    }
}
