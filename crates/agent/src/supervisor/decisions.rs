//! The supervisor's decisions, tested on the recording double (`driver::recording`): what it
//! starts, adopts, restarts, stops and reports, without processes or Docker. The drivers
//! themselves are tested for real in `tests/process.rs` and `tests/docker.rs`.
//!
//! Timing is never asserted: where "at once" matters, the back-off is an hour, so a restart
//! that waited for it would time the test out; where "backs off" matters, the status says how
//! long it waits.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use berth_api::{InstanceSpec, InstanceState};
use berth_spec::model::{
    Amount, Cpu, Duration as SpecDuration, Health, Memory, Placement, Process, Resources,
    RestartPolicy, Rollout, Service,
};
use tokio::sync::watch;

use super::{Statuses, Supervisor, SupervisorConfig};
use crate::driver::recording::{Call, Recording};
use crate::driver::{Driver, Drivers};
use crate::error::Error;
use crate::process::ProcessDriver;
use crate::record::{Finished, InstanceRecord};

const HOUR: Duration = Duration::from_secs(3600);
const DEADLINE: Duration = Duration::from_secs(20);

fn service() -> Service {
    Service {
        process: Some(Process {
            command: vec!["/bin/true".into()],
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
        stop_grace: SpecDuration::from_millis(2_500),
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

fn spec(id: &str) -> InstanceSpec {
    InstanceSpec {
        id: id.to_string(),
        stack: "shop".into(),
        service: "web".into(),
        release: 3,
        node: "node-a".into(),
        spec: service(),
        image_id: None,
        secret_env: BTreeMap::new(),
    }
}

fn image(id: &str) -> InstanceSpec {
    let mut s = spec(id);
    s.spec.process = None;
    s.spec.image = Some("shop/web:1".into());
    s
}

/// A spec whose TCP health check (every 20 ms, healthy after one success) probes `port`.
fn checked(id: &str, port: u16) -> InstanceSpec {
    let mut s = spec(id);
    s.spec.ports = BTreeMap::from([("http".to_string(), port)]);
    s.spec.health = Some(Health {
        http: None,
        tcp: Some(true),
        exec: None,
        port: None,
        interval: SpecDuration::from_millis(20),
        timeout: SpecDuration::from_millis(1_000),
        healthy: 1,
        unhealthy: 1_000,
    });
    s
}

fn not_an_image(spec: &InstanceSpec) -> bool {
    spec.spec.image.is_none()
}

fn an_image(spec: &InstanceSpec) -> bool {
    spec.spec.image.is_some()
}

/// Back-off and "served" an hour long, unless a test says otherwise; a pinned clock.
fn config(dir: &std::path::Path) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(dir);
    c.backoff_base = HOUR;
    c.backoff_max = HOUR;
    c.served_after = HOUR;
    c.clock = || 1_000;
    c
}

async fn supervise(
    config: SupervisorConfig,
    drivers: &[&Recording],
) -> (Supervisor, watch::Receiver<Statuses>) {
    let list: Vec<Arc<dyn Driver>> = drivers
        .iter()
        .map(|d| Arc::new((*d).clone()) as Arc<dyn Driver>)
        .collect();
    let sup = Supervisor::start_with(config, Drivers::new(list), std::future::pending())
        .await
        .expect("the supervisor starts");
    let rx = sup.statuses();
    (sup, rx)
}

async fn statuses_where(
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

fn state_is(s: &Statuses, id: &str, state: InstanceState) -> bool {
    s.get(id).is_some_and(|x| x.state == state)
}

fn message(s: &Statuses, id: &str) -> String {
    s.get(id)
        .and_then(|x| x.message.clone())
        .unwrap_or_default()
}

fn record(spec: InstanceSpec, pid: u32, restarts: u32) -> InstanceRecord {
    InstanceRecord {
        spec,
        pid,
        start_time: 1,
        ports: BTreeMap::new(),
        restarts,
        started_at_ms: 0,
        finished: None,
        container: None,
        image_id: None,
    }
}

#[tokio::test]
async fn it_starts_what_is_desired_and_reports_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = Recording::new("double", not_an_image, dir.path());
    let (sup, mut rx) = supervise(config(dir.path()), &[&double]).await;
    // Nothing is started before the server's first desired set.
    assert_eq!(double.calls(), [Call::ClearUnrecorded(vec![])]);

    let mut web = spec("web-1");
    web.spec.ports = BTreeMap::from([("http".to_string(), 8080)]);
    sup.set_desired(vec![web, spec("web-2")]);
    let s = statuses_where(&mut rx, "both healthy", |s| {
        state_is(s, "web-1", InstanceState::Healthy) && state_is(s, "web-2", InstanceState::Healthy)
    })
    .await;
    // No health check: running is healthy. The status carries the driver's pid and the ports.
    assert!(s["web-1"].pid.is_some() && s["web-1"].pid != s["web-2"].pid);
    assert_eq!(s["web-1"].ports["http"], 8080);
    assert_eq!(s["web-1"].restarts, 0);
    assert_eq!(s["web-1"].since_ms, 1_000, "the injected clock");
    let calls = double
        .wait_for("the orphan sweep", |c| {
            c.iter().any(|c| matches!(c, Call::RemoveUnknown(_)))
        })
        .await;
    assert!(calls.contains(&Call::Start {
        id: "web-1".into(),
        restarts: 0,
        ports: BTreeMap::from([("http".to_string(), 8080)]),
    }));
    assert_eq!(double.starts("web-1"), 1);
    assert_eq!(double.starts("web-2"), 1);
    assert!(!calls.iter().any(|c| matches!(c, Call::Stop { .. })));
    // The same set again changes nothing.
    sup.set_desired(vec![spec("web-1"), spec("web-2")]);
    sup.set_desired(vec![spec("web-1"), spec("web-2")]);
    assert_eq!(double.starts("web-1"), 1);
    sup.detach().await;
    assert!(
        !double
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Stop { .. })),
        "detaching stops nothing"
    );
}

#[tokio::test]
async fn it_adopts_what_runs_restarts_what_died_unseen_and_keeps_what_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = ProcessDriver::new(dir.path());
    let mut ported = record(spec("alive-1"), 4242, 2);
    ported.ports = BTreeMap::from([("http".to_string(), 9090)]);
    paths.save_record(&ported).expect("record");
    paths
        .save_record(&record(spec("died-1"), 4343, 0))
        .expect("record");
    let mut finished = record(spec("done-1"), 4444, 0);
    finished.finished = Some(Finished {
        failed: true,
        message: "exited with status 3".into(),
    });
    paths.save_record(&finished).expect("record");

    let double = Recording::new("double", not_an_image, dir.path());
    double.still_runs("alive-1", 4242);
    let mut c = config(dir.path());
    // A restart after an unseen death backs off like any crash: make it quick here.
    c.backoff_base = Duration::from_millis(10);
    let (sup, mut rx) = supervise(c, &[&double]).await;
    let s = statuses_where(&mut rx, "adopted, restarted and finished instances", |s| {
        state_is(s, "alive-1", InstanceState::Healthy)
            && state_is(s, "died-1", InstanceState::Healthy)
            && state_is(s, "done-1", InstanceState::Failed)
    })
    .await;
    // Adopted: its pid, ports and restart count, without a start.
    assert_eq!(s["alive-1"].pid, Some(4242));
    assert_eq!(s["alive-1"].ports["http"], 9090);
    assert_eq!(s["alive-1"].restarts, 2);
    assert_eq!(double.starts("alive-1"), 0);
    // Died while no agent watched: restarted per its policy, counted as a restart.
    assert_eq!(s["died-1"].restarts, 1);
    assert_ne!(s["died-1"].pid, Some(4343));
    // Finished: reported as it ended, neither adopted nor started.
    assert_eq!(message(&s, "done-1"), "exited with status 3");
    let calls = double.calls();
    assert_eq!(
        calls[..3],
        [
            Call::ClearUnrecorded(vec!["alive-1".into(), "died-1".into(), "done-1".into()]),
            Call::Adopt("alive-1".into()),
            Call::Adopt("died-1".into()),
        ],
        "unrecorded workloads are cleared before anything is adopted"
    );
    assert!(!calls.contains(&Call::Adopt("done-1".into())));
    assert_eq!(double.starts("done-1"), 0);

    // The first desired set: the finished instance is not wanted any more; the sweep of
    // unknown workloads spares every instance the supervisor knows.
    sup.set_desired(vec![spec("alive-1"), spec("died-1")]);
    let s = statuses_where(&mut rx, "done-1 stopped", |s| {
        state_is(s, "done-1", InstanceState::Stopped)
    })
    .await;
    assert!(state_is(&s, "alive-1", InstanceState::Healthy));
    let calls = double
        .wait_for("the sweep", |c| {
            c.iter().any(|c| matches!(c, Call::RemoveUnknown(_)))
        })
        .await;
    let known: BTreeSet<String> = ["alive-1", "died-1", "done-1"]
        .into_iter()
        .map(String::from)
        .collect();
    assert!(calls.contains(&Call::RemoveUnknown(known)));
    assert!(calls.contains(&Call::Discard("done-1".into())));
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Stop { .. })),
        "nothing that ran was stopped"
    );
    sup.detach().await;
}

