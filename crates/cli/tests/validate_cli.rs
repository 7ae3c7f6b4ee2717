//! End-to-end tests of the commands that need no server: `berth validate`, `berth render`,
//! `berth plan --against` and `berth whoami`, run as the real binary.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::Proc;
use common::{
    assert_exit, assert_no_panic, command, free_port, http, run, run_command, stderr, stdout,
    temp_dir, write_file, DEMO, SHOP,
};
use nix::sys::signal::Signal;

/// How long hostile input may take to be refused (a debug build on a slow CI machine).
const QUICK: Duration = Duration::from_secs(10);

/// The demo stack with its `replicas:` value replaced by `abc`, and the 1-based line and column
/// of `abc` in it.
fn demo_with_bad_replicas() -> (String, usize, usize) {
    let demo = std::fs::read_to_string(DEMO).expect("the demo stack is readable");
    let needle = "replicas: ${values.replicas}";
    assert!(
        demo.contains(needle),
        "the demo stack changed: no `{needle}`"
    );
    let bad = demo.replacen(needle, "replicas: abc", 1);
    let (line, text) = bad
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("replicas: abc"))
        .expect("the replaced line");
    let col = text.find("abc").expect("abc") + 1;
    (bad, line + 1, col)
}

/// Asserts that every line of stderr is a diagnostic for one of `files`: `FILE:LINE:COL: msg`
/// with numeric LINE and COL, or `FILE: msg` for problems without a position.
#[track_caller]
fn assert_diagnostic_lines(err: &str, files: &[&str]) {
    assert!(
        !err.trim().is_empty(),
        "expected diagnostics on stderr, got none"
    );
    for line in err.lines() {
        let rest = files
            .iter()
            .find_map(|f| line.strip_prefix(f).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("stderr line does not start with FILE: {line:?}\n{err}"));
        if rest.starts_with(' ') {
            continue; // `FILE: message`
        }
        let mut parts = rest.splitn(3, ':');
        let (l, c, msg) = (parts.next(), parts.next(), parts.next());
        let numeric = |s: Option<&str>| {
            s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        };
        assert!(
            numeric(l) && numeric(c) && msg.is_some_and(|m| m.starts_with(' ') && m.len() > 1),
            "stderr line is not `FILE:LINE:COL: message`: {line:?}\n{err}"
        );
    }
}

// ---------------------------------------------------------------- validate

#[test]
fn validate_accepts_the_examples() {
    let out = run(["validate", DEMO, SHOP]);
    assert_exit(&out, 0);
    assert_eq!(stderr(&out), "", "a valid file prints nothing on stderr");
}

#[test]
fn validate_reports_file_line_col_of_a_bad_value() {
    let dir = temp_dir();
    let (bad, line, col) = demo_with_bad_replicas();
    let path = write_file(dir.path(), "bad.yaml", bad);
    let out = run(["validate", &path]);
    assert_exit(&out, 1);
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_diagnostic_lines(&err, &[&path]);
    let prefix = format!("{path}:{line}:{col}: ");
    let hit = err
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no diagnostic at {prefix:?} (where `abc` is):\n{err}"));
    assert!(
        hit.contains("replicas"),
        "the message should name the field: {hit:?}"
    );
    assert_eq!(err.lines().count(), 1, "one error, one line:\n{err}");
}

#[test]
fn validate_reports_every_file_in_one_run() {
    let dir = temp_dir();
    let (bad, _, _) = demo_with_bad_replicas();
    let a = write_file(dir.path(), "a.yaml", bad);
    let demo = std::fs::read_to_string(DEMO).unwrap();
    let b = write_file(
        dir.path(),
        "b.yaml",
        demo.replacen("stack: demo", "stack: Not_A_Name", 1),
    );
    let out = run(["validate", &a, DEMO, &b]);
    assert_exit(&out, 1);
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_diagnostic_lines(&err, &[&a, &b]);
    assert!(
        err.lines().any(|l| l.starts_with(&format!("{a}:"))),
        "no error for {a}:\n{err}"
    );
    let b_line = err
        .lines()
        .find(|l| l.starts_with(&format!("{b}:")))
        .unwrap_or_else(|| panic!("no error for {b}:\n{err}"));
    let name_line = demo
        .lines()
        .position(|l| l == "stack: demo")
        .expect("the demo's name line")
        + 1;
    let at = format!("{b}:{name_line}:8: ");
    assert!(
        b_line.starts_with(&at),
        "the bad name is at {at:?}: {b_line:?}"
    );
}

