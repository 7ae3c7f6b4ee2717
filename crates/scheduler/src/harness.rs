//! A recording harness in the style of Nomad's `scheduler/tests/testing.go`: a cluster held in
//! memory that runs [`schedule`], applies each plan to its own state and keeps every plan, so a
//! scenario test reads as a story ("six instances over three zones; zone b goes down; …") and
//! asserts on the state and on what was decided.
//!
//! It also models what a real cluster does that a plan cannot: a node that is *lost* (down and
//! unreachable) keeps its instances, because the stop never reaches it; when it comes back, the
//! next plan sees them alive again and stops the extras.

use std::collections::{BTreeMap, BTreeSet};

use berth_spec::model::{
    Amount, Constraint, Cpu, DriverKind, Duration, Memory, Placement as SpecPlacement, Process,
    Resources, RestartPolicy, Rollout, Service,
};

use crate::{schedule, Capacity, Demand, Existing, GroupKey, Node, Plan, SchedulerConfig};

/// The harness: nodes, instances and demands, and every plan made so far.
#[derive(Debug, Clone)]
pub struct Harness {
    /// The cluster's nodes; tests change readiness with [`Harness::set_ready`].
    pub nodes: Vec<Node>,
    /// The instances as the harness believes they exist after the applied plans.
    pub instances: Vec<Existing>,
    /// What each group should have.
    pub demands: Vec<Demand>,
    /// How every run schedules; the seed advances by one per run so runs differ but replay.
    pub config: SchedulerConfig,
    /// Every plan, in order, as [`schedule`] returned it.
    pub plans: Vec<Plan>,
    unreachable: BTreeSet<String>,
    next_id: u64,
}

impl Harness {
    /// An empty cluster.
    pub fn new(config: SchedulerConfig) -> Self {
        Harness {
            nodes: Vec::new(),
            instances: Vec::new(),
            demands: Vec::new(),
            config,
            plans: Vec::new(),
            unreachable: BTreeSet::new(),
            next_id: 0,
        }
    }

    /// Adds a ready node with both drivers.
    pub fn add_node(&mut self, name: &str, labels: &[(&str, &str)], capacity: Capacity) {
        self.nodes.push(Node {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ready: true,
            cordoned: false,
            drivers: vec![DriverKind::Process, DriverKind::Docker],
            capacity,
        });
    }

    /// Marks a node ready or not (draining, down). Its instances stay in the harness state until
    /// a plan stops them.
    pub fn set_ready(&mut self, name: &str, ready: bool) {
        for n in self.nodes.iter_mut().filter(|n| n.name == name) {
            n.ready = ready;
        }
    }

    /// The node goes down and cannot be reached: stops addressed to it are not applied.
    pub fn lose_node(&mut self, name: &str) {
        self.set_ready(name, false);
        self.unreachable.insert(name.to_string());
    }

    /// The node is back, with whatever it was running.
    pub fn restore_node(&mut self, name: &str) {
        self.set_ready(name, true);
        self.unreachable.remove(name);
    }

    /// Sets the desired count of a group, adding the demand if it is new.
    pub fn demand(&mut self, group: GroupKey, count: u32, service: Service) {
        match self.demands.iter_mut().find(|d| d.group == group) {
            Some(d) => {
                d.count = count;
                d.service = service;
            }
            None => self.demands.push(Demand {
                group,
                count,
                service,
            }),
        }
    }

    /// Schedules, records the plan, applies it, and returns it.
    pub fn run(&mut self) -> &Plan {
        let mut config = self.config;
        config.seed = config.seed.wrapping_add(self.plans.len() as u64);
        let plan = schedule(&self.nodes, &self.instances, &self.demands, &config);
        self.apply(&plan);
        self.plans.push(plan);
        &self.plans[self.plans.len() - 1]
    }

    /// Applies a plan made against the current state: stops first, then placements with fresh
    /// ids (`service-N`).
    pub fn apply(&mut self, plan: &Plan) {
        let mut new: Vec<Existing> = Vec::with_capacity(plan.placements.len());
        for p in &plan.placements {
            let (Some(d), Some(n)) = (self.demands.get(p.demand), self.nodes.get(p.node)) else {
                continue;
            };
            self.next_id += 1;
            new.push(Existing {
                id: format!("{}-{}", d.group.service, self.next_id),
                node: n.name.clone(),
                group: d.group.clone(),
                resources: d.resources(),
                host_ports: d.host_ports(),
            });
        }
        let stopped: BTreeSet<usize> = plan
            .stops
            .iter()
            .map(|s| s.existing)
            .filter(|&e| {
                self.instances
                    .get(e)
                    .is_some_and(|i| !self.unreachable.contains(&i.node))
            })
            .collect();
        let mut i = 0;
        self.instances.retain(|_| {
            i += 1;
            !stopped.contains(&(i - 1))
        });
        self.instances.extend(new);
    }

