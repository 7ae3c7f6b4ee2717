//! berth-client: a typed HTTP client for `berth server`'s `/v1` API.
//!
//! The CLI, the agent and the router all talk to the server through this one crate, so the
//! URLs, the bearer token, the long-poll timeouts and the mapping of error statuses to
//! something a person can act on are written once. It depends on `berth-api` for the wire
//! types and never on the server (the design's rule: shells speak to each other over HTTP).
//!
//! # Map
//! - [`Client`] — one method per route; cheap to clone (connections are pooled and shared).
//! - [`ClientError`] — how a call failed, with [`exit_code`](ClientError::exit_code) for the
//!   CLI and [`is_transient`](ClientError::is_transient) for followers that retry.
//! - `sse` (private) — the incremental `text/event-stream` decoder behind [`Client::events`].
//!
//! # Vocabulary
//! - **base URL** — where the server listens, `http://HOST:PORT` (`--server`, `BERTH_SERVER`),
//!   possibly with a path prefix when it sits behind a proxy.
//! - **token** — the bearer credential: the admin token (people, CI), the join token (an agent's
//!   first call), or a node token (every later call of that agent).
//! - **long-poll** — a `GET` that the server holds until what the caller should hold differs
//!   from the `version` it sent, or until `wait` runs out; then it answers with the current state
//!   either way. Agents and routers pull their state this way (they dial the server, never the
//!   reverse), and the `version` they send doubles as an acknowledgement of what they applied.
//! - **event stream** — `GET /v1/events`: server-sent events, one JSON [`Event`] per `data:`
//!   line, ending when the server ends it (`follow=false`) or never (`follow=true`).
//!
//! # Transport
//! HTTP/1.1 with reqwest, plain (`http://`) or TLS (`https://`, rustls on ring). An `https://`
//! client trusts only the cluster CA ([`ServerTrust`]: a CA file, or the CA's fingerprint from
//! the join token), never the system's CAs; one without a trust is refused up front with a
//! message that says what to pass, rather than failing on every call. Proxies from the
//! environment (`HTTP_PROXY`, `NO_PROXY`) are honoured except for loopback servers, which a
//! proxy can never reach on the caller's behalf.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod sse;
mod tls;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use berth_api::control::{
    DeployRequest, DeployResponse, DesiredInstances, Event, GcResponse, Heartbeat,
    MaintenanceRequest, NodeView, RegisterRequest, RegisterResponse, Release, RollbackRequest,
    RoutingTable, SecretKeyRotated, SecretPut, SecretView, StackRemoveRequest, StatusView,
    TrafficReport,
};
use bytes::Bytes;
use futures::Stream;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::ClientError;
pub use tls::{fingerprint, to_pem, ServerTrust};

/// How long to wait for a TCP connection: a server on the same network accepts in
/// milliseconds, so anything longer means it is down or unreachable, and the caller (a person,
/// or a follower's retry loop) should hear it soon.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an ordinary call may take in all. Generous, since a deploy of a large stack plans
/// and writes a release; short enough that a hung server does not hang a script forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a long-poll's request timeout adds to the `wait` the server is asked to honour, so a
/// server answering right at the end of its wait is never cut off by the client.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(10);