#[test]
fn validate_of_a_missing_file_fails_clearly() {
    let dir = temp_dir();
    let missing = dir.path().join("nope.yaml");
    let missing = missing.to_str().unwrap();
    let out = run(["validate", missing, DEMO]);
    assert_exit(&out, 1);
    assert_no_panic(&out);
    let err = stderr(&out);
    assert!(
        err.contains(missing),
        "the message should name the file:\n{err}"
    );
    assert!(
        err.to_lowercase().contains("no such file"),
        "the message should say why:\n{err}"
    );
}

#[test]
fn validate_without_files_is_a_usage_error() {
    let out = run(["validate"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("Usage"),
        "usage on stderr:\n{}",
        stderr(&out)
    );
}

/// Validates hostile bytes: exit 1, fast, exactly one `FILE:…` line naming the problem (checked
/// case-insensitively against any of `words`), never a panic.
#[track_caller]
fn assert_refused_quickly(name: &str, bytes: &[u8], words: &[&str]) {
    let dir = temp_dir();
    let path = write_file(dir.path(), name, bytes);
    let started = common::clock::now();
    let out = run_command(command(["validate", &path]), Duration::from_secs(60));
    let took = started.elapsed();
    assert_no_panic(&out);
    assert_exit(&out, 1);
    assert!(took < QUICK, "{name}: took {took:?}");
    let err = stderr(&out);
    assert_diagnostic_lines(&err, &[&path]);
    assert_eq!(
        err.lines().count(),
        1,
        "{name}: one clear line expected:\n{err}"
    );
    let lower = err.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(w)),
        "{name}: the message should mention one of {words:?}:\n{err}"
    );
}

#[test]
fn validate_refuses_a_50_mb_file() {
    let mut big = b"stack: big\nvalues:\n".to_vec();
    while big.len() < 50 * 1024 * 1024 {
        big.extend_from_slice(b"  k0123456789abcdef: 0123456789abcdefghijklmnopqrstuvwxyz\n");
    }
    assert_refused_quickly("big.yaml", &big, &["limit"]);
}

#[test]
fn validate_states_the_real_size_of_a_huge_file() {
    let dir = temp_dir();
    let path = write_file(dir.path(), "big.yaml", vec![b'#'; 50 * 1024 * 1024]);
    let out = run(["validate", &path]);
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("50.0 MiB"),
        "the message should state the file's real size:\n{err}"
    );
}

#[test]
fn validate_refuses_an_empty_file() {
    assert_refused_quickly("empty.yaml", b"", &["empty", "stack", "expected"]);
}

#[test]
fn validate_refuses_non_utf8_bytes() {
    assert_refused_quickly(
        "latin1.yaml",
        b"stack: caf\xe9\nhistory: 10\n",
        &["utf-8", "utf8"],
    );
}

#[test]
fn validate_refuses_10000_deep_nesting() {
    let deep = format!("stack: {}{}\n", "[".repeat(10_000), "]".repeat(10_000));
    assert_refused_quickly("deep.yaml", deep.as_bytes(), &["deep", "nest", "depth"]);
}

#[test]
fn validate_refuses_a_billion_laughs() {
    let mut lol = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        lol.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    lol.push_str("stack: *i\n");
    assert_refused_quickly("lol.yaml", lol.as_bytes(), &["alias", "expan", "anchor"]);
}

// ---------------------------------------------------------------- render

#[test]
fn render_is_byte_identical_across_runs() {
    let args = ["render", "-f", SHOP, "--env", "production"];
    let first = run(args);
    assert_exit(&first, 0);
    let second = run(args);
    assert_exit(&second, 0);
    assert!(!first.stdout.is_empty(), "render printed nothing");
    assert!(
        first.stdout == second.stdout,
        "two renders differ:\n{}\n---\n{}",
        stdout(&first),
        stdout(&second)
    );
}

#[test]
fn render_json_parses() {
    let out = run([
        "render",
        "-f",
        SHOP,
        "--env",
        "production",
        "--output",
        "json",
    ]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(&out)));
    assert_eq!(v["stack"], "shop", "{v:#}");
    assert_eq!(
        v["services"]["web"]["replicas"], 4,
        "production overlay applied: {v:#}"
    );
}

#[test]
fn rendered_yaml_is_itself_a_valid_stack_file() {
    let dir = temp_dir();
    for (file, env) in [(SHOP, "production"), (SHOP, "staging"), (DEMO, "local")] {
        let out = run(["render", "-f", file, "--env", env]);
        assert_exit(&out, 0);
        let path = write_file(dir.path(), &format!("rendered-{env}.yaml"), &out.stdout);
        let check = run(["validate", &path]);
        assert_exit(&check, 0);
        // And rendering the rendered file again changes nothing.
        let again = run(["render", "-f", &path, "--env", env]);
        assert_exit(&again, 0);
        assert!(
            again.stdout == out.stdout,
            "{env}: render is not a fixed point:\n{}\n---\n{}",
            stdout(&out),
            stdout(&again)
        );
    }
}