#[tokio::test]
async fn a_healthy_instance_that_crashes_restarts_at_once_while_a_crash_loop_backs_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What the health check connects to: "healthy" is the real TCP probe's verdict.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let double = Recording::new("double", not_an_image, dir.path());
    let (sup, mut rx) = supervise(config(dir.path()), &[&double]).await;
    let mut never = checked("never-ok-1", port);
    // Probes a port nothing listens on (that of a closed listener).
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    never.spec.ports = BTreeMap::from([(
        "http".to_string(),
        closed.local_addr().expect("addr").port(),
    )]);
    drop(closed);
    sup.set_desired(vec![checked("served-1", port), never]);
    let s = statuses_where(&mut rx, "served-1 healthy", |s| {
        state_is(s, "served-1", InstanceState::Healthy)
    })
    .await;
    assert!(state_is(&s, "never-ok-1", InstanceState::Starting));

    // Healthy, then killed: restarted at once (the back-off is an hour), again and again.
    for round in 1..=3u32 {
        assert!(double.exit("served-1", false, "killed by SIGKILL"));
        double
            .wait_for("served-1 started again", |c| {
                c.iter().any(|c| {
                    matches!(c, Call::Start { id, restarts, .. } if id == "served-1" && *restarts == round)
                })
            })
            .await;
        statuses_where(&mut rx, "served-1 healthy again", |s| {
            state_is(s, "served-1", InstanceState::Healthy) && s["served-1"].restarts == round
        })
        .await;
    }

    // Never healthy, then gone: a crash loop, which waits out its back-off.
    assert!(double.exit("never-ok-1", false, "exited with status 1"));
    let s = statuses_where(&mut rx, "never-ok-1 waiting", |s| {
        state_is(s, "never-ok-1", InstanceState::Pending)
    })
    .await;
    assert_eq!(
        message(&s, "never-ok-1"),
        "exited with status 1; restarting in 3600s"
    );
    assert_eq!(double.starts("never-ok-1"), 1);
    // Stopped while it waits: nothing to stop, it is simply gone.
    sup.set_desired(vec![checked("served-1", port)]);
    let s = statuses_where(&mut rx, "never-ok-1 stopped", |s| {
        state_is(s, "never-ok-1", InstanceState::Stopped)
    })
    .await;
    assert_eq!(
        message(&s, "never-ok-1"),
        "stopped while waiting to restart: exited with status 1"
    );
    sup.detach().await;
}

