//! Why a forwarded request got no response from an instance, whose fault that was, and whether
//! sending it again (to another instance) is safe.
//!
//! This is pingora's lesson: a router decides about retries, ejection and the status it answers
//! from two facts about every failure — *whose fault* and *was the request possibly seen by the
//! app* — so the error type carries both instead of leaving every caller to guess from a
//! message.

use std::net::SocketAddr;

/// Who caused a failed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client: it went away or sent a body that broke off. Never retried, never held
    /// against an instance.
    Client,
    /// The instance: refused or dropped the connection, or broke the protocol.
    Upstream,
    /// The router itself (a request it could not rewrite, say).
    Router,
}

impl Fault {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Client => "client",
            Fault::Upstream => "upstream",
            Fault::Router => "router",
        }
    }
}

/// A failed attempt to get a response head from an instance.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection could be made: nothing was sent, so any request may go elsewhere.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The instance.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The connection attempt took longer than the connect timeout (a black-holed address).
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// The instance.
        addr: SocketAddr,
    },
    /// The connection was gone before the request was written, and hyper handed the request
    /// back untouched: safe to send anywhere.
    #[error("connection to {addr} closed before the request was sent: {source}")]
    NotSent {
        /// The instance.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// A *reused* keep-alive connection ended before any byte of a response: the instance
    /// closed it as idle while the request was on its way (hyper#2136, envoy#1979), so the app
    /// never saw the request. Safe to replay whatever the method, if the body can be replayed.
    #[error("{addr} closed a reused connection before answering: {source}")]
    StaleConnection {
        /// The instance.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request was (at least partly) sent and the exchange then failed without a response
    /// head. The app may have acted on it: only idempotent requests may be retried.
    #[error("exchange with {addr} failed after the request was sent: {source}")]
    Exchange {
        /// The instance.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The client's request body failed while it was being read or forwarded.
    #[error("the client's request body failed: {source}")]
    ClientBody {
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The client did not deliver its (small, buffered) request body within the body timeout:
    /// answered `408`, and nothing is forwarded (an instance must never get a `Content-Length`
    /// the body does not fill).
    #[error("the client did not send its request body within {after:?}")]
    ClientBodyTimeout {
        /// The limit that passed.
        after: std::time::Duration,
    },
    /// The request was sent and the instance sent no response head within the route's
    /// timeout: answered `504`. Not retried (the app may still be working on it) and not
    /// ejected (slow is not dead).
    #[error("{addr} sent no response head within {after:?}")]
    ResponseTimeout {
        /// The instance.
        addr: SocketAddr,
        /// The limit that passed.
        after: std::time::Duration,
    },
    /// The instance answered with a response the router will not forward: both
    /// `Content-Length` and `Transfer-Encoding` (a request-smuggling shape, RFC 9112 §6.1),
    /// or a `101` to a request that asked for no protocol switch. Answered `502`; the
    /// connection is closed, since its framing cannot be trusted.
    #[error("{addr} sent a malformed response: {reason}")]
    BadResponse {
        /// The instance.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: &'static str,
    },
}

impl ProxyError {
    /// Whose fault the failure was.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::ClientBody { .. } | ProxyError::ClientBodyTimeout { .. } => Fault::Client,
            _ => Fault::Upstream,
        }
    }

    /// Whether the request can be sent again to another instance without risking a second
    /// effect in the app, given whether the request is `idempotent`. (Whether the *body* can
    /// be replayed is a separate question the proxy answers.)
    pub fn retry_safe(&self, idempotent: bool) -> bool {
        match self {
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::NotSent { .. }
            | ProxyError::StaleConnection { .. } => true,
            ProxyError::Exchange { .. } => idempotent,
            ProxyError::ClientBody { .. }
            | ProxyError::ClientBodyTimeout { .. }
            | ProxyError::ResponseTimeout { .. }
            | ProxyError::BadResponse { .. } => false,
        }
    }

    /// Whether the failure says the instance is unhealthy, so it should be ejected for a
    /// while. A stale keep-alive connection is normal life, not sickness.
    pub fn ejects(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Exchange { .. }
        )
    }

    /// Whether the request's bytes went out on a connection before it failed (so an app may
    /// have seen it, or at least had the chance): the proxy sends one request at most twice.
    pub(crate) fn was_written(&self) -> bool {
        matches!(
            self,
            ProxyError::StaleConnection { .. }
                | ProxyError::Exchange { .. }
                | ProxyError::ResponseTimeout { .. }
                | ProxyError::BadResponse { .. }
        )
    }

    /// Whether the instance was never reached at all (the client gets "unreachable" rather than
    /// "failed").
    pub(crate) fn unreachable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. }
        )
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Connect { .. } => "connect",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::NotSent { .. } => "not_sent",
            ProxyError::StaleConnection { .. } => "stale_connection",
            ProxyError::Exchange { .. } => "exchange",
            ProxyError::ClientBody { .. } => "client_body",
            ProxyError::ClientBodyTimeout { .. } => "client_body_timeout",
            ProxyError::ResponseTimeout { .. } => "response_timeout",
            ProxyError::BadResponse { .. } => "bad_response",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_slow_client_body_is_the_clients_fault_and_never_retried() {
        // What the access log's `error` and `fault` fields say for item 12's 408.
        let err = ProxyError::ClientBodyTimeout {
            after: Duration::from_secs(30),
        };
        assert_eq!(
            (err.fault(), err.kind()),
            (Fault::Client, "client_body_timeout")
        );
        assert!(!err.retry_safe(true) && !err.ejects());
    }

    #[test]
    fn timeouts_and_bad_responses_are_the_instances_and_never_retried() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        for err in [
            ProxyError::ResponseTimeout {
                addr,
                after: Duration::from_secs(1),
            },
            ProxyError::BadResponse {
                addr,
                reason: "both Content-Length and Transfer-Encoding",
            },
        ] {
            assert_eq!(err.fault(), Fault::Upstream, "{err}");
            assert!(!err.retry_safe(true), "{err}");
            assert!(err.was_written(), "{err}");
            assert!(!err.ejects(), "slow or odd is not dead: {err}");
        }
    }
}
