//! Integration tests of `berth-server`: a real server over a real embedded store in a temporary
//! directory, called over HTTP with `berth-client`, with the agent and the router simulated by
//! the test (see `harness`), so rollouts are exercised deterministically without processes.

mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use berth_api::control::{Heartbeat, ReleaseStatus, RollbackRequest};
use berth_api::InstanceState;
use berth_client::ClientError;
use futures::StreamExt;
use harness::*;

/// A fresh data directory and a server on it.
async fn fresh() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    (dir, server)
}

/// Asserts that `result` is a 401.
fn assert_unauthorized<T: std::fmt::Debug>(what: &str, result: Result<T, ClientError>) {
    match result {
        Err(ClientError::Unauthorized { .. }) => {}
        other => panic!("{what}: expected 401 Unauthorized, got {other:?}"),
    }
}

/// Calls every route but `/v1/health` with `client` and asserts each answers 401. `register`
/// is checked only when `check_register` (the join token may register).
async fn assert_all_unauthorized(who: &str, client: &berth_client::Client, check_register: bool) {
    let req = deploy_request(&web_stack("auth", 1, "60s"), "staging");
    let wait = Duration::ZERO;
    assert_unauthorized(&format!("{who}: nodes"), client.nodes().await);
    if check_register {
        assert_unauthorized(
            &format!("{who}: register"),
            client.register(&register_request("n1")).await,
        );
    }
    assert_unauthorized(
        &format!("{who}: heartbeat"),
        client
            .heartbeat(
                "n1",
                &Heartbeat {
                    statuses: vec![],
                    last_gc: None,
                },
            )
            .await,
    );
    assert_unauthorized(
        &format!("{who}: desired"),
        client.desired("n1", None, wait).await,
    );
    assert_unauthorized(
        &format!("{who}: routes"),
        client.routes(Some("r1"), None, wait).await,
    );
    assert_unauthorized(&format!("{who}: plan"), client.plan(&req).await);
    assert_unauthorized(&format!("{who}: deploy"), client.deploy(&req).await);
    assert_unauthorized(
        &format!("{who}: releases"),
        client.releases("auth", "staging").await,
    );
    assert_unauthorized(
        &format!("{who}: rollback"),
        client
            .rollback("auth", "staging", &RollbackRequest::default())
            .await,
    );
    assert_unauthorized(&format!("{who}: status"), client.status(None).await);
    let first = Box::pin(client.events(false, None)).next().await;
    match first {
        Some(Err(ClientError::Unauthorized { .. })) => {}
        other => panic!("{who}: events: expected 401, got {other:?}"),
    }
}

