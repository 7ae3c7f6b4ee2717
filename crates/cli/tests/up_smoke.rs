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
