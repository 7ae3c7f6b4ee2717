//! Time as an injected value: the server asks its [`Clock`] instead of the system, so tests and
//! simulations can drive it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, from wherever the caller decides.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    #[expect(
        clippy::disallowed_methods,
        reason = "the server's clock module: the one place that reads the wall clock"
    )]
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        }))
    }

    /// A clock that reads from the given function (tests).
    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

/// Now, on the monotonic clock: for durations the shells measure themselves (how long ago a
/// log line was written, a long-poll's deadline is on [`tokio_now`]).
#[expect(
    clippy::disallowed_methods,
    reason = "the server's clock module: the one place that reads the monotonic clock"
)]
pub fn instant_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Now, on Tokio's clock (which a paused test runtime drives): long-poll deadlines.
#[expect(
    clippy::disallowed_methods,
    reason = "the server's clock module: the one place that reads Tokio's clock"
)]
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Seconds since the Unix epoch on the wall clock (0 before it): certificate validity dates.
pub fn unix_secs() -> u64 {
    Clock::system().now_ms() / 1000
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock")
    }
}
