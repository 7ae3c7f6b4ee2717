//! Agents and routers: registration, heartbeats, and the two long-polls (a node's desired
//! instances, the routing table).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::control::{
    DesiredInstances, GcResponse, Heartbeat, NodeResources, NodeState, NodeView, RegisterRequest,
    RegisterResponse,
};
use berth_store::{Compare, Op, Txn};
use serde::Deserialize;
use tokio::sync::watch;

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::state::{encode, Desired, NodeRecord};
use crate::view::View;
use crate::{auth, keys, liveness, routers, version, Shared};

/// Longest a long-poll waits before answering with what it has.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// Registers (or re-registers) a node; answers its node credential.
///
/// The join token registers only a name nobody holds (it binds the name to the node token it
/// issues); re-registering a bound name takes that node's current token or the admin token, so
/// nobody holding the join token can take an existing node over (its address, its secrets).
/// Registering does not count the node as up: it is up once it calls in with the new token.
pub async fn register(
    State(shared): AppState,
    caller: Caller,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    if !(matches!(caller, Caller::Joining | Caller::Node(_)) || caller.is_admin()) {
        return Err(ApiError::unauthorized());
    }
    let req = body(req)?;
    if let Err(why) = auth::validate_node_name(&req.name) {
        let shown: String = req.name.chars().take(64).collect();
        let more = if req.name.chars().count() > 64 {
            "…"
        } else {
            ""
        };
        return Err(ApiError::invalid(
            format!("name: `{shown}{more}` is not a node name: {why}"),
            vec![],
        ));
    }
    if req.name == "register" {
        return Err(ApiError::invalid(
            "name: `register` is reserved (it is the registration endpoint's path): choose another node name",
            vec![],
        ));
    }
    if let Caller::Node(name) = &caller {
        if *name != req.name {
            return Err(ApiError::unauthorized());
        }
    }
    let token = auth::new_node_token(&req.name);
    let key = keys::node(&req.name);
    let previous = shared.store.get(&key).await?;
    if previous.is_some() && caller == Caller::Joining {
        tracing::warn!(node = %req.name, "refused the join token for a node name already registered");
        return Err(already_registered(&req.name));
    }
    let mut record = NodeRecord {
        registration: RegisterRequest {
            keep_labels: false,
            ..req.clone()
        },
        registered_ms: shared.clock.now_ms(),
        draining: false,
    };
    let mut previous_labels = None;
    if let Some(kv) = &previous {
        if let Ok(old) = serde_json::from_slice::<NodeRecord>(&kv.value) {
            record.draining = old.draining;
            let old_labels = old.registration.labels;
            if req.keep_labels {
                record.registration.labels = old_labels;
            } else if old_labels != req.labels {
                previous_labels = Some(old_labels);
            }
        }
    }
    // The record must still be what was read: two joins of one new name cannot both win, and a
    // `berth node rm` meanwhile is not undone by a node token it just revoked.
    let read = previous.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
    let written = shared
        .store
        .txn(Txn {
            compares: vec![Compare::mod_revision(&key, read)],
            success: vec![
                Op::put(&key, encode(&record)),
                Op::put(
                    keys::node_token(&req.name),
                    auth::TokenHash::of(&token).to_hex().into_bytes(),
                ),
            ],
            failure: vec![],
        })
        .await?;
    if !written.succeeded {
        return Err(if caller == Caller::Joining {
            already_registered(&req.name)
        } else {
            ApiError::conflict(format!(
                "node {} changed while it registered: try again",
                req.name
            ))
        });
    }
    // The previous token of this node is no longer in the store: forget it, and know the new
    // one at once (so its first use needs no store read, even from a throttled address).
    if let Ok(mut cache) = shared.node_tokens.lock() {
        cache.retain(|_, name| *name != req.name);
        cache.insert(auth::TokenHash::of(&token).to_hex(), req.name.clone());
    }
    if let Some(old) = &previous_labels {
        tracing::info!(node = %req.name, from = %show_labels(old), to = %show_labels(&record.registration.labels), "node labels changed");
    }
    shared.kick.notify_one();
    Ok(Json(RegisterResponse {
        node_token: token,
        labels: record.registration.labels,
        previous_labels,
    }))
}

