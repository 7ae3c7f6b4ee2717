//! Group commit under real concurrency, on a real file: many writers with compares on shared
//! keys end in the same state, with the same per-key history, as a serial run; revisions are
//! distinct and contiguous; a watch from revision 1 sees every event once, in order. Run with
//! grouping on, and off (the anchor), which must agree.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use berth_store::{
    Compare, EmbeddedOptions, EmbeddedStore, EventKind, Op, Store, Txn, WatchEvent, WatchStream,
};

const TASKS: usize = 64;
const TXNS_PER_TASK: usize = 50;
/// Counters shared by the tasks: TASKS / COUNTERS writers contend for each.
const COUNTERS: usize = 8;

fn counter(t: usize) -> String {
    format!("/c/{}", t % COUNTERS)
}

fn parse(v: &[u8]) -> i64 {
    std::str::from_utf8(v)
        .expect("utf-8")
        .parse()
        .expect("a number")
}

/// What one successful increment reported: the response's revision, the counter, its new value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Reported {
    revision: i64,
    counter: String,
    value: i64,
    mark: String,
}

/// Each task increments its counter TXNS_PER_TASK times by compare-and-swap (alternating a
/// mod_revision compare and a value compare), writing a mark key with the value it got in the
/// same transaction; a lost race is retried from a fresh read.
async fn increments(s: EmbeddedStore, t: usize) -> (Vec<Reported>, Vec<i64>) {
    let key = counter(t);
    let mut done = Vec::new();
    let mut failed_revisions = Vec::new();
    for j in 0..TXNS_PER_TASK {
        loop {
            let current = s.get(&key).await.expect("get");
            let (rev, n) = current
                .as_ref()
                .map_or((0, 0), |kv| (kv.mod_revision, parse(&kv.value)));
            let compare = match (&current, j % 2) {
                (Some(kv), 1) => Compare::value(&key, kv.value.clone()),
                _ => Compare::mod_revision(&key, rev),
            };
            let mark = format!("/t/{t:02}/{j:02}");
            let r = s
                .txn(Txn {
                    compares: vec![compare],
                    success: vec![
                        Op::put(&key, (n + 1).to_string()),
                        Op::put(&mark, (n + 1).to_string()),
                    ],
                    failure: vec![],
                })
                .await
                .expect("txn");
            if r.succeeded {
                done.push(Reported {
                    revision: r.revision,
                    counter: key.clone(),
                    value: n + 1,
                    mark,
                });
                break;
            }
            failed_revisions.push(r.revision);
        }
    }
    (done, failed_revisions)
}

async fn next(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(30), w.recv())
        .await
        .expect("an event within 30 s")
        .expect("the watch is open")
        .expect("no watch error")
}

/// Reads exactly `n` events from `w` and checks that nothing more comes.
async fn take(w: &mut WatchStream, n: usize) -> Vec<WatchEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next(w).await);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), w.recv())
            .await
            .is_err(),
        "no event beyond the {n} written"
    );
    out
}

