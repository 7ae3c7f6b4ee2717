//! The store conformance suite (issue 14): the same tests against the embedded store and a real
//! etcd (one member, started by the test on loopback ports chosen at run time): CAS on
//! mod_revision, watches from a revision (replay, live, one transaction's events, tombstones),
//! continuity across a compaction and the error that makes a reader list again, prefix
//! isolation, large values.
//!
//! Revisions are compared relative to the store's revision at the start of a test: etcd's
//! start at 1, the embedded store's at 0.

mod common;

use std::sync::Arc;
use std::time::Duration;

use berth_store::{
    Compare, EmbeddedOptions, EmbeddedStore, EtcdStore, EventKind, Op, Store, StoreError, Txn,
    WatchEvent, WatchStream,
};
use common::etcd::Etcd;

/// How many revisions the embedded store keeps in these tests: a compaction happens by itself
/// once more are written. etcd is compacted explicitly at the same point.
const HISTORY: u64 = 10;

/// One backend under test.
struct Subject {
    store: Arc<dyn Store>,
    etcd: Option<(EtcdStore, Arc<Etcd>)>,
    _dir: Option<tempfile::TempDir>,
}

impl Subject {
    async fn embedded() -> Subject {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = EmbeddedOptions {
            history: HISTORY,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(dir.path().join("state.redb"), options)
            .await
            .expect("open");
        Subject {
            store: Arc::new(store),
            etcd: None,
            _dir: Some(dir),
        }
    }

    async fn etcd() -> Subject {
        let etcd = Arc::new(Etcd::start().await);
        let store = etcd.store("/berth").await;
        Subject {
            store: Arc::new(store.clone()),
            etcd: Some((store, etcd)),
            _dir: None,
        }
    }

    /// Makes sure history up to `revision` is gone: etcd is compacted; the embedded store has
    /// compacted by itself once `HISTORY` later revisions exist (the tests write them).
    async fn compacted_through(&self, revision: i64) {
        if let Some((etcd, _)) = &self.etcd {
            etcd.compact(revision).await.expect("compact");
        }
    }
}

/// Runs one conformance test against both backends.
macro_rules! conformance {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name(super::Subject::embedded().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$name(super::Subject::etcd().await).await;
            }
        }
    };
}

conformance!(cas_on_mod_revision);
conformance!(watch_from_a_revision);
conformance!(watch_across_a_compaction);
conformance!(prefixes_are_isolated);
conformance!(large_values);

async fn next(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("watch event within 10s")
        .expect("watch still open")
        .expect("watch event, not error")
}

