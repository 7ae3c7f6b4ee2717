//! The control API's wire types: what the CLI, agents and routers send to and get from
//! `berth server` under `/v1`.
//!
//! Agents and routers *pull*: they long-poll with the `version` they hold and get an answer as
//! soon as what they should hold differs (or after a timeout). Versions are content hashes, so a
//! restarted server and a restarted agent agree on what changed without shared counters.

use std::collections::BTreeMap;

use berth_spec::model::{DriverKind, Stack};
use serde::{Deserialize, Serialize};

use crate::{InstanceSpec, InstanceState, InstanceStatus};

/// An agent introducing its node, authenticated by the join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The node's name: unique in the cluster, `[a-z0-9][a-z0-9.-]*`.
    pub name: String,
    /// `region`, `zone` or anything placement constraints may name.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the node offers to instances.
    pub resources: NodeResources,
    /// Which drivers work on this node (`docker` only when an Engine answered).
    pub drivers: Vec<DriverKind>,
    /// The host at which this node's instances are reachable (their ports are published there).
    pub address: String,
    /// The address of the router the agent runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<String>,
}

/// CPU and memory on a node, in the units of the stack file's `resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The node's own credential, used for every later call instead of the join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node_token: String,
}

/// An agent's periodic report: it is alive, and this is what its instances are doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub statuses: Vec<InstanceStatus>,
    /// What the node's last garbage collection removed, so `berth gc` can wait for it and
    /// `berth nodes --output json` can show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gc: Option<GcReport>,
}

/// What started a garbage collection on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcTrigger {
    /// `berth gc` (a new [`DesiredInstances::gc_generation`]).
    Command,
    /// The filesystem holding Docker's data was fuller than the agent's threshold.
    Disk,
}

/// What one garbage collection on a node removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GcReport {
    /// The `gc_generation` the node had seen when it ran (a `berth gc` waits for its own).
    pub generation: u64,
    /// Why it ran; `None` only in a default value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<GcTrigger>,
    /// When it finished, in ms since the Unix epoch (agent's clock).
    pub at_ms: u64,
    /// Stopped containers of berth removed.
    pub containers_removed: u32,
    /// Image references removed (untagged, and deleted when it was the last one).
    pub images_removed: Vec<String>,
    /// Bytes the Engine reported freed by deleted images.
    pub bytes_reclaimed: u64,
    /// Problems met (an image the Engine refused to remove, …), for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Whether a node takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    Draining,
    Down,
}

/// A node as `berth nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub resources: NodeResources,
    pub drivers: Vec<DriverKind>,
    pub state: NodeState,
    pub instances: usize,
    /// What the instances placed on the node reserve.
    #[serde(default)]
    pub allocated: NodeResources,
    /// Milliseconds since the last heartbeat, if one arrived since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms_ago: Option<u64>,
    /// The node's last garbage collection, if it reported one since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gc: Option<GcReport>,
}

/// Exactly the instances an agent must run; any other it runs is to be stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstances {
    /// A content hash; pass it back as `?version=` to wait for the next change.
    pub version: String,
    pub instances: Vec<InstanceSpec>,
    /// Every image reference and pinned image id of an `image:` service in any retained
    /// release of any stack: what garbage collection must never remove, so that a rollback to
    /// any retained release works with no registry reachable.
    #[serde(default)]
    pub keep_images: Vec<String>,
    /// Bumped by every `berth gc`; an agent that sees a number it has not handled collects
    /// garbage once.
    #[serde(default)]
    pub gc_generation: u64,
}

/// The answer to `POST /v1/gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcResponse {
    /// The new generation: a node has collected once its [`GcReport::generation`] reaches it.
    pub generation: u64,
}

/// One healthy, routable instance as routers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
    pub addr: String,
    pub instance: String,
    pub release: u64,
    /// Relative share of the route's traffic (100 unless a canary splits it).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

/// A service's overload protection (Twitter's TFE): at most `concurrency` requests in flight,
/// then up to `queue` waiting at most `queue_timeout_ms`; beyond that, 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsView {
    pub concurrency: u32,
    pub queue: u32,
    pub queue_timeout_ms: u64,
}

/// A service in maintenance: routers answer 503 with this page and leave its instances alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MaintenanceView {
    /// A custom HTML page; the router's own page when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_html: Option<String>,
}

/// One route with its current endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub host: String,
    pub path: String,
    pub stack: String,
    pub service: String,
    pub endpoints: Vec<EndpointView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceView>,
    /// The stack file's `route.timeout`: how long an instance may take to send its response
    /// head before routers answer 504. `None`: the router's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The whole routing table; routers long-poll it with the version they applied, which also
