//! The API's JSON bodies under a fuzzer (hidden from the docs: for `fuzz/fuzz_targets/api_bodies.rs`,
//! the corpus replay in `tests/fuzz_corpus.rs` and its property test).
//!
//! [`ApiFuzzer`] is a real server's router ([`crate::http::router`]) over a real embedded store
//! in a temporary directory, with a node registered, called in-process: each input is one
//! request to one of the endpoints that take a JSON body, decoded and validated by the very
//! handlers that serve them (axum's `Json` extractor, then each handler's checks).
//!
//! ## Input format
//! The first line names the endpoint, the rest is the body, sent as `application/json`:
//! - `register`  — `POST /v1/nodes/register` with the join token;
//! - `heartbeat` — `POST /v1/nodes/fuzz-node/heartbeat` with that node's token;
//! - `deploy`    — `POST /v1/deploy` with the admin token;
//! - `plan`      — `POST /v1/plan` with the admin token;
//! - `secret`    — `PUT /v1/secrets/shop/FUZZ` with the admin token.
//!
//! Anything else (bytes without such a line) goes whole to the endpoint picked by its first
//! byte, so arbitrary bytes reach every handler too.
//!
//! ## Invariants
//! No panic, no 5xx answer (a malformed body is a 4xx naming the field, never a server error),
//! and the answer comes within [`ANSWER_DEADLINE`]. Allocation is bounded by libFuzzer's
//! `-rss_limit_mb`/`-malloc_limit_mb`; the body limit of the API applies as in production.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use tower::ServiceExt;

use crate::{Clock, ServerConfig, Shared};

/// The longest one request may take before the input counts as a hang.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// The node registered at start, whose token heartbeats use.
pub const NODE: &str = "fuzz-node";

/// The endpoints an input may name, in the order a first byte picks them.
pub const ENDPOINTS: [&str; 5] = ["register", "heartbeat", "deploy", "plan", "secret"];

/// A server's API in-process, for one fuzzing or replay run. Dropping it removes its directory.
pub struct ApiFuzzer {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    admin: String,
    join: String,
    node: String,
    dir: PathBuf,
    /// Keeps the live view's follower running (as `serve` does): handlers read the view and
    /// wait for it to have their own writes.
    _follow: tokio::sync::watch::Sender<bool>,
}

/// Why an input failed an invariant.
#[derive(Debug, thiserror::Error)]
pub enum FuzzFailure {
    /// The server answered 5xx.
    #[error("{endpoint}: the server answered {status}: {body}")]
    ServerError {
        endpoint: &'static str,
        status: u16,
        body: String,
    },
    /// No answer within [`ANSWER_DEADLINE`].
    #[error("{endpoint}: no answer within {ANSWER_DEADLINE:?}")]
    Hang { endpoint: &'static str },
}

impl ApiFuzzer {
    /// A fresh server in a new temporary directory, with [`NODE`] registered.
    ///
    /// Panics if it cannot start (no temporary directory, no runtime): a harness without a
    /// server would test nothing.
    pub fn new() -> ApiFuzzer {
        let dir = std::env::temp_dir().join(format!(
            "berth-api-fuzz-{}-{}",
            std::process::id(),
            crate::auth::generate()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for the fuzzed server");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (follow, stop) = tokio::sync::watch::channel(false);
        let (router, admin, join) = runtime.block_on(async {
            let store = berth_store::EmbeddedStore::open(dir.join("state.redb"))
                .await
                .expect("the store opens");
            let shared = Shared::new(ServerConfig {
                data_dir: dir.clone(),
                store: Arc::new(store),
                clock: Clock::system(),
                tls: None,
                secrets_key_file: None,
            })
            .await
            .expect("the server's state");
            let follower = shared.clone();
            tokio::spawn(async move { follower.view.follow(follower.store.as_ref(), stop).await });
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .expect("a token file")
                    .trim()
                    .to_string()
            };
            (
                crate::http::router(shared),
                read("admin.token"),
                read("join.token"),
            )
        });
        let mut fuzzer = ApiFuzzer {
            runtime,
            router,
            admin,
            join,
            node: String::new(),
            dir,
            _follow: follow,
        };
        let register = serde_json::json!({
            "name": NODE,
            "labels": {},
            "resources": {"cpu_millis": 4000, "memory_bytes": 8u64 << 30},
            "drivers": ["process"],
            "address": "127.0.0.1",
            "router": null,
        });
        let (status, body) = fuzzer.call("register", register.to_string().as_bytes());
        assert_eq!(status, 200, "the fuzz node registers: {body}");
        fuzzer.node = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["node_token"].as_str().map(str::to_string))
            .expect("a node token");
        fuzzer
    }

    /// Runs one input (see the module docs for its format); `Ok` with the status it got.
    pub fn run(&self, input: &[u8]) -> Result<u16, FuzzFailure> {
        let (endpoint, body) = split(input);
        let answer = self.runtime.block_on(async {
            tokio::time::timeout(ANSWER_DEADLINE, self.send(endpoint, body)).await
        });
        match answer {
            Err(_) => Err(FuzzFailure::Hang { endpoint }),
            Ok((status, body)) if status >= 500 => Err(FuzzFailure::ServerError {
                endpoint,
                status,
                body,
            }),
            Ok((status, _)) => Ok(status),
        }
    }

    fn call(&self, endpoint: &'static str, body: &[u8]) -> (u16, String) {
        self.runtime.block_on(self.send(endpoint, body))
    }

    async fn send(&self, endpoint: &'static str, body: &[u8]) -> (u16, String) {
        let (method, path, token) = match endpoint {
            "register" => (Method::POST, "/v1/nodes/register".to_string(), &self.join),
            "heartbeat" => (
                Method::POST,
                format!("/v1/nodes/{NODE}/heartbeat"),
                &self.node,
            ),
            "deploy" => (Method::POST, "/v1/deploy".to_string(), &self.admin),
            "plan" => (Method::POST, "/v1/plan".to_string(), &self.admin),
            _ => (
                Method::PUT,
                "/v1/secrets/shop/FUZZ".to_string(),
                &self.admin,
            ),
        };
        let mut request = match Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_vec()))
        {
            Ok(r) => r,
            Err(e) => return (400, format!("the request cannot be built: {e}")),
        };
        // As the API's accept loop does for every connection.
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                9,
            ))));
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

impl Default for ApiFuzzer {
    fn default() -> Self {
        ApiFuzzer::new()
    }
}

impl Drop for ApiFuzzer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The endpoint an input names and its body.
pub fn split(input: &[u8]) -> (&'static str, &[u8]) {
    let (first, rest) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    if let Some(name) = ENDPOINTS.iter().find(|e| e.as_bytes() == first) {
        return (name, rest);
    }
    let pick = input.first().map_or(0, |b| *b as usize % ENDPOINTS.len());
    (ENDPOINTS[pick], input)
}
