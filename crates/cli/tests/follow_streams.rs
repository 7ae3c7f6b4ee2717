//! `berth events -f` ("every state change as it happens") and `berth logs SERVICE -f` (keep
//! streaming new lines), against a real `berth up`: a follower prints what happens after it
//! started, keeps running while nothing happens, and ends on Ctrl-C (SIGINT) or a kill (SIGTERM).
//! Without `-f` both commands print what there is and exit by themselves.

mod common;

use std::time::Duration;

use common::cluster::{cli_ok, wait_settled};
use common::process::Proc;
use common::up::BerthUp;
use common::write_file;
use nix::sys::signal::Signal;

/// How long a follower may take to print a change (or to end after a signal).
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(15);

/// `berth ARGS…` against `up`, kept running as `name` (logs in up's directory).
fn follower(up: &BerthUp, args: &[&str], name: &str) -> Proc {
    let mut cmd = common::command_of(&up.dir().join("berth"), args);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", up.token());
    Proc::spawn(cmd, name, up.dir())
}

/// Sends `sig` and asserts the follower ends within [`FOLLOW_TIMEOUT`].
#[track_caller]
fn ends_on(proc: &Proc, sig: Signal) {
    assert!(proc.try_exit().is_none(), "the follower ended by itself");
    proc.signal(sig);
    proc.wait_exit(FOLLOW_TIMEOUT);
}

const WEB: &str = r#"stack: tail
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route: { host: tail.localhost, port: http }
    stop_grace: 2s
"#;

#[test]
fn events_follow_prints_each_change_as_it_happens_and_ends_on_a_signal() {
    let up = BerthUp::start();
    let table = follower(&up, &["events", "-f"], "events-table");
    let json = follower(&up, &["events", "-f", "--output", "json"], "events-json");
    // The history first: the node registered at start.
    for f in [&table, &json] {
        f.wait_until(FOLLOW_TIMEOUT, "the node's registration", || {
            f.stdout_text().contains(" registered")
        });
    }
    let before = table.stdout_text();
    assert!(!before.contains("release 1"), "{before}");

    // A deploy after the followers started: its release, rollout and instance appear.
    let file = write_file(up.dir(), "tail.yaml", WEB);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    table.wait_until(FOLLOW_TIMEOUT, "the deploy's events", || {
        let text = table.stdout_text();
        text.contains("release 1: rolling_out")
            && text.contains("rollout to 1: succeeded")
            && text.contains("release 1: live")
            && text.contains("instance tail-web-1-")
    });
    wait_settled(&up, "tail", "web", 1, Some(1));

    // Then maintenance: one more change, printed while the follower runs.
    let lines = table.stdout_text().lines().count();
    cli_ok(&up, &["maintenance", "on", "web"]);
    table.wait_until(FOLLOW_TIMEOUT, "the maintenance event", || {
        let text = table.stdout_text();
        text.lines().count() > lines && text.lines().skip(lines).any(|l| l.contains("maintenance"))
    });

    // Each JSON line is an event, revisions never going back.
    json.wait_until(FOLLOW_TIMEOUT, "the JSON follower to see the same", || {
        json.stdout_text().contains("maintenance")
    });
    let mut last = 0;
    for line in json.stdout_text().lines() {
        let e: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON event ({e}): {line}"));
        let rev = e["revision"].as_i64().expect("a revision");
        assert!(rev >= last, "revision {rev} after {last}: {line}");
        last = rev;
    }

    // `--since REV -f`: nothing older than REV is printed, newer changes are. (The server
    // starts *at* REV, the CLI's help says "after"; REV itself is not asserted either way.)
    let since = follower(
        &up,
        &[
            "events",
            "-f",
            "--output",
            "json",
            "--since",
            &last.to_string(),
        ],
        "events-since",
    );
    cli_ok(&up, &["maintenance", "off", "web"]);
    since.wait_until(FOLLOW_TIMEOUT, "the change after --since", || {
        since.stdout_text().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|e| e["revision"].as_i64() > Some(last) && e["subject"] == "maintenance")
        })
    });
    for line in since.stdout_text().lines() {
        let e: serde_json::Value = serde_json::from_str(line).expect("JSON event");
        assert!(
            e["revision"].as_i64() >= Some(last),
            "--since {last} printed {line}"
        );
    }

    // Ctrl-C ends one, a kill the others.
    ends_on(&table, Signal::SIGINT);
    ends_on(&json, Signal::SIGTERM);
    ends_on(&since, Signal::SIGINT);
}

/// One instance printing `tick-N` five times a second.
const TICKER: &str = r#"stack: tick
environments:
  local:
    regions: [local]
services:
  ticker:
    process:
      command: [sh, -c, "i=0; while :; do echo tick-$i; i=$((i+1)); sleep 0.2; done"]
    stop_grace: 1s
"#;

/// The highest `tick-N` in `text`.
fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.rsplit("tick-").next()?.trim().parse().ok())
        .max()
}

