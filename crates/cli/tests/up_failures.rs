//! What goes wrong, end to end (issue 3): a release that never becomes healthy is rolled back
//! while the previous one keeps serving; a wrong token gets 401; a bad spec gets 400 with
//! `FILE:LINE:COL` errors and stores nothing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{
    api_get, assert_every_answer_has_version, cli, cli_ok, releases, stack, status, wait_settled,
};
use common::up::BerthUp;
use common::{
    assert_exit, assert_no_panic, command, http, run_command, stderr, stdout, write_file, DEMO,
    RUN_TIMEOUT,
};
use serde_json::{json, Value};

const HOST: &str = "demo.localhost";

/// The demo with a short progress deadline, so a release that never becomes healthy fails in
/// seconds rather than the default minute.
fn impatient_demo(up: &BerthUp) -> String {
    let text = std::fs::read_to_string(DEMO).expect("the demo stack");
    let rollout = "rollout: { strategy: rolling, max_surge: 1, max_unavailable: 0 }";
    assert!(
        text.contains(rollout),
        "the demo's rollout changed:\n{text}"
    );
    let impatient = text.replace(
        rollout,
        "rollout: { strategy: rolling, max_surge: 1, max_unavailable: 0, progress_deadline: 3s }",
    );
    write_file(up.dir(), "impatient-demo.yaml", impatient)
}

/// What a load generator saw through the router.
#[derive(Debug, Default)]
struct Load {
    ok: usize,
    /// Non-200 answers, transport errors, and 200s from another version, described.
    failures: Vec<String>,
}

/// Sends requests through the router one after the other until `stop` is set, at most
/// `max` of them and for at most `deadline`; every answer must be a 200 showing `version`.
fn load(
    router: std::net::SocketAddr,
    version: &'static str,
    stop: Arc<AtomicBool>,
    max: usize,
    deadline: Duration,
) -> std::thread::JoinHandle<Load> {
    std::thread::spawn(move || {
        let started = common::clock::now();
        let mut seen = Load::default();
        while !stop.load(Ordering::Relaxed) && seen.ok + seen.failures.len() < max {
            if started.elapsed() > deadline {
                seen.failures
                    .push(format!("still running after {deadline:?}"));
                break;
            }
            match http::request(router, "GET", "/", &[("Host", HOST)], &[]) {
                Ok(r) if r.status == 200 => {
                    let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
                    if body["version"] == version {
                        seen.ok += 1;
                    } else {
                        seen.failures
                            .push(format!("200 from another version: {}", r.text()));
                    }
                }
                Ok(r) => seen.failures.push(format!("{}: {}", r.status, r.text())),
                Err(e) => seen.failures.push(format!("error: {e}")),
            }
        }
        seen
    })
}

