//! Several `berth server` processes on one etcd prefix (issue 14, point 2): exactly one leads
//! (holds `/leader` under the prefix); `kill -9` of the leader → another leads within the lease
//! TTL plus one retry; a leader `SIGSTOP`ped past its lease is replaced, and once `SIGCONT`ed it
//! steps down and writes nothing more to the leader key; a graceful stop (SIGTERM) resigns at
//! once. The real binary, on a real etcd started here on loopback ports chosen at run time.

mod common;

#[path = "../../store/tests/common/etcd.rs"]
mod etcd;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_store::Store;
use common::process::Proc;
use nix::sys::signal::Signal;

/// The lease TTL (`berth_server::leadership::LEADER_TTL`) and the campaign retry.
const TTL: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(1);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `berth server` number `i` on `store` under `/ha`, healthy; all but the first share the
/// first one's secrets key (they seal into one store).
fn start_server(dir: &Path, i: usize, store: &str, key: Option<&Path>) -> (Proc, String) {
    let api = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let data = dir.join(format!("data{i}"));
    let mut cmd = common::command(["server", "--data-dir"]);
    cmd.arg(&data)
        .arg("--api")
        .arg(api.to_string())
        .arg("--store")
        .arg(store)
        .arg("--etcd-prefix")
        .arg("/ha");
    if let Some(key) = key {
        cmd.arg("--secrets-key-file").arg(key);
    }
    let proc = Proc::spawn(cmd, &format!("berth-server-{i}"), dir);
    proc.wait_until(
        Duration::from_secs(30),
        "GET /v1/health answers 200",
        || common::http::is_ok(api, "/v1/health"),
    );
    (proc, format!("http://{api}"))
}

/// The API URL the leader key names, and the key's mod_revision.
fn leader(rt: &tokio::runtime::Runtime, store: &berth_store::EtcdStore) -> Option<(String, i64)> {
    let kv = rt
        .block_on(store.get("/leader"))
        .expect("read /ha/leader")?;
    let v: serde_json::Value = serde_json::from_slice(&kv.value).expect("a leader record");
    Some((v["api"].as_str()?.to_string(), kv.mod_revision))
}

/// Waits until the leader key names `api`; returns how long that took.
fn until_leads(
    rt: &tokio::runtime::Runtime,
    store: &berth_store::EtcdStore,
    api: &str,
    within: Duration,
    procs: &[&Proc],
) -> Duration {
    #[expect(
        clippy::disallowed_methods,
        reason = "failover times of real processes, on the real monotonic clock"
    )]
    let start = Instant::now();
    loop {
        if leader(rt, store).is_some_and(|(a, _)| a == api) {
            return start.elapsed();
        }
        if start.elapsed() > within {
            let logs: String = procs.iter().map(|p| p.log_tail()).collect();
            panic!("{api} does not lead within {within:?}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_server_leads_a_killed_or_paused_leader_is_replaced_and_a_stop_resigns() {
    let rt = runtime();
    let etcd = rt.block_on(etcd::Etcd::start());
    let url = format!("etcd://{}", etcd.endpoints[0].trim_start_matches("http://"));
    let store = rt.block_on(etcd.store("/ha"));
    let dir = common::temp_dir();
    let key: PathBuf = dir.path().join("data0").join("secrets.key");

    let (s0, api0) = start_server(dir.path(), 0, &url, None);
    let (s1, api1) = start_server(dir.path(), 1, &url, Some(&key));
    common::wait_until(Duration::from_secs(10), "someone leads", || {
        leader(&rt, &store).is_some()
    });
    // A few campaign rounds later the leader is still the same one: exactly one leads.
    let (first, rev) = leader(&rt, &store).expect("a leader");
    std::thread::sleep(RETRY * 3);
    assert_eq!(
        leader(&rt, &store),
        Some((first.clone(), rev)),
        "one leader, unchanged"
    );
    let (dead, survivor, api_survivor) = if first == api0 {
        (s0, s1, api1)
    } else {
        assert_eq!(first, api1);
        (s1, s0, api0)
    };

    // kill -9 of the leader: the other leads within the TTL plus one retry.
    dead.kill9();
    let took = until_leads(&rt, &store, &api_survivor, TTL + RETRY * 3, &[&survivor]);
    println!("failover after kill -9: {took:?}");
    assert!(
        took <= TTL + RETRY + Duration::from_millis(1500),
        "{took:?}"
    );

    // A third server joins as a follower; the leader is paused past its lease.
    let (s2, api2) = start_server(dir.path(), 2, &url, Some(&key));
    let paused_from = rt.block_on(store.revision()).expect("revision");
    survivor.signal(Signal::SIGSTOP);
    let took = until_leads(&rt, &store, &api2, TTL + RETRY * 3, &[&s2]);
    println!("failover after SIGSTOP: {took:?}");
    std::thread::sleep(RETRY * 2);
    survivor.signal(Signal::SIGCONT);
    common::wait_until(
        Duration::from_secs(10),
        "the resumed server steps down",
        || survivor.stderr_text().contains("no longer leading"),
    );
    std::thread::sleep(RETRY * 3);
    assert_eq!(leader(&rt, &store).map(|l| l.0), Some(api2.clone()));
    // The store's history since the pause: no write of the old leader's to the leader key.
    let events = rt.block_on(async {
        let now = store.revision().await.expect("revision");
        let mut w = store
            .watch("/leader", paused_from + 1)
            .await
            .expect("watch");
        let mut events = Vec::new();
        while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_millis(500), w.recv()).await
        {
            let done = e.revision >= now;
            events.push(e);
            if done {
                break;
            }
        }
        events
    });
    for e in &events {
        let v: serde_json::Value = serde_json::from_slice(&e.kv.value).unwrap_or_default();
        assert_ne!(
            v["api"].as_str(),
            Some(api_survivor.as_str()),
            "the resumed leader wrote the leader key again: {events:?}"
        );
    }
    assert!(s2.try_exit().is_none() && survivor.try_exit().is_none());

    // A graceful stop resigns: the resumed server leads within about one retry, not a TTL.
    s2.signal(Signal::SIGTERM);
    let took = until_leads(&rt, &store, &api_survivor, RETRY * 3, &[&survivor]);
    println!("failover after SIGTERM: {took:?}");
    s2.wait_exit(Duration::from_secs(20));
}

/// Token `name` (`admin.token`, `join.token`) of server `i`'s data directory.
fn token(dir: &Path, i: usize, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("data{i}")).join(name))
        .expect("a token file")
        .trim()
        .to_string()
}