async fn cas_on_mod_revision(s: Subject) {
    let s = s.store.as_ref();
    let r0 = s.revision().await.expect("revision");
    let created = s.cas("/k", 0, b"v1".to_vec()).await.expect("cas");
    let rev1 = created.expect("create-if-absent succeeds on an absent key");
    assert!(rev1 > r0);
    assert_eq!(s.cas("/k", 0, b"again".to_vec()).await.expect("cas"), None);
    let kv = s.get("/k").await.expect("get").expect("present");
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.mod_revision,
            kv.create_revision,
            kv.version
        ),
        (&b"v1"[..], rev1, rev1, 1)
    );
    assert_eq!(
        s.cas("/k", rev1 - 1, b"stale".to_vec()).await.expect("cas"),
        None
    );
    let rev2 = s
        .cas("/k", rev1, b"v2".to_vec())
        .await
        .expect("cas")
        .expect("the current mod_revision wins");
    let kv = s.get("/k").await.expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v2"[..], 2));

    // Value compares, the failure branch, and a failed compare that changes nothing.
    let resp = s
        .txn(Txn {
            compares: vec![Compare::value("/k", "v1")],
            success: vec![Op::put("/k", "never")],
            failure: vec![Op::put("/other", "x")],
        })
        .await
        .expect("txn");
    assert!(!resp.succeeded);
    assert_eq!(
        s.get("/other")
            .await
            .expect("get")
            .expect("failure ran")
            .value,
        b"x"
    );
    let before = s.revision().await.expect("revision");
    let resp = s
        .txn(Txn {
            compares: vec![Compare::absent("/k")],
            success: vec![Op::put("/k", "never")],
            failure: vec![],
        })
        .await
        .expect("txn");
    assert!(!resp.succeeded);
    assert_eq!(resp.revision, before, "answers the current revision");
    assert_eq!(
        s.revision().await.expect("revision"),
        before,
        "nothing changed"
    );
    assert_eq!(
        s.get("/k").await.expect("get").expect("kept").mod_revision,
        rev2
    );

    // An absent key never matches a value compare.
    let resp = s
        .txn(Txn {
            compares: vec![Compare::value("/absent", "")],
            success: vec![Op::put("/absent", "x")],
            failure: vec![],
        })
        .await
        .expect("txn");
    assert!(!resp.succeeded);

    // A key written twice in one branch is refused, and nothing is written.
    let err = s
        .txn(Txn {
            compares: vec![],
            success: vec![Op::put("/dup", "a"), Op::put("/dup", "b")],
            failure: vec![],
        })
        .await
        .expect_err("refused");
    assert!(matches!(err, StoreError::InvalidTxn(_)), "{err}");
    assert!(s.get("/dup").await.expect("get").is_none());

    // Deletes count what existed.
    s.put("/d/1", b"1".to_vec()).await.expect("put");
    s.put("/d/2", b"2".to_vec()).await.expect("put");
    assert!(s.delete("/d/1").await.expect("delete"));
    assert!(!s.delete("/d/1").await.expect("delete again"));
    assert_eq!(s.delete_prefix("/d/").await.expect("delete prefix"), 1);
}

async fn watch_from_a_revision(s: Subject) {
    let s = s.store.as_ref();
    let r0 = s.revision().await.expect("revision");
    let r1 = s.put("/a/1", b"x".to_vec()).await.expect("put");
    s.put("/b/1", b"y".to_vec())
        .await
        .expect("put other prefix");
    let r3 = s.put("/a/1", b"z".to_vec()).await.expect("put");
    s.delete("/a/1").await.expect("delete");
    let r4 = s.revision().await.expect("revision");
    assert!(r0 < r1 && r1 < r3 && r3 < r4);

    let mut w = s.watch("/a/", r0 + 1).await.expect("watch");
    let e = next(&mut w).await;
    assert_eq!(
        (e.revision, e.kind, e.kv.value.as_slice()),
        (r1, EventKind::Put, &b"x"[..])
    );
    assert_eq!(e.prev, None);
    let e = next(&mut w).await;
    assert_eq!((e.revision, e.kind), (r3, EventKind::Put));
    assert_eq!(e.prev.as_ref().expect("prev").value, b"x");
    assert_eq!((e.kv.version, e.kv.create_revision), (2, r1));
    let e = next(&mut w).await;
    assert_eq!(
        (e.revision, e.kind, e.kv.key.as_str()),
        (r4, EventKind::Delete, "/a/1")
    );
    assert_eq!(
        (
            e.kv.mod_revision,
            e.kv.create_revision,
            e.kv.version,
            e.kv.value.len()
        ),
        (r4, 0, 0, 0),
        "a tombstone"
    );
    assert_eq!(e.prev.as_ref().expect("prev").value, b"z");

    // Live: one transaction's events share its revision, in op order.
    let resp = s
        .txn(Txn {
            success: vec![
                Op::put("/a/2", "p"),
                Op::put("/b/2", "q"),
                Op::put("/a/3", "r"),
            ],
            ..Txn::default()
        })
        .await
        .expect("txn");
    let got: Vec<_> = [next(&mut w).await, next(&mut w).await]
        .into_iter()
        .map(|e| (e.revision, e.kv.key))
        .collect();
    assert_eq!(
        got,
        [
            (resp.revision, "/a/2".to_string()),
            (resp.revision, "/a/3".to_string())
        ]
    );
    // A watch from "now" sees only later changes.
    let mut later = s.watch("/a/", 0).await.expect("watch from now");
    let r = s.put("/a/4", b"n".to_vec()).await.expect("put");
    let e = next(&mut later).await;
    assert_eq!((e.revision, e.kv.key.as_str()), (r, "/a/4"));
}

