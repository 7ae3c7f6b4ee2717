//! The one policy table: every `/v1` route, the capability it takes, where its scope (stack,
//! environment) comes from, and whether the audit log records it. [`enforce`] runs it before
//! every handler (an axum route layer, so it sees the matched route pattern).
//!
//! - **Authentication** comes first (the [`Caller`] extractor: admin, user, node or join
//!   token). A bad token is 401 (or 429 when its source is throttled) and an audit entry.
//! - **Users** are checked here: their role must grant the route's [`Capability`], and a
//!   scoped user's stacks / environments must include the request's. A denial is 403 naming
//!   the missing capability (or scope), and an audit entry.
//! - **The admin token** passes (it is the bootstrap admin). **Node and join tokens** pass to
//!   the handler, whose own checks (`require_node`, `require_admin`, …) decide exactly as
//!   before users existed.
//! - A route missing from the table answers 500 and runs no handler (deny by default);
//!   `tests::every_route_of_the_router_is_in_the_table` fails on it, saying what to add.
//!
//! Scopes: a user with `--stack`/`--env` values may act only on requests naming one of them.
//! Routes that name no stack (status, events, nodes) are not scoped: a scoped viewer reads the
//! whole cluster's status, as any viewer does, but mutates only inside its scope; a route that
//! names a stack but no environment (maintenance, secrets) is refused to an env-scoped user,
//! since it would reach every environment. Deny wins.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_api::identity::Role;

use crate::audit::{self, Record};
use crate::error::ApiError;
use crate::http::Caller;
use crate::Shared;

/// What a route takes. A role grants a set of these ([`grants`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// No token needed (`/v1/health`).
    Public,
    /// Reading status, history, events, plans, rollouts, nodes, routes, traffic and secret
    /// *names* — never a secret value (no route a user can reach returns one; a node's
    /// desired set, which does, is [`Capability::AdminNodes`] for users).
    Read,
    /// Deploying, rolling back, steering rollouts, scaling and maintenance.
    Deploy,
    /// Approving pending plans.
    Approve,
    /// Setting and removing secret values.
    SecretsWrite,
    /// Node management, and the agent endpoints when a user calls them (registration,
    /// heartbeats, desired sets, traffic reports, garbage collection).
    AdminNodes,
    /// Adding, listing and removing users.
    AdminUsers,
    /// Reading and verifying the audit log.
    AuditRead,
    /// Any user, on their own account (`berth token rotate`).
    OwnToken,
}

impl Capability {
    /// The name a 403 and the README use.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Public => "public",
            Capability::Read => "read",
            Capability::Deploy => "deploy",
            Capability::Approve => "approve",
            Capability::SecretsWrite => "secrets_write",
            Capability::AdminNodes => "admin_nodes",
            Capability::AdminUsers => "admin_users",
            Capability::AuditRead => "audit_read",
            Capability::OwnToken => "own_token",
        }
    }
}

/// Whether `role` grants `capability`: viewer reads; deployer reads and deploys; approver
/// reads and approves; admin does everything. Every user may rotate its own token.
pub fn grants(role: Role, capability: Capability) -> bool {
    use Capability::*;
    match capability {
        Public | OwnToken => true,
        Read => true,
        Deploy => matches!(role, Role::Deployer | Role::Admin),
        Approve => matches!(role, Role::Approver | Role::Admin),
        SecretsWrite | AdminNodes | AdminUsers | AuditRead => role == Role::Admin,
    }
}

/// Where a route's stack and environment come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The route names neither.
    None,
    /// The `{stack}` and `{env}` path parameters (either may be absent from the pattern).
    Path,
    /// The request body: a [`berth_api::control::DeployRequest`] (its `env`, and the `stack:`
    /// its file renders to).
    DeployBody,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The route pattern exactly as `http::router` spells it.
    pub route: &'static str,
    /// What it takes.
    pub capability: Capability,
    /// Where its scope comes from.
    pub scope: Scope,
    /// Whether the audit log records every call (mutating calls, except the agents' routine
    /// reports, which would flood it). Denials and failed authentications are recorded on
    /// every route.
    pub audit: bool,
}

