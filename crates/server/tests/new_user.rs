//! Issue 11's "bugs a new user hit", through the real server: a failed first release can be
//! retried, a plan that cannot be placed is refused unless forced, and a plan whose only
//! changes are secrets is a whole plan (header, blast radius, the id `--plan ID` takes).

mod harness;

use berth_api::control::{DeployRequest, ReleaseStatus, RollbackRequest};
use berth_api::InstanceState;
use berth_client::ClientError;
use harness::{
    all_healthy, deploy_request, release_reports, wait_release, web_stack, Agent, Server, Timeline,
};

/// A first release that never becomes healthy fails; deploying the same file again (or
/// `berth rollback STACK 1`) is a retry that stores a new release, not "already runs this".
/// Once live, the same file again is a no-op that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_release_can_be_retried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    // Release 1's instances of either stack never get healthy; later releases do.
    let _agent = Agent::join(
        &server,
        "n1",
        release_reports(1, (InstanceState::Failed, 0)),
        Timeline::default(),
    )
    .await;

    for (stack, by_rollback) in [("retry", false), ("back", true)] {
        let source = web_stack(stack, 1, "1s");
        let first = server
            .admin
            .deploy(&deploy_request(&source, "staging"))
            .await
            .expect("first deploy");
        assert_eq!(first.release, Some(1));
        wait_release(&server, stack, 1, ReleaseStatus::Failed).await;

        let again = if by_rollback {
            server
                .admin
                .rollback(stack, "staging", &RollbackRequest { release: Some(1) })
                .await
                .expect("rollback to 1")
        } else {
            server
                .admin
                .deploy(&deploy_request(&source, "staging"))
                .await
                .expect("the same file again")
        };
        assert_eq!(
            again.release,
            Some(2),
            "{stack}: nothing runs, so the same content again is a retry: {:?}\n{}",
            again.unchanged,
            again.plan.text
        );
        assert!(
            again.plan.text.contains("release 1 failed"),
            "{stack}: the plan says it retries a failed release:\n{}",
            again.plan.text
        );
        wait_release(&server, stack, 2, ReleaseStatus::Live).await;

        let live = server
            .admin
            .deploy(&deploy_request(&source, "staging"))
            .await
            .expect("the same file once live");
        assert_eq!(
            live.release, None,
            "{stack}: live and healthy: nothing to do"
        );
        let why = live.unchanged.unwrap_or_default();
        assert!(
            why.contains("already runs this") && why.contains("release 2 is live"),
            "{stack}: {why}"
        );
    }
    server.stop().await;
}

/// A 2-replica service constrained to a zone no node has.
const NOWHERE: &str = r#"stack: mars
environments:
  staging:
    regions: [local]
services:
  web:
    process: {command: [sleep, "1000"]}
    ports: { http: 0 }
    replicas: 2
    placement: { constraints: ["zone == mars"] }
"#;

/// A plan that says "cannot be placed" is refused (428: the CLI exits 3) naming the reasons,
/// and nothing is stored; with `force` it is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_cannot_be_placed_is_refused_unless_forced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let _agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;

    let refused = server
        .admin
        .deploy(&deploy_request(NOWHERE, "staging"))
        .await
        .expect_err("an unplaceable plan is refused");
    assert!(
        matches!(refused, ClientError::Refused { .. }),
        "428 (exit 3) expected: {refused:?}"
    );
    let text = refused.to_string();
    for needle in [
        "web in local: 2 of 2 cannot be placed: 1 node: 1 fails zone == mars",
        "--force",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert!(
        matches!(
            server.admin.releases("mars", "staging").await,
            Err(ClientError::NotFound { .. })
        ),
        "nothing stored"
    );

    let forced = server
        .admin
        .deploy(&DeployRequest {
            force: true,
            ..deploy_request(NOWHERE, "staging")
        })
        .await
        .expect("a forced deploy");
    assert_eq!(forced.release, Some(1));
    server.stop().await;
}

const SECRET_STACK: &str = r#"stack: shop
environments:
  staging:
    regions: [local]
services:
  api:
    process: {command: [sleep, "1000"]}
    secrets: [DB_PASSWORD]
    ports: { http: 0 }
    replicas: 2
"#;

/// After `berth secret set`, the same file's plan has only secret changes: it still has the
/// header, a blast radius (both instances replaced) and the plan id, and `--plan ID` with that
/// id deploys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_with_only_secret_changes_is_a_whole_plan() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let _agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    server
        .admin
        .set_secret("shop", "DB_PASSWORD", "first-value")
        .await
        .expect("set");
    let first = server
        .admin
        .deploy(&deploy_request(SECRET_STACK, "staging"))
        .await
        .expect("deploy");
    assert_eq!(first.release, Some(1));
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    server
        .admin
        .set_secret("shop", "DB_PASSWORD", "second-value")
        .await
        .expect("set again");

    let plan = server
        .admin
        .plan(&deploy_request(SECRET_STACK, "staging"))
        .await
        .expect("plan");
    let text = &plan.plan.text;
    let id_line = format!("plan id: {}", plan.plan.id);
    for needle in [
        "plan for stack shop, environment staging",
        "api: secret DB_PASSWORD: version 1 → 2",
        "blast radius:",
        "instances: 2 to start, 2 to stop",
        "regions touched: local",
        id_line.as_str(),
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(!text.contains("no changes"), "{text}");

    let applied = server
        .admin
        .deploy(&DeployRequest {
            plan_id: Some(plan.plan.id.clone()),
            ..deploy_request(SECRET_STACK, "staging")
        })
        .await
        .expect("deploy --plan ID");
    assert_eq!(applied.release, Some(2), "{}", applied.plan.text);
    server.stop().await;
}
