//! Issue 5 end to end: `image:` services through the real `berth up`, on the real Docker Engine,
//! with the images `scripts/build-test-images` makes (`berth-test/busybox:v1|v2`: busybox httpd
//! on 8080 answering `/` with its version and `/healthz` with `ok`).
//!
//! 1. three containers of v1 answer through the router;
//! 2. a rolling update v1 → v2 under constant load loses no request, then everything says v2;
//! 3. `berth rollback` returns every answer to v1;
//! 4. a container killed behind berth's back is replaced, and 3 are healthy again;
//! 5. `kill -9` of `berth up` and a restart adopt the running containers (same ids, same start);
//! 6. a missing image fails the release with a reason naming it; the rollout is rolled back and
//!    the live release serves throughout.
//!
//! Without an Engine each test prints a loud banner and passes, unless `BERTH_REQUIRE_DOCKER=1`
//! (CI), where it fails. Every container the test's `berth up` created is removed when the test
//! ends, pass or fail (by its agent's `berth.agent` label).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::{cli_ok, releases, settled, stack, status, wait_settled};
use common::docker::{engine_or_skip, DockerUp, Load, Seen, V1, V2};
use common::{assert_exit, http, poll_until, write_file};
use serde_json::Value;

const STACK: &str = "dock";
const SVC: &str = "web";

/// How long a replacement, an adoption or a failed release may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Load: one request every 5 ms (200 req/s asked), at most 2 minutes. What is asserted is a
/// count per phase, not a rate: [`LOAD_BEFORE`] requests before the watched event, at least
/// [`LOAD_DURING`] while it happens, [`LOAD_AFTER`] after it. A slow debug build on a busy
/// machine sends fewer requests per second and still passes; a load generator that sent nothing
/// while the event happened (stuck, or started too late) cannot.
const LOAD_EVERY: Duration = Duration::from_millis(5);
const LOAD_BEFORE: usize = 50;
/// (A failed release of a missing image may be over in 300 ms: 44 requests at ~140 req/s.)
const LOAD_DURING: usize = 5;
const LOAD_AFTER: usize = 50;
const LOAD_MAX: usize = 24_000;
const LOAD_FOR: Duration = Duration::from_secs(120);

/// The stack: 3 busybox httpd containers on container port 8080, checked on `/healthz`, routed
/// for host `127.0.0.1` (what the harness's `Host: 127.0.0.1:PORT` matches).
fn stack_file(up: &DockerUp, image: &str) -> String {
    let name = format!("{}.yaml", image.replace(['/', ':'], "-"));
    write_file(
        up.dir(),
        &name,
        format!(
            r#"stack: {STACK}
environments:
  local:
    regions: [local]
services:
  {SVC}:
    image: {image}
    ports: {{ http: 8080 }}
    replicas: 3
    health: {{ http: /healthz, port: http, interval: 250ms, timeout: 1s, healthy: 1, unhealthy: 2 }}
    route: {{ host: 127.0.0.1, path: /, port: http }}
    rollout: {{ strategy: rolling, max_surge: 1, max_unavailable: 0, progress_deadline: 30s }}
    stop_grace: 2s
"#
        ),
    )
}

/// Deploys `image` as the next release and waits until its 3 instances are the only ones, all
/// healthy. Returns the release number.
#[track_caller]
fn deploy(up: &DockerUp, image: &str, release: u64) {
    let file = stack_file(up, image);
    cli_ok(up, &["deploy", "-f", &file, "--env", "local"]);
    wait_settled(up, STACK, SVC, 3, Some(release));
}

