//! What the rollout and replicas controllers decide for one rollout in one pass, collected as
//! [`Effect`]s: instance changes and creations. New instances and the stops of lost, misplaced
//! and surplus ones come from one scheduler call per rollout and region with the whole demand
//! ([`Work::schedule_region`]), within [`CREATE_BUDGET`].

use std::collections::{BTreeMap, HashSet};

use berth_api::control::Release;
use berth_api::InstanceSpec;
use berth_scheduler::{Demand, SchedulerConfig, StopReason};
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
    /// Why instances of a service could not be placed in this pass, for `berth status`.
    pub unplaced: BTreeMap<String, String>,
}

/// What one service asks of the scheduler in one region.
pub(crate) struct RegionDemand {
    /// The service's name in its stack.
    pub name: String,
    /// The service as rendered for the region.
    pub service: Service,
    /// How many instances its group should have; `None`: the ones it has plus `more` (the
    /// state machine decided how many new ones to start, and counts the old ones itself).
    pub total: Option<u32>,
    /// The most new instances this pass may start for it.
    pub more: u32,
}

/// The sealed values of a service's secrets, by name (copied from the secret records, never
/// opened here: see [`crate::seal::secret_aad`]).
type SealedEnv = BTreeMap<String, crate::seal::Sealed>;

