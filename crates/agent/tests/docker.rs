//! The Docker driver through the supervisor, against the real Engine and the images
//! `scripts/build-test-images` makes (`berth-test/busybox:v1|v2`: busybox httpd on 8080).
//!
//! Without a reachable Engine these tests print a loud banner and pass, unless
//! `BERTH_REQUIRE_DOCKER=1` (CI), where they fail. Every container a test creates carries the
//! test's own `berth.agent` label and is removed by a guard, even when the test fails.

#![expect(
    clippy::disallowed_methods,
    reason = "a real Engine: deadlines and measured durations are wall-clock"
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use berth_agent::docker::{container_name, labels};
use berth_agent::record::InstanceRecord;
use berth_agent::supervisor::Statuses;
use berth_agent::{DockerDriver, ProcessDriver, Supervisor, SupervisorConfig};
use berth_api::{InstanceSpec, InstanceState};
use berth_spec::model::{Duration as SpecDuration, Health};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V1: &str = "berth-test/busybox:v1";

/// The Engine, with the test images built; `None` when there is none and it is not required
/// (the skip is counted: see [`common::docker_engine`]).
async fn engine() -> Option<DockerDriver> {
    docker_engine(&[V1]).await
}

/// Removes every container labelled with this test's data directory when dropped (as its
/// agent, `berth.agent`, or as made by the test, `berth.test`).
struct Cleanup {
    owner: String,
}

impl Cleanup {
    fn new(dir: &Path) -> Cleanup {
        Cleanup { owner: owner(dir) }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let owner = self.owner.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its
        // own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(d) = DockerDriver::connect().await else {
                    return;
                };
                for c in d.list_owned(&owner).await.unwrap_or_default() {
                    let _ = d.remove("cleanup", &c.id).await;
                }
                // And what the test made as another agent's (labelled `berth.test=<owner>`),
                // which a failed test would otherwise leave behind.
                let filters = HashMap::from([("label", vec![format!("berth.test={owner}")])]);
                let options = ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build();
                let made = d.client().list_containers(Some(options)).await;
                for c in made.unwrap_or_default() {
                    let Some(id) = c.id else { continue };
                    let o = RemoveContainerOptionsBuilder::default().force(true).build();
                    let _ = d.client().remove_container(&id, Some(o)).await;
                }
            });
        })
        .join();
    }
}

fn owner(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap().display().to_string()
}

fn config(dir: &Path, docker: &DockerDriver) -> SupervisorConfig {
    let mut c = SupervisorConfig::new(dir);
    c.backoff_base = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c.docker = Some(docker.clone());
    c
}

/// An `image:` instance publishing container port 8080 as `http`, health `GET /`.
fn image(id: &str, image: &str) -> InstanceSpec {
    let mut spec = sh(id, "unused");
    spec.spec.process = None;
    spec.spec.image = Some(image.to_string());
    spec.spec.ports = BTreeMap::from([("http".to_string(), 8080)]);
    spec.spec.stop_grace = SpecDuration::from_millis(1_000);
    spec.spec.health = Some(Health {
        http: Some("/".into()),
        ..health(100, 1, 3)
    });
    spec
}

/// An instance id no other test (nor another test process on the same Engine) uses: container
/// names are global to the Engine.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn state_is(s: &Statuses, id: &str, state: InstanceState) -> bool {
    s.get(id).is_some_and(|x| x.state == state)
}

fn record(dir: &Path, id: &str) -> InstanceRecord {
    InstanceRecord::read(&ProcessDriver::new(dir).record_path(id).unwrap()).unwrap()
}

fn container_of(dir: &Path, id: &str) -> String {
    record(dir, id)
        .container
        .expect("a container id in the record")
}

