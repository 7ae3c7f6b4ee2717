//! `berth status` and `berth events`.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use berth_api::control::{
    ArmTrafficView, Event, InstanceView, ServiceView, StackView, StatusView,
    STATUS_TRAFFIC_WINDOW_MS,
};
use berth_api::InstanceState;
use berth_store::EventKind;
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::nodes::fresh_view;
use super::{AppState, Caller};
use crate::error::ApiError;
use crate::keys;
use crate::state::{Desired, InstanceRecord};
use crate::Shared;

/// `GET /v1/health` (no token): `ok` while the store accepts writes; 503 with
/// `store: unwritable (…)` after a write failed (a full disk) until the store has recovered,
/// which it retries by itself. The healthy body stays `ok\n`: scripts and tests read it.
pub async fn health(State(shared): AppState) -> (axum::http::StatusCode, String) {
    match shared.store.health().await {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n".to_string()),
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("store: unwritable ({e})\n"),
        ),
    }
}

/// `?stack=NAME`
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    #[serde(default)]
    stack: Option<String>,
}

/// `GET /v1/status`: every stack (or one) with its services and instances.
pub async fn status(
    State(shared): AppState,
    caller: Caller,
    Query(q): Query<StatusQuery>,
) -> Result<Json<StatusView>, ApiError> {
    caller.require_admin()?;
    super::nodes::fresh_view(&shared).await?;
    let now = shared.clock.now_ms();
    let view = shared.view.read();
    let mut stacks = Vec::new();
    for ((stack, env), rollout) in view.rollouts() {
        if q.stack.as_ref().is_some_and(|s| s != stack) {
            continue;
        }
        let release = view.release(stack, env, rollout.value.to);
        let mut services = Vec::new();
        let names: Vec<String> = release
            .map(|r| r.value.spec.services.keys().cloned().collect())
            .unwrap_or_default();
        let regions = release.map(|r| r.value.spec.regions().len()).unwrap_or(1) as u32;
        // The stack's instances by service, in one walk over its index (id order).
        let mut by_service: std::collections::HashMap<&str, Vec<&InstanceRecord>> =
            std::collections::HashMap::new();
        for r in view.instances_of(stack, env) {
            by_service
                .entry(r.value.spec.service.as_str())
                .or_default()
                .push(&r.value);
        }
        for name in names {
            let desired = release
                .and_then(|r| r.value.spec.services.get(&name))
                .map(|s| {
                    crate::controllers::replicas::desired(&view, stack, env, s)
                        .saturating_mul(regions)
                })
                .unwrap_or(0);
            let of_service = by_service.remove(name.as_str()).unwrap_or_default();
            let instances: Vec<InstanceView> = of_service
                .iter()
                .map(|r| InstanceView {
                    id: r.spec.id.clone(),
                    node: r.spec.node.clone(),
                    release: r.spec.release,
                    state: r.state(),
                    desired: r.desired.as_str().to_string(),
                    addr: r
                        .status
                        .as_ref()
                        .and_then(|s| berth_api::primary_port(&s.ports))
                        .and_then(|(_, p)| {
                            view.node(&r.spec.node)
                                .map(|n| format!("{}:{p}", n.value.registration.address))
                        }),
                    // A down node's report is stale: say so instead of showing it as news.
                    message: if crate::liveness::node_is_up(&shared, &r.spec.node, now) {
                        r.status.as_ref().and_then(|s| s.message.clone())
                    } else {
                        Some(format!(
                            "node {} is down; this is its last report",
                            r.spec.node
                        ))
                    },
                    created_ms: r.created_ms,
                    since_ms: r.status.as_ref().map(|s| s.since_ms).unwrap_or(0),
                    restarts: r.status.as_ref().map(|s| s.restarts).unwrap_or(0),
                })
                .collect();
            let healthy = of_service
                .iter()
                .filter(|r| r.desired == Desired::Run && r.state() == InstanceState::Healthy)
                .count() as u32;
            let pending = rollout.value.unplaced.get(&name).cloned();
            let traffic = release
                .and_then(|r| r.value.spec.services.get(&name))
                .map(|spec| arm_traffic(&shared, stack, &name, spec, &rollout.value, now))
                .unwrap_or_default();
            let maintenance = view
                .maintenance()
                .contains_key(&(stack.to_string(), name.clone()));
            services.push(ServiceView {
                name,
                desired,
                healthy,
                pending,
                instances,
                maintenance,
                traffic,
            });
        }
        if q.stack.is_some() || !services.is_empty() || rollout.value.to > 0 {
            stacks.push(StackView {
                stack: stack.clone(),
                env: env.clone(),
                live_release: Some(rollout.value.to),
                rollout: rollout.value.describe(),
                services,
            });
        }
    }
    drop(view);
    if let Some(s) = &q.stack {
        if stacks.is_empty() {
            return Err(ApiError::not_found(format!(
                "no stack named {s} is deployed: see `berth status` for the list"
            )));
        }
    }
    Ok(Json(StatusView { stacks }))
}

