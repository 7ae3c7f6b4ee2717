//! The router flags of issue 10 through the real binary: `--trusted-proxy CIDR` and
//! `--metrics-token-file FILE` (or `BERTH_METRICS_TOKEN`) on `berth router`, `berth agent` and
//! `berth up`. Bad values are usage errors (exit 2) before anything starts; a token guards
//! `/metrics`.

mod common;

use std::time::Duration;

use common::process::Proc;
use common::up::BerthUp;
use common::{
    assert_exit, assert_no_panic, command_of, free_port, http, poll_until, run, stderr, temp_dir,
    write_file,
};

/// Each daemon that runs a router, with the arguments it needs to get as far as parsing them.
fn daemons() -> Vec<Vec<&'static str>> {
    vec![
        vec!["router"],
        vec![
            "--server",
            "http://127.0.0.1:9",
            "agent",
            "--router",
            "127.0.0.1:0",
        ],
        vec!["up"],
    ]
}

#[test]
fn a_bad_trusted_proxy_is_a_usage_error_naming_what_is_wrong() {
    for (bad, says) in [
        ("10.0.0.0/33", "prefix length"),
        ("10.0.0/8", "not an IP address"),
        ("example.com", "not an IP address"),
    ] {
        for daemon in daemons() {
            let mut args = daemon.clone();
            args.extend(["--trusted-proxy", "127.0.0.0/8", "--trusted-proxy", bad]);
            let out = run(&args);
            assert_exit(&out, 2);
            assert_no_panic(&out);
            let err = stderr(&out);
            assert!(
                err.contains("--trusted-proxy") && err.contains(says),
                "{args:?}: {err}"
            );
        }
    }
}

