//! Where a process runs (issue 13), through `berth up`: `process.user: nobody` runs as nobody,
//! the plan shows the user; `user: root` is refused without `--allow-root-processes`, with a
//! warning in the plan and the agent's reason in `berth status`; with the flag it runs as root.
//! `--process-user` is the default, and a bad one stops `berth up` at start.
//!
//! Switching users needs root: run as another user, each test is skipped (visibly, with the
//! suite's skip helper).

mod common;

use std::time::Duration;

use common::cluster::{cli_ok, instances, service, status};
use common::up::BerthUp;
use common::{run, stderr, write_file};

/// `web` runs as `user` (or the agent's default when `None`); no health check, so a running
/// process is enough.
fn stack(user: Option<&str>) -> String {
    let user = user.map(|u| format!(", user: {u}")).unwrap_or_default();
    format!(
        r#"stack: whoruns
environments:
  local:
    regions: [local]
services:
  web:
    process: {{ command: [sleep, "300"]{user} }}
    resources: {{ cpu: 10m, memory: 16Mi }}
    stop_grace: 1s
"#
    )
}

/// Whether this test may switch users; skips it (visibly) otherwise.
fn root_or_skip(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    common::skip::skip(
        test,
        "switching process users needs the tests to run as root (`id -u` is not 0)",
    );
    false
}

/// The real uid of a process, from `/proc/PID/status`.
fn uid_of(pid: i32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The uids of every live workload `berth up` recorded.
fn workload_uids(up: &BerthUp) -> Vec<u32> {
    up.workloads()
        .iter()
        .filter_map(|w| uid_of(w.pid))
        .collect()
}

fn nobody_uid() -> u32 {
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
        .expect("a `nobody` user")
}

#[test]
fn user_nobody_runs_as_nobody_and_user_root_is_refused_without_the_flag() {
    if !root_or_skip(
        "process_user::user_nobody_runs_as_nobody_and_user_root_is_refused_without_the_flag",
    ) {
        return;
    }
    let nobody = nobody_uid();
    let up = BerthUp::start();
    let file = write_file(up.dir(), "whoruns.yaml", stack(Some("nobody")));
    let plan = cli_ok(&up, &["plan", "-f", &file, "--env", "local"]);
    assert!(plan.contains("    runs as: nobody"), "{plan}");
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    up.wait_until(Duration::from_secs(30), "web to run as nobody", || {
        workload_uids(&up) == [nobody]
    });

    // root: the plan warns, the agent refuses, and status says why and what to do.
    let file = write_file(up.dir(), "whoruns.yaml", stack(Some("root")));
    let plan = cli_ok(&up, &["plan", "-f", &file, "--env", "local"]);
    assert!(
        plan.contains("process.user: \"nobody\" → \"root\"")
            && plan.contains("    runs as: root")
            && plan.contains("warning: service web runs as root: every agent refuses it unless started with --allow-root-processes"),
        "{plan}"
    );
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    let mut last = None;
    up.wait_until(
        Duration::from_secs(30),
        "release 2's instance to fail, saying why",
        || {
            last = status(&up);
            last.as_ref()
                .and_then(|s| service(s, "whoruns", "web").cloned())
                .is_some_and(|web| {
                    instances(&web).iter().any(|i| {
                        i["release"] == 2
                            && i["state"] == "failed"
                            && i["message"].as_str().is_some_and(|m| {
                                m.contains("runs as root (uid 0), which this agent refuses")
                                    && m.contains("--allow-root-processes")
                            })
                    })
                })
        },
    );
    assert!(
        !workload_uids(&up).contains(&0),
        "nothing ran as root: {:?}",
        workload_uids(&up)
    );
}

#[test]
fn allow_root_processes_and_process_user_are_the_agents_to_give() {
    if !root_or_skip("process_user::allow_root_processes_and_process_user_are_the_agents_to_give") {
        return;
    }
    let nobody = nobody_uid();
    let up = BerthUp::start_with(&["--process-user", "nobody", "--allow-root-processes"]);
    let file = write_file(up.dir(), "whoruns.yaml", stack(None));
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    up.wait_until(
        Duration::from_secs(30),
        "web to run as --process-user",
        || workload_uids(&up) == [nobody],
    );
    let file = write_file(up.dir(), "whoruns.yaml", stack(Some("root")));
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local"]);
    up.wait_until(Duration::from_secs(30), "web to run as root", || {
        workload_uids(&up) == [0]
    });
    drop(up);

    // A --process-user that cannot be used stops berth up at start, naming the flag.
    let dir = common::temp_dir();
    let data = dir.path().join("data");
    let out = run([
        "up",
        "--data-dir",
        data.to_str().expect("UTF-8"),
        "--api",
        &format!("127.0.0.1:{}", common::free_port()),
        "--router",
        &format!("127.0.0.1:{}", common::free_port()),
        "--process-user",
        "root",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--process-user") && stderr(&out).contains("--allow-root-processes"),
        "{}",
        stderr(&out)
    );
}