/// Labels as `k=v,k=v` (`none` when empty), for log lines.
fn show_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// 409 for the join token on a name already registered: what to do instead.
fn already_registered(name: &str) -> ApiError {
    ApiError::conflict(format!(
        "node {name} is already registered: re-registering it needs its current node token (its agent keeps it in DATA_DIR/node.token) or the admin token; the join token only registers new names. If the node's data directory was lost, remove the old node first with `berth node rm {name}`"
    ))
}

use axum::extract::State;

/// Records that the node is alive and stores the instance statuses that changed.
///
/// Reads the cluster view, not the store, and writes only what changed: a heartbeat that
/// brings no news costs no store access, and its work is O(the node's instances).
pub async fn heartbeat(
    State(shared): AppState,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_node(&name)?;
    let req = body(req)?;
    // Only the node itself proves it is alive (an admin may call on its behalf).
    if caller == Caller::Node(name.clone()) {
        liveness::mark_alive(&shared, &name);
    }
    if let Some(report) = &req.last_gc {
        if let Ok(mut reports) = shared.gc_reports.lock() {
            if reports.get(&name) != Some(report) {
                reports.insert(name.clone(), report.clone());
            }
        }
    }
    // Every change this heartbeat brings, as (compare, op) pairs: written in one transaction
    // (one fsync however many instances changed), or one by one if that races with the
    // controller, so a conflict on one instance does not hold back the others.
    let writes = status_writes(&shared.view.read(), &name, &req.statuses);
    crate::pins::pin_images(&shared, &name, &req.statuses).await?;
    let mut written = None;
    if !writes.is_empty() {
        let (compares, ops): (Vec<Compare>, Vec<Op>) = writes.iter().cloned().unzip();
        let done = shared
            .store
            .txn(Txn {
                compares,
                success: ops,
                failure: vec![],
            })
            .await?;
        if done.succeeded {
            written = Some(done.revision);
        } else {
            for (compare, op) in writes {
                let done = shared
                    .store
                    .txn(Txn {
                        compares: vec![compare],
                        success: vec![op],
                        failure: vec![],
                    })
                    .await?;
                if done.succeeded {
                    written = written.max(Some(done.revision));
                }
            }
        }
    }
    if let Some(revision) = written {
        // The next heartbeat decides from a view that holds these writes.
        shared.view.caught_up(revision).await;
        shared.kick.notify_one();
    }
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// What a node's statuses change in the store: a status that differs from the record's, the
/// delete of an instance being stopped that has ended or that the agent no longer runs. Each
/// write compares the record's `mod_revision`. O(the node's instances).
fn status_writes(
    view: &View,
    node: &str,
    statuses: &[berth_api::InstanceStatus],
) -> Vec<(Compare, Op)> {
    let mut writes = Vec::new();
    for status in statuses {
        let Some(rec) = view.instance(&status.id) else {
            continue;
        };
        if rec.value.spec.node != node {
            continue;
        }
        let key = keys::instance(&status.id);
        if rec.value.desired == Desired::Stop && status.state.is_terminal() {
            writes.push((
                Compare::mod_revision(&key, rec.mod_revision),
                Op::delete(&key),
            ));
        } else if rec.value.status.as_ref() != Some(status) {
            let mut updated = rec.value.clone();
            updated.status = Some(status.clone());
            writes.push((
                Compare::mod_revision(&key, rec.mod_revision),
                Op::put(&key, encode(&updated)),
            ));
        }
    }
    // An instance the server wants stopped that the agent no longer runs is gone.
    let mut reported: Option<HashSet<&str>> = None;
    for rec in view.instances_on(node) {
        if rec.value.desired != Desired::Stop {
            continue;
        }
        let reported =
            reported.get_or_insert_with(|| statuses.iter().map(|s| s.id.as_str()).collect());
        if !reported.contains(rec.value.spec.id.as_str()) {
            let key = keys::instance(&rec.value.spec.id);
            writes.push((
                Compare::mod_revision(&key, rec.mod_revision),
                Op::delete(&key),
            ));
        }
    }
    writes
}

/// `POST /v1/gc` (admin): asks every agent to collect garbage once, by bumping the generation
/// sent with their desired instances. Answers the new generation; `GET /v1/nodes` shows each
/// node's report once it has collected.
pub async fn gc(State(shared): AppState, caller: Caller) -> Result<Json<GcResponse>, ApiError> {
    caller.require_admin()?;
    for _ in 0..10 {
        let (generation, rev) = crate::state::gc_generation(shared.store.as_ref()).await?;
        let next = generation + 1;
        if shared
            .store
            .cas(keys::GC_GENERATION, rev, encode(&next))
            .await?
            .is_some()
        {
            tracing::info!(generation = next, "garbage collection requested");
            return Ok(Json(GcResponse { generation: next }));
        }
    }
    Err(ApiError::conflict(
        "the garbage-collection generation kept changing: try again",
    ))
}

/// `?version=V&wait=SECONDS`: answer once what the caller should hold differs from `V`.
#[derive(Debug, Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    wait: Option<u64>,
    /// A router's stable id, so the server knows which table it applied.
    #[serde(default)]
    router: Option<String>,
}

