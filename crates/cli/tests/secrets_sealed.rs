//! Issue 13, point 5, end to end on `berth up`: after `berth secret set`, a deploy that hands
//! the value to an instance, `berth secret rotate-key` and `berth secret rm`, the store file
//! (`DATA_DIR/state.redb`) holds no value in the clear, the instance still got it, and a
//! `berth server` given the wrong `--secrets-key-file` exits at start saying why.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::cluster::{cli, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, free_port, run_command, stderr, stdout, write_file};

const VALUE: &str = "sealed-at-rest-VALUE-0b9e3f";
const NEWER: &str = "sealed-at-rest-NEWER-77d2a1";

/// One instance that prints the length of `$DB_PASSWORD`, then idles.
const STACK: &str = r#"stack: vault
environments:
  local:
    regions: [local]
services:
  db-user:
    process:
      command: [sh, -c, "echo \"secret-length=$(( $(printf %s \"$DB_PASSWORD\" | wc -c) ))\"; exec sleep 1000"]
    secrets: [DB_PASSWORD]
    stop_grace: 1s
"#;

fn set_via_stdin(up: &BerthUp, value: &str) {
    let mut cmd = common::command(["secret", "set", "vault", "DB_PASSWORD"]);
    cmd.env("BERTH_SERVER", up.api_url())
        .env("BERTH_TOKEN", up.token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start berth secret set");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{value}").expect("write the value");
    }
    let out = child.wait_with_output().expect("berth secret set ends");
    assert_exit(&out, 0);
}

/// What `strings state.redb | grep VALUE` would find: whether the file's bytes hold `value`.
fn store_holds(data_dir: &Path, value: &str) -> bool {
    let bytes = std::fs::read(data_dir.join("state.redb")).expect("read state.redb");
    bytes.windows(value.len()).any(|w| w == value.as_bytes())
}

/// Whether an instance's log under the agent's directory shows the value's length.
fn instance_saw_value(data_dir: &Path) -> bool {
    let want = format!("secret-length={}", VALUE.len());
    let mut stack = vec![data_dir.join("agent")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read_to_string(&path).is_ok_and(|t| t.contains(&want)) {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_store_file_never_holds_a_value_and_a_wrong_key_stops_the_server() {
    let mut up = BerthUp::start();
    let data = up.data_dir().to_path_buf();
    let file = write_file(up.dir(), "vault.yaml", STACK);
    set_via_stdin(&up, VALUE);
    assert!(!store_holds(&data, VALUE), "after berth secret set");
    let deployed = cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]);
    assert_exit(&deployed, 0);
    wait_settled(&up, "vault", "db-user", 1, Some(1));
    up.wait_until(
        Duration::from_secs(20),
        "the instance's log shows the value's length",
        || instance_saw_value(&data),
    );
    assert!(
        !store_holds(&data, VALUE),
        "after a deploy copied it to the instance"
    );

    let rotated = cli(&up, &["secret", "rotate-key"]);
    assert_exit(&rotated, 0);
    assert!(
        stdout(&rotated).contains("secrets sealed under data key 2: 2 records re-sealed"),
        "{}",
        stdout(&rotated)
    );
    assert!(!store_holds(&data, VALUE), "after berth secret rotate-key");

    set_via_stdin(&up, NEWER);
    let removed = cli(&up, &["secret", "rm", "vault", "DB_PASSWORD"]);
    assert_exit(&removed, 0);
    assert!(
        !store_holds(&data, VALUE) && !store_holds(&data, NEWER),
        "after berth secret rm"
    );
    let key = std::fs::metadata(data.join("secrets.key")).expect("DATA_DIR/secrets.key");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );

    // The same data directory, the wrong key: `berth server` exits at once and says why.
    up.kill9();
    let wrong = data.join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "cd".repeat(32))).expect("write key");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let mut cmd = common::command(["server", "--data-dir"]);
    cmd.arg(&data)
        .arg("--api")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--secrets-key-file")
        .arg(&wrong);
    let out = run_command(cmd, Duration::from_secs(30));
    assert_exit(&out, 1);
    let why = stderr(&out);
    assert!(
        why.contains("wrong.key")
            && why.contains("is not the key this store's secrets were sealed with"),
        "{why}"
    );
    assert!(
        !stdout(&out).contains("berth server on"),
        "{}",
        stdout(&out)
    );
}
