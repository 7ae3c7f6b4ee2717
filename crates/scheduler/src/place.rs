//! Phase two: place what each group is missing, one instance at a time.
//!
//! Per placement: take the spread bucket with the fewest instances of the group (a min-heap),
//! sample up to `sample` feasible nodes in it, score them, and take the best. A bucket whose
//! sample finds nothing is scanned whole once; what still fits becomes the bucket's pool, and
//! nodes that stop fitting leave it (usage only grows during this phase, so a node that does not
//! fit now never fits again in this call). A bucket with nothing left is dropped; a group with no
//! bucket left has failed, and every node is checked once more to say why.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::index::{Ask, Index, StaticReason};
use crate::reconcile::GroupState;
use crate::rng::{FxMap, Rng};
use crate::{
    Demand, Explanation, Failure, Node, Placement, Plan, Reason, SchedulerConfig, Strategy,
};

/// The most placements reserved ahead for one group; beyond it the vector grows as it fills.
const PLACEMENT_RESERVE: usize = 1024;

/// The feasible nodes of one group that share the values of its spread keys.
struct Bucket {
    values: Vec<u32>,
    classes: Vec<u32>,
    /// `prefix[i]` = members of `classes[..i]`; the last entry is the bucket's size.
    prefix: Vec<usize>,
    /// Once sampling failed: the members that still fit, in no particular order.
    pool: Option<Vec<u32>>,
    /// The node this group was last placed on in this bucket (bin-pack keeps filling it).
    last: Option<u32>,
}

impl Bucket {
    fn size(&self) -> usize {
        self.prefix.last().copied().unwrap_or(0)
    }

    /// The `i`-th member, `i < size`.
    fn member(&self, idx: &Index<'_>, i: usize) -> u32 {
        let j = self.prefix.partition_point(|&p| p <= i).saturating_sub(1);
        let class = &idx.classes[self.classes[j] as usize];
        class.nodes[i - self.prefix[j]]
    }

    fn members<'i>(&'i self, idx: &'i Index<'_>) -> impl Iterator<Item = u32> + 'i {
        self.classes
            .iter()
            .flat_map(move |&c| idx.classes[c as usize].nodes.iter().copied())
    }
}

/// Places every group's missing instances, in demand order.
pub(crate) fn place_all(
    idx: &mut Index<'_>,
    nodes: &[Node],
    demands: &[Demand],
    config: &SchedulerConfig,
    sample: usize,
    groups: &mut [GroupState],
    plan: &mut Plan,
) {
    let mut cand: Vec<u32> = Vec::with_capacity(sample + 1);
    for (d, (demand, gs)) in demands.iter().zip(groups.iter_mut()).enumerate() {
        if gs.skip || gs.need == 0 {
            continue;
        }
        let reasons = idx.class_reasons(nodes, demand, true);
        let mut buckets: Vec<Bucket> = Vec::new();
        let mut bucket_of: FxMap<Vec<u32>, usize> = FxMap::default();
        for (c, class) in idx.classes.iter().enumerate() {
            if reasons[c].is_some() || class.nodes.is_empty() {
                continue;
            }
            let values: Vec<u32> = gs.spread_keys.iter().map(|&k| class.values[k]).collect();
            let b = *bucket_of.entry(values.clone()).or_insert_with(|| {
                buckets.push(Bucket {
                    values,
                    classes: Vec::new(),
                    prefix: vec![0],
                    pool: None,
                    last: None,
                });
                buckets.len() - 1
            });
            let bucket = &mut buckets[b];
            bucket.classes.push(c as u32);
            bucket.prefix.push(bucket.size() + class.nodes.len());
        }
        let mut heap: BinaryHeap<Reverse<(u128, u64, usize)>> = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| Reverse((gs.bucket_key(&b.values), gs.rng.next_u64(), i)))
            .collect();
        // Never in proportion to `need`: it is a count from a stack file, and what can be placed
        // is bounded by the nodes, not by the ask (`replicas: 4294967295` reserved 68 GB here).
        plan.placements
            .reserve((gs.need as usize).min(PLACEMENT_RESERVE));
        let mut placed = 0;
        while placed < gs.need {
            let Some(Reverse((key, tag, b))) = heap.pop() else {
                break;
            };
            let now = gs.bucket_key(&buckets[b].values);
            if now != key {
                // A placement in a bucket sharing a key value raised this one; re-queue.
                heap.push(Reverse((now, tag, b)));
                continue;
            }
            let GroupState {
                ask, per_node, rng, ..
            } = &mut *gs;
            let choice = Choice {
                ask,
                per_node,
                strategy: config.strategy,
                sample,
            };
            let Some(n) = pick(idx, &mut buckets[b], &choice, rng, &mut cand) else {
                continue; // exhausted: the bucket leaves the heap for good
            };
            idx.reserve(&gs.ask, n);
            gs.add(idx, n);
            buckets[b].last = Some(n);
            plan.placements.push(Placement {
                demand: d,
                node: n as usize,
            });
            placed += 1;
            heap.push(Reverse((gs.bucket_key(&buckets[b].values), tag, b)));
        }
        if placed < gs.need {
            let explanation = explain(idx, demand, gs, &reasons, nodes.len());
            plan.failures.push(Failure {
                demand: d,
                group: demand.group.clone(),
                missing: gs.need - placed,
                reason: explanation.to_string(),
                explanation: Some(explanation),
            });
        }
    }
}

