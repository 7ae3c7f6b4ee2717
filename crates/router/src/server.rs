//! The accept loop: one task per downstream connection, HTTP/1.1 and h2c on the same port,
//! optional TLS, an optional metrics listener, graceful stop on a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::proxy::{ConnInfo, Proxy};
use crate::RouterHandle;

/// How long a client may take to send a request head before its connection is closed
/// (slowloris guard).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most header fields a request may carry (HTTP/1.1); more gets `431`.
pub const MAX_HEADERS: usize = 100;
/// The largest request head, in bytes: hyper's read buffer for HTTP/1.1 (a head that does not
/// fit gets `431`) and the HTTP/2 header-list limit.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop doesn't spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Options for [`serve_with`]; `RouterConfig::default()` is what [`serve`] uses.
#[derive(Default)]
pub struct RouterConfig {
    /// A listener for `GET /metrics` (Prometheus text). Separate from the proxy listener so
    /// that no routed host can shadow it and it need not be exposed where traffic arrives;
    /// `None`: no metrics endpoint ([`RouterHandle::metrics_text`] still works).
    pub metrics: Option<TcpListener>,
    /// Log one `info` line per request on the `berth_router::access` tracing target
    /// (method, host, path, status, service, endpoint, attempts, time to response head,
    /// request id, error kind and fault).
    pub access_log: bool,
}

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field(
                "metrics",
                &self.metrics.as_ref().and_then(|l| l.local_addr().ok()),
            )
            .field("access_log", &self.access_log)
            .finish()
    }
}

/// Serves HTTP on `listener` with the default [`RouterConfig`]; see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    handle: RouterHandle,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, handle, RouterConfig::default(), shutdown).await;
}

/// Serves HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on `listener`, proxying by the routes
/// in `handle`, until `shutdown` completes.
///
/// The caller binds the listener (tests bind port 0 and read the address back) and owns the
/// shutdown signal, so the router can be embedded in `berth up`, in an agent, or run alone.
/// The routing table is read from `handle` on every request, so [`RouterHandle::update`] takes
/// effect immediately, even on keep-alive connections that are already open.
///
/// On shutdown it stops accepting, lets in-flight requests finish, closes idle keep-alive
/// connections, and returns once every connection is done. Accept errors (such as running out
/// of file descriptors) are logged and retried rather than returned: a router stays up.
pub async fn serve_with(
    listener: TcpListener,
    handle: RouterHandle,
    config: RouterConfig,
    shutdown: impl Future<Output = ()>,
) {
    let proxy = Arc::new(Proxy {
        handle: handle.clone(),
        access_log: config.access_log,
    });
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD_BYTES).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = config.metrics.map(|listener| {
        tokio::spawn(serve_metrics(listener, handle, async {
            let _ = metrics_stopped.await;
        }))
    });
    tokio::pin!(shutdown);

    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, %remote, "set_nodelay failed");
        }
        let info = ConnInfo { remote, tls: false };
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(info, request).await) }
        });
        let connection = graceful.watch(
            http.serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %remote, "connection ended with an error");
            }
        });
    }

    drop(listener);
    let _ = stop_metrics.send(());
    graceful.shutdown().await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
}

/// Answers `GET /metrics` with [`RouterHandle::metrics_text`], anything else with 404.
async fn serve_metrics(
    listener: TcpListener,
    handle: RouterHandle,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "metrics accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let handle = handle.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let handle = handle.clone();
            async move { Ok::<_, std::convert::Infallible>(metrics_response(&handle, &request)) }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%err, %remote, "metrics connection ended with an error");
            }
        });
    }
}

fn metrics_response(handle: &RouterHandle, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.metrics_text(),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only /metrics here\n".to_owned(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
