//! Canary rollouts end to end (issue 12): the real binary, a real router, `berth whoami`.
//!
//! - A canary's first step sends its share of the traffic (within ±3 points of 10 % over
//!   1,000 requests) to the new release, a canary with no traffic pauses with `insufficient
//!   data` (neither promoted nor failed), `promote --full` takes it to 100 % with no failed
//!   request, `abort` takes traffic back to stable and vetoes the content (exit 3 without
//!   `--force`).
//! - The analysis on the routers' own counters: a good canary promoted by itself through 50 %
//!   with no failed request, a bad one (`FAIL_PERCENT=30`) aborted during step 1 and 100 %
//!   stable within a second of the verdict; sticky clients keep their arm as the weight grows,
//!   and `match` requests always reach the new release.

mod common;

use std::time::Duration;

use common::cluster::{cli, cli_ok, release_status, through_router, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, stdout};
use serde_json::Value;

const HOST: &str = "canary.localhost";

/// A stack of `replicas` whoami instances with a canary rollout; `extra` env lines go under
/// `env:` (for `FAIL_PERCENT`).
fn stack(version: &str, fail_percent: u32, bake: &str, min_requests: u32) -> String {
    format!(
        r#"stack: shop
environments:
  local:
    regions: [local]
services:
  web:
    process: {{ command: [berth, whoami] }}
    env: {{ VERSION: "{version}", FAIL_PERCENT: "{fail_percent}" }}
    ports: {{ http: 0 }}
    replicas: 2
    health: {{ http: /healthz, port: http, interval: 200ms, timeout: 1s, healthy: 1, unhealthy: 3 }}
    route: {{ host: {HOST}, path: /, port: http }}
    rollout: {{ strategy: canary, steps: [10%, 50%], bake: {bake}, min_requests: {min_requests}, progress_deadline: 1m }}
    stop_grace: 1s
"#
    )
}

fn deploy(up: &BerthUp, yaml: &str, extra: &[&str]) -> std::process::Output {
    let path = up
        .dir()
        .join(format!("stack-{}.yaml", common::clock::unix_ms()));
    std::fs::write(&path, yaml).expect("write the stack file");
    let file = path.to_string_lossy().to_string();
    let mut args = vec!["deploy", "-f", file.as_str(), "--env", "local"];
    args.extend_from_slice(extra);
    cli(up, &args)
}

fn rollout(up: &BerthUp) -> Value {
    let text = cli_ok(
        up,
        &[
            "rollout", "status", "shop", "--env", "local", "--output", "json",
        ],
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn web(status: &Value) -> &Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == "web"))
        .unwrap_or(&Value::Null)
}

/// `n` requests through the router: (answers by version, failures).
fn load(up: &BerthUp, n: usize) -> (std::collections::BTreeMap<String, usize>, usize) {
    let mut by_version = std::collections::BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match through_router(up, HOST, "/") {
            Ok(r) if r.status == 200 => {
                let v: Value = r.json();
                *by_version
                    .entry(v["version"].as_str().unwrap_or("?").to_string())
                    .or_insert(0) += 1;
            }
            _ => failed += 1,
        }
    }
    (by_version, failed)
}

/// Release 1 live (a first deploy is not a canary), then release 2 as a canary whose first
/// step has its instance serving.
fn at_step_one(up: &BerthUp, v2: &str) {
    assert_exit(&deploy(up, &stack("1", 0, "1s", 200), &["--wait"]), 0);
    wait_settled(up, "shop", "web", 2, Some(1));
    assert_exit(&deploy(up, v2, &[]), 0);
    up.wait_until(Duration::from_secs(60), "the canary's first step", || {
        let s = rollout(up);
        web(&s)["weights"]["2"] == 1000
    });
}