/// What one group's choice depends on, besides the bucket and the PRNG.
struct Choice<'g> {
    ask: &'g Ask,
    per_node: &'g FxMap<u32, u32>,
    strategy: Strategy,
    sample: usize,
}

/// Chooses a node in `bucket` for one more instance, or `None` when nothing in it fits.
fn pick(
    idx: &Index<'_>,
    bucket: &mut Bucket,
    choice: &Choice<'_>,
    rng: &mut Rng,
    cand: &mut Vec<u32>,
) -> Option<u32> {
    cand.clear();
    let Choice {
        ask,
        strategy,
        sample,
        ..
    } = *choice;
    let tries = sample.saturating_mul(4);
    if bucket.pool.is_none() {
        let size = bucket.size();
        if size <= sample {
            cand.extend(bucket.members(idx).filter(|&n| idx.fits(ask, n)));
            if cand.is_empty() {
                return None;
            }
        } else {
            for _ in 0..tries {
                let n = bucket.member(idx, rng.below(size));
                if idx.fits(ask, n) {
                    cand.push(n);
                    if cand.len() == sample {
                        break;
                    }
                }
            }
            if cand.is_empty() {
                // The bucket is mostly full: find what is left once, and sample only that.
                let pool: Vec<u32> = bucket.members(idx).filter(|&n| idx.fits(ask, n)).collect();
                if pool.is_empty() {
                    return None;
                }
                bucket.pool = Some(pool);
            }
        }
    }
    if let Some(pool) = bucket.pool.as_mut() {
        let mut t = 0;
        while cand.len() < sample && !pool.is_empty() && t < tries {
            t += 1;
            let i = rng.below(pool.len());
            let n = pool[i];
            if idx.fits(ask, n) {
                cand.push(n);
            } else {
                pool.swap_remove(i);
            }
        }
        if cand.is_empty() {
            pool.retain(|&n| idx.fits(ask, n));
            cand.extend(pool.iter().take(sample).copied());
        }
        if cand.is_empty() {
            return None;
        }
    }
    if strategy == Strategy::Binpack {
        if let Some(last) = bucket.last {
            if idx.fits(ask, last) {
                cand.push(last);
            }
        }
    }
    let mut best: Option<(i64, u32)> = None;
    for &n in cand.iter() {
        let s = score(idx, choice, n);
        if best.is_none_or(|(b, _)| s > b) {
            best = Some((s, n));
        }
    }
    best.map(|(_, n)| n)
}

/// Per-mille of a capacity used once the instance is added; a zero capacity counts as full.
fn used_permille(used: u64, ask: u64, cap: u64) -> i64 {
    if cap == 0 {
        return if used.saturating_add(ask) == 0 {
            0
        } else {
            1000
        };
    }
    let after = u128::from(used.saturating_add(ask)) * 1000 / u128::from(cap);
    after.min(1000) as i64
}

/// Higher is better. The fit is the mean of CPU and memory use after placement (0..=1000);
/// spread prefers it low, bin-pack high. Under spread, every instance of the group already on
/// the node costs 1000, more than any fit difference: a second instance shares a node only when
/// every sampled node already has one.
fn score(idx: &Index<'_>, choice: &Choice<'_>, node: u32) -> i64 {
    let n = node as usize;
    let ask = choice.ask;
    let fit = (used_permille(idx.cpu_used[n], ask.cpu, idx.cpu_cap[n])
        + used_permille(idx.mem_used[n], ask.mem, idx.mem_cap[n]))
        / 2;
    match choice.strategy {
        Strategy::Binpack => fit,
        Strategy::Spread => {
            let same = choice.per_node.get(&node).copied().unwrap_or(0);
            1000 - fit - 1000 * i64::from(same)
        }
    }
}

/// Every node's first failing check for one more instance of the group, counted.
fn explain(
    idx: &Index<'_>,
    demand: &Demand,
    gs: &GroupState,
    reasons: &[Option<StaticReason>],
    total: usize,
) -> Explanation {
    let mut counts: BTreeMap<Reason, u32> = BTreeMap::new();
    for (class, reason) in idx.classes.iter().zip(reasons) {
        let reason = match *reason {
            None => {
                for &n in &class.nodes {
                    if let Some(r) = idx.dynamic_reason(&gs.ask, n) {
                        *counts.entry(r).or_insert(0) += 1;
                    }
                }
                continue;
            }
            Some(StaticReason::NotReady) => Reason::NotReady,
            Some(StaticReason::Duplicate) => Reason::DuplicateName,
            Some(StaticReason::Driver(d)) => Reason::MissingDriver(d),
            Some(StaticReason::Constraint(i)) => Reason::Constraint(
                demand
                    .service
                    .placement
                    .constraints
                    .get(i)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        };
        *counts.entry(reason).or_insert(0) += class.nodes.len() as u32;
    }
    let mut reasons: Vec<(Reason, u32)> = counts.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Explanation {
        nodes: total,
        reasons,
    }
}
