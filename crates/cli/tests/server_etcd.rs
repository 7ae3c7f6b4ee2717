//! `berth server --store etcd://… --etcd-prefix P` (issue 14, point 1) end to end: the real
//! binary on a real etcd (one member, started here on loopback ports chosen at run time).
//! State lives in etcd, under the prefix (no `state.redb` is made): a secret set and its data
//! key rotated through one server are there after a restart; etcd holds no value in the clear
//! and nothing outside the prefix; an etcd that does not answer (or a malformed `--store`)
//! stops the server at start with a clear error.

mod common;

#[path = "../../store/tests/common/etcd.rs"]
mod etcd;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use berth_store::Store;
use common::process::Proc;
use common::{assert_exit, free_port, run_command, stderr, stdout};

const VALUE: &str = "etcd-held-VALUE-2f61c9";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// `berth server` on `store` with data in `data`, healthy.
fn start_server(data: &Path, store: &str, prefix: &str, log_dir: &Path) -> (Proc, SocketAddr) {
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = common::command(["server", "--data-dir"]);
    cmd.arg(data)
        .arg("--api")
        .arg(api.to_string())
        .arg("--store")
        .arg(store)
        .arg("--etcd-prefix")
        .arg(prefix);
    let proc = Proc::spawn(cmd, "berth-server", log_dir);
    proc.wait_until(
        Duration::from_secs(30),
        "GET /v1/health answers 200",
        || common::http::is_ok(api, "/v1/health"),
    );
    (proc, api)
}

fn cli(api: SocketAddr, data: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin.token");
    let mut cmd = common::command(args);
    cmd.env("BERTH_SERVER", format!("http://{api}"))
        .env("BERTH_TOKEN", token.trim());
    match stdin {
        None => run_command(cmd, Duration::from_secs(30)),
        Some(value) => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("start berth");
            writeln!(child.stdin.take().expect("stdin"), "{value}").expect("write");
            child.wait_with_output().expect("berth ends")
        }
    }
}

#[test]
fn a_server_keeps_its_state_in_etcd_under_its_prefix() {
    let rt = runtime();
    let etcd = rt.block_on(etcd::Etcd::start());
    let url = format!("etcd://{}", etcd.endpoints[0].trim_start_matches("http://"));
    let dir = common::temp_dir();
    let data = dir.path().join("data");

    let (server, api) = start_server(&data, &url, "/it", dir.path());
    let set = cli(
        api,
        &data,
        &["secret", "set", "shop", "DB_PASSWORD"],
        Some(VALUE),
    );
    assert_exit(&set, 0);
    let rotated = cli(api, &data, &["secret", "rotate-key"], None);
    assert_exit(&rotated, 0);
    assert!(
        stdout(&rotated).contains("data key 2"),
        "{}",
        stdout(&rotated)
    );

    // etcd holds berth's keys under /it/, the secret sealed.
    let (keys, plaintext) = rt.block_on(async {
        let store = etcd.store("/it").await;
        let all = store.range("").await.expect("range");
        let keys: Vec<String> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
        let plaintext = all
            .kvs
            .iter()
            .any(|kv| kv.value.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()));
        (keys, plaintext)
    });
    assert!(
        keys.contains(&"/secrets/shop/DB_PASSWORD".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("/secret-keys/")),
        "{keys:?}"
    );
    assert!(!plaintext, "a value in the clear in etcd: {keys:?}");
    let elsewhere = rt.block_on(async { etcd.store("/other").await.range("").await });
    assert!(
        elsewhere.expect("range").kvs.is_empty(),
        "nothing outside /it"
    );

    // A restart finds the state in etcd (the data directory holds tokens and the key only).
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server.wait_exit(Duration::from_secs(20));
    assert!(
        !data.join("state.redb").exists(),
        "no embedded store was made"
    );
    let (_server, api) = start_server(&data, &url, "/it", dir.path());
    let listed = cli(
        api,
        &data,
        &["secret", "list", "shop", "--output", "json"],
        None,
    );
    assert_exit(&listed, 0);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(json[0]["name"], "DB_PASSWORD");
    assert_eq!(json[0]["version"], 1);
}

#[test]
fn an_etcd_that_does_not_answer_stops_the_server_at_start() {
    let dir = common::temp_dir();
    let port = free_port();
    let mut cmd = common::command(["server", "--data-dir"]);
    cmd.arg(dir.path().join("data"))
        .arg("--api")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--store")
        .arg(format!("etcd://127.0.0.1:{port}"));
    let out = run_command(cmd, Duration::from_secs(60));
    assert_exit(&out, 1);
    let why = stderr(&out);
    assert!(
        why.contains(&format!("etcd at http://127.0.0.1:{port}"))
            && why.contains("check that etcd runs"),
        "{why}"
    );
    let bad = run_command(
        {
            let mut c = common::command(["server", "--store", "etcd://nohost"]);
            c.arg("--data-dir").arg(dir.path().join("d2"));
            c
        },
        Duration::from_secs(30),
    );
    assert_exit(&bad, 1);
    assert!(stderr(&bad).contains("HOST:PORT"), "{}", stderr(&bad));
}
