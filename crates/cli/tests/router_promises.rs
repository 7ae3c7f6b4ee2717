//! Two router behaviours the README promises, from the command line to the router of a real
//! `berth up`:
//! - `berth maintenance on|off SERVICE [--page FILE]`: "routers answer 503 with the page,
//!   instances untouched", then traffic again;
//! - `route.limits` from a stack file: `concurrency` requests reach the instances, `queue` more
//!   wait (at most `queue_timeout`), and the excess gets "503 with Retry-After at once".
//!
//! Requests in flight and queued are observed on the router's own `/metrics` gauges
//! (`--metrics`), so no step guesses how long another takes.

mod common;

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use common::cluster::{
    cli, cli_ok, instances, service, status, through_router, wait_distinct_instances, wait_settled,
};
use common::up::BerthUp;
use common::{assert_exit, free_port, http, stderr, write_file};

const MAINT: &str = r#"stack: maint
environments:
  local:
    regions: [local]
services:
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route: { host: maint.localhost, port: http }
    stop_grace: 2s
"#;

/// `GET /` for `host` through the router: (status, Retry-After, body).
fn answer(up: &BerthUp, host: &str) -> (u16, Option<String>, String) {
    match through_router(up, host, "/") {
        Ok(r) => (
            r.status,
            r.header("Retry-After").map(str::to_string),
            r.text(),
        ),
        Err(e) => (0, None, e.to_string()),
    }
}

/// The instance ids of `maint/web` with their state, from `GET /v1/status`.
fn instance_ids(up: &BerthUp) -> Vec<(String, String)> {
    let s = status(up).expect("status answers");
    let v = service(&s, "maint", "web").expect("maint/web in status");
    let mut ids: Vec<(String, String)> = instances(v)
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().to_string(),
                i["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    ids.sort();
    ids
}

#[test]
fn maintenance_on_answers_503_with_the_page_and_off_serves_the_same_instances_again() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "maint.yaml", MAINT);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "maint", "web", 2, Some(1));
    let before = instance_ids(&up);
    let pids_before = up.workloads();
    let serving = wait_distinct_instances(&up, "maint.localhost", 2);

    // On, with the router's own page.
    let said = cli_ok(&up, &["maintenance", "on", "web"]);
    assert!(said.contains("maint/web is in maintenance"), "{said}");
    let mut last = (0, None, String::new());
    up.wait_until(
        Duration::from_secs(10),
        "the router to answer 503 for maint.localhost",
        || {
            last = answer(&up, "maint.localhost");
            last.0 == 503
        },
    );
    assert_eq!(last.1.as_deref(), Some("120"), "Retry-After: {last:?}");
    assert!(last.2.contains("Down for maintenance"), "{last:?}");
    // Every request, not only the first: the route stays in maintenance.
    for _ in 0..20 {
        let (code, _, body) = answer(&up, "maint.localhost");
        assert_eq!(code, 503, "{body}");
    }

    // A page of our own, naming the service as STACK/SERVICE.
    let page = write_file(
        up.dir(),
        "page.html",
        "<html><body>back at five, says the test</body></html>\n",
    );
    cli_ok(&up, &["maintenance", "on", "maint/web", "--page", &page]);
    up.wait_until(
        Duration::from_secs(10),
        "the router to answer with the custom page",
        || {
            last = answer(&up, "maint.localhost");
            last.0 == 503 && last.2.contains("back at five, says the test")
        },
    );

    // Instances untouched: the same ones, still healthy, the same processes.
    assert_eq!(
        instance_ids(&up),
        before,
        "maintenance touched the instances"
    );
    assert_eq!(
        up.workloads(),
        pids_before,
        "maintenance restarted a workload"
    );

    // Off: traffic again, from the very instances that served before.
    let said = cli_ok(&up, &["maintenance", "off", "web"]);
    assert!(said.contains("maint/web serves traffic again"), "{said}");
    up.wait_until(
        Duration::from_secs(10),
        "the router to answer 200 again",
        || answer(&up, "maint.localhost").0 == 200,
    );
    assert_eq!(
        wait_distinct_instances(&up, "maint.localhost", 2),
        serving,
        "other instances answer after maintenance"
    );

    // A service no deployed stack has is an error naming what to do.
    let out = cli(&up, &["maintenance", "on", "nosuch"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("no deployed stack has a service nosuch"),
        "{}",
        stderr(&out)
    );
}

/// `fast` serves at once through two slots and one queue place (waiting up to 10 s);
/// `brief` has one slot and one queue place that waits 300 ms.
const BUSY: &str = r#"stack: busy
environments:
  local:
    regions: [local]
