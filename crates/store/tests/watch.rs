//! Watch semantics of the embedded store: replay then live with no gap and no duplicate, slow
//! readers under a busy writer, compaction.

use std::time::Duration;

use berth_store::{
    EmbeddedOptions, EmbeddedStore, EventKind, Op, Store, StoreError, Txn, WatchEvent, WatchStream,
};

async fn open(options: EmbeddedOptions) -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open_with(dir.path().join("state.redb"), options)
        .await
        .unwrap();
    (dir, s)
}

async fn next(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("watch event within 10s")
        .expect("watch still open")
        .expect("watch event, not error")
}

#[tokio::test]
async fn replays_history_then_streams_live() {
    let (_dir, s) = open(EmbeddedOptions::default()).await;
    s.put("/a/1", b"x".to_vec()).await.unwrap(); // 1
    s.put("/b/1", b"y".to_vec()).await.unwrap(); // 2 (other prefix)
    s.put("/a/1", b"z".to_vec()).await.unwrap(); // 3
    s.delete("/a/1").await.unwrap(); // 4

    let mut w = s.watch("/a/", 1).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!(
        (e.revision, e.kind, e.kv.value.as_slice()),
        (1, EventKind::Put, &b"x"[..])
    );
    assert_eq!(e.prev, None);
    let e = next(&mut w).await;
    assert_eq!((e.revision, e.kind), (3, EventKind::Put));
    assert_eq!(e.prev.as_ref().unwrap().value, b"x");
    assert_eq!((e.kv.version, e.kv.create_revision), (2, 1));
    let e = next(&mut w).await;
    assert_eq!(
        (e.revision, e.kind, e.kv.mod_revision),
        (4, EventKind::Delete, 4)
    );
    assert_eq!(e.prev.as_ref().unwrap().value, b"z");

    // Live now; one transaction with several keys arrives as events of one revision, in order.
    s.txn(Txn {
        success: vec![
            Op::put("/a/2", "p"),
            Op::put("/b/2", "q"),
            Op::put("/a/3", "r"),
        ],
        ..Txn::default()
    })
    .await
    .unwrap();
    s.delete_prefix("/a/").await.unwrap();
    let got: Vec<_> = [next(&mut w).await, next(&mut w).await]
        .into_iter()
        .map(|e| (e.revision, e.kv.key))
        .collect();
    assert_eq!(got, [(5, "/a/2".to_string()), (5, "/a/3".to_string())]);
    let got: Vec<_> = [next(&mut w).await, next(&mut w).await]
        .into_iter()
        .map(|e| (e.revision, e.kind, e.kv.key))
        .collect();
    assert_eq!(
        got,
        [
            (6, EventKind::Delete, "/a/2".to_string()),
            (6, EventKind::Delete, "/a/3".to_string())
        ]
    );
}

#[tokio::test]
async fn watch_from_zero_and_from_the_future() {
    let (_dir, s) = open(EmbeddedOptions::default()).await;
    s.put("/a", b"old".to_vec()).await.unwrap(); // 1
    let mut now = s.watch("/", 0).await.unwrap();
    let mut future = s.watch("/", 3).await.unwrap();
    s.put("/a", b"new".to_vec()).await.unwrap(); // 2
    s.put("/a", b"newer".to_vec()).await.unwrap(); // 3
    assert_eq!(next(&mut now).await.revision, 2);
    assert_eq!(next(&mut now).await.revision, 3);
    assert_eq!(next(&mut future).await.revision, 3);
}

#[tokio::test]
async fn list_then_watch_misses_nothing() {
    let (_dir, s) = open(EmbeddedOptions::default()).await;
    for i in 0..10 {
        s.put(&format!("/k/{i}"), b"v".to_vec()).await.unwrap();
    }
    let listed = s.range("/k/").await.unwrap();
    s.put("/k/after", b"v".to_vec()).await.unwrap();
    let mut w = s.watch("/k/", listed.revision + 1).await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((e.revision, e.kv.key.as_str()), (11, "/k/after"));
}

