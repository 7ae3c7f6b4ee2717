//! Issue 10, item 4: a demand's count is untrusted input. Nothing is allocated in proportion
//! to it, so a count of 4294967295 on a small cluster is a quick failure that says how many
//! could not be placed, not an aborted process.

use std::time::{Duration, Instant};

use berth_scheduler::harness::{capacity, group, service, Harness};
use berth_scheduler::SchedulerConfig;

#[test]
fn a_huge_count_on_a_small_cluster_fails_quickly_without_a_huge_allocation() {
    let mut h = Harness::new(SchedulerConfig::new(1));
    for i in 0..3 {
        h.add_node(&format!("n{i}"), &[("region", "eu")], capacity(1, 1));
    }
    // 250m each: four fit on a 1-core node.
    h.demand(group("web"), u32::MAX, service(250, 1 << 20));
    let started = Instant::now();
    let plan = h.run().clone();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(plan.placements.len(), 12);
    assert_eq!(plan.failures.len(), 1);
    assert_eq!(plan.failures[0].missing, u32::MAX - 12);
    assert!(
        plan.placements.capacity() < 1 << 20,
        "placements reserved for {} entries",
        plan.placements.capacity()
    );
}