#[test]
fn the_first_servers_admin_and_join_tokens_work_on_every_replica() {
    let rt = runtime();
    let etcd = rt.block_on(etcd::Etcd::start());
    let url = format!("etcd://{}", etcd.endpoints[0].trim_start_matches("http://"));
    let dir = common::temp_dir();
    let key: PathBuf = dir.path().join("data0").join("secrets.key");
    let (_s0, api0) = start_server(dir.path(), 0, &url, None);
    let (_s1, api1) = start_server(dir.path(), 1, &url, Some(&key));
    let addr = |api: &str| -> SocketAddr {
        api.trim_start_matches("http://")
            .parse()
            .expect("an address")
    };
    let (a0, a1) = (addr(&api0), addr(&api1));
    let admin0 = token(dir.path(), 0, "admin.token");
    let admin1 = token(dir.path(), 1, "admin.token");
    assert_ne!(admin0, admin1, "each data directory got its own file");

    let status = |a: SocketAddr, t: &str| {
        common::http::get_auth(a, "/v1/nodes", t)
            .expect("GET")
            .status
    };
    assert_eq!(
        status(a1, &admin0),
        200,
        "the first server's admin token on the second"
    );
    assert_eq!(
        status(a1, &admin1),
        200,
        "the second's own still works there"
    );
    assert_eq!(status(a0, &admin0), 200);
    assert_eq!(status(a1, "wrongwrongwrongwrongwrong"), 401);
    // The store holds hashes only: no token in the clear.
    let all = rt.block_on(async { rt_range(&etcd).await });
    for t in [&admin0, &admin1, &token(dir.path(), 0, "join.token")] {
        assert!(
            !all.iter()
                .any(|v| v.windows(t.len()).any(|w| w == t.as_bytes())),
            "a token in the clear in the store"
        );
    }

    // The first server's join token registers a node through the second.
    let join0 = token(dir.path(), 0, "join.token");
    let body = serde_json::json!({
        "name": "n1",
        "resources": {"cpu_millis": 1000, "memory_bytes": 1_000_000_000u64},
        "drivers": [],
        "address": "127.0.0.1"
    })
    .to_string();
    let auth = format!("Bearer {join0}");
    let r = common::http::request(
        a1,
        "POST",
        "/v1/nodes/register",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("POST");
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn rt_range(etcd: &etcd::Etcd) -> Vec<Vec<u8>> {
    let store = etcd.store("/ha").await;
    let all = store.range("").await.expect("range");
    all.kvs.into_iter().map(|kv| kv.value).collect()
}

#[test]
fn berth_servers_lists_the_replicas_and_marks_the_leader() {
    let rt = runtime();
    let etcd = rt.block_on(etcd::Etcd::start());
    let url = format!("etcd://{}", etcd.endpoints[0].trim_start_matches("http://"));
    let store = rt.block_on(etcd.store("/ha"));
    let dir = common::temp_dir();
    let key: PathBuf = dir.path().join("data0").join("secrets.key");
    let (_s0, api0) = start_server(dir.path(), 0, &url, None);
    let (s1, api1) = start_server(dir.path(), 1, &url, Some(&key));
    let admin0 = token(dir.path(), 0, "admin.token");
    let servers = |api: &str, json: bool| {
        let mut cmd = common::command(["servers"]);
        if json {
            cmd.args(["--output", "json"]);
        }
        cmd.env("BERTH_SERVER", api).env("BERTH_TOKEN", &admin0);
        common::run_command(cmd, Duration::from_secs(30))
    };
    common::wait_until(Duration::from_secs(10), "someone leads", || {
        leader(&rt, &store).is_some()
    });
    let (leading, _) = leader(&rt, &store).expect("a leader");
    // Asked through either replica: both listed, the leader key's one marked.
    for api in [&api0, &api1] {
        let mut listed = Vec::new();
        common::wait_until(Duration::from_secs(15), "both servers listed", || {
            let out = servers(api, true);
            common::assert_exit(&out, 0);
            listed = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("json");
            listed.len() == 2
        });
        let apis: Vec<&str> = listed.iter().filter_map(|s| s["api"].as_str()).collect();
        assert!(
            apis.contains(&api0.as_str()) && apis.contains(&api1.as_str()),
            "{listed:?}"
        );
        let leaders: Vec<&serde_json::Value> =
            listed.iter().filter(|s| s["leader"] == true).collect();
        assert_eq!(leaders.len(), 1, "{listed:?}");
        assert_eq!(leaders[0]["api"], leading.as_str());
        assert!(
            leaders[0]["leader_since_ms"].as_u64().is_some(),
            "{listed:?}"
        );
        assert!(listed
            .iter()
            .all(|s| s["version"].as_str().is_some_and(|v| !v.is_empty())));
    }
    let table = servers(&api0, false);
    common::assert_exit(&table, 0);
    let text = common::stdout(&table);
    assert!(text.contains("SERVER") && text.contains("LEADER"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&leading) && l.contains("yes, for")),
        "{text}"
    );

    // After the other leads, the listing follows.
    if leading == api1 {
        s1.signal(Signal::SIGTERM);
        s1.wait_exit(Duration::from_secs(20));
        until_leads(&rt, &store, &api0, RETRY * 3, &[]);
        let out = servers(&api0, true);
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        let lead: Vec<_> = listed.iter().filter(|s| s["leader"] == true).collect();
        assert_eq!(lead.len(), 1);
        assert_eq!(lead[0]["api"], api0.as_str());
    }
}

#[test]
fn an_export_of_a_led_cluster_imports_without_its_leader_key_so_a_server_there_leads() {
    let rt = runtime();
    let etcd = rt.block_on(etcd::Etcd::start());
    let url = format!("etcd://{}", etcd.endpoints[0].trim_start_matches("http://"));
    let store = rt.block_on(etcd.store("/ha"));
    let dir = common::temp_dir();
    let (s0, _api0) = start_server(dir.path(), 0, &url, None);
    common::wait_until(Duration::from_secs(10), "it leads", || {
        leader(&rt, &store).is_some()
    });
    let data0 = dir.path().join("data0");
    let mut cmd = common::command(["store", "export", "--store", &url, "--etcd-prefix", "/ha"]);
    cmd.arg("--data-dir").arg(&data0);
    let out = common::run_command(cmd, Duration::from_secs(30));
    common::assert_exit(&out, 0);
    assert!(
        common::stdout(&out).contains("\"/leader\""),
        "the export has the live leader key"
    );
    let dump = common::write_file(dir.path(), "dump.json", &out.stdout);
    let mut cmd = common::command([
        "store",
        "import",
        &dump,
        "--store",
        &url,
        "--etcd-prefix",
        "/moved",
    ]);
    cmd.arg("--data-dir").arg(&data0);
    let out = common::run_command(cmd, Duration::from_secs(30));
    common::assert_exit(&out, 0);
    let moved = rt.block_on(etcd.store("/moved"));
    assert!(rt.block_on(moved.get("/leader")).expect("get").is_none());
    s0.signal(Signal::SIGTERM);
    s0.wait_exit(Duration::from_secs(20));
    // A server on the imported prefix (the same data directory: its secrets key) leads.
    let api = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut cmd = common::command(["server", "--data-dir"]);
    cmd.arg(&data0).args([
        "--api",
        &api.to_string(),
        "--store",
        &url,
        "--etcd-prefix",
        "/moved",
    ]);
    let s = Proc::spawn(cmd, "berth-server-moved", dir.path());
    s.wait_until(
        Duration::from_secs(15),
        "the server on the imported prefix leads",
        || leader(&rt, &moved).is_some_and(|(a, _)| a == format!("http://{api}")),
    );
}
