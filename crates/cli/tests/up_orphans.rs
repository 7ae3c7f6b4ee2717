//! README, Quick start: "the next `berth up` on the same data directory adopts them (static
//! stability), and kills any process it finds running as one of its instances that no record
//! accounts for (an agent killed between spawning a process and recording it)".
//!
//! Simulated orphans, as that agent would have left them: processes in their own process group,
//! working in an instance's directory with `BERTH_INSTANCE` naming it — one claiming a recorded
//! (adopted) instance, one an instance with no record at all. A decoy works in an instance
//! directory without `BERTH_INSTANCE` (a person's shell), and must be left alone, as must the
//! adopted instance itself.

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::cluster::{cli_ok, wait_settled};
use common::process::stat;
use common::up::BerthUp;
use common::write_file;
use nix::sys::signal::Signal;

const STACK: &str = r#"stack: calm
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [sleep, "1000"] }
    stop_grace: 1s
"#;

/// `sleep 1000` in `dir`, its own process group, with `instance` as `BERTH_INSTANCE` if given.
fn sleeper(dir: &Path, instance: Option<&str>) -> Child {
    let mut cmd = Command::new("sleep");
    cmd.arg("1000")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd.env_remove("BERTH_INSTANCE");
    if let Some(id) = instance {
        cmd.env("BERTH_INSTANCE", id);
    }
    cmd.spawn().expect("start sleep")
}

/// Kills (if needed) and reaps a child the test started.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_next_berth_up_kills_processes_no_record_accounts_for_and_adopts_the_rest() {
    let mut up = BerthUp::start();
    let file = write_file(up.dir(), "calm.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "calm", "web", 1, Some(1));
    let workloads = up.workloads();
    assert_eq!(workloads.len(), 1, "{workloads:?}");
    let adopted = &workloads[0];

    // berth up stops; its instance runs on.
    up.proc().signal(Signal::SIGTERM);
    let exit = up.proc().wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "{}", up.log_tail());

    let instances = up.data_dir().join("agent").join("instances");
    let ghost_dir = instances.join("calm-web-9-0badf00d");
    std::fs::create_dir_all(&ghost_dir).expect("the ghost instance's directory");
    let mut twin = Reaped(sleeper(
        &instances.join(&adopted.instance),
        Some(&adopted.instance),
    ));
    let mut ghost = Reaped(sleeper(&ghost_dir, Some("calm-web-9-0badf00d")));
    let mut decoy = Reaped(sleeper(&instances.join(&adopted.instance), None));

    up.restart();
    for (what, child) in [
        ("the twin of an adopted instance", &mut twin),
        ("an unrecorded instance", &mut ghost),
    ] {
        let mut status = None;
        up.wait_until(
            Duration::from_secs(30),
            &format!("{what} to be killed"),
            || {
                status = child.0.try_wait().expect("wait for a child");
                status.is_some()
            },
        );
        assert_eq!(
            status.and_then(|s| s.signal()),
            Some(Signal::SIGKILL as i32),
            "{what}: {status:?}"
        );
    }
    wait_settled(&up, "calm", "web", 1, Some(1));
    // Adopted, not restarted: the very process; and the decoy untouched.
    assert_eq!(
        stat(adopted.pid).map(|(_, t)| t),
        adopted.start_time,
        "the adopted instance was killed or restarted"
    );
    assert_eq!(up.workloads(), workloads, "the instance's record changed");
    assert!(
        decoy.0.try_wait().expect("wait for the decoy").is_none(),
        "the decoy (no BERTH_INSTANCE) was killed"
    );
}
