//! `berth bench …`: benchmarks that print one comparable line each (never timed tests).

use berth_scheduler::bench::{bench, peak_rss_bytes};

/// Which benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// The scheduler, in memory with no network: placements/s, and planning latency at 100 nodes.
    Scheduler {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value_t = 1_000_000)]
        instances: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Runs a benchmark and prints its lines.
pub fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Scheduler {
            nodes,
            instances,
            seed,
        } => {
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
            Ok(())
        }
    }
}
