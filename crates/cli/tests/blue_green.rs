//! Blue/green end to end (issue 12 point 6): the real binary, a real router, `berth whoami`.
//! The new release answers on its preview host before the switch; after it, every answer is
//! the new release (a client never sees the old one again) with no failed request; the old
//! instances keep running, and `berth rollout abort` switches back to them — the same
//! processes — within a second.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{cli, release_status, through_router, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, http};
use serde_json::Value;

const HOST: &str = "bg.localhost";
const PREVIEW: &str = "preview.bg.localhost";

fn stack(version: &str, bake: &str) -> String {
    format!(
        r#"stack: bg
environments:
  local:
    regions: [local]
services:
  web:
    process: {{ command: [berth, whoami] }}
    env: {{ VERSION: "{version}" }}
    ports: {{ http: 0 }}
    replicas: 2
    health: {{ http: /healthz, port: http, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 3 }}
    route: {{ host: {HOST}, path: /, port: http }}
    rollout: {{ strategy: blue_green, preview_host: {PREVIEW}, bake: {bake}, keep_previous: 5m, progress_deadline: 1m }}
    stop_grace: 1s
"#
    )
}

fn deploy(up: &BerthUp, yaml: &str, extra: &[&str]) -> std::process::Output {
    let path = up
        .dir()
        .join(format!("stack-{}.yaml", common::clock::unix_ms()));
    std::fs::write(&path, yaml).expect("write the stack file");
    let file = path.to_string_lossy().to_string();
    let mut args = vec!["deploy", "-f", file.as_str(), "--env", "local"];
    args.extend_from_slice(extra);
    cli(up, &args)
}

/// The version and instance of one answer on `host`, or `None` for a failure.
fn answer(addr: std::net::SocketAddr, host: &str) -> Option<(String, String)> {
    let r = http::request(addr, "GET", "/", &[("Host", host)], &[]).ok()?;
    if r.status != 200 {
        return None;
    }
    let v: Value = r.json();
    Some((
        v["version"].as_str()?.to_string(),
        v["instance"].as_str()?.to_string(),
    ))
}

/// The instances answering `version` on `host` (bounded number of requests).
fn instances_of(up: &BerthUp, host: &str, version: &str) -> BTreeSet<String> {
    (0..60)
        .filter_map(|_| answer(up.router(), host))
        .filter(|(v, _)| v == version)
        .map(|(_, i)| i)
        .collect()
}

fn pids(up: &BerthUp, instances: &BTreeSet<String>) -> BTreeMap<String, i32> {
    up.workloads()
        .into_iter()
        .filter(|w| instances.contains(&w.instance))
        .map(|w| (w.instance, w.pid))
        .collect()
}

#[test]
fn blue_green_previews_switches_at_once_keeps_the_old_release_and_switches_back() {
    let up = BerthUp::start();
    assert_exit(&deploy(&up, &stack("1", "2s"), &["--wait"]), 0);
    wait_settled(&up, "bg", "web", 2, Some(1));
    let blue = instances_of(&up, HOST, "1");
    assert_eq!(blue.len(), 2, "{blue:?}");
    let blue_pids = pids(&up, &blue);
    assert_eq!(blue_pids.len(), 2, "{:?}", up.workloads());

    // A client keeps asking through the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let router = up.router();
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen: Vec<Option<String>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(answer(router, HOST).map(|(v, _)| v));
            }
            seen
        })
    };
    assert_exit(&deploy(&up, &stack("2", "2s"), &[]), 0);
    up.wait_until(
        Duration::from_secs(60),
        "the preview host answers release 2",
        || answer(up.router(), PREVIEW).is_some_and(|(v, _)| v == "2"),
    );
    assert!(
        instances_of(&up, HOST, "2").is_empty(),
        "the new release took traffic before its switch"
    );
    up.wait_until(Duration::from_secs(60), "the switch", || {
        (0..20).all(|_| answer(up.router(), HOST).is_some_and(|(v, _)| v == "2"))
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = client.join().expect("the client thread");
    let failed = seen.iter().filter(|s| s.is_none()).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed through the switch",
        seen.len()
    );
    let first_green = seen.iter().position(|s| s.as_deref() == Some("2"));
    let after: Vec<&Option<String>> = seen
        .iter()
        .skip(first_green.unwrap_or(seen.len()))
        .collect();
    assert!(
        after.iter().all(|s| s.as_deref() == Some("2")),
        "a request reached the old release after the switch"
    );
    // The old release still runs, the same processes, out of traffic.
    assert_eq!(pids(&up, &blue), blue_pids, "{:?}", up.workloads());
    for pid in blue_pids.values() {
        assert!(common::process::stat(*pid).is_some(), "pid {pid} is gone");
    }
    // Live at the switch (so `berth deploy --wait` returns then), not after keep_previous.
    up.wait_until(
        Duration::from_secs(5),
        "release 2 live at the switch",
        || release_status(&up, "bg", "local", 2).as_deref() == Some("live"),
    );
    assert_eq!(pids(&up, &blue), blue_pids, "kept through keep_previous");

    // A switch back: the old processes answer again within a second.
    assert_exit(&cli(&up, &["rollout", "abort", "bg", "--env", "local"]), 0);
    let switched_back = common::clock::now();
    up.wait_until(Duration::from_secs(1), "release 1 answering again", || {
        (0..10).all(|_| answer(up.router(), HOST).is_some_and(|(v, _)| v == "1"))
    });
    println!(
        "blue/green switch-back as a client sees it: {:?}",
        switched_back.elapsed()
    );
    let again = instances_of(&up, HOST, "1");
    assert_eq!(again, blue, "the switch back started new instances");
    assert_eq!(pids(&up, &again), blue_pids);
    let _ = through_router(&up, HOST, "/");

    // `deploy --wait` returns at the switch, not after keep_previous (5 minutes): a minute's
    // timeout is plenty, and the previous release's processes are still there when it does.
    up.wait_until(Duration::from_secs(30), "release 1 live again", || {
        release_status(&up, "bg", "local", 1).as_deref() == Some("live")
    });
    let started = common::clock::now();
    assert_exit(
        &deploy(&up, &stack("3", "1s"), &["--wait", "--timeout", "60"]),
        0,
    );
    println!(
        "deploy --wait of a blue/green release: {:?}",
        started.elapsed()
    );
    assert_eq!(
        answer(up.router(), HOST).map(|(v, _)| v).as_deref(),
        Some("3")
    );
    assert_eq!(pids(&up, &blue), blue_pids, "kept for keep_previous");
}