/// The arms `berth status` shows for `service` (see [`ServiceView::traffic`]): with an A/B
/// split, the route's own arm and the split service's; with a canary in progress, the stable
/// and the new release. Nothing for a service with neither (its one arm says nothing new).
fn arm_traffic(
    shared: &crate::Shared,
    stack: &str,
    name: &str,
    spec: &berth_spec::model::Service,
    rollout: &crate::state::RolloutRecord,
    now: u64,
) -> Vec<ArmTrafficView> {
    let Some(route) = &spec.route else {
        return Vec::new();
    };
    let canary = match rollout.services.get(name) {
        Some(berth_rollout::ServiceRollout::Canary(c))
            if rollout.phase == crate::state::RolloutPhase::Progressing
                && !c.phase.is_terminal() =>
        {
            Some((c.from_release, c.to_release))
        }
        _ => None,
    };
    let mut arms: Vec<(String, Option<u64>)> = Vec::new();
    match canary {
        Some((from, to)) => {
            arms.push((crate::traffic::OWN_ARM.to_string(), Some(from)));
            arms.push((crate::traffic::OWN_ARM.to_string(), Some(to)));
        }
        None if route.split.is_some() => arms.push((crate::traffic::OWN_ARM.to_string(), None)),
        None => {}
    }
    if let Some(split) = &route.split {
        arms.push((split.service.clone(), None));
    }
    let since = now.saturating_sub(STATUS_TRAFFIC_WINDOW_MS);
    arms.into_iter()
        .map(|(arm, release)| {
            let w = shared
                .traffic
                .window_of(stack, name, release, &arm, since, now);
            ArmTrafficView {
                arm,
                release,
                requests: w.requests,
                errors_5xx: w.errors_5xx,
                p99_ms: w.p99_ms(),
            }
        })
        .collect()
}

/// `?follow=true&since=REV`: `since` is the last revision already seen; events start after it.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    since: Option<i64>,
    /// Only this stack's changes.
    #[serde(default)]
    stack: Option<String>,
    /// Only this environment's changes (of any stack, or of `stack`).
    #[serde(default)]
    env: Option<String>,
}

/// How many past changes `berth events` shows without `--since`.
const RECENT: i64 = 100;