#[test]
fn render_applies_set_overrides() {
    let json = |extra: &[&str]| {
        let mut args = vec![
            "render",
            "-f",
            SHOP,
            "--env",
            "production",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert_exit(&out, 0);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    assert_eq!(json(&[])["services"]["web"]["replicas"], 4);
    assert_eq!(
        json(&["--set", "web.replicas=7"])["services"]["web"]["replicas"],
        7
    );
    let text = run([
        "render",
        "-f",
        SHOP,
        "--env",
        "production",
        "--set",
        "web.replicas=7",
    ]);
    assert_exit(&text, 0);
    assert!(
        stdout(&text).lines().any(|l| l.trim() == "replicas: 7"),
        "`replicas: 7` in the YAML:\n{}",
        stdout(&text)
    );
}

#[test]
fn render_of_an_unknown_environment_names_it() {
    let out = run(["render", "-f", SHOP, "--env", "nope"]);
    assert_exit(&out, 1);
    assert_no_panic(&out);
    assert!(
        out.stdout.is_empty(),
        "nothing rendered on stdout: {}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("nope"),
        "the message should name the environment:\n{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------- plan --against

/// The `plan id: ID` line of a text plan, checked to be 12 lowercase hex characters.
#[track_caller]
fn plan_id(text: &str) -> String {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("plan id: "))
        .unwrap_or_else(|| panic!("no `plan id:` line:\n{text}"));
    assert!(
        line.len() == 12
            && line
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "plan id is not 12 hex characters: {line:?}"
    );
    line.to_string()
}

#[test]
fn plan_against_a_file_shows_the_changed_field_and_an_id() {
    let args = [
        "plan",
        "-f",
        DEMO,
        "--env",
        "local",
        "--set",
        "web.env.VERSION=2",
        "--against",
        DEMO,
    ];
    let out = run(args);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let change = text
        .lines()
        .find(|l| l.contains("env.VERSION"))
        .unwrap_or_else(|| panic!("no env.VERSION change:\n{text}"));
    assert!(
        change.contains('1') && change.contains('2'),
        "old and new value shown: {change:?}"
    );
    let id = plan_id(&text);
    // Same input, same plan id.
    let again = run(args);
    assert_exit(&again, 0);
    assert_eq!(plan_id(&stdout(&again)), id);
}

#[test]
fn plan_of_a_file_against_itself_has_no_changes() {
    let out = run(["plan", "-f", DEMO, "--env", "local", "--against", DEMO]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.starts_with("no changes"), "{text}");
    assert!(!text.contains("env.VERSION"), "{text}");
    let changed = run([
        "plan",
        "-f",
        DEMO,
        "--env",
        "local",
        "--set",
        "web.env.VERSION=2",
        "--against",
        DEMO,
    ]);
    assert_exit(&changed, 0);
    assert_ne!(
        plan_id(&text),
        plan_id(&stdout(&changed)),
        "different plans, different ids"
    );
}

#[test]
fn plan_json_parses() {
    let out = run([
        "plan",
        "-f",
        DEMO,
        "--env",
        "local",
        "--set",
        "web.env.VERSION=2",
        "--against",
        DEMO,
        "--output",
        "json",
    ]);
    assert_exit(&out, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(&out)));
    assert!(v["id"].as_str().is_some_and(|id| id.len() == 12), "{v:#}");
    assert_eq!(v["stack"], "demo", "{v:#}");
    assert!(
        v.to_string().contains("env.VERSION"),
        "the change is in the JSON: {v:#}"
    );
}

#[test]
fn plan_with_an_invalid_file_reports_it() {
    let dir = temp_dir();
    let (bad, line, col) = demo_with_bad_replicas();
    let path = write_file(dir.path(), "bad.yaml", bad);
    let out = run(["plan", "-f", &path, "--env", "local", "--against", DEMO]);
    assert_exit(&out, 1);
    assert_no_panic(&out);
    assert!(
        stderr(&out).contains(&format!("{path}:{line}:{col}: ")),
        "{}",
        stderr(&out)
    );
}

// ---------------------------------------------------------------- whoami

/// `berth whoami --listen 127.0.0.1:P` with an identity in its environment, ready (`/healthz`
/// answers). The guard keeps the log directory alive as long as the process.
struct Whoami {
    proc: Proc,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Whoami {
    fn start() -> Whoami {
        let dir = temp_dir();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cmd = command(["whoami", "--listen", &addr.to_string()]);
        cmd.env("BERTH_SERVICE", "web")
            .env("BERTH_INSTANCE", "web-3f2a")
            .env("BERTH_RELEASE", "7")
            .env("BERTH_NODE", "node-a")
            .env("VERSION", "2.1");
        let proc = Proc::spawn(cmd, "whoami", dir.path());
        proc.wait_until(Duration::from_secs(20), "whoami to answer /healthz", || {
            http::is_ok(addr, "/healthz")
        });
        Whoami {
            proc,
            addr,
            _dir: dir,
        }
    }
}

#[test]
fn whoami_answers_its_identity_and_test_endpoints() {
    let w = Whoami::start();
    let root = http::get(w.addr, "/").expect("GET /");
    assert_eq!(root.status, 200);
    assert_eq!(
        root.json(),
        serde_json::json!({"service": "web", "instance": "web-3f2a", "release": "7", "node": "node-a", "version": "2.1"})
    );
    assert_eq!(http::get(w.addr, "/healthz").unwrap().status, 200);
    assert_eq!(http::get(w.addr, "/status/503").unwrap().status, 503);
    assert_eq!(http::get(w.addr, "/status/201").unwrap().status, 201);
    let started = common::clock::now();
    let slept = http::get(w.addr, "/sleep?ms=50").unwrap();
    assert_eq!(slept.status, 200, "{}", slept.text());
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "answered before sleeping 50 ms"
    );
    assert_eq!(http::get(w.addr, "/sleep?ms=x").unwrap().status, 400);
}

/// Whether the server side of the loopback connection `client_port → server_port` exists and
/// has read everything sent to it (receive queue empty), from `/proc/net/tcp`. That is how the
/// test knows a request is in the server's hands, without sleeping.
fn server_has_read(server_port: u16, client_port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).any(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        let (Some(local), Some(remote), Some(queues)) = (cols.get(1), cols.get(2), cols.get(4))
        else {
            return false;
        };
        port_of(local) == Some(server_port)
            && port_of(remote) == Some(client_port)
            && queues
                .rsplit(':')
                .next()
                .is_some_and(|rx| u64::from_str_radix(rx, 16) == Ok(0))
    })
}

