//! "Never shown" (README, Secrets): a secret's value appears in no command's stdout *or stderr*
//! (text and JSON forms, the tables of `berth history` and `berth events` included), not in
//! `berth up`'s own log, and in no file under the data directory but the store itself
//! (`instance.json` holds the spec without it, the workload's log only what it prints).
//!
//! `secrets.rs` checks the stdout of a few commands; this file runs
//! every command a person uses around a secret's life — refused deploy, set from stdin and from
//! a file, plan, deploy, status, history, events, logs, rollback, rm — and checks both streams.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::cluster::{cli, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, stderr, stdout, write_file};

/// Two values no other text contains by chance.
const FIRST: &str = "hunter2-first-value-8f3a91c0";
const SECOND: &str = "hunter2-second-value-51d7e2b4";

/// One instance that prints the length of `$DB_PASSWORD` (never the value), then idles.
const STACK: &str = r#"stack: vault
environments:
  local:
    regions: [local]
services:
  db-user:
    process:
      command: [sh, -c, "echo \"secret-length=$(( $(printf %s \"$DB_PASSWORD\" | wc -c) ))\"; exec sleep 1000"]
    secrets: [DB_PASSWORD]
    env: { MODE: "a" }
    stop_grace: 1s
"#;

/// Asserts neither stream of `out` holds either value; returns stdout.
#[track_caller]
fn clean(what: &str, out: &Output) -> String {
    for value in [FIRST, SECOND] {
        for (stream, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
            assert!(
                !text.contains(value),
                "berth {what} shows a secret value on {stream}:\n{text}"
            );
        }
    }
    stdout(out)
}

/// `berth ARGS…` against `up`, exit `code`, both streams free of the values.
#[track_caller]
fn run(up: &BerthUp, args: &[&str], code: i32) -> String {
    let out = cli(up, args);
    assert_exit(&out, code);
    clean(&args.join(" "), &out)
}

/// `berth secret set vault DB_PASSWORD` with `value` (and a newline) on stdin.
#[track_caller]
fn set_via_stdin(up: &BerthUp, value: &str) -> String {
    let mut cmd = common::command(["secret", "set", "vault", "DB_PASSWORD"]);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", up.token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start berth secret set");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{value}").expect("write the value");
    }
    let out = child.wait_with_output().expect("berth secret set ends");
    assert_exit(&out, 0);
    clean("secret set (stdin)", &out)
}

/// Every file under `dir` (recursively) whose bytes contain a value, except the store's own
/// file: the README's one place where values live.
fn files_holding_a_value(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_holding_a_value(&path, found);
            continue;
        }
        if !kind.is_file() || path.file_name().is_some_and(|n| n == "state.redb") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let holds = |value: &str| bytes.windows(value.len()).any(|w| w == value.as_bytes());
        if holds(FIRST) || holds(SECOND) {
            found.push(path.display().to_string());
        }
    }
}