#[tokio::test]
async fn it_stops_what_is_no_longer_wanted_with_its_grace_then_forgets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = Recording::new("double", not_an_image, dir.path());
    let (sup, mut rx) = supervise(config(dir.path()), &[&double]).await;
    sup.set_desired(vec![spec("old-1"), spec("new-1")]);
    statuses_where(&mut rx, "both healthy", |s| {
        state_is(s, "old-1", InstanceState::Healthy) && state_is(s, "new-1", InstanceState::Healthy)
    })
    .await;
    sup.set_desired(vec![spec("new-1")]);
    let s = statuses_where(&mut rx, "old-1 stopped", |s| {
        state_is(s, "old-1", InstanceState::Stopped)
    })
    .await;
    assert_eq!(message(&s, "old-1"), "stopped: ended by the test double");
    assert_eq!(s["old-1"].pid, None);
    assert!(state_is(&s, "new-1", InstanceState::Healthy));
    let stops: Vec<Call> = double
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Stop { .. }))
        .collect();
    assert_eq!(
        stops,
        [Call::Stop {
            id: "old-1".into(),
            grace: Duration::from_millis(2_500),
        }],
        "only the unwanted instance, with its stop_grace"
    );
    // Wanted again (a rollback to it): started afresh.
    sup.set_desired(vec![spec("new-1"), spec("old-1")]);
    statuses_where(&mut rx, "old-1 healthy again", |s| {
        state_is(s, "old-1", InstanceState::Healthy)
    })
    .await;
    assert_eq!(double.starts("old-1"), 2);
    sup.detach().await;
}

