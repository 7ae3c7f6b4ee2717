//! `berth up --demo` end to end (issue 3): the hint it prints, its private tokens, three
//! `berth whoami` answering through the router, a new version, a rollback, and what `status`,
//! `history` and `events` say about them; an instance killed with `kill -9` comes back.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::cluster::{
    assert_every_answer_has_version, cli, cli_ok, events, service, settled,
    wait_distinct_instances, wait_settled, ROLLOUT_TIMEOUT,
};
use common::process::{kill_recorded, stat};
use common::up::BerthUp;
use common::{assert_exit, stderr, stdout, DEMO};
use serde_json::Value;

/// The demo's routed host.
const HOST: &str = "demo.localhost";

/// How many answers "every answer" means.
const ANSWERS: usize = 30;

#[test]
fn demo_prints_how_to_reach_it_and_keeps_its_tokens_private() {
    let up = BerthUp::start_with(&["--demo"]);
    up.wait_until(Duration::from_secs(10), "the demo's hint on stdout", || {
        up.proc().stdout_text().contains("try:")
    });
    let out = up.proc().stdout_text();
    for expected in [
        format!("curl -s http://demo.localhost:{}/", up.router().port()),
        format!("curl -s -H 'Host: demo.localhost' http://{}/", up.router()),
        format!("(token: {})", up.token_path().display()),
        "release 1 of stack demo is rolling out".to_string(),
    ] {
        assert!(
            out.contains(&expected),
            "berth up --demo should print {expected:?}; it printed:\n{out}"
        );
    }

    // The node token appears once the agent registered.
    let node_token = up.data_dir().join("agent/node.token");
    up.wait_until(Duration::from_secs(10), "agent/node.token", || {
        node_token.exists()
    });
    for path in [
        up.token_path(),
        up.data_dir().join("join.token"),
        node_token,
    ] {
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} must be readable by its owner only, got {:o}",
            path.display(),
            mode & 0o777
        );
    }
}

