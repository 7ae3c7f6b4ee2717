//! Phase one: sort each group's existing instances into lost, misplaced, surplus and alive
//! (Nomad's reconciler buckets), stop the first three, and count what is missing.
//!
//! Every stop of every group is decided before any placement, so the resources they free are
//! available to every group's placements in the same plan.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::index::{Ask, Index, StaticReason};
use crate::rng::{stable_hash, FxMap, Rng};
use crate::{Demand, Existing, Failure, Node, Plan, SchedulerConfig, Stop, StopReason};

/// What the placement phase needs to know about one group.
#[derive(Debug)]
pub(crate) struct GroupState {
    /// A repeated group: refused, never placed.
    pub skip: bool,
    pub ask: Ask,
    /// Positions of the group's spread keys in the class values, in the order written.
    pub spread_keys: Vec<usize>,
    /// Alive + placed instances per node.
    pub per_node: FxMap<u32, u32>,
    /// Per spread key, alive + placed instances per value id.
    pub counts: Vec<Vec<u32>>,
    /// How many instances to place.
    pub need: u32,
    /// The group's own PRNG stream.
    pub rng: Rng,
}

impl GroupState {
    fn new(idx: &Index<'_>, demand: &Demand, config: &SchedulerConfig) -> Self {
        let g = &demand.group;
        let spread_keys: Vec<usize> = demand
            .service
            .placement
            .spread
            .iter()
            .filter_map(|k| idx.key_pos.get(k.as_str()).copied())
            .collect();
        GroupState {
            skip: false,
            ask: Ask::of(demand),
            counts: spread_keys
                .iter()
                .map(|&k| vec![0; idx.value_count[k] as usize])
                .collect(),
            spread_keys,
            per_node: FxMap::default(),
            need: 0,
            rng: Rng::new(config.seed ^ stable_hash(&[&g.stack, &g.env, &g.region, &g.service])),
        }
    }

    /// Counts one more instance on `node`.
    pub(crate) fn add(&mut self, idx: &Index<'_>, node: u32) {
        *self.per_node.entry(node).or_insert(0) += 1;
        for (i, &k) in self.spread_keys.iter().enumerate() {
            self.counts[i][idx.value(node, k) as usize] += 1;
        }
    }

    fn remove(&mut self, idx: &Index<'_>, node: u32) {
        if let Some(c) = self.per_node.get_mut(&node) {
            *c = c.saturating_sub(1);
        }
        for (i, &k) in self.spread_keys.iter().enumerate() {
            let c = &mut self.counts[i][idx.value(node, k) as usize];
            *c = c.saturating_sub(1);
        }
    }

    /// The group's instances in the bucket with these spread values, as one number ordered like
    /// the tuple of counts (first key most significant). Keys past the fourth do not take part:
    /// they still group nodes into buckets, but do not order them.
    pub(crate) fn bucket_key(&self, values: &[u32]) -> u128 {
        let mut k = 0u128;
        for i in 0..4 {
            k <<= 32;
            if let (Some(c), Some(&v)) = (self.counts.get(i), values.get(i)) {
                k |= u128::from(c[v as usize]);
            }
        }
        k
    }

    /// The spread values of `node` for this group.
    pub(crate) fn values_of(&self, idx: &Index<'_>, node: u32) -> Vec<u32> {
        self.spread_keys
            .iter()
            .map(|&k| idx.value(node, k))
            .collect()
    }
}