const fn rule(
    method: &'static str,
    route: &'static str,
    capability: Capability,
    scope: Scope,
    audit: bool,
) -> Rule {
    Rule {
        method,
        route,
        capability,
        scope,
        audit,
    }
}

use Capability as C;
use Scope as S;

/// THE policy table: every route of `http::router`, and nothing else.
pub const POLICY: &[Rule] = &[
    rule("GET", "/v1/health", C::Public, S::None, false),
    rule("GET", "/v1/nodes", C::Read, S::None, false),
    rule("GET", "/v1/servers", C::Read, S::None, false),
    rule("POST", "/v1/nodes/register", C::AdminNodes, S::None, true),
    rule("DELETE", "/v1/nodes/{name}", C::AdminNodes, S::None, true),
    rule(
        "POST",
        "/v1/nodes/{name}/heartbeat",
        C::AdminNodes,
        S::None,
        false,
    ),
    rule(
        "GET",
        "/v1/nodes/{name}/desired",
        C::AdminNodes,
        S::None,
        false,
    ),
    rule(
        "POST",
        "/v1/nodes/{name}/{action}",
        C::AdminNodes,
        S::None,
        true,
    ),
    rule("GET", "/v1/routes", C::Read, S::None, false),
    rule(
        "POST",
        "/v1/routers/{id}/traffic",
        C::AdminNodes,
        S::None,
        false,
    ),
    rule("GET", "/v1/traffic", C::Read, S::None, false),
    rule("POST", "/v1/gc", C::AdminNodes, S::None, true),
    rule("POST", "/v1/plan", C::Read, S::DeployBody, false),
    rule("POST", "/v1/deploy", C::Deploy, S::DeployBody, true),
    rule(
        "GET",
        "/v1/stacks/{stack}/{env}/releases",
        C::Read,
        S::Path,
        false,
    ),
    rule(
        "POST",
        "/v1/stacks/{stack}/{env}/rollback",
        C::Deploy,
        S::Path,
        true,
    ),
    rule(
        "GET",
        "/v1/stacks/{stack}/{env}/rollout",
        C::Read,
        S::Path,
        false,
    ),
    rule(
        "POST",
        "/v1/stacks/{stack}/{env}/rollout/{command}",
        C::Deploy,
        S::Path,
        true,
    ),
    rule("GET", "/v1/status", C::Read, S::None, false),
    rule(
        "POST",
        "/v1/maintenance/{stack}/{service}",
        C::Deploy,
        S::Path,
        true,
    ),
    rule("GET", "/v1/events", C::Read, S::None, false),
    rule("GET", "/v1/secrets/{stack}", C::Read, S::Path, false),
    rule(
        "PUT",
        "/v1/secrets/{stack}/{name}",
        C::SecretsWrite,
        S::Path,
        true,
    ),
    rule(
        "DELETE",
        "/v1/secrets/{stack}/{name}",
        C::SecretsWrite,
        S::Path,
        true,
    ),
    // A stack rm is a release without services (history kept, rollback brings it back), so a
    // deployer in scope may do it, with the same --confirm as any emptying deploy.
    rule(
        "DELETE",
        "/v1/stacks/{stack}/{env}",
        C::Deploy,
        S::Path,
        true,
    ),
    rule(
        "POST",
        "/v1/secret-key/rotate",
        C::SecretsWrite,
        S::None,
        true,
    ),
    rule("GET", "/v1/users", C::AdminUsers, S::None, false),
    rule("POST", "/v1/users", C::AdminUsers, S::None, true),
    rule("DELETE", "/v1/users/{name}", C::AdminUsers, S::None, true),
    rule("POST", "/v1/token/rotate", C::OwnToken, S::None, true),
    rule("GET", "/v1/audit", C::AuditRead, S::None, false),
    rule("GET", "/v1/audit/verify", C::AuditRead, S::None, false),
    rule("GET", "/v1/approvals", C::Read, S::None, false),
    // Approving runs someone else's plan; rejecting refuses it: both are an approver's call,
    // in the plan's stack and environment.
    rule(
        "POST",
        "/v1/stacks/{stack}/{env}/approvals/{plan}/approve",
        C::Approve,
        S::Path,
        true,
    ),
    rule(
        "POST",
        "/v1/stacks/{stack}/{env}/approvals/{plan}/reject",
        C::Approve,
        S::Path,
        true,
    ),
];

