//! Issue 10, item 15: volumes cannot mount anything. Every agent refuses `/`, `/etc`, `/root`,
//! the Docker socket and berth's data directory unless `--allow-host-path` names them; given,
//! the allow-list confines every host path. The plan warns about what every agent refuses, and
//! `berth status` says which volume was refused and which flag allows it.

mod common;

use std::time::Duration;

use common::cluster::{cli, service, stack as stack_view, status};
use common::docker::{engine_or_skip, Containers, V1};
use common::up::BerthUp;
use common::{stderr, stdout, write_file};

/// A stack `name` of one busybox httpd service `name` mounting `volume`.
fn stack(up: &BerthUp, name: &str, volume: &str) -> String {
    write_file(
        up.dir(),
        &format!("{name}.yaml"),
        format!(
            "stack: {name}\nenvironments:\n  local:\n    regions: [local]\nservices:\n  {name}:\n    image: {V1}\n    ports: {{ http: 8080 }}\n    replicas: 1\n    volumes: [\"{volume}\"]\n    health: {{ http: /healthz, port: http, interval: 250ms, timeout: 1s, healthy: 1, unhealthy: 2 }}\n    stop_grace: 2s\n"
        ),
    )
}

/// `berth up`, then (dropped after it) the guard removing its agent's containers.
struct Up {
    up: BerthUp,
    _containers: Containers,
}

impl Up {
    fn start(test: &str, args: &[&str]) -> Option<Up> {
        if !engine_or_skip(test) {
            return None;
        }
        let up = BerthUp::start_with(args);
        let data = std::fs::canonicalize(up.data_dir()).expect("the data dir exists");
        Some(Up {
            up,
            _containers: Containers::new(data.join("agent")),
        })
    }
}

/// Deploys `file` and waits until `stack`'s rollout failed (returning its reason) or its
/// service is healthy (returning `None`).
#[track_caller]
fn outcome(up: &BerthUp, file: &str, stack_name: &str) -> Option<String> {
    let deploy = cli(up, &["deploy", "-f", file, "--env", "local"]);
    assert!(deploy.status.success(), "{}", stderr(&deploy));
    let mut last = None;
    let mut result = None;
    let held = common::poll_until(Duration::from_secs(60), || {
        last = status(up);
        let Some(s) = &last else { return false };
        let Some(st) = stack_view(s, stack_name) else {
            return false;
        };
        if let Some(r) = st["rollout"].as_str().filter(|r| r.starts_with("failed")) {
            result = Some(Some(r.to_string()));
        } else if service(s, stack_name, stack_name).is_some_and(|v| v["healthy"] == 1) {
            result = Some(None);
        }
        result.is_some()
    });
    assert!(
        held,
        "no outcome; last status: {last:#?}\n{}",
        up.log_tail()
    );
    result.flatten()
}

#[test]
fn by_default_a_root_mount_fails_with_the_volume_and_the_flag_in_plan_and_status() {
    let Some(guard) = Up::start("by_default_a_root_mount_fails", &[]) else {
        return;
    };
    let up = &guard.up;
    let file = stack(up, "root", "/:/host");

    // The plan warns about a path every agent refuses by default (a warning: an agent may
    // allow it).
    let plan = cli(up, &["plan", "-f", &file, "--env", "local"]);
    let text = format!("{}{}", stdout(&plan), stderr(&plan));
    assert!(
        text.contains("warning: service root mounts `/` (the root filesystem): every agent refuses it unless started with --allow-host-path /"),
        "{text}"
    );

    let why = outcome(up, &file, "root").expect("the rollout fails");
    assert!(
        why.contains("volume `/:/host` of service `root` is refused: host path `/` holds")
            && why.contains("--allow-host-path /"),
        "{why}"
    );
    // `berth status` says the same.
    let shown = stdout(&cli(up, &["status", "root"]));
    assert!(
        shown.contains("volume `/:/host` of service `root` is refused"),
        "{shown}"
    );

    // The Docker socket too, through a symlink or not.
    let file = stack(up, "sock", "/var/run/docker.sock:/var/run/docker.sock");
    let why = outcome(up, &file, "sock").expect("the rollout fails");
    assert!(why.contains("docker.sock"), "{why}");
    assert!(why.contains("--allow-host-path /"), "{why}");
}

#[test]
fn an_allow_list_admits_what_it_names_and_refuses_the_rest() {
    let Some(guard) = Up::start(
        "an_allow_list_admits_what_it_names",
        &["--allow-host-path", "/var/run/docker.sock"],
    ) else {
        return;
    };
    let up = &guard.up;
    let file = stack(up, "sock", "/var/run/docker.sock:/var/run/docker.sock");
    assert_eq!(
        outcome(up, &file, "sock"),
        None,
        "the named socket is mounted"
    );
    let file = stack(up, "outside", "/opt/berth-test-nowhere:/data");
    let why = outcome(up, &file, "outside").expect("the rollout fails");
    assert!(
        why.contains(
            "host path `/opt/berth-test-nowhere` is outside this agent's --allow-host-path ("
        ) && why.contains("start the agent with --allow-host-path /opt/berth-test-nowhere"),
        "{why}"
    );
}
