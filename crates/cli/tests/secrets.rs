//! `berth secret` end to end on `berth up`: a value set through stdin reaches a process
//! instance's environment (it prints the value's length, never the value, to its log), `berth
//! secret list` shows the name and version only, and no command prints the value.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::cluster::{cli, cli_ok, events, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, stdout, write_file};

const VALUE: &str = "correct-horse-battery-staple-42";

/// One instance that prints the length of `$DB_PASSWORD` (and whether it is set), then idles.
const STACK: &str = r#"stack: demo
environments:
  local:
    regions: [local]
services:
  db-user:
    process:
      command: [sh, -c, "echo \"secret-length=$(( $(printf %s \"$DB_PASSWORD\" | wc -c) ))\"; exec sleep 1000"]
    secrets: [DB_PASSWORD]
    stop_grace: 1s
"#;

/// `berth secret set STACK NAME` with `value` on stdin.
fn set_via_stdin(up: &BerthUp, stack: &str, name: &str, value: &str) -> std::process::Output {
    let mut cmd = common::command(["secret", "set", stack, name]);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", up.token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start berth secret set");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        // A trailing newline, as `echo` would add: it is not part of the value.
        writeln!(stdin, "{value}").expect("write the value");
    }
    child.wait_with_output().expect("berth secret set ends")
}

#[test]
fn a_secret_set_on_stdin_reaches_the_instance_and_is_never_printed() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "demo.yaml", STACK);

    // Not set yet: the deploy is refused, saying how to set it.
    let refused = cli(&up, &["deploy", "-f", &file, "--env", "local"]);
    assert_exit(&refused, 1);
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(why.contains("berth secret set demo DB_PASSWORD"), "{why}");

    let out = set_via_stdin(&up, "demo", "DB_PASSWORD", VALUE);
    assert_exit(&out, 0);
    let said = stdout(&out);
    assert!(
        said.contains("version 1") && !said.contains(VALUE),
        "{said}"
    );

    let listed = cli_ok(&up, &["secret", "list", "demo"]);
    assert!(
        listed.contains("DB_PASSWORD") && !listed.contains(VALUE),
        "{listed}"
    );
    let json = cli_ok(&up, &["secret", "list", "demo", "--output", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON list");
    assert_eq!(parsed[0]["name"], "DB_PASSWORD");
    assert_eq!(parsed[0]["version"], 1);
    assert!(!json.contains(VALUE), "{json}");

    let deployed = cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    assert!(!deployed.contains(VALUE), "{deployed}");
    wait_settled(&up, "demo", "db-user", 1, Some(1));

    let agent_dir = up.data_dir().join("agent");
    let agent_dir = agent_dir.to_str().expect("UTF-8 temporary path");
    let want = format!("secret-length={}", VALUE.len());
    let mut last = String::new();
    let found = common::poll_until(Duration::from_secs(20), || {
        let out = cli(&up, &["logs", "db-user", "--agent-dir", agent_dir]);
        assert_exit(&out, 0);
        last = stdout(&out);
        last.contains(&want)
    });
    assert!(
        found,
        "berth logs should show `{want}`; it printed:\n{last}"
    );

    // Nothing a person reads shows the value.
    for args in [
        vec!["status"],
        vec!["status", "--output", "json"],
        vec!["history", "demo", "--env", "local", "--output", "json"],
        vec!["plan", "-f", &file, "--env", "local"],
    ] {
        let out = cli_ok(&up, &args);
        assert!(
            !out.contains(VALUE),
            "berth {args:?} prints the value:\n{out}"
        );
    }
    let all_events = serde_json::to_string(&events(&up, &[])).expect("events JSON");
    assert!(!all_events.contains(VALUE), "{all_events}");

    // A new value, from a file this time: the next plan says so by version.
    let value_file = write_file(up.dir(), "pw.txt", "another-value");
    let out = cli_ok(
        &up,
        &[
            "secret",
            "set",
            "demo",
            "DB_PASSWORD",
            "--from-file",
            &value_file,
            "--output",
            "json",
        ],
    );
    let set: serde_json::Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(set["version"], 2, "{out}");
    assert!(!out.contains("another-value"), "{out}");
    let plan = cli_ok(&up, &["plan", "-f", &file, "--env", "local"]);
    assert!(
        plan.contains("secret DB_PASSWORD: version 1 → 2") && !plan.contains("another-value"),
        "{plan}"
    );

    cli_ok(&up, &["secret", "rm", "demo", "DB_PASSWORD"]);
    let listed = cli_ok(&up, &["secret", "list", "demo"]);
    assert!(!listed.contains("DB_PASSWORD"), "{listed}");
}
