//! # berth-scheduler — where instances go
//!
//! Pure: no I/O, no clock, no threads, no global randomness. A shell (the rollout controller in
//! the server) hands in a snapshot — the [`Node`]s, the [`Existing`] instances and the
//! [`Demand`] per group — and gets back a [`Plan`]: placements, stops, and failures that say
//! why. The same inputs and [`SchedulerConfig::seed`] give the same plan, byte for byte, which is
//! what makes property tests, replays and a 10,000-node simulation cheap. The shell re-checks the
//! plan against the latest state before it writes it (optimistic planning, central
//! verification, as Nomad's plan applier does).
//!
//! ## The pipeline (after Nomad's `scheduler/README.md`)
//! ```text
//!  nodes ──► index: node classes (drivers + the label values any demand looks at), usage arrays
//!  existing ─► reconcile, per group:  lost ─► stop      (node gone or not ready: draining/down)
//!                                    misplaced ─► stop (node no longer passes driver/constraints)
//!                                    surplus ─► stop   (most crowded spread bucket, then node)
//!                                    missing ─► place ─┐
//!   ┌─────────────────────────────────────────────────┘
//!   └► per placement:  spread bucket (fewest of this group; a heap) ─► sample nodes in it
//!        ─► feasibility (ready, driver, constraints per class; cpu, memory, ports per node)
//!        ─► scoring (strategy fit + anti-affinity) ─► select the best ─► update usage
//!  failure ─► explanation: every node's first failing check, counted ("3 nodes: 2 lack …")
//! ```
//!
//! ## Map
//! - [`schedule`] — the one entry point.
//! - [`Node`], [`Existing`], [`Demand`], [`GroupKey`], [`Capacity`] — the snapshot.
//! - [`SchedulerConfig`], [`Strategy`] — how to choose (spread or bin-pack, sample size, seed).
//! - [`Plan`], [`Placement`], [`Stop`], [`StopReason`], [`Failure`] — the decision.
//! - [`Explanation`], [`Reason`] — why a group could not be placed, counted per node.
//! - `harness` (feature `harness`) — a recording harness in Nomad's style: a cluster in memory
//!   that runs [`schedule`], applies each plan and keeps them, for scenario tests and simulations.
//! - `bench` (feature `bench`) — the in-memory simulation behind `berth bench scheduler`; the
//!   only module that reads a clock (to time [`schedule`]) and `/proc` (for peak memory).
//!
//!   Both are test support, outside the library's normal build: this crate's tests and bench turn
//!   them on through a dev-dependency on itself, the CLI turns `bench` on for its command.
//! - `index` (private) — node classes and usage; `reconcile`, `place` (private) — the two phases;
//!   `rng` (private) — the seeded PRNG and the Fx hasher.
//!
//! ## Vocabulary
//! - *group*: the instances of one service in one stack, environment and region ([`GroupKey`]);
//!   counts are reconciled per group.
//! - *class*: nodes that are indistinguishable to every demand of this call — same readiness,
//!   drivers, and values of the labels that some constraint or spread key mentions (Nomad's
//!   "computed class"). Static feasibility is decided once per class, not once per node.
//! - *bucket*: for a group with `spread` keys, the feasible classes sharing the same values of
//!   those keys (`zone = a`). Without spread keys a group has one bucket.
//! - *sample*: how many feasible nodes are scored per placement (Nomad's `limit`, Sparrow's
//!   power of d choices). Scoring all 10,000 nodes per placement would be quadratic.
//! - *lost*: an instance on a node that is gone or not ready; it is stopped and replaced.
//! - *alive*: an instance on a ready node that passes its group's driver and constraints.
//!
//! ## Guarantees (stated as the property tests check them)
//! - A group's alive instances plus its placements never exceed its count.
//! - Every placement passes every feasibility check; no node ends up over its CPU or memory
//!   capacity, and no host port is used twice on a node, if none was before the plan.
//! - With one spread key and room everywhere, a group's counts per label value stay within one
//!   of each other.
//! - Planning again on the applied result places and stops nothing.
//! - A failure is only reported after every candidate node was checked, so sampling never makes
//!   a feasible placement fail; its explanation covers every node.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "bench")]
pub mod bench;
#[cfg(any(test, feature = "harness"))]
pub mod harness;
mod index;
mod place;
mod reconcile;
mod rng;