/// Without `follow`, how long to wait for more events of the last revision before ending.
const END_OF_HISTORY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// `GET /v1/events`: every state change as server-sent events; without `follow`, the recent
/// history and then the end of the stream.
pub async fn events(
    State(shared): AppState,
    caller: Caller,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require_admin()?;
    let now = shared.store.revision().await?;
    // `since` is the last revision the caller has seen: start after it.
    let wanted = q
        .since
        .map(|seen| seen.saturating_add(1))
        .unwrap_or(now - RECENT + 1)
        .max(1);
    let stream = match shared.store.watch("/", wanted).await {
        Ok(s) => s,
        // Older history is compacted: start from what is kept.
        Err(berth_store::StoreError::Compacted {
            compact_revision, ..
        }) => shared.store.watch("/", compact_revision + 1).await?,
        Err(e) => return Err(e.into()),
    };
    let follow = q.follow;
    // Without follow, end once history up to `now` is sent, even if nothing newer arrives. One
    // revision may hold several events (a transaction), which arrive together: once revision
    // `now` is reached, the first pause ends the stream.
    let stream =
        futures::stream::unfold((stream, false), move |(mut stream, reached)| async move {
            let item = if reached && !follow {
                tokio::time::timeout(END_OF_HISTORY_PAUSE, stream.next())
                    .await
                    .ok()??
            } else {
                stream.next().await?
            };
            let keep = match &item {
                Ok(e) => follow || e.revision <= now,
                Err(_) => false,
            };
            if !keep {
                return None;
            }
            let reached = reached || item.as_ref().is_ok_and(|e| e.revision >= now);
            Some((item, (stream, reached)))
        });
    let (want_stack, want_env) = (q.stack, q.env);
    let events = stream
        .filter_map(|item| std::future::ready(item.ok()))
        .filter_map(move |e| {
            let event = event_of(&shared, e).filter(|event| {
                want_stack
                    .as_ref()
                    .is_none_or(|s| event.stack.as_ref() == Some(s))
                    && want_env
                        .as_ref()
                        .is_none_or(|w| event.env.as_ref() == Some(w))
            });
            std::future::ready(event.map(|event| {
                Ok(SseEvent::default().data(serde_json::to_string(&event).unwrap_or_default()))
            }))
        });
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        if !follow && wanted > now {
            Box::pin(futures::stream::empty())
        } else {
            Box::pin(events)
        };
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// The event a store change is for people: `None` for the server's own bookkeeping
/// (credential hashes and the like), which is nobody's business on the stream.
fn event_of(shared: &Shared, e: berth_store::WatchEvent) -> Option<Event> {
    let subject = keys::subject(&e.kv.key);
    // The audit log has its own command (`berth audit`): its appends would crowd the stream.
    // The wrapped data keys are bookkeeping too (a rotation is in the audit log).
    if matches!(subject, "other" | "audit" | "secret-key") {
        return None;
    }
    let (stack, env) = match keys::stack_of(&e.kv.key) {
        Some((stack, env)) => (Some(stack.to_string()), env.map(str::to_string)),
        // An instance names its stack in its record (the one before a delete).
        None if subject == "instance" => {
            let record = match e.kind {
                EventKind::Put => Some(&e.kv.value),
                EventKind::Delete => e.prev.as_ref().map(|p| &p.value),
            };
            record
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
                .map(|v| {
                    let field = |p: &str| v.pointer(p).and_then(|s| s.as_str()).map(str::to_string);
                    (field("/spec/stack"), field("/env"))
                })
                .unwrap_or_default()
        }
        None => (None, None),
    };
    let summary = summarize(&e);
    let summary = match (&stack, &env) {
        (Some(stack), Some(env)) => format!("{stack}/{env} {summary}"),
        (Some(stack), None) => format!("{stack} {summary}"),
        _ => summary,
    };
    Some(Event {
        revision: e.revision,
        kind: match e.kind {
            EventKind::Put => "put".to_string(),
            EventKind::Delete => "delete".to_string(),
        },
        subject: subject.to_string(),
        summary,
        at_ms: shared.view.seen_at(e.revision),
        who: who_of(&e),
        key: e.kv.key,
        stack,
        env,
    })
}

/// Who made a change, where its record says: a release's `who` (the user who deployed or
/// rolled back it).
fn who_of(e: &berth_store::WatchEvent) -> Option<String> {
    let field = match keys::subject(&e.kv.key) {
        "release" => "who",
        // A pending plan: its author.
        "approval" => "author",
        _ => return None,
    };
    if !matches!(e.kind, EventKind::Put) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&e.kv.value).ok()?;
    value.get(field)?.as_str().map(str::to_string)
}

