//! What the rollout and replicas controllers decide for one rollout in one pass, collected as
//! [`Effect`]s: instance changes and creations, with the placement of new instances (one
//! scheduler call per rollout and region, within [`CREATE_BUDGET`]).

use std::collections::{BTreeMap, HashSet};

use berth_api::control::Release;
use berth_api::InstanceSpec;
use berth_spec::model::{Service, Stack};

use super::{Effect, Pass, CREATE_BUDGET};
use crate::placement;
use crate::state::{Desired, InstanceRecord, RolloutRecord, Versioned};
use crate::view::View;

/// The decisions of one pass over one rollout.
pub(crate) struct Work<'a> {
    pub view: &'a View,
    pub pass: Pass<'a>,
    /// The target release: its spec, image pins and secret versions.
    pub release: &'a Release,
    /// Instance effects so far.
    pub effects: Vec<Effect>,
    /// Instances whose record this pass already rewrites.
    touched: HashSet<String>,
    /// The records this pass wrote (changed or new): they hold their nodes for placement.
    pending: Vec<InstanceRecord>,
    /// Instances created so far in this pass (at most [`CREATE_BUDGET`]).
    created: usize,
    /// New instances asked for in the region being reconciled, placed together by
    /// [`Work::place_wanted`].
    wanted: Vec<Wanted>,
    /// Why instances of a service could not be placed in this pass, for `berth status`.
    pub unplaced: BTreeMap<String, String>,
}

/// New instances of one service asked for in one pass, with the secret values they start with.
struct Wanted {
    name: String,
    service: Service,
    count: u32,
    secret_env: BTreeMap<String, String>,
    secret_versions: BTreeMap<String, u64>,
}

impl<'a> Work<'a> {
    pub fn new(view: &'a View, pass: Pass<'a>, release: &'a Release) -> Self {
        Work {
            view,
            pass,
            release,
            effects: Vec::new(),
            touched: HashSet::new(),
            pending: Vec::new(),
            created: 0,
            wanted: Vec::new(),
            unplaced: BTreeMap::new(),
        }
    }

    /// Forgets everything decided so far (a failed rollout undoes its pass).
    pub fn reset(&mut self) {
        self.effects.clear();
        self.touched.clear();
        self.pending.clear();
        self.wanted.clear();
    }

