//! Transactions per second of the embedded store with 1, 16 and 256 concurrent writers, with
//! group commit off (one fsync per transaction, the anchor) and on, in one run, so the lines
//! compare. Each writer does what a heartbeat does to its instances' status: a compare on its
//! own key's last revision and two puts (the key and a status key), on a real file.
//!
//! Run with `cargo bench -p berth-store --bench txn_throughput` (`BENCH_SECONDS` per figure,
//! default 3).

#![expect(
    clippy::disallowed_methods,
    reason = "a benchmark: it measures wall-clock durations"
)]

use std::time::{Duration, Instant};

use berth_store::{Compare, EmbeddedOptions, EmbeddedStore, Op, Store, Txn};

const VALUE: usize = 200;

struct Figure {
    txns: usize,
    elapsed: Duration,
    commits: u64,
    latencies: Vec<Duration>,
}

/// One writer: CAS-updates its own key until `end`, returning each transaction's latency.
async fn writer(s: EmbeddedStore, w: usize, end: Instant) -> Vec<Duration> {
    let key = format!("/bench/instances/{w:04}");
    let status = format!("/bench/status/{w:04}");
    let mut last = 0;
    let mut latencies = Vec::new();
    let mut i = 0u64;
    while Instant::now() < end {
        let mut value = format!("{{\"state\":\"running\",\"seq\":{i}}}").into_bytes();
        value.resize(VALUE, b' ');
        let t = Instant::now();
        let r = s
            .txn(Txn {
                compares: vec![Compare::mod_revision(&key, last)],
                success: vec![Op::put(&key, value.clone()), Op::put(&status, value)],
                failure: vec![],
            })
            .await
            .expect("the benchmark's store accepts writes");
        latencies.push(t.elapsed());
        assert!(r.succeeded, "a writer owns its key");
        last = r.revision;
        i += 1;
    }
    latencies
}

async fn run(group_commit: bool, writers: usize, seconds: f64) -> Figure {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open_with(
        dir.path().join("state.redb"),
        EmbeddedOptions {
            group_commit,
            ..EmbeddedOptions::default()
        },
    )
    .await
    .expect("open the store");
    // Warm-up: the file's first pages.
    for i in 0..20 {
        s.put(&format!("/warm/{i}"), vec![0; VALUE])
            .await
            .expect("put");
    }
    let commits = s.commits();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(s.clone(), w, end)))
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("writer"));
    }
    let elapsed = start.elapsed();
    Figure {
        txns: latencies.len(),
        elapsed,
        commits: s.commits() - commits,
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut anchor = [0.0f64; 3];
    for group_commit in [false, true] {
        for (k, writers) in [1usize, 16, 256].into_iter().enumerate() {
            let mut f = rt.block_on(run(group_commit, writers, seconds));
            f.latencies.sort_unstable();
            let rate = f.txns as f64 / f.elapsed.as_secs_f64();
            let speedup = if group_commit && anchor[k] > 0.0 {
                format!(", {:.1}x the anchor", rate / anchor[k])
            } else {
                anchor[k] = rate;
                String::new()
            };
            println!(
                "store txn: group commit {}, {writers} writers: {rate:.0} txns/s, p50 {:.1} ms, p99 {:.1} ms, {:.1} txns per fsync{speedup}",
                if group_commit { "on" } else { "off" },
                percentile(&f.latencies, 0.50),
                percentile(&f.latencies, 0.99),
                f.txns as f64 / f.commits.max(1) as f64,
            );
        }
    }
}
