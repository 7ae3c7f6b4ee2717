//! The agent's clock: the one module that reads the time. `clippy.toml` disallows
//! `SystemTime::now` and `Instant::now` everywhere else, so every place that needs the time
//! names this module, and a clock a test can drive replaces it here.
//!
//! Monotonic time is Tokio's ([`now`]), which a paused test runtime drives: restart back-off,
//! health-probe schedules, stop grace, the lock's wait, the log cursor's pace and the image
//! cache's trust all measure with it.

/// Now, on Tokio's monotonic clock (outside a runtime, the system's monotonic clock).
#[expect(
    clippy::disallowed_methods,
    reason = "the agent's clock module: the one place that reads the monotonic clock"
)]
pub fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970): what
/// statuses' `since_ms`, records' `started_at_ms` and garbage-collection reports carry.
#[expect(
    clippy::disallowed_methods,
    reason = "the agent's clock module: the one place that reads the wall clock"
)]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
