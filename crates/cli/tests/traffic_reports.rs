//! Issue 12, the routers' traffic reports end to end on the real `berth up`: requests through
//! its router are counted per arm, reported to the server every 500 ms, and summed by the
//! server's window (`GET /v1/traffic`), errors and latency included.
//!
//! Were the reports broken (the router not counting per arm, the follower not posting, the
//! server not filing or summing them), the window would stay at zero or disagree with the
//! requests the test sent: it is compared with them exactly.

mod common;

use std::time::Duration;

use common::cluster::{api_get, cli, through_router, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, free_port, http, write_file};
use serde_json::Value;

const STACK_FILE: &str = r#"stack: shop
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    health: { http: /healthz, port: http, interval: 500ms, timeout: 3s, healthy: 1, unhealthy: 30 }
    route: { host: shop.localhost, path: /, port: http }
"#;

const HOST: &str = "shop.localhost";

/// Sends `GET path` through the router; true when an instance (or the router after trying
/// one) answered, i.e. the answer counts in release 1's arm.
fn send(up: &BerthUp, path: &str) -> Option<u16> {
    let r = through_router(up, HOST, path).ok()?;
    // 503 is the router's own "no healthy instance" (or overload): no arm was tried.
    matches!(r.status, 200 | 500 | 502 | 504).then_some(r.status)
}

fn window(up: &BerthUp) -> Option<Value> {
    api_get(up, "/v1/traffic?stack=shop&service=web&release=1")
}

#[test]
fn requests_through_the_router_reach_the_server_as_per_arm_counts() {
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics.to_string();
    let up = BerthUp::start_with(&["--metrics", &metrics_arg]);
    let file = write_file(up.dir(), "shop.yaml", STACK_FILE);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    wait_settled(&up, "shop", "web", 2, Some(1));
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut count = |status: Option<u16>| {
        if let Some(status) = status {
            requests += 1;
            errors += u64::from(status >= 500);
        }
    };
    // The router applies the table a moment after the release is live.
    let routed = common::poll_until(Duration::from_secs(20), || {
        let status = send(&up, "/");
        count(status);
        status == Some(200)
    });
    assert!(
        routed,
        "the router never routed to shop/web\n{}",
        up.log_tail()
    );
    for _ in 0..120 {
        count(send(&up, "/"));
    }
    for _ in 0..30 {
        count(send(&up, "/status/500"));
    }
    assert!(errors >= 30, "{errors} errors sent");

    let mut last = None;
    let arrived = common::poll_until(Duration::from_secs(20), || {
        last = window(&up);
        last.as_ref()
            .is_some_and(|w| w["requests"].as_u64() >= Some(requests))
    });
    let last = last.unwrap_or_default();
    assert!(
        arrived,
        "the server's window never reached the {requests} requests sent: {last}\n{}",
        up.log_tail()
    );
    assert_eq!(last["requests"].as_u64(), Some(requests), "{last}");
    assert_eq!(last["errors_5xx"].as_u64(), Some(errors), "{last}");
    assert_eq!(last["matched"].as_u64(), Some(0), "{last}");
    assert_eq!(last["routers"].as_u64(), Some(1), "{last}");
    assert!(last["p99_ms"].as_u64().is_some(), "{last}");
    let buckets: u64 = last["latency_ms_buckets"]
        .as_array()
        .map(|b| b.iter().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(buckets, requests, "every request has a latency: {last}");
    // The router's own /metrics shows the same figures per arm (issue 12 point 5).
    let scrape = http::get(metrics, "/metrics").expect("scrape /metrics");
    assert_eq!(scrape.status, 200, "{}", scrape.text());
    let text = scrape.text();
    for line in [
        format!("berth_router_arm_requests_total{{service=\"shop/web\",release=\"1\",arm=\"release\"}} {requests}"),
        format!("berth_router_arm_errors_total{{service=\"shop/web\",release=\"1\",arm=\"release\"}} {errors}"),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    // Another release counts none of them.
    let other = api_get(&up, "/v1/traffic?stack=shop&service=web&release=2").unwrap_or_default();
    assert_eq!(other["requests"].as_u64(), Some(0), "{other}");
}
