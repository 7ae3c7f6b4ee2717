//! `/metrics`: the router's counters in the Prometheus text exposition format (0.0.4).
//!
//! Written by hand rather than with `prometheus-client`: every value already lives in an atomic
//! that the request path reaches through its route, so a registry would add a second copy (or
//! a label-set map lookup per request, which is what `Family` does) to save a hundred lines of
//! formatting done only at scrape time.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `berth_router_requests_total` | counter | `service`, `release` (`none` for the router's own answers), `class` (`1xx`…`5xx`) |
//! | `berth_router_unrouted_requests_total` | counter | `class` |
//! | `berth_router_request_duration_seconds` | histogram | `service` |
//! | `berth_router_requests_in_flight` | gauge | `service` |
//! | `berth_router_retries_total` | counter | `service` |
//! | `berth_router_ejections_total` | counter | `service` |
//! | `berth_router_overload_rejections_total` | counter | `service` |
//! | `berth_router_upstream_timeouts_total` | counter | `service` |
//! | `berth_router_queue_depth` | gauge | `service` |
//! | `berth_router_upstream_outstanding` | gauge | `addr` |
//! | `berth_router_arm_requests_total` | counter | `service` (`STACK/SERVICE`), `release`, `arm` (`release`, or the split service) |
//! | `berth_router_arm_errors_total` | counter | the same: the arm's 5xx answers |
//! | `berth_router_arm_matched_total` | counter | the same: requests sent by the match header (not in the others) |
//! | `berth_router_arm_response_head_seconds` | histogram | the same: time to the response head |

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use berth_api::control::LATENCY_BOUNDS_MS;

use crate::compiled::ArmKey;
use crate::service::{ServiceState, LATENCY_BUCKETS};
use crate::stats::{ArmStats, Counters, StatusClasses};
use crate::upstream::Upstream;

