//! The supervisor against real processes: restart policies, adoption across agent restarts,
//! stopping on desired-set changes, health transitions.

#![expect(
    clippy::disallowed_methods,
    reason = "real processes: deadlines and measured restart delays are wall-clock"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use berth_agent::record::{proc_stat, InstanceRecord};
use berth_agent::supervisor::Statuses;
use berth_agent::{ProcessDriver, Supervisor, SupervisorConfig};
use berth_api::{InstanceSpec, InstanceState};
use berth_spec::model::RestartPolicy;
use common::*;

fn config(dir: &std::path::Path) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(dir);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c.rotate_every = Duration::from_millis(200);
    c
}

fn with_policy(mut spec: InstanceSpec, policy: RestartPolicy) -> InstanceSpec {
    spec.spec.restart = policy;
    spec
}

fn state_is(s: &Statuses, id: &str, state: InstanceState) -> bool {
    s.get(id).is_some_and(|x| x.state == state)
}

fn pid_of(s: &Statuses, id: &str) -> u32 {
    s[id].pid.expect("a pid")
}

#[tokio::test]
async fn kill_9_restarts_under_always_not_under_never() {
    let dir = workload_dir();
    let sup = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![
        with_policy(sh("always-1", "exec sleep 60"), RestartPolicy::Always),
        with_policy(sh("never-1", "exec sleep 60"), RestartPolicy::Never),
        with_policy(sh("onfail-1", "exec sleep 60"), RestartPolicy::OnFailure),
    ]);
    let s = statuses_where(&mut rx, "all three running", |s| {
        ["always-1", "never-1", "onfail-1"]
            .iter()
            .all(|id| state_is(s, id, InstanceState::Healthy))
    })
    .await;
    let (always, never, onfail) = (
        pid_of(&s, "always-1"),
        pid_of(&s, "never-1"),
        pid_of(&s, "onfail-1"),
    );
    for pid in [always, never, onfail] {
        kill9(pid);
    }
    let s = statuses_where(&mut rx, "restarts and a failure", |s| {
        let back = |id: &str| {
            state_is(s, id, InstanceState::Healthy) && s[id].restarts == 1 && s[id].pid.is_some()
        };
        back("always-1") && back("onfail-1") && state_is(s, "never-1", InstanceState::Failed)
    })
    .await;
    let restarted = pid_of(&s, "always-1");
    assert_ne!(restarted, always);
    assert!(alive(restarted));
    let never_status = &s["never-1"];
    assert_eq!(never_status.restarts, 0);
    assert_eq!(never_status.pid, None);
    assert!(
        never_status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("SIGKILL")),
        "{never_status:?}"
    );
    // `never` is remembered on disk, so a new agent does not start it either.
    let record = InstanceRecord::read(
        &ProcessDriver::new(dir.path())
            .record_path("never-1")
            .unwrap(),
    )
    .unwrap();
    assert!(record.finished.is_some_and(|f| f.failed));

    sup.set_desired(vec![]);
    let s = statuses_where(&mut rx, "everything stopped", |s| {
        s.values().all(|x| x.state == InstanceState::Stopped)
    })
    .await;
    assert_eq!(s.len(), 3);
    assert!(s.values().all(|x| x.pid.is_none()));
    assert!(!alive(restarted));
    sup.detach().await;
}

#[tokio::test]
async fn clean_exit_under_on_failure_stops_and_a_crash_loop_backs_off() {
    let dir = workload_dir();
    let sup = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![
        with_policy(sh("done-1", "exit 0"), RestartPolicy::OnFailure),
        with_policy(sh("crash-1", "exit 3"), RestartPolicy::Always),
    ]);
    let s = statuses_where(&mut rx, "done-1 stopped, crash-1 restarted 3 times", |s| {
        state_is(s, "done-1", InstanceState::Stopped)
            && s.get("crash-1").is_some_and(|x| x.restarts >= 3)
    })
    .await;
    assert_eq!(s["done-1"].restarts, 0);
    let crash = statuses_where(&mut rx, "crash-1 waiting to restart", |s| {
        state_is(s, "crash-1", InstanceState::Pending)
    })
    .await;
    let message = crash["crash-1"].message.clone().unwrap_or_default();
    assert!(
        message.contains("status 3") && message.contains("restarting in"),
        "{message}"
    );
    sup.detach().await;
}

