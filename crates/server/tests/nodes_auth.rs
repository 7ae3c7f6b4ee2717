//! Node identity and authentication (issue 10, items 1, 7, 8, 13 and 14), against a real server
//! over a real store on loopback, with the agents and routers played by the test (`harness`):
//! the join token cannot take a node over, node names are DNS names (dotted ones authenticate),
//! router acknowledgements are tied to the router's own node, a node down before a restart gets
//! no grace after it, and failed authentication is logged and throttled.

mod harness;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_api::control::{Heartbeat, NodeState, ReleaseStatus};
use berth_client::ClientError;
use harness::*;

/// A fresh data directory and a server on it.
async fn fresh() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    (dir, server)
}

fn beat() -> Heartbeat {
    Heartbeat {
        statuses: vec![],
        last_gc: None,
    }
}

/// The state `berth nodes` shows for `name`.
async fn node_state(server: &Server, name: &str) -> Option<NodeState> {
    server
        .admin
        .nodes()
        .await
        .expect("admin lists nodes")
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| n.state)
}

/// Every endpoint address of every route.
async fn endpoint_addrs(server: &Server) -> BTreeSet<String> {
    server
        .admin
        .routes(None, None, Duration::ZERO)
        .await
        .expect("routes")
        .routes
        .iter()
        .flat_map(|r| r.endpoints.iter().map(|e| e.addr.clone()))
        .collect()
}

/// Item 1: the join token registers new names only. It cannot re-register a node that exists
/// (its token keeps working, its endpoints keep their address); a node token is good for its
/// own node only; the node re-registers with its own token.
#[tokio::test(flavor = "multi_thread")]
async fn the_join_token_cannot_take_over_an_existing_node() {
    let (_dir, server) = fresh().await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    agent.wait_running(1, 3).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    let before = endpoint_addrs(&server).await;
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(
        before.iter().all(|a| a.starts_with("127.0.0.1:")),
        "{before:?}"
    );

    // The attacker holds the join token and claims n1 at an address of its choice.
    let joining = server.client(Some(&server.join_token));
    let mut claim = register_request("n1");
    claim.address = "127.0.0.66".to_string();
    match joining.register(&claim).await {
        Err(ClientError::Conflict { message }) => {
            assert!(
                message.contains("already registered") && message.contains("berth node rm n1"),
                "{message}"
            );
        }
        other => panic!("the join token re-registered n1: {other:?}"),
    }
    // The real agent's token still works, and nothing moved.
    let real = server.client(Some(&agent.token));
    real.desired("n1", None, Duration::ZERO)
        .await
        .expect("the real agent's token still works");
    real.heartbeat("n1", &beat())
        .await
        .expect("the real agent still heartbeats");
    assert_eq!(endpoint_addrs(&server).await, before);

    // Another node's token reads neither n1's desired set (its secrets) nor beats for it.
    let n2 = joining
        .register(&register_request("n2"))
        .await
        .expect("the join token registers a new name")
        .node_token;
    let n2 = server.client(Some(&n2));
    for (what, result) in [
        (
            "n2 reads n1's desired set",
            n2.desired("n1", None, Duration::ZERO).await.map(|_| ()),
        ),
        ("n2 beats as n1", n2.heartbeat("n1", &beat()).await),
        ("n2 registers as n1", n2.register(&claim).await.map(|_| ())),
    ] {
        assert!(
            matches!(result, Err(ClientError::Unauthorized { .. })),
            "{what}: {result:?}"
        );
    }
    assert_eq!(endpoint_addrs(&server).await, before);

    // The node itself re-registers with its own token (as the agent does at every start).
    let renewed = real
        .register(&register_request("n1"))
        .await
        .expect("n1 re-registers with its own token")
        .node_token;
    assert_ne!(renewed, agent.token);
    server
        .client(Some(&renewed))
        .desired("n1", None, Duration::ZERO)
        .await
        .expect("the renewed token works");
    server.stop().await;
}

/// Item 1: node names are DNS names; anything else is a 400 naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn node_names_are_dns_names() {
    let (_dir, server) = fresh().await;
    let joining = server.client(Some(&server.join_token));
    let long = "a".repeat(3000);
    for bad in [
        ".",
        "..",
        long.as_str(),
        "a..b",
        "-a",
        "a-",
        "a_b",
        "web1.",
        "register",
    ] {
        match joining.register(&register_request(bad)).await {
            Err(ClientError::Invalid { message, .. }) => {
                assert!(message.starts_with("name: "), "{bad:?}: {message}");
                assert!(message.len() < 400, "the message quotes a bounded name");
            }
            other => panic!("{bad:?} was accepted as a node name: {other:?}"),
        }
    }
    let label = "b".repeat(63);
    for good in ["web1.example.com", "n-1", label.as_str()] {
        joining
            .register(&register_request(good))
            .await
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    let names: BTreeSet<String> = server
        .admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    server.stop().await;
}