/// The table's row for a request.
pub fn lookup(method: &Method, route: &str) -> Option<&'static Rule> {
    POLICY
        .iter()
        .find(|r| r.method == method.as_str() && r.route == route)
}

/// What a request names: the scope checked, and the audit entry's target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Named {
    stack: Option<String>,
    env: Option<String>,
    /// Every path parameter, joined by `/`, for the audit entry (`shop/staging`, `n1/drain`).
    target: String,
    plan_id: String,
}

/// Refuses `user` if its scopes do not cover what the request names. Pure.
pub fn check_scope(
    user: &crate::users::UserRecord,
    stack: Option<&str>,
    env: Option<&str>,
) -> Result<(), String> {
    if !user.stacks.is_empty() {
        match stack {
            Some(s) if user.stacks.iter().any(|x| x == s) => {}
            Some(s) => {
                return Err(format!(
                    "user {} may act only on stack(s) {}, not {s}",
                    user.name,
                    user.stacks.join(", ")
                ))
            }
            None => {
                return Err(format!(
                    "user {} is limited to stack(s) {} and this request names no stack",
                    user.name,
                    user.stacks.join(", ")
                ))
            }
        }
    }
    if !user.envs.is_empty() {
        match env {
            Some(e) if user.envs.iter().any(|x| x == e) => {}
            Some(e) => {
                return Err(format!(
                    "user {} may act only in environment(s) {}, not {e}",
                    user.name,
                    user.envs.join(", ")
                ))
            }
            None => {
                return Err(format!(
                    "user {} is limited to environment(s) {} and this request reaches every environment of the stack",
                    user.name,
                    user.envs.join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// The `stack:` line of a stack file, read cheaply for the audit entry's target (the scope
/// check renders the file instead). `None` if there is none on a line of its own.
fn stack_line(source: &str) -> Option<String> {
    source.lines().find_map(|l| {
        let v = l.strip_prefix("stack:")?.trim();
        let v = v
            .split('#')
            .next()?
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        (!v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        .then(|| v.to_string())
    })
}

/// 403 for a missing capability or scope.
fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

/// The audit entry's result for a status.
fn result_of(status: StatusCode, denied: Option<&str>) -> String {
    match (status.as_u16(), denied) {
        (_, Some(why)) => format!("denied: {why}"),
        (200..=299, _) => "ok".to_string(),
        (401, _) => "unauthorized".to_string(),
        (428, _) => "refused".to_string(),
        (code, _) => format!("failed {code}"),
    }
}

/// The policy layer: authenticates, checks the table, runs the handler, audits.
pub async fn enforce(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let Some(rule) = lookup(&method, &route) else {
        tracing::error!(%method, %route, "a route missing from the policy table was called; refused");
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{method} {route} is not in the policy table (crates/server/src/policy.rs): refused; this is a server bug, please report it"),
        )
        .into_response();
    };
    if rule.capability == Capability::Public {
        return next.run(req).await;
    }
    let action = format!("{method} {route}");
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &shared).await {
        Ok(c) => c,
        Err(refusal) => {
            // 429s (a throttled source) are not recorded: the limiter bounds them.
            if refusal.status() == StatusCode::UNAUTHORIZED {
                if let Some(left_out) = shared.audit.admit_failure(shared.clock.now_ms()) {
                    let result = if left_out > 0 {
                        format!("unauthorized ({left_out} earlier failures not recorded: over the audit log's budget)")
                    } else {
                        "unauthorized".to_string()
                    };
                    audit::record(
                        &shared,
                        &Record {
                            user: "-".into(),
                            role: "-".into(),
                            source: peer,
                            action,
                            target: "-".into(),
                            plan_id: String::new(),
                            result,
                        },
                    )
                    .await;
                }
            }
            return refusal;
        }
    };
    let mut named = Named::default();
    if let Ok(params) = RawPathParams::from_request_parts(&mut parts, &shared).await {
        let mut target = Vec::new();
        for (k, v) in params.iter() {
            match k {
                "stack" => named.stack = Some(v.to_string()),
                "env" => named.env = Some(v.to_string()),
                "plan" => named.plan_id = v.to_string(),
                _ => {}
            }
            target.push(v.to_string());
        }
        named.target = target.join("/");
    }
    // A deploy body names its stack and environment inside: read it (the handler gets the
    // same bytes back).
    let body = if rule.scope == Scope::DeployBody {
        // Read as the handler's extractor would (the route's body limit applies).
        let mut whole = Request::new(body);
        *whole.headers_mut() = parts.headers.clone();
        *whole.extensions_mut() = parts.extensions.clone();
        match axum::body::Bytes::from_request(whole, &shared).await {
            Ok(bytes) => {
                if let Ok(req) = serde_json::from_slice::<berth_api::control::DeployRequest>(&bytes)
                {
                    named.env = Some(req.env.clone());
                    named.stack = stack_line(&req.source);
                    named.plan_id = req.plan_id.clone().unwrap_or_default();
                    // The scope check trusts only the rendered name: render when it matters.
                    if matches!(&caller, Caller::User(u) if !u.stacks.is_empty()) {
                        named.stack = berth_spec::render(req.source.as_bytes(), &req.env, &req.set)
                            .ok()
                            .map(|s| s.stack);
                    }
                    named.target = format!("{}/{}", named.stack.as_deref().unwrap_or("-"), req.env);
                }
                axum::body::Body::from(bytes)
            }
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return crate::http::body_too_large().into_response();
            }
            Err(rejection) => {
                return ApiError::invalid(
                    format!("cannot read the request body: {}", rejection.body_text()),
                    vec![],
                )
                .into_response();
            }
        }
    } else {
        body
    };
    let mut denied: Option<String> = None;
    if let Caller::User(user) = &caller {
        if !grants(user.role, rule.capability) {
            denied = Some(format!("missing capability {}", rule.capability.name()));
        } else if rule.scope != Scope::None {
            // An unrenderable deploy body names no stack: the handler refuses it (400) and
            // stores nothing, so it may pass — unless the user is stack-scoped, whose check
            // needs a stack.
            let unrendered = rule.scope == Scope::DeployBody && named.stack.is_none();
            if !(unrendered && user.stacks.is_empty()) {
                if let Err(why) = check_scope(user, named.stack.as_deref(), named.env.as_deref()) {
                    denied = Some(format!("out of scope: {why}"));
                }
            }
        }
    }
    let base = Record {
        user: caller.name(),
        role: caller.role_name().to_string(),
        source: peer,
        action: action.clone(),
        target: named.target.clone(),
        plan_id: named.plan_id.clone(),
        result: String::new(),
    };
    if let Some(why) = denied {
        let message = match &caller {
            Caller::User(u) => format!(
                "{action}: user {} (role {}) is not allowed: {why}; an admin can grant it with `berth user add` (another role or scope)",
                u.name, u.role
            ),
            _ => format!("{action}: not allowed: {why}"),
        };
        audit::record(
            &shared,
            &Record {
                result: result_of(StatusCode::FORBIDDEN, Some(&why)),
                ..base
            },
        )
        .await;
        return forbidden(message).into_response();
    }
    parts.extensions.insert(caller);
    let response = next.run(Request::from_parts(parts, body)).await;
    if !rule.audit {
        return response;
    }
    let status = response.status();
    let mut record = Record {
        result: result_of(status, None),
        ..base
    };
    // A deploy or rollback answers its stack, environment and plan id.
    let response = if status.is_success() && rule.capability == Capability::Deploy {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                    if let Some(id) = v.pointer("/plan/id").and_then(|x| x.as_str()) {
                        record.plan_id = id.to_string();
                    }
                    if let (Some(s), Some(e)) = (
                        v.get("stack").and_then(|x| x.as_str()),
                        v.get("env").and_then(|x| x.as_str()),
                    ) {
                        record.target = format!("{s}/{e}");
                    }
                }
                Response::from_parts(parts, axum::body::Body::from(bytes))
            }
            Err(_) => Response::from_parts(parts, axum::body::Body::empty()),
        }
    } else {
        response
    };
    audit::record(&shared, &record).await;
    response
}

#[cfg(test)]
mod tests;