    /// The target's rendered stack.
    pub fn target(&self) -> &'a Stack {
        &self.release.spec
    }

    /// Whether an instance runs `service` as the target release wants it.
    pub fn runs(&self, r: &InstanceRecord, service: &Service) -> bool {
        r.runs(service, &self.release.secrets)
    }

    /// Instances of one service of this rollout's stack in one region that are not being stopped.
    pub fn instances(
        &self,
        record: &RolloutRecord,
        service: &str,
        region: &str,
    ) -> Vec<&'a Versioned<InstanceRecord>> {
        let view: &'a View = self.view;
        view.instances_of(&record.stack, &record.env)
            .filter(|r| {
                let v = &r.value;
                v.region == region && v.spec.service == service && v.desired != Desired::Stop
            })
            .collect()
    }

    /// Whether `berth drain` was run on the node.
    pub fn node_draining(&self, node: &str) -> bool {
        self.view.node(node).is_some_and(|n| n.value.draining)
    }

    /// Whether the node is heard from.
    pub fn node_up(&self, node: &str) -> bool {
        (self.pass.facts.node_up)(node)
    }

    /// Stops instances of services the target no longer has (in one region, or all).
    pub fn stop_unknown(&mut self, record: &RolloutRecord, region: Option<&str>) {
        let target = self.target();
        let regions: std::collections::BTreeSet<&str> =
            target.regions().iter().map(String::as_str).collect();
        let view: &'a View = self.view;
        let doomed: Vec<&'a Versioned<InstanceRecord>> = view
            .instances_of(&record.stack, &record.env)
            .filter(|r| r.value.desired == Desired::Run)
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

    /// Stops every instance of the rollout's stack and environment.
    pub fn stop_all(&mut self, record: &RolloutRecord) {
        let view: &'a View = self.view;
        let doomed: Vec<&'a Versioned<InstanceRecord>> = view
            .instances_of(&record.stack, &record.env)
            .filter(|r| r.value.desired == Desired::Run)
            .collect();
        for r in doomed {
            self.set_desired(r, Desired::Drain);
        }
    }

    /// Sets an instance's `desired` (once per instance and pass).
    pub fn set_desired(&mut self, rec: &Versioned<InstanceRecord>, desired: Desired) {
        // A set, not a scan of the effects: a stack may have thousands.
        if rec.value.desired == desired || !self.touched.insert(rec.value.spec.id.clone()) {
            return;
        }
        let mut next = rec.value.clone();
        next.desired = desired;
        next.desired_since_ms = Some(self.pass.now);
        self.pending.push(next.clone());
        self.effects.push(Effect::SetDesired {
            record: next,
            from_revision: rec.mod_revision,
        });
    }

    /// Asks for `count` more instances of `service` in the region being reconciled; they are
    /// placed, all services of the region together, by [`Work::place_wanted`]. A service whose
    /// secret was deleted since the deploy gets none, and `berth status` says why.
    pub fn want(&mut self, record: &RolloutRecord, name: &str, service: &Service, count: u32) {
        if count == 0 {
            return;
        }
        // The current values of the service's secrets (the deploy checked they were set).
        let values = self.view.secrets_of(&record.stack);
        let mut secret_env = BTreeMap::new();
        let mut secret_versions = BTreeMap::new();
        for secret in &service.secrets {
            match values.get(secret) {
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

    /// Places what [`Work::want`] collected for `region` with one scheduler call, within what is
    /// left of the pass's [`CREATE_BUDGET`], and records the new instances. Without a feasible
    /// node nothing is created for a service; the rollout then waits and, past its progress
    /// deadline, fails with the reason. What the budget held back is asked for again next pass.
    pub fn place_wanted(&mut self, record: &RolloutRecord, region: &str) {
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
        let wants: Vec<placement::Want<'_>> = wanted
            .iter()
            .map(|w| placement::Want {
                name: &w.name,
                service: &w.service,
                count: w.count,
            })
            .collect();
        let nodes = self.region_nodes(region);
        // Instances this pass already decided (an earlier region) hold their nodes too.
        let existing = placement::existing_of(
            self.view.instances().values().map(|v| &v.value),
            &self.pending,
        );
        let placed = placement::place_many(
            &nodes,
            &existing,
            &record.stack,
            &record.env,
            region,
            &wants,
            self.pass.seed ^ self.created as u64,
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

    /// The scheduler's nodes of a region: ready when up and not draining.
    pub fn region_nodes(&self, region: &str) -> Vec<berth_scheduler::Node> {
        let node_up = self.pass.facts.node_up;
        placement::region_nodes(
            self.view.nodes().values().map(|n| &n.value),
            region,
            &|n| !n.draining && node_up(&n.registration.name),
        )
    }

    /// A new instance id: `STACK-SERVICE-RELEASE-xxxxxxxx`, the suffix from the pass's seed.
    fn new_id(&self, record: &RolloutRecord, name: &str) -> String {
        let n = mix(self.pass.seed ^ mix(self.created as u64 + 1));
        format!("{}-{name}-{}-{:08x}", record.stack, record.to, n as u32)
    }

    /// Records a new instance of `w` on `node`.
    fn create(&mut self, record: &RolloutRecord, w: &Wanted, region: &str, node: String) {
        let name = w.name.as_str();
        let service = &w.service;
        let mut id = self.new_id(record, name);
        while self.view.instance(&id).is_some() || self.touched.contains(&id) {
            self.created += 1;
            id = self.new_id(record, name);
        }
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
                    .and_then(|_| self.release.images.get(name).cloned()),
                secret_env: w.secret_env.clone(),
            },
            env: record.env.clone(),
            region: region.to_string(),
            desired: Desired::Run,
            created_ms: self.pass.now,
            desired_since_ms: None,
            status: None,
            secret_versions: w.secret_versions.clone(),
        };
        self.created += 1;
        self.touched.insert(id);
        self.pending.push(rec.clone());
        self.effects.push(Effect::CreateInstance(rec));
    }
}

/// SplitMix64's finaliser: spreads a counter over 64 bits (instance id suffixes).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
