//! `cargo bench -p berth-scheduler --bench scheduler` — the in-memory scheduler simulation.
//!
//! `BERTH_BENCH_NODES` and `BERTH_BENCH_INSTANCES` (defaults 10,000 and 1,000,000) size the big
//! run; `BERTH_BENCH_SEED` seeds it. A second, small run (100 nodes, 10,000 instances) reports
//! the planning latency of one call, the figure a deploy waits for.

use berth_scheduler::bench::report;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let nodes = env("BERTH_BENCH_NODES", 10_000);
    let instances = env("BERTH_BENCH_INSTANCES", 1_000_000);
    let seed = env("BERTH_BENCH_SEED", 1) as u64;
    for line in report(nodes, instances, seed) {
        println!("{line}");
    }
}
