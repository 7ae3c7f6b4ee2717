//! Issue 4, draining, end to end on the real `berth up`: `GET /sleep?ms=2000` requests in flight
//! when their instance is replaced all complete with 200, answered by the old instance itself.
//!
//! The test controls when the replacement happens, so that it lands in the middle of the requests
//! rather than racing them:
//! 1. release 1: three `berth whoami`, whose health check passes while `ready-1` exists;
//! 2. release 2 is deployed (rolling, `max_surge: 100%`); its instances check `ready-2`, which
//!    does not exist yet, so they run but never get traffic, and release 1 keeps serving;
//! 3. six `/sleep?ms=2000` requests are sent through the router one at a time, each awaited in
//!    the router's `/metrics` (`berth_router_upstream_outstanding`) before the next: least-loaded
//!    balancing puts them on every old instance;
//! 4. constant load starts, then `ready-2` is created: release 2 turns healthy and every old
//!    instance is drained and stopped (SIGTERM) while its requests are still running.
//!
//! Asserted: every old instance stopped accepting (SIGTERM) before the first sleep request
//! finished, so the replacement really overlapped them; every sleep request then answered 200
//! `slept 2000 ms`, and the router's access log shows each came from a release-1 address on its
//! first attempt; the old processes exited on their own once drained (long before
//! `stop_grace`); `status` ends with only release 2; the load saw no failure and both releases.
//!
//! Were draining broken — the agent killing the old instance at once, or the router cutting
//! its connections when it leaves the table — a sleep request would end in a 502, or be retried
//! (it is a GET) on a release-2 instance: the status, the access log's endpoint and its
//! `attempts=1` each catch that.
//!
//! The second test does the same with `berth rollback` from release 2 (release 3 runs release
//! 1's spec, gated on `ready-1`, which the test removes first).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{cli_ok, instances, service, status, wait_settled};
use common::docker::Load;
use common::process::stat;
use common::up::{BerthUp, Workload};
use common::{free_port, http, write_file};
use serde_json::Value;

const STACK: &str = "drain";
const SVC: &str = "web";
const REPLICAS: usize = 3;
/// Two sleep requests per old instance.
const SLEEPS: usize = 6;
const SLEEP_MS: u64 = 2000;
/// Far above the sleep: an instance SIGKILLed at the end of its grace would show.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Background load: one request every 10 ms, bounded.
const LOAD_EVERY: Duration = Duration::from_millis(10);
const LOAD_MAX: usize = 12_000;
const LOAD_FOR: Duration = Duration::from_secs(120);

/// The stack of `release` (1 or 2): `VERSION` is the release, and the health check passes once
/// `DIR/ready-RELEASE` exists. `unhealthy: 30` keeps a gated instance `starting` (not
/// restarted) for half a minute.
fn stack_file(up: &BerthUp, release: u64) -> String {
    let gate = gate(up.dir(), release);
    let gate = gate.to_str().expect("UTF-8 temporary path");
    let grace = STOP_GRACE.as_secs();
    write_file(
        up.dir(),
        &format!("drain-{release}.yaml"),
        format!(
            r#"stack: {STACK}
environments:
  local:
    regions: [local]
services:
  {SVC}:
    process: {{ command: [berth, whoami] }}
    env: {{ VERSION: "{release}" }}
    ports: {{ http: 0 }}
    replicas: {REPLICAS}
    health: {{ exec: [test, -e, "{gate}"], interval: 1s, timeout: 1s, healthy: 1, unhealthy: 30 }}
    route: {{ host: 127.0.0.1, path: /, port: http }}
    rollout: {{ strategy: rolling, max_surge: 100%, max_unavailable: 0, progress_deadline: 60s }}
    stop_grace: {grace}s
"#
        ),
    )
}

/// The file whose existence makes `release`'s instances healthy.
fn gate(dir: &Path, release: u64) -> std::path::PathBuf {
    dir.join(format!("ready-{release}"))
}

/// An instance as `status` shows it.
#[derive(Debug, Clone)]
struct Inst {
    id: String,
    release: u64,
    state: String,
    desired: String,
    addr: Option<SocketAddr>,
}

