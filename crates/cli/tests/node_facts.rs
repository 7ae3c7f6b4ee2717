//! Issue 11's node bugs through the real binary: a drained node that is down shows both facts
//! (and `berth gc` does not wait for it), and an agent restarted without `--labels` keeps the
//! labels it registered with, while new labels are taken and the change is said. Also the CLI
//! side of refusing a plan that cannot be placed (exit 3, `--force`).

mod common;

use std::time::Duration;

use common::cluster::{api_get, cli, cli_ok};
use common::process::Proc;
use common::up::BerthUp;
use common::{assert_exit, command, stdout};
use serde_json::Value;

/// Starts `berth agent` `name` joined to `up` (data inside up's data dir, so up's guard cleans
/// up too), with `labels` as `--labels` when given; `run` names its log files.
fn agent(up: &BerthUp, name: &str, labels: Option<&str>, run: &str) -> Proc {
    let join = std::fs::read_to_string(up.data_dir().join("join.token")).expect("join.token");
    let dir = up.data_dir().join(format!("node-{name}"));
    let mut cmd = command([
        "agent",
        "--server",
        &up.api_url(),
        "--join-token",
        join.trim(),
        "--name",
        name,
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
    ]);
    if let Some(l) = labels {
        cmd.args(["--labels", l]);
    }
    Proc::spawn(cmd, run, up.dir())
}

/// Node `name` as `GET /v1/nodes` shows it.
fn node(up: &BerthUp, name: &str) -> Option<Value> {
    api_get(up, "/v1/nodes")?
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

fn state_of(up: &BerthUp, name: &str) -> String {
    node(up, name)
        .and_then(|n| n["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[test]
fn a_drained_node_that_is_down_says_both_and_gc_does_not_wait_for_it() {
    let up = BerthUp::start_with(&["--name", "n1"]);
    let n2 = agent(&up, "n2", Some("zone=b"), "n2");
    up.wait_until(Duration::from_secs(20), "n2 ready", || {
        state_of(&up, "n2") == "ready"
    });
    n2.kill9();
    up.wait_until(Duration::from_secs(20), "n2 down", || {
        state_of(&up, "n2") == "down"
    });

    let drained = cli_ok(&up, &["drain", "n2"]);
    assert!(
        drained.contains("n2 is down and draining"),
        "berth drain says the node is down: {drained}"
    );
    let n = node(&up, "n2").expect("n2 listed");
    assert_eq!(n["state"], "down", "down wins in `state`: {n}");
    assert_eq!(n["draining"], true, "the drain shows too: {n}");
    let table = cli_ok(&up, &["nodes"]);
    let line = table
        .lines()
        .find(|l| l.starts_with("n2 "))
        .unwrap_or_else(|| panic!("no n2 line in:\n{table}"));
    assert!(
        line.contains("down,draining"),
        "both facts in the table: {line}"
    );

    // Only n1 is up: gc waits for its report, not for the dead n2 (which once meant waiting
    // the whole timeout, then exit 1).
    let started = common::clock::now();
    let out = cli(&up, &["gc", "--timeout", "40"]);
    let took = started.elapsed();
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(
        text.contains("not waiting for down node(s): n2"),
        "gc says it skips n2: {text}"
    );
    assert!(text.contains("n1: removed"), "n1 reported: {text}");
    assert!(
        took < Duration::from_secs(30),
        "gc waited {took:?}, as if for the down node"
    );
}

#[test]
fn an_agent_restarted_without_labels_keeps_them_and_a_change_is_said() {
    let up = BerthUp::start_with(&["--name", "n1"]);
    let labels = |up: &BerthUp| node(up, "n2").map(|n| n["labels"].clone());
    let first = agent(&up, "n2", Some("zone=b,disk=ssd"), "n2-first");
    up.wait_until(Duration::from_secs(20), "n2 ready", || {
        state_of(&up, "n2") == "ready"
    });
    let registered = serde_json::json!({"zone": "b", "disk": "ssd"});
    assert_eq!(labels(&up), Some(registered.clone()));

    // The server marks a node ready as it registers, a moment before the agent has saved the
    // node token the registration issued: a stop in between loses it (and the join token
    // cannot re-register a known name). Stop the first agent only once it saved its token.
    let token = up.data_dir().join("node-n2").join("node.token");
    up.wait_until(Duration::from_secs(20), "n2's node.token", || {
        token.exists()
    });
    // The README's `--replace` example restarts without --labels: they are kept, and said so.
    first.signal(nix::sys::signal::Signal::SIGTERM);
    first.wait_exit(Duration::from_secs(20));
    let second = agent(&up, "n2", None, "n2-second");
    second.wait_until(
        Duration::from_secs(20),
        "the second agent to register",
        || second.stderr_text().contains("registered with the server"),
    );
    assert!(
        second
            .stderr_text()
            .contains("kept the registered labels (no --labels given)"),
        "{}",
        second.log_tail()
    );
    assert_eq!(
        labels(&up),
        Some(registered),
        "labels kept across the restart"
    );

    // New labels replace them, and the agent says what changed.
    second.signal(nix::sys::signal::Signal::SIGTERM);
    second.wait_exit(Duration::from_secs(20));
    let third = agent(&up, "n2", Some("zone=c"), "n2-third");
    third.wait_until(
        Duration::from_secs(20),
        "the third agent to register",
        || third.stderr_text().contains("registered with the server"),
    );
    let log = third.stderr_text();
    assert!(
        log.contains("node labels changed")
            && log.contains("disk=ssd,zone=b")
            && log.contains("zone=c"),
        "{}",
        third.log_tail()
    );
    assert_eq!(labels(&up), Some(serde_json::json!({"zone": "c"})));
}

/// The CLI side of the placement refusal (the server side is in crates/server/tests/new_user.rs):
/// `berth deploy` of a plan that cannot be placed exits 3 naming the reason; `--force` deploys.
#[test]
fn an_unplaceable_deploy_exits_3_unless_forced() {
    let up = BerthUp::start_with(&["--name", "n1"]);
    up.wait_until(Duration::from_secs(20), "n1 ready", || {
        state_of(&up, "n1") == "ready"
    });
    let dir = common::temp_dir();
    let file = common::write_file(
        dir.path(),
        "mars.yaml",
        r#"stack: mars
environments:
  local:
    regions: [local]
services:
  web:
    process: {command: [berth, whoami]}
    ports: { http: 0 }
    placement: { constraints: ["zone == mars"] }
"#,
    );
    let out = cli(&up, &["deploy", "-f", &file, "--env", "local"]);
    assert_exit(&out, 3);
    let err = common::stderr(&out);
    assert!(
        err.contains("web in local: 1 of 1 cannot be placed") && err.contains("--force"),
        "{err}"
    );
    let forced = cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--force"]);
    assert!(
        forced.contains("release 1 of mars in local created"),
        "{forced}"
    );
}
