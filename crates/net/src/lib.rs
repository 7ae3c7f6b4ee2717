//! berth-net: what every berth listener needs to stay up when clients misbehave, shared by
//! the control plane's API (`berth-server`) and the router (`berth-router`), which must not
//! import each other (shells talk only through `berth-api`).
//!
//! - [`head_guard`] — the slowloris and idle keep-alive guard: one timer per connection.
//! - [`conn_limit`] — a cap on open connections, per source and overall, with a reserve for
//!   sources that have authenticated before; idle connections make room, busy ones never.
//! - [`fd_limit`] — raise `RLIMIT_NOFILE` (soft to hard) at start.
//! - [`widen_backlog`] — a deep accept queue on a listener bound elsewhere.
//! - [`HEADER_READ_TIMEOUT`], [`ACCEPT_BACKOFF`], [`LISTEN_BACKLOG`] — the shared defaults.

#![warn(missing_docs)]

pub mod conn_limit;
pub mod fd_limit;
pub mod head_guard;

use std::time::Duration;

pub use conn_limit::{ConnLimiter, ConnLimits, Refused, Slot};
pub use fd_limit::{fd_limit, raise_fd_limit, raise_fd_limit_or_warn, FdLimit};
pub use head_guard::{Activity, Busy, Tracked};

/// How long a connection with no request in progress may take to deliver the next request
/// head before it is closed: the slowloris guard, which is also the idle keep-alive limit (and,
/// for TLS, bounds the handshake). 30 s, as nginx's `client_header_timeout` defaults to 60 s and
/// HAProxy's examples use 10–30 s: long enough for any honest client on a slow link.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause after a failed `accept` (e.g. out of file descriptors, `EMFILE`) so an accept loop
/// does not spin on an error that only time (a connection closing) can clear.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The accept queue a listener should have: room for a burst of connections while the accept
/// loop is busy (the kernel caps it at `net.core.somaxconn`, 4,096 by default since Linux 5.4).
/// The router's listeners use the same depth.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Deepens `listener`'s accept queue to [`LISTEN_BACKLOG`] by calling `listen(2)` again, which
/// on Linux (and the BSDs) only updates the backlog of a listening socket. Tokio's and std's
/// `bind` listen with 128: a burst of a few hundred connections overflows that, and the kernel
/// then drops handshakes it has already answered, leaving clients with connections the server
/// never sees (and no cap or timeout can close).
pub fn widen_backlog(listener: &tokio::net::TcpListener) -> std::io::Result<()> {
    socket2::SockRef::from(listener).listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn widen_backlog_keeps_the_listener_working() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        widen_backlog(&listener).expect("listen again");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        listener.accept().await.expect("accept");
    }
}
