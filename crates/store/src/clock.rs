//! The store's clock: the one module that reads the time (`clippy.toml` disallows it elsewhere),
//! so a clock a test can drive replaces it here.

/// Now, on the monotonic clock: when the store last tried to recover from a failed write.
#[expect(
    clippy::disallowed_methods,
    reason = "the store's clock module: the one place that reads the monotonic clock"
)]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): the probe write's value.
#[expect(
    clippy::disallowed_methods,
    reason = "the store's clock module: the one place that reads the wall clock"
)]
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
