//! Leadership on a real etcd (issue 14, point 2): two in-process contenders on one prefix.
//! Exactly one leads; a crashed leader (its loop gone, its lease left to expire) is replaced
//! within the lease TTL plus one retry; a graceful stop resigns at once; and the fence: a
//! leader paused past its lease, whose successor has written meanwhile, cannot write with the
//! proof it held, and steps down when it runs again.

#[path = "../../store/tests/common/etcd.rs"]
mod etcd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_server::leadership::{
    fenced, EtcdLeadership, LeaderRecord, Leadership, CAMPAIGN_RETRY, LEADER_KEY, LEADER_TTL,
};
use berth_store::{Op, Store, Txn};
use tokio::sync::watch;

fn contender(store: berth_store::EtcdStore, id: &str) -> Arc<EtcdLeadership> {
    Arc::new(EtcdLeadership::new(
        store,
        LeaderRecord {
            id: id.into(),
            api: format!("http://{id}"),
            since_ms: 0,
        },
        LEADER_TTL,
    ))
}

/// A contender's campaign loop, stopped (and resigning) when the sender says so.
fn run(l: &Arc<EtcdLeadership>) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let l = l.clone();
    let task = tokio::spawn(async move { l.run(rx, || 1).await });
    (tx, task)
}

/// Waits until `cond`, failing after `within`; returns how long it took.
async fn until(within: Duration, what: &str, cond: impl Fn() -> bool) -> Duration {
    #[expect(
        clippy::disallowed_methods,
        reason = "failover times against real etcd leases, on the real monotonic clock"
    )]
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn leader_id(store: &berth_store::EtcdStore) -> Option<String> {
    let kv = store.get(LEADER_KEY).await.expect("read the leader key")?;
    let r: LeaderRecord = serde_json::from_slice(&kv.value).expect("a leader record");
    Some(r.id)
}

fn put(key: &str, value: &str) -> Txn {
    Txn {
        compares: vec![],
        success: vec![Op::put(key, value.as_bytes().to_vec())],
        failure: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_a_crashed_leader_is_replaced_and_a_stop_resigns_at_once() {
    let etcd = etcd::Etcd::start().await;
    let store = etcd.store("/ha").await;
    let a = contender(etcd.store("/ha").await, "a");
    let b = contender(etcd.store("/ha").await, "b");
    let (_stop_a, task_a) = run(&a);
    let (stop_b, task_b) = run(&b);
    until(Duration::from_secs(10), "someone leads", || {
        a.is_leading() || b.is_leading()
    })
    .await;
    // Give the other a few campaign rounds: it must not lead too.
    tokio::time::sleep(CAMPAIGN_RETRY * 3).await;
    assert!(a.is_leading() ^ b.is_leading(), "exactly one leads");
    let (leader, follower, leader_task) = if a.is_leading() {
        (a.clone(), b.clone(), task_a)
    } else {
        (b.clone(), a.clone(), task_b)
    };
    let name = if Arc::ptr_eq(&leader, &a) { "a" } else { "b" };
    assert_eq!(leader_id(&store).await.as_deref(), Some(name));
    assert!(
        !store
            .txn(fenced(follower.as_ref(), put("/x", "f")))
            .await
            .expect("txn")
            .succeeded,
        "a follower's fenced write fails"
    );
    assert!(
        store
            .txn(fenced(leader.as_ref(), put("/x", "l")))
            .await
            .expect("txn")
            .succeeded
    );

    // A crash: the loop is gone and nothing resigns; the lease runs out.
    leader_task.abort();
    let took = until(
        LEADER_TTL + CAMPAIGN_RETRY + Duration::from_secs(2),
        "the follower takes over within the TTL plus one retry",
        || follower.is_leading(),
    )
    .await;
    println!("failover after a crash: {took:?}");
    assert!(
        took <= LEADER_TTL + CAMPAIGN_RETRY + Duration::from_millis(1500),
        "{took:?}"
    );

    // A graceful stop of the new leader resigns: the other (restarted) leads within a retry.
    let (_stop_again, _again) = run(&leader);
    tokio::time::sleep(CAMPAIGN_RETRY * 2).await;
    assert!(follower.is_leading() && !leader.is_leading());
    let stop_follower = if Arc::ptr_eq(&follower, &b) {
        stop_b
    } else {
        _stop_a
    };
    stop_follower.send(true).expect("stop");
    let took = until(
        CAMPAIGN_RETRY * 3,
        "the other leads soon after a resignation",
        || leader.is_leading(),
    )
    .await;
    println!("failover after a graceful stop: {took:?}");
    assert!(!follower.is_leading());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_cannot_write_after_its_successor_and_steps_down() {
    let etcd = etcd::Etcd::start().await;
    let store = etcd.store("/ha").await;
    let old = contender(etcd.store("/ha").await, "old");
    let (_stop_old, old_task) = run(&old);
    until(Duration::from_secs(10), "the first leads", || {
        old.is_leading()
    })
    .await;
    // What the old leader would put on a write it decided just before its pause.
    let proof = old.fence().expect("a fence on etcd");

    // The pause: its loop stops renewing (the process is stopped), past the lease.
    old_task.abort();
    let new = contender(etcd.store("/ha").await, "new");
    let (_stop_new, _new_task) = run(&new);
    until(
        LEADER_TTL + CAMPAIGN_RETRY + Duration::from_secs(2),
        "the successor leads",
        || new.is_leading(),
    )
    .await;
    assert!(
        store
            .txn(fenced(new.as_ref(), put("/x", "new")))
            .await
            .expect("txn")
            .succeeded
    );

    // It wakes up and writes with the proof it held: etcd refuses, the successor's write stands.
    let late = Txn {
        compares: vec![proof],
        success: vec![Op::put("/x", b"old".to_vec())],
        failure: vec![],
    };
    assert!(
        !store.txn(late).await.expect("txn").succeeded,
        "the fence held"
    );
    assert!(
        !store
            .txn(fenced(old.as_ref(), put("/x", "old")))
            .await
            .expect("txn")
            .succeeded
    );
    assert!(
        !old.is_leading(),
        "past its lease it does not take itself for the leader"
    );
    let kv = store.get("/x").await.expect("get").expect("written");
    assert_eq!(kv.value, b"new");

    // Its loop resumes: it stays down, and the successor keeps the lead.
    let mut watching = old.leading();
    let (_stop_old, _old_again) = run(&old);
    tokio::time::sleep(CAMPAIGN_RETRY * 3).await;
    assert!(!*watching.borrow_and_update() && !old.is_leading());
    assert!(new.is_leading());
    assert_eq!(leader_id(&store).await.as_deref(), Some("new"));
}
