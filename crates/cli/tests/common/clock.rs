//! The tests' clock: the one module of the end-to-end harness that reads the time
//! (`clippy.toml` disallows it elsewhere). These tests drive real processes over real sockets,
//! so their deadlines and measured durations are wall-clock; reading it in one place keeps
//! that visible and lets the rest of the crate keep the lint.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now, on the monotonic clock: deadlines of waits, durations a test measures.
#[expect(
    clippy::disallowed_methods,
    reason = "the end-to-end tests' clock module: the one place they read the monotonic clock"
)]
pub fn now() -> Instant {
    Instant::now()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it), as the agent writes
/// `started_at_ms`.
#[expect(
    clippy::disallowed_methods,
    reason = "the end-to-end tests' clock module: the one place they read the wall clock"
)]
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
