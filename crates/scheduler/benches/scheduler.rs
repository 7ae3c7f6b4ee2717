//! `cargo bench -p berth-scheduler --bench scheduler` — the in-memory scheduler simulation.
//!
//! `BERTH_BENCH_NODES` and `BERTH_BENCH_INSTANCES` (defaults 10,000 and 1,000,000) size the big
//! run; `BERTH_BENCH_SEED` seeds it. A second, small run (100 nodes, 10,000 instances) reports
//! the planning latency of one call, the figure a deploy waits for.

use berth_scheduler::bench::{bench, peak_rss_bytes};

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

    // The small run first, so the big run's memory does not disturb its timing.
    let small = (0..5)
        .map(|i| bench(100, 10_000, seed + i))
        .min_by_key(|r| r.elapsed);
    if let Some(small) = small {
        println!(
            "scheduler: 100 nodes, 10000 instances: planning latency {:.1} ms (best of 5)",
            small.elapsed.as_secs_f64() * 1000.0
        );
    }

    let big = bench(nodes, instances, seed);
    let peak = peak_rss_bytes()
        .map(|b| format!(", peak RSS {} MiB", b >> 20))
        .unwrap_or_default();
    println!("{big}{peak}");
}