/// tells the server which table each router has (how draining knows an instance is out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    pub version: String,
    pub routes: Vec<RouteView>,
}

/// A stack file sent for planning or deploying. The server parses it itself so that its errors
/// carry `FILE:LINE:COL` and nothing is stored when it is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The file's name, used in error positions.
    pub file: String,
    /// The file's text.
    pub source: String,
    pub env: String,
    #[serde(default)]
    pub set: Vec<String>,
    /// The stack's name typed back, to allow a destructive plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Apply only if the plan still has this id (nothing moved since `berth plan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
    /// Only plan; store nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// A plan as the server computed it against the live release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanView {
    pub id: String,
    /// The human rendering (diff and blast radius).
    pub text: String,
    /// The structured plan.
    pub detail: serde_json::Value,
    /// Instances the cluster as it is now could not place, and why (one line per service and
    /// region, e.g. `web in eu-west: 2 of 3 cannot be placed: 3 nodes: 2 lack 512Mi memory, …`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
}

/// The answer to a deploy or a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployResponse {
    pub stack: String,
    pub env: String,
    /// The new release, or `None` when the plan was empty or a dry run.
    pub release: Option<u64>,
    pub plan: PlanView,
}

/// An API error body: what went wrong, and for a bad spec every `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// Where a release is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Its rollout is under way.
    RollingOut,
    /// Fully rolled out; what serves now.
    Live,
    /// Was live, then replaced by a later release: a rollback target.
    Superseded,
    /// Its rollout failed and was rolled back.
    Failed,
}

/// An immutable, numbered snapshot of a stack in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub number: u64,
    pub stack: String,
    pub env: String,
    pub created_ms: u64,
    pub who: String,
    pub status: ReleaseStatus,
    /// One line: what changed against the release before it.
    pub summary: String,
    pub plan_id: String,
    /// Set when this release re-deploys an older one's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The fully rendered stack.
    pub spec: Stack,
    /// Image service → the image id (`sha256:…`) its instances run, pinned the first time an
    /// agent reports one (or copied from the release a rollback returns to, or from the
    /// previous release for a service whose image reference did not change). New instances of
    /// this release are created from that id, so a rollback runs exactly the same bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// Secret name → the version of its value this release was made with (every secret any
    /// service of the stack declares). Versions only, never values: a changed version between
    /// two releases shows in the plan and replaces the instances of the services using it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, u64>,
}

/// `PUT /v1/secrets/{stack}/{name}`: a secret's new value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPut {
    pub value: String,
}

/// Never prints the value (a request may end up in a debug log).
impl std::fmt::Debug for SecretPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPut")
            .field("value", &"<secret>")
            .finish()
    }
}

/// One secret as `berth secret list` shows it: its name and version, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    pub stack: String,
    pub name: String,
    /// Bumped by every write (1 for the first).
    pub version: u64,
    /// When the value was last written (ms since the epoch, server clock).
    pub updated_ms: u64,
}

/// `berth rollback`'s request: a release number, or the previous successful one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default)]
    pub release: Option<u64>,
}

/// One instance as `berth status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub node: String,
    pub release: u64,
    pub state: InstanceState,
    /// `run`, `drain` or `stop`: what the server wants of it.
    pub desired: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the server created the instance (ms since the epoch, server clock).
    #[serde(default)]
    pub created_ms: u64,
    /// When the instance entered `state` (ms since the epoch, agent clock; 0 before a report).
    #[serde(default)]
    pub since_ms: u64,
}

/// One service of a stack as `berth status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub desired: u32,
    pub healthy: u32,
    /// Why some instances could not be placed, e.g. `3 nodes: 2 lack 512Mi memory, 1 fails
    /// region == us-east`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    pub instances: Vec<InstanceView>,
}

/// A stack in one environment as `berth status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackView {
    pub stack: String,
    pub env: String,
    pub live_release: Option<u64>,
    /// `rolling out 3 → 4`, `live`, `rolled back: …`.
    pub rollout: String,
    pub services: Vec<ServiceView>,
}

/// `berth status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub stacks: Vec<StackView>,
}

/// One state change, as `berth events` streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub revision: i64,
    /// `put` or `delete`.
    pub kind: String,
    /// What changed: `release`, `rollout`, `instance`, `node`, ….
    pub subject: String,
    pub key: String,
    /// A one-line description for people.
    pub summary: String,
}

/// `berth maintenance on|off`: routers answer 503 with a maintenance page for the service, and
/// leave its instances alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    pub on: bool,
    /// A custom HTML page (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_html: Option<String>,
}
