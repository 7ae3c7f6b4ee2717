//! A rollback returns only to a release that once went live, at most once in a row, and the
//! instances the controller gave up on free their node (issue 11: "automatic rollback
//! ping-pongs between two failed releases and leaks capacity").

mod harness;

use std::collections::BTreeSet;

use berth_api::control::ReleaseStatus;
use berth_api::InstanceState;
use harness::{
    deploy, eventually, release, release_reports, wait_release, web_stack, Agent, Entry, Policy,
    Server, Timeline,
};

/// Every instance fails at once, as with an image that cannot be pulled.
fn all_failed() -> Policy {
    std::sync::Arc::new(|_, _| (InstanceState::Failed, 0))
}

/// `shop`'s rollout line in `berth status`.
async fn rollout(server: &Server) -> String {
    server
        .admin
        .status(Some("shop"))
        .await
        .ok()
        .and_then(|s| s.stacks.into_iter().next())
        .map(|s| s.rollout)
        .unwrap_or_default()
}

/// The CPU millis the instances on node `name` reserve, as `berth nodes` shows them.
async fn reserved_cpu(server: &Server, name: &str) -> Result<u64, String> {
    let nodes = server.admin.nodes().await.map_err(|e| e.to_string())?;
    nodes
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| n.allocated.cpu_millis)
        .ok_or_else(|| format!("node {name} is not listed"))
}

/// Every instance (id, release) the agent was ever told to run, from timeline entry `from` on.
fn desired_since(timeline: &Timeline, from: usize) -> BTreeSet<(String, u64)> {
    timeline
        .since(from)
        .into_iter()
        .filter_map(|e| match e {
            Entry::Desired { instances, .. } => Some(instances),
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_went_live_is_no_rollback_target_and_failed_instances_free_the_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let timeline = Timeline::default();
    let _agent = Agent::join(&server, "n1", all_failed(), timeline.clone()).await;

    // A first release that never becomes healthy: nothing to roll back to.
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Failed).await;
    let before = desired_since(&timeline, 0);
    assert!(
        before.iter().any(|(_, r)| *r == 1),
        "release 1 had instances: {before:?}"
    );

    // A second release that fails too must not "roll back" to release 1.
    let mark = timeline.len();
    deploy(&server, &web_stack("shop", 2, "60s")).await;
    let status = eventually("the rollout to stop and say why", || async {
        let status = rollout(&server).await;
        if status.starts_with("failed: ") && status.contains("nothing to roll back to") {
            Ok(status)
        } else {
            Err(status)
        }
    })
    .await;
    assert!(
        status.contains("no earlier release went live"),
        "status: {status}"
    );
    let r2 = wait_release(&server, "shop", 2, ReleaseStatus::Failed).await;
    assert!(
        r2.reason
            .as_deref()
            .is_some_and(|r| r.contains("simulated Failed")),
        "release 2 says why it failed: {:?}",
        r2.reason
    );
    let r1 = release(&server, "shop", 1)
        .await
        .expect("release 1 retained");
    assert_eq!(r1.status, ReleaseStatus::Failed, "release 1 is not retried");

    // Nothing of release 1 was started again: no rollback to it at all.
    let restarted: Vec<_> = desired_since(&timeline, mark)
        .into_iter()
        .filter(|(id, r)| *r == 1 && !before.contains(&(id.clone(), *r)))
        .collect();
    assert!(
        restarted.is_empty(),
        "release 1 was rolled back to: {restarted:?}"
    );

    // Every instance failed, so none holds the node any more.
    eventually(
        "the failed instances to free their reservations",
        || async {
            match reserved_cpu(&server, "n1").await? {
                0 => Ok(()),
                cpu => Err(format!(
                    "{cpu}m still reserved; status: {}",
                    rollout(&server).await
                )),
            }
        },
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_deploy_rolls_back_once_to_the_live_release_and_its_failed_instances_free_the_node(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let timeline = Timeline::default();
    let agent = Agent::join(
        &server,
        "n1",
        release_reports(2, (InstanceState::Failed, 0)),
        timeline.clone(),
    )
    .await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    agent.wait_running(1, 3).await;
    let live_cpu = reserved_cpu(&server, "n1").await.expect("nodes");
    assert!(live_cpu > 0, "release 1's instances reserve CPU");

    deploy(&server, &web_stack("shop", 2, "60s")).await;
    eventually("the automatic rollback to release 1 to finish", || async {
        let status = rollout(&server).await;
        if status.starts_with("rolled back to 1 ") {
            Ok(())
        } else {
            Err(status)
        }
    })
    .await;
    wait_release(&server, "shop", 2, ReleaseStatus::Failed).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    agent.wait_running(1, 3).await;
    eventually(
        "the reservations to be release 1's three instances'",
        || async {
            let cpu = reserved_cpu(&server, "n1").await?;
            if cpu == live_cpu {
                Ok(())
            } else {
                Err(format!("{cpu}m reserved, {live_cpu}m needed"))
            }
        },
    )
    .await;
    server.stop().await;
}