services:
  fast:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route:
      host: fast.localhost
      port: http
      limits: { concurrency: 2, queue: 1, queue_timeout: 10s }
    stop_grace: 1s
  brief:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    resources: { cpu: 10m, memory: 16Mi }
    health: { http: /healthz, port: http, interval: 100ms, timeout: 1s, healthy: 1, unhealthy: 3 }
    route:
      host: brief.localhost
      port: http
      limits: { concurrency: 1, queue: 1, queue_timeout: 300ms }
    stop_grace: 1s
"#;

/// The value of `metric{service="…NAME…"}` on the router's `/metrics`, if it is there.
fn gauge(metrics: SocketAddr, metric: &str, name: &str) -> Option<i64> {
    let text = http::get(metrics, "/metrics").ok()?.text();
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            l.split_once("service=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .is_some_and(|(svc, _)| svc == name || svc.ends_with(&format!("/{name}")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A request on its own thread: `GET path` for `host`, answering (status, Retry-After, body).
fn in_background(
    router: SocketAddr,
    host: &'static str,
    path: &'static str,
) -> JoinHandle<(u16, Option<String>, String)> {
    std::thread::spawn(
        move || match http::request(router, "GET", path, &[("Host", host)], &[]) {
            Ok(r) => (
                r.status,
                r.header("Retry-After").map(str::to_string),
                r.text(),
            ),
            Err(e) => (0, None, e.to_string()),
        },
    )
}

#[test]
fn route_limits_from_the_stack_file_admit_queue_and_refuse_the_excess_at_once() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let up = BerthUp::start_with(&["--metrics", &metrics.to_string()]);
    let file = write_file(up.dir(), "busy.yaml", BUSY);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "busy", "fast", 1, Some(1));
    wait_settled(&up, "busy", "brief", 1, Some(1));
    let router = up.router();
    let show = || {
        http::get(metrics, "/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
    };

    // fast: two slow requests take both slots…
    let slow: Vec<_> = (0..2)
        .map(|_| in_background(router, "fast.localhost", "/sleep?ms=3000"))
        .collect();
    up.wait_until(
        Duration::from_secs(10),
        "2 requests in flight on fast",
        || gauge(metrics, "berth_router_requests_in_flight", "fast") == Some(2),
    );
    // …a third waits in the queue…
    let queued = in_background(router, "fast.localhost", "/");
    up.wait_until(Duration::from_secs(10), "1 request queued on fast", || {
        gauge(metrics, "berth_router_queue_depth", "fast") == Some(1)
    });
    // …and a fourth is refused at once, with the documented answer.
    let asked = common::clock::now();
    let r = through_router(&up, "fast.localhost", "/").expect("an answer");
    let took = asked.elapsed();
    assert_eq!(r.status, 503, "{}\n{}", r.text(), show());
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(
        r.text().contains("is overloaded (") && r.text().contains("retry later"),
        "{}",
        r.text()
    );
    assert!(
        took < Duration::from_secs(2),
        "the excess waited {took:?}: it should be refused at once"
    );
    assert_eq!(
        gauge(metrics, "berth_router_overload_rejections_total", "fast"),
        Some(1),
        "{}",
        show()
    );
    // The admitted and the queued ones are served.
    for h in slow {
        let (code, _, body) = h.join().expect("slow request thread");
        assert_eq!(code, 200, "{body}");
    }
    let (code, _, body) = queued.join().expect("queued request thread");
    assert_eq!(code, 200, "the queued request: {body}");

    // brief: one slot taken, the queued request gives up after queue_timeout (300 ms).
    let hold = in_background(router, "brief.localhost", "/sleep?ms=3000");
    up.wait_until(
        Duration::from_secs(10),
        "1 request in flight on brief",
        || gauge(metrics, "berth_router_requests_in_flight", "brief") == Some(1),
    );
    let asked = common::clock::now();
    let r = through_router(&up, "brief.localhost", "/").expect("an answer");
    let took = asked.elapsed();
    assert_eq!(r.status, 503, "{}\n{}", r.text(), show());
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(2500),
        "the queued request was answered after {took:?}, not after its 300 ms queue_timeout"
    );
    let (code, _, body) = hold.join().expect("held request thread");
    assert_eq!(code, 200, "{body}");
    // Under the limits again, everything is served.
    for host in ["fast.localhost", "brief.localhost"] {
        let (code, _, body) = answer(&up, host);
        assert_eq!(code, 200, "{host}: {body}");
    }
}
