//! The `/v1` API. Every route but `/v1/health` needs a bearer token; malformed bodies get 400
//! with a message naming the field. Every route is checked against the policy table
//! ([`crate::policy::POLICY`]) before its handler runs: a route missing from it answers 500
//! (deny by default), and `policy::tests` fails on it.

mod approvals;
mod nodes;
mod releases;
mod rollouts;
mod secrets;
mod status;
mod traffic;
mod users;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::{keys, Shared};

/// The largest request body the API reads: the stack-file limit
/// ([`berth_spec::yaml::MAX_STACK_FILE_BYTES`]) twice over — JSON escaping at most doubles a
/// YAML text (`"`, `\\`, newlines and tabs take two bytes; YAML has no other control
/// characters) — plus 64 KiB for the rest of the envelope (file name, `--set` values). So every
/// file `berth validate` accepts fits, and a larger body gets 413 naming the one limit.
pub const MAX_BODY_BYTES: usize = 2 * berth_spec::yaml::MAX_STACK_FILE_BYTES + 64 * 1024;

/// The stack-file limit as people read it (`8 MiB`), for error messages.
pub fn stack_file_limit() -> String {
    format!(
        "{} MiB",
        berth_spec::yaml::MAX_STACK_FILE_BYTES / (1024 * 1024)
    )
}

/// Builds the API's router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/health", get(status::health))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/servers", get(crate::servers::list))
        .route("/v1/nodes/register", post(nodes::register))
        .route("/v1/nodes/{name}", delete(nodes::remove))
        .route("/v1/nodes/{name}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{name}/desired", get(nodes::desired))
        .route("/v1/nodes/{name}/{action}", post(nodes::set_draining))
        .route("/v1/routes", get(nodes::routes))
        .route(
            "/v1/routers/{id}/traffic",
            post(traffic::report).layer(DefaultBodyLimit::max(crate::traffic::MAX_REPORT_BYTES)),
        )
        .route("/v1/traffic", get(traffic::window))
        .route("/v1/gc", post(nodes::gc))
        .route("/v1/plan", post(releases::plan))
        .route("/v1/deploy", post(releases::deploy))
        .route("/v1/stacks/{stack}/{env}", delete(releases::remove))
        .route("/v1/stacks/{stack}/{env}/releases", get(releases::history))
        .route(
            "/v1/stacks/{stack}/{env}/rollback",
            post(releases::rollback),
        )
        .route("/v1/stacks/{stack}/{env}/rollout", get(rollouts::status))
        .route(
            "/v1/stacks/{stack}/{env}/rollout/{command}",
            post(rollouts::command),
        )
        .route("/v1/status", get(status::status))
        .route(
            "/v1/maintenance/{stack}/{service}",
            post(status::maintenance),
        )
        .route("/v1/events", get(status::events))
        .route("/v1/secrets/{stack}", get(secrets::list))
        .route(
            "/v1/secrets/{stack}/{name}",
            put(secrets::put).delete(secrets::delete),
        )
        .route("/v1/secret-key/rotate", post(secrets::rotate_key))
        .route("/v1/users", get(users::list).post(users::add))
        .route("/v1/users/{name}", delete(users::remove))
        .route("/v1/token/rotate", post(users::rotate))
        .route("/v1/audit", get(users::audit))
        .route("/v1/audit/verify", get(users::audit_verify))
        .route("/v1/approvals", get(approvals::list))
        .route(
            "/v1/stacks/{stack}/{env}/approvals/{plan}/approve",
            post(approvals::approve),
        )
        .route(
            "/v1/stacks/{stack}/{env}/approvals/{plan}/reject",
            post(approvals::reject),
        )
        // Every route above, and only those: the policy table's check (authentication,
        // capability, scope, audit) runs before the handler.
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::policy::enforce,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Who is calling, established from the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person or CI with the admin token: the bootstrap admin, named `admin`.
    Admin,
    /// A person or CI with a user token (`berth user add`); the policy table has checked the
    /// route's capability and scope against its role before any handler sees it.
    User(Box<crate::users::UserRecord>),
    /// An agent, by its node token.
    Node(String),
    /// An agent presenting the join token (only registration accepts it).
    Joining,
}

