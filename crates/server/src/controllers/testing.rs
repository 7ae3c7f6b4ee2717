//! Test support: a [`World`] — a [`View`] built from records in the test (through the same
//! watch events the live view applies), the facts the controllers read, and simulated agents —
//! in which controller passes are decided and their effects applied as the store would: a batch
//! only when all its compares hold. No HTTP, no store.

use std::collections::{BTreeMap, BTreeSet};

use berth_api::control::{NodeResources, RegisterRequest, Release, ReleaseStatus};
use berth_api::{InstanceState, InstanceStatus};
use berth_spec::model::DriverKind;
use berth_store::{CompareTarget, EventKind, KeyValue, Op, WatchEvent};

use super::{decide, Batch, Facts, Pass};
use crate::keys;
use crate::state::{encode, Desired, InstanceRecord, NodeRecord, RolloutRecord};
use crate::view::View;

/// A cluster in memory.
#[derive(Clone)]
pub(crate) struct World {
    pub view: View,
    /// Every key's mod_revision, for the compares.
    revs: BTreeMap<String, i64>,
    /// Nodes heard from.
    pub up: BTreeSet<String>,
    /// Whether the routers have let go of every drained instance.
    pub routers_released: bool,
    /// Releases whose instances the agents report `failed` (an image that cannot be pulled).
    pub failing: BTreeSet<u64>,
    /// (release, node): that release's instances fail on that node only (a region-specific
    /// fault).
    pub failing_on: BTreeSet<(u64, String)>,
    pub now: u64,
    /// What the routers report, per (service, release): requests per second and 5xx per mille
    /// (see [`Rates`]).
    pub traffic: Rates,
}

/// Routers' counters that grow with time: `rps` requests a second to each (service, release),
/// `per_mille` of them 5xx, p99 10 ms.
#[derive(Clone, Default)]
pub(crate) struct Rates(pub BTreeMap<(String, u64), (u64, u64)>);

impl super::TrafficSource for Rates {
    fn window(
        &self,
        _stack: &str,
        service: &str,
        release: u64,
        since_ms: u64,
        now_ms: u64,
    ) -> berth_rollout::analysis::ArmCounts {
        let (rps, per_mille) = self
            .0
            .get(&(service.to_string(), release))
            .copied()
            .unwrap_or((0, 0));
        let requests = rps * (now_ms.saturating_sub(since_ms) / 1000);
        berth_rollout::analysis::ArmCounts {
            requests,
            errors_5xx: requests * per_mille / 1000,
            p99_ms: (requests > 0).then_some(10),
        }
    }
}

impl World {
    pub fn new() -> World {
        World {
            view: View::default(),
            revs: BTreeMap::new(),
            up: BTreeSet::new(),
            routers_released: true,
            failing: BTreeSet::new(),
            failing_on: BTreeSet::new(),
            now: 1_000_000,
            traffic: Rates::default(),
        }
    }

    fn event(&mut self, kind: EventKind, key: &str, value: Vec<u8>) {
        let revision = self.view.revision + 1;
        self.event_at(revision, kind, key, value);
    }