#[test]
fn no_command_log_or_file_shows_a_secret_value_on_any_stream() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "vault.yaml", STACK);
    let file = file.as_str();

    // Refused before the secret exists: the error names how to set it, not a value.
    let refused = cli(&up, &["deploy", "-f", file, "--env", "local"]);
    assert_exit(&refused, 1);
    clean("deploy (refused)", &refused);
    assert!(
        stderr(&refused).contains("berth secret set vault DB_PASSWORD"),
        "{}",
        stderr(&refused)
    );

    let said = set_via_stdin(&up, FIRST);
    assert!(said.contains("version 1"), "{said}");
    for args in [
        vec!["secret", "list", "vault"],
        vec!["secret", "list", "vault", "--output", "json"],
        vec!["plan", "-f", file, "--env", "local"],
        vec!["plan", "-f", file, "--env", "local", "--output", "json"],
    ] {
        run(&up, &args, 0);
    }
    let deployed = run(&up, &["deploy", "-f", file, "--env", "local", "--wait"], 0);
    assert!(deployed.contains("release 1 is live"), "{deployed}");
    wait_settled(&up, "vault", "db-user", 1, Some(1));

    // The instance got the value (its log shows the length), and `berth logs` shows no value.
    let agent_dir = up.data_dir().join("agent");
    let agent_dir = agent_dir.to_str().expect("UTF-8 path");
    let want = format!("secret-length={}", FIRST.len());
    let mut last = String::new();
    let found = common::poll_until(Duration::from_secs(20), || {
        last = run(&up, &["logs", "db-user", "--agent-dir", agent_dir], 0);
        last.contains(&want)
    });
    assert!(
        found,
        "berth logs should show `{want}`; it printed:\n{last}"
    );

    // A second value from a file, a plan that only changes the secret's version, a deploy that
    // replaces the instance, and a rollback to release 1 (which runs the current value).
    let value_file = write_file(up.dir(), "pw.txt", SECOND);
    let set = run(
        &up,
        &[
            "secret",
            "set",
            "vault",
            "DB_PASSWORD",
            "--from-file",
            &value_file,
        ],
        0,
    );
    assert!(set.contains("version 2"), "{set}");
    let plan = run(&up, &["plan", "-f", file, "--env", "local"], 0);
    assert!(
        plan.contains("secret DB_PASSWORD: version 1 → 2"),
        "the secrets-only plan:\n{plan}"
    );
    // A whole plan (README, deploy rules): its id is what `--plan ID` takes.
    let id = plan
        .lines()
        .find_map(|l| l.strip_prefix("plan id: "))
        .unwrap_or_else(|| panic!("no plan id in the secrets-only plan:\n{plan}"))
        .trim()
        .to_string();
    run(
        &up,
        &[
            "deploy", "-f", file, "--env", "local", "--plan", &id, "--wait",
        ],
        0,
    );
    wait_settled(&up, "vault", "db-user", 1, Some(2));
    run(
        &up,
        &[
            "deploy",
            "-f",
            file,
            "--env",
            "local",
            "--set",
            "db-user.env.MODE=b",
            "--wait",
        ],
        0,
    );
    wait_settled(&up, "vault", "db-user", 1, Some(3));
    run(&up, &["rollback", "vault", "--env", "local", "--wait"], 0);
    wait_settled(&up, "vault", "db-user", 1, Some(4));

    // Everything a person reads afterwards: status, history and events in both forms.
    for args in [
        vec!["status"],
        vec!["status", "vault"],
        vec!["status", "--output", "json"],
        vec!["nodes"],
        vec!["nodes", "--output", "json"],
    ] {
        run(&up, &args, 0);
    }
    let history = run(&up, &["history", "vault", "--env", "local"], 0);
    assert!(
        history.lines().count() >= 5,
        "the history table should list 4 releases:\n{history}"
    );
    run(
        &up,
        &["history", "vault", "--env", "local", "--output", "json"],
        0,
    );
    let events = run(&up, &["events"], 0);
    assert!(
        events.contains("secret vault/DB_PASSWORD"),
        "the events table should list the secret's changes:\n{events}"
    );
    run(&up, &["events", "--output", "json"], 0);

    // Forgetting it.
    run(&up, &["secret", "rm", "vault", "DB_PASSWORD"], 0);
    run(&up, &["secret", "list", "vault"], 0);

    // berth up's own log (server, agent and router in one process), both streams.
    for (stream, text) in [
        ("stdout", up.proc().stdout_text()),
        ("stderr", up.proc().stderr_text()),
    ] {
        for value in [FIRST, SECOND] {
            assert!(
                !text.contains(value),
                "berth up's {stream} log shows a secret value:\n{text}"
            );
        }
    }

    // No file under the data directory holds a value but the store: not instance.json, not the
    // workload's output.log, not the agent's other files. (The value file the test wrote is
    // outside the data directory.)
    let mut found = Vec::new();
    files_holding_a_value(up.data_dir(), &mut found);
    assert!(
        found.is_empty(),
        "files under the data directory hold a secret value: {found:?}"
    );
}

/// README: "`berth events` (a secret change is `secret shop/DB_PASSWORD: version 2`)".
#[test]
fn the_events_table_names_each_secret_change_by_its_version() {
    let up = BerthUp::start();
    set_via_stdin(&up, FIRST);
    let events = run(&up, &["events"], 0);
    assert!(
        events.contains("secret vault/DB_PASSWORD: version 1"),
        "after the first set:\n{events}"
    );
    set_via_stdin(&up, SECOND);
    let events = run(&up, &["events"], 0);
    for version in [1, 2] {
        assert!(
            events.contains(&format!("secret vault/DB_PASSWORD: version {version}")),
            "after the second set, version {version} should be listed:\n{events}"
        );
    }
    assert!(
        !events.contains("version 0") && !events.contains("/secret-versions/"),
        "no secret change reads as version 0 or as a raw key:\n{events}"
    );
}