#[tokio::test]
async fn a_new_supervisor_adopts_running_instances_without_restarting_them() {
    let dir = workload_dir();
    let mut tcp = sh(
        "tcp-1",
        &format!(
            "exec {} -m http.server \"$PORT\" --bind 127.0.0.1",
            python()
        ),
    );
    tcp.spec.ports = BTreeMap::from([("http".to_string(), 0)]);
    let mut h = health(100, 1, 2);
    h.tcp = Some(true);
    tcp.spec.health = Some(h);
    let desired = vec![sh("plain-1", "exec sleep 60"), tcp];

    // A process that merely reuses a pid must not be adopted: fake a record for a live pid
    // with the wrong start time.
    let mut impostor = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let impostor_pid = impostor.id();
    ProcessDriver::new(dir.path())
        .save_record(&InstanceRecord {
            spec: with_policy(sh("impostor-1", "exec sleep 60"), RestartPolicy::Never),
            pid: impostor_pid,
            start_time: proc_stat(impostor_pid).unwrap().start_time + 1,
            ports: BTreeMap::new(),
            restarts: 0,
            started_at_ms: 0,
            finished: None,
            container: None,
            image_id: None,
        })
        .unwrap();

    let first = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .unwrap();
    let mut rx = first.statuses();
    first.set_desired(desired.clone());
    let before = statuses_where(&mut rx, "both healthy, impostor failed", |s| {
        state_is(s, "plain-1", InstanceState::Healthy)
            && state_is(s, "tcp-1", InstanceState::Healthy)
            && state_is(s, "impostor-1", InstanceState::Stopped)
    })
    .await;
    // The impostor was neither adopted nor signalled: it was not desired, so it was "stopped",
    // which for a process that is not ours means forgetting it.
    assert!(alive(impostor_pid), "a recycled pid was signalled");
    assert_eq!(before["impostor-1"].pid, None);

    // The agent dies: the handle is dropped without stopping anything.
    drop(first);
    let (plain, tcp_pid) = (pid_of(&before, "plain-1"), pid_of(&before, "tcp-1"));
    assert!(alive(plain) && alive(tcp_pid));

    let second = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .unwrap();
    let mut rx = second.statuses();
    let adopted = statuses_where(&mut rx, "adopted instances reported", |s| {
        s.get("plain-1").is_some() && s.get("tcp-1").is_some()
    })
    .await;
    assert_eq!(adopted["plain-1"].pid, Some(plain));
    assert_eq!(adopted["tcp-1"].pid, Some(tcp_pid));
    assert_eq!(adopted["tcp-1"].ports, before["tcp-1"].ports);
    assert_eq!(adopted["plain-1"].state, InstanceState::Healthy);
    second.set_desired(desired.clone());
    // A full health round on the adopted instance, and still the same processes.
    let checked = statuses_where(&mut rx, "the adopted server healthy", |s| {
        state_is(s, "tcp-1", InstanceState::Healthy)
    })
    .await;
    assert_eq!(checked["tcp-1"].pid, Some(tcp_pid));
    assert_eq!(checked["plain-1"].pid, Some(plain));
    assert_eq!(checked["plain-1"].restarts, 0);

    // Adopted instances are supervised: a kill -9 is noticed by polling /proc and restarted.
    kill9(plain);
    let s = statuses_where(&mut rx, "plain-1 restarted", |s| {
        state_is(s, "plain-1", InstanceState::Healthy) && s["plain-1"].restarts == 1
    })
    .await;
    assert_ne!(s["plain-1"].pid, Some(plain));
    let new_plain = pid_of(&s, "plain-1");

    // Only an explicit desired-set change stops instances.
    second.set_desired(vec![]);
    statuses_where(&mut rx, "both stopped", |s| {
        state_is(s, "plain-1", InstanceState::Stopped)
            && state_is(s, "tcp-1", InstanceState::Stopped)
    })
    .await;
    assert!(!alive(new_plain) && !alive(tcp_pid));
    // Stopped instances leave the map at the next desired set.
    second.set_desired(vec![]);
    statuses_where(&mut rx, "an empty map", |s| s.is_empty()).await;
    assert!(ProcessDriver::new(dir.path()).records().unwrap().is_empty());
    second.detach().await;
    assert!(alive(impostor_pid));
    impostor.kill().unwrap();
    impostor.wait().unwrap();
}

