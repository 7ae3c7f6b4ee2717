//! Issue 13, point 5: secret values are sealed at rest. The store file never holds a value in
//! the clear (after `set`, a deploy that copies it into instance records, `rotate-key` and
//! `rm`); a value stored in the clear by an older berth is sealed at the next start, nothing
//! lost; a rotation interrupted by a crash is finished at the next start; a server with the
//! wrong key refuses to start and says why; the instance's own node still gets the value.

mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_api::control::ReleaseStatus;
use berth_server::{Clock, ServerConfig};
use berth_store::{EmbeddedStore, Store};
use harness::{all_healthy, deploy_request, eventually, wait_release, Agent, Server, Timeline};

const VALUE: &str = "plaintext-DB-PASSWORD-5e0c7d";
const NEWER: &str = "plaintext-DB-PASSWORD-newer-a41b";

fn stack() -> String {
    r#"stack: shop
environments:
  staging:
    regions: [local]
services:
  api:
    process: {command: [sleep, "1000"]}
    secrets: [DB_PASSWORD]
    ports: { http: 0 }
    replicas: 2
    rollout: { strategy: rolling, max_surge: 1, max_unavailable: 0, progress_deadline: 60s }
"#
    .to_string()
}

/// Whether the store file's bytes hold `value` anywhere (what `strings state.redb` would show).
fn file_holds(dir: &Path, value: &str) -> bool {
    let bytes = std::fs::read(dir.join("state.redb")).expect("read state.redb");
    bytes.windows(value.len()).any(|w| w == value.as_bytes())
}

/// The store of a stopped server (opened with retries: the last one may still hold it).
async fn open_store(dir: &Path) -> EmbeddedStore {
    let path = dir.join("state.redb");
    eventually("the store file to open", || {
        let path = path.clone();
        async move { EmbeddedStore::open(path).await.map_err(|e| e.to_string()) }
    })
    .await
}

/// Every record under `prefix` as JSON.
async fn records(store: &EmbeddedStore, prefix: &str) -> Vec<(String, serde_json::Value)> {
    store
        .range(prefix)
        .await
        .expect("range")
        .kvs
        .into_iter()
        .map(|kv| {
            let v = serde_json::from_slice(&kv.value).expect("JSON record");
            (kv.key, v)
        })
        .collect()
}

/// The data key ids the sealed values of the secret and instance records name.
async fn sealing_keys(store: &EmbeddedStore) -> Vec<u64> {
    let mut ids = Vec::new();
    for (_, r) in records(store, "/secrets/").await {
        ids.push(r["sealed"]["key"].as_u64().expect("a sealed secret"));
    }
    for (_, r) in records(store, "/instances/").await {
        for sealed in r["sealed_env"].as_object().expect("sealed_env").values() {
            ids.push(sealed["key"].as_u64().expect("key id"));
        }
    }
    ids
}