#[test]
fn a_canary_takes_its_share_pauses_without_data_and_is_promoted_or_aborted_by_hand() {
    let up = BerthUp::start();
    at_step_one(&up, &stack("2", 0, "1s", 200));

    // Step 1: 10 % ± 3 of 1,000 answers from the new release, none failed.
    let (by_version, failed) = load(&up, 1_000);
    assert_eq!(failed, 0, "{by_version:?}");
    let new = by_version.get("2").copied().unwrap_or(0);
    assert!(
        (70..=130).contains(&new),
        "the new release answered {new} of 1000 at a 10% step: {by_version:?}"
    );

    // Too little traffic: the 1,000 requests gave the canary ~100, under its min_requests of
    // 200, and none come after. Extended, then paused, never promoted nor failed.
    up.wait_until(Duration::from_secs(30), "insufficient data", || {
        web(&rollout(&up))["paused"]
            .as_str()
            .is_some_and(|p| p.contains("insufficient data"))
    });
    std::thread::sleep(Duration::from_secs(2)); // a pause is a pause: nothing moves
    let s = rollout(&up);
    assert_eq!(web(&s)["step"], 1, "{s}");
    assert_eq!(
        release_status(&up, "shop", "local", 2).as_deref(),
        Some("rolling_out")
    );
    let explain = cli_ok(&up, &["rollout", "explain", "shop", "--env", "local"]);
    assert!(explain.contains("insufficient data"), "{explain}");
    assert!(explain.contains("ln Λ"), "{explain}");
    // `berth status` shows each arm's figures (issue 12 point 5): the step's answers.
    let want = [
        format!(
            "traffic (last 60s) release 1: {} requests, 0 5xx (0.0%), p99 ",
            1_000 - new
        ),
        format!("traffic (last 60s) release 2: {new} requests, 0 5xx (0.0%), p99 "),
    ];
    let mut last = String::new();
    let shown = common::poll_until(Duration::from_secs(20), || {
        last = cli_ok(&up, &["status", "shop"]);
        want.iter().all(|w| last.contains(w.as_str()))
    });
    assert!(shown, "`berth status` never showed {want:?}:\n{last}");

    // promote --full: 100 % to the new release with no failed request.
    let out = cli(
        &up,
        &["rollout", "promote", "shop", "--env", "local", "--full"],
    );
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("web: promoted"), "{}", stdout(&out));
    up.wait_until(Duration::from_secs(60), "release 2 live", || {
        release_status(&up, "shop", "local", 2).as_deref() == Some("live")
    });
    let (by_version, failed) = load(&up, 200);
    assert_eq!(
        (failed, by_version.get("2").copied()),
        (0, Some(200)),
        "{by_version:?}"
    );
}

#[test]
fn an_aborted_canary_goes_back_to_stable_and_its_content_is_vetoed() {
    let up = BerthUp::start();
    let v2 = stack("2", 0, "1m", 200);
    at_step_one(&up, &v2);
    let out = cli(&up, &["rollout", "abort", "shop", "--env", "local"]);
    assert_exit(&out, 0);
    up.wait_until(Duration::from_secs(10), "100% stable", || {
        let (by_version, failed) = load(&up, 50);
        failed == 0 && by_version.get("1") == Some(&50)
    });
    up.wait_until(Duration::from_secs(30), "release 2 failed", || {
        release_status(&up, "shop", "local", 2).as_deref() == Some("failed")
    });
    let history = cli_ok(&up, &["history", "shop", "--env", "local"]);
    assert!(history.contains("aborted by admin"), "{history}");

    // The same content again is refused (exit 3) unless --force.
    let out = deploy(&up, &v2, &[]);
    assert_exit(&out, 3);
    let out = deploy(&up, &v2, &["--force"]);
    assert_exit(&out, 0);
}

#[test]
fn a_good_canary_is_promoted_by_its_analysis_with_no_failed_request() {
    let up = BerthUp::start();
    at_step_one(&up, &stack("2", 0, "2s", 100));
    let mut failed = 0;
    let mut saw_half = false;
    let deadline = common::clock::now() + Duration::from_secs(120);
    while release_status(&up, "shop", "local", 2).as_deref() != Some("live") {
        assert!(
            common::clock::now() < deadline,
            "not promoted: {}",
            rollout(&up)
        );
        let (_, f) = load(&up, 100);
        failed += f;
        saw_half |= web(&rollout(&up))["weights"]["2"] == 5000;
    }
    assert!(saw_half, "the 50% step was skipped");
    assert_eq!(failed, 0);
}

