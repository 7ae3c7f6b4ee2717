//! Helpers shared by the agent's integration tests: specs, and polling with a deadline (never
//! sleep-and-hope).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use berth_agent::supervisor::Statuses;
use berth_api::InstanceSpec;
use berth_spec::model::{
    Amount, Cpu, Duration as SpecDuration, Health, Memory, Placement, Process, Resources,
    RestartPolicy, Rollout, Service, Strategy,
};
use tokio::sync::watch;

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn service(command: &[&str]) -> Service {
    Service {
        process: Some(Process {
            command: command.iter().map(|s| s.to_string()).collect(),
        }),
        image: None,
        command: None,
        env: BTreeMap::new(),
        secrets: vec![],
        ports: BTreeMap::new(),
        replicas: 1,
        health: None,
        route: None,
        rollout: Rollout {
            strategy: Strategy::Rolling,
            max_surge: Amount::Count(1),
            max_unavailable: Amount::Count(0),
            progress_deadline: SpecDuration::from_millis(600_000),
        },
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
