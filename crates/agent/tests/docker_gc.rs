//! Garbage collection and pinned image ids against the real Docker Engine.
//!
//! The images collected here are made by the test itself: each is `berth-test/busybox:v1`
//! committed with a label unique to the test (so it has its own image id; a mere tag of v1
//! would share v1's id, which other tests' containers use, and would never be collectable).
//! Every container and image a test makes is removed by a guard, pass or fail.
//!
//! Without a reachable Engine these tests print a loud banner and pass, unless
//! `BERTH_REQUIRE_DOCKER=1` (CI), where they fail.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use berth_agent::gc::{ImageLedger, ImageUse};
use berth_agent::{DockerDriver, ProcessDriver};
use bollard::models::{ContainerConfig, ContainerCreateBody};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder, WaitContainerOptionsBuilder,
};
use common::*;
use futures::StreamExt;

const V1: &str = "berth-test/busybox:v1";
const V2: &str = "berth-test/busybox:v2";

/// The Engine, with the test images built; `None` when there is none and it is not required
/// (the skip is counted: see [`common::docker_engine`]).
async fn engine() -> Option<DockerDriver> {
    docker_engine(&[V1, V2]).await
}

/// Removes, when dropped, every container and image (tag or id) the test made.
#[derive(Default)]
struct Made {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Made {
    fn drop(&mut self) {
        let containers = std::mem::take(&mut self.containers);
        let images = std::mem::take(&mut self.images);
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(d) = DockerDriver::connect().await else {
                    return;
                };
                for c in containers {
                    let o = RemoveContainerOptionsBuilder::default().force(true).build();
                    let _ = d.client().remove_container(&c, Some(o)).await;
                }
                for i in images {
                    let o = RemoveImageOptionsBuilder::default().force(true).build();
                    let _ = d.client().remove_image(&i, Some(o), None).await;
                }
            });
        })
        .join();
    }
}

impl Made {
    /// A new image from `base`, with its own id (a unique label), tagged `reference`.
    async fn image(&mut self, docker: &DockerDriver, base: &str, reference: &str) -> String {
        let body = ContainerCreateBody {
            image: Some(base.to_string()),
            ..Default::default()
        };
        let c = docker
            .client()
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .expect("create a container to commit");
        self.containers.push(c.id.clone());
        let (repo, tag) = reference.rsplit_once(':').expect("a tagged reference");
        let o = CommitContainerOptionsBuilder::default()
            .container(&c.id)
            .repo(repo)
            .tag(tag)
            .changes(&format!("LABEL berth.test.gc={reference}"))
            .build();
        let id = docker
            .client()
            .commit_container(o, ContainerConfig::default())
            .await
            .expect("commit")
            .id;
        self.images.push(reference.to_string());
        self.images.push(id.clone());
        id
    }

    /// A container (not berth's unless `labels` say so) from `image`, started and exited.
    async fn exited(
        &mut self,
        docker: &DockerDriver,
        image: &str,
        labels: HashMap<String, String>,
    ) -> String {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["/bin/true".into()]),
            labels: Some(labels),
            ..Default::default()
        };
        let c = docker
            .client()
            .create_container(
                None::<bollard::query_parameters::CreateContainerOptions>,
                body,
            )
            .await
            .expect("create");
        self.containers.push(c.id.clone());
        docker
            .client()
            .start_container(&c.id, None)
            .await
            .expect("start");
        let o = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let _ = docker.client().wait_container(&c.id, Some(o)).next().await;
        c.id
    }
}

async fn present(docker: &DockerDriver, image: &str) -> bool {
    docker.client().inspect_image(image).await.is_ok()
}

fn owner(dir: &Path) -> String {
    std::fs::canonicalize(dir).unwrap().display().to_string()
}

