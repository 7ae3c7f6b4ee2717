//! `berth bench …`: benchmarks that print one comparable line each (never timed tests).

use berth_scheduler::bench::report;

mod control_plane;

/// Which benchmark.
#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// The scheduler, in memory with no network: placements/s, and planning latency at 100 nodes.
    Scheduler {
        /// How many simulated nodes to place on.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// How many instances to place.
        #[arg(long, default_value_t = 1_000_000)]
        instances: usize,
        /// The random seed (the same seed gives the same placements).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The control plane at scale: a real `berth server` on loopback with simulated agents and
    /// routers on its real API; instances running/s, heartbeat and router latencies, node-loss
    /// detection, and the server's CPU and peak RSS.
    ControlPlane(control_plane::Args),
}

/// Runs a benchmark and prints its lines.
pub fn run(which: Bench) -> anyhow::Result<()> {
    match which {
        Bench::Scheduler {
            nodes,
            instances,
            seed,
        } => {
            for line in report(nodes, instances, seed) {
                println!("{line}");
            }
            Ok(())
        }
        Bench::ControlPlane(args) => control_plane::run(args),
    }
}