/// New instances of one service asked for in one pass, with the secret values they start with.
struct Wanted {
    name: String,
    service: Service,
    count: u32,
    sealed_env: SealedEnv,
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
            unplaced: BTreeMap::new(),
        }
    }

    /// Forgets everything decided so far (a failed rollout undoes its pass).
    pub fn reset(&mut self) {
        self.effects.clear();
        self.touched.clear();
        self.pending.clear();
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

    /// The current values of a service's secrets, sealed (the deploy checked they were set), or
    /// `None` when one was deleted since: the service then gets no new instance, and `berth
    /// status` says why.
    fn secret_values(
        &mut self,
        record: &RolloutRecord,
        name: &str,
        service: &Service,
    ) -> Option<(SealedEnv, BTreeMap<String, u64>)> {
        let values = self.view.secrets_of(&record.stack);
        let mut sealed_env = BTreeMap::new();
        let mut secret_versions = BTreeMap::new();
        for secret in &service.secrets {
            match values
                .get(secret)
                .and_then(|r| Some((r.value.sealed.as_ref()?, r)))
            {
                Some((sealed, r)) => {
                    sealed_env.insert(secret.clone(), sealed.clone());
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
                    return None;
                }
            }
        }
        Some((sealed_env, secret_versions))
    }

    /// Calls the scheduler once for one rollout in `region` with every service's demand, records
    /// the new instances it places (within what is left of the pass's [`CREATE_BUDGET`]) and
    /// returns the instances it stops, with why: lost (on a node that is down — or draining,
    /// unless `cordon_draining` keeps what runs there — or gone), misplaced (the node no longer
    /// passes the service's constraints) or surplus. What to do with each stop is the caller's.
    ///
    /// Without a feasible node nothing is created for a service, and why is kept for `berth
    /// status`; a rollout then waits and, past its progress deadline, fails with the reason.
    /// What the budget held back is asked for again next pass.
    pub fn schedule_region(
        &mut self,
        record: &RolloutRecord,
        region: &str,
        demands: &[RegionDemand],
        cordon_draining: bool,
    ) -> Vec<(&'a Versioned<InstanceRecord>, StopReason)> {
        let left = CREATE_BUDGET.saturating_sub(self.created);
        // Each demand's secrets (a service whose secret is missing wants nothing), then the
        // budget shared fairly between the services that want instances.
        let mut resolved = Vec::with_capacity(demands.len());
        for d in demands {
            let secrets = if d.more == 0 {
                Some((BTreeMap::new(), BTreeMap::new()))
            } else {
                self.secret_values(record, &d.name, &d.service)
            };
            resolved.push(match secrets {
                Some((env, versions)) => (d.more as usize, env, versions),
                None => (0, BTreeMap::new(), BTreeMap::new()),
            });
        }
        let wants: Vec<usize> = resolved.iter().map(|(more, _, _)| *more).collect();
        let shares = fair_shares(&wants, left);
        let mut wanted: Vec<Wanted> = Vec::with_capacity(demands.len());
        for ((d, (_, sealed_env, secret_versions)), share) in
            demands.iter().zip(resolved).zip(shares)
        {
            wanted.push(Wanted {
                name: d.name.clone(),
                service: d.service.clone(),
                count: u32::try_from(share).unwrap_or(u32::MAX),
                sealed_env,
                secret_versions,
            });
        }
        let nodes = self.region_nodes(region, cordon_draining);
        // Instances this pass already decided (an earlier region, a stop) count as decided.
        let existing = placement::existing_of(
            self.view.instances().values().map(|v| &v.value),
            &self.pending,
        );
        let groups: Vec<_> = demands
            .iter()
            .map(|d| placement::group_key(&record.stack, &record.env, region, &d.name, &d.service))
            .collect();
        let scheduled: Vec<Demand> = demands
            .iter()
            .zip(&wanted)
            .zip(&groups)
            .map(|((d, w), group)| {
                let count = match d.total {
                    Some(total) => total,
                    None => {
                        let members = existing.iter().filter(|e| e.group == *group).count();
                        u32::try_from(members)
                            .unwrap_or(u32::MAX)
                            .saturating_add(w.count)
                    }
                };
                Demand {
                    group: group.clone(),
                    count,
                    service: d.service.clone(),
                }
            })
            .collect();
        let plan = berth_scheduler::schedule(
            &nodes,
            &existing,
            &scheduled,
            &SchedulerConfig::new(self.pass.seed ^ self.created as u64),
        );
        let mut placed = vec![0u32; wanted.len()];
        for p in &plan.placements {
            let (Some(w), Some(node)) = (wanted.get(p.demand), nodes.get(p.node)) else {
                continue;
            };
            if placed[p.demand] < w.count {
                placed[p.demand] += 1;
                self.create(record, w, region, node.name.clone());
            }
        }
        for f in &plan.failures {
            let (Some(d), Some(w)) = (demands.get(f.demand), wanted.get(f.demand)) else {
                continue;
            };
            // A demand counted from its members asks the scheduler for replacements of its
            // lost ones too, but only `w.count` are wanted: a shortfall beyond them is none.
            if d.total.is_none() && placed[f.demand] >= w.count {
                continue;
            }
            let why = f
                .explanation
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_else(|| f.reason.clone());
            tracing::debug!(stack = %record.stack, service = %w.name, %region, %why, "no feasible node for a new instance");
            // A missing secret, said first, stays the reason.
            self.unplaced.entry(w.name.clone()).or_insert(why);
        }
        for ((d, w), n) in demands.iter().zip(&wanted).zip(&placed) {
            if d.total.is_none() && *n < w.count && !self.unplaced.contains_key(&w.name) {
                self.unplaced.insert(
                    w.name.clone(),
                    format!("no node in region {region} can take it"),
                );
            }
        }
        let view: &'a View = self.view;
        plan.stops
            .iter()
            .filter_map(|s| {
                let e = existing.get(s.existing)?;
                Some((view.instance(&e.id)?, s.reason))
            })
            .collect()
    }

    /// The scheduler's nodes of a region: ready when up and not draining; with
    /// `cordon_draining`, a draining node that is up keeps what runs there but takes nothing.
    pub fn region_nodes(&self, region: &str, cordon_draining: bool) -> Vec<berth_scheduler::Node> {
        let node_up = self.pass.facts.node_up;
        placement::region_nodes(self.view.nodes().values().map(|n| &n.value), region, &|n| {
            let up = node_up(&n.registration.name);
            if cordon_draining {
                (up, n.draining)
            } else {
                (up && !n.draining, false)
            }
        })
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
                // The values travel sealed: opened only for the node's own desired set.
                secret_env: BTreeMap::new(),
            },
            env: record.env.clone(),
            region: region.to_string(),
            desired: Desired::Run,
            created_ms: self.pass.now,
            desired_since_ms: None,
            status: None,
            secret_versions: w.secret_versions.clone(),
            sealed_env: w.sealed_env.clone(),
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

/// Shares `budget` creations between demands wanting `wants[i]` each, evenly (water-filling:
/// what a small demand does not use goes to the others; the first ones get the remainder).
/// Without it the first service of a large rollout took the whole per-pass budget until it was
/// fully created, and a later service saw no instance for longer than its progress deadline
/// and failed the rollout (seen in `berth bench control-plane` at 70,000 instances in 8
/// services: `service bulk-3: no progress for 60s: 0/9900 new instances healthy`).
pub(crate) fn fair_shares(wants: &[usize], budget: usize) -> Vec<usize> {
    let mut shares = vec![0usize; wants.len()];
    let mut left = budget;
    loop {
        let hungry = wants
            .iter()
            .zip(&shares)
            .filter(|(want, got)| got < want)
            .count();
        if hungry == 0 || left == 0 {
            return shares;
        }
        let each = (left / hungry).max(1);
        for (share, want) in shares.iter_mut().zip(wants) {
            if left == 0 {
                break;
            }
            let give = each.min(want - *share).min(left);
            *share += give;
            left -= give;
        }
    }
}

#[cfg(test)]
mod fair_share_tests {
    use super::fair_shares;

    #[test]
    fn the_budget_is_shared_evenly_and_nothing_is_wasted() {
        assert_eq!(
            fair_shares(&[1000, 1000, 1000, 1000], 256),
            [64, 64, 64, 64]
        );
        // What a small demand leaves goes to the others.
        assert_eq!(fair_shares(&[10, 1000, 1000], 256), [10, 123, 123]);
        // The remainder goes to the first ones, one each.
        assert_eq!(fair_shares(&[100, 100, 100], 10), [4, 3, 3]);
        // A budget smaller than the number of demands still gives one each in order.
        assert_eq!(fair_shares(&[5, 5, 5], 2), [1, 1, 0]);
        assert_eq!(fair_shares(&[0, 7], 256), [0, 7]);
        assert_eq!(fair_shares(&[3, 4], 0), [0, 0]);
        assert_eq!(fair_shares(&[], 256), Vec::<usize>::new());
    }

    #[test]
    fn shares_never_exceed_the_wants_or_the_budget() {
        for budget in [0, 1, 7, 256] {
            for wants in [
                vec![1, 2, 3],
                vec![300, 0, 300],
                vec![256, 256, 256, 256, 1],
            ] {
                let shares = fair_shares(&wants, budget);
                assert!(shares.iter().zip(&wants).all(|(s, w)| s <= w));
                let total: usize = shares.iter().sum();
                assert_eq!(total, budget.min(wants.iter().sum()));
            }
        }
    }
}

#[cfg(test)]
mod budget_fairness_tests {
    use crate::controllers::testing::World;
    use crate::controllers::CREATE_BUDGET;

    /// Every service of a large rollout gets instances from the first pass on (before, the
    /// first service took the whole budget and the others waited, past their progress
    /// deadline at scale).
    #[test]
    fn every_service_of_a_large_rollout_gets_its_share_of_each_pass() {
        let mut w = World::new();
        w.node("a", None);
        let service = |name: &str| {
            format!(
                "  {name}:\n    process: {{command: [sleep, \"1000\"]}}\n    replicas: 5000\n    resources: {{ cpu: 1m, memory: 1Mi }}\n    rollout: {{ progress_deadline: 1h }}\n"
            )
        };
        let yaml = format!(
            "stack: shop\nenvironments:\n  prod:\n    regions: [local]\nservices:\n{}{}{}{}",
            service("a1"),
            service("a2"),
            service("a3"),
            service("a4")
        );
        w.deploy(&yaml, 1, None, false);
        w.pass(1);
        for name in ["a1", "a2", "a3", "a4"] {
            assert_eq!(w.running(name).len(), CREATE_BUDGET / 4, "{name}");
        }
    }
}
