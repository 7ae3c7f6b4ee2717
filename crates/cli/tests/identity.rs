//! Users, roles and the audit log end to end on `berth up` (issue 13): `berth user add` prints
//! a prefixed token once; a deployer's deploy carries its name as `who`; a viewer is refused
//! (403 naming the capability); the audit log holds the deploy, the refused deploys and a
//! failed login; `berth token rotate` and `berth user rm` end a token at once; and one byte
//! edited in an audit entry in the store (the test opens `state.redb` itself while the server
//! is down) makes `berth audit verify` name that entry.

mod common;

use std::process::Output;

use common::cluster::{cli, cli_ok, events, releases, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, command, run_command, stderr, stdout, write_file, RUN_TIMEOUT};
use serde_json::Value;

/// `local` deploys freely; `prod` needs approval (a refusal by policy, exit 3).
const STACK: &str = r#"stack: demo
environments:
  local:
    regions: [local]
  prod:
    regions: [local]
    approval: true
services:
  web:
    process: { command: [sleep, "1000"] }
    replicas: 1
    stop_grace: 1s
"#;

/// `berth ARGS…` against `up` with `token` instead of the admin token.
fn as_token(up: &BerthUp, token: &str, args: &[&str]) -> Output {
    let mut cmd = command(args);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", token);
    run_command(cmd, RUN_TIMEOUT)
}

fn audit(up: &BerthUp) -> Vec<Value> {
    let out = cli_ok(up, &["audit", "--output", "json"]);
    serde_json::from_str::<Value>(&out)
        .expect("audit JSON")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn users_roles_and_an_audit_log_that_names_an_edited_entry() {
    let mut up = BerthUp::start();
    let file = write_file(up.dir(), "demo.yaml", STACK);

    // A token printed once, alone on stdout, prefixed for secret scanners.
    let out = cli(&up, &["user", "add", "alice", "--role", "deployer"]);
    assert_exit(&out, 0);
    let alice = stdout(&out).trim().to_string();
    assert!(alice.starts_with("berth_u_alice."), "{alice}");
    assert!(
        stderr(&out).contains("shown only this once"),
        "{}",
        stderr(&out)
    );
    let vic = stdout(&cli(&up, &["user", "add", "vic", "--role", "viewer"]))
        .trim()
        .to_string();
    let list = cli_ok(&up, &["user", "list"]);
    assert!(
        list.contains("alice") && list.contains("deployer"),
        "{list}"
    );
    assert!(!list.contains(&alice), "the token is never listed: {list}");

    // The deployer deploys; its name is `who`.
    let out = as_token(&up, &alice, &["deploy", "-f", &file, "--env", "local"]);
    assert_exit(&out, 0);
    wait_settled(&up, "demo", "web", 1, Some(1));
    let history = releases(&up, "demo", "local");
    assert_eq!(history[0]["who"], "alice", "{history:?}");
    let seen = events(&up, &[]);
    assert!(
        seen.iter()
            .any(|e| e["subject"] == "release" && e["who"] == "alice"),
        "{seen:#?}"
    );
    assert!(
        seen.iter().all(|e| e["subject"] != "audit"),
        "the log stays out of events: {seen:#?}"
    );

    // The viewer reads, and is refused a deploy naming the capability (nothing stored).
    assert_exit(&as_token(&up, &vic, &["status"]), 0);
    let out = as_token(
        &up,
        &vic,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.replicas=2",
        ],
    );
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("missing capability deploy"),
        "{}",
        stderr(&out)
    );
    // A viewer does not read the audit log or add users.
    let out = as_token(&up, &vic, &["audit"]);
    assert!(
        stderr(&out).contains("missing capability audit_read"),
        "{}",
        stderr(&out)
    );
    // A deploy refused by the environment's policy: exit 3.
    assert_exit(
        &as_token(&up, &alice, &["deploy", "-f", &file, "--env", "prod"]),
        3,
    );
    // A failed login.
    assert_exit(&as_token(&up, "not-a-token", &["status"]), 1);
    assert_eq!(releases(&up, "demo", "local").len(), 1, "nothing stored");

    let entries = audit(&up);
    let find = |pred: &dyn Fn(&Value) -> bool| entries.iter().find(|e| pred(e)).cloned();
    let deploy =
        find(&|e| e["user"] == "alice" && e["action"] == "POST /v1/deploy" && e["result"] == "ok")
            .unwrap_or_else(|| panic!("no deploy entry: {entries:#?}"));
    assert_eq!(deploy["role"], "deployer");
    assert_eq!(deploy["target"], "demo/local");
    assert_eq!(deploy["source"], "127.0.0.1");
    assert!(
        !deploy["plan_id"].as_str().unwrap_or("").is_empty(),
        "{deploy}"
    );
    assert!(
        find(&|e| e["user"] == "vic" && e["result"] == "denied: missing capability deploy")
            .is_some(),
        "{entries:#?}"
    );
    assert!(
        find(&|e| e["user"] == "alice" && e["target"] == "demo/prod" && e["result"] == "refused")
            .is_some(),
        "{entries:#?}"
    );
    assert!(
        find(&|e| e["user"] == "-" && e["result"] == "unauthorized").is_some(),
        "{entries:#?}"
    );
    // Filters.
    let only_vic = cli_ok(&up, &["audit", "--user", "vic", "--output", "json"]);
    let only_vic: Vec<Value> = serde_json::from_str(&only_vic).expect("json");
    assert!(!only_vic.is_empty() && only_vic.iter().all(|e| e["user"] == "vic"));
    let text = cli_ok(&up, &["audit", "--stack", "demo", "--since", "1h"]);
    assert!(
        text.contains("POST /v1/deploy") && !text.contains("unauthorized"),
        "{text}"
    );

    // Rotation ends the old token; removal ends the user.
    let out = as_token(&up, &alice, &["token", "rotate"]);
    assert_exit(&out, 0);
    let rotated = stdout(&out).trim().to_string();
    assert!(rotated.starts_with("berth_u_alice.") && rotated != alice);
    assert_exit(&as_token(&up, &alice, &["status"]), 1);
    assert_exit(&as_token(&up, &rotated, &["status"]), 0);
    cli_ok(&up, &["user", "rm", "alice"]);
    assert_exit(&as_token(&up, &rotated, &["status"]), 1);

    // The chain holds; no entry holds a token.
    let out = cli_ok(&up, &["audit", "verify"]);
    assert!(out.contains("audit log intact"), "{out}");
    for e in audit(&up) {
        let text = e.to_string();
        assert!(!text.contains(&alice) && !text.contains(&vic) && !text.contains("not-a-token"));
    }

    // Edit one byte of the deploy's entry in the store, with the server down.
    let seq = deploy["seq"].as_u64().expect("seq");
    up.kill9();
    let path = up.data_dir().join("state.redb");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        use berth_store::Store;
        let store = berth_store::EmbeddedStore::open(&path)
            .await
            .expect("open the store");
        let key = format!("/audit/{seq:020}");
        let mut value = store
            .get(&key)
            .await
            .expect("get")
            .expect("the entry")
            .value;
        let at = value
            .windows(5)
            .position(|w| w == b"alice")
            .expect("the user in the entry");
        value[at] = b'e'; // "elice"
        store.put(&key, value).await.expect("put");
    });
    drop(rt);
    up.restart();
    let out = cli(&up, &["audit", "verify"]);
    assert_exit(&out, 1);
    let said = stdout(&out);
    assert!(
        said.contains(&format!("entry {seq}: its content does not match its hash")),
        "{said}\n{}",
        stderr(&out)
    );
}
