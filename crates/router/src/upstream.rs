//! One instance as the router sees it: its keep-alive pool, its outstanding requests and its
//! passive-health state (ejection with back-off).
//!
//! An [`Upstream`] is keyed by address and outlives routing tables: a table update that keeps
//! an endpoint keeps its warm connections, its load figure and its ejection. The pool is ours
//! rather than hyper-util's legacy client because the router must know whether a connection was
//! *reused* (a reused connection that dies before answering was closed idle by the app, and the
//! request may be replayed — hyper#2136), must get a request back when hyper did not send it,
//! and wants no per-request URI rewriting or pool-key hashing.
//!
//! The idle connections are kept in one list per worker thread ([`SHARDS`] of them, each
//! behind a `Mutex` held for one `Vec::pop`/`push`). A thread checks out the connections it
//! checked in, which were usually opened by it too, so with one runtime per core
//! (see [`crate::bind_reuseport`]) a request, its upstream connection's task and the response
//! stay on one thread: no cross-thread wake-ups, and the lock is never contended. A thread
//! whose own list is empty opens a connection rather than borrow another thread's (see
//! `pop_idle`). Routing decisions (the table) never lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::error::ProxyError;
use crate::stats::{shard, SHARDS};

/// The body of a request to an instance: a replayable buffer, or the client's stream (watched,
/// so the response timer starts once it has been sent whole).
pub(crate) type UpBody = Either<Full<Bytes>, crate::proxy::Watched>;

/// A sender on one HTTP/1.1 connection to an instance.
pub(crate) type Sender = http1::SendRequest<UpBody>;

/// How long an idle connection stays in the pool. Kept *below* the keep-alive timeout of common
/// app servers (Node's 5 s; gunicorn's 2 s is handled by replaying on a stale connection), so
/// the router — not the app — is usually the one that closes an idle connection, which avoids
/// the race where the app closes it just as a request is sent.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Idle connections kept per instance (split evenly over the shards); more than the concurrency one router sends to one
/// instance in practice, few enough to bound file descriptors.
const MAX_IDLE: usize = 512;

/// How long connecting may take. Loopback refusals are immediate; this bounds black holes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The first ejection of a failing instance lasts this long; each consecutive failure doubles
/// it, up to [`EJECT_MAX`]. One success clears it.
pub const EJECT_BASE: Duration = Duration::from_secs(1);
/// The longest ejection.
pub const EJECT_MAX: Duration = Duration::from_secs(30);

/// Nanoseconds since the first call: a monotonic clock that fits in an atomic.
pub(crate) fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // +1 so that 0 can mean "not ejected" even at the epoch.
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
}

struct Idle {
    sender: Sender,
    since: Instant,
    home: usize,
}

/// A checked-out connection.
pub(crate) struct Conn {
    pub(crate) sender: Sender,
    /// It had served a request before: a failure before any response byte means the app had
    /// closed it as idle.
    pub(crate) reused: bool,
    /// The [`shard`] of the thread that opened it, whose runtime drives its I/O: it goes back
    /// to that thread's idle list, even when another thread borrowed it, so that a borrowed
    /// connection does not keep costing a cross-thread wake-up per request.
    home: usize,
}

/// The router's view of one instance address.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    /// Requests sent to this instance and not finished (response body included).
    pub(crate) outstanding: AtomicU32,
    /// [`now_nanos`] until which the instance is ejected; 0 when it is not.
    ejected_until: AtomicU64,
    /// Consecutive failures, which set the ejection's length.
    failures: AtomicU32,
    /// Idle connections, one list per [`shard`].
    idle: [Mutex<Vec<Idle>>; SHARDS],
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("outstanding", &self.outstanding.load(Ordering::Relaxed))
            .finish()
    }
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Upstream {
            addr,
            outstanding: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }

    /// Whether the instance is ejected at `now` (from [`now_nanos`]).
    pub(crate) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Records a failure that says the instance is unhealthy; returns `true` when this starts
    /// a new ejection (for the ejection counter).
    pub(crate) fn failed(&self) -> bool {
        let now = now_nanos();
        let was_ejected = self.is_ejected(now);
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let backoff = EJECT_BASE
            .saturating_mul(1 << failures.saturating_sub(1).min(5))
            .min(EJECT_MAX);
        let until = now.saturating_add(u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
        // Connections to a sick instance are suspect too.
        for shard in 0..SHARDS {
            self.lock_idle(shard).clear();
        }
        !was_ejected
    }

    /// Records a response: the instance is healthy again.
    pub(crate) fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    fn lock_idle(&self, shard: usize) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle[shard % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// This thread's most recent idle connection. Never another thread's: a borrowed
    /// connection costs two cross-thread wake-ups (an `eventfd` write each) per request, which
    /// measured worse than opening one more connection of our own.
    fn pop_idle(&self) -> Option<Idle> {
        self.lock_idle(shard()).pop()
    }

    /// A connection ready for a request: the most recently used idle one (LIFO keeps the set of
    /// warm connections small), or a new one.
    pub(crate) async fn checkout(&self) -> Result<Conn, ProxyError> {
        loop {
            let idle = self.pop_idle();
            let Some(Idle {
                mut sender,
                since,
                home,
            }) = idle
            else {
                break;
            };
            if since.elapsed() >= POOL_IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Ok(Conn {
                    sender,
                    reused: true,
                    home,
                });
            }
        }
        self.connect().await.map(|sender| Conn {
            sender,
            reused: false,
            home: shard(),
        })
    }

    /// Returns a connection whose exchange finished cleanly.
    pub(crate) fn checkin(&self, conn: Conn) {
        let Conn { sender, home, .. } = conn;
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock_idle(home);
        if idle.len() < MAX_IDLE / SHARDS {
            idle.push(Idle {
                sender,
                since: Instant::now(),
                home,
            });
        }
    }

    async fn connect(&self) -> Result<Sender, ProxyError> {
        let addr = self.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
            Err(_) => return Err(ProxyError::ConnectTimeout { addr }),
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, %addr, "set_nodelay failed");
        }
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ProxyError::NotSent { addr, source })?;
        tokio::spawn(async move {
            // `with_upgrades`: a 101 answer hands the socket over to the WebSocket tunnel.
            if let Err(err) = connection.with_upgrades().await {
                tracing::debug!(%err, %addr, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}