async fn concurrent_txns_equal_a_serial_run(options: EmbeddedOptions) -> (u64, i64) {
    let grouped = options.group_commit;
    let dir = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open_with(dir.path().join("state.redb"), options)
        .await
        .expect("open");
    let mut live = s.watch("/", 1).await.expect("watch");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(increments(s.clone(), t)))
        .collect();
    let events_expected = TASKS * TXNS_PER_TASK * 2;
    let live_events = tokio::spawn(async move { take(&mut live, events_expected).await });
    let mut reported = Vec::new();
    let mut failed = Vec::new();
    for task in tasks {
        let (done, f) = task.await.expect("task");
        reported.extend(done);
        failed.extend(f);
    }
    let revision = s.revision().await.expect("revision");
    let total = (TASKS * TXNS_PER_TASK) as i64;

    // Every successful response has its own revision, and together they are 1..=revision.
    reported.sort();
    let revisions: Vec<i64> = reported.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, (1..=total).collect::<Vec<_>>());
    assert_eq!(revision, total);
    assert!(failed.iter().all(|&r| (0..=revision).contains(&r)));

    // Per counter, the values in revision order are 1, 2, 3, …: no lost update, as if serial.
    let mut per_counter: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in &reported {
        per_counter.entry(&r.counter).or_default().push(r.value);
    }
    let per_key = (TASKS / COUNTERS * TXNS_PER_TASK) as i64;
    assert_eq!(per_counter.len(), COUNTERS);
    for values in per_counter.values() {
        assert_eq!(values, &(1..=per_key).collect::<Vec<_>>());
    }

    // A watch from revision 1, started before the writers (live) and after them (the log),
    // sees every event exactly once, in order, matching the responses.
    let replayed = take(&mut s.watch("/", 1).await.expect("watch"), events_expected).await;
    let live_events = live_events.await.expect("live watch");
    for events in [&live_events, &replayed] {
        let mut it = events.chunks(2);
        for r in &reported {
            let pair = it.next().expect("two events per revision");
            let keys: Vec<(&str, i64, i64, EventKind)> = pair
                .iter()
                .map(|e| (e.kv.key.as_str(), e.revision, parse(&e.kv.value), e.kind))
                .collect();
            assert_eq!(
                keys,
                vec![
                    (r.counter.as_str(), r.revision, r.value, EventKind::Put),
                    (r.mark.as_str(), r.revision, r.value, EventKind::Put),
                ]
            );
            let c = &pair[0].kv;
            assert_eq!(
                (c.mod_revision, c.version),
                (r.revision, r.value),
                "version history of {}",
                r.counter
            );
        }
    }

    // The final state is what replaying the events one at a time gives.
    let mut serial: HashMap<String, (Vec<u8>, i64, i64, i64)> = HashMap::new();
    for e in &replayed {
        let entry = serial.entry(e.kv.key.clone()).or_insert((vec![], 0, 0, 0));
        let create = if entry.3 == 0 { e.revision } else { entry.1 };
        *entry = (e.kv.value.clone(), create, e.revision, entry.3 + 1);
    }
    let state = s.range("/").await.expect("range");
    assert_eq!(state.revision, revision);
    assert_eq!(state.kvs.len(), serial.len());
    assert_eq!(state.kvs.len(), COUNTERS + TASKS * TXNS_PER_TASK);
    for kv in &state.kvs {
        assert_eq!(
            serial.get(&kv.key),
            Some(&(
                kv.value.clone(),
                kv.create_revision,
                kv.mod_revision,
                kv.version
            )),
            "{}",
            kv.key
        );
    }
    let commits = s.commits();
    eprintln!(
        "group_commit {grouped}: {revision} revisions in {commits} commits, {} failed compares",
        failed.len()
    );
    (commits, revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_txns_with_group_commit_equal_a_serial_run() {
    let (commits, revisions) = concurrent_txns_equal_a_serial_run(EmbeddedOptions::default()).await;
    assert!(
        (commits as i64) < revisions,
        "64 concurrent writers share commits: {commits} commits for {revisions} revisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_txns_without_group_commit_equal_a_serial_run() {
    let (commits, revisions) = concurrent_txns_equal_a_serial_run(EmbeddedOptions {
        group_commit: false,
        ..EmbeddedOptions::default()
    })
    .await;
    assert_eq!(commits as i64, revisions, "one commit per revision");
}

/// Groups bounded to 3 transactions still give every writer its answer, in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_groups_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open_with(
        dir.path().join("state.redb"),
        EmbeddedOptions {
            max_group_txns: 3,
            ..EmbeddedOptions::default()
        },
    )
    .await
    .expect("open");
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..10 {
                    revs.push(
                        s.put(&format!("/w/{w:02}/{i}"), vec![b'x'; 10])
                            .await
                            .expect("put"),
                    );
                }
                revs
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        let revs = w.await.expect("writer");
        assert!(revs.windows(2).all(|p| p[0] < p[1]), "a writer's own order");
        all.extend(revs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=320).collect::<Vec<i64>>());
    let commits = s.commits();
    assert!(commits >= 320 / 3, "at most 3 per group: {commits} commits");
}

/// Once the last answer is in, dropping the last handle closes the file: reopening at once is
/// not refused as locked (the group writer lets go of the store before it answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_can_be_reopened_as_soon_as_the_writers_are_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.redb");
    for round in 0..30 {
        let s = EmbeddedStore::open(&path)
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopen: {e}"));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move { s.put(&format!("/r/{w}"), vec![b'x'; 8]).await })
            })
            .collect();
        for w in writers {
            w.await.expect("writer").expect("put");
        }
        drop(s);
    }
}
