//! Image pins: the image id an agent reports is pinned for its release in a key of its own
//! (the release record is not rewritten), shows in the release as before, and a rollback
//! runs exactly that id.

mod harness;

use berth_api::control::{Heartbeat, ReleaseStatus, RollbackRequest};
use berth_api::{InstanceState, InstanceStatus};
use berth_spec::model::DriverKind;
use futures::StreamExt;
use harness::{
    all_healthy, deploy, eventually, register_request, release, wait_release, Agent, Server,
    Timeline, DEADLINE,
};

fn image_stack(tag: u32) -> String {
    format!(
        r#"stack: shop
history: 10
environments:
  staging:
    regions: [local]
services:
  web:
    image: registry.example/web:{tag}
    replicas: 2
"#
    )
}

/// The heartbeat the node would send if its instances of `release` reported `image_id`.
fn report(agent: &Agent, release: u64, image_id: &str) -> Heartbeat {
    let statuses = agent
        .desired()
        .into_iter()
        .filter(|i| i.release == release)
        .map(|i| InstanceStatus {
            id: i.id,
            state: InstanceState::Healthy,
            pid: None,
            ports: Default::default(),
            restarts: 0,
            message: None,
            since_ms: 0,
            image_id: Some(image_id.to_string()),
        })
        .collect();
    Heartbeat {
        statuses,
        last_gc: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_is_its_own_key_and_a_rollback_runs_the_pinned_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let mut node = register_request("n1");
    node.drivers.push(DriverKind::Docker);
    let agent = Agent::join_as(&server, node, all_healthy(), Timeline::default()).await;
    deploy(&server, &image_stack(1)).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    agent.wait_running(1, 2).await;

    // The node reports the id its instances run (on its behalf: an admin may send it).
    let pinned = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    server
        .admin
        .heartbeat("n1", &report(&agent, 1, pinned))
        .await
        .expect("heartbeat");
    let r1 = eventually("release 1 to show the pinned id", || async {
        match release(&server, "shop", 1).await {
            Some(r) if r.images.get("web").map(String::as_str) == Some(pinned) => Ok(r),
            other => Err(format!("{:?}", other.map(|r| r.images))),
        }
    })
    .await;
    assert_eq!(r1.status, ReleaseStatus::Live);
    // The first report wins: a later, different id changes nothing.
    let other = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    server
        .admin
        .heartbeat("n1", &report(&agent, 1, other))
        .await
        .expect("heartbeat");

    // The pin is a key of its own; the release record was last written before it.
    let events = tokio::time::timeout(
        DEADLINE,
        server.admin.events(false, None).collect::<Vec<_>>(),
    )
    .await
    .expect("a stream without follow ends");
    let events: Vec<_> = events
        .into_iter()
        .map(|e| e.expect("every event decodes"))
        .collect();
    let pin_key = "/pins/shop/staging/0000000001/web";
    let pins: Vec<_> = events.iter().filter(|e| e.key == pin_key).collect();
    assert_eq!(pins.len(), 1, "the pin is written once: {pins:#?}");
    assert_eq!(pins[0].subject, "pin");
    let release_key = "/releases/shop/staging/0000000001";
    let last_release_write = events
        .iter()
        .filter(|e| e.key == release_key)
        .map(|e| e.revision)
        .max()
        .expect("release 1 was written");
    assert!(
        last_release_write < pins[0].revision,
        "the pin did not rewrite release 1 (last written at {last_release_write}, pinned at {})",
        pins[0].revision
    );

    // A new image, then a rollback: the rollback's instances run the pinned id, not the tag.
    deploy(&server, &image_stack(2)).await;
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    let resp = server
        .admin
        .rollback("shop", "staging", &RollbackRequest::default())
        .await
        .expect("rollback");
    assert_eq!(resp.release, Some(3));
    let r3 = release(&server, "shop", 3).await.expect("release 3");
    assert_eq!(r3.rollback_of, Some(1));
    assert_eq!(
        r3.images.get("web").map(String::as_str),
        Some(pinned),
        "{r3:?}"
    );
    eventually("release 3's instances to run the pinned id", || async {
        let desired = agent.desired();
        let ids: Vec<_> = desired
            .iter()
            .filter(|i| i.release == 3)
            .map(|i| i.image_id.clone())
            .collect();
        if ids.len() == 2 && ids.iter().all(|id| id.as_deref() == Some(pinned)) {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    wait_release(&server, "shop", 3, ReleaseStatus::Live).await;
    assert_eq!(
        release(&server, "shop", 1)
            .await
            .expect("release 1")
            .images
            .get("web")
            .map(String::as_str),
        Some(pinned),
        "release 1 still shows its pin after status changes"
    );
    server.stop().await;
}