    /// One event at `revision`: the ops of one transaction share their revision.
    fn event_at(&mut self, revision: i64, kind: EventKind, key: &str, value: Vec<u8>) {
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        };
        match kind {
            EventKind::Put => self.revs.insert(key.to_string(), revision),
            EventKind::Delete => self.revs.remove(key),
        };
        self.view
            .apply(&WatchEvent {
                revision,
                kind,
                kv,
                prev: None,
            })
            .expect("a record the view reads");
    }

    /// Writes one record.
    pub fn put(&mut self, key: &str, value: Vec<u8>) {
        self.event(EventKind::Put, key, value);
    }

    /// Deletes one record.
    pub fn delete(&mut self, key: &str) {
        self.event(EventKind::Delete, key, Vec::new());
    }

    /// A node with 4 cores and 8 GiB for processes, up, in `region` if given.
    pub fn node(&mut self, name: &str, region: Option<&str>) {
        let record = NodeRecord {
            registration: RegisterRequest {
                name: name.to_string(),
                labels: region
                    .map(|r| BTreeMap::from([("region".to_string(), r.to_string())]))
                    .unwrap_or_default(),
                resources: NodeResources {
                    cpu_millis: 4000,
                    memory_bytes: 8 << 30,
                },
                drivers: vec![DriverKind::Process],
                address: "127.0.0.1".to_string(),
                router: None,
                keep_labels: false,
            },
            registered_ms: 0,
            draining: false,
        };
        self.put(&keys::node(name), encode(&record));
        self.up.insert(name.to_string());
    }

    /// Marks a node drained (`berth drain`).
    pub fn drain_node(&mut self, name: &str) {
        if let Some(n) = self.view.node(name) {
            let mut record = n.value.clone();
            record.draining = true;
            self.put(&keys::node(name), encode(&record));
        }
    }

    /// Stores release `number` of `yaml` (environment `prod`) and a rollout to it from
    /// `from`, as a deploy does. `rollback` makes it a rollback (surge 100%).
    pub fn deploy(&mut self, yaml: &str, number: u64, from: Option<u64>, rollback: bool) {
        let spec = berth_spec::render(yaml.as_bytes(), "prod", &[]).expect("a valid stack");
        self.deploy_spec(spec, number, from, rollback);
    }

    /// [`World::deploy`] of an already rendered stack.
    pub fn deploy_spec(
        &mut self,
        spec: berth_spec::model::Stack,
        number: u64,
        from: Option<u64>,
        rollback: bool,
    ) {
        let release = Release {
            number,
            stack: spec.stack.clone(),
            env: "prod".to_string(),
            created_ms: self.now,
            who: "test".to_string(),
            status: ReleaseStatus::RollingOut,
            summary: String::new(),
            plan_id: String::new(),
            rollback_of: None,
            reason: None,
            vetoed: false,
            approved_by: Vec::new(),
            spec,
            images: BTreeMap::new(),
            secrets: BTreeMap::new(),
        };
        let key = keys::release(&release.stack, &release.env, number);
        let mut record = RolloutRecord::new(&release.stack, &release.env, from, number, self.now);
        record.rollback = rollback;
        self.put(&key, encode(&release));
        self.put(&keys::rollout(&record.stack, &record.env), encode(&record));
    }

    /// One pass of every controller over the view.
    pub fn decide(&self, seed: u64) -> Vec<Batch> {
        let up = self.up.clone();
        let node_up = move |n: &str| up.contains(n);
        let released = self.routers_released;
        let released = move |_: &str| released;
        let facts = Facts {
            node_up: &node_up,
            released: &released,
            traffic: &self.traffic,
        };
        decide(
            &self.view,
            Pass {
                facts: &facts,
                now: self.now,
                seed,
            },
        )
    }

    /// Applies each batch whose compares all hold, as one store transaction would; returns how
    /// many applied.
    pub fn apply(&mut self, batches: &[Batch]) -> usize {
        let mut applied = 0;
        for batch in batches {
            let txn = batch.txn(&[]);
            let holds = txn.compares.iter().all(|c| {
                let rev = self.revs.get(&c.key).copied().unwrap_or(0);
                matches!(c.target, CompareTarget::ModRevision(r) if r == rev)
            });
            if !holds {
                continue;
            }
            applied += 1;
            // One revision for the whole transaction, as the store's watch reports it.
            let revision = self.view.revision + 1;
            for op in txn.success {
                match op {
                    Op::Put { key, value } => self.event_at(revision, EventKind::Put, &key, value),
                    Op::Delete { key } => {
                        self.event_at(revision, EventKind::Delete, &key, Vec::new())
                    }
                    other => panic!("controllers do not write {other:?}"),
                }
            }
        }
        applied
    }

    /// Decides and applies one pass; returns the batches it decided.
    pub fn pass(&mut self, seed: u64) -> Vec<Batch> {
        let batches = self.decide(seed);
        self.apply(&batches);
        batches
    }

    /// The agents: on every node that is up, an instance to run reports healthy (or failed,
    /// for a failing release), and a stopped one is confirmed and its record deleted.
    pub fn agents(&mut self) {
        let mut puts = Vec::new();
        let mut deletes = Vec::new();
        for r in self.view.instances().values() {
            let v = &r.value;
            if !self.up.contains(&v.spec.node) {
                continue;
            }
            match v.desired {
                Desired::Stop => deletes.push(keys::instance(&v.spec.id)),
                // An agent that gave up on an instance does not take it back.
                Desired::Run if v.state() == InstanceState::Failed => {}
                Desired::Run => {
                    let state = if self.failing.contains(&v.spec.release)
                        || self
                            .failing_on
                            .contains(&(v.spec.release, v.spec.node.clone()))
                    {
                        InstanceState::Failed
                    } else {
                        InstanceState::Healthy
                    };
                    if v.state() != state {
                        let mut next = v.clone();
                        next.status = Some(status(&v.spec.id, state, self.now));
                        puts.push(next);
                    }
                }
                Desired::Drain => {}
            }
        }
        for r in puts {
            self.put(&keys::instance(&r.spec.id), encode(&r));
        }
        for key in deletes {
            self.delete(&key);
        }
    }

    /// The instances of a service that are to run.
    pub fn running(&self, service: &str) -> Vec<&InstanceRecord> {
        self.view
            .instances()
            .values()
            .map(|r| &r.value)
            .filter(|r| r.spec.service == service && r.desired == Desired::Run)
            .collect()
    }

    /// The rollout record of stack `shop`.
    pub fn rollout(&self) -> &RolloutRecord {
        &self.view.rollout("shop", "prod").expect("a rollout").value
    }
}

