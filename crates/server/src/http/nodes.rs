//! Agents and routers: registration, heartbeats, and the two long-polls (a node's desired
//! instances, the routing table).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query};
use axum::Json;
use berth_api::control::{
    DesiredInstances, GcResponse, Heartbeat, NodeResources, NodeState, NodeView, RegisterRequest,
    RegisterResponse, RoutingTable,
};
use berth_store::{Compare, Op, Txn};
use serde::Deserialize;

use super::{body, AppState, Caller};
use crate::error::ApiError;
use crate::state::{encode, Desired, InstanceRecord, NodeRecord, Snapshot};
use crate::{auth, keys, table, Shared};

/// Longest a long-poll waits before answering with what it has.
const MAX_WAIT: Duration = Duration::from_secs(25);

/// Registers (or re-registers) a node; answers its node credential.
pub async fn register(
    State(shared): AppState,
    caller: Caller,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> Result<Json<RegisterResponse>, ApiError> {
    if !matches!(caller, Caller::Joining | Caller::Admin) {
        return Err(ApiError::unauthorized());
    }
    let req = body(req)?;
    if req.name.is_empty()
        || !req
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(ApiError::invalid(
            format!(
                "name: `{}` is not a node name: use lower-case letters, digits, `-` and `.`",
                req.name
            ),
            vec![],
        ));
    }
    let token = format!("{}.{}", req.name, auth::generate());
    let previous = shared.store.get(&keys::node(&req.name)).await?;
    let mut record = NodeRecord {
        registration: req.clone(),
        registered_ms: shared.clock.now_ms(),
        draining: false,
    };
    if let Some(kv) = previous {
        if let Ok(old) = serde_json::from_slice::<NodeRecord>(&kv.value) {
            record.draining = old.draining;
        }
    }
    shared
        .store
        .txn(Txn {
            compares: vec![],
            success: vec![
                Op::put(keys::node(&req.name), encode(&record)),
                Op::put(
                    keys::node_token(&req.name),
                    auth::TokenHash::of(&token).to_hex().into_bytes(),
                ),
            ],
            failure: vec![],
        })
        .await?;
    // The previous token of this node is no longer in the store: forget that it was checked.
    if let Ok(mut cache) = shared.node_tokens.lock() {
        cache.retain(|_, name| *name != req.name);
    }
    mark_alive(&shared, &req.name);
    shared.kick.notify_one();
    Ok(Json(RegisterResponse { node_token: token }))
}

fn mark_alive(shared: &Shared, node: &str) {
    if let Ok(mut h) = shared.heartbeats.lock() {
        h.insert(node.to_string(), shared.clock.now_ms());
    }
}

use axum::extract::State;