#[test]
fn a_missing_or_empty_metrics_token_file_is_a_usage_error() {
    let dir = temp_dir();
    let empty = write_file(dir.path(), "empty", "\n");
    let missing = dir.path().join("nope").display().to_string();
    for daemon in daemons() {
        for (file, says) in [(&missing, "cannot read"), (&empty, "is empty")] {
            let mut args = daemon.clone();
            args.extend(["--metrics", "127.0.0.1:0", "--metrics-token-file", file]);
            let out = run(&args);
            assert_exit(&out, 2);
            assert_no_panic(&out);
            let err = stderr(&out);
            assert!(
                err.contains(says) && err.contains(file.as_str()),
                "{args:?}: {err}"
            );
        }
        // A token for a metrics listener that is not there is a mistake too.
        let token = write_file(dir.path(), "token", "t0ken\n");
        let mut args = daemon.clone();
        args.extend(["--metrics-token-file", &token]);
        let out = run(&args);
        assert_exit(&out, 2);
        assert!(
            stderr(&out).contains("--metrics"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn berth_up_guards_metrics_with_the_token_file() {
    let dir = temp_dir();
    let token = write_file(dir.path(), "metrics.token", "s3cret-metrics-token\n");
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let metrics_arg = metrics.to_string();
    let up = BerthUp::start_with(&[
        "--metrics",
        &metrics_arg,
        "--metrics-token-file",
        &token,
        "--trusted-proxy",
        "10.0.0.0/8",
    ]);
    // /v1/health answers before the router's listeners are up.
    up.wait_until(Duration::from_secs(30), "the metrics listener", || {
        http::get(metrics, "/metrics").is_ok()
    });
    let anonymous = http::get(metrics, "/metrics").expect("scrape without a token");
    assert_eq!(
        anonymous.status,
        401,
        "{}\n{}",
        anonymous.text(),
        up.log_tail()
    );
    let wrong = http::get_auth(metrics, "/metrics", "guess").expect("scrape with a wrong token");
    assert_eq!(wrong.status, 401);
    let right = http::get_auth(metrics, "/metrics", "s3cret-metrics-token").expect("scrape");
    assert_eq!(right.status, 200, "{}", right.text());
    assert!(
        right
            .text()
            .contains("berth_router_unrouted_requests_total"),
        "{}",
        right.text()
    );
}

#[test]
fn berth_router_takes_the_metrics_token_from_the_environment() {
    let up = BerthUp::start();
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listen: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut cmd = command_of(
        &up.dir().join("berth"),
        [
            "router",
            "--listen",
            &listen.to_string(),
            "--metrics",
            &metrics.to_string(),
        ],
    );
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", up.token())
        .env("BERTH_METRICS_TOKEN", "from-the-env");
    let edge = Proc::spawn(cmd, "berth-router", up.dir());
    let listening = poll_until(Duration::from_secs(30), || {
        http::get(metrics, "/metrics").is_ok() || edge.try_exit().is_some()
    });
    assert!(
        listening && edge.try_exit().is_none(),
        "berth router did not start"
    );
    let anonymous = http::get(metrics, "/metrics").expect("scrape without a token");
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let right = http::get_auth(metrics, "/metrics", "from-the-env").expect("scrape");
    assert_eq!(right.status, 200, "{}", right.text());
}

/// Issue 17 point 6: the router keeps a valid W3C trace id, starts one when it is absent, and
/// the trace id goes into the access log (`--access-log`) and the `X-Trace-Id` answer header.
#[test]
fn the_access_log_and_the_answer_carry_the_trace_id() {
    let up = BerthUp::start_with(&["--demo", "--access-log"]);
    common::cluster::wait_settled(&up, "demo", "web", 3, Some(1));
    let ask = |extra: &[(&str, &str)]| {
        let mut headers = vec![("Host", "demo.localhost")];
        headers.extend_from_slice(extra);
        http::request(up.router(), "GET", "/", &headers, &[]).expect("GET through the router")
    };
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let kept = ask(&[("traceparent", incoming)]);
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert_eq!(
        kept.header("x-trace-id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let started = ask(&[]);
    assert_eq!(started.status, 200, "{}", started.text());
    let new_id = started
        .header("x-trace-id")
        .expect("a started trace is named in X-Trace-Id")
        .to_string();
    assert_eq!(new_id.len(), 32, "{new_id}");
    assert!(new_id.bytes().all(|b| b.is_ascii_hexdigit()), "{new_id}");
    for id in ["4bf92f3577b34da6a3ce929d0e0e4736", new_id.as_str()] {
        let field = format!("trace_id={id}");
        let quoted = format!("trace_id=\"{id}\"");
        up.wait_until(
            Duration::from_secs(10),
            &format!("an access-log line with {field}"),
            || {
                common::strip_ansi(&up.proc().stderr_text())
                    .lines()
                    .any(|l| {
                        l.contains("berth_router::access")
                            && (l.contains(&field) || l.contains(&quoted))
                    })
            },
        );
    }
}

/// Issue 17 point 8: a log that goes to a file carries no ANSI colour codes, and the access
/// log names the endpoint as an address, not Rust's `Some(…)`.
#[test]
fn a_log_written_to_a_file_is_plain_text() {
    let up = BerthUp::start_with(&["--demo", "--access-log"]);
    common::cluster::wait_settled(&up, "demo", "web", 3, Some(1));
    let answer = http::request(up.router(), "GET", "/", &[("Host", "demo.localhost")], &[])
        .expect("GET through the router");
    assert_eq!(answer.status, 200, "{}", answer.text());
    up.wait_until(Duration::from_secs(10), "an access-log line", || {
        up.proc().stderr_text().contains("berth_router::access")
    });
    let log = up.proc().stderr_text();
    assert!(
        !log.contains('\u{1b}'),
        "the log file holds ANSI escapes:\n{}",
        up.log_tail()
    );
    let line = log
        .lines()
        .find(|l| l.contains("berth_router::access") && l.contains("status=200"))
        .expect("an answered request in the access log");
    assert!(!line.contains("Some("), "{line}");
    assert!(line.contains("endpoint=127.0.0.1:"), "{line}");
}