use std::collections::BTreeMap;
use std::fmt;

use berth_spec::model::{Cpu, DriverKind, Memory, Resources, Service};
use serde::{Deserialize, Serialize};

/// The unit whose count is reconciled: one service of one stack, in one environment and region.
///
/// A release is instantiated once per region wave, so the same service in two regions is two
/// groups with two counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupKey {
    /// The stack's name.
    pub stack: String,
    /// The environment (`staging`, `production`, …).
    pub env: String,
    /// The region wave this group belongs to.
    pub region: String,
    /// The service's name within the stack.
    pub service: String,
}

impl GroupKey {
    /// A group from its four parts.
    pub fn new(stack: &str, env: &str, region: &str, service: &str) -> Self {
        GroupKey {
            stack: stack.to_string(),
            env: env.to_string(),
            region: region.to_string(),
            service: service.to_string(),
        }
    }
}

impl fmt::Display for GroupKey {
    /// `stack/env/region/service`, the form plans and logs print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.stack, self.env, self.region, self.service
        )
    }
}

/// CPU and memory as plain integers: what a node offers or an instance reserves.
///
/// The spec's [`Resources`] carries unit types made for parsing and printing; the scheduler adds
/// and compares millions of these, so it works on the raw numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// Millicores (`1000` is one core).
    pub cpu_millis: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

impl From<&Resources> for Capacity {
    fn from(r: &Resources) -> Self {
        Capacity {
            cpu_millis: r.cpu.millis,
            memory_bytes: r.memory.bytes,
        }
    }
}

impl fmt::Display for Capacity {
    /// In the stack file's units: `250m cpu, 128Mi memory`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cpu, {} memory",
            Cpu {
                millis: self.cpu_millis
            },
            Memory {
                bytes: self.memory_bytes
            }
        )
    }
}

/// A machine running `berth agent`, as the scheduler needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique in a snapshot; a repeated name makes the later nodes unusable (an instance could
    /// not say which one it runs on).
    pub name: String,
    /// `region`, `zone`, anything: what constraints and spread keys look at.
    pub labels: BTreeMap<String, String>,
    /// False for `draining` and `down`: nothing is placed there, and what runs there is lost.
    pub ready: bool,
    /// Ready, but takes nothing new (a drained node while a rollout runs): what runs there
    /// stays alive and counts for its group; no placement goes there. Nomad's "ineligible".
    #[serde(default)]
    pub cordoned: bool,
    /// The drivers the agent offers.
    pub drivers: Vec<DriverKind>,
    /// What the node offers in total; existing instances' reservations are subtracted.
    pub capacity: Capacity,
}

/// An instance that exists (desired or running) in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Existing {
    /// The instance's id; stops refer to it by its index in the `existing` slice.
    pub id: String,
    /// The name of the node it runs on; a name not in the snapshot makes the instance lost.
    pub node: String,
    /// The group it belongs to. Instances of groups without a [`Demand`] are left alone but
    /// still use their node's resources and ports.
    pub group: GroupKey,
    /// What it reserves on its node.
    pub resources: Capacity,
    /// The fixed host ports it holds on its node.
    pub host_ports: Vec<u16>,
}

/// How many instances a group should have, and what each one needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    /// The group being reconciled; each group appears at most once in a call.
    pub group: GroupKey,
    /// The desired count (the rollout controller's or autoscaler's number, not necessarily
    /// `service.replicas`).
    pub count: u32,
    /// The service as it runs in this region (`${region}` already substituted, see
    /// `Stack::service_for_region`). Its driver, resources, placement and ports are read once
    /// per call, never per placement.
    pub service: Service,
}

impl Demand {
    /// The host ports each instance holds: every non-zero value of `service.ports`, sorted and
    /// without repeats.
    ///
    /// A process listens on the host's network directly, so two process instances asking for
    /// port 8080 conflict. A container's ports are inside its own network namespace: the agent
    /// publishes each on a host port it picks, so an `image:` service holds no fixed host port
    /// (as the server counts its running instances). `0` means the agent picks a free port,
    /// which never conflicts.
    pub fn host_ports(&self) -> Vec<u16> {
        if self.service.image.is_some() {
            return Vec::new();
        }
        let mut ports: Vec<u16> = self
            .service
            .ports
            .values()
            .copied()
            .filter(|&p| p != 0)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// What each instance reserves on its node.
    pub fn resources(&self) -> Capacity {
        Capacity::from(&self.service.resources)
    }
}

/// How a node is chosen among feasible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Prefer the least used node, and never put two instances of a group on one node while
    /// another node in the sample has fewer: losing a node loses as little as possible.
    #[default]
    Spread,
    /// Prefer the most used node that still fits, and keep filling the node the group used
    /// last: fewer nodes busy, more nodes free for large instances or to be turned off.
    Binpack,
}

