//! Routers' traffic reports against a real server on loopback: who may report as which router,
//! the bounds on a report, and the window sums `GET /v1/traffic` answers.

mod harness;

use berth_api::control::{ArmCounters, TrafficReport, LATENCY_SLOTS};
use berth_client::ClientError;
use harness::*;

fn clock_ms() -> u64 {
    #[expect(
        clippy::disallowed_methods,
        reason = "a report's start time against a real server's wall clock"
    )]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn report(started_ms: u64, requests: u64, errors: u64, matched: u64) -> TrafficReport {
    let mut latency = vec![0; LATENCY_SLOTS];
    latency[5] = requests;
    TrafficReport {
        at_ms: clock_ms(),
        counters: vec![ArmCounters {
            stack: "shop".into(),
            service: "web".into(),
            release: 2,
            arm: "release".into(),
            requests,
            errors_5xx: errors,
            latency_ms_buckets: latency,
            matched,
        }],
        started_ms,
    }
}

async fn window(server: &Server) -> serde_json::Value {
    let url = format!("{}/v1/traffic?stack=shop&service=web&release=2", server.url);
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("GET /v1/traffic");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_are_authenticated_like_acks_bounded_and_summed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(dir.path()).await;
    let agent = Agent::join(&server, "n1", all_healthy(), Timeline::default()).await;
    let node = server.client(Some(&agent.token));
    let started = clock_ms();

    // A node token reports as its own node's router only; the join token not at all.
    node.traffic_report("agent-n1", &report(started, 10, 1, 2))
        .await
        .expect("own router");
    match node
        .traffic_report("agent-n2", &report(started, 1, 0, 0))
        .await
    {
        Err(ClientError::Unauthorized { message }) => {
            assert!(message.contains("agent-n1"), "{message}")
        }
        other => panic!("another node's router: {other:?}"),
    }
    let joining = server.client(Some(&server.join_token));
    assert!(joining
        .traffic_report("agent-n1", &report(started, 1, 0, 0))
        .await
        .is_err());
    // The admin token reports as an edge router; an id beyond the cap is refused.
    server
        .admin
        .traffic_report("edge-1", &report(started, 5, 0, 0))
        .await
        .expect("edge router");
    assert!(server
        .admin
        .traffic_report(&"x".repeat(200), &report(started, 1, 0, 0))
        .await
        .is_err());
    // Later reports add their differences.
    node.traffic_report("agent-n1", &report(started, 30, 4, 2))
        .await
        .expect("second");
    let w = eventually("both routers summed", || async {
        let w = window(&server).await;
        if w["requests"] == 35 {
            Ok(w)
        } else {
            Err(w.to_string())
        }
    })
    .await;
    assert_eq!(w["errors_5xx"], 4, "{w}");
    assert_eq!(w["matched"], 2, "{w}");
    assert_eq!(w["routers"], 2, "{w}");
    assert_eq!(w["p99_ms"], 20, "{w}");

    // A body over the limit gets 413 and names it.
    let mut big = report(started, 1, 0, 0);
    big.counters = (0..4_000u64)
        .map(|r| {
            let mut c = big.counters[0].clone();
            c.release = r;
            c.stack = "s".repeat(1_200);
            c
        })
        .collect();
    match server.admin.traffic_report("edge-1", &big).await {
        Err(ClientError::Server { status, message }) => {
            assert_eq!(status, 413, "{message}");
            assert!(message.contains("traffic report is limited"), "{message}");
        }
        other => panic!("an oversized report: {other:?}"),
    }
    server.stop().await;
}
