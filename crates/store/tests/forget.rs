//! Issue 10, item 6: `Store::forget` erases a deleted key's values from the store file (its
//! change log and the file's free pages), keeps the file 0600, and leaves the store working:
//! other keys, revisions and watches are untouched.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use berth_store::{EmbeddedStore, Store};
use futures::StreamExt;

fn contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let bytes = std::fs::read(path).expect("read the store file");
    bytes.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_erases_the_values_and_keeps_everything_else() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.redb");
    let store = EmbeddedStore::open(&path).await.expect("open");
    let mut watch = store.watch("/", 1).await.expect("watch");
    let first = b"forget-me-first-value-31f7";
    let second = b"forget-me-second-value-a0c9";
    store
        .put("/secrets/s/X", first.to_vec())
        .await
        .expect("put");
    store
        .put("/secrets/s/X", second.to_vec())
        .await
        .expect("put");
    store.put("/other", b"kept".to_vec()).await.expect("put");
    assert!(store.delete("/secrets/s/X").await.expect("delete"));
    assert!(contains(&path, first) && contains(&path, second));
    let before = store.revision().await.expect("revision");

    store.forget("/secrets/s/X").await.expect("forget");
    assert!(
        !contains(&path, first),
        "the first value is still in the file"
    );
    assert!(
        !contains(&path, second),
        "the second value is still in the file"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(store.revision().await.expect("revision"), before);
    let other = store.get("/other").await.expect("get").expect("kept");
    assert_eq!(other.value, b"kept");

    // Writes and the watch go on; the replayed events of the erased key carry no value.
    store.put("/after", b"1".to_vec()).await.expect("put after");
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let e = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("an event in time")
            .expect("the watch goes on")
            .expect("no error");
        seen.push((e.kv.key.clone(), e.kv.value.clone()));
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/secrets/s/X",
            "/secrets/s/X",
            "/other",
            "/secrets/s/X",
            "/after"
        ]
    );
    drop(watch);
    drop(store);
    // And the file opens again.
    let again = EmbeddedStore::open(&path).await.expect("reopen");
    assert_eq!(again.revision().await.expect("revision"), before + 1);
}
