//! Helpers shared by the agent's integration tests: specs, polling with a deadline (never
//! sleep-and-hope), a data directory whose workloads die with it ([`workload_dir`]), and the
//! Docker Engine or a counted skip ([`docker_engine`]).
#![allow(dead_code)]
#![expect(
    clippy::disallowed_methods,
    reason = "polling with a deadline: the test's own wall-clock bound, not the agent's time"
)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use berth_agent::supervisor::Statuses;
use berth_agent::DockerDriver;
use berth_api::InstanceSpec;
use berth_spec::model::{
    Amount, Cpu, Duration as SpecDuration, Health, Memory, Placement, Process, Resources,
    RestartPolicy, Rollout, Service,
};
use tokio::sync::watch;

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn service(command: &[&str]) -> Service {
    Service {
        process: Some(Process {
            command: command.iter().map(|s| s.to_string()).collect(),
            user: None,
        }),
        image: None,
        command: None,
        env: BTreeMap::new(),
        secrets: vec![],
        ports: BTreeMap::new(),
        replicas: 1,
        health: None,
        route: None,
        rollout: Rollout::rolling(
            Amount::Count(1),
            Amount::Count(0),
            SpecDuration::from_millis(600_000),
        ),
        depends_on: vec![],
        stop_grace: SpecDuration::from_millis(2_000),
        volumes: vec![],
        resources: Resources {
            cpu: Cpu { millis: 100 },
            memory: Memory { bytes: 64 << 20 },
        },
        placement: Placement {
            spread: vec![],
            constraints: vec![],
        },
        restart: RestartPolicy::Always,
    }
}

/// A `/bin/sh -c SCRIPT` instance.
pub fn sh(id: &str, script: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        stack: "shop".into(),
        service: "web".into(),
        release: 7,
        node: "node-a".into(),
        spec: service(&["/bin/sh", "-c", script]),
        image_id: None,
        secret_env: Default::default(),
    }
}

pub fn health(interval_ms: u64, healthy: u32, unhealthy: u32) -> Health {
    Health {
        http: None,
        tcp: None,
        exec: None,
        port: None,
        interval: SpecDuration::from_millis(interval_ms),
        timeout: SpecDuration::from_millis(1_000),
        healthy,
        unhealthy,
    }
}

pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics naming `what`.
pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut` with the test deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Waits until the published statuses satisfy `pred`; returns them.
pub async fn statuses_where(
    rx: &mut watch::Receiver<Statuses>,
    what: &str,
    pred: impl Fn(&Statuses) -> bool,
) -> Statuses {
    let wait = async {
        loop {
            {
                let s = rx.borrow_and_update();
                if pred(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("supervisor gone while waiting for {what}");
            }
        }
    };
    match tokio::time::timeout(DEADLINE, wait).await {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out after {DEADLINE:?} waiting for {what}; statuses: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Whether `pid` is a live, non-zombie process.
pub fn alive(pid: u32) -> bool {
    berth_agent::record::proc_stat(pid).is_some_and(|s| !s.has_exited())
}

pub fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}

/// The variable naming the file a skip is recorded in (one line per skipped test), which
/// `scripts/test` sets, counts and prints: cargo hides a passing test's output, banner included.
pub const SKIPS_FILE_VAR: &str = "BERTH_TEST_SKIPS";

/// The Engine, with `images` present (running `scripts/build-test-images` when one is missing).
/// Without an Engine: a failure under `BERTH_REQUIRE_DOCKER=1` (CI); otherwise `None` after a
/// loud banner and the line `TEST: REASON` appended to `$BERTH_TEST_SKIPS` (TEST is the running
/// test's name). The one place the agent's Docker tests decide to skip.
pub async fn docker_engine(images: &[&str]) -> Option<DockerDriver> {
    let docker = match DockerDriver::connect().await {
        Ok(d) => d,
        Err(e) => {
            skip(&e.to_string());
            return None;
        }
    };
    let mut missing = false;
    for image in images {
        missing |= docker.client().inspect_image(image).await.is_err();
    }
    if missing {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-test-images");
        let status = std::process::Command::new(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(status.success(), "{} failed", script.display());
    }
    Some(docker)
}

/// Skips the running test because of `why` (see [`docker_engine`]): panics under
/// `BERTH_REQUIRE_DOCKER=1`, else prints a banner and records the skip.
#[track_caller]
pub fn skip(why: &str) {
    if std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("BERTH_REQUIRE_DOCKER=1 but {why}");
    }
    // libtest runs each test on a thread named after it.
    let test = std::thread::current()
        .name()
        .unwrap_or("an agent Docker test")
        .to_string();
    let bar = "!".repeat(78);
    eprintln!(
        "\n{bar}\n!! SKIPPING {test}: {why}\n!! (set BERTH_REQUIRE_DOCKER=1 to make this a failure)\n{bar}\n"
    );
    let Some(path) = std::env::var_os(SKIPS_FILE_VAR).filter(|p| !p.is_empty()) else {
        return;
    };
    // One `write` of a short line to a file opened for appending: lines of tests running at the
    // same time do not interleave.
    let line = format!("{test}: {}\n", why.replace(['\n', '\r'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record the skip of {test} in {} (${SKIPS_FILE_VAR}): {e}",
            Path::new(&path).display()
        );
    }
}

/// A test's agent data directory (a fresh temporary directory) that takes its workloads with
/// it: dropping it — at the end of the test, or while a failed test unwinds — SIGKILLs every
/// workload started under it, then removes it. Some workloads ignore SIGTERM or write forever;
/// none may outlive its test. Use it where a test would use `tempfile::tempdir()`.
pub struct WorkloadDir {
    dir: tempfile::TempDir,
}

/// A new [`WorkloadDir`].
pub fn workload_dir() -> WorkloadDir {
    WorkloadDir {
        dir: tempfile::tempdir().expect("cannot create a temporary directory"),
    }
}

impl WorkloadDir {
    /// The directory's path (what `SupervisorConfig::new` or `ProcessDriver::new` take).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for WorkloadDir {
    fn drop(&mut self) {
        kill_workloads(self.dir.path());
    }
}

/// SIGKILLs every workload of the agent data directory `data_dir`: each recorded process that
/// is still the very process recorded (pid and start time; a session leader with its whole
/// group), then every process that is one of its instances without a live record (working
/// directory an instance's directory and `BERTH_INSTANCE` set: [`berth_agent::orphans::find`]).
/// Never signals this test process or its group.
pub fn kill_workloads(data_dir: &Path) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::{getpgrp, Pid};
    let own_pid = std::process::id();
    let own_group = getpgrp().as_raw();
    let instances = data_dir.join("instances");
    for entry in std::fs::read_dir(&instances)
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(record) =
            berth_agent::record::InstanceRecord::read(&entry.path().join("instance.json"))
        else {
            continue;
        };
        let (pid, start_time) = (record.pid, record.start_time);
        if pid <= 1 || pid == own_pid || !berth_agent::record::is_same_process(pid, start_time) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let leader = berth_agent::record::proc_stat(pid).is_some_and(|s| s.pgrp == pid);
        if leader && raw != own_group {
            let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
        } else {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    let unrecorded = berth_agent::orphans::find(data_dir, &std::collections::HashSet::new());
    let unrecorded: Vec<_> = unrecorded
        .into_iter()
        .filter(|o| o.pid != own_pid && i32::try_from(o.pgid).is_ok_and(|g| g != own_group))
        .collect();
    berth_agent::orphans::kill(&unrecorded);
}