#[test]
fn a_bad_canary_is_aborted_during_step_one_and_never_reaches_half() {
    let up = BerthUp::start();
    at_step_one(&up, &stack("2", 30, "30s", 200));
    let deadline = common::clock::now() + Duration::from_secs(120);
    let (mut answered, mut failed) = (0usize, 0usize);
    while release_status(&up, "shop", "local", 2).as_deref() != Some("failed") {
        assert!(
            common::clock::now() < deadline,
            "not aborted: {}",
            rollout(&up)
        );
        assert_ne!(web(&rollout(&up))["weights"]["2"], 5000, "reached 50%");
        let (by_version, f) = load(&up, 100);
        answered += by_version.values().sum::<usize>();
        failed += f;
    }
    // 30 % of a 10 % share is 3 % of the requests; allow for sampling.
    assert!(
        failed * 100 <= (answered + failed) * 6,
        "{failed} of {}",
        answered + failed
    );
    let verdict = common::clock::now();
    up.wait_until(
        Duration::from_secs(1),
        "100% stable within 1 s of the verdict",
        || {
            let (by_version, _) = load(&up, 20);
            by_version.get("1") == Some(&20)
        },
    );
    println!("verdict to 100% stable: {:?}", verdict.elapsed());
    assert_exit(&deploy(&up, &stack("2", 30, "30s", 200), &[]), 3);
}

/// A client with a cookie jar: keeps every `Set-Cookie` it gets and sends them back.
struct Client {
    cookies: std::collections::BTreeMap<String, String>,
}

impl Client {
    fn get(&mut self, up: &BerthUp, extra: &[(&str, &str)]) -> Option<String> {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let cookie = cookie.join("; ");
        let mut headers = vec![("Host", HOST)];
        if !cookie.is_empty() {
            headers.push(("Cookie", cookie.as_str()));
        }
        headers.extend_from_slice(extra);
        let r = common::http::request(up.router(), "GET", "/", &headers, &[]).ok()?;
        for (name, value) in &r.headers {
            if name.eq_ignore_ascii_case("set-cookie") {
                if let Some((k, v)) = value.split(';').next().and_then(|c| c.split_once('=')) {
                    self.cookies
                        .insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        (r.status == 200).then(|| r.json()["version"].as_str().unwrap_or("?").to_string())
    }
}

#[test]
fn sticky_clients_keep_their_arm_as_the_weight_grows_and_match_reaches_the_new_release() {
    let up = BerthUp::start();
    let v2 = stack("2", 0, "1h", 200).replace(
        "progress_deadline: 1m }",
        "progress_deadline: 1m, match: { header: X-Canary, value: always } }",
    );
    at_step_one(&up, &v2);
    let mut clients: Vec<Client> = (0..20)
        .map(|_| Client {
            cookies: Default::default(),
        })
        .collect();
    let mut arm_at_10 = Vec::new();
    for c in clients.iter_mut() {
        let seen: std::collections::BTreeSet<String> =
            (0..50).filter_map(|_| c.get(&up, &[])).collect();
        assert_eq!(seen.len(), 1, "a client saw {seen:?} at 10%");
        arm_at_10.push(seen.into_iter().next().unwrap_or_default());
    }
    // Matched requests reach the new release at any step.
    let mut tester = Client {
        cookies: Default::default(),
    };
    for _ in 0..20 {
        assert_eq!(
            tester.get(&up, &[("X-Canary", "always")]).as_deref(),
            Some("2")
        );
    }
    assert_exit(
        &cli(&up, &["rollout", "promote", "shop", "--env", "local"]),
        0,
    );
    up.wait_until(Duration::from_secs(30), "the 50% step", || {
        web(&rollout(&up))["weights"]["2"] == 5000
    });
    for (c, before) in clients.iter_mut().zip(&arm_at_10) {
        let seen: std::collections::BTreeSet<String> =
            (0..50).filter_map(|_| c.get(&up, &[])).collect();
        assert_eq!(seen.len(), 1, "a client saw {seen:?} at 50%");
        if before == "2" {
            assert!(
                seen.contains("2"),
                "a client on the new release at 10% left it at 50%"
            );
        }
    }
}
