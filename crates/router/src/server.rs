//! The accept loop: one task per downstream connection, graceful stop on a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::proxy::{backend_client, Proxy};
use crate::RouterHandle;

/// How long a client may take to send a request head before its connection is closed
/// (slowloris guard; finer limits come with the production-grade router).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop doesn't spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves HTTP/1.1 on `listener`, proxying by the routes in `handle`, until `shutdown` completes.
///
/// The caller binds the listener (tests bind port 0 and read the address back) and owns the
/// shutdown signal, so the router can be embedded in `berth up`, in an agent, or run alone.
/// The routing table is read from `handle` on every request, so [`RouterHandle::update`] takes
/// effect immediately, even on keep-alive connections that are already open.
///
/// On shutdown it stops accepting, lets in-flight requests finish, closes idle keep-alive
/// connections, and returns once every connection is done. Accept errors (such as running out
/// of file descriptors) are logged and retried rather than returned: a router stays up.
pub async fn serve(
    listener: TcpListener,
    handle: RouterHandle,
    shutdown: impl Future<Output = ()>,
) {
    let proxy = Arc::new(Proxy {
        handle,
        client: backend_client(),
    });
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
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
        let proxy = proxy.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle(remote, request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, %remote, "connection ended with an error");
            }
        });
    }

    drop(listener);
    graceful.shutdown().await;
}
