//! `berth store export > FILE` and `berth store import FILE` (issue 14, point 6): a cluster on
//! the embedded store moves to etcd. Releases (with their statuses and history), secrets'
//! versions and the secret values (still sealed, opened with the same `secrets.key`) survive
//! the round trip; the export holds no value in the clear; a non-empty target is refused.

mod common;

#[path = "../../store/tests/common/etcd.rs"]
mod etcd;

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::cluster::{cli_ok, wait_settled};
use common::process::Proc;
use common::up::BerthUp;
use common::{assert_exit, free_port, run_command, stderr, stdout, write_file};

const VALUE: &str = "exported-sealed-VALUE-c3d9";

const STACK: &str = r#"stack: shop
environments:
  local:
    regions: [local]
services:
  api:
    process:
      command: [sh, -c, "exec sleep 1000"]
    secrets: [DB_PASSWORD]
    env: { VERSION: "1" }
    stop_grace: 1s
"#;

fn set_secret(api: &str, token: &str, value: &str) {
    let mut cmd = common::command(["secret", "set", "shop", "DB_PASSWORD"]);
    cmd.env("BERTH_SERVER", api)
        .env("BERTH_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start berth secret set");
    writeln!(child.stdin.take().expect("stdin"), "{value}").expect("write");
    assert_exit(&child.wait_with_output().expect("ends"), 0);
}

/// `berth ARGS` against the server at `api`.
fn against(api: &str, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = common::command(args);
    cmd.env("BERTH_SERVER", api).env("BERTH_TOKEN", token);
    run_command(cmd, Duration::from_secs(30))
}

#[test]
fn a_cluster_moves_from_the_embedded_store_to_etcd_with_its_history() {
    let mut up = BerthUp::start();
    let data = up.data_dir().to_path_buf();
    let token = up.token();
    let file = write_file(up.dir(), "shop.yaml", STACK);
    set_secret(&up.api_url(), &token, VALUE);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "shop", "api", 1, Some(1));
    set_secret(&up.api_url(), &token, "second-value");
    cli_ok(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "api.env.VERSION=2",
            "--wait",
        ],
    );
    wait_settled(&up, "shop", "api", 1, Some(2));
    let history_before = cli_ok(
        &up,
        &["history", "shop", "--env", "local", "--output", "json"],
    );
    up.kill9();

    // Export the embedded store (its server stopped).
    let mut export = common::command(["store", "export", "--data-dir"]);
    export.arg(&data);
    let out = run_command(export, Duration::from_secs(30));
    assert_exit(&out, 0);
    assert!(stderr(&out).contains("exported "), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains(VALUE),
        "the export holds a value in the clear"
    );
    let json: serde_json::Value = serde_json::from_str(&text).expect("export JSON");
    assert_eq!(json["format"], "berth-store-export");
    assert_eq!(json["version"], 1);
    let dump = write_file(up.dir(), "store.json", &text);

    // Import it into an empty etcd prefix, then into the same one again (refused).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let etcd = rt.block_on(etcd::Etcd::start());
    let url = format!("etcd://{}", etcd.endpoints[0].trim_start_matches("http://"));
    let import = |prefix: &str| {
        let mut cmd = common::command(["store", "import", &dump, "--store", &url]);
        cmd.arg("--etcd-prefix")
            .arg(prefix)
            .arg("--data-dir")
            .arg(&data);
        run_command(cmd, Duration::from_secs(30))
    };
    let imported = import("/moved");
    assert_exit(&imported, 0);
    let keys = json["keys"].as_array().expect("keys").len();
    assert!(
        stdout(&imported).contains(&format!("imported {keys} keys")),
        "{}",
        stdout(&imported)
    );
    let again = import("/moved");
    assert_exit(&again, 1);
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));

    // A server on etcd, with the same data directory's tokens and secrets.key.
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut cmd = common::command(["server", "--data-dir"]);
    cmd.arg(&data)
        .arg("--api")
        .arg(api.to_string())
        .arg("--store")
        .arg(&url)
        .arg("--etcd-prefix")
        .arg("/moved");
    let server = Proc::spawn(cmd, "berth-server-etcd", up.dir());
    server.wait_until(
        Duration::from_secs(30),
        "GET /v1/health answers 200",
        || common::http::is_ok(api, "/v1/health"),
    );
    let api = format!("http://{api}");
    let history = against(
        &api,
        &token,
        &["history", "shop", "--env", "local", "--output", "json"],
    );
    assert_exit(&history, 0);
    let before: serde_json::Value = serde_json::from_str(&history_before).expect("json");
    let after: serde_json::Value = serde_json::from_str(&stdout(&history)).expect("json");
    let summary =
        |v: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> {
            v.as_array()
                .expect("releases")
                .iter()
                .map(|r| {
                    (
                        r["number"].clone(),
                        r["status"].clone(),
                        r["secrets"].clone(),
                    )
                })
                .collect()
        };
    assert_eq!(summary(&after), summary(&before), "the history survived");
    assert_eq!(summary(&after).len(), 2);
    let secrets = against(
        &api,
        &token,
        &["secret", "list", "shop", "--output", "json"],
    );
    assert_exit(&secrets, 0);
    let secrets: serde_json::Value = serde_json::from_str(&stdout(&secrets)).expect("json");
    assert_eq!(secrets[0]["version"], 2, "{secrets}");
    // The sealed values open with the same key: a rotation re-seals every one of them.
    let rotated = against(&api, &token, &["secret", "rotate-key"]);
    assert_exit(&rotated, 0);
    assert!(
        stdout(&rotated).contains("data key 2"),
        "{}",
        stdout(&rotated)
    );
}