/// Records that the node is alive and stores the instance statuses that changed.
pub async fn heartbeat(
    State(shared): AppState,
    caller: Caller,
    Path(name): Path<String>,
    req: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_node(&name)?;
    let req = body(req)?;
    mark_alive(&shared, &name);
    if let Some(report) = &req.last_gc {
        if let Ok(mut reports) = shared.gc_reports.lock() {
            reports.insert(name.clone(), report.clone());
        }
    }
    let snapshot = Snapshot::load(shared.store.as_ref()).await?;
    pin_images(&shared, &snapshot, &name, &req.statuses).await?;
    let reported: HashSet<&str> = req.statuses.iter().map(|s| s.id.as_str()).collect();
    // Every change this heartbeat brings, as (compare, op) pairs: written in one transaction
    // (one fsync however many instances changed), or one by one if that races with the
    // controller, so a conflict on one instance does not hold back the others.
    let mut writes: Vec<(Compare, Op)> = Vec::new();
    for status in &req.statuses {
        let Some(rec) = snapshot.instances.get(&status.id) else {
            continue;
        };
        if rec.value.spec.node != name {
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
    for (id, rec) in &snapshot.instances {
        if rec.value.spec.node == name
            && rec.value.desired == Desired::Stop
            && !reported.contains(id.as_str())
        {
            let key = keys::instance(id);
            writes.push((
                Compare::mod_revision(&key, rec.mod_revision),
                Op::delete(&key),
            ));
        }
    }
    let mut changed = false;
    if !writes.is_empty() {
        let (compares, ops): (Vec<Compare>, Vec<Op>) = writes.iter().cloned().unzip();
        changed = shared
            .store
            .txn(Txn {
                compares,
                success: ops,
                failure: vec![],
            })
            .await?
            .succeeded;
        if !changed {
            for (compare, op) in writes {
                changed |= shared
                    .store
                    .txn(Txn {
                        compares: vec![compare],
                        success: vec![op],
                        failure: vec![],
                    })
                    .await?
                    .succeeded;
            }
        }
    }
    if changed {
        shared.kick.notify_one();
    }
    Ok(Json(serde_json::json!({ "ok": true })))
}

/// Pins the image ids agents report in the releases their instances run: the instance's own
/// release, and the rollout's target when the instance carries over unchanged into it. Only a
/// service with no pin yet is pinned (first report wins; the release is otherwise immutable),
/// with a compare-and-swap on the release, so a concurrent status write loses nothing (a lost
/// race is retried on the next heartbeat).
async fn pin_images(
    shared: &Shared,
    snapshot: &Snapshot,
    node: &str,
    statuses: &[berth_api::InstanceStatus],
) -> Result<(), ApiError> {
    // (stack, env, release) → service → (image id, the instance's service spec, region)
    type Wanted<'a> =
        BTreeMap<(String, String, u64), BTreeMap<String, (String, &'a InstanceRecord)>>;
    let mut wanted: Wanted = BTreeMap::new();
    let known = |stack: &str, env: &str, number: u64, service: &str| {
        shared
            .pinned
            .lock()
            .map(|p| p.contains(&pin_key(stack, env, number, service)))
            .unwrap_or(false)
    };
    for status in statuses {
        let (Some(id), Some(rec)) = (&status.image_id, snapshot.instances.get(&status.id)) else {
            continue;
        };
        let v = &rec.value;
        if v.spec.node != node || v.spec.spec.image.is_none() {
            continue;
        }
        let mut numbers = vec![v.spec.release];
        if let Some(r) = snapshot
            .rollouts
            .get(&(v.spec.stack.clone(), v.env.clone()))
        {
            if r.value.to != v.spec.release {
                numbers.push(r.value.to);
            }
        }
        for number in numbers {
            if !known(&v.spec.stack, &v.env, number, &v.spec.service) {
                wanted
                    .entry((v.spec.stack.clone(), v.env.clone(), number))
                    .or_default()
                    .entry(v.spec.service.clone())
                    .or_insert((id.clone(), v));
            }
        }
    }
    for ((stack, env, number), services) in wanted {
        let Some(mut release) =
            crate::state::release(shared.store.as_ref(), &stack, &env, number).await?
        else {
            continue;
        };
        let mut changed = false;
        let mut now_pinned = Vec::new();
        for (service, (id, rec)) in services {
            if release.value.images.contains_key(&service) {
                now_pinned.push(service);
                continue;
            }
            // The instance must run exactly what the release says for its service: its own
            // release always does; the rollout's target only if the spec carried over.
            let same = release
                .value
                .spec
                .service_for_region(&service, &rec.region)
                .is_some_and(|s| s == rec.spec.spec);
            if same {
                release.value.images.insert(service.clone(), id);
                now_pinned.push(service);
                changed = true;
            }
        }
        let key = keys::release(&stack, &env, number);
        let stored = !changed
            || shared
                .store
                .cas(&key, release.mod_revision, encode(&release.value))
                .await?
                .is_some();
        if stored {
            if changed {
                tracing::info!(%stack, %env, release = number, images = ?release.value.images, "pinned image ids");
            }
            if let Ok(mut p) = shared.pinned.lock() {
                p.extend(now_pinned.iter().map(|s| pin_key(&stack, &env, number, s)));
            }
        }
    }
    Ok(())
}

fn pin_key(stack: &str, env: &str, number: u64, service: &str) -> String {
    format!("{stack}/{env}/{number}/{service}")
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
async fn long_poll<T, F, Fut>(
    shared: &Shared,
    known: Option<&str>,
    wait: Option<u64>,
    compute: F,
) -> Result<T, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(String, T), ApiError>> + Send,
{
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(wait.unwrap_or(0)).min(MAX_WAIT);
    let mut revisions = shared.revision.subscribe();
    loop {
        revisions.borrow_and_update();
        let (version, value) = compute().await?;
        if known != Some(version.as_str()) || tokio::time::Instant::now() >= deadline {
            return Ok(value);
        }
        if tokio::time::timeout_at(deadline, revisions.changed())
            .await
            .is_err()
        {
            let (_, value) = compute().await?;
            return Ok(value);
        }
    }
}

/// The instances the node must run, long-polled by its agent.
pub async fn desired(
    State(shared): AppState,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Json<DesiredInstances>, ApiError> {
    caller.require_node(&name)?;
    mark_alive(&shared, &name);
    // Secret values go to the node itself only; an admin looking at a node's desired set
    // sees the specs without them.
    let to_node = caller == Caller::Node(name.clone());
    let result = long_poll(&shared, q.version.as_deref(), q.wait, || {
        let shared = shared.clone();
        let name = name.clone();
        async move {
            let snapshot = Snapshot::load(shared.store.as_ref()).await?;
            let instances: Vec<_> = snapshot
                .instances
                .values()
                .filter(|r| r.value.spec.node == name && r.value.desired != Desired::Stop)
                .map(|r| {
                    if to_node {
                        r.value.spec.clone()
                    } else {
                        r.value.spec.without_secret_values()
                    }
                })
                .collect();
            let releases = crate::state::all_releases(shared.store.as_ref()).await?;
            let keep_images = crate::state::images_to_keep(releases.iter().map(|r| &r.value));
            let (gc_generation, _) = crate::state::gc_generation(shared.store.as_ref()).await?;
            // Everything the agent acts on is in the version, so a `berth gc` or a changed
            // keep list wakes its long-poll.
            let version = table::content_version(&(&instances, &keep_images, gc_generation));
            Ok((
                version.clone(),
                DesiredInstances {
                    version,
                    instances,
                    keep_images,
                    gc_generation,
                },
            ))
        }
    })
    .await?;
    Ok(Json(result))
}

/// The routing table, long-polled by routers. The `version` a router sends is the table it has
/// applied: that acknowledgement is what lets draining stop an instance without dropping requests.
pub async fn routes(
    State(shared): AppState,
    caller: Caller,
    Query(q): Query<PollQuery>,
) -> Result<Json<RoutingTable>, ApiError> {
    caller.require_member()?;
    if let (Some(router), Some(version)) = (&q.router, &q.version) {
        table::record_ack(&shared, router, version);
    }
    let result = long_poll(&shared, q.version.as_deref(), q.wait, || {
        let shared = shared.clone();
        async move {
            let snapshot = Snapshot::load(shared.store.as_ref()).await?;
            let routing = table::build(&shared, &snapshot).await?;
            Ok((routing.version.clone(), routing))
        }
    })
    .await?;
    if let (Some(router), Some(version)) = (&q.router, &q.version) {
        table::record_ack(&shared, router, version);
    }
    Ok(Json(result))
}

/// `berth nodes`.
pub async fn list(
    State(shared): AppState,
    caller: Caller,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    caller.require_admin()?;
    let snapshot = Snapshot::load(shared.store.as_ref()).await?;
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
    let views = snapshot
        .nodes
        .values()
        .map(|n| {
            let reg = &n.value.registration;
            let last = beats.get(&reg.name).map(|t| now.saturating_sub(*t));
            let state = if n.value.draining {
                NodeState::Draining
            } else if table::node_is_up(&shared, &reg.name, now) {
                NodeState::Ready
            } else {
                NodeState::Down
            };
            NodeView {
                name: reg.name.clone(),
                labels: reg.labels.clone(),
                resources: reg.resources,
                drivers: reg.drivers.clone(),
                state,
                instances: snapshot
                    .instances
                    .values()
                    .filter(|i| i.value.spec.node == reg.name)
                    .count(),
                allocated: snapshot
                    .instances
                    .values()
                    .filter(|i| i.value.spec.node == reg.name && i.value.desired != Desired::Stop)
                    .fold(NodeResources::default(), |acc, i| NodeResources {
                        cpu_millis: acc.cpu_millis + i.value.spec.spec.resources.cpu.millis,
                        memory_bytes: acc.memory_bytes + i.value.spec.spec.resources.memory.bytes,
                    }),
                last_seen_ms_ago: last,
                last_gc: gc_reports.get(&reg.name).cloned(),
            }
        })
        .collect();
    Ok(Json(views))
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
    let key = keys::node(&name);
    let Some(kv) = shared.store.get(&key).await? else {
        return Err(ApiError::not_found(format!(
            "no node named {name}: see `berth nodes`"
        )));
    };
    let mut record: NodeRecord = crate::state::decode(&key, &kv.value)?;
    record.draining = draining;
    if shared
        .store
        .cas(&key, kv.mod_revision, encode(&record))
        .await?
        .is_none()
    {
        return Err(ApiError::conflict(format!(
            "node {name} changed meanwhile: try again"
        )));
    }
    shared.kick.notify_one();
    let Json(nodes) = list(State(shared), Caller::Admin).await?;
    nodes
        .into_iter()
        .find(|n| n.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("node {name} vanished")))
}
