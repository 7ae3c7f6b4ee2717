//! `process.user` against real processes: `user: nobody` runs as nobody (uid, groups, `HOME`
//! and `USER`), in its instance directory although the data directory is 0700, and cannot
//! write there; `user: root` is refused without `--allow-root-processes`; `--process-user` is
//! the default; an `exec` health check runs as the workload's user.
//!
//! Switching users needs root: run as another user, each test skips (visibly, see
//! `common::skip`).

#![expect(
    clippy::disallowed_methods,
    reason = "real processes: deadlines are wall-clock"
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use berth_agent::health::Probe;
use berth_agent::run_as::ProcessUsers;
use berth_agent::{Error, ProcessDriver};
use berth_api::InstanceSpec;
use common::*;

/// Whether this test may switch users; skips it (visibly) otherwise.
fn root_or_skip() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    skip("switching process users needs the tests to run as root (`id -u` is not 0)");
    false
}

/// nobody's uid, gid and home directory on this machine.
fn nobody() -> (u32, u32, String) {
    let user = nix::unistd::User::from_name("nobody")
        .expect("passwd")
        .expect("a `nobody` user");
    (
        user.uid.as_raw(),
        user.gid.as_raw(),
        user.dir.display().to_string(),
    )
}

/// A `/bin/sh -c SCRIPT` instance asking to run as `user`.
fn as_user(id: &str, user: Option<&str>, script: &str) -> InstanceSpec {
    let mut spec = sh(id, script);
    if let Some(p) = spec.spec.process.as_mut() {
        p.user = user.map(str::to_string);
    }
    spec
}

/// The `Uid:` line's real uid and the `Groups:` of /proc/PID/status.
fn proc_ids(pid: u32) -> (u32, Vec<u32>) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse::<u32>().ok())
            .collect::<Vec<u32>>()
    };
    (field("Uid:")[0], field("Groups:"))
}

/// Waits until the instance's log has a line starting with `prefix`; returns it.
fn log_line(driver: &ProcessDriver, id: &str, prefix: &str) -> String {
    let path = driver.log_path(id).expect("log path");
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(prefix)) {
            return line.to_string();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no `{prefix}` line in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn user_nobody_runs_as_nobody_in_its_directory_which_it_cannot_write() {
    if !root_or_skip() {
        return;
    }
    let (uid, gid, home) = nobody();
    let dir = workload_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    let driver = ProcessDriver::new(dir.path());
    let spec = as_user(
        "web-1",
        Some("nobody"),
        "echo \"IDS uid=$(id -u) gid=$(id -g) home=$HOME user=$USER logname=$LOGNAME pwd=$(pwd)\"; \
         if touch mine 2>/dev/null; then echo 'WRITE yes'; else echo 'WRITE no'; fi; exec sleep 30",
    );
    let mut running = driver.start(&spec, BTreeMap::new(), 0).expect("start");
    let ids = log_line(&driver, "web-1", "IDS ");
    let cwd = driver.instance_dir("web-1").expect("dir");
    assert_eq!(
        ids,
        format!(
            "IDS uid={uid} gid={gid} home={home} user=nobody logname=nobody pwd={}",
            cwd.display()
        ),
    );
    assert_eq!(log_line(&driver, "web-1", "WRITE "), "WRITE no");
    let (real_uid, groups) = proc_ids(running.pid());
    assert_eq!(real_uid, uid);
    assert!(
        groups.iter().all(|g| *g != 0),
        "root's groups were dropped: {groups:?}"
    );
    // The record and the log stay the agent's.
    let meta = fs::metadata(driver.record_path("web-1").unwrap()).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    driver
        .stop(&mut running, Duration::from_secs(2))
        .await
        .expect("the agent stops a process of another user");
}

#[tokio::test]
async fn user_root_is_refused_unless_the_agent_allows_root_processes() {
    if !root_or_skip() {
        return;
    }
    let dir = workload_dir();
    let spec = as_user(
        "web-1",
        Some("root"),
        "echo \"IDS uid=$(id -u)\"; exec sleep 30",
    );
    let refused = ProcessDriver::new(dir.path())
        .start(&spec, BTreeMap::new(), 0)
        .expect_err("root without --allow-root-processes");
    assert!(refused.is_permanent(), "{refused}");
    assert!(matches!(refused, Error::RunAs { .. }), "{refused:?}");
    let message = refused.to_string();
    assert!(
        message.contains(
            "instance `web-1`: service `web` runs as root (uid 0), which this agent refuses"
        ) && message.contains("--allow-root-processes"),
        "{message}"
    );
    assert!(
        !dir.path().join("instances/web-1/instance.json").exists(),
        "nothing ran"
    );

    let allowed = ProcessDriver::new(dir.path()).with_users(ProcessUsers {
        default: None,
        allow_root: true,
    });
    let mut running = allowed.start(&spec, BTreeMap::new(), 0).expect("allowed");
    assert_eq!(log_line(&allowed, "web-1", "IDS "), "IDS uid=0");
    allowed
        .stop(&mut running, Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn process_user_is_the_default_and_exec_checks_run_as_the_workload() {
    if !root_or_skip() {
        return;
    }
    let (uid, _, _) = nobody();
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path()).with_users(ProcessUsers {
        default: Some("nobody".into()),
        allow_root: false,
    });
    let spec = as_user("web-1", None, "echo \"IDS uid=$(id -u)\"; exec sleep 30");
    let mut running = driver.start(&spec, BTreeMap::new(), 0).expect("start");
    assert_eq!(log_line(&driver, "web-1", "IDS "), format!("IDS uid={uid}"));

    let check = |script: &str| {
        let command: Vec<String> = ["/bin/sh", "-c", script].map(String::from).to_vec();
        Probe::Exec(
            driver
                .launch(&spec, &BTreeMap::new(), &command, "health.exec")
                .expect("launch"),
        )
    };
    let as_nobody = check(&format!("test \"$(id -u)\" = {uid}"));
    assert_eq!(as_nobody.run(Duration::from_secs(5)).await, Ok(()));
    let as_root = check("test \"$(id -u)\" = 0");
    assert!(as_root.run(Duration::from_secs(5)).await.is_err());
    driver
        .stop(&mut running, Duration::from_secs(2))
        .await
        .unwrap();
}