/// `GET /` over HTTP/1.0; the body.
async fn get(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

async fn exists(docker: &DockerDriver, container: &str) -> bool {
    docker
        .client()
        .inspect_container(container, None)
        .await
        .is_ok()
}

#[tokio::test]
async fn runs_a_container_on_a_picked_host_port_with_env_logs_and_labels_then_removes_it() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let id = &unique("run");
    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    let mut spec = image(id, V1);
    spec.spec.command = Some(
        [
            "/bin/sh",
            "-c",
            "echo hello-$PORT-$BERTH_INSTANCE; exec httpd -f -p $PORT -h /www",
        ]
        .map(String::from)
        .to_vec(),
    );
    sup.set_desired(vec![spec]);
    let s = statuses_where(&mut rx, "healthy", |s| {
        state_is(s, id, InstanceState::Healthy)
    })
    .await;
    let port = s[id.as_str()].ports["http"];
    assert_ne!(port, 8080, "the reported port is the picked host port");
    assert_eq!(get(port).await.trim(), "v1");

    let log = ProcessDriver::new(dir.path()).log_path(id).unwrap();
    eventually("the container's output in output.log", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains(&format!("hello-8080-{id}")))
    })
    .await;

    let cid = container_of(dir.path(), id);
    let info = docker.client().inspect_container(&cid, None).await.unwrap();
    assert_eq!(info.name, Some(format!("/{}", container_name(id))));
    let l = info.config.and_then(|c| c.labels).unwrap();
    assert_eq!(&l[labels::INSTANCE], id);
    assert_eq!(l[labels::SERVICE], "web");
    assert_eq!(l[labels::STACK], "shop");
    assert_eq!(l[labels::RELEASE], "7");
    let host = info.host_config.unwrap();
    assert_eq!(
        host.restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string()),
        Some("no".to_string()),
        "berth owns restarts"
    );
    assert_eq!(host.nano_cpus, Some(100_000_000));
    assert_eq!(host.memory, Some(64 << 20));

    sup.set_desired(vec![]);
    statuses_where(&mut rx, "stopped", |s| {
        state_is(s, id, InstanceState::Stopped)
    })
    .await;
    assert!(
        !exists(&docker, &cid).await,
        "a stopped container is removed"
    );
}

#[tokio::test]
async fn a_killed_container_is_replaced_on_the_same_host_port() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let id = &unique("kill");
    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![image(id, V1)]);
    let s = statuses_where(&mut rx, "healthy", |s| {
        state_is(s, id, InstanceState::Healthy)
    })
    .await;
    let port = s[id.as_str()].ports["http"];
    let first = container_of(dir.path(), id);
    docker
        .client()
        .kill_container(
            &first,
            Some(
                KillContainerOptionsBuilder::default()
                    .signal("SIGKILL")
                    .build(),
            ),
        )
        .await
        .unwrap();
    let s = statuses_where(&mut rx, "restarted and healthy", |s| {
        s.get(id)
            .is_some_and(|x| x.restarts >= 1 && x.state == InstanceState::Healthy)
    })
    .await;
    assert_eq!(s[id.as_str()].ports["http"], port, "endpoints do not move");
    let second = container_of(dir.path(), id);
    assert_ne!(first, second, "a fresh container");
    assert!(!exists(&docker, &first).await, "the dead one is removed");
    assert_eq!(get(port).await.trim(), "v1");
}

#[tokio::test]
async fn a_new_supervisor_adopts_running_containers_without_restarting_them() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let id = &unique("adopt");
    let first = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = first.statuses();
    let desired = vec![image(id, V1)];
    first.set_desired(desired.clone());
    statuses_where(&mut rx, "healthy", |s| {
        state_is(s, id, InstanceState::Healthy)
    })
    .await;
    let cid = container_of(dir.path(), id);
    first.detach().await;
    let info = docker.client().inspect_container(&cid, None).await.unwrap();
    assert_eq!(
        info.state.and_then(|s| s.running),
        Some(true),
        "still running"
    );

    let second = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = second.statuses();
    second.set_desired(desired);
    let s = statuses_where(&mut rx, "adopted as healthy", |s| {
        state_is(s, id, InstanceState::Healthy)
    })
    .await;
    assert_eq!(s[id.as_str()].restarts, 0);
    assert_eq!(container_of(dir.path(), id), cid, "same container");
    let port = s[id.as_str()].ports["http"];
    assert_eq!(get(port).await.trim(), "v1");
    let info = docker.client().inspect_container(&cid, None).await.unwrap();
    assert_eq!(info.state.and_then(|s| s.running), Some(true));
}