/// What node `agent`'s own desired set gives its instances for `DB_PASSWORD`.
async fn node_values(server: &Server, agent: &Agent) -> Vec<Option<String>> {
    server
        .client(Some(&agent.token))
        .desired(&agent.name, None, Duration::ZERO)
        .await
        .expect("desired as the node")
        .instances
        .iter()
        .map(|s| s.secret_env.get("DB_PASSWORD").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_in_the_store_file_after_set_deploy_rotate_and_rm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    server
        .admin
        .set_secret("shop", "DB_PASSWORD", VALUE)
        .await
        .expect("set");
    server
        .admin
        .deploy(&deploy_request(&stack(), "staging"))
        .await
        .expect("deploy");
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    agent.wait_running(1, 2).await;
    assert_eq!(
        node_values(&server, &agent).await,
        vec![Some(VALUE.into()); 2]
    );
    assert!(
        !file_holds(dir.path(), VALUE),
        "state.redb holds the value after set and deploy"
    );
    let key = std::fs::metadata(dir.path().join("secrets.key")).expect("secrets.key made");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    // Rotation: every record re-sealed under key 2; the node still gets the value.
    let rotated = server.admin.rotate_secret_key().await.expect("rotate-key");
    assert_eq!(rotated.key, 2);
    assert_eq!(
        rotated.resealed, 3,
        "one secret, two instances: {rotated:?}"
    );
    assert_eq!(
        node_values(&server, &agent).await,
        vec![Some(VALUE.into()); 2]
    );
    let again = server
        .admin
        .rotate_secret_key()
        .await
        .expect("rotate again");
    assert_eq!(
        (again.key, again.retired.clone()),
        (3, vec![1]),
        "{again:?}"
    );
    assert!(!file_holds(dir.path(), VALUE), "after rotate-key");

    // A second value, then rm: neither is in the file.
    server
        .admin
        .set_secret("shop", "DB_PASSWORD", NEWER)
        .await
        .expect("set again");
    server
        .admin
        .delete_secret("shop", "DB_PASSWORD")
        .await
        .expect("rm");
    assert!(
        !file_holds(dir.path(), VALUE) && !file_holds(dir.path(), NEWER),
        "after rm"
    );
    server.stop().await;

    let store = open_store(dir.path()).await;
    assert!(sealing_keys(&store).await.iter().all(|k| *k == 3));
    assert!(
        records(&store, "/secrets/").await.is_empty(),
        "rm removed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_from_an_older_berth_is_sealed_at_start_and_a_crashed_rotation_finished() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let mut agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    server
        .admin
        .set_secret("shop", "DB_PASSWORD", VALUE)
        .await
        .expect("set");
    server
        .admin
        .deploy(&deploy_request(&stack(), "staging"))
        .await
        .expect("deploy");
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    agent.wait_running(1, 2).await;
    agent.disconnect();
    server.stop().await;

    // Turn the records back into what berth wrote before sealing: the value in the clear in
    // the secret record and in each instance's spec.secret_env.
    {
        let store = open_store(dir.path()).await;
        for (key, mut r) in records(&store, "/secrets/").await {
            let obj = r.as_object_mut().expect("object");
            obj.remove("sealed");
            obj.insert("value".into(), VALUE.into());
            store
                .put(&key, serde_json::to_vec(&r).expect("json"))
                .await
                .expect("put");
        }
        for (key, mut r) in records(&store, "/instances/").await {
            r.as_object_mut().expect("object").remove("sealed_env");
            r["spec"]["secret_env"] = serde_json::json!({ "DB_PASSWORD": VALUE });
            store
                .put(&key, serde_json::to_vec(&r).expect("json"))
                .await
                .expect("put");
        }
        // And a rotation that crashed after its new data key was written, before any value
        // was re-sealed.
        let keyring = berth_server::seal::Keyring::open(&store, dir.path(), None, 1)
            .await
            .expect("keyring");
        assert_eq!(keyring.add_next(&store, 2).await.expect("new key"), 2);
    }
    assert!(
        file_holds(dir.path(), VALUE),
        "the old store holds plaintext"
    );

    let server = Server::start(dir.path()).await;
    agent.connect(&server);
    assert!(
        !file_holds(dir.path(), VALUE),
        "sealed at start, history erased"
    );
    assert_eq!(
        node_values(&server, &agent).await,
        vec![Some(VALUE.into()); 2]
    );
    let listed = server.admin.secrets("shop").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].version, 1, "nothing lost: same version");
    agent.disconnect();
    server.stop().await;
    let store = open_store(dir.path()).await;
    let keys = sealing_keys(&store).await;
    assert_eq!(keys, vec![2, 2, 2], "all under the rotation's new key");
    let secret = &records(&store, "/secrets/").await[0].1;
    assert!(secret.get("value").is_none(), "{secret}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_key_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    server
        .admin
        .set_secret("shop", "DB_PASSWORD", VALUE)
        .await
        .expect("set");
    server.stop().await;
    let start = |key_file: Option<std::path::PathBuf>| {
        let dir = dir.path().to_path_buf();
        async move {
            let store = open_store(&dir).await;
            berth_server::Shared::new(ServerConfig {
                data_dir: dir,
                store: Arc::new(store),
                clock: Clock::system(),
                tls: None,
                secrets_key_file: key_file,
            })
            .await
            .map(|_| ())
        }
    };
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).expect("write key");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let err = start(Some(wrong.clone()))
        .await
        .expect_err("wrong key refused");
    let text = err.to_string();
    assert!(
        text.contains("wrong.key") && text.contains("not the key this store"),
        "{text}"
    );
    // Without its key file, a sealed store does not get a new one.
    std::fs::rename(dir.path().join("secrets.key"), dir.path().join("moved.key")).expect("mv");
    let err = start(None).await.expect_err("missing key refused");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!dir.path().join("secrets.key").exists());
    // The right key, by --secrets-key-file, starts.
    start(Some(dir.path().join("moved.key")))
        .await
        .expect("the right key starts");
}
