//! The CLI's clock: the one module that reads the time. `clippy.toml` disallows `Instant::now`
//! and `SystemTime::now` everywhere else, so every command that needs the time names this
//! module, and a test can hand the time in as a value instead.

/// Now, on Tokio's clock (which a paused test runtime drives): the deadlines of the waits in
/// `berth agent` (for its registration) and `berth gc` (for the agents' reports).
#[expect(
    clippy::disallowed_methods,
    reason = "the CLI's clock module: the one place that reads Tokio's clock"
)]
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): `berth secret ls`'s ages.
#[expect(
    clippy::disallowed_methods,
    reason = "the CLI's clock module: the one place that reads the wall clock"
)]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
