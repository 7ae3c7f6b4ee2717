//! Skipping a test that needs the Docker Engine, visibly.
//!
//! A skipped test still *passes* for libtest, and cargo hides the output of passing tests, so a
//! banner alone is seen by nobody. [`skip`] therefore also appends one line,
//! `TEST: REASON`, to the file `$BERTH_TEST_SKIPS` names (when set): `scripts/test` sets it,
//! counts the lines and prints them, and its closing line says `N passed, N failed, N skipped`.
//! Under `BERTH_REQUIRE_DOCKER=1` (CI) there is no skipping: [`skip`] panics instead.

use std::io::Write;

/// The variable naming the file a skip is recorded in (one line per skipped test).
pub const SKIPS_FILE_VAR: &str = "BERTH_TEST_SKIPS";

/// Whether an Engine is required (CI): then a missing one fails instead of skipping.
pub fn required() -> bool {
    std::env::var("BERTH_REQUIRE_DOCKER").as_deref() == Ok("1")
}

/// Skips `test` because of `why`: panics under `BERTH_REQUIRE_DOCKER=1`; otherwise prints a loud
/// banner and records `test: why` in `$BERTH_TEST_SKIPS`. The caller then returns early.
#[track_caller]
pub fn skip(test: &str, why: &str) {
    if required() {
        panic!("BERTH_REQUIRE_DOCKER=1 but {why}");
    }
    let bar = "!".repeat(78);
    eprintln!(
        "\n{bar}\n!! SKIPPING {test}: {why}\n!! (set BERTH_REQUIRE_DOCKER=1 to make this a failure)\n{bar}\n"
    );
    record(test, why);
}

/// Appends `test: why` (one line: newlines in `why` become spaces) to `$BERTH_TEST_SKIPS`.
/// A file that cannot be written fails the test: a skip nobody counts is what this prevents.
#[track_caller]
fn record(test: &str, why: &str) {
    let Some(path) = std::env::var_os(SKIPS_FILE_VAR).filter(|p| !p.is_empty()) else {
        return;
    };
    let line = format!("{test}: {}\n", why.replace(['\n', '\r'], " "));
    // One `write` of a short line to a file opened for appending: lines of tests running at the
    // same time (threads or processes) do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        panic!(
            "cannot record the skip of {test} in {} (${SKIPS_FILE_VAR}): {e}",
            std::path::Path::new(&path).display()
        );
    }
}
