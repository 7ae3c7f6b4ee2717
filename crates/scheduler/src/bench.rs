//! The in-memory simulation behind `berth bench scheduler` and `benches/scheduler.rs`: no
//! network, no store, one call to [`schedule`] on an empty cluster, timed.
//!
//! This module is the crate's only contact with a clock (to time the call) and with `/proc` (for
//! peak memory); [`schedule`] itself never reads either.
//!
//! The cluster: `nodes` nodes of 16 cores and 64 GiB in 2 regions × 3 zones (labels `region`,
//! `zone`); every tenth node has no Docker. The demand: `instances` split into groups of 1,000
//! (fewer if `instances` is small), each spread over `zone`, needing 50–150m CPU and
//! 128–384 MiB; half are constrained to one region, one in ten is a Docker service, one in fifty
//! holds a fixed host port. At 10,000 nodes and 1,000,000 instances the cluster is about 62 %
//! CPU and 40 % memory full, so sampling meets full nodes without being dominated by them.

use std::fmt;
use std::time::{Duration, Instant};

use berth_spec::model::{Constraint, ConstraintOp, DriverKind};

use crate::harness::service;
use crate::{schedule, Capacity, Demand, GroupKey, Node, SchedulerConfig};

/// What one simulated run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Instances demanded.
    pub instances: usize,
    /// Instances placed (equal to `instances` unless the cluster is too small).
    pub placed: usize,
    /// Wall time of the one [`schedule`] call.
    pub elapsed: Duration,
}

impl BenchResult {
    /// Placements per second of wall time.
    pub fn placements_per_sec(&self) -> f64 {
        self.placed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for BenchResult {
    /// `scheduler: 10000 nodes, 1000000 instances: 123456 placements/s (8.1 s)` — the line the
    /// README's performance table compares.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scheduler: {} nodes, {} instances: {:.0} placements/s ({:.2} s)",
            self.nodes,
            self.instances,
            self.placements_per_sec(),
            self.elapsed.as_secs_f64()
        )?;
        if self.placed != self.instances {
            write!(f, ", only {} placed", self.placed)?;
        }
        Ok(())
    }
}

/// The simulated cluster, for callers that want to run [`schedule`] on it themselves.
pub fn cluster(nodes: usize) -> Vec<Node> {
    (0..nodes)
        .map(|i| {
            let region = i % 2;
            let zone = (i / 2) % 3;
            Node {
                name: format!("node-{i}"),
                labels: [
                    ("region".to_string(), format!("r{region}")),
                    ("zone".to_string(), format!("r{region}-z{zone}")),
                ]
                .into_iter()
                .collect(),
                ready: true,
                cordoned: false,
                drivers: if i % 10 == 9 {
                    vec![DriverKind::Process]
                } else {
                    vec![DriverKind::Process, DriverKind::Docker]
                },
                capacity: Capacity {
                    cpu_millis: 16_000,
                    memory_bytes: 64 << 30,
                },
            }
        })
        .collect()
}

/// The simulated demand: `instances` in groups of up to 1,000.
pub fn demands(instances: usize) -> Vec<Demand> {
    let size = 1000.min(instances.div_ceil(10)).max(1);
    let mut out = Vec::new();
    let mut left = instances;
    let mut g = 0usize;
    while left > 0 {
        let count = size.min(left);
        left -= count;
        let mut svc = service(
            50 + (g as u64 * 37) % 101,
            (128 + (g as u64 * 53) % 257) << 20,
        );
        svc.placement.spread = vec!["zone".to_string()];
        if g % 2 == 1 {
            svc.placement.constraints = vec![Constraint {
                label: "region".to_string(),
                op: ConstraintOp::Eq(format!("r{}", (g / 2) % 2)),
            }];
        }
        if g % 10 == 3 {
            svc.process = None;
            svc.image = Some(format!("registry.example/app-{g}:v1"));
        }
        if g % 50 == 7 {
            svc.ports
                .insert("http".to_string(), 8000 + (g % 1000) as u16);
        }
        out.push(Demand {
            group: GroupKey::new("bench", "production", "all", &format!("svc-{g}")),
            count: count as u32,
            service: svc,
        });
        g += 1;
    }
    out
}

/// Builds the cluster and the demand, then times one [`schedule`] call with this seed.
pub fn bench(nodes: usize, instances: usize, seed: u64) -> BenchResult {
    let cluster = cluster(nodes);
    let demands = demands(instances);
    let config = SchedulerConfig::new(seed);
    #[expect(
        clippy::disallowed_methods,
        reason = "the bench's output is schedule()'s wall time; test support behind the `bench` feature"
    )]
    let start = Instant::now();
    let plan = schedule(&cluster, &[], &demands, &config);
    let elapsed = start.elapsed();
    BenchResult {
        nodes,
        instances,
        placed: plan.placements.len(),
        elapsed,
    }
}

/// The process's peak resident memory (`VmHWM` in `/proc/self/status`), in bytes; `None` off
/// Linux or if the file cannot be read.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The two lines `berth bench scheduler` and `cargo bench` print: the planning latency of one
/// call at 100 nodes × 10,000 instances (best of 5), then the big run's placements/s and peak
/// memory.
pub fn report(nodes: usize, instances: usize, seed: u64) -> [String; 2] {
    let small = (0..5)
        .map(|i| bench(100, 10_000, seed + i))
        .min_by_key(|r| r.elapsed)
        .map(|r| {
            format!(
                "scheduler: 100 nodes, 10000 instances: planning latency {:.1} ms (best of 5)",
                r.elapsed.as_secs_f64() * 1000.0
            )
        })
        .unwrap_or_default();
    let big = bench(nodes, instances, seed);
    let peak = peak_rss_bytes()
        .map(|b| format!(", peak RSS {} MiB", b >> 20))
        .unwrap_or_default();
    [small, format!("{big}{peak}")]
}
