//! The API's accept loop: one task per connection, plain HTTP or TLS, HTTP/1.1 and HTTP/2 on
//! the same port, and a graceful stop that lets requests in flight finish.
//!
//! It is its own loop (not `axum::serve`) because the control plane needs what `axum::serve`
//! does not offer: TLS, and — per connection — the peer's address for every handler (as
//! [`axum::extract::ConnectInfo`]), so authentication can log and limit by source.
//!
//! ## Limits (issue 10: anyone who can reach the API must not be able to exhaust it)
//! - **Head and idle timeout** ([`ApiLimits::head_timeout`], 30 s): a connection with no
//!   request in progress must deliver a complete request head within the limit — counted from
//!   the accept (a TLS handshake included) or from the end of the previous response — or it is
//!   closed. That bounds slowloris heads, stalled handshakes and idle keep-alive alike, with one
//!   timer per connection ([`berth_net::head_guard`], shared with the router). A request in
//!   progress is never idle: long-polls (`/v1/nodes/NAME/desired`, `/v1/routes`) and the
//!   `/v1/events` stream last as long as they need.
//! - **Connection cap** ([`ApiLimits::connections`], [`berth_net::conn_limit`]): sized from the
//!   open-files limit (three quarters of it; the CLI raises the soft limit to the hard one at
//!   start), with a quarter reserved for sources that have authenticated before and a cap per
//!   unknown source. A full cap closes the connection idle longest to admit a newcomer, never
//!   one with a request in progress. A source becomes known when a request carrying a bearer
//!   token to anything but a public path ([`PUBLIC_PATHS`]) gets a 2xx answer: every other
//!   route checks the token first.
//! - **Accept queue** ([`berth_net::widen_backlog`]): 4,096 deep, so a burst of connections is
//!   queued rather than half-opened and lost.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_net::{Activity, ConnLimiter, ConnLimits, Tracked};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long in-flight requests get to finish once the server is told to stop.
///
/// Well under the 10 s grace `berth up` and `berth server` give their parts after SIGTERM:
/// long-polls (agents, routers) and event streams (`berth events -f`) never finish on their
/// own, and were this the whole grace, any follower would turn every stop into the forced
/// `exit 1` (followers reconnect to the next server by themselves).
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

/// Paths that answer without a token, so a 2xx there proves nothing about the caller.
pub const PUBLIC_PATHS: &[&str] = &["/v1/health"];

/// The environment variable that shortens (or lengthens) the head/idle timeout, in
/// milliseconds: for tests, which cannot wait 30 s per case. Not part of the CLI contract.
pub const HEAD_TIMEOUT_ENV: &str = "BERTH_API_HEAD_TIMEOUT_MS";

/// How often, at most, refused connections are logged (with a count): a flood must not turn
/// into a flood of log lines.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The API listener's limits; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// How long a connection with no request in progress may take to send a complete request
    /// head (from its accept or the end of its last response) before it is closed.
    pub head_timeout: Duration,
    /// The connection cap, its reserve for known sources and its per-source share.
    pub connections: ConnLimits,
}

impl ApiLimits {
    /// The limits for this process: [`berth_net::HEADER_READ_TIMEOUT`] unless
    /// [`HEAD_TIMEOUT_ENV`] says otherwise, and a connection cap sized from the current
    /// open-files limit (raise it first: [`berth_net::raise_fd_limit`]).
    pub fn from_env() -> ApiLimits {
        let head_timeout = match std::env::var(HEAD_TIMEOUT_ENV) {
            Err(_) => berth_net::HEADER_READ_TIMEOUT,
            Ok(text) => match text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    tracing::warn!(value = %text, "{HEAD_TIMEOUT_ENV} is not a positive number of milliseconds; using the default");
                    berth_net::HEADER_READ_TIMEOUT
                }
            },
        };
        // Without a readable limit, assume the common default of 1,024.
        let files = berth_net::fd_limit().map(|l| l.soft).unwrap_or(1024);
        ApiLimits {
            head_timeout,
            connections: ConnLimits::for_fd_limit(files),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, with [`ApiLimits::from_env`]; see
/// [`serve_api_with`].
pub async fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_api_with(listener, app, tls, ApiLimits::from_env(), shutdown).await
}