/// Checks that a stream delivers exactly revisions `from..=to`, once each, in order.
async fn expect_exact(w: &mut WatchStream, from: i64, to: i64, slow: bool) {
    let mut expected = from;
    while expected <= to {
        let e = next(w).await;
        assert_eq!(e.revision, expected, "gap or duplicate");
        assert_eq!(e.kv.value, expected.to_string().into_bytes());
        expected += 1;
        if slow && expected % 97 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_watcher_under_a_concurrent_writer_sees_no_gap_and_no_duplicate() {
    // Tiny buffers so the slow watcher lags behind the broadcast over and over and must
    // catch up from the change log.
    let (_dir, s) = open(EmbeddedOptions {
        history: 10_000,
        broadcast_capacity: 4,
        watch_buffer: 2,
        ..EmbeddedOptions::default()
    })
    .await;
    const N: i64 = 5_000;
    // Some history before the watches start.
    for i in 1..=100 {
        s.put("/c/k", i.to_string().into_bytes()).await.unwrap();
    }
    let mut slow_old = s.watch("/c/", 50).await.unwrap();
    let mut fast_live = s.watch("/c/", 0).await.unwrap();

    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 101..=N {
                assert_eq!(s.put("/c/k", i.to_string().into_bytes()).await.unwrap(), i);
            }
        })
    };
    let slow = tokio::spawn(async move {
        expect_exact(&mut slow_old, 50, N, true).await;
        slow_old
    });
    expect_exact(&mut fast_live, 101, N, false).await;
    writer.await.unwrap();
    let mut slow_old = slow.await.unwrap();

    // Nothing extra afterwards.
    for w in [&mut slow_old, &mut fast_live] {
        assert!(tokio::time::timeout(Duration::from_millis(200), w.recv())
            .await
            .is_err());
    }
}

#[tokio::test]
async fn compacted_history_is_an_error_that_says_what_to_do() {
    let (_dir, s) = open(EmbeddedOptions {
        history: 10,
        ..EmbeddedOptions::default()
    })
    .await;
    for i in 1..=30 {
        s.put("/k", i.to_string().into_bytes()).await.unwrap();
    }
    assert_eq!(s.compact_revision().await.unwrap(), 20);
    let err = s.watch("/", 5).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Compacted {
                requested: 5,
                compact_revision: 20
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("re-list"), "{err}");
    assert!(matches!(
        s.watch("/", 20).await.unwrap_err(),
        StoreError::Compacted { .. }
    ));
    let mut w = s.watch("/", 21).await.unwrap();
    expect_exact(&mut w, 21, 30, false).await;
}

#[tokio::test]
async fn a_reader_that_falls_behind_the_compaction_gets_the_error_then_the_end() {
    let (_dir, s) = open(EmbeddedOptions {
        history: 5,
        broadcast_capacity: 1,
        watch_buffer: 1,
        ..EmbeddedOptions::default()
    })
    .await;
    let mut w = s.watch("/", 1).await.unwrap();
    for i in 1..=50 {
        s.put("/k", i.to_string().into_bytes()).await.unwrap();
    }
    // Some events may have been buffered before the history moved on; then the error.
    let mut last = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.recv())
            .await
            .unwrap()
        {
            Some(Ok(e)) => {
                assert_eq!(e.revision, last + 1);
                last = e.revision;
            }
            Some(Err(e)) => break e,
            None => panic!("stream ended without the compaction error"),
        }
    };
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    assert!(w.recv().await.is_none());
}

#[tokio::test]
async fn watches_end_when_the_store_is_dropped() {
    let (_dir, s) = open(EmbeddedOptions::default()).await;
    let mut w = s.watch("/", 0).await.unwrap();
    drop(s);
    let end = tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .unwrap();
    assert!(end.is_none());
}
