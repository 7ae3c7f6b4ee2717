//! The process driver against real processes: environment, ports, logs, rotation, stop,
//! surviving the agent, adoption.

#![expect(
    clippy::disallowed_methods,
    reason = "real processes: deadlines and measured stop times are wall-clock"
)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use berth_agent::logs::{rotated_path, LogConfig};
use berth_agent::process::{resolve_ports, Exit};
use berth_agent::record::{proc_stat, InstanceRecord};
use berth_agent::ProcessDriver;
use common::*;

fn log_of(driver: &ProcessDriver, id: &str) -> String {
    fs::read_to_string(driver.log_path(id).unwrap()).unwrap_or_default()
}

/// Field 6 (session id) of /proc/<pid>/stat.
fn session_of(pid: u32) -> i64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn starts_in_its_own_session_with_env_ports_and_logs() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path());
    let mut spec = sh(
        "web-1",
        "echo \"PORT=$PORT HTTP=$PORT_HTTP ADMIN=$PORT_ADMIN MY_PORT=$PORT_MY_PORT\"; \
         echo \"SVC=$BERTH_SERVICE INST=$BERTH_INSTANCE REL=$BERTH_RELEASE NODE=$BERTH_NODE\"; \
         echo \"VERSION=$VERSION LEAK=${CARGO_MANIFEST_DIR:-none} CWD=$(pwd)\"; \
         echo to-stderr >&2; read line; echo \"STDIN=$line\"; exec sleep 30",
    );
    spec.spec.env.insert("VERSION".into(), "2".into());
    spec.spec
        .env
        .insert("PORT".into(), "overridden-by-berth".into());
    spec.spec.ports = BTreeMap::from([
        ("admin".to_string(), 0),
        ("http".to_string(), 0),
        ("my-port".to_string(), 4321),
    ]);
    assert!(std::env::var("CARGO_MANIFEST_DIR").is_ok(), "precondition");
    let ports = resolve_ports(&spec.id, &spec.spec.ports).unwrap();
    assert_ne!(ports["http"], 0);
    assert_ne!(ports["admin"], 0);
    assert_eq!(ports["my-port"], 4321);
    let mut running = driver.start(&spec, ports.clone(), 0).unwrap();
    let pid = running.pid();

    let log = eventually("the script's output in its log", || {
        let log = log_of(&driver, "web-1");
        log.contains("STDIN=").then_some(log)
    })
    .await;
    let (http, admin) = (ports["http"], ports["admin"]);
    assert!(
        log.contains(&format!(
            "PORT={http} HTTP={http} ADMIN={admin} MY_PORT=4321"
        )),
        "{log}"
    );
    assert!(
        log.contains("SVC=web INST=web-1 REL=7 NODE=node-a"),
        "{log}"
    );
    let cwd = driver.instance_dir("web-1").unwrap();
    assert!(
        log.contains(&format!("VERSION=2 LEAK=none CWD={}", cwd.display())),
        "{log}"
    );
    assert!(
        log.contains("to-stderr"),
        "stderr goes to the same file: {log}"
    );
    assert!(log.contains("STDIN=\n"), "stdin is /dev/null: {log}");

    // Its own session and process group, so the agent's signals do not reach it.
    assert_eq!(session_of(pid), i64::from(pid));
    assert_ne!(session_of(pid), session_of(std::process::id()));

    // The record is there, with the kernel's start time.
    let record = InstanceRecord::read(&driver.record_path("web-1").unwrap()).unwrap();
    assert_eq!(record.pid, pid);
    assert_eq!(record.start_time, proc_stat(pid).unwrap().start_time);
    assert_eq!(record.ports, ports);
    assert!(record.is_live());

    let exit = driver
        .stop(&mut running, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert!(!alive(pid));
}

#[tokio::test]
async fn berth_as_the_command_means_the_agents_own_binary() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path()).with_self_exe("/bin/echo");
    let mut spec = sh("self-1", "");
    spec.spec.process.as_mut().unwrap().command = vec!["berth".into(), "whoami-ish".into()];
    let mut running = driver.start(&spec, BTreeMap::new(), 0).unwrap();
    assert_eq!(within("echo to exit", running.wait()).await, Exit::Code(0));
    assert_eq!(log_of(&driver, "self-1"), "whoami-ish\n");
}

#[tokio::test]
async fn bad_specs_are_refused_with_the_instance_named() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path());
    let e = driver
        .start(&sh("../etc", "true"), BTreeMap::new(), 0)
        .unwrap_err();
    assert!(e.to_string().contains("`../etc`"), "{e}");
    assert!(e.is_permanent());
    let mut docker = sh("img-1", "true");
    docker.spec.process = None;
    docker.spec.image = Some("x:1".into());
    let e = driver.start(&docker, BTreeMap::new(), 0).unwrap_err();
    assert!(e.to_string().contains("no `process:`"), "{e}");
    let mut missing = sh("missing-1", "");
    missing.spec.process.as_mut().unwrap().command = vec!["/nonexistent/prog".into()];
    let e = driver.start(&missing, BTreeMap::new(), 0).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/prog"), "{e}");
    assert!(
        !e.is_permanent(),
        "a missing program may be installed later"
    );
}

