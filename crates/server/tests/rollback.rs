//! A rollback starts every instance of the release it returns to at once (surge 100%), with no
//! capacity lost: the bad release keeps serving until the good one is healthy.

mod harness;

use berth_api::control::{ReleaseStatus, RollbackRequest};
use berth_api::InstanceState;
use berth_client::ClientError;
use harness::{
    all_healthy, deploy, eventually, release, release_reports, wait_release, web_stack, Agent,
    Server, Timeline,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_starts_all_instances_at_once_and_keeps_the_old_ones_until_they_are_healthy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    deploy(&server, &web_stack("shop", 2, "60s")).await;
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    agent.wait_running(2, 3).await;

    // Release 3 (the rollback) never becomes healthy: with a rolling surge of 1, only one of its
    // instances would ever be asked for; a rollback asks for all three at once.
    agent.set_policy(release_reports(3, (InstanceState::Starting, 0)));
    let resp = server
        .admin
        .rollback("shop", "staging", &RollbackRequest::default())
        .await
        .expect("rollback");
    assert_eq!(resp.release, Some(3));
    eventually(
        "all 3 instances of release 3 desired at once, with the 3 of release 2 still running",
        || async {
            let desired = agent.desired();
            let new = desired.iter().filter(|i| i.release == 3).count();
            let old = desired.iter().filter(|i| i.release == 2).count();
            if new == 3 && old == 3 {
                Ok(())
            } else {
                Err(format!("release 3: {new}, release 2: {old}"))
            }
        },
    )
    .await;
    // Healthy at last: the old ones go.
    agent.set_policy(all_healthy());
    wait_release(&server, "shop", 3, ReleaseStatus::Live).await;
    eventually("release 2's instances gone", || async {
        let old = agent.desired().iter().filter(|i| i.release == 2).count();
        if old == 0 {
            Ok(())
        } else {
            Err(format!("{old} left"))
        }
    })
    .await;
    server.stop().await;
}

/// `rollback` with no release number goes back to the newest release that went live. A
/// release replaced before its rollout finished is `superseded` too, but it never ran, so it is
/// no target; with no release that went live, the rollback is refused and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_rollback_returns_to_the_newest_release_that_went_live() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    // Release 1's instances never become healthy: release 2 replaces it mid-rollout.
    let agent = Agent::join(
        &server,
        "n1",
        release_reports(1, (InstanceState::Starting, 0)),
        Timeline::default(),
    )
    .await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    eventually("release 1's instances starting", || async {
        let starting = agent
            .desired()
            .iter()
            .filter(|i| i.release == 1 && agent.reported(&i.id) == Some(InstanceState::Starting))
            .count();
        if starting > 0 {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;
    deploy(&server, &web_stack("shop", 2, "60s")).await;
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    let r1 = wait_release(&server, "shop", 1, ReleaseStatus::Superseded).await;
    assert!(r1.reason.is_some(), "release 1 never went live: {r1:?}");

    let err = server
        .admin
        .rollback("shop", "staging", &RollbackRequest::default())
        .await
        .expect_err("release 1 never went live: nothing to roll back to");
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::NotFound { .. }) && text.contains("went live"),
        "{err:?}"
    );
    let numbers: Vec<u64> = server
        .admin
        .releases("shop", "staging")
        .await
        .expect("history")
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(numbers, vec![2, 1], "nothing was stored");

    // Release 3 goes live: the default target is release 2, which went live, not release 1.
    deploy(&server, &web_stack("shop", 3, "60s")).await;
    wait_release(&server, "shop", 3, ReleaseStatus::Live).await;
    let resp = server
        .admin
        .rollback("shop", "staging", &RollbackRequest::default())
        .await
        .expect("rollback");
    assert_eq!(resp.release, Some(4));
    let r4 = release(&server, "shop", 4).await.expect("release 4");
    assert_eq!(r4.rollback_of, Some(2), "{r4:?}");
    server.stop().await;
}