#[tokio::test]
async fn gc_removes_only_unkept_unused_images_of_its_ledger_and_exited_containers() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let owner = owner(dir.path());
    let pid = std::process::id();
    let mut made = Made::default();
    let victim = format!("berth-test/gc-victim-{pid}:old");
    let kept_ref = format!("berth-test/gc-kept-{pid}:v1");
    let pinned_ref = format!("berth-test/gc-pinned-{pid}:v1");
    let used_ref = format!("berth-test/gc-used-{pid}:v1");
    let foreign = format!("berth-test/gc-foreign-{pid}:v1");
    let victim_id = made.image(&docker, V1, &victim).await;
    let kept_id = made.image(&docker, V1, &kept_ref).await;
    let pinned_id = made.image(&docker, V1, &pinned_ref).await;
    let used_id = made.image(&docker, V1, &used_ref).await;
    made.image(&docker, V1, &foreign).await;
    // A stopped container that is not berth's still uses its image.
    made.exited(&docker, &used_ref, HashMap::new()).await;
    // An exited container of this agent, and one of another agent.
    let labels = |agent: &str| {
        HashMap::from([
            ("berth.agent".to_string(), agent.to_string()),
            ("berth.instance".to_string(), format!("gc-{pid}")),
        ])
    };
    let mine = made.exited(&docker, V1, labels(&owner)).await;
    let theirs = made.exited(&docker, V1, labels("/elsewhere")).await;

    let ledger = ImageLedger::open(dir.path());
    ledger.note(&victim, &victim_id);
    ledger.note(&kept_ref, &kept_id);
    ledger.note(&pinned_ref, &pinned_id);
    ledger.note(&used_ref, &used_id);
    ledger.note(V1, "sha256:not-v1s-id-so-v1-is-only-kept-by-reference");
    // The release keeps `kept` by reference and `pinned` by id only; v1 by reference.
    let keep: HashSet<String> = [kept_ref.clone(), pinned_id.clone(), V1.to_string()].into();

    let report = docker.collect_garbage(&owner, &keep, &ledger).await;

    assert_eq!(report.images_removed, vec![victim.clone()], "{report:?}");
    assert_eq!(report.containers_removed, 1, "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(!present(&docker, &victim).await, "the victim must be gone");
    assert!(!present(&docker, &victim_id).await, "its bytes too");
    for image in [&kept_ref, &pinned_ref, &used_ref, &foreign, V1, V2] {
        assert!(present(&docker, image).await, "{image} must be kept");
    }
    assert!(
        docker
            .client()
            .inspect_container(&mine, None)
            .await
            .is_err(),
        "this agent's exited container must be removed"
    );
    assert!(
        docker
            .client()
            .inspect_container(&theirs, None)
            .await
            .is_ok(),
        "another agent's container must be left alone"
    );
    let left: Vec<String> = ledger.images().into_iter().map(|i| i.reference).collect();
    assert!(!left.contains(&victim), "{left:?}");
    assert!(
        left.contains(&kept_ref) && left.contains(&used_ref),
        "{left:?}"
    );

    // Once nothing keeps or uses them, they go too.
    let report = docker
        .collect_garbage(&owner, &HashSet::from([V1.to_string()]), &ledger)
        .await;
    let mut removed = report.images_removed.clone();
    removed.sort();
    let mut expected = vec![kept_ref.clone(), pinned_ref.clone()];
    expected.sort();
    assert_eq!(removed, expected, "{report:?}");
    assert!(
        present(&docker, &used_ref).await,
        "still used by a container"
    );
    assert!(present(&docker, V1).await);
    assert!(ledger.images().contains(&ImageUse {
        reference: used_ref.clone(),
        id: used_id.clone()
    }));
}

#[tokio::test]
async fn a_pinned_id_is_run_even_after_its_tag_moved() {
    let Some(docker) = engine().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id();
    let mut made = Made::default();
    let reference = format!("berth-test/gc-pin-{pid}:app");
    let original = made.image(&docker, V1, &reference).await;
    // The tag now names other bytes (v2's), as after a re-push of the same tag.
    let (repo, tag) = reference.rsplit_once(':').expect("tag");
    let o = TagImageOptionsBuilder::default()
        .repo(repo)
        .tag(tag)
        .build();
    docker.client().tag_image(V2, Some(o)).await.expect("retag");
    assert_ne!(
        docker.client().inspect_image(&reference).await.unwrap().id,
        Some(original.clone())
    );

    let paths = ProcessDriver::new(dir.path());
    let mut spec = sh(&format!("gc-pin-{pid}"), "unused");
    spec.spec.process = None;
    spec.spec.image = Some(reference.clone());
    spec.spec.ports = BTreeMap::new();
    spec.image_id = Some(original.clone());
    let (container, ran) = docker
        .start(&paths, &spec, BTreeMap::new(), 0, &owner(dir.path()))
        .await
        .expect("start from the pinned id");
    made.containers.push(container.id().to_string());
    assert_eq!(ran, original, "the reported id is the pinned one");
    let info = docker
        .client()
        .inspect_container(container.id(), None)
        .await
        .expect("inspect");
    assert_eq!(
        info.image,
        Some(original.clone()),
        "the container runs the pinned bytes"
    );

    // A pin that is on no node and that the tag does not name fails, naming both.
    let mut lost = spec.clone();
    lost.id = format!("gc-pin-lost-{pid}");
    lost.image_id =
        Some("sha256:0000000000000000000000000000000000000000000000000000000000000000".into());
    let err = docker
        .start(&paths, &lost, BTreeMap::new(), 0, &owner(dir.path()))
        .await
        .expect_err("a missing pin must fail");
    let text = err.to_string();
    assert!(
        text.contains("sha256:0000") && text.contains(&reference),
        "{text}"
    );
}