#[test]
fn whoami_finishes_in_flight_requests_on_sigterm() {
    let w = Whoami::start();
    let mut stream = http::connect(w.addr).expect("connect");
    let client_port = stream.local_addr().unwrap().port();
    http::write_request(&mut stream, w.addr, "GET", "/sleep?ms=500", &[], &[]).expect("send");
    let answered = Arc::new(AtomicBool::new(false));
    let reader = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            let r = http::read_response(&mut stream);
            answered.store(true, Ordering::SeqCst);
            r
        })
    };
    w.proc.wait_until(
        Duration::from_secs(10),
        "whoami to read the /sleep request",
        || server_has_read(w.addr.port(), client_port),
    );
    w.proc.signal(Signal::SIGTERM);
    assert!(
        !answered.load(Ordering::SeqCst),
        "the request finished before SIGTERM: nothing was tested"
    );
    let response = reader
        .join()
        .expect("reader thread")
        .expect("the in-flight request completes");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "slept 500 ms\n");
    let status = w.proc.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "whoami exits 0 after draining: {status:?}\n{}",
        w.proc.log_tail()
    );
}

/// Issue 17 point 7: completions for each shell and man pages, from the parser's own
/// definitions.
#[test]
fn completions_and_man_pages_are_generated_from_the_parser() {
    for (shell, expected) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef berth"),
        ("fish", "complete -c berth"),
    ] {
        let out = common::run(["completions", shell]);
        common::assert_exit(&out, 0);
        let script = common::stdout(&out);
        assert!(script.contains(expected), "{shell}: {script}");
        assert!(script.contains("deploy"), "{shell} completes the commands");
    }
    let out = common::run(["completions", "tcsh"]);
    common::assert_exit(&out, 2);

    let out = common::run(["man"]);
    common::assert_exit(&out, 0);
    assert!(common::stdout(&out).starts_with(".ie"), "roff on stdout");
    let dir = common::temp_dir();
    let pages = dir.path().join("man1");
    let out = common::run(["man", "--out", pages.to_str().expect("utf-8 path")]);
    common::assert_exit(&out, 0);
    for page in [
        "berth.1",
        "berth-deploy.1",
        "berth-secret-set.1",
        "berth-rollout-promote.1",
    ] {
        let text = std::fs::read_to_string(pages.join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}\n{}", common::stdout(&out)));
        assert!(text.contains(".TH"), "{page} is a man page");
    }
    let deploy = std::fs::read_to_string(pages.join("berth-deploy.1")).expect("deploy page");
    assert!(
        deploy.contains("stack file to deploy"),
        "flag help is in the page"
    );
}
