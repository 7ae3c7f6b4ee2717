//! A graceful stop of `berth up` (README, Quick start): "After SIGTERM or SIGINT, `berth up`
//! and `berth server` stop within 10 s … Stopping `berth up` leaves the instances running; the
//! next `berth up` on the same data directory adopts them (static stability)."
//!
//! Asserted: exit 0 well within the grace, nothing of berth left (its API and router ports
//! closed, no process in its process group), every workload still the very process it was, and
//! a new `berth up` adopting them (same instances, same pids, serving again).

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::cluster::{cli_ok, instances, service, status, wait_distinct_instances, wait_settled};
use common::process::{stat, Proc};
use common::up::{BerthUp, Workload};
use common::{http, write_file};
use nix::sys::signal::Signal;

const STACK: &str = r#"stack: calm
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
    route: { host: calm.localhost, port: http }
    stop_grace: 2s
"#;

/// The grace the README promises.
const GRACE: Duration = Duration::from_secs(10);

/// Whether anything accepts a connection on `addr`.
fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Every live process whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(group, _)| group == pgid))
        .collect()
}

/// The instance ids of calm/web in `GET /v1/status`, sorted.
fn instance_ids(up: &BerthUp) -> Vec<String> {
    let s = status(up).expect("status answers");
    let mut ids: Vec<String> = service(&s, "calm", "web")
        .map(instances)
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// Asserts every workload is alive and still the very process recorded.
#[track_caller]
fn assert_alive(workloads: &[Workload]) {
    for w in workloads {
        assert_eq!(
            stat(w.pid).map(|(_, t)| t),
            w.start_time,
            "workload {w:?} did not survive the stop"
        );
    }
}

/// Sends `sig` to berth up and asserts a clean stop within the grace, with nothing of berth
/// left behind and the workloads alive.
#[track_caller]
fn stop_cleanly(up: &BerthUp, sig: Signal, workloads: &[Workload]) {
    let pid = up.pid();
    let asked = common::clock::now();
    up.proc().signal(sig);
    let exit = up.proc().wait_exit(GRACE + Duration::from_secs(5));
    let took = asked.elapsed();
    assert!(
        exit.success(),
        "berth up after {sig}: {}\n{}",
        common::describe_status(exit),
        up.log_tail()
    );
    assert!(
        took < GRACE,
        "berth up took {took:?} to stop after {sig} (promised: within {GRACE:?})"
    );
    assert!(
        !up.proc().stderr_text().contains("exiting now"),
        "a clean stop must not be the forced one:\n{}",
        up.log_tail()
    );
    assert!(!listening(up.api()), "the API still listens after {sig}");
    assert!(
        !listening(up.router()),
        "the router still listens after {sig}"
    );
    let left = group_members(pid);
    assert!(
        left.is_empty(),
        "processes of berth up's group {pid} still run after {sig}: {left:?}"
    );
    assert_alive(workloads);
}

#[test]
fn sigterm_and_sigint_stop_berth_up_with_exit_0_and_the_next_up_adopts_the_instances() {
    let mut up = BerthUp::start();
    let file = write_file(up.dir(), "calm.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "calm", "web", 2, Some(1));
    let ids = instance_ids(&up);
    let serving = wait_distinct_instances(&up, "calm.localhost", 2);
    let workloads = up.workloads();
    assert_eq!(workloads.len(), 2, "{workloads:?}");

    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        stop_cleanly(&up, sig, &workloads);

        // The next berth up on the same data directory adopts them: the same instances, the
        // same processes, answering through the new router.
        up.restart();
        wait_settled(&up, "calm", "web", 2, Some(1));
        assert_eq!(instance_ids(&up), ids, "after {sig}: other instances");
        assert_eq!(
            wait_distinct_instances(&up, "calm.localhost", 2),
            serving,
            "after {sig}: other instances answer"
        );
        assert_eq!(
            up.workloads(),
            workloads,
            "after {sig}: a workload was restarted"
        );
        assert_alive(&workloads);
    }
}

/// `berth events -f` and an edge `berth router` follow the API with requests that never end on
/// their own (an event stream, table long-polls). A stop must not wait for them past the grace:
/// the README's own quick start runs `berth events -f` beside `berth up`.
#[test]
fn followers_of_the_api_do_not_turn_a_stop_into_a_forced_exit() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "calm.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "calm", "web", 2, Some(1));
    let workloads = up.workloads();

    let follow = |args: &[&str], name: &str| {
        let mut cmd = common::command_of(&up.dir().join("berth"), args);
        cmd.env("BERTH_SERVER", up.api_url())
            .env("BERTH_TOKEN", up.token());
        Proc::spawn(cmd, name, up.dir())
    };
    let events = follow(&["events", "-f"], "berth-events");
    let edge_port = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let edge = follow(
        &["router", "--listen", &edge_port.to_string()],
        "berth-router",
    );
    events.wait_until(Duration::from_secs(10), "events -f to print", || {
        events.stdout_text().contains("release 1: live")
    });
    edge.wait_until(Duration::from_secs(10), "the edge router to serve", || {
        http::request(edge_port, "GET", "/", &[("Host", "calm.localhost")], &[])
            .is_ok_and(|r| r.status == 200)
    });

    stop_cleanly(&up, Signal::SIGTERM, &workloads);
}

