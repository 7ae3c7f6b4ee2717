//! The slowloris guard: a connection with no request in progress must deliver the next request
//! head within a time limit, or it is closed.
//!
//! hyper has this built in (`header_read_timeout`), but it arms a fresh timer for every request
//! head, which measured 2.6 % of the router's CPU per request. This guard keeps one timer per
//! *connection*: requests mark the connection busy and, when their response is done, idle
//! since that moment; the timer wakes once per limit, sees whether the connection has been idle
//! for the whole limit, and otherwise sleeps until it could have been. The same limit covers a
//! head sent too slowly and a kept-alive connection that sends nothing (HTTP/1.1 and HTTP/2).
//!
//! An HTTP/2 stream that starts on another thread in the instant the guard decides to close an
//! idle connection may be cut; that takes the limit (30 s) of idleness first.
//!
//! The same activity word tells [`crate::conn_limit`] which connections are idle (and since
//! when), so a full listener can close the one idle longest instead of refusing a newcomer.
//!
//! Used by the router's listeners and the control plane's API.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};

/// Bits of [`Activity::state`] holding the idle-since time (ms); the rest count busy requests.
const IDLE_BITS: u32 = 48;
const IDLE_MASK: u64 = (1 << IDLE_BITS) - 1;
const ONE_BUSY: u64 = 1 << IDLE_BITS;

/// How far before the first reading the counter's epoch is set: a test runtime paused a moment
/// before another thread's first reading keeps a clock behind that reading, and must still
/// count forward from the epoch (not be stuck at 0).
const EPOCH_BEFORE: Duration = Duration::from_secs(3600);

/// Milliseconds since an epoch fixed in this process (monotonic, on Tokio's clock so that tests
/// can pause it), in [`IDLE_BITS`] bits.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let now = crate::clock::now();
    let epoch = *EPOCH.get_or_init(|| now.checked_sub(EPOCH_BEFORE).unwrap_or(now));
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX) & IDLE_MASK
}

/// One connection's activity: how many requests are in progress, and since when it is idle.
/// One word, so the guard reads both at once.
#[derive(Debug)]
pub struct Activity {
    state: AtomicU64,
}

impl Activity {
    /// A connection accepted now: idle, since now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            state: AtomicU64::new(now_ms()),
        })
    }

    /// A request has arrived: the connection is busy until the returned mark is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.state.fetch_add(ONE_BUSY, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// `None` while a request is in progress; else since when the connection has been idle
    /// (milliseconds on this process's monotonic clock: only for comparing connections).
    pub fn idle_since_ms(&self) -> Option<u64> {
        let state = self.state.load(Ordering::Relaxed);
        (state >> IDLE_BITS == 0).then_some(state & IDLE_MASK)
    }

    /// Resolves once the connection has had no request in progress for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let state = self.state.load(Ordering::Relaxed);
            let wait_ms = if state >> IDLE_BITS > 0 {
                // Busy: it cannot be idle for `limit` before `limit` from now.
                limit_ms
            } else {
                let idle_ms = now_ms().saturating_sub(state & IDLE_MASK);
                if idle_ms >= limit_ms {
                    return;
                }
                limit_ms - idle_ms
            };
            tokio::time::sleep(Duration::from_millis(wait_ms.max(1))).await;
        }
    }
}

/// A request in progress; its drop (when the response has been sent, or abandoned) makes the
/// connection idle from that moment if no other request is in progress.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = now_ms();
        let _ = self
            .0
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                let busy = (state >> IDLE_BITS).saturating_sub(1);
                Some((busy << IDLE_BITS) | now)
            });
    }
}

/// A response body that keeps its request's [`Busy`] mark until it is dropped (hyper drops it
/// once it has been sent, or when the connection goes).
pub struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    /// Wraps a response body so that `busy` is dropped with it.
    pub fn new(inner: B, busy: Busy) -> Self {
        Tracked { inner, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard's limit in these tests: the listeners' real one. Paused time waits it out
    /// in no real time.
    const LIMIT: Duration = Duration::from_secs(30);

    /// Sleeps `d` on the paused clock, then lets the woken tasks run.
    async fn advance(d: Duration) {
        tokio::time::sleep(d).await;
        tokio::task::yield_now().await;
    }

    fn watch(activity: &Arc<Activity>) -> tokio::task::JoinHandle<()> {
        let guard = activity.clone();
        tokio::spawn(async move { guard.idle_for(LIMIT).await })
    }

    /// The guard never fires while a request is in progress (however long), nor before the
    /// connection has been idle for the whole limit since the response; then it does.
    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_out_busy_requests_and_counts_from_the_last_one() {
        let activity = Activity::new();
        let busy = activity.begin();
        let watched = watch(&activity);
        // Busy for three limits: never idle.
        advance(LIMIT * 3).await;
        assert!(
            !watched.is_finished(),
            "closed while a request was in progress"
        );
        drop(busy);
        advance(Duration::from_millis(100)).await;
        assert!(!watched.is_finished(), "closed right after the response");
        advance(LIMIT - Duration::from_millis(200)).await;
        assert!(
            !watched.is_finished(),
            "closed before the connection was idle for the limit"
        );
        tokio::time::timeout(Duration::from_millis(200), watched)
            .await
            .expect("the guard fires once idle for the limit")
            .expect("the guard task");
    }

    /// A request during the idle time starts the count again from its response.
    #[tokio::test(start_paused = true)]
    async fn a_request_while_idle_restarts_the_count() {
        let activity = Activity::new();
        let watched = watch(&activity);
        advance(LIMIT - Duration::from_secs(5)).await;
        drop(activity.begin());
        // The limit since the connection opened has passed, but not since the request.
        advance(Duration::from_secs(10)).await;
        assert!(
            !watched.is_finished(),
            "the count went on through a request"
        );
        advance(LIMIT - Duration::from_secs(10) - Duration::from_millis(100)).await;
        assert!(!watched.is_finished(), "closed before the limit");
        tokio::time::timeout(Duration::from_millis(200), watched)
            .await
            .expect("the guard fires once idle for the limit after the request")
            .expect("the guard task");
    }

    /// `idle_since_ms` is `None` while any request is in progress, and the moment the last one
    /// ended afterwards (what the connection limit compares to pick the longest idle).
    #[tokio::test(start_paused = true)]
    async fn idle_since_counts_busy_requests() {
        let activity = Activity::new();
        let opened = activity.idle_since_ms().expect("idle when accepted");
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.idle_since_ms(), None);
        advance(Duration::from_secs(7)).await;
        drop(first);
        assert_eq!(
            activity.idle_since_ms(),
            None,
            "one request still in progress"
        );
        advance(Duration::from_secs(3)).await;
        drop(second);
        assert_eq!(activity.idle_since_ms(), Some(opened + 10_000));
    }
}
