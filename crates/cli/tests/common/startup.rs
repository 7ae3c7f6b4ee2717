//! Start → healthy → routable, measured the same way for processes and containers by the
//! lifecycle and docker_startup benchmarks.
//!
//! "Start" is when the server created the instance (`created_ms` in `/v1/status`), "healthy"
//! when its agent first saw it healthy (`since_ms`), "routable" when it first appears in the
//! routing table the server serves to routers (`/v1/routes`, polled every 5 ms), which a router
//! long-polling the table applies at once.

use std::collections::BTreeMap;
use std::time::Duration;

use super::http;
use super::up::BerthUp;

/// Milliseconds from start to healthy and to routable, one entry per instance, sorted.
pub struct Startup {
    pub to_healthy: Vec<u64>,
    pub to_routable: Vec<u64>,
}

impl Startup {
    /// `healthy: p50 … ms, p99 … ms; → routable: p50 … ms, p99 … ms`
    pub fn summary(&self) -> String {
        format!(
            "healthy: p50 {} ms, p99 {} ms; → routable: p50 {} ms, p99 {} ms",
            percentile(&self.to_healthy, 50.0),
            percentile(&self.to_healthy, 99.0),
            percentile(&self.to_routable, 50.0),
            percentile(&self.to_routable, 99.0)
        )
    }
}

/// The `p`th percentile (nearest rank) of sorted figures; 0 when there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `GET path` on the API with the admin token; panics with the answer otherwise.
pub fn api_json(up: &BerthUp, path: &str) -> serde_json::Value {
    match http::get_auth(up.api(), path, &up.token()) {
        Ok(r) if r.status == 200 => r.json(),
        Ok(r) => panic!("GET {path}: {} {}", r.status, r.text()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn now_ms() -> u64 {
    super::clock::unix_ms()
}

/// Waits until `n` instances of `stack` are routable (within `timeout`), then reads each one's
/// start and healthy times from the status.
pub fn measure(up: &BerthUp, stack: &str, n: usize, timeout: Duration) -> Startup {
    let deadline = super::clock::now() + timeout;
    let mut routable: BTreeMap<String, u64> = BTreeMap::new();
    while routable.len() < n {
        let table = api_json(up, "/v1/routes");
        let seen = now_ms();
        for route in table["routes"].as_array().into_iter().flatten() {
            for e in route["endpoints"].as_array().into_iter().flatten() {
                if let Some(id) = e["instance"].as_str() {
                    routable.entry(id.to_string()).or_insert(seen);
                }
            }
        }
        assert!(
            super::clock::now() < deadline,
            "only {} of {n} instances routable after {timeout:?}\n{}",
            routable.len(),
            up.log_tail()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = api_json(up, &format!("/v1/status?stack={stack}"));
    let mut to_healthy = Vec::new();
    let mut to_routable = Vec::new();
    for svc in status["stacks"][0]["services"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for i in svc["instances"].as_array().into_iter().flatten() {
            let id = i["id"].as_str().unwrap_or_default();
            let created = i["created_ms"].as_u64().unwrap_or(0);
            let healthy = i["since_ms"].as_u64().unwrap_or(0);
            if let (Some(r), "healthy") = (routable.get(id), i["state"].as_str().unwrap_or("")) {
                to_healthy.push(healthy.saturating_sub(created));
                to_routable.push(r.saturating_sub(created));
            }
        }
    }
    assert_eq!(
        to_routable.len(),
        n,
        "every instance should be healthy and routable:\n{status:#}"
    );
    to_healthy.sort_unstable();
    to_routable.sort_unstable();
    Startup {
        to_healthy,
        to_routable,
    }
}