/// "past that, or on a second signal, they exit 1 and say so": a request held in flight by the
/// router keeps the stop going; a second SIGTERM ends it at once.
#[test]
fn a_second_signal_while_stopping_exits_1_at_once_and_says_so() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let up = BerthUp::start_with(&["--metrics", &metrics.to_string()]);
    let file = write_file(up.dir(), "calm.yaml", STACK);
    cli_ok(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    wait_settled(&up, "calm", "web", 2, Some(1));
    let workloads = up.workloads();

    // A request the instance answers only after 30 s, in flight through berth up's router.
    let router = up.router();
    let held = std::thread::spawn(move || {
        http::request(
            router,
            "GET",
            "/sleep?ms=30000",
            &[("Host", "calm.localhost")],
            &[],
        )
    });
    up.wait_until(
        Duration::from_secs(10),
        "the request to be in flight",
        || {
            http::get(metrics, "/metrics").is_ok_and(|r| {
                r.text()
                    .lines()
                    .any(|l| l.starts_with("berth_router_requests_in_flight{") && l.ends_with(" 1"))
            })
        },
    );

    up.proc().signal(Signal::SIGTERM);
    up.wait_until(
        Duration::from_secs(5),
        "berth up to say it is stopping",
        || {
            up.proc()
                .stdout_text()
                .contains("stopping; instances keep running")
        },
    );
    let second = common::clock::now();
    up.proc().signal(Signal::SIGTERM);
    let exit = up.proc().wait_exit(Duration::from_secs(5));
    assert_eq!(exit.code(), Some(1), "{}", up.log_tail());
    assert!(
        second.elapsed() < Duration::from_secs(3),
        "the second signal took {:?} to end berth up",
        second.elapsed()
    );
    assert!(
        up.proc()
            .stderr_text()
            .contains("berth: second signal; exiting now"),
        "{}",
        up.log_tail()
    );
    assert!(!listening(up.api()) && !listening(up.router()));
    assert_alive(&workloads);
    let _ = held.join();
}

/// The same promise for `berth server`, with a `berth router` long-polling its table.
#[test]
fn berth_server_with_a_following_router_stops_with_exit_0_on_sigterm() {
    let dir = common::temp_dir();
    let bin = common::stable_binary(dir.path());
    let data = dir.path().join("data");
    let api = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut cmd = common::command_of(&bin, ["server", "--api", &api.to_string(), "--data-dir"]);
    cmd.arg(&data);
    let server = Proc::spawn(cmd, "berth-server", dir.path());
    server.wait_until(Duration::from_secs(30), "the server's health", || {
        http::is_ok(api, "/v1/health")
    });
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin.token");
    let listen = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut cmd = common::command_of(&bin, ["router", "--listen", &listen.to_string()]);
    cmd.env("BERTH_SERVER", format!("http://{api}"))
        .env("BERTH_TOKEN", token.trim());
    let router = Proc::spawn(cmd, "berth-router", dir.path());
    router.wait_until(Duration::from_secs(30), "the router to listen", || {
        listening(listen)
    });

    let asked = common::clock::now();
    server.signal(Signal::SIGTERM);
    let exit = server.wait_exit(GRACE + Duration::from_secs(5));
    let took = asked.elapsed();
    assert!(
        exit.success() && took < GRACE,
        "berth server: {} after {took:?}\n{}",
        common::describe_status(exit),
        server.log_tail()
    );
    assert!(!listening(api), "the API still listens");
}
