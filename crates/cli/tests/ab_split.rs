//! Issue 12 point 5, an A/B split between two services of a stack end to end on the real
//! `berth up`: `route.split { service: web-next, weight: 20%, sticky: cookie }` sends 20 % ± 3
//! of 1,000 cookie-less clients to `web-next`, a client with the router's cookie stays on its
//! side, and the per-arm requests, errors and latency show in the router's `/metrics` and in
//! `berth status` (summed from the routers' reports by the server).
//!
//! Were the split ignored, every answer would come from `web`; were it not sticky, a client
//! with a cookie would see both sides; were the reports or the status lines missing, the
//! figures would not equal the answers the test counted.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{cli, status, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, free_port, http, stdout, write_file};
use serde_json::Value;

const HOST: &str = "ab.localhost";

const STACK_FILE: &str = r#"stack: shop
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    env: { VERSION: "a" }
    ports: { http: 0 }
    replicas: 2
    health: { http: /healthz, port: http, interval: 300ms, timeout: 3s, healthy: 1, unhealthy: 30 }
    route: { host: ab.localhost, path: /, port: http, split: { service: web-next, weight: 20%, sticky: cookie } }
  web-next:
    process: { command: [berth, whoami] }
    env: { VERSION: "b" }
    ports: { http: 0 }
    replicas: 1
    health: { http: /healthz, port: http, interval: 300ms, timeout: 3s, healthy: 1, unhealthy: 30 }
"#;

/// One request through the router, with `cookie` if any: the side that answered (`a` or `b`)
/// and the router's `Set-Cookie` pair, or `None` when it did not answer 200.
fn get(up: &BerthUp, cookie: Option<&str>) -> Option<(String, Option<String>)> {
    let mut headers = vec![("Host", HOST)];
    if let Some(c) = cookie {
        headers.push(("Cookie", c));
    }
    let r = http::request(up.router(), "GET", "/", &headers, &[]).ok()?;
    if r.status != 200 {
        return None;
    }
    let set = r
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
        .and_then(|(_, v)| v.split(';').next())
        .map(|c| c.trim().to_string());
    let side = r.json()["version"].as_str().unwrap_or("?").to_string();
    Some((side, set))
}

/// The value of the metric line `name{labels} VALUE` in a Prometheus text page.
fn metric(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn an_ab_split_sends_a_sticky_fifth_to_the_other_service_with_per_arm_figures() {
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics.to_string();
    let up = BerthUp::start_with(&["--metrics", &metrics_arg]);
    let file = write_file(up.dir(), "ab.yaml", STACK_FILE);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    wait_settled(&up, "shop", "web", 2, Some(1));
    wait_settled(&up, "shop", "web-next", 1, Some(1));

    // Every answer the test gets, by side: what /metrics and `berth status` must show.
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0u64;
    // The router applies the split a moment after both services are healthy: wait until a
    // cookie-less client lands on web-next.
    up.wait_until(
        Duration::from_secs(30),
        "a client on web-next",
        || match get(&up, None) {
            Some((side, _)) => {
                *answered.entry(side.clone()).or_default() += 1;
                side == "b"
            }
            None => {
                failed += 1;
                false
            }
        },
    );

    // 1,000 cookie-less clients (a new user each): 20 % ± 3 on web-next.
    let mut sides: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..1_000 {
        match get(&up, None) {
            Some((side, _)) => *sides.entry(side).or_default() += 1,
            None => failed += 1,
        }
    }
    let b = *sides.get("b").unwrap_or(&0);
    let total: u64 = sides.values().sum();
    assert!(total >= 990, "{failed} of 1,000 requests failed: {sides:?}");
    let share = b as f64 / total as f64;
    assert!(
        (0.17..=0.23).contains(&share),
        "{:.1} % of {total} clients on web-next, want 20 ± 3: {sides:?}",
        share * 100.0
    );
    println!("1,000 cookie-less clients: {sides:?}");
    for (side, n) in &sides {
        *answered.entry(side.clone()).or_default() += n;
    }

    // Clients that keep the router's cookie stay on their side; 40 of them, so both sides
    // have some (all 40 on `a` at 20 % is a 1-in-7,500 chance).
    let mut on = BTreeMap::<String, u64>::new();
    for client in 0..40 {
        let (first, cookie) = get(&up, None).expect("a first answer");
        let cookie = cookie.unwrap_or_else(|| panic!("client {client}: no Set-Cookie"));
        *answered.entry(first.clone()).or_default() += 1;
        for _ in 0..20 {
            let (side, _) = get(&up, Some(&cookie)).expect("an answer");
            *answered.entry(side.clone()).or_default() += 1;
            assert_eq!(
                side, first,
                "client {client} with `{cookie}` moved from {first} to {side}"
            );
        }
        *on.entry(first).or_default() += 1;
    }
    assert_eq!(on.len(), 2, "sticky clients on both sides: {on:?}");
    assert_eq!(failed, 0, "failed requests through the split");

    // The router's /metrics: requests, errors and latency per arm, equal to the answers.
    let (a_n, b_n) = (answered["a"], answered["b"]);
    let scrape = http::get(metrics, "/metrics").expect("scrape /metrics");
    let text = scrape.text();
    let labels = |arm: &str| format!("{{service=\"shop/web\",release=\"1\",arm=\"{arm}\"}}");
    for (arm, n) in [("release", a_n), ("web-next", b_n)] {
        let l = labels(arm);
        assert_eq!(
            metric(&text, &format!("berth_router_arm_requests_total{l}")),
            Some(n),
            "arm {arm}:\n{text}"
        );
        assert_eq!(
            metric(&text, &format!("berth_router_arm_errors_total{l}")),
            Some(0),
            "arm {arm}:\n{text}"
        );
        assert_eq!(
            metric(
                &text,
                &format!("berth_router_arm_response_head_seconds_count{l}")
            ),
            Some(n),
            "arm {arm}'s latency histogram:\n{text}"
        );
    }

    // `berth status`: the same figures per arm, from the routers' reports (every 500 ms).
    let want_a = format!("traffic (last 60s) web: {a_n} requests, 0 5xx (0.0%), p99 ");
    let want_b = format!("traffic (last 60s) web-next: {b_n} requests, 0 5xx (0.0%), p99 ");
    let mut last = String::new();
    let shown = common::poll_until(Duration::from_secs(20), || {
        last = stdout(&cli(&up, &["status", "shop"]));
        last.contains(&want_a) && last.contains(&want_b)
    });
    assert!(
        shown,
        "`berth status` never showed `{want_a}…` and `{want_b}…`:\n{last}"
    );
    println!("{last}");
    let json = status(&up).unwrap_or_default();
    let arms: Vec<Value> = common::cluster::service(&json, "shop", "web")
        .and_then(|s| s["traffic"].as_array().cloned())
        .unwrap_or_default();
    assert_eq!(arms.len(), 2, "{json}");
    for a in &arms {
        assert!(a["p99_ms"].as_u64().is_some(), "a latency per arm: {a}");
    }
}