#[test]
fn a_release_that_never_becomes_healthy_is_rolled_back_while_the_previous_one_serves() {
    let up = BerthUp::start();
    let file = impatient_demo(&up);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    wait_settled(&up, "demo", "web", 3, Some(1));
    assert_every_answer_has_version(&up, HOST, 10, "1");

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(
        up.router(),
        "1",
        stop.clone(),
        50_000,
        Duration::from_secs(120),
    );
    // Release 2's instances answer their health check with 503: never healthy.
    let out = cli(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.env.VERSION=2",
            "--set",
            "web.health.http=/status/503",
            "--wait",
        ],
    );
    // Keep the traffic going until the rollback has settled, then look at it.
    wait_settled(&up, "demo", "web", 3, Some(1));
    stop.store(true, Ordering::Relaxed);
    let seen = traffic.join().expect("the load thread panicked");

    assert_exit(&out, 1);
    assert_no_panic(&out);
    assert!(
        stdout(&out).contains("rolling out 1 → 2"),
        "berth deploy --wait should show progress:\n{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("release 2 failed"),
        "berth deploy --wait should say the release failed:\n{}",
        stderr(&out)
    );
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed during the failed rollout, e.g. {:?}",
        seen.failures.len(),
        seen.ok + seen.failures.len(),
        &seen.failures[..seen.failures.len().min(5)]
    );
    assert!(seen.ok >= 20, "too few requests to tell: {seen:?}");

    // The failure and the automatic rollback are on record.
    let list = releases(&up, "demo", "local");
    let statuses: Vec<(u64, &str)> = list
        .iter()
        .map(|r| {
            (
                r["number"].as_u64().unwrap_or(0),
                r["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(statuses, [(2, "failed"), (1, "live")], "{list:?}");
    assert!(
        list[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "a failed release says why: {:?}",
        list[0]
    );
    let rollout = status(&up)
        .and_then(|s| stack(&s, "demo").map(|d| d["rollout"].clone()))
        .unwrap_or_default();
    assert!(
        rollout
            .as_str()
            .is_some_and(|r| r.starts_with("rolled back to 1")),
        "status should say the stack rolled back to 1: {rollout}"
    );
    let history = cli_ok(&up, &["history", "demo", "--env", "local"]);
    assert!(
        history
            .lines()
            .any(|l| l.starts_with("2 ") && l.contains(" failed ")),
        "berth history should show release 2 failed:\n{history}"
    );
    assert_every_answer_has_version(&up, HOST, 30, "1");
}

/// A first release that never becomes healthy has nothing to roll back to: `berth deploy
/// --wait` says so, with the server's reason, instead of claiming a previous release was
/// restored (there was none).
#[test]
fn a_failed_first_release_says_nothing_was_rolled_back_to() {
    let up = BerthUp::start();
    let file = impatient_demo(&up);
    let out = cli(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.health.http=/status/503",
            "--wait",
        ],
    );
    assert_exit(&out, 1);
    assert_no_panic(&out);
    let err = stderr(&out);
    assert!(
        stdout(&out).contains("rolling out 1"),
        "berth deploy --wait should show progress:\n{}",
        stdout(&out)
    );
    assert!(
        err.contains("release 1 failed: "),
        "berth deploy --wait should say the release failed:\n{err}"
    );
    assert!(
        !err.contains("restored"),
        "there was no previous release to restore:\n{err}"
    );
    assert!(
        err.contains("nothing to roll back to"),
        "berth deploy --wait should say nothing was rolled back to, and why:\n{err}"
    );
    let list = releases(&up, "demo", "local");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "failed", "{list:?}");
    let reason = list[0]["reason"].as_str().unwrap_or_default().to_string();
    assert!(!reason.is_empty(), "a failed release says why: {list:?}");
    assert!(
        err.contains(&reason),
        "the message carries the server's reason {reason:?}:\n{err}"
    );
}

/// A failed release after a live one: `berth deploy --wait` names the release the server rolls
/// back to, with the failure's reason.
#[test]
fn a_failed_release_names_the_release_it_rolls_back_to() {
    let up = BerthUp::start();
    let file = impatient_demo(&up);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    let out = cli(
        &up,
        &[
            "deploy",
            "-f",
            &file,
            "--env",
            "local",
            "--set",
            "web.env.VERSION=2",
            "--set",
            "web.health.http=/status/503",
            "--wait",
        ],
    );
    assert_exit(&out, 1);
    assert_no_panic(&out);
    let err = stderr(&out);
    assert!(
        err.contains("release 2 failed: ")
            && (err.contains("; rolling back to release 1")
                || err.contains("; release 1 was restored")),
        "berth deploy --wait should name the release rolled back to:\n{err}"
    );
    assert!(
        !err.contains("nothing was rolled back"),
        "release 1 went live, so there was something to roll back to:\n{err}"
    );
    wait_settled(&up, "demo", "web", 3, Some(1));
}

/// `--timeout` bounds `berth deploy --wait`: a release still rolling out when it passes ends the
/// wait with exit 1 and a pointer to `berth status`, and is left rolling out.
#[test]
fn deploy_wait_gives_up_after_its_timeout() {
    let up = BerthUp::start();
    // Never healthy, and the default progress deadline (60 s) is far away.
    let out = cli(
        &up,
        &[
            "deploy",
            "-f",
            DEMO,
            "--env",
            "local",
            "--set",
            "web.health.http=/status/503",
            "--wait",
            "--timeout",
            "1",
        ],
    );
    assert_exit(&out, 1);
    assert_no_panic(&out);
    let err = stderr(&out);
    assert!(
        err.contains("release 1 did not finish within 1 s; see `berth status demo`"),
        "berth deploy --wait should give up after --timeout:\n{err}"
    );
    let list = releases(&up, "demo", "local");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "rolling_out", "{list:?}");
}

/// `berth ARGS…` against `up` with `token` instead of the admin token.
fn with_token(up: &BerthUp, token: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = command(args);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", token);
    run_command(cmd, RUN_TIMEOUT)
}

#[test]
fn a_wrong_token_gets_401_and_a_bad_spec_gets_400_with_positions_and_stores_nothing() {
    let up = BerthUp::start();

    // Wrong credentials: the CLI exits 1 and says so; the API answers 401.
    for token in ["wrong", "0123456789abcdef0123456789abcdef"] {
        let out = with_token(&up, token, &["status"]);
        assert_exit(&out, 1);
        assert_no_panic(&out);
        assert!(
            stderr(&out).contains("token"),
            "a refused token should be named as the problem:\n{}",
            stderr(&out)
        );
    }
    let join = std::fs::read_to_string(up.data_dir().join("join.token")).expect("join.token");
    let admin = up.token();
    for path in ["/v1/status", "/v1/nodes", "/v1/events"] {
        for (what, token) in [("a wrong", "wrong"), ("the join", join.trim())] {
            let r = http::get_auth(up.api(), path, token).expect("the API answers");
            assert_eq!(r.status, 401, "GET {path} with {what} token: {}", r.text());
        }
        let r = http::get(up.api(), path).expect("the API answers");
        assert_eq!(r.status, 401, "GET {path} without a token: {}", r.text());
    }
    assert_eq!(
        http::get_auth(up.api(), "/v1/status", &admin)
            .unwrap()
            .status,
        200
    );

    // A good release to compare with.
    let source = std::fs::read_to_string(DEMO).expect("the demo stack");
    let post = |token: &str, body: &Value| {
        let auth = format!("Bearer {token}");
        http::request(
            up.api(),
            "POST",
            "/v1/deploy",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .expect("the API answers")
    };
    let good = json!({"file": "demo.yaml", "source": source, "env": "local"});
    let r = post("wrong", &good);
    assert_eq!(
        r.status,
        401,
        "POST /v1/deploy with a wrong token: {}",
        r.text()
    );
    assert!(
        api_get(&up, "/v1/status").is_some_and(|s| s["stacks"] == json!([])),
        "a refused deploy stored something"
    );
    let r = post(&admin, &good);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_settled(&up, "demo", "web", 3, Some(1));
    let status_before = status(&up).expect("status");

    // Two errors, each reported at its place.
    let bad = source
        .replace("replicas: ${values.replicas}", "replicas: lots")
        .replace("stop_grace: 10s", "stop_grace: forever")
        .replace("VERSION: \"1\"", "VERSION: \"9\"");
    let line_of = |needle: &str| {
        bad.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle:?} not in the bad stack"))
    };
    let expected_lines = [line_of("replicas: lots"), line_of("stop_grace: forever")];
    let r = post(
        &admin,
        &json!({"file": "bad.yaml", "source": bad, "env": "local"}),
    );
    assert_eq!(r.status, 400, "a bad spec: {}", r.text());
    let body = r.json();
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing was stored")),
        "{body}"
    );
    let details: Vec<&str> = body["details"]
        .as_array()
        .map(|d| d.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(details.len(), 2, "one detail per error: {body}");
    for (detail, line) in details.iter().zip(expected_lines) {
        let prefix = format!("bad.yaml:{line}:");
        let col = detail
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once(": "))
            .map(|(col, _)| col);
        assert!(
            col.is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())),
            "expected `bad.yaml:{line}:COL: …`, got {detail:?}"
        );
    }

    // Nothing stored: the same single release, the same instances, no new stack.
    let list = releases(&up, "demo", "local");
    assert_eq!(list.len(), 1, "a bad spec created a release: {list:?}");
    assert_eq!(status(&up).as_ref(), Some(&status_before));
    let ghost = bad.replace("stack: demo", "stack: ghost");
    let r = post(
        &admin,
        &json!({"file": "ghost.yaml", "source": ghost, "env": "local"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = http::get_auth(up.api(), "/v1/status?stack=ghost", &admin).unwrap();
    assert_eq!(
        r.status,
        404,
        "a bad spec created stack ghost: {}",
        r.text()
    );
    let r = http::get_auth(up.api(), "/v1/stacks/ghost/local/releases", &admin).unwrap();
    assert_eq!(
        r.status,
        404,
        "a bad spec created a release of ghost: {}",
        r.text()
    );

    // The CLI shows the same positions and exits 1.
    let path = write_file(up.dir(), "bad.yaml", &bad);
    let out = cli(&up, &["deploy", "-f", &path, "--env", "local"]);
    assert_exit(&out, 1);
    assert_no_panic(&out);
    for line in expected_lines {
        assert!(
            stderr(&out).contains(&format!("{path}:{line}:")),
            "berth deploy should print `{path}:{line}:COL: …`:\n{}",
            stderr(&out)
        );
    }
    assert_eq!(releases(&up, "demo", "local").len(), 1);
    assert_eq!(status(&up).as_ref(), Some(&status_before));
}
