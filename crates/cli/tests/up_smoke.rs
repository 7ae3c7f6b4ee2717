//! `berth up` end to end: the smallest check that the harness can start it, see it healthy and
//! find its admin token.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::up::BerthUp;

#[test]
fn up_becomes_healthy_and_writes_a_private_admin_token() {
    let up = BerthUp::start();
    let token = up.token();
    assert!(
        token.len() >= 16,
        "admin token suspiciously short: {token:?}"
    );
    let mode = std::fs::metadata(up.token_path())
        .expect("admin.token exists")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "admin.token must be readable by its owner only, got {:o}",
        mode & 0o777
    );
}

/// Two `berth up` on one router port must collide loudly, not share the port (the router
/// listens with one `SO_REUSEPORT` socket per core, but takes a port only if nobody has it).
#[test]
fn a_taken_router_port_stops_berth_up_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let router = taken.local_addr().expect("addr");
    let dir = common::temp_dir();
    let api = format!("127.0.0.1:{}", common::free_port());
    let mut cmd = common::command(["up", "--api", &api, "--router", &router.to_string()]);
    cmd.arg("--data-dir").arg(dir.path().join("data"));
    let out = common::run_command(cmd, std::time::Duration::from_secs(30));
    common::assert_no_panic(&out);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "berth up should fail:\n{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on {router} for the router: pick another address"
        )),
        "{err}"
    );
    // The port is still the other listener's alone: a connection lands in its queue.
    let _client = std::net::TcpStream::connect(router).expect("connect");
    taken.set_nonblocking(true).expect("nonblocking");
    assert!(
        common::poll_until(std::time::Duration::from_secs(10), || taken
            .accept()
            .is_ok()),
        "the connection went elsewhere"
    );
}
