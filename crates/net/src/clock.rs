//! berth-net's clock: the one module that reads the time. `clippy.toml` disallows
//! `Instant::now` everywhere else, so every place that needs the time names this module, and a
//! clock a test can drive replaces it here.

/// Now, on the monotonic clock: the epoch of the head guard's millisecond counter.
#[expect(
    clippy::disallowed_methods,
    reason = "berth-net's clock module: the one place that reads the monotonic clock"
)]
pub(crate) fn now() -> std::time::Instant {
    std::time::Instant::now()
}