#[test]
fn demo_answers_then_a_new_version_then_a_rollback() {
    let up = BerthUp::start_with(&["--demo"]);
    wait_settled(&up, "demo", "web", 3, Some(1));

    // `berth status --output json` parses and shows three healthy instances.
    let text = cli_ok(&up, &["status", "--output", "json"]);
    let status: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("berth status --output json is not JSON ({e}):\n{text}"));
    assert!(
        settled(&status, "demo", "web", 3, Some(1)),
        "berth status should show demo/web live with 3 healthy instances of release 1:\n{text}"
    );
    let web = service(&status, "demo", "web").expect("demo/web in the status");
    assert_eq!(
        (web["desired"].as_u64(), web["healthy"].as_u64()),
        (Some(3), Some(3))
    );
    let ids: BTreeSet<String> = web["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("an instance id").to_string())
        .collect();

    // Three processes answer through the router: exactly the instances the status lists.
    assert_eq!(wait_distinct_instances(&up, HOST, 3), ids);
    let pids: BTreeSet<i32> = up.workloads().iter().map(|w| w.pid).collect();
    assert_eq!(
        pids.len(),
        3,
        "three workload processes: {:?}",
        up.workloads()
    );
    let v1 = assert_every_answer_has_version(&up, HOST, ANSWERS, "1");

    // A new version: `--wait` shows progress and returns once every answer shows it.
    let out = cli(
        &up,
        &[
            "deploy",
            "-f",
            DEMO,
            "--env",
            "local",
            "--set",
            "web.env.VERSION=2",
            "--wait",
        ],
    );
    assert_exit(&out, 0);
    let printed = stdout(&out);
    for expected in [
        "env.VERSION: \"1\" → \"2\"",
        "release 2 of demo in local created",
        "rolling out 1 → 2",
        "release 2 is live",
    ] {
        assert!(
            printed.contains(expected),
            "berth deploy --wait should print {expected:?}:\n{printed}"
        );
    }
    let v2 = assert_every_answer_has_version(&up, HOST, ANSWERS, "2");
    assert!(
        v1.is_disjoint(&v2),
        "version 2 answered from version 1's instances: {v1:?} {v2:?}"
    );
    wait_settled(&up, "demo", "web", 3, Some(2));

    // Back to the previous release: every answer shows version 1 again.
    let out = cli(&up, &["rollback", "demo", "--env", "local", "--wait"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("release 3 is live"),
        "berth rollback --wait:\n{}",
        stdout(&out)
    );
    assert_every_answer_has_version(&up, HOST, ANSWERS, "1");
    wait_settled(&up, "demo", "web", 3, Some(3));

    // History: newest first, with statuses, and the rollback's summary.
    let history = cli_ok(&up, &["history", "demo", "--env", "local"]);
    let rows: Vec<(String, String, String)> = history
        .lines()
        .skip(1)
        .map(|line| {
            // RELEASE  DATE TIME  WHO  STATUS  SUMMARY…
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert!(cols.len() >= 6, "unexpected history line: {line:?}");
            let summary = line[line.find(cols[4]).expect("status column") + cols[4].len()..]
                .trim()
                .to_string();
            (cols[0].to_string(), cols[4].to_string(), summary)
        })
        .collect();
    let numbers_and_statuses: Vec<(&str, &str)> = rows
        .iter()
        .map(|(n, s, _)| (n.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        numbers_and_statuses,
        [("3", "live"), ("2", "superseded"), ("1", "superseded")],
        "berth history:\n{history}"
    );
    assert!(
        rows[0].2.starts_with("rollback to 1"),
        "release 3's summary should say `rollback to 1`:\n{history}"
    );
    let json: Value = serde_json::from_str(&cli_ok(
        &up,
        &["history", "demo", "--env", "local", "--output", "json"],
    ))
    .expect("berth history --output json is JSON");
    assert_eq!(json[0]["number"], 3);
    assert_eq!(json[0]["rollback_of"], 1);

    // Events without -f: the recent history, up to the last change, then the end.
    let text = cli_ok(&up, &["events"]);
    for expected in [
        "release 2: live",
        "release 3: rolling_out",
        "release 3: live",
        "release 2: superseded",
    ] {
        assert!(
            text.contains(expected),
            "berth events should show {expected:?}:\n{text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.contains("instance demo-web-3-") && l.contains(": healthy (wanted: run)")),
        "berth events should show release 3's instances becoming healthy:\n{text}"
    );
    // Nothing happens any more, so every change is listed: the last one shown is the store's
    // last revision, which `--since` the revision before it shows alone ("start after this
    // store revision", the flag's help), and `--since` it shows nothing more.
    let all = events(&up, &[]);
    let last = all.last().expect("some events")["revision"]
        .as_i64()
        .expect("a revision");
    let since = (last - 1).to_string();
    let newer = events(&up, &["--since", &since]);
    assert!(
        newer.iter().all(|e| e["revision"] == last) && !newer.is_empty(),
        "berth events stopped at revision {last}, but --since {since} shows {newer:?}"
    );
    let none = events(&up, &["--since", &last.to_string()]);
    assert!(
        none.is_empty(),
        "--since {last} (the last revision) shows {none:?}"
    );
}

#[test]
fn an_instance_killed_with_sigkill_is_restarted_or_replaced() {
    let up = BerthUp::start_with(&["--demo"]);
    wait_settled(&up, "demo", "web", 3, Some(1));
    let before = up.workloads();
    assert_eq!(before.len(), 3, "three workloads: {before:?}");
    let victim = before[0].clone();
    assert!(
        kill_recorded(victim.pid, victim.start_time),
        "cannot kill {victim:?}"
    );

    // Back to three healthy instances, none of them the killed process, all alive.
    up.wait_until(
        ROLLOUT_TIMEOUT,
        "three live workloads again, without the killed one",
        || {
            let now = up.workloads();
            now.len() == 3
                && now.iter().all(|w| {
                    w.pid != victim.pid && stat(w.pid).map(|(_, t)| Some(t)) == Some(w.start_time)
                })
        },
    );
    wait_settled(&up, "demo", "web", 3, Some(1));
    assert_every_answer_has_version(&up, HOST, ANSWERS, "1");
    wait_distinct_instances(&up, HOST, 3);
    let out = up.cli(["status"]);
    assert_exit(&out, 0);
    assert!(stderr(&out).is_empty(), "berth status wrote to stderr");
}
