//! Issue 10 through the real binary: the data directory is private (item 6), and a stack with
//! the largest allowed replica count neither stops another stack's deploy nor SIGTERM (item 5).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{cli, service, status};
use common::up::BerthUp;
use common::{assert_exit, http, stderr, write_file};
use nix::sys::signal::Signal;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn the_data_directory_is_0700_and_its_files_0600_with_a_warning_for_a_wider_one() {
    // The harness creates DATA_DIR beforehand with the umask's 0755, as an older berth did.
    let up = BerthUp::start();
    let data = up.data_dir();
    assert_eq!(mode(data), 0o700, "the data directory");
    for file in ["state.redb", "admin.token", "join.token", "api.url"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    let log = up.proc().stderr_text();
    assert!(
        log.contains("was mode 0755, readable by other users; set it to 0700"),
        "{log}"
    );
}

/// The largest count, only on nodes labelled `pool=big` (simulated below: nothing runs them).
const HUGE: &str = r#"stack: huge
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [sleep, "1000"] }
    replicas: 10000
    resources: { cpu: 1m, memory: 1Mi }
    placement: { constraints: ["pool == big"] }
    rollout: { progress_deadline: 1h }
"#;

/// One real instance on `berth up`'s own node.
const SMALL: &str = r#"stack: small
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [sleep, "1000"] }
    replicas: 1
    stop_grace: 1s
    placement: { constraints: ["pool != big"] }
"#;

/// Registers a node that takes every instance of [`HUGE`], heartbeating until `stop`.
fn big_node(up: &BerthUp, name: &str, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let join = std::fs::read_to_string(up.data_dir().join("join.token"))
        .expect("join token")
        .trim()
        .to_string();
    let body = serde_json::json!({
        "name": name,
        "labels": {"pool": "big"},
        "resources": {"cpu_millis": 1u64 << 40, "memory_bytes": 1u64 << 50},
        "drivers": ["process"],
        "address": "127.0.0.1",
        "router": null,
    })
    .to_string();
    let auth = format!("Bearer {join}");
    let r = http::request(
        up.api(),
        "POST",
        "/v1/nodes/register",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .expect("register");
    assert_eq!(r.status, 200, "register {name}: {}", r.text());
    let token = r.json()["node_token"]
        .as_str()
        .expect("a node token")
        .to_string();
    let (api, name) = (up.api(), name.to_string());
    std::thread::spawn(move || {
        let auth = format!("Bearer {token}");
        while !stop.load(Ordering::Relaxed) {
            let _ = http::request(
                api,
                "POST",
                &format!("/v1/nodes/{name}/heartbeat"),
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                br#"{"statuses":[]}"#,
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn instances_of(up: &BerthUp, stack: &str) -> usize {
    status(up)
        .as_ref()
        .and_then(|s| service(s, stack, "web").cloned())
        .and_then(|v| v["instances"].as_array().map(Vec::len))
        .unwrap_or(0)
}

#[test]
fn the_largest_stack_neither_starves_another_deploy_nor_delays_sigterm() {
    let up = BerthUp::start();
    let stop = Arc::new(AtomicBool::new(false));
    let beats = [
        big_node(&up, "big1", stop.clone()),
        big_node(&up, "big2", stop.clone()),
    ];
    let huge = write_file(up.dir(), "huge.yaml", HUGE);
    assert_exit(&cli(&up, &["deploy", "-f", &huge, "--env", "local"]), 0);
    up.wait_until(
        Duration::from_secs(20),
        "the huge stack's first instances",
        || instances_of(&up, "huge") > 0,
    );

    let small = write_file(up.dir(), "small.yaml", SMALL);
    let started = common::clock::now();
    let out = cli(&up, &["deploy", "-f", &small, "--env", "local", "--wait"]);
    assert_exit(&out, 0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the small deploy took {:?}",
        started.elapsed()
    );

    up.proc().signal(Signal::SIGTERM);
    let stopping = common::clock::now();
    let exit = up.proc().wait_exit(Duration::from_secs(30));
    let took = stopping.elapsed();
    stop.store(true, Ordering::Relaxed);
    for b in beats {
        let _ = b.join();
    }
    assert!(
        took < Duration::from_secs(10),
        "berth up took {took:?} to stop after SIGTERM ({exit:?})\n{}",
        stderr(&out)
    );
    assert!(exit.success(), "{exit:?}\n{}", up.log_tail());
}