#[test]
fn logs_follow_streams_new_lines_and_ends_on_a_signal() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "tick.yaml", TICKER);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    let agent_dir = up.data_dir().join("agent");
    let agent_dir = agent_dir.to_str().expect("UTF-8 path");

    // Without -f: what there is, then exit.
    let mut first = None;
    up.wait_until(FOLLOW_TIMEOUT, "a first tick in berth logs", || {
        first = last_tick(&cli_ok(&up, &["logs", "ticker", "--agent-dir", agent_dir]));
        first.is_some()
    });

    for (sig, name) in [(Signal::SIGINT, "logs-int"), (Signal::SIGTERM, "logs-term")] {
        let f = follower(
            &up,
            &["logs", "ticker", "-f", "--agent-dir", agent_dir],
            name,
        );
        f.wait_until(FOLLOW_TIMEOUT, "the follower's first lines", || {
            last_tick(&f.stdout_text()).is_some()
        });
        let start = last_tick(&f.stdout_text()).expect("a tick");
        // Lines written after it started reach it, while it keeps running.
        f.wait_until(FOLLOW_TIMEOUT, "ten newer ticks", || {
            last_tick(&f.stdout_text()).is_some_and(|n| n >= start + 10)
        });
        let text = f.stdout_text();
        assert!(
            text.lines().all(|l| l.contains(" | tick-")),
            "every line is `INSTANCE | LINE`:\n{text}"
        );
        ends_on(&f, sig);
    }
}

/// DESIGN's contract: "`SERVICE` is `SERVICE` when one deployed stack has it, else
/// `STACK/SERVICE`". Two stacks with a `web`: the bare name is ambiguous for `berth logs` as it
/// is for `berth maintenance`, and `STACK/web` picks one.
#[test]
fn a_service_name_two_stacks_share_must_be_given_as_stack_slash_service() {
    let up = BerthUp::start();
    for stack in ["one", "two"] {
        let text = TICKER
            .replace("stack: tick", &format!("stack: {stack}"))
            .replace("ticker:", "web:")
            .replace("tick-$i", &format!("{stack}-tick-$i"));
        let file = write_file(up.dir(), &format!("{stack}.yaml"), text);
        cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    }
    let agent_dir = up.data_dir().join("agent");
    let agent_dir = agent_dir.to_str().expect("UTF-8 path");

    let out = up.cli(["maintenance", "on", "web"]);
    common::assert_exit(&out, 1);
    assert!(
        common::stderr(&out).contains("name it as STACK/web"),
        "{}",
        common::stderr(&out)
    );

    let mut one = String::new();
    up.wait_until(FOLLOW_TIMEOUT, "one/web's lines", || {
        one = cli_ok(&up, &["logs", "one/web", "--agent-dir", agent_dir]);
        one.contains("one-tick-")
    });
    assert!(
        !one.contains("two-tick-"),
        "one/web shows two's lines:\n{one}"
    );

    let out = up.cli(["logs", "web", "--agent-dir", agent_dir]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "berth logs web printed:\n{}",
        common::stdout(&out)
    );
    assert!(
        common::stderr(&out).contains("one/web") || common::stderr(&out).contains("STACK/web"),
        "{}",
        common::stderr(&out)
    );
}

/// `berth events --since REV`: "Start after this store revision" (the CLI's help; the client's
/// `events` says "state changes after revision `since`"), so a follower resuming from the last
/// revision it printed does not print that one twice.
#[test]
fn events_since_rev_starts_after_rev() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "tail.yaml", WEB);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    let all = common::cluster::events(&up, &[]);
    let last = all
        .iter()
        .filter_map(|e| e["revision"].as_i64())
        .max()
        .expect("some events");
    let after = common::cluster::events(&up, &["--since", &(last - 1).to_string()]);
    let revisions: Vec<i64> = after
        .iter()
        .filter_map(|e| e["revision"].as_i64())
        .collect();
    assert!(
        !revisions.is_empty() && revisions.iter().all(|r| *r == last),
        "--since {} should print revision {last} only, printed {revisions:?}",
        last - 1
    );
}

/// Issue 17 point 8: the events table has a time column and names the stack; the server's
/// bookkeeping keys do not leak into it; `--stack` and `--env` filter.
#[test]
fn the_events_table_has_times_names_stacks_and_filters() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "tail.yaml", WEB);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    wait_settled(&up, "tail", "web", 1, Some(1));
    let all = cli_ok(&up, &["events"]);
    assert!(!all.contains("node-tokens"), "{all}");
    assert!(!all.contains(" other "), "{all}");
    let release = all
        .lines()
        .find(|l| l.contains("release 1: live"))
        .unwrap_or_else(|| panic!("no release event:\n{all}"));
    assert!(
        release.contains("tail/local release 1: live"),
        "the summary names the stack: {release}"
    );
    // `REV  YYYY-MM-DD HH:MM:SS  SUBJECT  SUMMARY`
    let fields: Vec<&str> = release.split_whitespace().collect();
    assert!(
        fields.len() > 3
            && fields[1].len() == 10
            && fields[1].as_bytes()[4] == b'-'
            && fields[2].len() == 8
            && fields[2].as_bytes()[2] == b':',
        "a time after the revision: {release}"
    );
    let tail = cli_ok(&up, &["events", "--stack", "tail", "--env", "local"]);
    assert!(tail.contains("tail/local release 1: live"), "{tail}");
    assert!(
        !tail.contains(" registered"),
        "a node is no stack's: {tail}"
    );
    let none = cli_ok(&up, &["events", "--stack", "nosuch"]);
    assert!(none.trim().is_empty(), "{none}");
}
