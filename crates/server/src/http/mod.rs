//! The `/v1` API. Every route but `/v1/health` needs a bearer token; malformed bodies get 400
//! with a message naming the field.

mod nodes;
mod releases;
mod secrets;
mod status;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::{keys, Shared};

/// Builds the API's router.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok\n" }))
        .route("/v1/nodes", get(nodes::list))
        .route("/v1/nodes/register", post(nodes::register))
        .route("/v1/nodes/{name}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{name}/desired", get(nodes::desired))
        .route("/v1/nodes/{name}/{action}", post(nodes::set_draining))
        .route("/v1/routes", get(nodes::routes))
        .route("/v1/gc", post(nodes::gc))
        .route("/v1/plan", post(releases::plan))
        .route("/v1/deploy", post(releases::deploy))
        .route("/v1/stacks/{stack}/{env}/releases", get(releases::history))
        .route(
            "/v1/stacks/{stack}/{env}/rollback",
            post(releases::rollback),
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
        .with_state(shared)
}

/// Who is calling, established from the bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person or CI with the admin token.
    Admin,
    /// An agent, by its node token.
    Node(String),
    /// An agent presenting the join token (only registration accepts it).
    Joining,
}

impl Caller {
    /// Refuses anyone but an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }

    /// Refuses anyone but the named node (or an admin).
    pub fn require_node(&self, name: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Node(n) if n == name => Ok(()),
            _ => Err(ApiError::unauthorized()),
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
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(ApiError::unauthorized)?
            .trim();
        if shared.admin.matches(token) {
            return Ok(Caller::Admin);
        }
        if shared
            .join
            .matches(berth_api::join::JoinToken::secret_of(token))
        {
            return Ok(Caller::Joining);
        }
        // Node tokens are `NAME.SECRET`; the store keeps the hash of the whole token.
        let (name, _) = token.split_once('.').ok_or_else(ApiError::unauthorized)?;
        let hash = crate::auth::TokenHash::of(token);
        let hex = hash.to_hex();
        if let Ok(cache) = shared.node_tokens.lock() {
            if cache.get(&hex).is_some_and(|n| n == name) {
                return Ok(Caller::Node(name.to_string()));
            }
        }
        let stored = shared.store.get(&keys::node_token(name)).await?;
        let expected = stored
            .and_then(|kv| String::from_utf8(kv.value).ok())
            .and_then(|s| crate::auth::TokenHash::from_hex(&s));
        match expected {
            Some(expected) if expected.matches(token) => {
                if let Ok(mut cache) = shared.node_tokens.lock() {
                    cache.insert(hex, name.to_string());
                }
                Ok(Caller::Node(name.to_string()))
            }
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// Unwraps a JSON body or answers 400 with serde's message, which names the field and position.
pub fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    match body {
        Ok(Json(v)) => Ok(v),
        Err(rejection) => Err(ApiError::invalid(
            format!("malformed request body: {}", rejection.body_text()),
            vec![],
        )),
    }
}

/// The shared state, as handlers take it.
pub type AppState = State<Arc<Shared>>;