/// Serves `app` on `listener` until `shutdown` resolves; with `tls`, every connection is a TLS
/// connection (ALPN `h2` and `http/1.1`). Each request carries the peer's address as
/// `ConnectInfo<SocketAddr>`. Connections are bounded by `limits` (module documentation).
pub async fn serve_api_with(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ApiLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Err(err) = berth_net::widen_backlog(&listener) {
        tracing::warn!(error = %err, "cannot deepen the API's accept queue; bursts of connections may be dropped");
    }
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let limiter = ConnLimiter::new(limits.connections);
    tracing::debug!(?limits, "API connection limits");
    let graceful = GracefulShutdown::new();
    let mut refused = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "the API could not accept a connection");
                    tokio::time::sleep(berth_net::ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(slot) = limiter.admit(peer.ip()) else {
            // Full of requests in progress: closing the socket now is the cheapest answer.
            refused.count(peer);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let limiter = limiter.clone();
        let head_timeout = limits.head_timeout;
        tokio::spawn(async move {
            let activity = slot.activity().clone();
            let work = async move {
                match acceptor {
                    None => {
                        serve_connection(
                            TokioIo::new(stream),
                            peer,
                            app,
                            watcher,
                            activity,
                            limiter,
                        )
                        .await
                    }
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => {
                            serve_connection(
                                TokioIo::new(tls),
                                peer,
                                app,
                                watcher,
                                activity,
                                limiter,
                            )
                            .await
                        }
                        Err(err) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake with the API failed")
                        }
                    },
                }
            };
            // One deadline covers the handshake, the first head and every idle spell after.
            tokio::select! {
                () = work => {}
                () = slot.activity().idle_for(head_timeout) => {
                    tracing::debug!(%peer, "no request head within the limit; closing the API connection");
                }
                () = slot.evicted() => {
                    tracing::debug!(%peer, "closing an idle API connection to make room for a new one");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_DEADLINE) => {
            tracing::warn!("API connections still open after the drain deadline; closing them");
        }
    }
    Ok(())
}

/// Refused connections, logged at most every [`REFUSAL_LOG_EVERY`].
#[derive(Default)]
struct Refusals {
    since_log: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn count(&mut self, peer: SocketAddr) {
        self.since_log += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY)
        {
            tracing::warn!(
                %peer,
                refused = self.since_log,
                "the API refused connections: its connection cap is full of requests in progress"
            );
            self.since_log = 0;
            self.logged = Some(crate::clock::instant_now());
        }
    }
}

/// Serves one connection's requests through `app`, each tagged with the peer's address and
/// marking the connection busy (in `activity`) until its response has been sent.
async fn serve_connection<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
    activity: Arc<Activity>,
    limiter: Arc<ConnLimiter>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let busy = activity.begin();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let authenticates = req
                .headers()
                .contains_key(axum::http::header::AUTHORIZATION)
                && !PUBLIC_PATHS.contains(&req.uri().path());
            let limiter = limiter.clone();
            let response = app.clone().oneshot(req);
            async move {
                let response = response.await?;
                if authenticates && response.status().is_success() {
                    limiter.mark_known(peer.ip());
                }
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
            }
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The head guard (one timer per connection) replaces hyper's per-head timer.
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(err) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %err, "API connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const LIMIT: Duration = Duration::from_millis(500);
    /// A loaded CI machine may wake the guard late; it must still be well under "never".
    const LATE: Duration = Duration::from_secs(5);

    fn limits() -> ApiLimits {
        ApiLimits {
            head_timeout: LIMIT,
            connections: ConnLimits::new(64, 16, 64),
        }
    }

    fn app() -> axum::Router {
        axum::Router::new()
            .route("/v1/health", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(LIMIT * 3).await;
                    "done\n"
                }),
            )
    }

    fn tls_config() -> Arc<rustls::ServerConfig> {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
        let key = rustls::pki_types::PrivateKeyDer::try_from(generated.signing_key.serialize_der())
            .expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![generated.cert.der().clone()], key)
        .expect("certificate");
        Arc::new(config)
    }

    async fn start(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve_api_with(
            listener,
            app(),
            tls,
            limits(),
            std::future::pending(),
        ));
        addr
    }

    /// How long until the server closes `stream`, which sends `first` and then nothing.
    async fn closed_after(stream: &mut TcpStream, first: &[u8]) -> Duration {
        let opened = crate::clock::instant_now();
        stream.write_all(first).await.expect("write");
        let mut buf = [0u8; 1024];
        tokio::time::timeout(LATE, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server never closed the connection");
        opened.elapsed()
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_closed_at_the_head_timeout() {
        let addr = start(Some(tls_config())).await;
        // Nothing at all, then the start of a TLS record that never completes.
        for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02][..]] {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let after = closed_after(&mut stream, first).await;
            assert!(
                after >= LIMIT - Duration::from_millis(100),
                "closed early: {after:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_idle_or_slow_head_is_closed_but_a_long_request_is_not() {
        let addr = start(None).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let after = closed_after(&mut idle, b"").await;
        assert!(
            after >= LIMIT - Duration::from_millis(100),
            "closed early: {after:?}"
        );
        let mut partial = TcpStream::connect(addr).await.expect("connect");
        closed_after(&mut partial, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n").await;

        // A request that takes three times the limit is answered, and the kept-alive
        // connection is closed one limit after it.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(LATE, async {
            while !String::from_utf8_lossy(&raw).contains("done") {
                let n = stream.read(&mut buf).await.expect("read");
                assert!(
                    n > 0,
                    "closed during the request: {:?}",
                    String::from_utf8_lossy(&raw)
                );
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the long request was answered");
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
        let idle_after = closed_after(&mut stream, b"").await;
        assert!(
            idle_after >= LIMIT - Duration::from_millis(100),
            "the kept-alive connection closed {idle_after:?} after its response"
        );
    }

    #[tokio::test]
    async fn a_full_cap_closes_an_idle_connection_for_a_newcomer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = ApiLimits {
            head_timeout: Duration::from_secs(60),
            connections: ConnLimits::new(4, 0, 4),
        };
        tokio::spawn(serve_api_with(
            listener,
            app(),
            None,
            limits,
            std::future::pending(),
        ));
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Let the server admit all four before the newcomer.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut newcomer = TcpStream::connect(addr).await.expect("connect");
        newcomer
            .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(LATE, newcomer.read_to_end(&mut raw))
            .await
            .expect("answered")
            .expect("read");
        assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"));
        // The oldest idle connection made room: the server closed it.
        closed_after(&mut idle[0], b"").await;
    }
}