    /// Instances of a group on ready nodes.
    pub fn alive(&self, group: &GroupKey) -> usize {
        self.instances
            .iter()
            .filter(|i| &i.group == group && self.node(&i.node).is_some_and(|n| n.ready))
            .count()
    }

    /// A group's instances per value of a node label (on ready nodes), e.g. per zone.
    pub fn count_by(&self, group: &GroupKey, label: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for i in self.instances.iter().filter(|i| &i.group == group) {
            if let Some(n) = self.node(&i.node).filter(|n| n.ready) {
                let v = n.labels.get(label).cloned().unwrap_or_default();
                *out.entry(v).or_insert(0) += 1;
            }
        }
        out
    }

    /// Instances of a group per node name.
    pub fn count_by_node(&self, group: &GroupKey) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for i in self.instances.iter().filter(|i| &i.group == group) {
            *out.entry(i.node.clone()).or_insert(0) += 1;
        }
        out
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every broken invariant of the current state, in words; empty when all hold: no ready node
    /// over capacity or holding a port twice; every instance of a demanded group on a ready node
    /// with its driver and constraints; no group above its count.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut used: BTreeMap<&str, (u64, u64, Vec<u16>)> = BTreeMap::new();
        for i in &self.instances {
            let u = used.entry(i.node.as_str()).or_default();
            u.0 += i.resources.cpu_millis;
            u.1 += i.resources.memory_bytes;
            u.2.extend(&i.host_ports);
        }
        for n in self.nodes.iter().filter(|n| n.ready) {
            let Some((cpu, mem, ports)) = used.get_mut(n.name.as_str()) else {
                continue;
            };
            if *cpu > n.capacity.cpu_millis || *mem > n.capacity.memory_bytes {
                out.push(format!("{} is over capacity: {cpu}m, {mem} bytes", n.name));
            }
            ports.sort_unstable();
            if ports.windows(2).any(|w| w[0] == w[1]) {
                out.push(format!("{} holds a port twice: {ports:?}", n.name));
            }
        }
        for d in &self.demands {
            let alive = self.alive(&d.group);
            if alive > d.count as usize {
                out.push(format!("{}: {alive} alive > {}", d.group, d.count));
            }
            for i in self.instances.iter().filter(|i| i.group == d.group) {
                let Some(n) = self.node(&i.node).filter(|n| n.ready) else {
                    continue;
                };
                if !n.drivers.contains(&d.service.driver()) {
                    out.push(format!("{} on {} lacks its driver", i.id, n.name));
                }
                for c in d.service.placement.constraints.iter() {
                    if !c.holds(&n.labels) {
                        out.push(format!("{} on {} breaks {c}", i.id, n.name));
                    }
                }
            }
        }
        out
    }
}

/// A process service reserving this much, no ports, no placement rules: a starting point that
/// tests and benchmarks adjust field by field.
pub fn service(cpu_millis: u64, memory_bytes: u64) -> Service {
    Service {
        process: Some(Process {
            command: vec!["berth".into(), "whoami".into()],
            user: None,
        }),
        image: None,
        command: None,
        env: BTreeMap::new(),
        secrets: vec![],
        ports: BTreeMap::new(),
        replicas: 1,
        health: None,
        route: None,
        rollout: Rollout::rolling(
            Amount::Count(1),
            Amount::Count(0),
            Duration::from_millis(600_000),
        ),
        depends_on: vec![],
        stop_grace: Duration::from_millis(10_000),
        volumes: vec![],
        resources: Resources {
            cpu: Cpu { millis: cpu_millis },
            memory: Memory {
                bytes: memory_bytes,
            },
        },
        placement: SpecPlacement {
            spread: vec![],
            constraints: vec![],
        },
        restart: RestartPolicy::Always,
    }
}

/// `svc` with these spread keys and constraints (`"region == us-east"`). A constraint that does
/// not parse is returned as the error rather than skipped, since skipping would hide a broken
/// test.
pub fn with_placement(
    mut svc: Service,
    spread: &[&str],
    constraints: &[&str],
) -> Result<Service, String> {
    svc.placement.spread = spread.iter().map(|s| s.to_string()).collect();
    svc.placement.constraints = constraints
        .iter()
        .map(|c| c.parse::<Constraint>())
        .collect::<Result<_, _>>()?;
    Ok(svc)
}

/// A group in stack `shop`, environment `production`, region `eu`.
pub fn group(service: &str) -> GroupKey {
    GroupKey::new("shop", "production", "eu", service)
}

/// `cores` CPUs and `gib` GiB of memory.
pub fn capacity(cores: u64, gib: u64) -> Capacity {
    Capacity {
        cpu_millis: cores * 1000,
        memory_bytes: gib << 30,
    }
}
