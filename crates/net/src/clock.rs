//! berth-net's clock: the one module that reads the time. `clippy.toml` disallows
//! `Instant::now` everywhere else, so every place that needs the time names this module, and a
//! clock a test can drive replaces it here.

/// Now, on Tokio's clock: the monotonic clock, unless a test runtime paused it. The head
/// guard's millisecond counter reads it, so that its tests run on paused time.
#[expect(
    clippy::disallowed_methods,
    reason = "berth-net's clock module: the one place that reads Tokio's clock"
)]
pub(crate) fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
