//! Placement through the server: a plan says what the cluster cannot place and why, and a
//! rollout that cannot place an instance shows the scheduler's explanation in `berth status`.

mod harness;

use harness::{all_healthy, deploy_request, eventually, Agent, Server, Timeline};

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
    resources: { cpu: 100m, memory: 64Mi }
    placement: { constraints: ["zone == mars"] }
    rollout: { progress_deadline: 1h }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_and_the_status_say_why_instances_cannot_be_placed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let _agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;

    let plan = server
        .admin
        .plan(&deploy_request(NOWHERE, "staging"))
        .await
        .expect("plan");
    assert_eq!(
        plan.plan.placement,
        vec!["web in local: 2 of 2 cannot be placed: 1 node: 1 fails zone == mars".to_string()],
        "{}",
        plan.plan.text
    );
    assert!(
        plan.plan.text.contains("cannot be placed"),
        "{}",
        plan.plan.text
    );

    // Refused without --force (issue 11); forced, the rollout shows why it waits.
    let deployed = server
        .admin
        .deploy(&berth_api::control::DeployRequest {
            force: true,
            ..deploy_request(NOWHERE, "staging")
        })
        .await
        .expect("deploy");
    assert_eq!(deployed.plan.placement.len(), 1);
    let why = eventually("status to explain the pending instances", || async {
        let status = server
            .admin
            .status(Some("mars"))
            .await
            .map_err(|e| e.to_string())?;
        let service = status
            .stacks
            .first()
            .and_then(|s| s.services.first())
            .ok_or("no service in the status")?;
        service
            .pending
            .clone()
            .ok_or_else(|| format!("no explanation yet: {service:?}"))
    })
    .await;
    assert_eq!(why, "1 node: 1 fails zone == mars");
    server.stop().await;
}