fn service_instances(up: &BerthUp) -> Vec<Inst> {
    let Some(s) = status(up) else {
        return Vec::new();
    };
    let Some(v) = service(&s, STACK, SVC) else {
        return Vec::new();
    };
    instances(v)
        .iter()
        .map(|i| Inst {
            id: i["id"].as_str().unwrap_or_default().to_string(),
            release: i["release"].as_u64().unwrap_or(0),
            state: i["state"].as_str().unwrap_or_default().to_string(),
            desired: i["desired"].as_str().unwrap_or_default().to_string(),
            addr: i["addr"].as_str().and_then(|a| a.parse().ok()),
        })
        .collect()
}

/// The router's `/metrics` text; empty if it did not answer 200.
fn metrics(addr: SocketAddr) -> String {
    match http::get(addr, "/metrics") {
        Ok(r) if r.status == 200 => r.text(),
        _ => String::new(),
    }
}

/// `(labels, value)` of every sample of `name` (`name{labels} value`).
fn samples<'a>(text: &'a str, name: &str) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// `berth_router_upstream_outstanding` by address.
fn outstanding(text: &str) -> BTreeMap<String, i64> {
    samples(text, "berth_router_upstream_outstanding")
        .into_iter()
        .filter_map(|(labels, v)| {
            let addr = labels.strip_prefix("addr=\"")?.strip_suffix('"')?;
            Some((addr.to_string(), v as i64))
        })
        .collect()
}

/// Whether `addr` refuses connections: the old instance has closed its listener, which
/// `berth whoami` does the moment it gets SIGTERM (it then only finishes what it has). A
/// connection that is accepted is closed at once, without a request.
fn refuses(addr: SocketAddr) -> bool {
    matches!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// Whether the recorded workload process still runs (same pid and start time).
fn alive(w: &Workload) -> bool {
    stat(w.pid).map(|(_, t)| t) == w.start_time
}

/// One sleep request's fate.
struct Sleep {
    id: String,
    outcome: std::io::Result<http::Response>,
    done: Instant,
}

/// The router's access-log line of request `id` (berth's stderr, colours removed), as
/// `(status, endpoint, attempts)`; string values may be quoted, and are returned unquoted.
fn access_line(log: &str, id: &str) -> Option<(String, String, String)> {
    let line = log.lines().find(|l| {
        l.contains("berth_router::access")
            && (l.contains(&format!("request_id={id} "))
                || l.contains(&format!("request_id=\"{id}\"")))
    })?;
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .trim_matches('"')
            .to_string()
    };
    Some((field("status"), field("endpoint"), field("attempts")))
}

/// `berth up` with the router's `/metrics` (on a free port, returned) and access log.
fn start() -> (BerthUp, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let arg = metrics.to_string();
    let up = BerthUp::start_with(&["--metrics", &arg, "--access-log"]);
    (up, metrics)
}

/// Deploys the stack of `release` with its gate open and waits until it alone runs, healthy.
#[track_caller]
fn deploy_settled(up: &BerthUp, release: u64) {
    std::fs::write(gate(up.dir(), release), b"").expect("create the gate");
    cli_ok(
        up,
        &["deploy", "-f", &stack_file(up, release), "--env", "local"],
    );
    wait_settled(up, STACK, SVC, REPLICAS, Some(release));
}

