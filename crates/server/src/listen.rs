//! The API's accept loop: one task per connection, plain HTTP or TLS, HTTP/1.1 and HTTP/2 on
//! the same port, and a graceful stop that lets requests in flight finish.
//!
//! It is its own loop (not `axum::serve`) because the control plane needs what `axum::serve`
//! does not offer: TLS, and — per connection — the peer's address for every handler (as
//! [`axum::extract::ConnectInfo`]), so authentication can log and limit by source.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long in-flight requests get to finish once the server is told to stop.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves; with `tls`, every connection is a TLS
/// connection (ALPN `h2` and `http/1.1`). Each request carries the peer's address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "the API could not accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(TokioIo::new(stream), peer, app, watcher).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve_connection(TokioIo::new(tls), peer, app, watcher).await,
                    Err(err) => {
                        tracing::debug!(%peer, error = %err, "TLS handshake with the API failed")
                    }
                },
            }
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

/// Serves one connection's requests through `app`, each tagged with the peer's address.
async fn serve_connection<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    app: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(req)
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(err) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %err, "API connection ended with an error");
    }
}