impl Caller {
    /// Refuses anyone but a person: the admin token or a user. Which users may call the route
    /// is the policy table's decision ([`crate::policy::POLICY`]), made before the handler;
    /// this keeps node and join tokens out exactly as before users existed.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin | Caller::User(_) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// Refuses anyone but the named node (or an admin: the admin token or an admin user).
    pub fn require_node(&self, name: &str) -> Result<(), ApiError> {
        match self {
            c if c.is_admin() => Ok(()),
            Caller::Node(n) if n == name => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// The admin token, or a user with the admin role.
    pub fn is_admin(&self) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(u) => u.role == berth_api::identity::Role::Admin,
            _ => false,
        }
    }

    /// The name `who` carries in releases, events and the audit log: the user's name, `admin`
    /// for the admin token, `node:NAME` for an agent.
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => crate::users::BOOTSTRAP_ADMIN.to_string(),
            Caller::User(u) => u.name.clone(),
            Caller::Node(n) => format!("node:{n}"),
            Caller::Joining => "join-token".to_string(),
        }
    }

    /// The role the audit log records.
    pub fn role_name(&self) -> &'static str {
        match self {
            Caller::Admin => "admin",
            Caller::User(u) => u.role.name(),
            Caller::Node(_) => "node",
            Caller::Joining => "join",
        }
    }

    /// Refuses the join token: it only registers.
    pub fn require_member(&self) -> Result<(), ApiError> {
        match self {
            Caller::Joining => Err(ApiError::unauthorized()),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    /// A 401 (or a 429 with `Retry-After` for a source that failed too often), as a response:
    /// the throttle needs a header an [`ApiError`] does not carry.
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, axum::response::Response> {
        use axum::response::IntoResponse;
        // The policy layer authenticated the request already.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = header.strip_prefix("Bearer ").map(str::trim);
        if let Some(caller) = token.and_then(|t| known_caller(shared, t)) {
            return Ok(caller);
        }
        // Not a credential this server holds in memory. A source over the limit gets no
        // further look (no store read, no log line); a valid credential above was never
        // refused, so nobody sharing the address with an attacker is locked out.
        let now = shared.clock.now_ms();
        if let Some(peer) = peer {
            let throttled = shared
                .auth_failures
                .lock()
                .ok()
                .and_then(|l| l.throttled(peer.ip(), now));
            if let Some(ms) = throttled {
                return Err(too_many(ms));
            }
        }
        if let Some(token) = token {
            match crate::users::authenticate(shared, token).await {
                Ok(Some(user)) => return Ok(Caller::User(Box::new(user))),
                Ok(None) => {}
                Err(e) => return Err(ApiError::from(e).into_response()),
            }
            if let Some(name) = crate::auth::node_token_name(token) {
                match stored_node_token(shared, name, token).await {
                    Ok(true) => return Ok(Caller::Node(name.to_string())),
                    Ok(false) => {}
                    Err(e) => return Err(e.into_response()),
                }
            }
        }
        let why = match token {
            None if header.is_empty() => "no bearer token",
            None => "an Authorization header that is not `Bearer TOKEN`",
            Some(_) => "a wrong token",
        };
        Err(auth_failed(shared, peer, parts.uri.path(), why, now))
    }
}

/// The caller a token names, if it is one the server holds in memory: the admin or join token,
/// or a node token already checked against the store.
fn known_caller(shared: &Shared, token: &str) -> Option<Caller> {
    if shared.admin.matches(token)
        || shared
            .cluster_admin
            .as_ref()
            .is_some_and(|h| h.matches(token))
    {
        return Some(Caller::Admin);
    }
    let secret = berth_api::join::JoinToken::secret_of(token);
    if shared.join.matches(secret)
        || shared
            .cluster_join
            .as_ref()
            .is_some_and(|h| h.matches(secret))
    {
        return Some(Caller::Joining);
    }
    let name = crate::auth::node_token_name(token)?;
    let hex = crate::auth::TokenHash::of(token).to_hex();
    let cache = shared.node_tokens.lock().ok()?;
    cache
        .get(&hex)
        .is_some_and(|n| n == name)
        .then(|| Caller::Node(name.to_string()))
}

/// Whether `token` is `name`'s node token as the store has it (remembered once it is).
async fn stored_node_token(shared: &Shared, name: &str, token: &str) -> Result<bool, ApiError> {
    let stored = shared.store.get(&keys::node_token(name)).await?;
    let expected = stored
        .and_then(|kv| String::from_utf8(kv.value).ok())
        .and_then(|s| crate::auth::TokenHash::from_hex(&s));
    match expected {
        Some(expected) if expected.matches(token) => {
            if let Ok(mut cache) = shared.node_tokens.lock() {
                cache.insert(crate::auth::TokenHash::of(token).to_hex(), name.to_string());
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Counts and logs a failed authentication (the source and the path, never the token), and
/// answers 401, or 429 if this failure crossed the source's limit.
fn auth_failed(
    shared: &Shared,
    peer: Option<std::net::SocketAddr>,
    path: &str,
    why: &str,
    now: u64,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(peer) = peer else {
        tracing::warn!(%path, "authentication failed: {why}");
        return ApiError::unauthorized().into_response();
    };
    let outcome = shared
        .auth_failures
        .lock()
        .map(|mut l| l.record_failure(peer.ip(), now))
        .unwrap_or(crate::auth::Failure::Counted);
    match outcome {
        crate::auth::Failure::Counted => {
            tracing::warn!(source = %peer.ip(), %path, "authentication failed: {why}");
            ApiError::unauthorized().into_response()
        }
        crate::auth::Failure::Throttled { penalty_ms } => {
            tracing::warn!(
                source = %peer.ip(),
                %path,
                "authentication failed: {why}; more than {} failures from this source in {} s: refusing it for {} s (429), without logging each failure",
                crate::auth::FAILURES_ALLOWED,
                crate::auth::FAILURE_WINDOW_MS / 1000,
                penalty_ms / 1000
            );
            too_many(penalty_ms)
        }
        crate::auth::Failure::Suppressed => too_many(penalty_left(shared, peer, now)),
    }
}

fn penalty_left(shared: &Shared, peer: std::net::SocketAddr, now: u64) -> u64 {
    shared
        .auth_failures
        .lock()
        .ok()
        .and_then(|l| l.throttled(peer.ip(), now))
        .unwrap_or(crate::auth::FIRST_PENALTY_MS)
}

/// 429 with `Retry-After` (whole seconds, rounded up).
fn too_many(ms: u64) -> axum::response::Response {
    use axum::response::IntoResponse;
    let secs = ms.div_ceil(1000).max(1);
    let mut response = ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed authentications from this address: retry in {secs} s with a valid token (see DATA_DIR/admin.token)"),
    )
    .into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, value);
    }
    response
}

/// Unwraps a JSON body or answers 400 with serde's message, which names the field and position.
pub fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            Err(body_too_large())
        }
        Err(rejection) => Err(ApiError::invalid(
            format!("malformed request body: {}", rejection.body_text()),
            vec![],
        )),
    }
}

/// 413 for a request body over [`MAX_BODY_BYTES`], naming the stack-file limit.
pub fn body_too_large() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than the API's limit of {} bytes; stack files are \
             limited to {} (split the stack, or move large data out of it)",
            MAX_BODY_BYTES,
            stack_file_limit()
        ),
    )
}

/// The shared state, as handlers take it.
pub type AppState = State<Arc<Shared>>;

/// 413 for a stack file over [`berth_spec::yaml::MAX_STACK_FILE_BYTES`] inside a body that
/// fit: the same limit `berth validate` names, checked before anything is parsed.
pub fn stack_file_too_large(file: &str, len: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "{file}: the stack file is {len} bytes; stack files are limited to {} ({} bytes); \
             nothing was stored",
            stack_file_limit(),
            berth_spec::yaml::MAX_STACK_FILE_BYTES
        ),
    )
}