/// 1. `/v1/health` is open; everything else needs the right token; the join token only
///    registers; a node token is only good for its own node and the routing table.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_every_route() {
    let (_dir, server) = fresh().await;

    server
        .client(None)
        .health()
        .await
        .expect("health without a token");
    assert_all_unauthorized("no token", &server.client(None), true).await;
    assert_all_unauthorized("wrong token", &server.client(Some("not-a-token")), true).await;
    assert_all_unauthorized(
        "forged node token",
        &server.client(Some("n1.0123456789abcdef")),
        true,
    )
    .await;
    // A token with an admin token's prefix or suffix is still wrong.
    let almost = format!("{}x", server.admin_token);
    assert_all_unauthorized(
        "almost the admin token",
        &server.client(Some(&almost)),
        true,
    )
    .await;

    // The join token registers, and does nothing else.
    let joining = server.client(Some(&server.join_token));
    assert_all_unauthorized("join token", &joining, false).await;
    let n1 = joining
        .register(&register_request("n1"))
        .await
        .expect("the join token registers")
        .node_token;
    assert!(n1.starts_with("n1."), "node token {n1}");
    let n2 = joining
        .register(&register_request("n2"))
        .await
        .expect("register n2")
        .node_token;

    // A node token: its own node and the routing table, nothing else.
    let node = server.client(Some(&n1));
    node.desired("n1", None, Duration::ZERO)
        .await
        .expect("a node reads its own desired instances");
    node.heartbeat(
        "n1",
        &Heartbeat {
            statuses: vec![],
            last_gc: None,
        },
    )
    .await
    .expect("a node heartbeats for itself");
    node.routes(None, None, Duration::ZERO)
        .await
        .expect("a node reads the routing table");
    assert_unauthorized(
        "n1 reads n2",
        node.desired("n2", None, Duration::ZERO).await,
    );
    assert_unauthorized(
        "n1 beats for n2",
        node.heartbeat(
            "n2",
            &Heartbeat {
                statuses: vec![],
                last_gc: None,
            },
        )
        .await,
    );
    assert_unauthorized(
        "node registers",
        node.register(&register_request("n3")).await,
    );
    assert_unauthorized("node status", node.status(None).await);
    assert_unauthorized(
        "node deploys",
        node.deploy(&deploy_request(&web_stack("auth", 1, "60s"), "staging"))
            .await,
    );
    assert_unauthorized("node lists nodes", node.nodes().await);
    // n2's token is not n1's.
    assert_unauthorized(
        "n2 reads n1",
        server
            .client(Some(&n2))
            .desired("n1", None, Duration::ZERO)
            .await,
    );
    // Re-registering (with the node's own token: the join token registers only new names)
    // issues a new token; the old one stops working.
    let n1_again = node
        .register(&register_request("n1"))
        .await
        .expect("re-register n1")
        .node_token;
    assert_ne!(n1, n1_again);
    server
        .client(Some(&n1_again))
        .desired("n1", None, Duration::ZERO)
        .await
        .expect("the new token works");

    // The admin token reaches the admin routes.
    let nodes = server.admin.nodes().await.expect("admin lists nodes");
    let names: BTreeSet<String> = nodes.into_iter().map(|n| n.name).collect();
    assert_eq!(names, BTreeSet::from(["n1".to_string(), "n2".to_string()]));
    server.stop().await;
}

/// A node that registers again gets a new token; the old one is refused from then on, even
/// after the server has cached it as checked.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_node_token_is_refused() {
    let (_dir, server) = fresh().await;
    let joining = server.client(Some(&server.join_token));
    let old = joining
        .register(&register_request("n1"))
        .await
        .unwrap()
        .node_token;
    // Use it once, so the server has checked it against the store.
    server
        .client(Some(&old))
        .desired("n1", None, Duration::ZERO)
        .await
        .expect("the first token works");
    server
        .client(Some(&old))
        .register(&register_request("n1"))
        .await
        .expect("re-register with its own token");
    assert_unauthorized(
        "the replaced token",
        server
            .client(Some(&old))
            .desired("n1", None, Duration::ZERO)
            .await,
    );
    server.stop().await;
}

/// 2. A bad stack file is refused with `FILE:LINE:COL: message` per problem, and nothing is
///    stored: no history, no status, and the next good deploy is release 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_spec_is_refused_with_positions_and_stores_nothing() {
    let (_dir, server) = fresh().await;
    let bad = "\
stack: shop
history: 0
environments:
  staging:
    regions: [local]
