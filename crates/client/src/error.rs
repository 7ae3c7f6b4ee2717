//! What a call to the server can end in, as something a person can act on.

use berth_api::control::ErrorBody;

/// Why a call to the berth server failed.
///
/// Each variant's message says what happened and, where there is one, what to do; the CLI prints
/// it as it is and exits with [`ClientError::exit_code`]. The agent and the router match on the
/// variant to decide whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client could not be set up: a server URL that is not `http://HOST:PORT`, or a token
    /// that cannot travel in an HTTP header. Nothing was sent.
    #[error("{message}")]
    Config {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// No HTTP answer: the connection was refused, dropped or timed out. The most common
    /// mistake is a server that is not running, so the message says how to point at one.
    #[error(
        "cannot reach the berth server at {url}: {}; is the server (or `berth up`) running there? check --server or BERTH_SERVER",
        root_cause(source)
    )]
    Unreachable {
        /// The server's base URL, as configured.
        url: String,
        /// The transport error; its innermost cause is in the message.
        source: reqwest::Error,
    },
    /// TLS refused the server: its certificate is not the cluster's (not signed by the trusted
    /// CA, no certificate with the join token's fingerprint), not valid for the URL's name, or
    /// it does not speak TLS; or an `http://` URL names a server that speaks TLS. Nothing was
    /// sent: no token left this process.
    #[error("refused to talk to the berth server at {url}: {reason}")]
    Tls {
        /// The server's base URL, as configured.
        url: String,
        /// Why, in words.
        reason: String,
    },
    /// 401 or 403: the token is missing, wrong, or not allowed to make this call.
    #[error("the server refused the token: {message}")]
    Unauthorized {
        /// The server's explanation.
        message: String,
    },
    /// 400: the request was malformed. For a stack file, `details` holds one
    /// `FILE:LINE:COL: message` line per problem; they are printed one per line after `message`.
    #[error("{message}{}", details.iter().map(|d| format!("\n{d}")).collect::<String>())]
    Invalid {
        /// The summary.
        message: String,
        /// One line per problem, each naming its place.
        details: Vec<String>,
    },
    /// 428: a policy refused the change until someone confirms it (`--confirm STACK`) or
    /// approves it. The CLI exits 3 for this one, so scripts can tell it from a failure.
    #[error("{message}")]
    Refused {
        /// What is needed to go ahead.
        message: String,
    },
    /// 409: the state moved since the caller looked (a plan id that no longer matches); plan
    /// again and retry.
    #[error("{message}")]
    Conflict {
        /// What moved.
        message: String,
    },
    /// 404: the named node, stack, environment or release does not exist.
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
    },
    /// Any other status: 503 when the server's store failed, 5xx, or a status this client does
    /// not know (an intermediate proxy, a newer server).
    #[error("the berth server answered {status}: {message}")]
    Server {
        /// The HTTP status code.
        status: u16,
        /// The server's message, or the start of its body when that was not an [`ErrorBody`].
        message: String,
    },
    /// A success status with a body this client cannot read: client and server versions
    /// differ, or something else answered on that address.
    #[error("cannot read the server's answer to {what}: {source}; are the client and the server the same berth version?")]
    Decode {
        /// The call, as `METHOD /path`.
        what: String,
        /// The JSON error, with its position.
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The process exit code the design's command-line contract gives this error: 3 when a
    /// policy refused the change (confirmation or approval needed), 1 for every other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Refused { .. } => 3,
            _ => 1,
        }
    }

    /// Whether trying the same call again later can succeed without anyone changing anything:
    /// the server was unreachable or answered 5xx. Followers (agent, router) keep retrying
    /// on every error anyway, but log these at a lower level than the others.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Maps a non-success answer to its variant. `body` is the raw body: an [`ErrorBody`] from
    /// berth, or anything else from something in between (then its start is the message).
    pub(crate) fn from_status(status: u16, body: &[u8]) -> ClientError {
        let (message, details) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => (b.error, b.details),
            Err(_) => (body_excerpt(body, status), Vec::new()),
        };
        match status {
            400 => ClientError::Invalid { message, details },
            401 | 403 => ClientError::Unauthorized { message },
            404 => ClientError::NotFound { message },
            409 => ClientError::Conflict { message },
            428 => ClientError::Refused { message },
            _ => ClientError::Server { status, message },
        }
    }
}

/// The first line of a non-JSON error body, bounded, or a placeholder when it is empty.
fn body_excerpt(body: &[u8], status: u16) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty());
    match line {
        Some(l) if l.chars().count() > MAX => {
            format!("{}…", l.chars().take(MAX).collect::<String>())
        }
        Some(l) => l.to_string(),
        None => format!("HTTP {status} with no explanation"),
    }
}

/// The innermost error in a chain: for a transport error, the part that says what happened
/// (`Connection refused (os error 111)`, `operation timed out`) rather than reqwest's wrapper.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants_and_exit_codes() {
        let body = br#"{"error":"needs --confirm shop"}"#;
        let refused = ClientError::from_status(428, body);
        assert!(
            matches!(&refused, ClientError::Refused { message } if message == "needs --confirm shop")
        );
        assert_eq!(refused.exit_code(), 3);
        for (status, check) in [
            (401, "Unauthorized"),
            (403, "Unauthorized"),
            (404, "NotFound"),
            (409, "Conflict"),
            (503, "Server"),
            (418, "Server"),
        ] {
            let e = ClientError::from_status(status, body);
            assert!(format!("{e:?}").starts_with(check), "{status}: {e:?}");
            assert_eq!(e.exit_code(), 1);
        }
    }

    #[test]
    fn invalid_prints_one_detail_per_line() {
        let e = ClientError::from_status(
            400,
            br#"{"error":"invalid stack file","details":["a.yaml:3:5: bad","a.yaml:9:1: worse"]}"#,
        );
        assert_eq!(
            e.to_string(),
            "invalid stack file\na.yaml:3:5: bad\na.yaml:9:1: worse"
        );
    }

    #[test]
    fn a_foreign_body_becomes_a_bounded_message() {
        let e = ClientError::from_status(502, b"\n<html>Bad Gateway</html>\n");
        assert_eq!(
            e.to_string(),
            "the berth server answered 502: <html>Bad Gateway</html>"
        );
        let long = vec![b'x'; 10_000];
        let e = ClientError::from_status(500, &long);
        assert!(e.to_string().len() < 300);
        let e = ClientError::from_status(500, b"");
        assert!(e.to_string().contains("no explanation"));
    }
}