/// How [`schedule`] decides. Randomness comes only from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// Spread or bin-pack.
    pub strategy: Strategy,
    /// How many feasible nodes to score per placement; `None` picks
    /// [`SchedulerConfig::auto_sample`]. A bucket with no more nodes than this is examined
    /// whole, so small clusters are scheduled exactly.
    pub sample: Option<usize>,
    /// Seeds the PRNG that samples nodes and breaks ties between spread buckets.
    pub seed: u64,
}

impl SchedulerConfig {
    /// Spread strategy, automatic sample size, this seed.
    pub fn new(seed: u64) -> Self {
        SchedulerConfig {
            strategy: Strategy::Spread,
            sample: None,
            seed,
        }
    }

    /// The automatic sample: `2 × ⌈log2 nodes⌉`, at least 8 — 28 for 10,000 nodes.
    ///
    /// Nomad scores `⌈log2 n⌉` nodes for service jobs (and 2 for batch); we take twice that
    /// because anti-affinity and the bin-pack fit both need some choice to work with, and a
    /// candidate costs only a few array reads.
    pub fn auto_sample(nodes: usize) -> usize {
        let log2 = usize::BITS - nodes.max(1).saturating_sub(1).leading_zeros();
        (2 * log2 as usize).max(8)
    }

    fn sample_for(&self, nodes: usize) -> usize {
        self.sample
            .unwrap_or_else(|| Self::auto_sample(nodes))
            .max(1)
    }
}

/// One new instance of a group on a node.
///
/// Indexes rather than names: a 1,000,000-instance plan stays 16 MB instead of copying a group
/// key and a node name per instance. [`Plan::placed`] resolves them against the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Index into the `demands` slice given to [`schedule`].
    pub demand: usize,
    /// Index into the `nodes` slice given to [`schedule`].
    pub node: usize,
}

/// Why an existing instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Its node is gone or not ready (draining, down); it is replaced elsewhere.
    Lost,
    /// Its node no longer has the driver or passes the constraints; it is replaced elsewhere.
    Misplaced,
    /// The group has more alive instances than its count.
    Surplus,
}

/// One existing instance to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// Index into the `existing` slice given to [`schedule`].
    pub existing: usize,
    /// Why.
    pub reason: StopReason,
}

/// A group that could not get all the instances it asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Index into the `demands` slice.
    pub demand: usize,
    /// The group, for printing without the inputs at hand.
    pub group: GroupKey,
    /// How many instances are still missing after this plan.
    pub missing: u32,
    /// What a pending instance says: `3 nodes: 2 lack 512Mi memory, 1 fails region == us-east`.
    pub reason: String,
    /// The same, counted per reason, for machines; `None` when the demand itself was refused
    /// (a repeated group).
    pub explanation: Option<Explanation>,
}

impl fmt::Display for Failure {
    /// `shop/production/us-east/api: 2 missing: 3 nodes: …`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} missing: {}",
            self.group, self.missing, self.reason
        )
    }
}

/// Why one node cannot take one more instance of a group: the first check it fails.
///
/// The order of the variants is the order of the checks, and of the explanation's ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The node is draining or down.
    NotReady,
    /// Another node earlier in the snapshot has the same name.
    DuplicateName,
    /// The node's agent does not offer the service's driver.
    MissingDriver(DriverKind),
    /// A placement constraint, as written (`region == us-east`), does not hold.
    Constraint(String),
    /// Free CPU is below the request (millicores).
    Cpu(u64),
    /// Free memory is below the request (bytes).
    Memory(u64),
    /// A fixed host port is already held on the node.
    Port(u16),
}