#[tokio::test]
async fn shutdown_leaves_instances_running() {
    let dir = workload_dir();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sup = Supervisor::start(config(dir.path()), async move {
        let _ = stop_rx.await;
    })
    .await
    .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![sh("keep-1", "exec sleep 60")]);
    let s = statuses_where(&mut rx, "running", |s| {
        state_is(s, "keep-1", InstanceState::Healthy)
    })
    .await;
    let pid = pid_of(&s, "keep-1");
    stop_tx.send(()).unwrap();
    sup.detach().await;
    assert!(alive(pid), "shutdown stopped an instance");
    let adopted = ProcessDriver::new(dir.path()).adopt().unwrap();
    assert_eq!(adopted.len(), 1);
    let mut running = adopted.into_iter().next().unwrap().running;
    ProcessDriver::new(dir.path())
        .stop(&mut running, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn http_health_moves_starting_to_healthy_and_failing_checks_to_unhealthy() {
    let dir = workload_dir();
    let server = |id: &str, path: &str| {
        let mut spec = sh(
            id,
            &format!(
                "exec {} -m http.server \"$PORT_HTTP\" --bind 127.0.0.1",
                python()
            ),
        );
        spec.spec.ports = BTreeMap::from([("http".to_string(), 0)]);
        // 20 failures in a row (2 s at 100 ms) before `unhealthy`: python has long been
        // listening by then, so the last failure is the 404, not a refused connection, even on
        // a machine busy compiling.
        let mut h = health(100, 2, 20);
        h.http = Some(path.into());
        h.port = Some("http".into());
        spec.spec.health = Some(h);
        spec
    };
    let sup = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![server("good-1", "/"), server("bad-1", "/missing")]);
    statuses_where(&mut rx, "both starting", |s| {
        s.get("good-1").is_some_and(|x| {
            x.state == InstanceState::Starting || x.state == InstanceState::Healthy
        }) && s.get("bad-1").is_some()
    })
    .await;
    let s = statuses_where(&mut rx, "good healthy, bad unhealthy", |s| {
        state_is(s, "good-1", InstanceState::Healthy)
            && state_is(s, "bad-1", InstanceState::Unhealthy)
    })
    .await;
    let why = s["bad-1"].message.clone().unwrap_or_default();
    assert!(why.contains("404"), "{why}");
    assert!(s["good-1"].ports["http"] != 0);
    sup.set_desired(vec![]);
    statuses_where(&mut rx, "both stopped", |s| {
        s.values().all(|x| x.state == InstanceState::Stopped)
    })
    .await;
    sup.detach().await;
}

#[tokio::test]
async fn a_fresh_instance_is_probed_soon_and_early_failures_count_once_per_interval() {
    let dir = workload_dir();
    // A 10 s interval: at the normal pace the first probe would come after 10 s.
    let checked = |id: &str, script: &str| {
        let mut spec = sh(id, script);
        spec.spec.ports = BTreeMap::from([("http".to_string(), 0)]);
        let mut h = health(10_000, 1, 1);
        h.tcp = Some(true);
        spec.spec.health = Some(h);
        spec
    };
    let listens = checked(
        "quick-1",
        &format!(
            "exec {} -m http.server \"$PORT\" --bind 127.0.0.1",
            python()
        ),
    );
    let silent = checked("silent-1", "exec sleep 60");
    let sup = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    let started = tokio::time::Instant::now();
    sup.set_desired(vec![listens, silent]);
    let s = statuses_where(&mut rx, "the listening instance healthy", |s| {
        state_is(s, "quick-1", InstanceState::Healthy)
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "healthy only after {:?}: the first probe waited for the 10 s interval",
        started.elapsed()
    );
    // Probed every 50 ms and failing all along, but with `unhealthy: 1` a failure counts only
    // once per 10 s interval: still starting, not unhealthy.
    assert!(
        state_is(&s, "silent-1", InstanceState::Starting),
        "{:#?}",
        s.get("silent-1")
    );
    sup.set_desired(vec![]);
    statuses_where(&mut rx, "both stopped", |s| {
        s.values().all(|x| x.state == InstanceState::Stopped)
    })
    .await;
    sup.detach().await;
}

/// A workload spawned just before the agent died, before its record was written: the next
/// supervisor kills it (it would hold the instance's port while the instance starts again),
/// and leaves alone a process that merely sits in an instance directory.
#[tokio::test]
async fn a_workload_without_a_record_is_killed_when_a_supervisor_starts() {
    use std::os::unix::process::CommandExt;
    let dir = workload_dir();
    let instance_dir = dir.path().join("instances").join("web-orphan");
    std::fs::create_dir_all(&instance_dir).expect("mkdir");
    let spawn = |env: bool| {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60")
            .current_dir(&instance_dir)
            .env_clear()
            .process_group(0);
        if env {
            cmd.env("BERTH_INSTANCE", "web-orphan");
        }
        cmd.spawn().expect("spawn sleep")
    };
    let mut orphan = spawn(true);
    let mut bystander = spawn(false);
    let sup = Supervisor::start(config(dir.path()), std::future::pending())
        .await
        .expect("supervisor");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = orphan.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "killed, not exited: {status:?}");
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "a process without BERTH_INSTANCE is not the agent's"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    drop(sup);
}