/// One line about a change, for people (the stack is prefixed by [`event_of`]).
fn summarize(e: &berth_store::WatchEvent) -> String {
    let key = &e.kv.key;
    if let Some(node) = key.strip_prefix(keys::NODE_SEEN) {
        return match e.kind {
            EventKind::Put => format!("node {node} is down (no heartbeat)"),
            EventKind::Delete => format!("node {node} is up again"),
        };
    }
    if matches!(e.kind, EventKind::Delete) {
        return format!(
            "{} {} removed",
            keys::subject(key),
            key.rsplit('/').next().unwrap_or(key)
        );
    }
    let value: serde_json::Value = serde_json::from_slice(&e.kv.value).unwrap_or_default();
    match keys::subject(key) {
        "instance" => {
            let id = value
                .pointer("/spec/id")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            let state = value
                .pointer("/status/state")
                .and_then(|v| v.as_str())
                .unwrap_or("pending");
            let desired = value
                .pointer("/desired")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            format!("instance {id}: {state} (wanted: {desired})")
        }
        "release" => {
            let n = value
                .pointer("/number")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let status = value
                .pointer("/status")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            format!("release {n}: {status}")
        }
        "rollout" => {
            let to = value.pointer("/to").and_then(|v| v.as_u64()).unwrap_or(0);
            let phase = value
                .pointer("/phase/phase")
                .and_then(|v| v.as_str())
                .unwrap_or("?");
            let notes = serde_json::from_value::<crate::state::RolloutRecord>(value.clone())
                .map(|r| {
                    format!(
                        "{}{}",
                        r.progress_notes(),
                        r.halted.map(|h| format!(", {h}")).unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            format!("rollout to {to}: {phase}{notes}")
        }
        "node" => format!(
            "node {} registered",
            value
                .pointer("/registration/name")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
        ),
        // The name and version only: the value never enters the event stream. A rotation
        // blanks the old values in the change log (`Store::forget`), so the version is read
        // from its own key, written in the same transaction as the value.
        "secret" if key.starts_with(keys::SECRETS) => format!(
            "secret {}: value stored (never shown)",
            &key[keys::SECRETS.len()..]
        ),
        "secret" if key.starts_with(keys::SECRET_VERSIONS) => format!(
            "secret {}: version {}",
            &key[keys::SECRET_VERSIONS.len()..],
            value.as_u64().unwrap_or(0)
        ),
        // A pending plan: its id, how far its approvals are, and its author.
        "approval" => {
            let field = |p: &str| value.pointer(p).and_then(|v| v.as_str()).unwrap_or("?");
            let have = value
                .pointer("/approved_by")
                .and_then(|v| v.as_array())
                .map_or(0, Vec::len);
            let needed = value
                .pointer("/needed")
                .and_then(|v| v.as_u64())
                .unwrap_or(1);
            match value.pointer("/rejected/by").and_then(|v| v.as_str()) {
                Some(by) => format!(
                    "plan {} rejected by {by}: {}",
                    field("/plan_id"),
                    field("/rejected/reason")
                ),
                None => format!(
                    "plan {} pending approval ({have}/{needed}) by {}",
                    field("/plan_id"),
                    field("/author")
                ),
            }
        }
        // Never the token's hash: the name and role only.
        "user" => format!(
            "user {}: {}",
            &key[keys::USERS.len()..],
            value
                .pointer("/role")
                .and_then(|v| v.as_str())
                .unwrap_or("?")
        ),
        other => format!("{other} {key} changed"),
    }
}

/// `POST /v1/maintenance/{stack}/{service}`: turns maintenance mode on or off. The routers get
/// it with their next table, at once; instances are not touched.
pub async fn maintenance(
    State(shared): AppState,
    caller: Caller,
    axum::extract::Path((stack, service)): axum::extract::Path<(String, String)>,
    req: Result<
        Json<berth_api::control::MaintenanceRequest>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_admin()?;
    let req = super::body(req)?;
    super::nodes::fresh_view(&shared).await?;
    let known = {
        let view = shared.view.read();
        view.rollouts()
            .iter()
            .filter(|((s, _), _)| *s == stack)
            .filter_map(|((s, env), rollout)| view.release(s, env, rollout.value.to))
            .any(|r| r.value.spec.services.contains_key(&service))
    };
    if !known {
        return Err(ApiError::not_found(format!(
            "stack {stack} has no service {service}: see `berth status`"
        )));
    }
    let key = keys::maintenance(&stack, &service);
    if req.on {
        let view = berth_api::control::MaintenanceView {
            page_html: req.page_html,
        };
        let revision = shared.store.put(&key, crate::state::encode(&view)).await?;
        // The routers' next table (and any read of it) holds the page.
        shared.view.caught_up(revision).await;
    } else if shared.store.delete(&key).await? {
        fresh_view(&shared).await?;
    }
    Ok(Json(
        serde_json::json!({ "stack": stack, "service": service, "maintenance": req.on }),
    ))
}