impl Reason {
    /// The phrase for `n` nodes, verb agreeing: "1 fails region == eu", "2 lack 512Mi memory".
    fn phrase(&self, n: u32) -> String {
        let one = n == 1;
        let s = if one { "s" } else { "" };
        match self {
            Reason::NotReady => format!("{n} {} not ready", if one { "is" } else { "are" }),
            Reason::DuplicateName => format!("{n} repeat{s} another node's name"),
            Reason::MissingDriver(d) => format!(
                "{n} lack{s} the {} driver",
                match d {
                    DriverKind::Process => "process",
                    DriverKind::Docker => "docker",
                }
            ),
            Reason::Constraint(c) => format!("{n} fail{s} {c}"),
            Reason::Cpu(m) => format!("{n} lack{s} {} cpu", Cpu { millis: *m }),
            Reason::Memory(b) => format!("{n} lack{s} {} memory", Memory { bytes: *b }),
            Reason::Port(p) => format!("{n} {} port {p} in use", if one { "has" } else { "have" }),
        }
    }
}

/// Why a group could not be placed, over every node of the snapshot.
///
/// Each node is counted once, under the first check it fails, in the order of [`Reason`]; the
/// list is sorted by count (largest first), then by that order. It is computed when the group
/// fails, after every candidate was examined, so it describes the whole cluster and not a sample.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Explanation {
    /// How many nodes the snapshot has.
    pub nodes: usize,
    /// Nodes per failing reason.
    pub reasons: Vec<(Reason, u32)>,
}

impl fmt::Display for Explanation {
    /// `3 nodes: 2 lack 512Mi memory, 1 fails region == us-east`; `no nodes` for an empty
    /// cluster.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return write!(f, "no nodes");
        }
        write!(
            f,
            "{} node{}",
            self.nodes,
            if self.nodes == 1 { "" } else { "s" }
        )?;
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{}", reason.phrase(*n))?;
        }
        Ok(())
    }
}

/// What [`schedule`] decided.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// New instances, grouped by demand in input order.
    pub placements: Vec<Placement>,
    /// Existing instances to stop. Their resources and ports are already counted as free by the
    /// placements of the same plan, so the agent stops before it starts.
    pub stops: Vec<Stop>,
    /// Groups left short, with the reason.
    pub failures: Vec<Failure>,
}

impl Plan {
    /// True when there is nothing to do: no placement, no stop (failures may remain: a group
    /// that does not fit still does not fit).
    pub fn is_noop(&self) -> bool {
        self.placements.is_empty() && self.stops.is_empty()
    }

    /// The placements as `(group, node name)`, resolved against the inputs of the call.
    pub fn placed<'a>(
        &'a self,
        nodes: &'a [Node],
        demands: &'a [Demand],
    ) -> impl Iterator<Item = (&'a GroupKey, &'a str)> + 'a {
        self.placements.iter().filter_map(move |p| {
            Some((
                &demands.get(p.demand)?.group,
                nodes.get(p.node)?.name.as_str(),
            ))
        })
    }

    /// The ids of the stopped instances, resolved against the inputs of the call.
    pub fn stopped<'a>(&'a self, existing: &'a [Existing]) -> impl Iterator<Item = &'a str> + 'a {
        self.stops
            .iter()
            .filter_map(move |s| Some(existing.get(s.existing)?.id.as_str()))
    }
}

/// Reconciles every demand against the snapshot and decides placements and stops.
///
/// Stops are decided first for every group (so their resources are free for every placement),
/// then each demand is placed in input order — a shell that wants priorities orders the demands.
/// Runs in `O(nodes + existing + classes × demands + placements × sample × log buckets)`: there
/// is no pass over all nodes per placement. A group that fails costs one more pass over its
/// candidate nodes, to be sure and to explain.
pub fn schedule(
    nodes: &[Node],
    existing: &[Existing],
    demands: &[Demand],
    config: &SchedulerConfig,
) -> Plan {
    let mut idx = index::Index::build(nodes, existing, demands);
    let mut plan = Plan::default();
    let sample = config.sample_for(nodes.len());
    let mut groups = reconcile::reconcile(&mut idx, nodes, existing, demands, config, &mut plan);
    place::place_all(
        &mut idx,
        nodes,
        demands,
        config,
        sample,
        &mut groups,
        &mut plan,
    );
    plan
}

#[cfg(test)]
mod tests;
