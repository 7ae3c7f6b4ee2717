//! The router's clock: the one module that reads the time. `clippy.toml` disallows
//! `Instant::now` everywhere else, so every place that needs the time names this module, and a
//! clock a test can drive replaces it here.

/// Now, on the monotonic clock: request latencies, idle ages of pooled connections, the
/// ejection clock of [`crate::upstream`], the follower's back-off.
#[expect(
    clippy::disallowed_methods,
    reason = "the router's clock module: the one place that reads the monotonic clock"
)]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Now, on Tokio's clock (which a paused test runtime drives): the takeover steering's wait.
#[expect(
    clippy::disallowed_methods,
    reason = "the router's clock module: the one place that reads Tokio's clock"
)]
pub(crate) fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Now, in ms since the Unix epoch (wall clock): the time stamps of traffic reports, which the
/// server compares with its own start.
#[expect(
    clippy::disallowed_methods,
    reason = "the router's clock module: the one place that reads the wall clock"
)]
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