services:
  web:
    process: {command: [sleep, \"1000\"]}
  api:
    image: registry.example/api:latest
";
    let mut req = deploy_request(bad, "staging");
    req.file = "shop.yaml".to_string();
    let err = server.admin.deploy(&req).await.expect_err("a bad spec");
    let ClientError::Invalid { message, details } = &err else {
        panic!("expected 400 Invalid, got {err:?}");
    };
    assert!(message.contains("shop.yaml"), "{message}");
    assert_eq!(details.len(), 2, "{details:#?}");
    assert!(
        details[0].starts_with("shop.yaml:2:10: history:"),
        "{details:#?}"
    );
    assert!(
        details[1].starts_with("shop.yaml:10:12: services.api.image:")
            && details[1].contains("latest"),
        "{details:#?}"
    );
    assert_eq!(err.exit_code(), 1);
    // `plan` refuses it the same way.
    match server.admin.plan(&req).await {
        Err(ClientError::Invalid { details: d, .. }) => assert_eq!(&d, details),
        other => panic!("plan of a bad spec: {other:?}"),
    }
    // An unknown environment is refused too, naming it.
    let err = server
        .admin
        .deploy(&deploy_request(&web_stack("shop", 1, "60s"), "nowhere"))
        .await
        .expect_err("unknown env");
    assert!(
        matches!(&err, ClientError::Invalid { .. }) && err.to_string().contains("nowhere"),
        "{err}"
    );

    // Nothing stored.
    assert!(
        matches!(
            server.admin.releases("shop", "staging").await,
            Err(ClientError::NotFound { .. })
        ),
        "no history after a refused deploy"
    );
    assert!(server.admin.status(None).await.unwrap().stacks.is_empty());
    assert!(matches!(
        server.admin.status(Some("shop")).await,
        Err(ClientError::NotFound { .. })
    ));
    let events: Vec<_> = server.admin.events(false, None).collect().await;
    assert!(
        events.iter().all(|e| e
            .as_ref()
            .is_ok_and(|e| e.subject != "release" && e.subject != "rollout")),
        "{events:?}"
    );
    // The first good deploy is release 1.
    assert_eq!(deploy(&server, &web_stack("shop", 1, "60s")).await, 1);
    server.stop().await;
}

/// 3. A malformed JSON body is a 400 whose message names the field.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_body_is_a_400_naming_the_field() {
    let (_dir, server) = fresh().await;
    let http = reqwest::Client::new();
    let post = |path: &str, token: &str, body: &'static str| {
        http.post(format!("{}{path}", server.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: [(&str, &str, &str); 5] = [
        (
            "/v1/deploy",
            r#"{"file":"s.yaml","source":"stack: x","env":7}"#,
            "env",
        ),
        (
            "/v1/deploy",
            r#"{"file":"s.yaml","env":"staging"}"#,
            "source",
        ),
        (
            "/v1/deploy",
            r#"{"file":"s.yaml","source":"","env":"staging","bogus":1}"#,
            "bogus",
        ),
        ("/v1/deploy", r#"{"file":"s.yaml","#, "EOF"),
        (
            "/v1/stacks/shop/staging/rollback",
            r#"{"release":"two"}"#,
            "release",
        ),
    ];
    for (path, body, field) in cases {
        let resp = post(path, &server.admin_token, body).await.unwrap();
        assert_eq!(resp.status(), 400, "{path} {body}");
        let err: berth_api::control::ErrorBody = resp.json().await.expect("an ErrorBody");
        assert!(
            err.error.contains(field),
            "{path} {body}: `{}` does not name {field}",
            err.error
        );
    }
    // An agent's heartbeat with a bad state names the path to it.
    let token = server
        .client(Some(&server.join_token))
        .register(&register_request("n1"))
        .await
        .unwrap()
        .node_token;
    let resp = http
        .post(format!("{}/v1/nodes/n1/heartbeat", server.url))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"statuses":[{"id":"x","state":"sleepy","ports":{},"restarts":0,"since_ms":1}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: berth_api::control::ErrorBody = resp.json().await.unwrap();
    assert!(err.error.contains("statuses[0].state"), "{}", err.error);
    // A register body with a bad name names the field.
    let resp = http
        .post(format!("{}/v1/nodes/register", server.url))
        .bearer_auth(&server.join_token)
        .header("content-type", "application/json")
        .body(r#"{"name":"Bad Name","resources":{"cpu_millis":1,"memory_bytes":1},"drivers":["process"],"address":"127.0.0.1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: berth_api::control::ErrorBody = resp.json().await.unwrap();
    assert!(err.error.starts_with("name:"), "{}", err.error);
    // Nothing was stored by any of them.
    assert!(server.admin.status(None).await.unwrap().stacks.is_empty());
    server.stop().await;
}

/// 4. A first deploy of 3 replicas: the agent is told to run 3 instances; once it reports
///    them healthy with a port, the release is live and the routing table lists 3 endpoints.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_deploy_goes_live_and_is_routed() {
    let (_dir, server) = fresh().await;
    let timeline = Timeline::default();
    let agent = Agent::join(&server, "n1", all_healthy(), timeline).await;
    let n = deploy(&server, &web_stack("shop", 1, "60s")).await;
    assert_eq!(n, 1);
    let ids = agent.wait_running(1, 3).await;
    let live = wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    assert_eq!(live.reason, None);
    assert!(live.summary.contains("+web"), "{}", live.summary);
    let want: BTreeSet<String> = ids
        .iter()
        .map(|id| format!("127.0.0.1:{}", agent.port(id).unwrap()))
        .collect();
    let table = server
        .admin
        .routes(None, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(table.routes.len(), 1, "{table:?}");
    let route = &table.routes[0];
    assert_eq!(
        (
            route.host.as_str(),
            route.path.as_str(),
            route.service.as_str()
        ),
        ("shop.local", "/", "web")
    );
    let got: BTreeSet<String> = route.endpoints.iter().map(|e| e.addr.clone()).collect();
    assert_eq!(got, want);
    assert!(route.endpoints.iter().all(|e| e.release == 1));
    // Status agrees.
    let status = server.admin.status(Some("shop")).await.unwrap();
    let stack = &status.stacks[0];
    assert_eq!(stack.rollout, "live");
    assert_eq!(stack.live_release, Some(1));
    assert_eq!(
        (stack.services[0].desired, stack.services[0].healthy),
        (3, 3)
    );
    // A long-poll with the current version waits, then answers the same table.
    let again = server
        .admin
        .routes(None, Some(&table.version), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again, table);
    server.stop().await;
}

/// 5. A rolling update (surge 1, unavailable 0): the agent always keeps 3 instances it reported
///    healthy among those it is told to run, the routing table never drops below 3 endpoints,
///    and an old instance leaves the node's desired list only after router r1 acknowledged a
///    table without it.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_keeps_capacity_and_drains_before_stopping() {
    let (_dir, server) = fresh().await;
    let timeline = Timeline::default();
    let agent = Agent::join(
        &server,
        "n1",
        healthy_after(Duration::from_millis(300)),
        timeline.clone(),
    )
    .await;
    // A node token acknowledges only as the node's own router, `agent-NAME`.
    let router = Router::start(
        &server,
        "agent-n1",
        &agent.token,
        Duration::from_millis(300),
        timeline.clone(),
    );
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    let old: BTreeSet<String> = agent.wait_running(1, 3).await.into_iter().collect();
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    eventually("r1 to see the 3 endpoints of release 1", || async {
        match router.latest() {
            Some(t) if table_instances(&t) == old => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let mark = timeline.len();
    assert_eq!(deploy(&server, &web_stack("shop", 2, "60s")).await, 2);
    let new: BTreeSet<String> = agent.wait_running(2, 3).await.into_iter().collect();
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    assert!(old.is_disjoint(&new));
    let r1 = release(&server, "shop", 1).await.unwrap();
    assert_eq!(r1.status, ReleaseStatus::Superseded);

    // Walk the whole timeline (acknowledgements from before the deploy count), checking what
    // happened from the deploy on.
    let entries = timeline.since(0);
    let mut previous: Option<Vec<(String, u64)>> = None;
    let mut last_ack: Option<BTreeSet<String>> = None;
    let mut acked_with: BTreeSet<String> = BTreeSet::new();
    let mut removed = BTreeSet::new();
    let mut tables = 0;
    for (i, e) in entries.iter().enumerate() {
        match e {
            Entry::Desired { instances, .. } if i < mark => previous = Some(instances.clone()),
            Entry::Desired {
                instances,
                reported_healthy,
            } => {
                assert!(
                    *reported_healthy >= 3,
                    "entry {i}: only {reported_healthy} reported-healthy instances among {instances:?}"
                );
                if let Some(prev) = &previous {
                    for (id, rel) in prev {
                        if instances.iter().any(|(x, _)| x == id) {
                            continue;
                        }
                        assert_eq!(*rel, 1, "entry {i}: a new instance {id} was stopped");
                        let ack = last_ack.as_ref().unwrap_or_else(|| {
                            panic!("entry {i}: {id} left desired before r1 acknowledged any table")
                        });
                        assert!(
                            !ack.contains(id),
                            "entry {i}: {id} left desired while r1's last acknowledged table still routed to it: {ack:?}"
                        );
                        assert!(
                            acked_with.contains(id),
                            "{id} was never in an acknowledged table during the update"
                        );
                        removed.insert(id.clone());
                    }
                }
                previous = Some(instances.clone());
            }
            Entry::RouterAck { instances } => {
                acked_with.extend(instances.iter().cloned());
                last_ack = Some(instances.clone());
            }
            Entry::RouterTable { .. } if i < mark => {}
            Entry::RouterTable { endpoints } => {
                tables += 1;
                assert!(
                    endpoints.len() >= 3,
                    "entry {i}: the routing table dropped to {endpoints:?}"
                );
            }
        }
    }
    assert_eq!(removed, old, "every old instance was seen leaving");
    assert!(tables > 0);
    // The end state: r1 routes to the 3 new instances.
    eventually("r1 to route to the 3 new instances", || async {
        match router.latest() {
            Some(t) if table_instances(&t) == new => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop(router);
    drop(agent);
    server.stop().await;
}

/// 6. New instances that fail (or crash-loop, or never get healthy before the progress
///    deadline) fail the release with a reason; the stack rolls back to the previous release,
///    whose instances were never stopped.
async fn a_failing_release_rolls_back(bad: Policy, deadline: &str, reason_has: &str) {
    let (_dir, server) = fresh().await;
    let timeline = Timeline::default();
    let agent = Agent::join(&server, "n1", all_healthy(), timeline.clone()).await;
    deploy(&server, &web_stack("shop", 1, deadline)).await;
    let old: BTreeSet<String> = agent.wait_running(1, 3).await.into_iter().collect();
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;

    agent.set_policy(bad);
    let mark = timeline.len();
    assert_eq!(deploy(&server, &web_stack("shop", 2, deadline)).await, 2);
    let failed = wait_release(&server, "shop", 2, ReleaseStatus::Failed).await;
    let reason = failed.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(reason_has),
        "reason `{reason}` lacks `{reason_has}`"
    );
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    let rollout = eventually("the rollback to finish", || async {
        let s = server.admin.status(Some("shop")).await.unwrap();
        let r = s.stacks[0].rollout.clone();
        if r.starts_with("rolled back to 1") {
            Ok(r)
        } else {
            Err(r)
        }
    })
    .await;
    assert!(rollout.contains("release 2 failed"), "{rollout}");
    // The failed release's instances go away; the old ones remain.
    let kept: BTreeSet<String> = agent.wait_running(1, 3).await.into_iter().collect();
    assert_eq!(kept, old);

    let entries = timeline.since(mark);
    let mut saw_new = false;
    for e in &entries {
        if let Entry::Desired { instances, .. } = e {
            let ids: BTreeSet<String> = instances.iter().map(|(id, _)| id.clone()).collect();
            assert!(
                old.is_subset(&ids),
                "an old instance left desired during the failed rollout: {instances:?}"
            );
            saw_new |= instances.iter().any(|(_, r)| *r == 2);
        }
    }
    assert!(saw_new, "the agent was given release 2's instances");
    let history = server.admin.releases("shop", "staging").await.unwrap();
    let statuses: Vec<(u64, ReleaseStatus)> =
        history.iter().map(|r| (r.number, r.status)).collect();
    assert_eq!(
        statuses,
        vec![(2, ReleaseStatus::Failed), (1, ReleaseStatus::Live)]
    );
    // The table still routes to exactly the old instances.
    let table = server
        .admin
        .routes(None, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(table_instances(&table), old);
    drop(agent);
    server.stop().await;
}

/// 6a. Instances reported `failed`.
#[tokio::test(flavor = "multi_thread")]
async fn failed_instances_roll_back() {
    a_failing_release_rolls_back(
        release_reports(2, (InstanceState::Failed, 0)),
        "30s",
        "failed after 0 restarts",
    )
    .await;
}

/// 6b. Instances unhealthy after 3 restarts.
#[tokio::test(flavor = "multi_thread")]
async fn crash_looping_instances_roll_back() {
    a_failing_release_rolls_back(
        release_reports(2, (InstanceState::Unhealthy, 3)),
        "30s",
        "still unhealthy after 3 restarts",
    )
    .await;
}

/// 6c. Instances that never get healthy: the 2 s progress deadline fails the release.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_rollout_rolls_back_at_its_deadline() {
    a_failing_release_rolls_back(
        release_reports(2, (InstanceState::Starting, 0)),
        "2s",
        "no progress for 2s",
    )
    .await;
}

/// 7. A server restarted in the middle of a rollout resumes it from the store: the new
///    instance created before the restart is kept, and the rollout reaches `live`.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_resumes_the_rollout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let timeline = Timeline::default();
    let mut agent = Agent::join(&server, "n1", all_healthy(), timeline).await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    agent.wait_running(1, 3).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;

    // Release 2's instances start but never get healthy while this server runs.
    agent.set_policy(release_reports(2, (InstanceState::Starting, 0)));
    deploy(&server, &web_stack("shop", 2, "60s")).await;
    let started = eventually("a release-2 instance to be reported starting", || async {
        let d = agent.desired();
        d.iter()
            .find(|i| i.release == 2 && agent.reported(&i.id) == Some(InstanceState::Starting))
            .map(|i| i.id.clone())
            .ok_or_else(|| format!("{d:?}"))
    })
    .await;
    agent.disconnect();
    let admin_token = server.admin_token.clone();
    server.stop().await;

    let server = Server::start(dir.path()).await;
    assert_eq!(server.admin_token, admin_token, "tokens survive a restart");
    let status = server.admin.status(Some("shop")).await.unwrap();
    assert_eq!(status.stacks[0].rollout, "rolling out 1 → 2");
    assert_eq!(
        release(&server, "shop", 2).await.unwrap().status,
        ReleaseStatus::RollingOut
    );
    // The agent comes back (same node token) and its instances now pass their checks.
    agent.set_policy(all_healthy());
    agent.connect(&server);
    let ids = agent.wait_running(2, 3).await;
    assert!(
        ids.contains(&started),
        "{started} was created before the restart and kept: {ids:?}"
    );
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    assert_eq!(
        release(&server, "shop", 1).await.unwrap().status,
        ReleaseStatus::Superseded
    );
    let table = server
        .admin
        .routes(None, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        table_instances(&table),
        ids.into_iter().collect::<BTreeSet<_>>()
    );
    drop(agent);
    server.stop().await;
}

/// 8. `rollback`: by default to the previous successful release, with its content, as a new
///    release whose summary says so; an unknown release is a 404.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_makes_a_new_release_with_the_old_content() {
    let (_dir, server) = fresh().await;
    // Nothing to roll back yet.
    assert!(matches!(
        server
            .admin
            .rollback("shop", "staging", &RollbackRequest::default())
            .await,
        Err(ClientError::NotFound { .. })
    ));
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    // Only one release: nothing earlier to go back to.
    assert!(matches!(
        server
            .admin
            .rollback("shop", "staging", &RollbackRequest::default())
            .await,
        Err(ClientError::NotFound { .. })
    ));
    deploy(&server, &web_stack("shop", 2, "60s")).await;
    wait_release(&server, "shop", 2, ReleaseStatus::Live).await;
    agent.wait_running(2, 3).await;

    let resp = server
        .admin
        .rollback("shop", "staging", &RollbackRequest::default())
        .await
        .expect("rollback");
    assert_eq!(resp.release, Some(3));
    let r1 = release(&server, "shop", 1).await.unwrap();
    let r3 = release(&server, "shop", 3).await.unwrap();
    assert_eq!(r3.spec, r1.spec, "the rollback has release 1's content");
    assert_eq!(r3.rollback_of, Some(1));
    assert!(
        r3.summary.starts_with("rollback to 1"),
        "summary: {}",
        r3.summary
    );
    wait_release(&server, "shop", 3, ReleaseStatus::Live).await;
    agent.wait_running(3, 3).await;
    assert!(agent
        .desired()
        .iter()
        .all(|i| i.spec == r1.spec.services["web"]));
    assert_eq!(
        release(&server, "shop", 2).await.unwrap().status,
        ReleaseStatus::Superseded
    );

    // An explicit target.
    let resp = server
        .admin
        .rollback("shop", "staging", &RollbackRequest { release: Some(2) })
        .await
        .expect("rollback to 2");
    assert_eq!(resp.release, Some(4));
    let r2 = release(&server, "shop", 2).await.unwrap();
    let r4 = release(&server, "shop", 4).await.unwrap();
    assert_eq!(r4.spec, r2.spec);
    assert!(r4.summary.starts_with("rollback to 2"), "{}", r4.summary);
    wait_release(&server, "shop", 4, ReleaseStatus::Live).await;

    // Unknown release, unknown stack: 404, and nothing new stored.
    for (stack, req) in [
        ("shop", RollbackRequest { release: Some(99) }),
        ("nope", RollbackRequest::default()),
        ("nope", RollbackRequest { release: Some(1) }),
    ] {
        let err = server
            .admin
            .rollback(stack, "staging", &req)
            .await
            .expect_err("unknown");
        assert!(matches!(err, ClientError::NotFound { .. }), "{err:?}");
    }
    let numbers: Vec<u64> = server
        .admin
        .releases("shop", "staging")
        .await
        .unwrap()
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(numbers, vec![4, 3, 2, 1]);
    drop(agent);
    server.stop().await;
}

/// 9. `history: 2` keeps the last 2 releases.
#[tokio::test(flavor = "multi_thread")]
async fn history_keeps_only_the_last_n_releases() {
    let (_dir, server) = fresh().await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    for v in 1..=4u32 {
        let n = deploy(&server, &stack_with("shop", v, "60s", 2)).await;
        assert_eq!(n, u64::from(v));
        wait_release(&server, "shop", n, ReleaseStatus::Live).await;
        let numbers: Vec<u64> = server
            .admin
            .releases("shop", "staging")
            .await
            .unwrap()
            .iter()
            .map(|r| r.number)
            .collect();
        let want: Vec<u64> = (1..=n).rev().take(2).collect();
        assert_eq!(numbers, want, "after release {n}");
    }
    // A release no longer kept cannot be rolled back to.
    assert!(matches!(
        server
            .admin
            .rollback("shop", "staging", &RollbackRequest { release: Some(1) })
            .await,
        Err(ClientError::NotFound { .. })
    ));
    drop(agent);
    server.stop().await;
}

/// 10. Removing a service in an environment with `max_capacity_drop: 50%` is refused (428,
///     exit code 3) unless `confirm` names the stack; a refusal stores nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_capacity_drop_needs_the_stack_name_typed_back() {
    let (_dir, server) = fresh().await;
    let two = "\
stack: shop
environments:
  production:
    regions: [local]
    max_capacity_drop: 50%
services:
  web:
    process: {command: [sleep, \"1000\"]}
    replicas: 2
  api:
    process: {command: [sleep, \"1000\"]}
    replicas: 2
";
    let one = "\
stack: shop
environments:
  production:
    regions: [local]
    max_capacity_drop: 50%
services:
  web:
    process: {command: [sleep, \"1000\"]}
    replicas: 2
";
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    let first = server
        .admin
        .deploy(&deploy_request(two, "production"))
        .await
        .unwrap();
    assert_eq!(first.release, Some(1));
    eventually("release 1 to be live", || async {
        match server.admin.releases("shop", "production").await {
            Ok(r) if r[0].status == ReleaseStatus::Live => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let mut req = deploy_request(one, "production");
    for confirm in [None, Some("web"), Some("SHOP")] {
        req.confirm = confirm.map(str::to_string);
        let err = server.admin.deploy(&req).await.expect_err("refused");
        assert!(
            matches!(&err, ClientError::Refused { message } if message.contains("--confirm shop")),
            "confirm {confirm:?}: {err:?}"
        );
        assert_eq!(err.exit_code(), 3);
    }
    // A dry run shows the plan without refusing or storing.
    req.confirm = None;
    req.dry_run = true;
    let dry = server.admin.deploy(&req).await.expect("a dry run");
    assert_eq!(dry.release, None);
    assert!(dry.plan.text.contains("api"), "{}", dry.plan.text);
    // Nothing stored: still one release, still live, api still runs.
    let history = server.admin.releases("shop", "production").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].status, ReleaseStatus::Live);
    let status = server.admin.status(Some("shop")).await.unwrap();
    assert_eq!(status.stacks[0].services.len(), 2);
    assert_eq!(agent.desired().len(), 4);

    req.dry_run = false;
    req.confirm = Some("shop".to_string());
    let resp = server.admin.deploy(&req).await.expect("confirmed");
    assert_eq!(resp.release, Some(2));
    eventually("api's instances to stop", || async {
        let d = agent.desired();
        if d.len() == 2 && d.iter().all(|i| i.service == "web") {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await;
    drop(agent);
    server.stop().await;
}

/// 11. The event stream holds release, rollout, instance and node events after a deploy.
#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_shows_the_deploy() {
    let (_dir, server) = fresh().await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    let ids = agent.wait_running(1, 3).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;

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
    let has = |subject: &str, summary: &str| {
        events
            .iter()
            .any(|e| e.subject == subject && e.summary.contains(summary))
    };
    assert!(has("node", "node n1 registered"), "{events:#?}");
    assert!(has("release", "release 1: rolling_out"), "{events:#?}");
    assert!(has("release", "release 1: live"), "{events:#?}");
    assert!(has("rollout", "rollout to 1"), "{events:#?}");
    for id in &ids {
        assert!(
            has("instance", &format!("instance {id}: healthy")),
            "{id}: {events:#?}"
        );
    }
    assert!(
        events.windows(2).all(|w| w[0].revision <= w[1].revision),
        "revisions never go back"
    );
    // Each change names its stack (and environment), carries the time the server saw it,
    // and the server's own bookkeeping (the node's credential hash) is not on the stream.
    for e in events.iter().filter(|e| e.subject != "node") {
        assert_eq!(e.stack.as_deref(), Some("shop"), "{e:?}");
        assert!(e.summary.starts_with("shop/"), "{e:?}");
    }
    let release = events
        .iter()
        .find(|e| e.subject == "release")
        .expect("a release event");
    assert_eq!(release.env.as_deref(), Some("staging"), "{release:?}");
    assert!(
        release.summary.starts_with("shop/staging release 1: "),
        "{release:?}"
    );
    assert!(
        events.iter().all(|e| e.at_ms.is_some()),
        "every change since the server started has a time: {events:#?}"
    );
    assert!(
        events
            .iter()
            .all(|e| e.subject != "other" && !e.key.starts_with("/node-tokens/")),
        "{events:#?}"
    );
    let other_stack: Vec<_> = tokio::time::timeout(
        DEADLINE,
        server
            .admin
            .events_of(false, None, Some("elsewhere"), None)
            .collect::<Vec<_>>(),
    )
    .await
    .expect("a stream without follow ends");
    assert!(other_stack.is_empty(), "{other_stack:?}");
    let shop: Vec<_> = tokio::time::timeout(
        DEADLINE,
        server
            .admin
            .events_of(false, None, Some("shop"), Some("staging"))
            .collect::<Vec<_>>(),
    )
    .await
    .expect("a stream without follow ends");
    assert!(
        shop.iter()
            .any(|e| e.as_ref().is_ok_and(|e| e.subject == "release")),
        "{shop:?}"
    );
    assert!(
        shop.iter()
            .all(|e| e.as_ref().is_ok_and(|e| e.stack.as_deref() == Some("shop"))),
        "{shop:?}"
    );
    // `since` starts after a revision.
    let last = events.last().unwrap().revision;
    let later: Vec<_> = tokio::time::timeout(
        DEADLINE,
        server.admin.events(false, Some(last)).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(later
        .iter()
        .all(|e| e.as_ref().is_ok_and(|e| e.revision >= last)));
    drop(agent);
    server.stop().await;
}