/// `berth status --output json` (the command, not the API: what a user sees).
#[track_caller]
fn status_json(up: &DockerUp) -> Value {
    let out = cli_ok(up, &["status", STACK, "--output", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{out}"))
}

/// The instances of the service in a status document.
fn instances(status: &Value) -> Vec<Value> {
    common::cluster::service(status, STACK, SVC)
        .and_then(|s| s["instances"].as_array().cloned())
        .unwrap_or_default()
}

/// `n` answers through the router; every one must be a 200 whose body is `version`.
#[track_caller]
fn assert_answers(up: &DockerUp, n: usize, version: &str) {
    for i in 0..n {
        let r = http::get(up.router(), "/").unwrap_or_else(|e| {
            panic!(
                "request {i} through the router failed: {e}\n{}",
                up.log_tail()
            )
        });
        assert_eq!(
            (r.status, r.text().trim()),
            (200, version),
            "request {i} through the router\n{}",
            up.log_tail()
        );
    }
}

/// Waits until the agent runs exactly the containers of the instances `status` lists, and
/// nothing else (no leftover, stopped or not); returns their container ids by instance.
#[track_caller]
fn wait_containers_match_status(up: &DockerUp) -> Vec<(String, String)> {
    let mut last = (Vec::new(), BTreeSet::new());
    let held = poll_until(DEADLINE, || {
        let ids: BTreeSet<String> = status(up)
            .map(|s| {
                instances(&s)
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let all = up.containers().all();
        let matches =
            all.len() == ids.len() && all.iter().all(|c| c.running && ids.contains(&c.instance));
        last = (
            all.iter()
                .map(|c| (c.instance.clone(), c.id.clone(), c.running))
                .collect(),
            ids,
        );
        matches
    });
    assert!(
        held,
        "the containers (instance, id, running) {:?} do not match the instances {:?}\n{}",
        last.0,
        last.1,
        up.log_tail()
    );
    let mut found: Vec<(String, String)> = last.0.into_iter().map(|(i, id, _)| (i, id)).collect();
    found.sort();
    found
}

/// Starts constant load through the router and waits until it has sent [`LOAD_BEFORE`]
/// requests; returns it with the count at which the watched event begins.
#[track_caller]
fn start_load(up: &DockerUp) -> (Load, usize) {
    let load = Load::start(up.router(), LOAD_EVERY, LOAD_MAX, LOAD_FOR);
    up.wait_until(
        Duration::from_secs(30),
        &format!("the load to send {LOAD_BEFORE} requests"),
        || load.sent() >= LOAD_BEFORE,
    );
    let mark = load.sent();
    (load, mark)
}

/// Called when the watched event is over (`mark`: the count when it began): asserts at least
/// [`LOAD_DURING`] requests were sent meanwhile, keeps the load going for [`LOAD_AFTER`] more
/// (so it covers the end of what it watched), then stops it; asserts no request failed.
#[track_caller]
fn finish_load(up: &DockerUp, (load, mark): (Load, usize), during: &str) -> Seen {
    let sent_during = load.sent() - mark;
    assert!(
        sent_during >= LOAD_DURING,
        "only {sent_during} requests were sent during {during}; at least {LOAD_DURING} asked \
         (is the load generator stuck?)\n{}",
        up.log_tail()
    );
    let target = load.sent() + LOAD_AFTER;
    up.wait_until(
        Duration::from_secs(30),
        &format!("{LOAD_AFTER} more requests of load"),
        || load.sent() >= target,
    );
    let seen = load.finish();
    assert!(
        seen.failed == 0,
        "{} of {} requests failed during {during}: {:?}\n{}",
        seen.failed,
        seen.sent,
        seen.failures,
        up.log_tail()
    );
    eprintln!(
        "load around {during}: {} requests ({sent_during} during it) in {:.1} s ({:.0} req/s), answers {:?}",
        seen.sent,
        seen.elapsed.as_secs_f64(),
        seen.rate(),
        seen.bodies
    );
    seen
}

#[test]
fn three_containers_of_v1_answer_through_the_router() {
    if !engine_or_skip("three_containers_of_v1_answer_through_the_router") {
        return;
    }
    let up = DockerUp::start();
    deploy(&up, V1, 1);

    let status = status_json(&up);
    let list = instances(&status);
    let ids: BTreeSet<&str> = list.iter().filter_map(|i| i["id"].as_str()).collect();
    let addrs: BTreeSet<&str> = list.iter().filter_map(|i| i["addr"].as_str()).collect();
    assert_eq!(
        (ids.len(), addrs.len()),
        (3, 3),
        "3 distinct instances on 3 distinct addresses expected:\n{status:#}"
    );
    assert!(
        list.iter()
            .all(|i| i["state"] == "healthy" && i["release"] == 1),
        "{status:#}"
    );
    // Each instance is its own container, and each answers v1 on its own address.
    let containers = wait_containers_match_status(&up);
    let distinct: BTreeSet<&str> = containers.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(distinct.len(), 3, "{containers:?}");
    for addr in &addrs {
        let addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad addr {addr}: {e}"));
        let r = http::get(addr, "/").expect("the instance answers on its address");
        assert_eq!(
            (r.status, r.text().trim()),
            (200, "v1"),
            "directly at {addr}"
        );
    }
    // The router's table has exactly those 3 endpoints for the route.
    let routes = common::cluster::api_get(&up, "/v1/routes").expect("GET /v1/routes");
    let endpoints: BTreeSet<&str> = routes["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["endpoints"].as_array().into_iter().flatten())
        .filter_map(|e| e["addr"].as_str())
        .collect();
    assert_eq!(endpoints, addrs, "routes:\n{routes:#}");
    assert_answers(&up, 30, "v1");
}

#[test]
fn a_rolling_update_from_v1_to_v2_loses_no_request() {
    if !engine_or_skip("a_rolling_update_from_v1_to_v2_loses_no_request") {
        return;
    }
    let up = DockerUp::start();
    deploy(&up, V1, 1);
    let before = wait_containers_match_status(&up);

    let load = start_load(&up);
    let file = stack_file(&up, V2);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    wait_settled(&up, STACK, SVC, 3, Some(2));
    let seen = finish_load(&up, load, "the rolling update v1 → v2");
    assert!(
        seen.bodies.keys().all(|b| b == "v1" || b == "v2") && seen.bodies.contains_key("v2"),
        "answers during the update: {:?}",
        seen.bodies
    );

    assert_answers(&up, 30, "v2");
    let after = wait_containers_match_status(&up);
    let old: BTreeSet<&str> = before.iter().map(|(_, id)| id.as_str()).collect();
    assert!(
        after.iter().all(|(_, id)| !old.contains(id.as_str())),
        "v1's containers should all be gone: before {before:?}, after {after:?}"
    );
}

#[test]
fn a_rollback_returns_every_answer_to_v1() {
    if !engine_or_skip("a_rollback_returns_every_answer_to_v1") {
        return;
    }
    let up = DockerUp::start();
    deploy(&up, V1, 1);
    deploy(&up, V2, 2);
    assert_answers(&up, 10, "v2");

    // No registry can be reached: the rollback must use the images already on the node.
    let load = start_load(&up);
    cli_ok(&up, &["rollback", STACK, "--env", "local"]);
    wait_settled(&up, STACK, SVC, 3, Some(3));
    finish_load(&up, load, "the rollback v2 → v1");

    assert_answers(&up, 30, "v1");
    wait_containers_match_status(&up);
    let history = cli_ok(
        &up,
        &["history", STACK, "--env", "local", "--output", "json"],
    );
    let history: Value = serde_json::from_str(&history).expect("history is JSON");
    let three = history
        .as_array()
        .and_then(|a| a.iter().find(|r| r["number"] == 3))
        .unwrap_or_else(|| panic!("no release 3 in {history:#}"));
    assert_eq!(
        (&three["status"], &three["rollback_of"]),
        (&Value::from("live"), &Value::from(1)),
        "{history:#}"
    );
}

#[test]
fn a_container_killed_behind_berths_back_is_replaced() {
    if !engine_or_skip("a_container_killed_behind_berths_back_is_replaced") {
        return;
    }
    let up = DockerUp::start();
    deploy(&up, V1, 1);
    let before = wait_containers_match_status(&up);
    let (victim_instance, victim) = before[0].clone();

    up.containers().kill(&victim);
    let mut last = Vec::new();
    let replaced = poll_until(DEADLINE, || {
        let all = up.containers().all();
        let done = all.len() == 3
            && all.iter().all(|c| c.running && c.id != victim)
            && status(&up).is_some_and(|s| settled(&s, STACK, SVC, 3, Some(1)));
        last = all;
        done
    });
    assert!(
        replaced,
        "container {victim} (instance {victim_instance}) was not replaced by 3 healthy ones within {DEADLINE:?}; containers now {last:?}\n{}",
        up.log_tail()
    );
    let after = wait_containers_match_status(&up);
    let kept: Vec<_> = before[1..].to_vec();
    assert!(
        kept.iter().all(|c| after.contains(c)),
        "the other two containers should not have been touched: before {before:?}, after {after:?}"
    );
    assert_answers(&up, 30, "v1");
}

#[test]
fn kill_9_of_berth_up_and_a_restart_adopt_the_running_containers() {
    if !engine_or_skip("kill_9_of_berth_up_and_a_restart_adopt_the_running_containers") {
        return;
    }
    let mut up = DockerUp::start();
    deploy(&up, V1, 1);
    let before = wait_containers_match_status(&up);
    let started: Vec<String> = before
        .iter()
        .map(|(_, id)| up.containers().started_at(id))
        .collect();

    up.kill9();
    let running: Vec<(String, String)> = up
        .containers()
        .running()
        .into_iter()
        .map(|c| (c.instance, c.id))
        .collect();
    assert_eq!(
        running, before,
        "the containers must outlive berth (static stability)"
    );

    up.restart();
    wait_settled(&up, STACK, SVC, 3, Some(1));
    assert_answers(&up, 30, "v1");
    let after = wait_containers_match_status(&up);
    assert_eq!(after, before, "the same containers, adopted");
    let restarted: Vec<String> = after
        .iter()
        .map(|(_, id)| up.containers().started_at(id))
        .collect();
    assert_eq!(
        restarted, started,
        "adopted containers must not be restarted (State.StartedAt moved)"
    );
    assert!(
        up.proc().stderr_text().contains("adopted container")
            || up.proc().stdout_text().contains("adopted container"),
        "berth up should log the adoption\n{}",
        up.log_tail()
    );
}

#[test]
fn a_missing_image_fails_the_release_and_the_live_one_keeps_serving() {
    if !engine_or_skip("a_missing_image_fails_the_release_and_the_live_one_keeps_serving") {
        return;
    }
    let up = DockerUp::start();
    deploy(&up, V1, 1);
    deploy(&up, V2, 2);
    let before = wait_containers_match_status(&up);

    let missing = "berth-test/nope:v9";
    let load = start_load(&up);
    let file = stack_file(&up, missing);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    up.wait_until(DEADLINE, "release 3 to fail", || {
        releases(&up, STACK, "local")
            .iter()
            .any(|r| r["number"] == 3 && r["status"] == "failed")
    });
    wait_settled(&up, STACK, SVC, 3, Some(2));
    let seen = finish_load(&up, load, "the failed release of a missing image");
    assert_eq!(
        seen.bodies.keys().collect::<Vec<_>>(),
        ["v2"],
        "only the live release may answer: {:?}",
        seen.bodies
    );

    let history = cli_ok(
        &up,
        &["history", STACK, "--env", "local", "--output", "json"],
    );
    let history: Value = serde_json::from_str(&history).expect("history is JSON");
    let failed = history
        .as_array()
        .and_then(|a| a.iter().find(|r| r["number"] == 3))
        .unwrap_or_else(|| panic!("no release 3 in {history:#}"));
    assert_eq!(failed["status"], "failed", "{history:#}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(missing),
        "the failure reason should name the image {missing}: {reason:?}\n{history:#}"
    );
    let live = status(&up).expect("status");
    let rollout = stack(&live, STACK).map(|s| s["rollout"].clone());
    assert!(
        rollout
            .as_ref()
            .and_then(|r| r.as_str())
            .is_some_and(|r| r.starts_with("rolled back")),
        "the rollout should say it was rolled back: {rollout:?}"
    );
    // Release 2's containers served throughout and still do; nothing of release 3 is left.
    assert_eq!(wait_containers_match_status(&up), before);
    assert_answers(&up, 30, "v2");
    let out = up.cli(["status", STACK]);
    assert_exit(&out, 0);
}