/// Long-polls until `compute` yields a version other than `known`, or the wait runs out.
/// `wake` changes when the answer may have changed (an indexed wake-up of the live view);
/// it is marked seen before each `compute`, so no change between the two is missed.
async fn long_poll<T, F, Fut>(
    known: Option<&str>,
    wait: Option<u64>,
    mut wake: watch::Receiver<i64>,
    compute: F,
) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(String, T), ApiError>> + Send,
{
    let deadline = crate::clock::tokio_now() + Duration::from_secs(wait.unwrap_or(0)).min(MAX_WAIT);
    loop {
        wake.borrow_and_update();
        let (version, value) = compute().await?;
        if known != Some(version.as_str()) || crate::clock::tokio_now() >= deadline {
            return Ok(value);
        }
        match tokio::time::timeout_at(deadline, wake.changed()).await {
            Ok(Ok(())) => {}
            // The wait ran out, or the wake-up went (the node was removed): answer as it is.
            Ok(Err(_)) | Err(_) => {
                let (_, value) = compute().await?;
                return Ok(value);
            }
        }
    }
}

/// The instances the node must run, long-polled by its agent. Woken only by changes to this
/// node's instances or to what every agent is sent (see [`crate::live::LiveView::node_changes`]);
/// each answer is O(the node's instances).
pub async fn desired(
    State(shared): AppState,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Json<DesiredInstances>, ApiError> {
    caller.require_node(&name)?;
    if caller == Caller::Node(name.clone()) {
        liveness::mark_alive(&shared, &name);
    }
    // Secret values go to the node itself only; an admin looking at a node's desired set
    // sees the specs without them.
    let to_node = caller == Caller::Node(name.clone());
    let wake = shared
        .view
        .node_changes(&name)
        .unwrap_or_else(|| shared.view.subscribe());
    let compute = || async {
        let keyring = &shared.keyring;
        let first = desired_of(&shared.view.read(), keyring, &name, to_node);
        let answer = match first {
            // Another server rotated the data key: read the store's keys and try once more.
            Err(crate::seal::SealError::UnknownKey(_)) => {
                keyring
                    .refresh(shared.store.as_ref())
                    .await
                    .map_err(sealed_error)?;
                desired_of(&shared.view.read(), keyring, &name, to_node)
            }
            other => other,
        }
        .map_err(sealed_error)?;
        Ok((answer.version.clone(), answer))
    };
    let result = long_poll(q.version.as_deref(), q.wait, wake, compute).await?;
    Ok(Json(result))
}

/// A sealed value that does not open: the agent gets an error, never a wrong value.
fn sealed_error(e: crate::seal::SealError) -> ApiError {
    tracing::error!(error = %e, "cannot open a sealed secret value for a node's desired set");
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// What node `name`'s agent is sent, from the view: to the node itself with its instances'
/// secret values opened ([`crate::secrets::open_env`]).
fn desired_of(
    view: &View,
    keyring: &crate::seal::Keyring,
    name: &str,
    to_node: bool,
) -> Result<DesiredInstances, crate::seal::SealError> {
    let mut instances = Vec::new();
    for r in view
        .instances_on(name)
        .filter(|r| r.value.desired != Desired::Stop)
    {
        instances.push(if to_node {
            let mut spec = r.value.spec.clone();
            spec.secret_env = crate::secrets::open_env(keyring, &r.value)?;
            spec
        } else {
            r.value.spec.without_secret_values()
        });
    }
    let keep_images = view.keep_images();
    let (gc_generation, _) = view.gc_generation();
    // Everything the agent acts on is in the version, so a `berth gc` or a changed keep list
    // wakes its long-poll.
    let version = version::content_version(&(&instances, &*keep_images, gc_generation));
    Ok(DesiredInstances {
        version,
        instances,
        keep_images: keep_images.to_vec(),
        gc_generation,
    })
}

/// The routing table, long-polled by routers. The `version` a router sends is the table it has
/// applied: that acknowledgement is what lets draining stop an instance without dropping requests.
/// Served from the table cache: built once per routing change, not per router.
pub async fn routes(
    State(shared): AppState,
    caller: Caller,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    caller.require_member()?;
    if let Some(router) = &q.router {
        routers::check_router_id(&caller, router)?;
    }
    let by_admin = caller.is_admin();
    if let (Some(router), Some(version)) = (&q.router, &q.version) {
        routers::record_ack(&shared, router, version, by_admin);
    }
    let wake = shared.view.routing_changes();
    let compute = || async {
        let table = shared.routing.current(&shared.view, &shared.tables).await;
        Ok((table.version.clone(), table))
    };
    let table = long_poll(q.version.as_deref(), q.wait, wake, compute).await?;
    if let (Some(router), Some(version)) = (&q.router, &q.version) {
        routers::record_ack(&shared, router, version, by_admin);
    }
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        table.body.clone(),
    )
        .into_response())
}

