//! Region waves that revert (issue 12 point 7): a release whose instances fail only in the
//! second region is reverted in the first one too (`waves.on_failure: revert_all`, the
//! default), with the reason in `berth history`, and no request fails in the first region.
//!
//! Two nodes: `berth up` labelled `region=0` and an agent labelled `region=b`. The failure is
//! region-specific through `${region}`: release 2 sets `FAIL_PERCENT: "${region}"`, which
//! `berth whoami` reads as 0 % in region `0` and refuses to start on in region `b` (not a
//! number). (Region names allow a leading digit; `a` would not parse as a percentage.)

mod common;

use std::time::Duration;

use common::cluster::{cli_ok, release_status, through_router};
use common::process::Proc;
use common::up::BerthUp;
use common::{assert_exit, command};

const HOST: &str = "waves.localhost";

fn stack(fail: &str) -> String {
    format!(
        r#"stack: waves
environments:
  prod:
    regions: ["0", b]
    waves: {{ bake: 1s, min_requests: 0, on_failure: revert_all }}
services:
  web:
    process: {{ command: [berth, whoami] }}
    ports: {{ http: 0 }}
    replicas: 1
    env: {{ VERSION: "{fail}", FAIL_PERCENT: "{fail}" }}
    resources: {{ cpu: 10m, memory: 16Mi }}
    health: {{ http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }}
    route: {{ host: {HOST}, port: http }}
    placement: {{ constraints: ["region == ${{region}}"] }}
    rollout: {{ progress_deadline: 20s }}
    stop_grace: 1s
"#
    )
}

fn agent(up: &BerthUp, name: &str, labels: &str) -> Proc {
    let join = std::fs::read_to_string(up.data_dir().join("join.token")).expect("join.token");
    let dir = up.data_dir().join(format!("node-{name}"));
    let cmd = command([
        "agent",
        "--server",
        &up.api_url(),
        "--join-token",
        join.trim(),
        "--name",
        name,
        "--labels",
        labels,
        "--data-dir",
        dir.to_str().expect("UTF-8 path"),
    ]);
    Proc::spawn(cmd, name, up.dir())
}

fn deploy(up: &BerthUp, yaml: &str) {
    let path = up
        .dir()
        .join(format!("stack-{}.yaml", common::clock::unix_ms()));
    std::fs::write(&path, yaml).expect("write the stack file");
    let file = path.to_string_lossy().to_string();
    let out = common::cluster::cli(up, &["deploy", "-f", &file, "--env", "prod"]);
    assert_exit(&out, 0);
}

#[test]
fn a_release_failing_only_in_the_second_region_is_reverted_in_the_first_too() {
    let up = BerthUp::start_with(&["--name", "r0", "--labels", "region=0"]);
    let _b = agent(&up, "rb", "region=b");
    up.wait_until(Duration::from_secs(30), "two nodes", || {
        common::cluster::nodes_ready(&up) == 2
    });
    deploy(&up, &stack(""));
    up.wait_until(Duration::from_secs(60), "release 1 live", || {
        release_status(&up, "waves", "prod", 1).as_deref() == Some("live")
    });

    deploy(&up, &stack("${region}"));
    // Requests through the router (region 0's node) all along: none may fail.
    let mut failed = 0;
    let mut sent = 0;
    let mut saw_release_2 = false;
    up.wait_until(
        Duration::from_secs(90),
        "release 2 failed and reverted",
        || {
            for _ in 0..20 {
                sent += 1;
                match through_router(&up, HOST, "/") {
                    Ok(r) if r.status == 200 => {
                        let v: serde_json::Value = r.json();
                        saw_release_2 |= v["release"] == "2";
                    }
                    _ => failed += 1,
                }
            }
            release_status(&up, "waves", "prod", 2).as_deref() == Some("failed")
        },
    );
    assert!(
        saw_release_2,
        "release 2 never served in region 0 before it failed in b"
    );
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    let history = cli_ok(&up, &["history", "waves", "--env", "prod"]);
    assert!(
        history.contains("in b"),
        "the reason names region b:\n{history}"
    );
    // Region 0 is back on release 1.
    up.wait_until(
        Duration::from_secs(60),
        "region 0 answers release 1 again",
        || {
            (0..10).all(|_| {
                through_router(&up, HOST, "/")
                    .ok()
                    .filter(|r| r.status == 200)
                    .is_some_and(|r| r.json()["release"] == "1")
            })
        },
    );
}