/// A python HTTP server on `$PORT` with a TCP health check every 100 ms.
fn served(id: &str, script: &str) -> InstanceSpec {
    let mut spec = sh(id, script);
    spec.spec.ports = BTreeMap::from([("http".to_string(), 0)]);
    let mut h = health(100, 1, 3);
    h.tcp = Some(true);
    spec.spec.health = Some(h);
    spec
}

fn http_server() -> String {
    format!(
        "exec {} -m http.server \"$PORT\" --bind 127.0.0.1",
        python()
    )
}

/// Issue 10, item 17: back-off is for crash loops. An instance that became healthy and is then
/// killed, again and again, restarts at once every time (production back-off: 500 ms doubling).
#[tokio::test]
async fn a_healthy_instance_killed_again_and_again_restarts_at_once_every_time() {
    let dir = workload_dir();
    let mut c = SupervisorConfig::new(dir.path());
    c.rotate_every = Duration::from_millis(200);
    let sup = Supervisor::start(c, std::future::pending()).await.unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![served("killed-1", &http_server())]);
    let mut delays = Vec::new();
    for round in 0..6u32 {
        let s = statuses_where(&mut rx, "healthy", |s| {
            state_is(s, "killed-1", InstanceState::Healthy) && s["killed-1"].restarts == round
        })
        .await;
        let pid = pid_of(&s, "killed-1");
        let killed = tokio::time::Instant::now();
        kill9(pid);
        statuses_where(&mut rx, "a new process", |s| {
            s.get("killed-1")
                .and_then(|x| x.pid)
                .is_some_and(|p| p != pid)
        })
        .await;
        delays.push(killed.elapsed());
    }
    // On the old code: 500 ms, 1 s, 2 s, 4 s, 8 s, 10 s.
    assert!(
        delays.iter().all(|d| *d < Duration::from_millis(300)),
        "every restart of a healthy instance is immediate: {delays:?}"
    );
    sup.detach().await;
}

/// A run that never becomes healthy is a crash loop, and still backs off; while its service
/// has no healthy instance on the node, an instance that served before waits at most
/// `backoff_base`, and with a healthy sibling it backs off in full.
#[tokio::test]
async fn a_crash_loop_backs_off_but_never_long_while_its_service_is_dark() {
    let dir = workload_dir();
    let mut c = config(dir.path());
    c.backoff_base = Duration::from_millis(100);
    c.backoff_max = Duration::from_secs(10);
    let sup = Supervisor::start(c, std::future::pending()).await.unwrap();
    let mut rx = sup.statuses();

    // Never healthy: 100 + 200 + 400 ms at least before the third restart.
    let started = tokio::time::Instant::now();
    sup.set_desired(vec![served("never-ok-1", "exit 1")]);
    statuses_where(&mut rx, "three restarts", |s| {
        s.get("never-ok-1").is_some_and(|x| x.restarts >= 3)
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "a crash loop backs off: three restarts in {:?}",
        started.elapsed()
    );

    // Served once (the first run serves; every later run fails at start), alone: the service
    // is dark, so it is retried every 100 ms instead of 200, 400, 800 ms….
    let once = |id: &str| {
        served(
            id,
            &format!("test -e served && exit 1; touch served; {}", http_server()),
        )
    };
    sup.set_desired(vec![once("alone-1")]);
    let s = statuses_where(&mut rx, "alone-1 healthy", |s| {
        state_is(s, "alone-1", InstanceState::Healthy)
    })
    .await;
    kill9(pid_of(&s, "alone-1"));
    let s = statuses_where(&mut rx, "alone-1 waiting after 5 failed restarts", |s| {
        s.get("alone-1")
            .is_some_and(|x| x.restarts >= 6 && x.state == InstanceState::Pending)
    })
    .await;
    let message = s["alone-1"].message.clone().unwrap_or_default();
    assert!(
        message.ends_with("restarting in 100ms"),
        "capped at backoff_base while dark: {message}"
    );

    // The same with a healthy sibling of its service: the back-off grows as usual.
    sup.set_desired(vec![once("sibling-1"), served("healthy-1", &http_server())]);
    let s = statuses_where(&mut rx, "both healthy", |s| {
        state_is(s, "sibling-1", InstanceState::Healthy)
            && state_is(s, "healthy-1", InstanceState::Healthy)
    })
    .await;
    kill9(pid_of(&s, "sibling-1"));
    let s = statuses_where(&mut rx, "sibling-1 waiting after 3 failed restarts", |s| {
        s.get("sibling-1")
            .is_some_and(|x| x.restarts >= 4 && x.state == InstanceState::Pending)
    })
    .await;
    let message = s["sibling-1"].message.clone().unwrap_or_default();
    assert!(
        message.ends_with("restarting in 800ms"),
        "a full back-off while the service has a healthy instance: {message}"
    );
    sup.detach().await;
}
