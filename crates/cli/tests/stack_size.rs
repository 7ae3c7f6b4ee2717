//! Issue 10, item 11: the stack-file limit is one number (8 MiB). A file under it that
//! validates also deploys (axum's 2 MiB default body limit refused 2–8 MiB files), and a file
//! over it is refused naming the limit by `berth validate`, by the API (413) and by `berth
//! deploy`.

mod common;

use common::up::BerthUp;
use common::{assert_exit, run, stderr, stdout, write_file, DEMO};

const MIB: usize = 1024 * 1024;

/// The demo stack padded with comment lines to at least `size` bytes: valid YAML, the same
/// stack. `line` is one padding line (with its newline).
fn padded_demo(size: usize, line: &str) -> String {
    let mut text = std::fs::read_to_string(DEMO).expect("the demo stack");
    while text.len() < size {
        text.push_str(line);
    }
    text
}

#[test]
fn a_3_mib_stack_deploys_and_9_mib_is_refused_naming_the_limit() {
    let up = BerthUp::start();
    let dir = tempfile::tempdir().expect("temp dir");

    // 3 MiB: validates, plans and deploys.
    let three = write_file(
        dir.path(),
        "three.yaml",
        padded_demo(3 * MIB, &format!("# {}\n", "x".repeat(76))),
    );
    assert_exit(&run(["validate", &three]), 0);
    let out = up.cli(["plan", "-f", &three, "--env", "local"]);
    assert_exit(&out, 0);
    let out = up.cli(["deploy", "-f", &three, "--env", "local"]);
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("release 1"),
        "the 3 MiB stack should have made release 1:\n{}",
        stdout(&out)
    );

    // Just under 8 MiB, made of what JSON escapes (quotes, backslashes, newlines, tabs): the
    // request body is nearly twice the file, and still fits.
    let escapes = write_file(
        dir.path(),
        "escapes.yaml",
        padded_demo(8 * MIB - 64 * 1024, "#\"\\\t\"\\\t\n\n\n\n"),
    );
    assert_exit(&run(["validate", &escapes]), 0);
    assert_exit(&up.cli(["plan", "-f", &escapes, "--env", "local"]), 0);

    // 9 MiB: refused everywhere, naming the limit.
    let nine = write_file(
        dir.path(),
        "nine.yaml",
        padded_demo(9 * MIB, &format!("# {}\n", "x".repeat(76))),
    );
    let out = run(["validate", &nine]);
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains("stack files are limited to 8 MiB")
            || stderr(&out).contains("stack files are limited to 8 MiB"),
        "berth validate should name the limit:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = up.cli(["deploy", "-f", &nine, "--env", "local"]);
    assert_exit(&out, 1);
    assert!(
        stderr(&out).contains("limited to 8 MiB"),
        "berth deploy should name the limit:\n{}",
        stderr(&out)
    );

    // At the API: the file inside a body that fits gets 413 naming the limit…
    let body = serde_json::json!({
        "file": "nine.yaml",
        "source": std::fs::read_to_string(&nine).expect("nine.yaml"),
        "env": "local",
    })
    .to_string();
    let auth = format!("Bearer {}", up.token());
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let resp = common::http::request(up.api(), "POST", "/v1/deploy", &headers, body.as_bytes())
        .expect("POST /v1/deploy");
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert!(resp.text().contains("limited to 8 MiB"), "{}", resp.text());
    // …and a body over the API's own limit too.
    let huge = vec![b' '; 17 * MIB];
    match common::http::request(up.api(), "POST", "/v1/plan", &headers, &huge) {
        Ok(resp) => {
            assert_eq!(resp.status, 413, "{}", resp.text());
            assert!(resp.text().contains("limited to 8 MiB"), "{}", resp.text());
        }
        // The server may close before reading a body it will not take; what it sent first is
        // the answer, but a reset can lose it. The 413 above already proves the message.
        Err(err) => assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{err}"
        ),
    }
}
