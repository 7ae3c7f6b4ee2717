//! Secrets as environment variables: a deploy needs every declared secret to be set; the values
//! reach the node's desired instances and nothing else (status, events, releases, plans, the
//! secrets listing); a new value makes the next deploy replace the instances, and its plan says
//! so by version.

mod harness;

use berth_api::control::ReleaseStatus;
use berth_client::ClientError;
use harness::{all_healthy, deploy_request, eventually, wait_release, Agent, Server, Timeline};

const FIRST: &str = "hunter2-first-VALUE-9f3a";
const SECOND: &str = "hunter2-second-VALUE-77c1";

fn stack() -> String {
    r#"stack: shop
environments:
  staging:
    regions: [local]
services:
  api:
    process: {command: [sleep, "1000"]}
    env: { LOG_LEVEL: info }
    secrets: [DB_PASSWORD]
    ports: { http: 0 }
    replicas: 2
    rollout: { strategy: rolling, max_surge: 1, max_unavailable: 0, progress_deadline: 60s }
"#
    .to_string()
}

/// The raw body of an admin `GET path`, to search for values without trusting any type.
async fn raw(server: &Server, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}{path}", server.url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {path} body: {e}"))
}

/// Asserts that no admin-visible body holds either value.
async fn nothing_shows_values(server: &Server) {
    for path in [
        "/v1/status",
        "/v1/events",
        "/v1/secrets/shop",
        "/v1/stacks/shop/staging/releases",
        "/v1/nodes",
        "/v1/routes",
        // An admin may read a node's desired set, but without the values.
        "/v1/nodes/n1/desired",
    ] {
        let body = raw(server, path).await;
        assert!(
            !body.contains(FIRST) && !body.contains(SECOND),
            "{path} shows a secret value: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_instances_only_and_a_new_version_replaces_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;

    // Not set: refused, naming stack, service, secret and the command; nothing stored.
    let refused = server
        .admin
        .deploy(&deploy_request(&stack(), "staging"))
        .await
        .expect_err("a deploy with an unset secret is refused");
    let text = refused.to_string();
    assert!(
        matches!(refused, ClientError::Invalid { .. }),
        "400 expected: {refused:?}"
    );
    for needle in [
        "stack shop",
        "service api",
        "DB_PASSWORD",
        "berth secret set shop DB_PASSWORD",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from: {text}");
    }
    assert!(
        matches!(
            server.admin.releases("shop", "staging").await,
            Err(ClientError::NotFound { .. })
        ),
        "nothing stored"
    );
    assert!(server.admin.status(Some("shop")).await.is_err());

    // Set it, deploy: the simulated agent's desired instances carry the value.
    let set = server
        .admin
        .set_secret("shop", "DB_PASSWORD", FIRST)
        .await
        .expect("set");
    assert_eq!(set.version, 1);
    let resp = server
        .admin
        .deploy(&deploy_request(&stack(), "staging"))
        .await
        .expect("deploy");
    assert_eq!(resp.release, Some(1));
    let release = wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    assert_eq!(release.secrets.get("DB_PASSWORD"), Some(&1));
    let first_ids = agent.wait_running(1, 2).await;
    for spec in agent.desired() {
        assert_eq!(
            spec.secret_env.get("DB_PASSWORD").map(String::as_str),
            Some(FIRST),
            "{}",
            spec.id
        );
        assert!(
            !spec.spec.env.contains_key("DB_PASSWORD"),
            "kept out of spec"
        );
    }
    let listed = server.admin.secrets("shop").await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].version),
        ("DB_PASSWORD", 1)
    );
    nothing_shows_values(&server).await;

    // The same file again: nothing to do.
    let again = server
        .admin
        .deploy(&deploy_request(&stack(), "staging"))
        .await
        .expect("redeploy");
    assert_eq!(again.release, None, "{}", again.plan.text);

    // A new value: the plan shows the version change (not the value) and replaces instances.
    let set = server
        .admin
        .set_secret("shop", "DB_PASSWORD", SECOND)
        .await
        .expect("set again");
    assert_eq!(set.version, 2);
    let plan = server
        .admin
        .plan(&deploy_request(&stack(), "staging"))
        .await
        .expect("plan");
    assert!(
        plan.plan.text.contains("secret DB_PASSWORD: version 1 → 2"),
        "{}",
        plan.plan.text
    );
    let plan_json = serde_json::to_string(&plan).expect("plan json");
    assert!(
        !plan_json.contains(FIRST) && !plan_json.contains(SECOND),
        "{plan_json}"
    );
    let resp = server
        .admin
        .deploy(&deploy_request(&stack(), "staging"))
        .await
        .expect("deploy the new version");
    assert_eq!(resp.release, Some(2));
    assert_eq!(
        resp.plan.id, plan.plan.id,
        "the plan id covers the secret change"
    );
    let release = wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    assert_eq!(release.secrets.get("DB_PASSWORD"), Some(&2));
    assert!(
        release.summary.contains("DB_PASSWORD"),
        "{}",
        release.summary
    );
    eventually("only release 2's instances, with the new value", || async {
        let desired = agent.desired();
        let ok = desired.len() == 2
            && desired.iter().all(|s| {
                s.release == 2
                    && !first_ids.contains(&s.id)
                    && s.secret_env.get("DB_PASSWORD").map(String::as_str) == Some(SECOND)
            });
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{:?}",
                desired
                    .iter()
                    .map(|s| (&s.id, s.release))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await;
    nothing_shows_values(&server).await;

    // Deleted: the next deploy that needs it is refused again.
    server
        .admin
        .delete_secret("shop", "DB_PASSWORD")
        .await
        .expect("delete");
    assert!(server.admin.secrets("shop").await.expect("list").is_empty());
    let refused = server
        .admin
        .plan(&deploy_request(&stack(), "staging"))
        .await
        .expect_err("refused once deleted");
    assert!(refused
        .to_string()
        .contains("berth secret set shop DB_PASSWORD"));
    // Set again after a delete: the version keeps counting, never naming two values.
    let set = server
        .admin
        .set_secret("shop", "DB_PASSWORD", FIRST)
        .await
        .expect("set after delete");
    assert_eq!(set.version, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_requests_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let bad_name = server
        .admin
        .set_secret("shop", "db_password", "x")
        .await
        .expect_err("lower case refused");
    assert!(
        matches!(bad_name, ClientError::Invalid { .. }),
        "{bad_name:?}"
    );
    let big = "x".repeat(64 * 1024 + 1);
    let too_big = server
        .admin
        .set_secret("shop", "BIG", &big)
        .await
        .expect_err("too big refused");
    assert!(too_big.to_string().contains("65536"), "{too_big}");
    assert!(server
        .admin
        .set_secret("shop", "OK", &"x".repeat(64 * 1024))
        .await
        .is_ok());
    let anonymous = server.client(None);
    assert!(matches!(
        anonymous.secrets("shop").await,
        Err(ClientError::Unauthorized { .. })
    ));
    let joining = server.client(Some(&server.join_token));
    assert!(joining.set_secret("shop", "X", "v").await.is_err());
    assert!(matches!(
        server.admin.delete_secret("shop", "NOPE").await,
        Err(ClientError::NotFound { .. })
    ));
    server.stop().await;
}
