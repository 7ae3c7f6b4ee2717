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