/// Decides the stops of every group and returns each group's state for placement.
pub(crate) fn reconcile(
    idx: &mut Index<'_>,
    nodes: &[Node],
    existing: &[Existing],
    demands: &[Demand],
    config: &SchedulerConfig,
    plan: &mut Plan,
) -> Vec<GroupState> {
    let mut by_group: FxMap<&crate::GroupKey, usize> = FxMap::default();
    let mut groups: Vec<GroupState> = Vec::with_capacity(demands.len());
    for (d, demand) in demands.iter().enumerate() {
        let mut gs = GroupState::new(idx, demand, config);
        if let Some(&first) = by_group.get(&demand.group) {
            gs.skip = true;
            plan.failures.push(Failure {
                demand: d,
                group: demand.group.clone(),
                missing: demand.count,
                reason: format!(
                    "the group is demanded twice (demands {first} and {d}); only the first is scheduled"
                ),
                explanation: None,
            });
        } else {
            by_group.insert(&demand.group, d);
        }
        groups.push(gs);
    }
    let mut of_group: Vec<Vec<usize>> = vec![Vec::new(); demands.len()];
    for (i, e) in existing.iter().enumerate() {
        if let Some(&d) = by_group.get(&e.group) {
            of_group[d].push(i);
        }
    }
    for (d, demand) in demands.iter().enumerate() {
        if groups[d].skip {
            continue;
        }
        let reasons = idx.class_reasons(nodes, demand, false);
        let mut alive: Vec<(usize, u32)> = Vec::with_capacity(of_group[d].len());
        for &e in &of_group[d] {
            let Some(n) = idx.existing_node[e] else {
                plan.stops.push(Stop {
                    existing: e,
                    reason: StopReason::Lost,
                });
                continue;
            };
            let reason = match reasons[idx.node_class[n as usize] as usize] {
                None => {
                    alive.push((e, n));
                    continue;
                }
                Some(StaticReason::NotReady | StaticReason::Duplicate) => StopReason::Lost,
                Some(_) => StopReason::Misplaced,
            };
            idx.release(&existing[e], n);
            plan.stops.push(Stop {
                existing: e,
                reason,
            });
        }
        let gs = &mut groups[d];
        for &(_, n) in &alive {
            gs.add(idx, n);
        }
        let count = demand.count as usize;
        if alive.len() > count {
            stop_surplus(idx, existing, gs, &alive, alive.len() - count, plan);
        }
        gs.need = demand.count.saturating_sub(alive.len() as u32);
    }
    groups
}

/// Stops `surplus` of `alive`: repeatedly from the spread bucket with the most instances, and in
/// it from the node with the most, so what remains is as even and as spread as it can be.
/// `O(surplus × log)`: buckets and nodes sit in heaps whose keys only go down.
fn stop_surplus(
    idx: &mut Index<'_>,
    existing: &[Existing],
    gs: &mut GroupState,
    alive: &[(usize, u32)],
    surplus: usize,
    plan: &mut Plan,
) {
    struct Bucket {
        values: Vec<u32>,
        on_node: FxMap<u32, Vec<usize>>,
        nodes: BinaryHeap<(u32, Reverse<u32>)>,
    }
    let mut bucket_of: FxMap<Vec<u32>, usize> = FxMap::default();
    let mut buckets: Vec<Bucket> = Vec::new();
    for &(e, n) in alive {
        let values = gs.values_of(idx, n);
        let b = *bucket_of.entry(values.clone()).or_insert_with(|| {
            buckets.push(Bucket {
                values,
                on_node: FxMap::default(),
                nodes: BinaryHeap::new(),
            });
            buckets.len() - 1
        });
        buckets[b].on_node.entry(n).or_default().push(e);
    }
    let mut heap: BinaryHeap<(u128, u64, usize)> = BinaryHeap::new();
    for (i, b) in buckets.iter_mut().enumerate() {
        let mut on: Vec<(u32, Reverse<u32>)> = b
            .on_node
            .iter()
            .map(|(&n, es)| (es.len() as u32, Reverse(n)))
            .collect();
        on.sort_unstable();
        b.nodes = on.into();
        heap.push((gs.bucket_key(&b.values), gs.rng.next_u64(), i));
    }
    let mut stopped = 0;
    while stopped < surplus {
        let Some((key, tag, b)) = heap.pop() else {
            break;
        };
        let now = gs.bucket_key(&buckets[b].values);
        if now != key {
            // Another bucket's stop lowered a count this bucket shares; re-queue with the truth.
            heap.push((now, tag, b));
            continue;
        }
        let bucket = &mut buckets[b];
        let Some((c, Reverse(n))) = bucket.nodes.pop() else {
            continue;
        };
        let Some(e) = bucket.on_node.get_mut(&n).and_then(Vec::pop) else {
            continue;
        };
        if c > 1 {
            bucket.nodes.push((c - 1, Reverse(n)));
        }
        let more = !bucket.nodes.is_empty();
        idx.release(&existing[e], n);
        gs.remove(idx, n);
        plan.stops.push(Stop {
            existing: e,
            reason: StopReason::Surplus,
        });
        stopped += 1;
        if more {
            heap.push((gs.bucket_key(&buckets[b].values), tag, b));
        }
    }
}
