//! Read/write semantics of the embedded store on a real file: revisions, versions, CAS,
//! ranges, deletes, transaction validation, reopening, locking.

use std::sync::Arc;

use berth_store::{Compare, EmbeddedStore, Op, OpResponse, Store, StoreError, Txn, TxnResponse};

async fn store() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = EmbeddedStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    (dir, s)
}

#[tokio::test]
async fn revisions_and_key_metadata() {
    let (_dir, s) = store().await;
    assert_eq!(s.revision().await.unwrap(), 0);
    assert_eq!(s.get("/a").await.unwrap(), None);

    assert_eq!(s.put("/a", b"1".to_vec()).await.unwrap(), 1);
    assert_eq!(s.put("/b", b"x".to_vec()).await.unwrap(), 2);
    assert_eq!(s.put("/a", b"2".to_vec()).await.unwrap(), 3);
    assert_eq!(s.revision().await.unwrap(), 3);

    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!(a.value, b"2");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
    let b = s.get("/b").await.unwrap().unwrap();
    assert_eq!((b.create_revision, b.mod_revision, b.version), (2, 2, 1));

    // A deleted then recreated key starts over.
    assert!(s.delete("/a").await.unwrap());
    assert_eq!(s.revision().await.unwrap(), 4);
    assert_eq!(s.put("/a", b"3".to_vec()).await.unwrap(), 5);
    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[tokio::test]
async fn a_transaction_that_changes_nothing_keeps_the_revision() {
    let (_dir, s) = store().await;
    s.put("/a", b"1".to_vec()).await.unwrap();
    assert!(!s.delete("/missing").await.unwrap());
    assert_eq!(s.delete_prefix("/nothing/").await.unwrap(), 0);
    let r = s
        .txn(Txn {
            compares: vec![Compare::absent("/a")],
            success: vec![Op::put("/b", "x")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert_eq!(
        r,
        TxnResponse {
            succeeded: false,
            revision: 1,
            responses: vec![]
        }
    );
    assert_eq!(s.revision().await.unwrap(), 1);
}

#[tokio::test]
async fn cas_on_mod_revision() {
    let (_dir, s) = store().await;
    // Create-if-absent.
    assert_eq!(s.cas("/k", 0, b"v1".to_vec()).await.unwrap(), Some(1));
    assert_eq!(s.cas("/k", 0, b"again".to_vec()).await.unwrap(), None);
    // Update from the revision we read.
    let kv = s.get("/k").await.unwrap().unwrap();
    assert_eq!(
        s.cas("/k", kv.mod_revision, b"v2".to_vec()).await.unwrap(),
        Some(2)
    );
    // A stale writer loses and changes nothing.
    assert_eq!(
        s.cas("/k", kv.mod_revision, b"stale".to_vec())
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get("/k").await.unwrap().unwrap().value, b"v2");
    assert_eq!(s.revision().await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_cas_increments_lose_no_update() {
    let (_dir, s) = store().await;
    let s = Arc::new(s);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let cur = s.get("/n").await.unwrap();
                    let (rev, n) = match cur {
                        None => (0, 0),
                        Some(kv) => (
                            kv.mod_revision,
                            String::from_utf8(kv.value).unwrap().parse::<u64>().unwrap(),
                        ),
                    };
                    if s.cas("/n", rev, (n + 1).to_string().into_bytes())
                        .await
                        .unwrap()
                        .is_some()
                    {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.get("/n").await.unwrap().unwrap().value, b"200");
    assert_eq!(s.revision().await.unwrap(), 200);
}

#[tokio::test]
async fn txn_value_compare_and_failure_branch() {
    let (_dir, s) = store().await;
    s.put("/leader", b"node-1".to_vec()).await.unwrap();
    let r = s
        .txn(Txn {
            compares: vec![Compare::value("/leader", "node-2")],
            success: vec![Op::put("/x", "from-2")],
            failure: vec![Op::put("/x", "not-2"), Op::delete("/leader")],
        })
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, 2);
    assert_eq!(
        r.responses,
        vec![OpResponse::Put, OpResponse::Delete { deleted: 1 }]
    );
    assert_eq!(s.get("/x").await.unwrap().unwrap().value, b"not-2");
    assert_eq!(s.get("/leader").await.unwrap(), None);
    // A value compare on an absent key never holds (etcd's rule).
    let r = s
        .txn(Txn {
            compares: vec![Compare::value("/leader", "")],
            success: vec![Op::put("/y", "1")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(!r.succeeded);
    // Several keys in one transaction share one revision.
    let r = s
        .txn(Txn {
            compares: vec![Compare::absent("/leader"), Compare::mod_revision("/x", 2)],
            success: vec![Op::put("/p/1", "a"), Op::put("/p/2", "b")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    assert_eq!(s.get("/p/1").await.unwrap().unwrap().mod_revision, 3);
    assert_eq!(s.get("/p/2").await.unwrap().unwrap().mod_revision, 3);
}

#[tokio::test]
async fn prefix_range_is_sorted_and_bounded() {
    let (_dir, s) = store().await;
    for k in ["/svc/b", "/svc/a", "/svcx", "/svc/c/1", "/sv", "/t"] {
        s.put(k, k.as_bytes().to_vec()).await.unwrap();
    }
    let r = s.range("/svc/").await.unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/svc/a", "/svc/b", "/svc/c/1"]);
    assert_eq!(r.revision, 6);
    assert_eq!(s.range("").await.unwrap().kvs.len(), 6);
    assert!(s.range("/zzz").await.unwrap().kvs.is_empty());
}

#[tokio::test]
async fn delete_and_delete_prefix() {
    let (_dir, s) = store().await;
    for k in ["/n/1/a", "/n/1/b", "/n/2/a", "/n/10"] {
        s.put(k, b"v".to_vec()).await.unwrap();
    }
    assert_eq!(s.delete_prefix("/n/1/").await.unwrap(), 2);
    assert_eq!(s.revision().await.unwrap(), 5);
    let keys: Vec<_> = s
        .range("/n/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/n/10", "/n/2/a"]);
    assert!(s.delete("/n/10").await.unwrap());
    assert!(!s.delete("/n/10").await.unwrap());
    assert_eq!(s.revision().await.unwrap(), 6);
}

#[tokio::test]
async fn malformed_transactions_are_refused_whole() {
    let (_dir, s) = store().await;
    for txn in [
        Txn {
            success: vec![Op::put("/a", "1"), Op::put("/a", "2")],
            ..Txn::default()
        },
        Txn {
            failure: vec![Op::put("/a/b", "1"), Op::delete_prefix("/a/")],
            ..Txn::default()
        },
        Txn {
            success: vec![Op::put("", "1")],
            ..Txn::default()
        },
    ] {
        let err = s.txn(txn).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidTxn(_)), "{err}");
    }
    assert_eq!(s.revision().await.unwrap(), 0);
}

#[tokio::test]
async fn state_survives_reopen_and_a_second_open_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("state.redb");
    let s = EmbeddedStore::open(&path).await.unwrap();
    s.put("/a", b"1".to_vec()).await.unwrap();
    s.put("/a", b"2".to_vec()).await.unwrap();

    let err = EmbeddedStore::open(&path).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Locked { .. }), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("--data-dir"), "{msg}");

    drop(s);
    let s = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(s.revision().await.unwrap(), 2);
    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!(
        (a.value.as_slice(), a.version, a.mod_revision),
        (&b"2"[..], 2, 2)
    );
}

#[tokio::test]
async fn usable_as_a_trait_object() {
    let (_dir, s) = store().await;
    let s: Arc<dyn Store> = Arc::new(s);
    assert_eq!(s.put("/a", b"1".to_vec()).await.unwrap(), 1);
    assert_eq!(s.range("/").await.unwrap().kvs.len(), 1);
}