/// A client for one berth server, with one token.
///
/// Cheap to clone: clones share the connection pool. Every method is one HTTP call; none
/// retries, because what a retry means differs per caller (a person wants the error now; a
/// follower wants to back off and keep its last state).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `Bearer TOKEN`, marked sensitive so it never shows in debug output.
    auth: Option<HeaderValue>,
    /// The CA found in the server's chain by a [`ServerTrust::Fingerprint`] client.
    learned: Option<tls::Learned>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.auth.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url` (`http://HOST:PORT`, optionally with a path
    /// prefix), sending `token` as a bearer token when there is one.
    ///
    /// Checks everything that can be checked without the network, so a typo in `--server` or
    /// a token file with a stray byte is reported once, here, rather than on every call.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::with_trust(base_url, token, None)
    }

    /// Like [`Client::new`], trusting `trust` for an `https://` server. An `https://` URL needs
    /// one (berth's control plane is trusted by its cluster CA only); a fingerprint with an
    /// `http://` URL is refused, since the token it came with would travel in clear text.
    pub fn with_trust(
        base_url: &str,
        token: Option<String>,
        trust: Option<ServerTrust>,
    ) -> Result<Client, ClientError> {
        let base = parse_base(base_url)?;
        let auth = token.map(|t| bearer(&t)).transpose()?;
        tls::install_ring_provider();
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if is_loopback(&base) {
            builder = builder.no_proxy();
        }
        match (base.scheme(), &trust) {
            ("https", Some(_)) => builder = builder.https_only(true),
            ("https", None) => {
                return Err(ClientError::Config {
                    message: format!(
                        "`{base_url}` is an https server and this client has no CA to trust it with: pass --ca FILE or set BERTH_CA (the server's DATA_DIR/ca.crt), or check --server"
                    ),
                })
            }
            (_, Some(ServerTrust::Fingerprint(_))) => {
                return Err(ClientError::Config {
                    message: format!(
                        "the join token carries the cluster CA's fingerprint (berth1-…), so the server speaks TLS, but `{base_url}` is http://: use https:// in --server (the token is not sent in clear text)"
                    ),
                })
            }
            _ => {}
        }
        let (config, slot) = tls::client_config(trust.as_ref())?;
        let learned = Some(slot);
        builder = builder.tls_backend_preconfigured(config);
        let http = builder.build().map_err(|e| ClientError::Config {
            message: format!("cannot set up the HTTP client: {e}"),
        })?;
        Ok(Client {
            http,
            base,
            auth,
            learned,
        })
    }

    /// The cluster CA certificate a [`ServerTrust::Fingerprint`] client found in the server's
    /// chain and verified the server with, once a connection succeeded: an agent stores it and
    /// trusts only it from then on.
    pub fn learned_ca(&self) -> Option<rustls::pki_types::CertificateDer<'static>> {
        self.learned.as_ref()?.lock().ok()?.clone()
    }

    /// The same server with another token, sharing this client's connections: an agent
    /// registers with the join token, then switches to the node token it was given.
    pub fn with_token(&self, token: Option<String>) -> Result<Client, ClientError> {
        let auth = token.map(|t| bearer(&t)).transpose()?;
        Ok(Client {
            http: self.http.clone(),
            base: self.base.clone(),
            auth,
            learned: self.learned.clone(),
        })
    }

    /// The server's base URL, as messages show it (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `GET /v1/health`: whether a berth server answers at all (no token needed). `berth up`
    /// and tests wait on it before making real calls.
    pub async fn health(&self) -> Result<(), ClientError> {
        let url = self.url(&["v1", "health"], &[]);
        let response = self.send(self.request(Method::GET, url)).await?;
        check(response, self.base_url()).await.map(drop)
    }

    /// `GET /v1/nodes` (admin): every registered node, for `berth nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.get(&["v1", "nodes"], &[]).await
    }

    /// `GET /v1/servers`: the control-plane servers, which one leads and since when.
    pub async fn servers(&self) -> Result<Vec<berth_api::control::ServerView>, ClientError> {
        self.get(&["v1", "servers"], &[]).await
    }

    /// `POST /v1/nodes/{node}/drain` or `/undrain` (admin): a draining node takes no new
    /// instances and its instances move elsewhere with zero downtime.
    pub async fn set_draining(&self, node: &str, draining: bool) -> Result<NodeView, ClientError> {
        let action = if draining { "drain" } else { "undrain" };
        self.post(&["v1", "nodes", node, action], &serde_json::json!({}))
            .await
    }

    /// `DELETE /v1/nodes/{node}` (admin): removes a node, its token and its instance records
    /// (replaced elsewhere). A node that is up is refused (409) unless `force`. Answers
    /// `{"node": NAME, "instances": N}`.
    pub async fn remove_node(
        &self,
        node: &str,
        force: bool,
    ) -> Result<serde_json::Value, ClientError> {
        let query = if force {
            vec![("force", "true".to_string())]
        } else {
            vec![]
        };
        let url = self.url(&["v1", "nodes", node], &query);
        let what = format!("DELETE {}", url.path());
        self.json(&what, self.request(Method::DELETE, url)).await
    }

    /// `POST /v1/maintenance/{stack}/{service}` (admin): maintenance mode on or off.
    pub async fn maintenance(
        &self,
        stack: &str,
        service: &str,
        req: &MaintenanceRequest,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(&["v1", "maintenance", stack, service], req).await
    }

    /// `PUT /v1/secrets/{stack}/{name}` (admin): sets a secret's value (a new version). The
    /// answer names the secret and its version, never the value.
    pub async fn set_secret(
        &self,
        stack: &str,
        name: &str,
        value: &str,
    ) -> Result<SecretView, ClientError> {
        let url = self.url(&["v1", "secrets", stack, name], &[]);
        let what = format!("PUT {}", url.path());
        let body = SecretPut {
            value: value.to_string(),
        };
        self.json(&what, self.request(Method::PUT, url).json(&body))
            .await
    }

    /// `GET /v1/secrets/{stack}` (admin): the stack's secrets by name, with versions and
    /// times; values are never sent back.
    pub async fn secrets(&self, stack: &str) -> Result<Vec<SecretView>, ClientError> {
        self.get(&["v1", "secrets", stack], &[]).await
    }

    /// `DELETE /v1/secrets/{stack}/{name}` (admin): forgets a secret's value.
    pub async fn delete_secret(&self, stack: &str, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "secrets", stack, name], &[]);
        let what = format!("DELETE {}", url.path());
        let _: serde_json::Value = self.json(&what, self.request(Method::DELETE, url)).await?;
        Ok(())
    }

    /// `POST /v1/users` (admin_users): adds a user; the answer holds its token, once.
    pub async fn add_user(
        &self,
        req: &berth_api::identity::UserAdd,
    ) -> Result<berth_api::identity::UserToken, ClientError> {
        self.post(&["v1", "users"], req).await
    }

    /// `GET /v1/users` (admin_users): every user, never a token.
    pub async fn users(&self) -> Result<Vec<berth_api::identity::UserView>, ClientError> {
        self.get(&["v1", "users"], &[]).await
    }

    /// `DELETE /v1/users/{name}` (admin_users): removes a user; its token stops working.
    pub async fn remove_user(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "users", name], &[]);
        let what = format!("DELETE {}", url.path());
        let _: serde_json::Value = self.json(&what, self.request(Method::DELETE, url)).await?;
        Ok(())
    }

    /// `POST /v1/token/rotate` (the calling user): a new token; the one sent stops working.
    pub async fn rotate_token(&self) -> Result<berth_api::identity::UserToken, ClientError> {
        self.post(&["v1", "token", "rotate"], &serde_json::json!({}))
            .await
    }

    /// `GET /v1/audit` (audit_read): the newest audit entries passing the filter, oldest
    /// first. `query` holds `since` (ms), `user`, `stack`, `limit`.
    pub async fn audit(
        &self,
        query: &[(&str, String)],
    ) -> Result<Vec<berth_api::identity::AuditEntry>, ClientError> {
        self.get(&["v1", "audit"], query).await
    }

    /// `GET /v1/audit/verify` (audit_read): checks the audit log's hash chain.
    pub async fn audit_verify(&self) -> Result<berth_api::identity::AuditVerify, ClientError> {
        self.get(&["v1", "audit", "verify"], &[]).await
    }

    /// `POST /v1/secret-key/rotate` (admin): a new data key for the secrets sealed in the
    /// store, every value re-sealed under it (`berth secret rotate-key`).
    pub async fn rotate_secret_key(&self) -> Result<SecretKeyRotated, ClientError> {
        self.post(&["v1", "secret-key", "rotate"], &serde_json::json!({}))
            .await
    }

    /// `POST /v1/gc` (admin): asks every agent to collect garbage once (stopped containers,
    /// images no retained release needs). Each node's report shows in [`Client::nodes`] once
    /// its `last_gc.generation` reaches the answer's `generation`.
    pub async fn gc(&self) -> Result<GcResponse, ClientError> {
        self.post(&["v1", "gc"], &serde_json::json!({})).await
    }

    /// `POST /v1/nodes/register` (join token): introduces the agent's node and returns the node
    /// token it must use from then on (see [`Client::with_token`]).
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post(&["v1", "nodes", "register"], req).await
    }

    /// `POST /v1/nodes/{node}/heartbeat` (node token): tells the server the node is alive and
    /// what its instances are doing.
    pub async fn heartbeat(&self, node: &str, heartbeat: &Heartbeat) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post(&["v1", "nodes", node, "heartbeat"], heartbeat)
            .await?;
        Ok(())
    }

    /// `POST /v1/routers/{router}/traffic` (the node token of the router's node, or admin): a
    /// router's cumulative per-arm counters, which the server sums over routers for the canary
    /// analysis. Bounded by the caller's timeout like any request.
    pub async fn traffic_report(
        &self,
        router: &str,
        report: &TrafficReport,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post(&["v1", "routers", router, "traffic"], report)
            .await?;
        Ok(())
    }

    /// `GET /v1/nodes/{node}/desired` (node token), a long-poll: the instances the node must
    /// run, as soon as they differ from `version` (what the agent last applied) or after
    /// `wait`. `None` answers at once.
    pub async fn desired(
        &self,
        node: &str,
        version: Option<&str>,
        wait: Duration,
    ) -> Result<DesiredInstances, ClientError> {
        let mut query = vec![("wait", wait_seconds(wait))];
        if let Some(v) = version {
            query.push(("version", v.to_string()));
        }
        let url = self.url(&["v1", "nodes", node, "desired"], &query);
        let request = self
            .request(Method::GET, url)
            .timeout(long_poll_timeout(wait));
        self.json("GET /v1/nodes/{node}/desired", request).await
    }

    /// `GET /v1/routes` (any token but the join token), a long-poll: the routing table, as soon
    /// as it differs from `version` or after `wait`.
    ///
    /// A router passes its stable `router` id and the version it has *applied*: the server
    /// records that as the router's acknowledgement, which is how draining knows no router
    /// sends an instance traffic any more. Callers that only look (the CLI) pass `None`.
    pub async fn routes(
        &self,
        router: Option<&str>,
        version: Option<&str>,
        wait: Duration,
    ) -> Result<RoutingTable, ClientError> {
        let mut query = vec![("wait", wait_seconds(wait))];
        if let Some(v) = version {
            query.push(("version", v.to_string()));
        }
        if let Some(r) = router {
            query.push(("router", r.to_string()));
        }
        let url = self.url(&["v1", "routes"], &query);
        let request = self
            .request(Method::GET, url)
            .timeout(long_poll_timeout(wait));
        self.json("GET /v1/routes", request).await
    }

    /// `POST /v1/plan` (admin): what deploying `req` would change, stored nowhere.
    pub async fn plan(&self, req: &DeployRequest) -> Result<DeployResponse, ClientError> {
        self.post(&["v1", "plan"], req).await
    }

    /// `POST /v1/deploy` (admin): plans and, if policy allows, creates a release. A policy
    /// refusal is [`ClientError::Refused`]; a plan id that no longer matches is
    /// [`ClientError::Conflict`].
    pub async fn deploy(&self, req: &DeployRequest) -> Result<DeployResponse, ClientError> {
        self.post(&["v1", "deploy"], req).await
    }

    /// `GET /v1/stacks/{stack}/{env}/releases` (admin): the kept releases, for `berth history`.
    pub async fn releases(&self, stack: &str, env: &str) -> Result<Vec<Release>, ClientError> {
        self.get(&["v1", "stacks", stack, env, "releases"], &[])
            .await
    }

    /// `GET /v1/stacks/{stack}/{env}/rollout` (admin): the rollout's steps, weights, time left,
    /// step reports and current analysis (the server's `rollouts::RolloutStatus`).
    pub async fn rollout<T: DeserializeOwned>(
        &self,
        stack: &str,
        env: &str,
    ) -> Result<T, ClientError> {
        self.get(&["v1", "stacks", stack, env, "rollout"], &[])
            .await
    }

    /// `POST /v1/stacks/{stack}/{env}/rollout/{command}` (admin): `pause`, `resume`,
    /// `promote` (`full`: to 100 %) or `abort`; answers what changed.
    pub async fn rollout_command<T: DeserializeOwned>(
        &self,
        stack: &str,
        env: &str,
        command: &str,
        full: bool,
    ) -> Result<T, ClientError> {
        let query = if full {
            vec![("full", "true".to_string())]
        } else {
            Vec::new()
        };
        let url = self.url(&["v1", "stacks", stack, env, "rollout", command], &query);
        let what = format!("POST {}", url.path());
        self.json(&what, self.request(Method::POST, url)).await
    }

    /// `POST /v1/stacks/{stack}/{env}/approvals/{plan}/approve` (approve): one more approval of
    /// a pending plan; the last one needed runs it.
    pub async fn approve(
        &self,
        stack: &str,
        env: &str,
        plan: &str,
    ) -> Result<berth_api::control::ApproveResponse, ClientError> {
        self.post(
            &["v1", "stacks", stack, env, "approvals", plan, "approve"],
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /v1/stacks/{stack}/{env}/approvals/{plan}/reject` (approve): refuses a pending
    /// plan with a reason.
    pub async fn reject(
        &self,
        stack: &str,
        env: &str,
        plan: &str,
        req: &berth_api::control::RejectRequest,
    ) -> Result<berth_api::control::ApprovalView, ClientError> {
        self.post(
            &["v1", "stacks", stack, env, "approvals", plan, "reject"],
            req,
        )
        .await
    }

    /// `GET /v1/approvals` (read): the plans waiting for approval, optionally of one stack
    /// and environment.
    pub async fn approvals(
        &self,
        query: &[(&str, String)],
    ) -> Result<Vec<berth_api::control::ApprovalView>, ClientError> {
        self.get(&["v1", "approvals"], query).await
    }

    /// `POST /v1/stacks/{stack}/{env}/rollback` (admin): a new release with an older one's
    /// content (the previous successful one unless `req` names one).
    pub async fn rollback(
        &self,
        stack: &str,
        env: &str,
        req: &RollbackRequest,
    ) -> Result<DeployResponse, ClientError> {
        self.post(&["v1", "stacks", stack, env, "rollback"], req)
            .await
    }

    /// `DELETE /v1/stacks/{stack}/{env}` (admin): `berth stack rm` — a release without the
    /// stack's services (refused, exit 3, unless `req.confirm` is the stack's name).
    pub async fn remove_stack(
        &self,
        stack: &str,
        env: &str,
        req: &StackRemoveRequest,
    ) -> Result<DeployResponse, ClientError> {
        let url = self.url(&["v1", "stacks", stack, env], &[]);
        let what = format!("DELETE {}", url.path());
        self.json(&what, self.request(Method::DELETE, url).json(req))
            .await
    }

    /// `GET /v1/status` (admin): stacks, services and instances, for `berth status`; only
    /// `stack` when one is given.
    pub async fn status(&self, stack: Option<&str>) -> Result<StatusView, ClientError> {
        let query: Vec<(&str, String)> = stack
            .map(|s| ("stack", s.to_string()))
            .into_iter()
            .collect();
        self.get(&["v1", "status"], &query).await
    }

    /// `GET /v1/events` (admin): state changes after revision `since` (all kept ones when
    /// `None`), as a stream. With `follow` the stream waits for new changes and does not end
    /// until the server goes away; without it, it ends after the changes already made.
    ///
    /// The body is decoded as it arrives, so each event is yielded as soon as its blank line
    /// is read and memory stays bounded however long the stream runs. An event that does not
    /// decode is yielded as [`ClientError::Decode`] and the stream goes on; a transport error
    /// or an error status is yielded once and ends it.
    pub fn events(
        &self,
        follow: bool,
        since: Option<i64>,
    ) -> impl Stream<Item = Result<Event, ClientError>> + Send + 'static {
        self.events_of(follow, since, None, None)
    }

    /// [`Client::events`] for one stack and/or environment only (filtered by the server).
    pub fn events_of(
        &self,
        follow: bool,
        since: Option<i64>,
        stack: Option<&str>,
        env: Option<&str>,
    ) -> impl Stream<Item = Result<Event, ClientError>> + Send + 'static {
        let mut query = vec![("follow", follow.to_string())];
        if let Some(s) = since {
            query.push(("since", s.to_string()));
        }
        if let Some(stack) = stack {
            query.push(("stack", stack.to_string()));
        }
        if let Some(env) = env {
            query.push(("env", env.to_string()));
        }
        let url = self.url(&["v1", "events"], &query);
        let mut request = self
            .request(Method::GET, url)
            .header(ACCEPT, "text/event-stream");
        if !follow {
            request = request.timeout(REQUEST_TIMEOUT);
        }
        let state = EventsState::Start {
            request,
            base: self.base_url().to_string(),
        };
        futures::stream::unfold(state, EventsState::next)
    }

    /// `base` with `segments` appended (each percent-encoded, so a name can never change the
    /// path) and `query` set.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url).timeout(REQUEST_TIMEOUT);
        match &self.auth {
            Some(auth) => request.header(AUTHORIZATION, auth.clone()),
            None => request,
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T, ClientError> {
        let url = self.url(segments, query);
        let what = format!("GET {}", url.path());
        self.json(&what, self.request(Method::GET, url)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(segments, &[]);
        let what = format!("POST {}", url.path());
        self.json(&what, self.request(Method::POST, url).json(body))
            .await
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        request.send().await.map_err(|e| self.unreachable(e))
    }

    /// Sends, checks the status and decodes a JSON body. The body is read whole first (it is
    /// small), so a decoding error carries serde's position and a transport error is reported
    /// as one.
    async fn json<T: DeserializeOwned>(
        &self,
        what: &str,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let body = check(response, self.base_url()).await?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            what: what.to_string(),
            source,
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        transport_error(self.base_url(), source)
    }
}

/// A transport error as its variant: [`ClientError::Tls`] when TLS refused the server, else
/// [`ClientError::Unreachable`].
fn transport_error(base: &str, source: reqwest::Error) -> ClientError {
    // A TLS server's first bytes (a handshake record) are not an HTTP status line.
    if base.starts_with("http://") && error::root_cause(&source).contains("invalid HTTP version") {
        return ClientError::Tls {
            url: base.to_string(),
            reason: "it does not answer plain HTTP; it probably speaks TLS: use https:// in --server (with --ca / BERTH_CA)".to_string(),
        };
    }
    match tls::tls_refusal(&source) {
        Some(reason) => ClientError::Tls {
            url: base.to_string(),
            reason,
        },
        None => ClientError::Unreachable {
            url: base.to_string(),
            source,
        },
    }
}

/// Reads the body of `response`; a non-success status becomes its [`ClientError`] variant.
/// `base` names the server in a transport error.
async fn check(response: Response, base: &str) -> Result<Bytes, ClientError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|source| transport_error(base, source))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(ClientError::from_status(status.as_u16(), &body))
    }
}

/// The `wait` query parameter: whole seconds, rounded up so a sub-second wait still waits.
fn wait_seconds(wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.to_string()
}

/// A long-poll's whole-request timeout: the wait plus slack for the answer to travel.
fn long_poll_timeout(wait: Duration) -> Duration {
    wait.saturating_add(LONG_POLL_SLACK)
}

fn parse_base(base_url: &str) -> Result<Url, ClientError> {
    let bad = |reason: &str| {
        ClientError::Config {
        message: format!(
            "`{base_url}` is not a berth server URL: {reason}; pass --server http://HOST:PORT or set BERTH_SERVER"
        ),
    }
    };
    let url = Url::parse(base_url.trim()).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(bad(&format!(
                "the scheme must be http or https, not `{other}`"
            )))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or a fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials go in --token or BERTH_TOKEN, not the URL"));
    }
    Ok(url)
}

fn bearer(token: &str) -> Result<HeaderValue, ClientError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        ClientError::Config {
            message: "the token contains characters an HTTP header cannot carry; check --token, BERTH_TOKEN or the token file".to_string(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where [`Client::events`] is between two items.
enum EventsState {
    /// Not sent yet: the request goes out on the first poll, so creating the stream is free
    /// and the stream owns everything it needs (`'static`).
    Start {
        request: RequestBuilder,
        base: String,
    },
    /// Reading the body.
    Reading {
        response: Response,
        decoder: sse::SseDecoder,
        ready: VecDeque<String>,
        base: String,
    },
    /// Ended: the body ended, or an error was yielded.
    Done,
}

impl EventsState {
    async fn next(self) -> Option<(Result<Event, ClientError>, EventsState)> {
        let mut state = self;
        loop {
            state = match state {
                EventsState::Done => return None,
                EventsState::Start { request, base } => match request.send().await {
                    Err(source) => {
                        return Some((Err(transport_error(&base, source)), EventsState::Done))
                    }
                    Ok(response) if !response.status().is_success() => {
                        let error = check(response, &base).await.err().unwrap_or_else(|| {
                            ClientError::Server {
                                status: 0,
                                message: "unexpected answer".to_string(),
                            }
                        });
                        return Some((Err(error), EventsState::Done));
                    }
                    Ok(response) => EventsState::Reading {
                        response,
                        decoder: sse::SseDecoder::new(),
                        ready: VecDeque::new(),
                        base,
                    },
                },
                EventsState::Reading {
                    mut response,
                    mut decoder,
                    mut ready,
                    base,
                } => {
                    if let Some(data) = ready.pop_front() {
                        let item = serde_json::from_str::<Event>(&data).map_err(|source| {
                            ClientError::Decode {
                                what: "GET /v1/events".to_string(),
                                source,
                            }
                        });
                        let state = EventsState::Reading {
                            response,
                            decoder,
                            ready,
                            base,
                        };
                        return Some((item, state));
                    }
                    match response.chunk().await {
                        Ok(None) => return None,
                        Err(source) => {
                            return Some((
                                Err(ClientError::Unreachable { url: base, source }),
                                EventsState::Done,
                            ))
                        }
                        Ok(Some(chunk)) => {
                            let mut out = Vec::new();
                            if decoder.feed(&chunk, &mut out).is_err() {
                                let error = ClientError::Server {
                                    status: 200,
                                    message: format!(
                                        "the event stream sent a line longer than {} bytes; is this a berth server?",
                                        sse::MAX_LINE
                                    ),
                                };
                                return Some((Err(error), EventsState::Done));
                            }
                            ready.extend(out);
                            EventsState::Reading {
                                response,
                                decoder,
                                ready,
                                base,
                            }
                        }
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_round_the_wait_up_and_allow_slack() {
        assert_eq!(wait_seconds(Duration::ZERO), "0");
        assert_eq!(wait_seconds(Duration::from_millis(1)), "1");
        assert_eq!(wait_seconds(Duration::from_secs(25)), "25");
        assert_eq!(
            long_poll_timeout(Duration::from_secs(25)),
            Duration::from_secs(35)
        );
        assert_eq!(long_poll_timeout(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn loopback_servers_bypass_proxies() {
        for (url, loopback) in [
            ("http://127.0.0.1:7070", true),
            ("http://localhost:7070", true),
            ("http://[::1]:7070", true),
            ("http://10.0.0.2:7070", false),
            ("http://berth.internal:7070", false),
        ] {
            let parsed = parse_base(url).expect(url);
            assert_eq!(is_loopback(&parsed), loopback, "{url}");
        }
    }
}
