//! The figures and their output lines: percentiles over samples, and the exact wording of each
//! `control-plane: …` line (pure, so the wording is tested without a cluster).

use std::time::Duration;

/// p50 and p99 of a set of samples (nearest rank), and how many there were.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub p50: Duration,
    pub p99: Duration,
    pub count: usize,
}

impl Spread {
    /// The spread of `samples` (sorted here); `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        Some(Spread {
            p50: nearest_rank(&samples, 50),
            p99: nearest_rank(&samples, 99),
            count: samples.len(),
        })
    }
}

/// The nearest-rank percentile `p` (0–100) of non-empty sorted `samples`.
fn nearest_rank(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `control-plane: 100000 instances running in 12.3 s (8130/s) on 10000 nodes`
pub fn running_line(instances: usize, took: Duration, nodes: usize) -> String {
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 {
        (instances as f64 / secs).round() as u64
    } else {
        0
    };
    format!(
        "control-plane: {instances} instances running in {secs:.1} s ({rate}/s) on {nodes} nodes"
    )
}

/// `control-plane: heartbeat p50 2.1 ms, p99 9.8 ms at 10000 nodes`
pub fn heartbeat_line(spread: &Spread, nodes: usize) -> String {
    format!(
        "control-plane: heartbeat p50 {:.1} ms, p99 {:.1} ms at {nodes} nodes",
        ms(spread.p50),
        ms(spread.p99)
    )
}

/// `control-plane: routers applied a change p50 5.0 ms, p99 21.0 ms (100 routers)`
pub fn routers_line(spread: &Spread, routers: usize) -> String {
    format!(
        "control-plane: routers applied a change p50 {:.1} ms, p99 {:.1} ms ({routers} routers)",
        ms(spread.p50),
        ms(spread.p99)
    )
}

/// `control-plane: node loss detected in 3.4 s (ttl 3 s)`
pub fn node_loss_line(took: Duration, ttl: Duration) -> String {
    format!(
        "control-plane: node loss detected in {:.1} s (ttl {} s)",
        took.as_secs_f64(),
        ttl.as_secs()
    )
}

/// `control-plane: server cpu 31.2 s, peak rss 512 MiB`
pub fn server_line(cpu_seconds: f64, peak_rss_bytes: u64) -> String {
    format!(
        "control-plane: server cpu {cpu_seconds:.1} s, peak rss {} MiB",
        peak_rss_bytes / (1024 * 1024)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Spread::of((1..=100).rev().map(ms).collect()).unwrap();
        assert_eq!((s.p50, s.p99, s.count), (ms(50), ms(99), 100));
        let one = Spread::of(vec![ms(7)]).unwrap();
        assert_eq!((one.p50, one.p99), (ms(7), ms(7)));
        let two = Spread::of(vec![ms(2), ms(1)]).unwrap();
        assert_eq!((two.p50, two.p99), (ms(1), ms(2)));
        assert_eq!(Spread::of(vec![]), None);
    }

    #[test]
    fn lines_read_as_the_issue_writes_them() {
        assert_eq!(
            running_line(100_000, Duration::from_millis(12_300), 10_000),
            "control-plane: 100000 instances running in 12.3 s (8130/s) on 10000 nodes"
        );
        let hb = Spread {
            p50: Duration::from_micros(2_100),
            p99: Duration::from_micros(9_800),
            count: 1,
        };
        assert_eq!(
            heartbeat_line(&hb, 10_000),
            "control-plane: heartbeat p50 2.1 ms, p99 9.8 ms at 10000 nodes"
        );
        let r = Spread {
            p50: ms(5),
            p99: ms(21),
            count: 1,
        };
        assert_eq!(
            routers_line(&r, 100),
            "control-plane: routers applied a change p50 5.0 ms, p99 21.0 ms (100 routers)"
        );
        assert_eq!(
            node_loss_line(ms(3_400), Duration::from_secs(3)),
            "control-plane: node loss detected in 3.4 s (ttl 3 s)"
        );
        assert_eq!(
            server_line(31.2, 512 * 1024 * 1024),
            "control-plane: server cpu 31.2 s, peak rss 512 MiB"
        );
    }
}
