//! Tests only: the library is pure and never reads the time. Its tests bound how long hostile
//! inputs take (a billion laughs, 10,000-deep nesting, 50 MiB), and read the clock here, the
//! one place `clippy.toml` allows it. The tight figures are a benchmark
//! (`cargo bench -p berth-spec --bench hostile_inputs`), not a test.

use std::time::{Duration, Instant};

/// A bound no debug build on a loaded machine comes near for these inputs (each takes
/// milliseconds), which the pathological cases they guard against (exponential alias expansion,
/// parsing 50 MiB, unbounded nesting) still blow through.
pub const GENEROUS: Duration = Duration::from_secs(10);

/// Runs `f` and says how long it took, on the monotonic clock.
#[expect(
    clippy::disallowed_methods,
    reason = "the spec's test clock: the one place its tests read the monotonic clock"
)]
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}