/// Waits until the view holds every write the store had when this was called: an admin's
/// read after its own write (a deploy, a drain) sees it. One revision read, no scan.
pub(crate) async fn fresh_view(shared: &Shared) -> Result<(), ApiError> {
    let revision = shared.store.revision().await?;
    shared.view.caught_up(revision).await;
    Ok(())
}

/// `berth nodes`.
pub async fn list(
    State(shared): AppState,
    caller: Caller,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    caller.require_admin()?;
    fresh_view(&shared).await?;
    Ok(Json(node_views(&shared, None)))
}

/// Every node's view (or just `only`), from the cluster view and the in-memory liveness.
fn node_views(shared: &Shared, only: Option<&str>) -> Vec<NodeView> {
    let now = shared.clock.now_ms();
    let beats = shared
        .heartbeats
        .lock()
        .map(|h| h.clone())
        .unwrap_or_default();
    let gc_reports = shared
        .gc_reports
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default();
    let view = shared.view.read();
    view.nodes()
        .values()
        .filter(|n| only.is_none_or(|o| o == n.value.registration.name))
        .map(|n| {
            let reg = &n.value.registration;
            let last = beats.get(&reg.name).copied();
            // Down wins: a drained node that died must not look merely drained.
            let state = if !liveness::node_is_up(shared, &reg.name, now) {
                NodeState::Down
            } else if n.value.draining {
                NodeState::Draining
            } else {
                NodeState::Ready
            };
            NodeView {
                name: reg.name.clone(),
                labels: reg.labels.clone(),
                resources: reg.resources,
                drivers: reg.drivers.clone(),
                state,
                draining: n.value.draining,
                instances: view.instances_on(&reg.name).count(),
                allocated: view
                    .instances_on(&reg.name)
                    .filter(|i| i.value.holds_resources())
                    .fold(NodeResources::default(), |acc, i| NodeResources {
                        cpu_millis: acc.cpu_millis + i.value.spec.spec.resources.cpu.millis,
                        memory_bytes: acc.memory_bytes + i.value.spec.spec.resources.memory.bytes,
                    }),
                last_seen_ms_ago: last.map(|t| now.saturating_sub(t)),
                last_gc: gc_reports.get(&reg.name).cloned(),
            }
        })
        .collect()
}

