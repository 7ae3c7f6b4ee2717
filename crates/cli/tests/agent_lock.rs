//! Issue 10, item 18: `berth up` holds the agent lock of `DATA_DIR/agent`, so a second agent
//! started on that directory (the one `berth agent` defaults to) is refused instead of adopting
//! and restarting the node's instances.

mod common;

use std::time::Duration;

use common::cluster::wait_settled;
use common::process::stat;
use common::up::BerthUp;
use common::{command, describe_status, run_command, stderr};

#[test]
fn a_second_agent_on_berth_ups_data_directory_is_refused_and_the_instances_keep_their_pids() {
    let up = BerthUp::start_with(&["--demo"]);
    wait_settled(&up, "demo", "web", 3, Some(1));
    let before = up.workloads();
    assert_eq!(before.len(), 3, "three demo workloads: {before:?}");

    let join = std::fs::read_to_string(up.data_dir().join("join.token"))
        .expect("berth up wrote its join token");
    let mut cmd = command(["agent", "--name", "dup", "--join-token", join.trim()]);
    cmd.arg("--data-dir")
        .arg(up.data_dir().join("agent"))
        .env("BERTH_SERVER", up.api_url());
    // On the old code the duplicate ran (and restarted the demo) until this deadline.
    let out = run_command(cmd, Duration::from_secs(20));
    let err = stderr(&out);
    assert!(
        !out.status.success(),
        "the duplicate agent must fail, got {}: {err}",
        describe_status(out.status)
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "berth up (pid {}) supervises the instances in",
            up.pid()
        )),
        "the error names berth up and its pid: {err}"
    );
    assert!(
        err.contains("--data-dir"),
        "the error says what to do: {err}"
    );

    // Nothing was adopted, stopped or restarted: the very same processes still run.
    let after = up.workloads();
    assert_eq!(after, before, "the instance records changed");
    for w in &after {
        assert_eq!(
            stat(w.pid).map(|(_, t)| t),
            w.start_time,
            "workload {w:?} is not the process it was"
        );
    }
}

/// Issue 10, item 6: a standalone agent creates its data directory 0700 and its node token
/// 0600, like `berth up` (it was 0755 from `create_dir_all`).
#[test]
fn a_standalone_agents_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let up = BerthUp::start_with(&[]);
    let parent = common::temp_dir();
    let dir = parent.path().join("solo-agent");
    let mut cmd = command([
        "agent",
        "--name",
        "solo",
        "--join-token-file",
        &up.data_dir().join("join.token").display().to_string(),
    ]);
    cmd.arg("--data-dir")
        .arg(&dir)
        .env("BERTH_SERVER", up.api_url());
    let agent = common::process::Proc::spawn(cmd, "solo-agent", parent.path());
    agent.wait_until(Duration::from_secs(30), "the agent to register", || {
        dir.join("node.token").exists()
    });
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    assert_eq!(mode(&dir), 0o700, "the agent's data directory");
    assert_eq!(mode(&dir.join("node.token")), 0o600, "the node token");
    drop(agent);
}