/// A watch from a compacted revision fails with `Compacted`, at once or as its first item.
async fn expect_compacted(s: &dyn Store, prefix: &str, from: i64) -> i64 {
    let err = match s.watch(prefix, from).await {
        Err(e) => e,
        Ok(mut w) => tokio::time::timeout(Duration::from_secs(10), w.recv())
            .await
            .expect("an answer within 10s")
            .expect("an item, not the end")
            .expect_err("the compaction error, not an event"),
    };
    match err {
        StoreError::Compacted {
            compact_revision, ..
        } => {
            assert!(compact_revision >= from, "{err}");
            compact_revision
        }
        other => panic!("expected Compacted, got {other}"),
    }
}

async fn watch_across_a_compaction(subject: Subject) {
    let s = subject.store.as_ref();
    let r0 = s.revision().await.expect("revision");
    // A live watcher from before the writes and the compaction.
    let mut live = s.watch("/c/", r0 + 1).await.expect("watch");
    let total = 3 * HISTORY as i64;
    for i in 0..total {
        s.put(&format!("/c/{i:03}"), vec![b'x'; 10])
            .await
            .expect("put");
    }
    for i in 0..total {
        let e = next(&mut live).await;
        assert_eq!(
            (e.revision, e.kv.key.clone()),
            (r0 + 1 + i, format!("/c/{i:03}")),
            "gap-free, in order"
        );
    }
    subject.compacted_through(r0 + 2 * HISTORY as i64).await;
    // The live watcher goes on past the compaction.
    let r = s.put("/c/after", b"a".to_vec()).await.expect("put");
    let e = next(&mut live).await;
    assert_eq!((e.revision, e.kv.key.as_str()), (r, "/c/after"));

    // A watch from before the compaction gets the error that says to list again…
    let compact = expect_compacted(s, "/c/", r0 + 1).await;
    assert!(compact > r0);
    // …and listing then watching from the listed revision + 1 misses nothing.
    let listed = s.range("/c/").await.expect("range");
    assert_eq!(listed.kvs.len() as i64, total + 1);
    let mut again = s.watch("/c/", listed.revision + 1).await.expect("watch");
    let r = s.put("/c/later", b"l".to_vec()).await.expect("put");
    let e = next(&mut again).await;
    assert_eq!((e.revision, e.kv.key.as_str()), (r, "/c/later"));
}