#[tokio::test]
async fn a_missing_image_fails_the_instance_with_a_reason_naming_it() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let id = &unique("nope");
    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![image(id, "berth-test/nope:v9")]);
    let s = statuses_where(&mut rx, "failed", |s| {
        state_is(s, id, InstanceState::Failed)
    })
    .await;
    let message = s[id.as_str()].message.clone().unwrap_or_default();
    assert!(
        message.contains("berth-test/nope:v9") && message.contains("pull"),
        "{message}"
    );
    assert!(!exists(&docker, &container_name(id)).await);
}

#[tokio::test]
async fn exec_health_runs_inside_the_container() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    let (good, bad) = (&unique("good"), &unique("bad"));
    let exec = |id: &str, script: &str| {
        let mut spec = image(id, V1);
        spec.spec.health = Some(Health {
            exec: Some(["/bin/sh", "-c", script].map(String::from).to_vec()),
            ..health(100, 1, 2)
        });
        spec
    };
    sup.set_desired(vec![
        exec(good, "test -f /www/index.html && test \"$PORT\" = 8080"),
        exec(bad, "test -f /nowhere"),
    ]);
    let s = statuses_where(&mut rx, "one healthy, one unhealthy", |s| {
        state_is(s, good, InstanceState::Healthy) && state_is(s, bad, InstanceState::Unhealthy)
    })
    .await;
    let why = s[bad.as_str()].message.clone().unwrap_or_default();
    assert!(why.contains("exited with status 1"), "{why}");
}

