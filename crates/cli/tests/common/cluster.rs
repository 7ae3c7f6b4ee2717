//! Looking at a running `berth up` from a test: the API read over raw HTTP (cheap enough to poll
//! every [`super::POLL`]), requests through its router, and waits on what they show.
//!
//! Commands whose *output* a test checks go through [`BerthUp::cli`]; polls go through here, so
//! a wait does not start a `berth` process fifty times a second.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use super::up::BerthUp;
use super::{assert_exit, http, stdout};

/// How long a rollout of a small stack may take in a test before it is a failure.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// `berth ARGS…` against `up`; asserts exit 0 and returns stdout.
#[track_caller]
pub fn cli_ok(up: &BerthUp, args: &[&str]) -> String {
    let out = up.cli(args);
    assert_exit(&out, 0);
    stdout(&out)
}

/// `berth ARGS…` against `up`, whatever its exit.
pub fn cli(up: &BerthUp, args: &[&str]) -> Output {
    up.cli(args)
}

/// `GET path` on the API with the admin token: the JSON body if it answered 200.
pub fn api_get(up: &BerthUp, path: &str) -> Option<Value> {
    let r = http::get_auth(up.api(), path, &up.token()).ok()?;
    (r.status == 200).then(|| r.json())
}

/// How many nodes `berth nodes` shows as ready.
pub fn nodes_ready(up: &BerthUp) -> usize {
    api_get(up, "/v1/nodes")
        .and_then(|v| {
            v.as_array()
                .map(|a| a.iter().filter(|n| n["state"] == "ready").count())
        })
        .unwrap_or(0)
}

/// `GET /v1/status`, or `None` if it did not answer 200.
pub fn status(up: &BerthUp) -> Option<Value> {
    api_get(up, "/v1/status")
}

/// The view of `stack`'s `service` in a status document.
pub fn service<'a>(status: &'a Value, stack: &str, service: &str) -> Option<&'a Value> {
    status["stacks"]
        .as_array()?
        .iter()
        .find(|s| s["stack"] == stack)?["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)
}

/// The view of `stack` in a status document.
pub fn stack<'a>(status: &'a Value, stack: &str) -> Option<&'a Value> {
    status["stacks"]
        .as_array()?
        .iter()
        .find(|s| s["stack"] == stack)
}

/// The instances of a service view.
pub fn instances(service: &Value) -> Vec<&Value> {
    service["instances"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// Whether `stack`'s rollout is over (`live`, or `rolled back to …` after a failed release) and
/// its `service` runs exactly `n` instances, all of release `release` (any if `None`), all
/// healthy and wanted running — nothing left draining.
pub fn settled(
    status: &Value,
    stack_name: &str,
    svc: &str,
    n: usize,
    release: Option<u64>,
) -> bool {
    let Some(s) = stack(status, stack_name) else {
        return false;
    };
    let Some(v) = service(status, stack_name, svc) else {
        return false;
    };
    let list = instances(v);
    let rollout = s["rollout"].as_str().unwrap_or_default();
    (rollout == "live" || rollout.starts_with("rolled back to "))
        && v["healthy"] == n
        && list.len() == n
        && list.iter().all(|i| {
            i["state"] == "healthy"
                && i["desired"] == "run"
                && release.is_none_or(|r| i["release"] == r)
        })
}

/// Waits until [`settled`] holds; panics with the last status and berth's log tail if not.
#[track_caller]
pub fn wait_settled(up: &BerthUp, stack: &str, svc: &str, n: usize, release: Option<u64>) {
    let mut last = None;
    let what = format!(
        "{stack}/{svc}: live, {n} healthy instances{}",
        release
            .map(|r| format!(" of release {r}"))
            .unwrap_or_default()
    );
    let held = super::poll_until(ROLLOUT_TIMEOUT, || {
        last = status(up);
        last.as_ref()
            .is_some_and(|s| settled(s, stack, svc, n, release))
            || up.proc().try_exit().is_some()
    }) && up.proc().try_exit().is_none();
    if !held {
        panic!(
            "timed out after {ROLLOUT_TIMEOUT:?} (or berth exited) waiting for {what}; last status:\n{}\n{}",
            last.map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_else(|| "(none)".into()),
            up.log_tail()
        );
    }
}

/// The releases of `stack` in `env`, newest first (`GET …/releases`); empty if it answered
/// anything but 200.
pub fn releases(up: &BerthUp, stack: &str, env: &str) -> Vec<Value> {
    api_get(up, &format!("/v1/stacks/{stack}/{env}/releases"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// The status (`live`, `superseded`, …) of release `n`, if it is retained.
pub fn release_status(up: &BerthUp, stack: &str, env: &str, n: u64) -> Option<String> {
    releases(up, stack, env)
        .iter()
        .find(|r| r["number"] == n)
        .and_then(|r| r["status"].as_str().map(str::to_string))
}

/// `GET path` through the router with `Host: host`.
pub fn through_router(up: &BerthUp, host: &str, path: &str) -> std::io::Result<http::Response> {
    http::request(up.router(), "GET", path, &[("Host", host)], &[])
}

/// One `berth whoami` answer through the router; panics unless it is a 200 with JSON.
#[track_caller]
pub fn whoami(up: &BerthUp, host: &str) -> Value {
    let r = through_router(up, host, "/").unwrap_or_else(|e| {
        panic!(
            "GET / with Host {host} through the router failed: {e}\n{}",
            up.log_tail()
        )
    });
    assert_eq!(
        r.status,
        200,
        "GET / with Host {host} through the router: {}\n{}",
        r.text(),
        up.log_tail()
    );
    r.json()
}

/// `n` answers through the router; panics on any failure.
#[track_caller]
pub fn answers(up: &BerthUp, host: &str, n: usize) -> Vec<Value> {
    (0..n).map(|_| whoami(up, host)).collect()
}

/// Asserts that each of `n` answers through the router shows `version`, and returns the set of
/// instances that answered.
#[track_caller]
pub fn assert_every_answer_has_version(
    up: &BerthUp,
    host: &str,
    n: usize,
    version: &str,
) -> BTreeSet<String> {
    let all = answers(up, host, n);
    let wrong: Vec<&Value> = all.iter().filter(|a| a["version"] != version).collect();
    assert!(
        wrong.is_empty(),
        "{} of {n} answers do not show version {version}: {wrong:?}",
        wrong.len()
    );
    all.iter()
        .filter_map(|a| a["instance"].as_str().map(str::to_string))
        .collect()
}

/// Waits until the router has answered from `n` distinct instances (every answer must be a
/// 200); returns them. Bounded: at most 50 × `n` requests.
#[track_caller]
pub fn wait_distinct_instances(up: &BerthUp, host: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..50 * n {
        let a = whoami(up, host);
        seen.insert(a["instance"].as_str().unwrap_or_default().to_string());
        if seen.len() >= n {
            return seen;
        }
    }
    panic!(
        "the router answered from only {seen:?} in {} requests, expected {n} instances",
        50 * n
    );
}

/// A one-line events list (`berth events --output json`) parsed into values.
#[track_caller]
pub fn events(up: &BerthUp, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["events", "--output", "json"];
    args.extend_from_slice(extra);
    cli_ok(up, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect()
}