async fn prefixes_are_isolated(subject: Subject) {
    let s = subject.store.as_ref();
    s.put("/p/1", b"a".to_vec()).await.expect("put");
    s.put("/p2/1", b"b".to_vec()).await.expect("put");
    s.put("/q/1", b"c".to_vec()).await.expect("put");
    let keys = |r: berth_store::RangeResponse| -> Vec<String> {
        r.kvs.into_iter().map(|kv| kv.key).collect()
    };
    assert_eq!(keys(s.range("/p/").await.expect("range")), vec!["/p/1"]);
    assert_eq!(
        keys(s.range("/p").await.expect("range")),
        vec!["/p/1", "/p2/1"],
        "a prefix is a byte prefix"
    );
    assert_eq!(keys(s.range("").await.expect("range")).len(), 3);
    let mut w = s.watch("/p/", 0).await.expect("watch");
    s.put("/p2/2", b"x".to_vec()).await.expect("put");
    let r = s.put("/p/2", b"y".to_vec()).await.expect("put");
    let e = next(&mut w).await;
    assert_eq!(
        (e.revision, e.kv.key.as_str()),
        (r, "/p/2"),
        "the other prefix was not seen"
    );
    assert_eq!(s.delete_prefix("/p/").await.expect("delete"), 2);
    assert_eq!(
        keys(s.range("").await.expect("range")),
        vec!["/p2/1", "/p2/2", "/q/1"]
    );

    // etcd: two berth clusters under two prefixes of one etcd do not see each other, even
    // where one prefix is the start of the other.
    if let Some((_, etcd)) = &subject.etcd {
        let other = etcd.store("/berth2").await;
        other.put("/p2/1", b"theirs".to_vec()).await.expect("put");
        let mut theirs = other.watch("", 0).await.expect("watch");
        let mut ours = s.watch("", 0).await.expect("watch");
        s.put("/mine", b"m".to_vec()).await.expect("put");
        let r = other.put("/yours", b"y".to_vec()).await.expect("put");
        assert_eq!(next(&mut theirs).await.revision, r, "only its own write");
        assert_eq!(next(&mut ours).await.kv.key, "/mine");
        assert_eq!(
            keys(other.range("").await.expect("range")),
            vec!["/p2/1", "/yours"]
        );
        assert_eq!(
            s.get("/p2/1").await.expect("get").expect("ours").value,
            b"b",
            "ours kept"
        );
        assert_eq!(s.delete_prefix("").await.expect("delete all"), 4);
        assert_eq!(
            other.range("").await.expect("range").kvs.len(),
            2,
            "theirs kept"
        );
        // Keys are paths under the prefix: one without a leading `/` is refused.
        let err = s.put("bare", b"x".to_vec()).await.expect_err("refused");
        assert!(matches!(err, StoreError::InvalidTxn(_)), "{err}");
    }
}

async fn large_values(subject: Subject) {
    let s = subject.store.as_ref();
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r0 = s.revision().await.expect("revision");
    let mut w = s.watch("/big/", r0 + 1).await.expect("watch");
    // Six values of 1 MiB: their range is larger than gRPC's default 4 MiB message.
    for i in 0..6 {
        s.put(&format!("/big/{i}"), big.clone())
            .await
            .expect("put 1 MiB");
    }
    let kv = s.get("/big/3").await.expect("get").expect("present");
    assert!(kv.value == big, "the value read back is the value written");
    let listed = s.range("/big/").await.expect("range of 6 MiB");
    assert_eq!(listed.kvs.len(), 6);
    assert!(listed.kvs.iter().all(|kv| kv.value == big));
    for _ in 0..6 {
        let e = next(&mut w).await;
        assert!(e.kv.value == big, "{} carries the whole value", e.kv.key);
    }
}

/// The three-member helper (for the HA tests to come) forms one cluster: a write through one
/// member is read, and watched, through another; a store given every member keeps working
/// when one of them is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_member_cluster_is_one_store() {
    let mut etcd = Etcd::cluster(3).await;
    let first = EtcdStore::connect(&etcd.endpoints[..1], "/berth")
        .await
        .expect("member 0");
    let last = EtcdStore::connect(&etcd.endpoints[2..], "/berth")
        .await
        .expect("member 2");
    let mut w = last.watch("/", 0).await.expect("watch on member 2");
    let r = first
        .put("/k", b"v".to_vec())
        .await
        .expect("put via member 0");
    assert_eq!(
        last.get("/k")
            .await
            .expect("get")
            .expect("replicated")
            .mod_revision,
        r
    );
    assert_eq!(next(&mut w).await.revision, r);
    let all = etcd.store("/berth").await;
    etcd.kill_member(0);
    let r2 = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match all.put("/k2", b"w".to_vec()).await {
                Ok(r) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("a write lands with one member of three gone");
    assert!(r2 > r);
}
