//! The benchmark's only reading of the clock. Measuring wall time is this command's whole job,
//! so it reads the real monotonic clock, here and nowhere else in the benchmark.

use std::time::Instant;

/// Now, on the monotonic clock.
#[allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time; this is its one clock call"
)]
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds since the Unix epoch, for the `since_ms` of a reported status.
#[allow(
    clippy::disallowed_methods,
    reason = "a status carries the agent's wall-clock time, as a real agent's does"
)]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