/// Item 7: a node named like an EC2 host (`web1.example.com`) authenticates: it heartbeats,
/// gets instances, and is ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_dotted_node_name_authenticates_gets_instances_and_is_ready() {
    let (_dir, server) = fresh().await;
    let agent = Agent::join(
        &server,
        "web1.example.com",
        all_healthy(),
        Timeline::default(),
    )
    .await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    agent.wait_running(1, 3).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    assert_eq!(
        node_state(&server, "web1.example.com").await,
        Some(NodeState::Ready)
    );
    server.stop().await;
}

/// Item 7: registering does not make a node ready; calling in with its token does. A node
/// whose calls are refused stays down.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_cannot_authenticate_is_never_ready() {
    let (_dir, server) = fresh().await;
    let joining = server.client(Some(&server.join_token));
    // Wait out the grace every node gets after a server start.
    joining.register(&register_request("n0")).await.unwrap();
    eventually("the start grace to pass", || async {
        match node_state(&server, "n0").await {
            Some(NodeState::Down) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let token = joining
        .register(&register_request("n1"))
        .await
        .unwrap()
        .node_token;
    // Its calls carry a broken credential (as a dotted name's did): refused, and still down.
    let broken = server.client(Some(&format!("{token}0")));
    for _ in 0..3 {
        assert!(matches!(
            broken.heartbeat("n1", &beat()).await,
            Err(ClientError::Unauthorized { .. })
        ));
        assert_eq!(node_state(&server, "n1").await, Some(NodeState::Down));
    }
    // An admin looking at its desired set does not make it ready either.
    server
        .admin
        .desired("n1", None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(node_state(&server, "n1").await, Some(NodeState::Down));
    // Its own token does.
    server
        .client(Some(&token))
        .heartbeat("n1", &beat())
        .await
        .unwrap();
    assert_eq!(node_state(&server, "n1").await, Some(NodeState::Ready));
    server.stop().await;
}

/// Item 8: a node token acknowledges routing tables only as its own router (`agent-NAME`); an
/// admin router's id is bounded.
#[tokio::test(flavor = "multi_thread")]
async fn router_acknowledgements_are_tied_to_the_node() {
    let (_dir, server) = fresh().await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    let node = server.client(Some(&agent.token));
    let table = node
        .routes(Some("agent-n1"), None, Duration::ZERO)
        .await
        .expect("n1 acknowledges as its own router");
    for id in ["agent-n2", "r1", "edge-1", "agent-n1x"] {
        match node
            .routes(Some(id), Some(&table.version), Duration::ZERO)
            .await
        {
            Err(ClientError::Unauthorized { message }) => {
                assert!(message.contains("agent-n1"), "{id}: {message}")
            }
            other => panic!("n1 acknowledged as {id}: {other:?}"),
        }
    }
    // Without a router id a node token still reads the table.
    node.routes(None, None, Duration::ZERO).await.unwrap();
    // Admin routers take any short id, not an unbounded one.
    server
        .admin
        .routes(
            Some("edge-127.0.0.1:8080"),
            Some(&table.version),
            Duration::ZERO,
        )
        .await
        .expect("an edge router acknowledges with the admin token");
    let huge = "x".repeat(10_000);
    assert!(matches!(
        server
            .admin
            .routes(Some(&huge), Some(&table.version), Duration::ZERO)
            .await,
        Err(ClientError::Invalid { .. })
    ));
    server.stop().await;
}

/// Item 13: a node that was down before a restart counts as down at once after it, and gets no
/// instance; a node that was up gets the grace, and a returning node is up again.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_down_before_a_restart_gets_no_grace_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut dead = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    let mut alive = Agent::join(&server, "n2", all_healthy(), Timeline::default()).await;
    dead.disconnect();
    eventually("n1 to be down", || async {
        match node_state(&server, "n1").await {
            Some(NodeState::Down) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The server writes down that n1 is down (one write, not one per heartbeat; again at the
    // latest when it stops).
    server.stop().await;

    let server = Server::start(dir.path()).await;
    // At once: n1 is down, n2 (up until the restart) gets the grace.
    assert_eq!(node_state(&server, "n1").await, Some(NodeState::Down));
    assert_eq!(node_state(&server, "n2").await, Some(NodeState::Ready));
    alive.connect(&server);
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    alive.wait_running(1, 3).await;
    let on_dead = server
        .admin
        .desired("n1", None, Duration::ZERO)
        .await
        .unwrap()
        .instances;
    assert!(
        on_dead.is_empty(),
        "instances placed on a dead node: {on_dead:?}"
    );
    // n1 returns: up again.
    dead.connect(&server);
    eventually("n1 to be up again", || async {
        match node_state(&server, "n1").await {
            Some(NodeState::Ready) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    server.stop().await;
}

/// Item 13, without a restart: a node going down is written down in the store within about a
/// second (so a crash of the server loses at most that), and the mark goes when it returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_going_down_is_marked_in_the_store_and_unmarked_when_it_returns() {
    use futures::StreamExt;
    let (_dir, server) = fresh().await;
    let mut agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    agent.disconnect();
    let marks = |kind: &'static str| {
        let admin = server.admin.clone();
        async move {
            let events: Vec<_> = admin.events(false, None).collect().await;
            let n = events
                .iter()
                .filter_map(|e| e.as_ref().ok())
                .filter(|e| e.key == "/node-seen/n1" && e.kind == kind)
                .count();
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} {kind} events of /node-seen/n1"))
            }
        }
    };
    eventually("n1's down mark", || marks("put")).await;
    agent.connect(&server);
    eventually("n1's mark removed", || marks("delete")).await;
    assert_eq!(node_state(&server, "n1").await, Some(NodeState::Ready));
    server.stop().await;
}

/// Item 1: `DELETE /v1/nodes/NAME` (`berth node rm`) refuses a node that is up unless forced,
/// then removes the node, its token and its instance records; the instances are replaced on
/// another node and the name is free for the join token again.
#[tokio::test(flavor = "multi_thread")]
async fn removing_a_node_revokes_it_and_replaces_its_instances() {
    let (_dir, server) = fresh().await;
    let gone = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    deploy(&server, &web_stack("shop", 1, "60s")).await;
    gone.wait_running(1, 3).await;
    wait_release(&server, "shop", 1, ReleaseStatus::Live).await;
    let other = Agent::join(&server, "n2", all_healthy(), Timeline::default()).await;
    match server.admin.remove_node("n1", false).await {
        Err(ClientError::Conflict { message }) => {
            assert!(message.contains("--force"), "{message}")
        }
        other => panic!("an up node was removed without --force: {other:?}"),
    }
    assert!(matches!(
        server.admin.remove_node("nope", false).await,
        Err(ClientError::NotFound { .. })
    ));
    let removed = server.admin.remove_node("n1", true).await.expect("forced");
    assert_eq!(removed["instances"], 3, "{removed}");
    drop(gone);
    assert!(matches!(
        server
            .client(Some(&other.token))
            .desired("n1", None, Duration::ZERO)
            .await,
        Err(ClientError::Unauthorized { .. })
    ));
    let names: Vec<String> = server
        .admin
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["n2".to_string()]);
    other.wait_running(1, 3).await;
    // The name is free again.
    server
        .client(Some(&server.join_token))
        .register(&register_request("n1"))
        .await
        .expect("the join token registers a removed name");
    server.stop().await;
}

/// The log lines of this test binary, captured once for every test in it.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Item 14: every failed authentication is logged with its source, never with the token; a
/// source failing more than 100 times in 10 s gets 429 with `Retry-After` instead of 401, and
/// its further failures are not logged one by one; a valid token from it still works.
#[tokio::test(flavor = "multi_thread")]
async fn failed_authentication_is_logged_and_throttled() {
    let logs = captured_logs();
    let (_dir, server) = fresh().await;
    let http = reqwest::Client::new();
    // A path only this test uses, to find its log lines among the other tests'.
    let url = format!("{}/v1/stacks/throttled/staging/releases", server.url);
    let guess = "guess-0123456789abcdef0123456789";
    let mut statuses = Vec::new();
    for _ in 0..101 {
        let resp = http.get(&url).bearer_auth(guess).send().await.unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..100].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(statuses[100], 429, "the 101st failure in 10 s is throttled");
    let resp = http.get(&url).bearer_auth(guess).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=300).contains(&retry), "Retry-After {retry}");
    // No token at all is a failure too, and throttled the same way.
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    // The admin token from the same address is not locked out.
    let resp = http
        .get(format!("{}/v1/nodes", server.url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for _ in 0..200 {
        let resp = http.get(&url).bearer_auth(guess).send().await.unwrap();
        assert_eq!(resp.status(), 429);
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/v1/stacks/throttled/staging/releases"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l.contains("authentication failed") && l.contains("127.0.0.1")),
        "{lines:#?}"
    );
    assert!(
        (100..=102).contains(&lines.len()),
        "one line per failure up to the limit, one for the throttle, then none: {} lines",
        lines.len()
    );
    assert!(
        lines.iter().any(|l| l.contains("429")),
        "the throttle is logged"
    );
    assert!(!text.contains(guess), "a token was logged");
    server.stop().await;
}
