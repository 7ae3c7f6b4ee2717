//! Replays the `route_request` fuzzer's seed corpus through the router on every `cargo test`.
//!
//! The fuzzer itself needs nightly-only sanitizer flags and minutes of CPU, so it does not run in
//! CI; this keeps every input it was seeded with (and every crash reproducer added to the corpus
//! later) from regressing. Each input runs the full check — a routing table applied, the bytes
//! served by the real connection handling and proxy, the invariants of
//! `berth_router::fuzzing` checked — so a broken invariant fails here as it would in the fuzzer.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use berth_router::fuzzing::{run, Report};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/route_request")
}

thread_local! {
    /// Panics on this thread, spawned tasks included (the run's runtime has one thread): Tokio
    /// catches a task's panic, the fuzzer (whose panic hook aborts) would not.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|panics| panics.set(panics.get() + 1));
            previous(info);
        }));
    });
}

fn replay(path: &Path) -> Report {
    count_panics();
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // A panic here fails the test and names nothing, so say which file it was first.
    eprintln!("{}", path.display());
    let before = PANICS.with(Cell::get);
    let report = run(&bytes);
    assert_eq!(
        PANICS.with(Cell::get),
        before,
        "a task panicked on {}",
        path.display()
    );
    report
}

#[test]
fn every_corpus_file_passes_the_invariants() {
    let dir = corpus();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus at {}: {e}", dir.display()));
    let mut files = 0;
    for entry in entries {
        let path = entry.expect("a corpus directory entry").path();
        if path.is_file() {
            replay(&path);
            files += 1;
        }
    }
    assert!(
        files >= 15,
        "found only {files} corpus files in {}",
        dir.display()
    );
}

/// Spot checks that the seeds exercise what they are named after, so the corpus does not rot
/// into inputs that all fail the same way.
#[test]
fn seeds_hit_the_paths_they_are_named_for() {
    let run = |name: &str| replay(&corpus().join(name));

    let report = run("get_with_host.http");
    assert_eq!(report.statuses, [200]);
    assert_eq!(report.upstream_requests, 1);
    assert!(report.lookups > 0);

    assert_eq!(run("absolute_form.http").statuses, [200]);
    assert_eq!(run("absolute_form_no_host.http").statuses, [200]);
    assert_eq!(run("chunked_body.http").statuses, [200]);
    assert_eq!(run("headers_120.http").statuses, [431]);
    assert_eq!(run("headers_99.http").statuses, [200]);
    assert_eq!(run("bad_header_names.http").statuses, [400]);
    assert_eq!(run("ipv6_host.http").statuses, [200]);
    // Hosts ignore case, port and a trailing dot; paths keep their case (`/API` is not `/api`).
    assert_eq!(run("host_port_case_dot.http").statuses, [200, 502, 200]);
    assert_eq!(run("maintenance.http").statuses, [503, 503]);
    assert_eq!(run("empty_endpoints.http").statuses, [503, 503]);
    assert_eq!(run("dead_endpoints.http").statuses, [502, 502]);
    assert_eq!(run("hop_by_hop.http").statuses, [200]);
    assert_eq!(run("tls_double_host.http").statuses, [503]);
    assert_eq!(run("duplicate_host.http").statuses, [400, 400]);
    assert_eq!(run("duplicate_host_then_ok.http").statuses, [400, 200]);
    assert_eq!(run("absolute_form_wins.http").statuses, [200, 200]);
    assert_eq!(run("absolute_form_userinfo.http").statuses, [400, 200]);
    assert_eq!(run("connect_body.http").statuses, [405, 405, 200]);
    assert_eq!(run("missing_host.http").statuses, [400, 200]);
    assert_eq!(run("options_connect.http").statuses, [200, 405]);
    // HEAD, then 100 Continue and the POST, then `Connection: close` ends the connection.
    assert_eq!(run("pipelined.http").statuses, [200, 204, 200]);
    // The first request is routed by the first table, the others by the second.
    let report = run("switch_duplicates.http");
    assert_eq!(report.statuses, [200, 502, 200]);
    // No capacity at all; then one service's two routes share its limits.
    assert_eq!(run("limits.http").statuses, [503, 200, 200]);

    let report = run("upgrade_websocket.http");
    assert_eq!(report.statuses, [101]);
    assert!(report.tunnelled);

    let report = run("h2_frames.bin");
    assert!(report.h2_frames >= 2, "{report:?}");
    assert!(report.upstream_requests >= 1, "{report:?}");
    assert!(run("h2_preface_in_h1.bin").h2_frames >= 2);

    let mut statuses = run("h2c_client.txt").statuses;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 404, 503]);
}
