//! Group commit from the inside: groups formed by hand with [`Inner::run_group`], so that which
//! transactions share a commit is certain (the integration tests in `tests/group_commit.rs`
//! form them by concurrency).

use std::time::Duration;

use super::*;
use crate::Compare;

async fn store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = EmbeddedStore::open(dir.path().join("state.redb"))
        .await
        .expect("open");
    (dir, s)
}

fn put(key: &str, value: &str) -> Txn {
    Txn {
        compares: vec![],
        success: vec![Op::put(key, value)],
        failure: vec![],
    }
}

fn response(succeeded: bool, revision: i64, responses: Vec<OpResponse>) -> TxnResponse {
    TxnResponse {
        succeeded,
        revision,
        responses,
    }
}

async fn next_event(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("an event within 10 s")
        .expect("the watch is open")
        .expect("no watch error")
}

#[tokio::test]
async fn a_group_where_a_middle_compare_fails_applies_the_others_in_one_commit() {
    let (_dir, s) = store().await;
    let mut w = s.watch("/", 1).await.expect("watch");
    let group = [
        put("/a", "1"),
        // Sees the group's first write: /a is at revision 1 now.
        Txn {
            compares: vec![Compare::mod_revision("/a", 1)],
            success: vec![Op::put("/b", "after a")],
            failure: vec![],
        },
        // Fails (the key exists since the first transaction), empty failure branch: no revision.
        Txn {
            compares: vec![Compare::absent("/a")],
            success: vec![Op::put("/never", "x")],
            failure: vec![],
        },
        // Fails, with a failure branch: its own revision.
        Txn {
            compares: vec![Compare::value("/b", "something else")],
            success: vec![Op::put("/never", "x")],
            failure: vec![Op::put("/c", "failure branch")],
        },
        // Changes nothing either (absent key).
        Txn {
            compares: vec![],
            success: vec![Op::delete("/missing")],
            failure: vec![],
        },
        put("/a", "2"),
    ];
    let results = s.inner.run_group(&group);
    let results: Vec<TxnResponse> = results.into_iter().map(|r| r.expect("ok")).collect();
    assert_eq!(
        results,
        vec![
            response(true, 1, vec![OpResponse::Put]),
            response(true, 2, vec![OpResponse::Put]),
            response(false, 2, vec![]),
            response(false, 3, vec![OpResponse::Put]),
            response(true, 3, vec![OpResponse::Delete { deleted: 0 }]),
            response(true, 4, vec![OpResponse::Put]),
        ]
    );
    assert_eq!(s.commits(), 1, "one durable commit for the whole group");
    assert_eq!(s.revision().await.expect("revision"), 4);
    assert_eq!(s.get("/never").await.expect("get"), None);
    let a = s.get("/a").await.expect("get").expect("/a");
    assert_eq!(
        (
            a.value.as_slice(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"2"[..], 1, 4, 2)
    );
    // Each revision has its own change-log entry, published in order.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut w).await;
        seen.push((e.revision, e.kv.key));
    }
    assert_eq!(
        seen,
        vec![
            (1, "/a".to_string()),
            (2, "/b".to_string()),
            (3, "/c".to_string()),
            (4, "/a".to_string()),
        ]
    );
    // And the log replays them the same way.
    let mut replay = s.watch("/", 1).await.expect("watch");
    for (rev, key) in &seen {
        let e = next_event(&mut replay).await;
        assert_eq!((&e.revision, &e.kv.key), (rev, key));
    }
}

#[tokio::test]
async fn a_group_that_changes_nothing_commits_nothing() {
    let (_dir, s) = store().await;
    s.put("/a", b"1".to_vec()).await.expect("put");
    let commits = s.commits();
    let group = [
        Txn {
            compares: vec![Compare::absent("/a")],
            success: vec![Op::put("/b", "x")],
            failure: vec![],
        },
        Txn {
            compares: vec![],
            success: vec![Op::delete_prefix("/nothing/")],
            failure: vec![],
        },
    ];
    let results: Vec<TxnResponse> = s
        .inner
        .run_group(&group)
        .into_iter()
        .map(|r| r.expect("ok"))
        .collect();
    assert_eq!(
        results,
        vec![
            response(false, 1, vec![]),
            response(true, 1, vec![OpResponse::Delete { deleted: 0 }]),
        ]
    );
    assert_eq!(s.commits(), commits, "nothing to commit");
    assert_eq!(s.revision().await.expect("revision"), 1);
}

#[tokio::test]
async fn a_transaction_that_fails_on_its_own_fails_alone() {
    let (_dir, s) = store().await;
    // A record that does not decode, written behind the store's back.
    s.inner
        .db
        .with(|h| {
            let wtx = h.begin_write().map_err(|e| s.inner.db.err("test", e))?;
            {
                let mut kv = wtx.open_table(KV).map_err(|e| s.inner.db.err("test", e))?;
                kv.insert("/bad", &b"\xff"[..])
                    .map_err(|e| s.inner.db.err("test", e))?;
            }
            wtx.commit().map_err(|e| s.inner.db.err("test", e))
        })
        .expect("write the bad record");
    let group = [put("/a", "1"), put("/bad", "x"), put("/c", "3")];
    let results = s.inner.run_group(&group);
    assert_eq!(
        results[0].as_ref().expect("first"),
        &response(true, 1, vec![OpResponse::Put])
    );
    assert!(
        matches!(&results[1], Err(StoreError::Corrupt { detail, .. }) if detail.contains("/bad")),
        "{:?}",
        results[1]
    );
    assert_eq!(
        results[2].as_ref().expect("third"),
        &response(true, 2, vec![OpResponse::Put])
    );
    assert_eq!(s.revision().await.expect("revision"), 2);
    assert_eq!(s.commits(), 1, "the others were committed together, once");
    let c = s.get("/c").await.expect("get").expect("/c");
    assert_eq!(c.mod_revision, 2);
    // The store still writes.
    assert_eq!(s.put("/d", b"4".to_vec()).await.expect("put"), 3);
}

#[test]
fn duplicated_errors_keep_variant_message_and_io_ness() {
    let path = PathBuf::from("/x/state.redb");
    let io = StoreError::Storage {
        path: path.clone(),
        op: "committing",
        source: Box::new(redb::Error::Io(std::io::Error::other("No space left"))),
    };
    let copy = duplicate(&io);
    assert!(is_io(&io) && is_io(&copy));
    assert_eq!(io.to_string(), copy.to_string());
    let other = StoreError::Storage {
        path,
        op: "writing",
        source: "value too large".into(),
    };
    assert!(!is_io(&duplicate(&other)));
    let errors = fan_out(StoreError::Unavailable("gone".into()), 3);
    assert_eq!(errors.len(), 3);
    assert!(errors
        .iter()
        .all(|e| matches!(e, Err(StoreError::Unavailable(m)) if m == "gone")));
}