#[tokio::test]
async fn failed_starts_are_reported_and_only_transient_ones_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let double = Recording::new("double", not_an_image, dir.path());
    double.fail_next_start(
        "bad-1",
        Error::EmptyCommand {
            id: "bad-1".into(),
            what: "process",
        },
    );
    double.fail_next_start(
        "flaky-1",
        Error::Spawn {
            id: "flaky-1".into(),
            program: "/bin/web".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        },
    );
    let mut c = config(dir.path());
    c.backoff_base = Duration::from_millis(10);
    let (sup, mut rx) = supervise(c, &[&double]).await;
    sup.set_desired(vec![spec("bad-1"), spec("flaky-1")]);
    let s = statuses_where(&mut rx, "bad-1 failed, flaky-1 healthy", |s| {
        state_is(s, "bad-1", InstanceState::Failed)
            && state_is(s, "flaky-1", InstanceState::Healthy)
    })
    .await;
    // A permanent error: reported as it is, never retried.
    assert!(
        message(&s, "bad-1").contains("the process command is empty"),
        "{}",
        message(&s, "bad-1")
    );
    assert_eq!(double.starts("bad-1"), 1);
    // A transient one: retried after the back-off, counted as a restart.
    assert_eq!(double.starts("flaky-1"), 2);
    assert_eq!(s["flaky-1"].restarts, 1);
    sup.detach().await;
}