#[tokio::test]
async fn logs_rotate_by_copy_truncate_past_the_size_limit() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path()).with_log_config(LogConfig {
        max_bytes: 2_000,
        files: 3,
    });
    let spec = sh(
        "chatty-1",
        "i=0; while true; do echo \"line $i xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"; \
         i=$((i+1)); sleep 0.005; done",
    );
    let mut running = driver.start(&spec, BTreeMap::new(), 0).unwrap();
    let log = driver.log_path("chatty-1").unwrap();
    eventually("the log to pass 2000 bytes", || {
        (fs::metadata(&log).map_or(0, |m| m.len()) > 2_000).then_some(())
    })
    .await;
    assert!(driver.rotate_logs("chatty-1").unwrap());
    let first = fs::read_to_string(rotated_path(&log, 1)).unwrap();
    assert!(
        first.len() > 2_000 && first.starts_with("line 0 "),
        "{first}"
    );
    // The workload's O_APPEND descriptor writes at the new end: no hole of NULs.
    let fresh = eventually("new output after truncation", || {
        let s = fs::read(&log).ok()?;
        (s.len() > 100).then_some(s)
    })
    .await;
    assert_ne!(fresh[0], 0, "sparse hole: the writer kept its old offset");
    assert!(fresh.starts_with(b"line "));
    eventually("a second rotation", || {
        driver.rotate_logs("chatty-1").unwrap().then_some(())
    })
    .await;
    assert!(rotated_path(&log, 2).exists());
    driver
        .stop(&mut running, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn stop_sends_term_then_kill_after_the_grace() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path());
    let stubborn = sh(
        "stubborn-1",
        "trap 'echo got TERM' TERM; echo ready; while true; do sleep 0.05; done",
    );
    let mut running = driver.start(&stubborn, BTreeMap::new(), 0).unwrap();
    eventually("the trap to be installed", || {
        log_of(&driver, "stubborn-1")
            .contains("ready")
            .then_some(())
    })
    .await;
    let grace = Duration::from_millis(800);
    let t0 = Instant::now();
    let exit = within("stop", driver.stop(&mut running, grace))
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(exit, Exit::Signal(9));
    assert!(took >= grace, "SIGKILL came before the grace: {took:?}");
    assert!(took < grace + Duration::from_secs(3), "{took:?}");
    assert!(log_of(&driver, "stubborn-1").contains("got TERM"));

    // A polite workload ends on SIGTERM well within its grace, and so does everything it forked.
    let polite = sh("polite-1", "sleep 1000 & echo $! > child.pid; wait");
    let mut running = driver.start(&polite, BTreeMap::new(), 0).unwrap();
    let child_pid = driver.instance_dir("polite-1").unwrap().join("child.pid");
    let child: u32 = eventually("the grandchild's pid", || {
        fs::read_to_string(&child_pid).ok()?.trim().parse().ok()
    })
    .await;
    assert!(alive(child));
    let t0 = Instant::now();
    let exit = driver
        .stop(&mut running, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert!(t0.elapsed() < Duration::from_secs(5));
    eventually("the grandchild to be gone", || {
        (!alive(child)).then_some(())
    })
    .await;
}

/// When run by `workloads_survive_the_agents_death` (and only then), plays a short-lived agent:
/// starts an instance, reports its pid, and waits to be killed.
#[tokio::test]
async fn helper_agent_process() {
    let Ok(data_dir) = std::env::var("BERTH_TEST_HELPER_DATA_DIR") else {
        return;
    };
    let driver = ProcessDriver::new(&data_dir);
    let running = driver
        .start(
            &sh("survivor-1", "echo started; exec sleep 60"),
            BTreeMap::new(),
            0,
        )
        .unwrap();
    println!("HELPER-PID {}", running.pid());
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn workloads_survive_the_agents_death_and_are_adopted() {
    let dir = workload_dir();
    // The "agent": this test binary running only `helper_agent_process`, in its own process
    // group so that `kill -9` of the whole group is like an agent killed with its unit.
    let mut agent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_agent_process", "--nocapture"])
        .env("BERTH_TEST_HELPER_DATA_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let driver = ProcessDriver::new(dir.path());
    let record_path = driver.record_path("survivor-1").unwrap();
    let record = eventually("the helper agent to start its instance", || {
        InstanceRecord::read(&record_path).ok()
    })
    .await;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    agent.wait().unwrap();
    assert!(alive(record.pid), "the workload died with its agent");

    let mut adopted = driver.adopt().unwrap();
    assert_eq!(adopted.len(), 1);
    let mut a = adopted.pop().unwrap();
    assert_eq!(a.running.pid(), record.pid);
    assert!(!a.running.is_child());
    assert_eq!(a.record.spec.id, "survivor-1");

    // A non-child's exit is noticed by polling /proc.
    let exit = within(
        "the adopted instance to stop",
        driver.stop(&mut a.running, Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(exit, Exit::Unknown);
    eventually("the adopted process to be gone", || {
        (!alive(record.pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_live_pid_with_another_start_time_is_not_adopted() {
    let dir = workload_dir();
    let driver = ProcessDriver::new(dir.path());
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = other.id();
    let start_time = proc_stat(pid).unwrap().start_time;
    let mut record = InstanceRecord {
        spec: sh("impostor-1", "sleep 30"),
        pid,
        start_time: start_time + 1,
        ports: BTreeMap::new(),
        restarts: 0,
        started_at_ms: 0,
        finished: None,
        container: None,
        image_id: None,
    };
    driver.save_record(&record).unwrap();
    assert!(driver.adopt().unwrap().is_empty(), "recycled pid adopted");
    // Sanity: with the right start time it would be.
    record.start_time = start_time;
    driver.save_record(&record).unwrap();
    assert_eq!(driver.adopt().unwrap().len(), 1);
    // A corrupt record is skipped, not fatal.
    fs::create_dir_all(dir.path().join("instances/broken-1")).unwrap();
    fs::write(
        dir.path().join("instances/broken-1/instance.json"),
        "{not json",
    )
    .unwrap();
    assert_eq!(driver.records().unwrap().len(), 1);
    other.kill().unwrap();
    other.wait().unwrap();
}