/// `POST /v1/nodes/{name}/drain` and `/undrain`: a draining node takes no new instances, and its
/// instances move elsewhere, each stopped only once a replacement is healthy.
pub async fn set_draining(
    State(shared): AppState,
    caller: Caller,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<NodeView>, ApiError> {
    caller.require_admin()?;
    let draining = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        _ => {
            return Err(ApiError::not_found(format!(
                "no action {action} on nodes: use drain or undrain"
            )))
        }
    };
    // The record is read from the store (one key): the compare-and-swap's basis must be the
    // store's, not a view that may be a few events behind.
    let key = keys::node(&name);
    let Some(kv) = shared.store.get(&key).await? else {
        return Err(ApiError::not_found(format!(
            "no node named {name}: see `berth nodes`"
        )));
    };
    let mut record: NodeRecord = crate::state::decode(&key, &kv.value)?;
    record.draining = draining;
    let Some(revision) = shared
        .store
        .cas(&key, kv.mod_revision, encode(&record))
        .await?
    else {
        return Err(ApiError::conflict(format!(
            "node {name} changed meanwhile: try again"
        )));
    };
    shared.kick.notify_one();
    shared.view.caught_up(revision).await;
    node_views(&shared, Some(&name))
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {name} vanished")))
}

/// `?force=true`: remove a node that is still up.
#[derive(Debug, Deserialize)]
pub struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

/// What `DELETE /v1/nodes/{name}` removed.
#[derive(Debug, serde::Serialize)]
pub struct Removed {
    pub node: String,
    /// Instance records that were on it; the controller places their replacements elsewhere.
    pub instances: usize,
}

/// `DELETE /v1/nodes/{name}` (admin), `berth node rm NAME`: removes the node's record, its
/// token (the name is free for the join token again) and its instance records, which the
/// controller replaces on other nodes as for a lost node. A node that is up is refused without
/// `force`: its agent would only register again (stop it first).
pub async fn remove(
    State(shared): AppState,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> Result<Json<Removed>, ApiError> {
    caller.require_admin()?;
    let key = keys::node(&name);
    let Some(kv) = shared.store.get(&key).await? else {
        return Err(ApiError::not_found(format!(
            "no node named {name}: see `berth nodes`"
        )));
    };
    let now = shared.clock.now_ms();
    if !q.force && liveness::node_is_up(&shared, &name, now) {
        return Err(ApiError::conflict(format!(
            "node {name} is up: stop its agent first (a running agent registers again, with the join token), or remove it anyway with --force"
        )));
    }
    // The node's instances from the view, once it holds every write made so far (each
    // delete compares the instance's revision, so a change meanwhile refuses the removal).
    fresh_view(&shared).await?;
    let mut compares = vec![Compare::mod_revision(&key, kv.mod_revision)];
    let mut ops = vec![
        Op::delete(&key),
        Op::delete(keys::node_token(&name)),
        Op::delete(keys::node_seen(&name)),
    ];
    let on_node = {
        let view = shared.view.read();
        let mut count = 0;
        for rec in view.instances_on(&name) {
            let ikey = keys::instance(&rec.value.spec.id);
            compares.push(Compare::mod_revision(&ikey, rec.mod_revision));
            ops.push(Op::delete(ikey));
            count += 1;
        }
        count
    };
    {
        // Under the liveness lock, so no down mark is written for the node meanwhile.
        let _order = shared.liveness_marks.lock().await;
        let done = shared
            .store
            .txn(Txn {
                compares,
                success: ops,
                failure: vec![],
            })
            .await?;
        if !done.succeeded {
            return Err(ApiError::conflict(format!(
                "node {name} or its instances changed meanwhile: try again"
            )));
        }
        if let Ok(mut m) = shared.marked_down.lock() {
            m.remove(&name);
        }
    }
    if let Ok(mut cache) = shared.node_tokens.lock() {
        cache.retain(|_, n| *n != name);
    }
    if let Ok(mut h) = shared.heartbeats.lock() {
        h.remove(&name);
    }
    if let Ok(mut r) = shared.gc_reports.lock() {
        r.remove(&name);
    }
    if let Ok(mut acks) = shared.router_acks.lock() {
        acks.forget(&format!("agent-{name}"));
    }
    tracing::info!(node = %name, instances = on_node, forced = q.force, "node removed");
    shared.kick.notify_one();
    Ok(Json(Removed {
        node: name,
        instances: on_node,
    }))
}
