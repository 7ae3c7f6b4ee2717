//! The end-to-end harness: runs the real `berth` binary and owns every process and port it starts.
//!
//! Every e2e test file starts with `mod common;` and uses what it needs.
//!
//! ## Layout
//! - this file     — the binary ([`berth`]), one-shot runs ([`run`], [`assert_exit`]), loopback
//!   ports ([`free_port`]), polling with a deadline ([`wait_until`]), example stack paths.
//! - [`http`]      — a tiny HTTP/1.1 client over `std::net::TcpStream` (no extra dependency).
//! - [`process`]   — [`process::Proc`]: a long-running `berth` in its own process group, its
//!   output in log files, killed on drop.
//! - [`up`]        — [`up::BerthUp`]: `berth up` on a temporary data dir and loopback ports,
//!   `kill9`/`restart`, and cleanup of the workloads it started.
//! - [`cluster`]   — what a running `berth up` shows: its API read over raw HTTP, requests
//!   through its router, waits for a stack to settle.
//! - [`skip`]      — skipping a Docker test when no Engine answers: a banner, and a line in
//!   `$BERTH_TEST_SKIPS` that `scripts/test` counts (a failure under `BERTH_REQUIRE_DOCKER=1`).
//!
//! ## Rules (STYLE.md: tests own every process and port they start)
//! - Nothing global, no `pkill`: a process is stopped through the handle that started it.
//! - No sleep-and-hope: every wait polls a condition every [`POLL`] until a deadline, and a
//!   timeout fails with what was awaited and the log tail of the process concerned.

// Each test file is its own crate and uses a different subset of the harness.
#![allow(dead_code)]

pub mod clock;
pub mod cluster;
pub mod containers;
pub mod docker;
pub mod http;
pub mod process;
pub mod skip;
pub mod startup;
pub mod up;

use std::ffi::OsStr;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// How often [`wait_until`] and friends re-check their condition.
pub const POLL: Duration = Duration::from_millis(20);

/// How long a one-shot command ([`run`]) may take before the test fails instead of hanging.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo stack shipped in `examples/` (three `berth whoami` behind the router).
pub const DEMO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/demo/stack.yaml"
);

/// The realistic shop stack shipped in `examples/` (staging and a three-region production).
pub const SHOP: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/shop/stack.yaml"
);

/// The path of the `berth` binary cargo built for these tests.
pub fn berth() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth"))
}

/// A link to the `berth` binary at `dir/berth`, for a long-running process.
///
/// The target directory is shared: a `cargo build` elsewhere replaces `target/debug/berth`
/// under a running `berth up`, whose `/proc/self/exe` then reads `… (deleted)` — and its agent
/// starts `berth` workloads from that path. A hard link keeps the very file the test started
/// reachable at a path that stays valid (a copy if the link fails, e.g. across file systems).
pub fn stable_binary(dir: &Path) -> std::path::PathBuf {
    let link = dir.join("berth");
    if std::fs::hard_link(berth(), &link).is_err() {
        std::fs::copy(berth(), &link).unwrap_or_else(|e| {
            panic!(
                "cannot copy {} to {}: {e}",
                berth().display(),
                link.display()
            )
        });
    }
    link
}

/// A `berth ARGS…` command made hermetic: stdin is empty and the variables that point commands
/// at a server (`BERTH_SERVER`, `BERTH_TOKEN`) are removed, so a developer's shell cannot leak in.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    command_of(berth(), args)
}

/// Like [`command`], running the binary at `bin` (e.g. a [`stable_binary`] link).
pub fn command_of<I, S>(bin: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN");
    cmd
}

/// Runs `berth ARGS…` to completion and captures stdout, stderr and the exit status.
///
/// Panics if it runs longer than [`RUN_TIMEOUT`] (the process is killed first), so a hang is a
/// test failure rather than a stuck test run.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_command(command(args), RUN_TIMEOUT)
}

/// Runs a prepared command (see [`command`]) with a deadline; what [`run`] does, for commands
/// that need extra environment variables or a shorter deadline.
pub fn run_command(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    // Drain both pipes on their own threads: a child writing more than a pipe buffer would
    // otherwise block forever while we wait for it to exit.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = clock::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if clock::now() < deadline => std::thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.join().unwrap_or_default();
                panic!(
                    "{cmd:?} still running after {timeout:?}; killed it. stderr:\n{}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Err(e) => panic!("cannot wait for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// The captured stdout as text (lossy: invalid UTF-8 shows as U+FFFD).
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The captured stderr as text (lossy: invalid UTF-8 shows as U+FFFD).
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing stdout and stderr (capped) when it differs. A process killed
/// by a signal never matches.
#[track_caller]
pub fn assert_exit(out: &Output, code: i32) {
    if out.status.code() != Some(code) {
        panic!(
            "expected exit code {code}, got {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            describe_status(out.status),
            cap(&stdout(out)),
            cap(&stderr(out)),
        );
    }
}

/// Asserts that no Rust panic reached stderr: bad input must get a clear error, never a panic.
#[track_caller]
pub fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(
        !err.contains("panicked"),
        "berth panicked (status {}):\n{}",
        describe_status(out.status),
        cap(&err)
    );
}

/// `exit code N` or `killed by signal S`.
pub fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => format!("{status}"),
    }
}

/// At most the first 4 KiB of `text`, so a failure message stays readable.
fn cap(text: &str) -> &str {
    const MAX: usize = 4096;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A fresh temporary directory under cargo's per-target test scratch space
/// (`CARGO_TARGET_TMPDIR`), removed when the returned guard drops.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("cannot create a temporary directory")
}

/// Writes `bytes` to `dir/name` and returns the path as a `String` (how commands take it).
pub fn write_file(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path.to_str()
        .expect("temporary paths are UTF-8")
        .to_string()
}

/// A loopback TCP port that was free a moment ago: bind `127.0.0.1:0`, read the port, drop the
/// listener. Another process could take it before the test binds it; the kernel hands out
/// ephemeral ports in sequence, so that is rare, and it fails loudly rather than silently.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// Polls `condition` every [`POLL`] until it holds or `timeout` passes; returns whether it held.
/// The building block of every wait in the harness: no fixed sleeps.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = clock::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if clock::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `condition` holds, polling every [`POLL`]; panics with
/// `timed out after T waiting for WHAT` if it does not within `timeout`.
///
/// For a wait on a server, prefer [`process::Proc::wait_until`] or [`up::BerthUp::wait_until`]:
/// they also fail fast if the server dies and put its log tail in the message.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, condition: impl FnMut() -> bool) {
    if !poll_until(timeout, condition) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// `text` without ANSI colour sequences (`ESC [ … m`), which the log may carry.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