#[tokio::test]
async fn containers_no_release_wants_are_removed_after_the_first_desired_set() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let labels = HashMap::from([
        (labels::AGENT.to_string(), owner(dir.path())),
        (labels::INSTANCE.to_string(), "ghost-1".to_string()),
    ]);
    let ghost = docker
        .client()
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&format!("berth-ghost-1-{}", std::process::id()))
                    .build(),
            ),
            ContainerCreateBody {
                image: Some(V1.to_string()),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;
    docker.client().start_container(&ghost, None).await.unwrap();
    // Someone else's container (another agent on the same Engine) is left alone.
    let mut foreign_labels = HashMap::from([
        (
            labels::AGENT.to_string(),
            format!("{}-other", owner(dir.path())),
        ),
        (labels::INSTANCE.to_string(), "ghost-2".to_string()),
    ]);
    foreign_labels.insert("berth.test".into(), owner(dir.path()));
    let foreign = docker
        .client()
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            ContainerCreateBody {
                image: Some(V1.to_string()),
                labels: Some(foreign_labels),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .id;

    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    // Nothing is removed before the first desired set. The supervisor has no timer: a removal
    // can only come from its start or the first set. Watch the orphan for ORPHAN_WATCH, then
    // check below that a removal, once allowed, takes less: had the supervisor removed it
    // on its own, the watch would have seen it.
    const ORPHAN_WATCH: Duration = Duration::from_secs(2);
    let watch = std::time::Instant::now();
    while watch.elapsed() < ORPHAN_WATCH {
        assert!(
            exists(&docker, &ghost).await,
            "the orphan was removed {:?} after the supervisor started, before any desired set",
            watch.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sup.set_desired(vec![]);
    let allowed = std::time::Instant::now();
    within("the orphan's removal", async {
        while exists(&docker, &ghost).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let took = allowed.elapsed();
    eprintln!("the orphan was removed {took:?} after the first desired set");
    assert!(
        took < ORPHAN_WATCH,
        "the removal took {took:?} once allowed: the {ORPHAN_WATCH:?} watched before it would not \
         have seen an early one"
    );
    assert!(
        exists(&docker, &foreign).await,
        "another agent's container is kept"
    );
    let _ = docker
        .client()
        .remove_container(
            &foreign,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    let left = docker
        .client()
        .list_containers(Some(
            ListContainersOptionsBuilder::default().all(true).build(),
        ))
        .await
        .unwrap();
    assert!(!left
        .iter()
        .any(|c| c.id.as_deref() == Some(foreign.as_str())));
}

#[tokio::test]
async fn an_image_instance_gets_its_secrets_in_its_env_but_not_in_its_record() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let id = &unique("secret");
    let value = "container-s3cret-81b";
    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    let mut spec = image(id, V1);
    spec.spec.command = Some(
        [
            "/bin/sh",
            "-c",
            "echo \"len=${#DB_PASSWORD}\"; exec httpd -f -p $PORT -h /www",
        ]
        .map(String::from)
        .to_vec(),
    );
    spec.spec.secrets = vec!["DB_PASSWORD".into()];
    spec.secret_env = BTreeMap::from([("DB_PASSWORD".to_string(), value.to_string())]);
    sup.set_desired(vec![spec]);
    statuses_where(&mut rx, "healthy", |s| {
        state_is(s, id, InstanceState::Healthy)
    })
    .await;
    let log = ProcessDriver::new(dir.path()).log_path(id).unwrap();
    eventually("the secret's length in output.log", || {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|l| l.contains(&format!("len={}", value.len())))
    })
    .await;
    let record_path = ProcessDriver::new(dir.path()).record_path(id).unwrap();
    let record = std::fs::read_to_string(record_path).unwrap();
    assert!(
        !record.contains(value),
        "instance.json holds the value: {record}"
    );
    sup.set_desired(vec![]);
    statuses_where(&mut rx, "stopped", |s| {
        state_is(s, id, InstanceState::Stopped)
    })
    .await;
}

/// Issue 10, item 19: a container's ports are published on loopback, not on 0.0.0.0 where
/// the network around the router (its limits, its draining) reaches the instance directly.
#[tokio::test]
async fn published_ports_listen_on_loopback_only() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let _cleanup = Cleanup::new(dir.path());
    let id = &unique("loopback");
    let sup = Supervisor::start(config(dir.path(), &docker), std::future::pending())
        .await
        .unwrap();
    let mut rx = sup.statuses();
    sup.set_desired(vec![image(id, V1)]);
    let s = statuses_where(&mut rx, "healthy", |s| {
        state_is(s, id, InstanceState::Healthy)
    })
    .await;
    let port = s[id.as_str()].ports["http"];
    assert_eq!(get(port).await.trim(), "v1", "reachable on loopback");

    let cid = container_of(dir.path(), id);
    // What the Engine actually bound (`docker port` reads the same).
    let info = docker.client().inspect_container(&cid, None).await.unwrap();
    let bound = info
        .network_settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get("8080/tcp").cloned().flatten())
        .expect("8080/tcp is published");
    let ips: Vec<String> = bound.iter().filter_map(|b| b.host_ip.clone()).collect();
    assert_eq!(ips, ["127.0.0.1"], "published on: {bound:?}");
    assert!(bound
        .iter()
        .all(|b| b.host_port.as_deref() == Some(port.to_string().as_str())));
    let out = std::process::Command::new("docker")
        .args(["port", &cid, "8080/tcp"])
        .output()
        .expect("docker port");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), format!("127.0.0.1:{port}"), "docker port says");
    sup.set_desired(vec![]);
    statuses_where(&mut rx, "stopped", |s| {
        state_is(s, id, InstanceState::Stopped)
    })
    .await;
}