/// An agent's report.
pub(crate) fn status(id: &str, state: InstanceState, now: u64) -> InstanceStatus {
    InstanceStatus {
        id: id.to_string(),
        state,
        pid: None,
        ports: BTreeMap::new(),
        restarts: 0,
        message: None,
        since_ms: now,
        image_id: None,
    }
}

/// A stack `shop` with one service `web` of `replicas` instances, in `regions`.
pub(crate) fn shop(replicas: u32, regions: &str, tag: &str) -> String {
    format!(
        r#"stack: shop
environments:
  prod:
    regions: [{regions}]
services:
  web:
    process: {{command: [sleep, "{tag}"]}}
    replicas: {replicas}
    resources: {{ cpu: 100m, memory: 64Mi }}
    rollout: {{ progress_deadline: 1m }}
"#
    )
}

impl World {
    /// Passes, agents reporting and a second of time, until a pass decides nothing (at most
    /// `rounds`); returns how many rounds it took.
    pub fn settle(&mut self, rounds: usize) -> usize {
        for round in 0..rounds {
            let decided = self.pass(round as u64);
            self.agents();
            self.now += 1_000;
            if decided.is_empty() && self.decide(round as u64 + 1).is_empty() {
                return round;
            }
        }
        panic!("no fixed point after {rounds} rounds: {:?}", self.rollout());
    }
}

impl World {
    /// Every record as a store key and value, to seed a real store with the same world.
    pub fn records(&self) -> Vec<(String, Vec<u8>)> {
        let v = &self.view;
        let mut out = Vec::new();
        for n in v.nodes().values() {
            out.push((keys::node(&n.value.registration.name), encode(&n.value)));
        }
        for r in v.all_releases() {
            let key = keys::release(&r.value.stack, &r.value.env, r.value.number);
            out.push((key, encode(&r.value)));
        }
        for r in v.rollouts().values() {
            out.push((
                keys::rollout(&r.value.stack, &r.value.env),
                encode(&r.value),
            ));
        }
        for r in v.instances().values() {
            out.push((keys::instance(&r.value.spec.id), encode(&r.value)));
        }
        out
    }
}