#[tokio::test]
async fn each_instance_goes_to_the_driver_that_runs_it_and_none_fails_saying_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let processes = Recording::new("processes", not_an_image, dir.path());
    let (sup, mut rx) = supervise(config(dir.path()), &[&processes]).await;
    sup.set_desired(vec![spec("proc-1"), image("img-1")]);
    let s = statuses_where(&mut rx, "proc-1 healthy, img-1 failed", |s| {
        state_is(s, "proc-1", InstanceState::Healthy) && state_is(s, "img-1", InstanceState::Failed)
    })
    .await;
    assert!(
        message(&s, "img-1").contains("needs Docker, but this node has no reachable Docker Engine"),
        "{}",
        message(&s, "img-1")
    );
    assert_eq!(processes.starts("img-1"), 0);
    sup.detach().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let processes = Recording::new("processes", not_an_image, dir.path());
    let images = Recording::new("images", an_image, dir.path());
    let (sup, mut rx) = supervise(config(dir.path()), &[&processes, &images]).await;
    sup.set_desired(vec![spec("proc-1"), image("img-1")]);
    statuses_where(&mut rx, "both healthy", |s| {
        state_is(s, "proc-1", InstanceState::Healthy)
            && state_is(s, "img-1", InstanceState::Healthy)
    })
    .await;
    assert_eq!(
        (processes.starts("proc-1"), processes.starts("img-1")),
        (1, 0)
    );
    assert_eq!((images.starts("proc-1"), images.starts("img-1")), (0, 1));
    // An instance that will not run again leaves nothing behind in its driver.
    let mut once = image("once-1");
    once.spec.restart = RestartPolicy::Never;
    sup.set_desired(vec![spec("proc-1"), image("img-1"), once]);
    statuses_where(&mut rx, "once-1 healthy", |s| {
        state_is(s, "once-1", InstanceState::Healthy)
    })
    .await;
    assert!(images.exit("once-1", true, "exited with status 0"));
    statuses_where(&mut rx, "once-1 stopped", |s| {
        state_is(s, "once-1", InstanceState::Stopped)
    })
    .await;
    assert!(images.calls().contains(&Call::Discard("once-1".into())));
    assert!(!processes.calls().contains(&Call::Discard("once-1".into())));
    assert_eq!(images.starts("once-1"), 1, "restart: never");
    sup.detach().await;
}

#[tokio::test]
async fn a_failing_check_makes_a_healthy_instance_unhealthy_without_restarting_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let double = Recording::new("double", not_an_image, dir.path());
    let (sup, mut rx) = supervise(config(dir.path()), &[&double]).await;
    let mut web = checked("web-1", port);
    if let Some(h) = web.spec.health.as_mut() {
        h.unhealthy = 2;
    }
    sup.set_desired(vec![web]);
    statuses_where(&mut rx, "web-1 healthy", |s| {
        state_is(s, "web-1", InstanceState::Healthy)
    })
    .await;
    drop(listener);
    let s = statuses_where(&mut rx, "web-1 unhealthy", |s| {
        state_is(s, "web-1", InstanceState::Unhealthy)
    })
    .await;
    assert!(
        message(&s, "web-1").contains(&format!("127.0.0.1:{port}")),
        "says what failed: {}",
        message(&s, "web-1")
    );
    // Unhealthy is reported, not acted on: the server decides; the workload keeps running.
    assert_eq!(double.starts("web-1"), 1);
    assert!(!double
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Stop { .. })));
    sup.detach().await;
}

#[tokio::test]
async fn after_an_agent_restart_an_instance_with_secrets_starts_only_once_the_server_sends_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut secretive = spec("api-1");
    secretive.spec.secrets = vec!["DB_PASSWORD".into()];
    // What instance.json holds: the spec without the values.
    ProcessDriver::new(dir.path())
        .save_record(&record(secretive.clone(), 4545, 0))
        .expect("record");
    let double = Recording::new("double", not_an_image, dir.path());
    let mut c = config(dir.path());
    c.backoff_base = Duration::from_millis(10);
    let (sup, mut rx) = supervise(c, &[&double]).await;
    // It died while no agent ran; its restart waits for the values.
    let s = statuses_where(&mut rx, "api-1 waiting for its secrets", |s| {
        state_is(s, "api-1", InstanceState::Pending)
            && message(s, "api-1").starts_with("waiting for the server to send its secrets")
    })
    .await;
    assert_eq!(s["api-1"].restarts, 1);
    assert_eq!(double.starts("api-1"), 0);
    secretive.secret_env = BTreeMap::from([("DB_PASSWORD".to_string(), "s3cret".to_string())]);
    sup.set_desired(vec![secretive]);
    statuses_where(&mut rx, "api-1 healthy", |s| {
        state_is(s, "api-1", InstanceState::Healthy)
    })
    .await;
    assert_eq!(double.starts("api-1"), 1);
    sup.detach().await;
}