/// The heart of both tests. Release `from` is live and settled; `trigger` creates release `to`,
/// whose instances pass their health check only once `gate` exists (it must not yet). Waits
/// until `to`'s instances run, puts [`SLEEPS`] sleep requests in flight on `from`'s instances,
/// starts the load, opens the gate, and asserts everything the module's doc lists.
#[track_caller]
fn replace_under_sleeps(
    up: &BerthUp,
    metrics_addr: SocketAddr,
    from: u64,
    to: u64,
    gate: &Path,
    trigger: impl FnOnce(),
) {
    assert!(!gate.exists(), "{} must not exist yet", gate.display());
    let old = service_instances(up);
    assert!(
        old.len() == REPLICAS && old.iter().all(|i| i.release == from),
        "release {from} alone should run: {old:?}"
    );
    let old_addrs: BTreeMap<SocketAddr, String> = old
        .iter()
        .map(|i| {
            (
                i.addr.expect("a healthy instance has an address"),
                i.id.clone(),
            )
        })
        .collect();
    assert_eq!(old_addrs.len(), REPLICAS, "release {from}: {old:?}");
    let old_processes: Vec<Workload> = up
        .workloads()
        .into_iter()
        .filter(|w| old.iter().any(|i| i.id == w.instance))
        .collect();
    assert_eq!(
        old_processes.len(),
        REPLICAS,
        "a workload per instance of release {from}: {old_processes:?} {old:?}"
    );

    // Release `to`: its instances run and answer, but their health check waits for the gate.
    trigger();
    up.wait_until(
        Duration::from_secs(30),
        &format!(
            "release {to}'s instances to run (answering /healthz directly) while release {from} serves"
        ),
        || {
            let now = service_instances(up);
            let new: Vec<&Inst> = now.iter().filter(|i| i.release == to).collect();
            let serving = now
                .iter()
                .filter(|i| i.release == from && i.state == "healthy" && i.desired == "run")
                .count();
            serving == REPLICAS
                && new.len() == REPLICAS
                && new.iter().all(|i| {
                    i.state == "starting" && i.addr.is_some_and(|a| http::is_ok(a, "/healthz"))
                })
        },
    );
    let text = metrics(metrics_addr);
    let in_flight: f64 = samples(&text, "berth_router_requests_in_flight")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(in_flight, 0.0, "nothing should be in flight yet:\n{text}");

    // The sleep requests, one at a time, each seen outstanding at an instance before the next.
    let router = up.router();
    let mut sleepers = Vec::new();
    let started = common::clock::now();
    for n in 0..SLEEPS {
        let id = format!("drain-sleep-{to}-{n}");
        let header = id.clone();
        sleepers.push(std::thread::spawn(move || {
            let path = format!("/sleep?ms={SLEEP_MS}");
            let outcome = http::request(router, "GET", &path, &[("X-Request-Id", &header)], &[]);
            Sleep {
                id: header,
                outcome,
                done: common::clock::now(),
            }
        }));
        up.wait_until(
            Duration::from_secs(10),
            &format!("{id} to be outstanding at an instance"),
            || outstanding(&metrics(metrics_addr)).values().sum::<i64>() == n as i64 + 1,
        );
    }
    let spread = outstanding(&metrics(metrics_addr));
    for (addr, id) in &old_addrs {
        let n = spread.get(&addr.to_string()).copied().unwrap_or(0);
        assert!(
            n >= 1,
            "old instance {id} ({addr}) has no sleep request in flight: {spread:?}"
        );
    }
    assert_eq!(
        spread.values().sum::<i64>(),
        SLEEPS as i64,
        "in flight by address: {spread:?}"
    );

    // Constant load through the switch.
    let load = Load::start(router, LOAD_EVERY, LOAD_MAX, LOAD_FOR);
    up.wait_until(Duration::from_secs(10), "the load to get going", || {
        load.sent() >= 10
    });

    // Release `to` turns healthy: every old instance is drained and stopped.
    let gate_opened = common::clock::now();
    std::fs::write(gate, b"").expect("create the gate");
    let mut closed: BTreeMap<SocketAddr, Instant> = BTreeMap::new();
    up.wait_until(
        Duration::from_secs(20),
        "every old instance to stop accepting connections (SIGTERM)",
        || {
            for addr in old_addrs.keys() {
                if !closed.contains_key(addr) && refuses(*addr) {
                    closed.insert(*addr, common::clock::now());
                }
            }
            closed.len() == old_addrs.len()
        },
    );

    let sleeps: Vec<Sleep> = sleepers
        .into_iter()
        .map(|t| t.join().expect("a sleep thread panicked"))
        .collect();
    let ms = |t: Instant| t.saturating_duration_since(gate_opened).as_millis();
    let first_done = sleeps.iter().map(|s| s.done).min().expect("some sleeps");
    let last_done = sleeps.iter().map(|s| s.done).max().expect("some sleeps");
    for s in &sleeps {
        match &s.outcome {
            Ok(r) => assert_eq!(
                (r.status, r.text().trim()),
                (200, format!("slept {SLEEP_MS} ms").as_str()),
                "{} answered (at +{} ms after the gate opened)\n{}",
                s.id,
                ms(s.done),
                up.log_tail()
            ),
            Err(e) => panic!(
                "{} failed at +{} ms after the gate opened: {e}\n{}",
                s.id,
                ms(s.done),
                up.log_tail()
            ),
        }
    }
    // The replacement overlapped the requests: without this the run would prove nothing.
    for (addr, at) in &closed {
        assert!(
            *at < first_done,
            "old instance {} ({addr}) stopped accepting at +{} ms after the gate opened, but the \
             first sleep request had already finished at +{} ms: the replacement did not overlap \
             the requests (the sleeps started {} ms before the gate)",
            old_addrs[addr],
            ms(*at),
            ms(first_done),
            gate_opened.duration_since(started).as_millis()
        );
    }

    // Each sleep request was answered by an old instance, on its first attempt.
    let mut log = String::new();
    let found = common::poll_until(Duration::from_secs(5), || {
        log = common::strip_ansi(&up.proc().stderr_text());
        sleeps.iter().all(|s| access_line(&log, &s.id).is_some())
    });
    assert!(
        found,
        "the access log should list every sleep request\n{}",
        up.log_tail()
    );
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for s in &sleeps {
        let (status, endpoint, attempts) = access_line(&log, &s.id).expect("found above");
        let instance = endpoint
            .parse::<SocketAddr>()
            .ok()
            .and_then(|a| old_addrs.get(&a));
        let Some(instance) = instance.filter(|_| status == "200" && attempts == "1") else {
            panic!(
                "{} should have been answered 200 by a release-{from} instance {old_addrs:?} on \
                 the first attempt; the access log says status={status} endpoint={endpoint} \
                 attempts={attempts}",
                s.id
            );
        };
        *served.entry(instance.clone()).or_default() += 1;
    }
    assert_eq!(
        served.len(),
        REPLICAS,
        "every old instance answered sleep requests: {served:?}"
    );

    // The old processes exited once drained, long before `stop_grace` would have them killed.
    up.wait_until(
        STOP_GRACE / 2,
        "the old instances' processes to exit after their last request",
        || old_processes.iter().all(|w| !alive(w)),
    );
    let exited_after = last_done.elapsed();

    // Only release `to` is left; the load lost nothing and saw both releases.
    wait_settled(up, STACK, SVC, REPLICAS, Some(to));
    let target = load.sent() + 20;
    up.wait_until(Duration::from_secs(10), "20 more requests of load", || {
        load.sent() >= target
    });
    let seen = load.finish();
    assert!(
        seen.failed == 0,
        "{} of {} load requests failed: {:?}\n{}",
        seen.failed,
        seen.sent,
        seen.failures,
        up.log_tail()
    );
    let mut by_release: BTreeMap<String, usize> = BTreeMap::new();
    for (body, n) in &seen.bodies {
        let answer: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("a load answer is not JSON ({e}): {body}"));
        *by_release
            .entry(answer["release"].as_str().unwrap_or("?").to_string())
            .or_default() += n;
    }
    assert!(
        by_release.len() == 2
            && by_release.contains_key(&from.to_string())
            && by_release.contains_key(&to.to_string()),
        "the load should have seen release {from}, then release {to}: {by_release:?}"
    );

    // No 5xx at all through the router.
    let text = metrics(metrics_addr);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("berth_router_requests_total{") && l.contains("class=\"5xx\""))
        .collect();
    assert!(errors.is_empty(), "the router answered 5xx: {errors:?}");

    eprintln!(
        "release {from} → {to}: sleeps started {} ms before the gate; old instances stopped \
         accepting at {:?} ms after it; sleeps done +{}..+{} ms; old processes gone within {} ms \
         of the last; served by {served:?}; load: {} requests ({:.0} req/s) by release \
         {by_release:?}",
        gate_opened.duration_since(started).as_millis(),
        closed.values().map(|t| ms(*t)).collect::<Vec<_>>(),
        ms(first_done),
        ms(last_done),
        exited_after.as_millis(),
        seen.sent,
        seen.rate(),
    );
}

#[test]
fn sleep_requests_in_flight_complete_while_a_deploy_replaces_their_instances() {
    let (up, metrics) = start();
    deploy_settled(&up, 1);
    let file = stack_file(&up, 2);
    replace_under_sleeps(&up, metrics, 1, 2, &gate(up.dir(), 2), || {
        cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    });
}

#[test]
fn sleep_requests_in_flight_complete_while_a_rollback_replaces_their_instances() {
    let (up, metrics) = start();
    deploy_settled(&up, 1);
    deploy_settled(&up, 2);
    // The rollback (release 3) runs release 1's spec, gated on `ready-1` again: close it.
    let gate_1 = gate(up.dir(), 1);
    std::fs::remove_file(&gate_1).expect("remove ready-1");
    replace_under_sleeps(&up, metrics, 2, 3, &gate_1, || {
        cli_ok(&up, &["rollback", STACK, "--env", "local"]);
    });
}
