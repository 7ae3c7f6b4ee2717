//! `DELETE /v1/stacks/{stack}/{env}` (`berth stack rm`): refused (428, exit 3) without the
//! stack's name typed back, saying what would be lost; confirmed, it stores a release without
//! services whose rollout stops every instance, the history keeps the releases before it, and
//! a rollback brings the stack back. Also: an environment that allows any capacity drop still
//! refuses a deploy that empties a service.

mod harness;

use berth_api::control::{ReleaseStatus, RollbackRequest, StackRemoveRequest};
use berth_client::ClientError;
use harness::{
    all_healthy, deploy_request, eventually, wait_release, web_stack, Agent, Server, Timeline,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_rm_needs_the_name_typed_back_keeps_the_history_and_rolls_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    let first = server
        .admin
        .deploy(&deploy_request(&web_stack("shop", 1, "60s"), "staging"))
        .await
        .expect("deploy");
    assert_eq!(first.release, Some(1));
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    agent.wait_running(1, 3).await;

    // No stack there: 404, whatever the confirmation.
    let missing = server
        .admin
        .remove_stack(
            "nope",
            "staging",
            &StackRemoveRequest {
                confirm: Some("nope".into()),
                dry_run: false,
            },
        )
        .await;
    assert!(
        matches!(missing, Err(ClientError::NotFound { .. })),
        "{missing:?}"
    );

    for confirm in [None, Some("web"), Some("SHOP")] {
        let req = StackRemoveRequest {
            confirm: confirm.map(str::to_string),
            dry_run: false,
        };
        let err = server
            .admin
            .remove_stack("shop", "staging", &req)
            .await
            .expect_err("refused without the stack's name");
        assert_eq!(err.exit_code(), 3, "{err:?}");
        let ClientError::Refused { message } = &err else {
            panic!("confirm {confirm:?}: {err:?}");
        };
        assert!(
            message.contains("needs --confirm shop whatever staging allows")
                && message.contains("service web is removed: 3 → 0 instances (local 3 → 0)")
                && message.contains("region local is emptied")
                && message.contains("run `berth stack rm shop --env staging --confirm shop`"),
            "{message}"
        );
    }
    let history = server
        .admin
        .releases("shop", "staging")
        .await
        .expect("history");
    assert_eq!(history.len(), 1, "a refusal stored nothing: {history:?}");
    assert_eq!(agent.desired().len(), 3);

    let removed = server
        .admin
        .remove_stack(
            "shop",
            "staging",
            &StackRemoveRequest {
                confirm: Some("shop".into()),
                dry_run: false,
            },
        )
        .await
        .expect("confirmed");
    assert_eq!(removed.release, Some(2));
    assert!(
        removed.plan.text.contains("- service web (3 instances)"),
        "{}",
        removed.plan.text
    );
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    eventually("every instance to stop", || async {
        let d = agent.desired();
        if d.is_empty() {
            Ok(())
        } else {
            Err(format!("{} desired", d.len()))
        }
    })
    .await;
    let history = server
        .admin
        .releases("shop", "staging")
        .await
        .expect("history");
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history[0].summary.starts_with("stack rm: -web"),
        "{}",
        history[0].summary
    );
    assert!(history[0].spec.services.is_empty());

    // Removing it again changes nothing.
    let again = server
        .admin
        .remove_stack("shop", "staging", &StackRemoveRequest::default())
        .await
        .expect("nothing left to remove");
    assert_eq!(again.release, None);

    // One command brings it back.
    let back = server
        .admin
        .rollback("shop", "staging", &RollbackRequest::default())
        .await
        .expect("rollback");
    assert_eq!(back.release, Some(3));
    wait_release(&server, "shop", 3, ReleaseStatus::Live).await;
    agent.wait_running(3, 3).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emptying_a_service_is_refused_even_where_any_drop_is_allowed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let _agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    let lenient = |replicas: u32| {
        format!(
            "stack: shop\nenvironments:\n  staging:\n    regions: [local]\n    max_capacity_drop: 100%\nservices:\n  web:\n    process: {{command: [sleep, \"1000\"]}}\n    replicas: {replicas}\n"
        )
    };
    server
        .admin
        .deploy(&deploy_request(&lenient(2), "staging"))
        .await
        .expect("deploy");
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;

    let mut req = deploy_request(&lenient(0), "staging");
    let err = server.admin.deploy(&req).await.expect_err("refused");
    assert_eq!(err.exit_code(), 3, "{err:?}");
    assert!(
        matches!(&err, ClientError::Refused { message }
            if message.contains("service web loses every instance: 2 → 0 (local 2 → 0)")
            && message.contains("deploy again with --confirm shop")),
        "{err:?}"
    );
    // A halving is within 100 %, and not an emptying: no confirmation.
    let half = server
        .admin
        .deploy(&deploy_request(&lenient(1), "staging"))
        .await
        .expect("1 of 2 left is allowed");
    assert_eq!(half.release, Some(2));
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    req.confirm = Some("shop".into());
    let confirmed = server.admin.deploy(&req).await.expect("confirmed");
    assert_eq!(confirmed.release, Some(3));
    server.stop().await;
}