/// A per-service metric: name, type, help, and how to read it.
type PerService = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServiceState) -> i64,
);

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn classes(s: StatusClasses) -> [u64; 5] {
    [
        s.informational,
        s.success,
        s.redirection,
        s.client_error,
        s.server_error,
    ]
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(crate) fn render(
    services: &HashMap<String, Arc<ServiceState>>,
    arms: &HashMap<ArmKey, Arc<ArmStats>>,
    upstreams: &[Arc<Upstream>],
    unrouted: &Counters,
) -> String {
    let mut names: Vec<&String> = services.keys().collect();
    names.sort();
    let mut out = String::with_capacity(4096);

    header(
        &mut out,
        "berth_router_requests_total",
        "counter",
        "Responses by service, release and status class; release=\"none\" for the router's own answers (maintenance, overload, no instance).",
    );
    for name in &names {
        let service = &services[*name];
        let name = escape(name);
        let mut from_releases = [0u64; 5];
        for (release, counters) in service.releases() {
            let counts = classes(counters.snapshot());
            for (i, count) in counts.iter().enumerate() {
                from_releases[i] += count;
                if *count > 0 {
                    let _ = writeln!(
                        out,
                        "berth_router_requests_total{{service=\"{name}\",release=\"{release}\",class=\"{}\"}} {count}",
                        CLASSES[i]
                    );
                }
            }
        }
        let all = classes(service.counters.snapshot());
        for (i, count) in all.iter().enumerate() {
            let own = count.saturating_sub(from_releases[i]);
            if own > 0 {
                let _ = writeln!(
                    out,
                    "berth_router_requests_total{{service=\"{name}\",release=\"none\",class=\"{}\"}} {own}",
                    CLASSES[i]
                );
            }
        }
    }

    header(
        &mut out,
        "berth_router_unrouted_requests_total",
        "counter",
        "Responses to requests that matched no route.",
    );
    for (i, count) in classes(unrouted.snapshot()).iter().enumerate() {
        let _ = writeln!(
            out,
            "berth_router_unrouted_requests_total{{class=\"{}\"}} {count}",
            CLASSES[i]
        );
    }

    header(
        &mut out,
        "berth_router_request_duration_seconds",
        "histogram",
        "Time from the request head to the end of the response body.",
    );
    for name in &names {
        let (buckets, sum) = services[*name].latency.snapshot();
        let name = escape(name);
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&buckets) {
            let _ = writeln!(
                out,
                "berth_router_request_duration_seconds_bucket{{service=\"{name}\",le=\"{bound}\"}} {count}"
            );
        }
        let count = buckets[LATENCY_BUCKETS.len()];
        let _ = writeln!(
            out,
            "berth_router_request_duration_seconds_bucket{{service=\"{name}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "berth_router_request_duration_seconds_sum{{service=\"{name}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "berth_router_request_duration_seconds_count{{service=\"{name}\"}} {count}"
        );
    }

    let per_service: [PerService; 6] = [
        (
            "berth_router_requests_in_flight",
            "gauge",
            "Requests admitted and not finished (response body included).",
            |s| s.in_flight.get(),
        ),
        (
            "berth_router_retries_total",
            "counter",
            "Requests sent again to another instance after a failure.",
            |s| s.retries.load(Ordering::Relaxed) as i64,
        ),
        (
            "berth_router_ejections_total",
            "counter",
            "Times an instance of the service was ejected after a connect failure or reset.",
            |s| s.ejections.load(Ordering::Relaxed) as i64,
        ),
        (
            "berth_router_overload_rejections_total",
            "counter",
            "Requests answered 503 by the concurrency limit (queue full or queue timeout).",
            |s| s.rejected.load(Ordering::Relaxed) as i64,
        ),
        (
            "berth_router_upstream_timeouts_total",
            "counter",
            "Requests answered 504: no response head from the instance within the route's timeout.",
            |s| s.timeouts.load(Ordering::Relaxed) as i64,
        ),
        (
            "berth_router_queue_depth",
            "gauge",
            "Requests waiting for a concurrency slot.",
            |s| {
                s.current_limiter()
                    .map_or(0, |l| i64::from(l.queued.load(Ordering::Relaxed)))
            },
        ),
    ];
    for (metric, kind, help, value) in per_service {
        header(&mut out, metric, kind, help);
        for name in &names {
            let v = value(&services[*name]);
            let _ = writeln!(out, "{metric}{{service=\"{}\"}} {v}", escape(name));
        }
    }

    header(
        &mut out,
        "berth_router_upstream_outstanding",
        "gauge",
        "Requests outstanding per instance address (what least-loaded balancing compares).",
    );
    let mut upstreams: Vec<&Arc<Upstream>> = upstreams.iter().collect();
    upstreams.sort_by_key(|u| u.addr);
    for upstream in upstreams {
        let _ = writeln!(
            out,
            "berth_router_upstream_outstanding{{addr=\"{}\"}} {}",
            upstream.addr,
            upstream.outstanding.load(Ordering::Relaxed)
        );
    }
    render_arms(&mut out, arms);
    out
}

/// A per-arm counter: name, help, and how to read it.
type PerArm = (
    &'static str,
    &'static str,
    fn(&crate::stats::ArmSnapshot) -> u64,
);

/// The per-arm counters (issue 12: requests, errors and latency per arm of a canary or an A/B
/// split).
fn render_arms(out: &mut String, arms: &HashMap<ArmKey, Arc<ArmStats>>) {
    let mut arms: Vec<(&ArmKey, _)> = arms.iter().map(|(k, a)| (k, a.snapshot())).collect();
    arms.sort_by(|a, b| a.0.cmp(b.0));
    let labels = |(service, release, arm): &ArmKey| {
        format!(
            "service=\"{}\",release=\"{release}\",arm=\"{}\"",
            escape(service),
            escape(arm)
        )
    };
    let counters: [PerArm; 3] = [
        (
            "berth_router_arm_requests_total",
            "Answers per arm (a route's release, or its A/B split service), matched requests excluded.",
            |s| s.requests,
        ),
        (
            "berth_router_arm_errors_total",
            "5xx answers per arm, matched requests excluded.",
            |s| s.errors_5xx,
        ),
        (
            "berth_router_arm_matched_total",
            "Requests sent to an arm by the route's match header (counted in no other arm metric).",
            |s| s.matched,
        ),
    ];
    for (metric, help, value) in counters {
        header(out, metric, "counter", help);
        for (key, snapshot) in &arms {
            let _ = writeln!(out, "{metric}{{{}}} {}", labels(key), value(snapshot));
        }
    }
    let metric = "berth_router_arm_response_head_seconds";
    header(
        out,
        metric,
        "histogram",
        "Time from the request head to the response head per arm, matched requests excluded.",
    );
    for (key, snapshot) in &arms {
        let labels = labels(key);
        let mut running = 0u64;
        for (bound, count) in LATENCY_BOUNDS_MS.iter().zip(&snapshot.latency_ms_buckets) {
            running += count;
            let _ = writeln!(
                out,
                "{metric}_bucket{{{labels},le=\"{}\"}} {running}",
                *bound as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "{metric}_bucket{{{labels},le=\"+Inf\"}} {}",
            snapshot.requests
        );
        let _ = writeln!(out, "{metric}_count{{{labels}}} {}", snapshot.requests);
    }
}
