//! The policy table against the router: every route listed, and the whole role × endpoint
//! matrix generated from the table and asserted through the real router on a real store.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_api::identity::{Role, UserAdd};
use berth_store::EmbeddedStore;
use tower::ServiceExt;

use super::*;
use crate::{users, Clock, ServerConfig, Shared};

/// Every `(METHOD, pattern)` the router in `http/mod.rs` declares, read from its source: each
/// `.route("PATTERN", get(…).post(…))` call, methods found as `get(`, `post(`, `put(`,
/// `delete(` (also chained as `.post(`) up to the call's closing parenthesis.
fn declared_routes() -> Vec<(String, String)> {
    let source = include_str!("../http/mod.rs");
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let Some(open) = rest.find('"') else { break };
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let pattern = after[..close].to_string();
        // The call's extent: up to the parenthesis that closes `.route(`.
        let mut depth = 1usize;
        let mut end = after.len();
        for (i, c) in after[close + 1..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = close + 1 + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &after[close + 1..end];
        for (word, method) in [
            ("get(", "GET"),
            ("post(", "POST"),
            ("put(", "PUT"),
            ("delete(", "DELETE"),
        ] {
            let mut from = 0;
            while let Some(i) = call[from..].find(word) {
                let pos = from + i;
                let before = call[..pos].chars().next_back();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
                    out.push((method.to_string(), pattern.clone()));
                }
                from = pos + word.len();
            }
        }
        rest = &after[end..];
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn every_route_of_the_router_is_in_the_table() {
    let declared = declared_routes();
    assert!(
        declared.len() >= 25,
        "the route parser found too few routes: {declared:?}"
    );
    let mut missing = Vec::new();
    for (method, route) in &declared {
        if !POLICY
            .iter()
            .any(|r| r.method == method && r.route == route)
        {
            missing.push(format!(
                "    rule(\"{method}\", \"{route}\", C::?, S::?, {}),",
                method != "GET"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "routes in crates/server/src/http/mod.rs without a row in the policy table: add to POLICY in crates/server/src/policy.rs\n{}\nwith C:: the capability it takes (Read, Deploy, Approve, SecretsWrite, AdminNodes, AdminUsers, AuditRead, OwnToken, Public), S:: where its stack/env come from (None, Path, DeployBody), and whether the audit log records every call (mutating calls: true). Unlisted routes answer 500 until then.",
        missing.join("\n")
    );
    let mut stale = Vec::new();
    for r in POLICY {
        if !declared.iter().any(|(m, p)| m == r.method && p == r.route) {
            stale.push(format!("{} {}", r.method, r.route));
        }
    }
    assert!(
        stale.is_empty(),
        "rows of POLICY (crates/server/src/policy.rs) for routes http/mod.rs does not declare: {stale:?}; remove them or fix the pattern"
    );
    let mut seen = std::collections::HashSet::new();
    for r in POLICY {
        assert!(
            seen.insert((r.method, r.route)),
            "{} {} is in POLICY twice",
            r.method,
            r.route
        );
    }
}

#[test]
fn roles_grant_what_the_issue_says() {
    use Capability::*;
    for role in Role::ALL {
        assert!(grants(role, Read), "{role} reads");
        assert!(grants(role, OwnToken));
    }
    assert!(!grants(Role::Viewer, Deploy));
    assert!(!grants(Role::Viewer, SecretsWrite));
    assert!(grants(Role::Deployer, Deploy));
    assert!(!grants(Role::Deployer, Approve));
    assert!(!grants(Role::Deployer, SecretsWrite));
    assert!(!grants(Role::Deployer, AdminUsers));
    assert!(grants(Role::Approver, Approve));
    assert!(!grants(Role::Approver, Deploy));
    for c in [
        Deploy,
        Approve,
        SecretsWrite,
        AdminNodes,
        AdminUsers,
        AuditRead,
    ] {
        assert!(grants(Role::Admin, c));
    }
}

#[test]
fn a_stack_line_is_read_for_the_target_only_when_it_is_plain() {
    assert_eq!(stack_line("stack: shop\nx: 1\n").as_deref(), Some("shop"));
    assert_eq!(stack_line("stack: \"shop\" # c\n").as_deref(), Some("shop"));
    assert_eq!(stack_line("  stack: shop\n"), None);
    assert_eq!(stack_line("stack: Sh op\n"), None);
}

async fn shared(dir: &std::path::Path) -> Arc<Shared> {
    let store = EmbeddedStore::open(dir.join("state.redb"))
        .await
        .expect("store");
    Shared::new(ServerConfig {
        data_dir: dir.to_path_buf(),
        store: Arc::new(store),
        clock: Clock::system(),
        tls: None,
        secrets_key_file: None,
    })
    .await
    .expect("shared")
}

const STACK: &str = "stack: shop\nenvironments:\n  staging:\n    regions: [local]\n  production:\n    regions: [local]\nservices:\n  web:\n    image: example/web:1\n";

/// A concrete path for a pattern.
fn concrete(route: &str) -> String {
    route
        .replace("{stack}", "shop")
        .replace("{env}", "staging")
        .replace("{name}", "n1")
        .replace("{action}", "drain")
        .replace("{id}", "agent-n1")
        .replace("{service}", "web")
        .replace("{command}", "pause")
        .replace("{plan}", "ab12cd34ef56")
}

fn body_for(rule: &Rule, stack_source: &str, env: &str) -> Body {
    match rule.scope {
        Scope::DeployBody => Body::from(
            serde_json::json!({
                "file": "shop.yaml",
                "source": stack_source,
                "env": env,
                "dry_run": true,
            })
            .to_string(),
        ),
        _ if rule.method == "GET" || rule.method == "DELETE" => Body::empty(),
        _ => Body::from("{}"),
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: Body,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(body)
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    // Event streams never end on their own: only the status matters there.
    let text = if path.starts_with("/v1/events") {
        String::new()
    } else {
        let bytes = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            axum::body::to_bytes(resp.into_body(), usize::MAX),
        )
        .await
        .ok()
        .and_then(|b| b.ok())
        .unwrap_or_default();
        String::from_utf8_lossy(&bytes).to_string()
    };
    (status, text)
}

/// The matrix: for every row of the table and every role, a user of that role calls the
/// route; a role that lacks the capability gets 403 naming it, one that has it gets past the
/// policy (not 401, not 403, and the route exists). The admin token gets past everywhere.
#[tokio::test]
async fn the_role_endpoint_matrix_follows_the_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = shared(dir.path()).await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let follower = shared.clone();
    tokio::spawn(async move { follower.view.follow(follower.store.as_ref(), stopped).await });
    let app = crate::http::router(shared.clone());
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin token");
    let admin = admin.trim().to_string();

    let mut tokens = Vec::new();
    for role in Role::ALL {
        let (_, token) = users::add(
            &shared,
            &UserAdd {
                name: format!("u-{role}"),
                role,
                stacks: vec![],
                envs: vec![],
            },
        )
        .await
        .expect("add user");
        tokens.push((role, token));
    }
    // Rotating a token invalidates it: those rows go last.
    let mut rows: Vec<&Rule> = POLICY.iter().collect();
    rows.sort_by_key(|r| r.capability == Capability::OwnToken);
    let mut checked = 0;
    for rule in rows {
        let path = concrete(rule.route);
        let mut callers: Vec<(String, &str, bool)> = tokens
            .iter()
            .map(|(role, t)| {
                (
                    format!("role {role}"),
                    t.as_str(),
                    grants(*role, rule.capability),
                )
            })
            .collect();
        callers.push(("the admin token".into(), admin.as_str(), true));
        for (who, token, allowed) in callers {
            let (status, text) = call(
                &app,
                rule.method,
                &path,
                token,
                body_for(rule, STACK, "staging"),
            )
            .await;
            let what = format!("{} {} as {who}: {status} {text}", rule.method, path);
            if rule.capability == Capability::Public {
                assert_eq!(status, StatusCode::OK, "{what}");
            } else if allowed {
                assert_ne!(status, StatusCode::FORBIDDEN, "{what}");
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{what}");
                assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}");
                assert!(
                    !(status == StatusCode::NOT_FOUND && text.is_empty())
                        && status != StatusCode::METHOD_NOT_ALLOWED,
                    "the route does not exist: {what}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                assert!(
                    text.contains(&format!("missing capability {}", rule.capability.name())),
                    "{what}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, POLICY.len() * (Role::ALL.len() + 1));

    // Every denial is in the audit log, and the chain holds.
    let (head, entries) = crate::audit::read_all(&shared).await.expect("audit");
    let verify = crate::audit::verify(head.as_ref(), &entries);
    assert!(verify.ok, "{:?}", verify.problems);
    let all = crate::audit::select(
        &entries,
        &crate::audit::Filter {
            limit: Some(crate::audit::MAX_LIMIT),
            ..Default::default()
        },
    );
    assert!(all.iter().any(|e| e.user == "u-viewer"
        && e.action == "POST /v1/deploy"
        && e.result == "denied: missing capability deploy"
        && e.target == "shop/staging"));
    assert!(all
        .iter()
        .any(|e| e.user == "u-deployer" && e.action == "POST /v1/deploy" && e.result == "ok"));
}

/// Scopes: a deployer limited to `shop` in `staging` deploys there, and is refused (403,
/// saying why) another stack, another environment, and a route reaching every environment.
#[tokio::test]
async fn a_scoped_deployer_acts_only_inside_its_scope() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = shared(dir.path()).await;
    let app = crate::http::router(shared.clone());
    let (_, token) = users::add(
        &shared,
        &UserAdd {
            name: "ci".into(),
            role: Role::Deployer,
            stacks: vec!["shop".into()],
            envs: vec!["staging".into()],
        },
    )
    .await
    .expect("add user");
    let deploy = lookup(&Method::POST, "/v1/deploy").expect("row");
    let (status, text) = call(
        &app,
        "POST",
        "/v1/deploy",
        &token,
        body_for(deploy, STACK, "staging"),
    )
    .await;
    assert_ne!(status, StatusCode::FORBIDDEN, "{text}");
    let (status, text) = call(
        &app,
        "POST",
        "/v1/deploy",
        &token,
        body_for(deploy, STACK, "production"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("not production"), "{text}");
    let other = STACK.replace("stack: shop", "stack: bank");
    let (status, text) = call(
        &app,
        "POST",
        "/v1/deploy",
        &token,
        body_for(deploy, &other, "staging"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("not bank"), "{text}");
    let (status, text) = call(
        &app,
        "POST",
        "/v1/stacks/shop/production/rollback",
        &token,
        Body::from("{}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let (status, text) = call(
        &app,
        "POST",
        "/v1/maintenance/shop/web",
        &token,
        Body::from("{\"on\":true}"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("every environment"), "{text}");
}

/// A node token keeps its old answers: 401 on people's routes, its own endpoints open.
#[tokio::test]
async fn node_and_bad_tokens_keep_their_answers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = shared(dir.path()).await;
    let app = crate::http::router(shared.clone());
    let (status, _) = call(&app, "GET", "/v1/status", "wrong", Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let forged = format!("berth_u_alice.{}", "0".repeat(64));
    let (status, _) = call(&app, "GET", "/v1/status", &forged, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let node = crate::auth::new_node_token("n1");
    shared
        .node_tokens
        .lock()
        .expect("lock")
        .insert(crate::auth::TokenHash::of(&node).to_hex(), "n1".into());
    let (status, _) = call(&app, "GET", "/v1/status", &node, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, text) = call(&app, "GET", "/v1/routes", &node, Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    // Both failures are in the audit log, without the tokens.
    let (_, entries) = crate::audit::read_all(&shared).await.expect("audit");
    let all = crate::audit::select(&entries, &Default::default());
    assert_eq!(
        all.iter().filter(|e| e.result == "unauthorized").count(),
        2,
        "{all:?}"
    );
    for (_, bytes) in &entries {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains(&forged) && !text.contains("wrong"), "{text}");
    }
}

/// A route nobody added to the table runs nothing and answers 500 naming the table, even for
/// the admin token: deny by default.
#[tokio::test]
async fn a_route_missing_from_the_table_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = shared(dir.path()).await;
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ran.clone();
    let app = axum::Router::new()
        .route(
            "/v1/unlisted",
            axum::routing::post(move || {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                async { "ran" }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            enforce,
        ))
        .with_state(shared.clone());
    let admin = std::fs::read_to_string(dir.path().join("admin.token")).expect("admin token");
    let (status, text) = call(&app, "POST", "/v1/unlisted", admin.trim(), Body::from("{}")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{text}");
    assert!(text.contains("is not in the policy table"), "{text}");
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "the handler ran"
    );
}
