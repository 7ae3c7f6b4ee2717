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
    /// The agent was started without `--labels`: keep the labels the node is registered with
    /// (an agent restart must not silently drop them, and placement with them); `labels` is
    /// then ignored for a known node. A new node registers with `labels` as they are.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_labels: bool,
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
    /// The labels the node is registered with now (kept ones included), so the agent can say
    /// what placement sees.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The labels it was registered with before, when this registration changed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_labels: Option<BTreeMap<String, String>>,
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

/// A control-plane server as `berth servers` shows it (issue 14: several servers on etcd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    /// The server's id (its API address).
    pub id: String,
    /// Its API URL.
    pub api: String,
    /// The berth version it runs.
    pub version: String,
    /// When it last reported itself (ms since the epoch).
    pub last_seen_ms: u64,
    /// How long ago that was, by the answering server's clock.
    pub last_seen_ms_ago: u64,
    /// Whether it leads (runs the controllers) now.
    pub leader: bool,
    /// Since when it leads (ms since the epoch), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_since_ms: Option<u64>,
}

/// A node as `berth nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub resources: NodeResources,
    pub drivers: Vec<DriverKind>,
    /// One word for scripts: `down` when the node misses heartbeats (whether or not it is
    /// draining: a dead node is the more urgent fact), else `draining` when drained, else
    /// `ready`. Liveness and drain are two facts; [`NodeView::draining`] carries the second.
    pub state: NodeState,
    /// Set by `berth drain` (until `berth undrain`), whether the node is up or down.
    #[serde(default)]
    pub draining: bool,
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

/// One release's share of a route's traffic during a progressive rollout, in basis points
/// (1/100 of a percent, so 0.5 % is `50`): finer than percent because a canary may start
/// below 1 % (Argo Rollouts' smallest weight is 1 %).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseShare {
    /// The release whose endpoints get this share.
    pub release: u64,
    /// Its share of the route, in basis points of [`BASIS_POINTS`].
    pub basis_points: u32,
}

/// All basis points: a share of `BASIS_POINTS` is the whole route.
pub const BASIS_POINTS: u32 = 10_000;

/// What keeps a client on its arm while a split holds: the router hashes this key with the
/// route's salt into [`BASIS_POINTS`] buckets, and the new arm is buckets `[0, w)`, so raising
/// `w` only adds clients (Flagger's sticky cookies drift everyone to the canary, flagger#1532).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StickyView {
    /// A cookie the router sets on a client's first answer (a random bucket) and reads after.
    #[default]
    Cookie,
    /// A request header's value is the key (a user id set by an upstream auth proxy, …);
    /// requests without it are placed at random.
    Header { name: String },
    /// No stickiness: every request is placed at random.
    None,
}

/// Requests carrying `header: value` go to `release` at any step of a canary, and are counted
/// apart (as `matched`), never in the analysis: testers reach the canary without biasing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchView {
    /// The request header's name (case-insensitive), e.g. `X-Canary`.
    pub header: String,
    /// The value it must have, exactly, e.g. `always`.
    pub value: String,
    /// The release matching requests go to (the rollout's new one).
    pub release: u64,
}

/// An A/B split between services (issue 12 point 5): a sticky `basis_points` of the route's
/// users go to `service`'s `endpoints` instead of the route's own. Its buckets use a salt of
/// their own, so they are independent of a canary's on the same route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitView {
    /// The other service of the same stack (its bare name, e.g. `web-next`).
    pub service: String,
    /// The split's share of the route's users, in basis points of [`BASIS_POINTS`].
    pub basis_points: u32,
    /// What keeps a user on its side of the split.
    #[serde(default)]
    pub sticky: StickyView,
    /// The other service's healthy, routable instances.
    pub endpoints: Vec<EndpointView>,
}

/// One route with its current endpoints.
///
/// The progressive-delivery fields (`shares` … `split`) all default to today's behaviour, so
/// a table from an older server still means what it meant: traffic split by summed endpoint
/// weights, nothing sticky, no matched header, no split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
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
    /// When non-empty (summing to [`BASIS_POINTS`]), the route's traffic is split between
    /// these release groups by basis points instead of by summed endpoint weights; the last
    /// one listed is the new arm and gets sticky buckets `[0, basis_points)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<ReleaseShare>,
    /// The rollout's salt for the sticky hash (set by the server from stack, env and target
    /// release), so each rollout reshuffles who is first on a new release.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub salt: String,
    /// What keeps a client on its arm while `shares` split the route.
    #[serde(default, skip_serializing_if = "is_default_sticky")]
    pub sticky: StickyView,
    /// A header that sends requests to a release at any step, counted apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<MatchView>,
    /// An A/B split of the route's users to another service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitView>,
}

fn is_default_sticky(sticky: &StickyView) -> bool {
    *sticky == StickyView::Cookie
}

/// Upper bounds (ms) of the latency buckets routers report per arm; a report's
/// [`ArmCounters::latency_ms_buckets`] has one more slot, for slower answers (`+Inf`). Fixed
/// here so every router and the server agree without sending bounds; dense around the tens
/// of ms where "1.5 × stable + 20 ms" is decided.
pub const LATENCY_BOUNDS_MS: [u64; 18] = [
    1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1_000, 2_000, 5_000, 10_000,
];

/// Slots in [`ArmCounters::latency_ms_buckets`]: one per bound plus `+Inf`.
pub const LATENCY_SLOTS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The most counters one [`TrafficReport`] may carry (the server refuses more): an arm is a
/// (stack, service, release, arm) a router has routed to since it started.
pub const MAX_REPORT_COUNTERS: usize = 2_048;

/// One arm's counters in one router, cumulative since that router started: the server takes
/// differences between reports, so a lost report loses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmCounters {
    /// The route's stack (empty for a hand-written table without one).
    pub stack: String,
    /// The route's service (for a split arm too: the experiment's route).
    pub service: String,
    /// The release of the endpoints answering (the split service's release for a split arm).
    pub release: u64,
    /// `release` for the route's own release groups, or the split service's name.
    pub arm: String,
    /// Answers from this arm's instances, matched ones excluded.
    pub requests: u64,
    /// Of `requests`, those with a 5xx status (the router's own 502/504 included).
    pub errors_5xx: u64,
    /// Of `requests`, per latency bucket ([`LATENCY_BOUNDS_MS`], not cumulative, last `+Inf`).
    pub latency_ms_buckets: Vec<u64>,
    /// Answers to requests sent here by the route's match header (counted nowhere else).
    #[serde(default)]
    pub matched: u64,
}

/// The latency (ms) under which a fraction `q` (0..=1) of the answers counted in `buckets`
/// (per [`LATENCY_BOUNDS_MS`] bucket, last `+Inf`) fell: the upper bound of the bucket where the
/// running count reaches `q` of the total. `None` without answers. Answers slower than the
/// last bound read as that bound (10 s), so the result always compares as a number.
pub fn latency_quantile_ms(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        seen = seen.saturating_add(*count);
        if seen >= rank {
            return Some(LATENCY_BOUNDS_MS[i.min(LATENCY_BOUNDS_MS.len() - 1)]);
        }
    }
    LATENCY_BOUNDS_MS.last().copied()
}

/// `POST /v1/routers/{id}/traffic`: a router's cumulative counters at `at_ms` (router clock,
/// ms since the epoch; the server files it under its own clock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    /// When the router read its counters (ms since the epoch, router clock; informative).
    pub at_ms: u64,
    /// Every arm the router's current and previous tables route to, cumulative.
    pub counters: Vec<ArmCounters>,
    /// When the router process started (ms since the epoch, router clock; 0: unknown). The
    /// server counts a router it has not heard from since its own start from zero only when
    /// the router started after the server did; otherwise that first report is a baseline
    /// (its counts may be from before, already analysed by a previous server). A change of
    /// `started_ms` is a router restart: its counters start again from zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `GET /v1/traffic?stack=&service=&release=&since_ms=` (admin): what the routers reported for
/// one release over a window, summed over routers; for debugging and end-to-end tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TrafficWindowView {
    pub stack: String,
    pub service: String,
    pub release: u64,
    pub since_ms: u64,
    pub now_ms: u64,
    pub requests: u64,
    pub errors_5xx: u64,
    pub matched: u64,
    /// Per [`LATENCY_BOUNDS_MS`] bucket (last `+Inf`).
    pub latency_ms_buckets: Vec<u64>,
    /// The bucket bound under which 99 % of `requests` answered; `None` without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
    /// How many routers contributed.
    pub routers: usize,
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
    /// Deploy even though the plan says some instances cannot be placed on the cluster as it
    /// is now (without it such a plan is refused, exit 3, instead of failing its rollout).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `berth stack rm STACK --env E`: a release with none of the live release's services, which
/// stops every instance. It needs the stack's name typed back, like any plan that empties a
/// service; the releases before it stay in the history, so `berth rollback` brings the stack
/// back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRemoveRequest {
    /// The stack's name typed back (`--confirm STACK`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
    /// Only plan; store nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
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
    /// Why nothing was stored, for people (`nothing to change: shop in staging already runs
    /// this (release 3 is live)`); set only when the plan was empty and the live state already
    /// is (or is rolling out to) the target, not for a dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<String>,
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
    /// Failed by `berth rollout abort` or by its canary analysis: deploying the same content
    /// again is refused (exit 3) without `--force`. A crash or a timeout does not set it (that
    /// may be retried). Absent in older records, which read as not vetoed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vetoed: bool,
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
    /// The users who approved this release's plan (`approval: N` environments), in the order
    /// they approved; empty when none was needed. `who` stays the plan's author.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
}

/// A plan waiting for approval (`berth approvals`): what, by whom, how far, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub stack: String,
    pub env: String,
    pub plan_id: String,
    /// Who asked for it (the deploy's or rollback's caller); never one of its approvers.
    pub author: String,
    /// The distinct users who approved so far.
    pub approved_by: Vec<String>,
    /// How many approvals it needs (`approval: N`).
    pub needed: u32,
    pub created_ms: u64,
    /// After this it cannot be approved any more (`approval_timeout`).
    pub expires_ms: u64,
    /// `pending`, `rejected` or `expired`.
    pub status: String,
    /// Who rejected it and why, once rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// The release a pending rollback returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

/// `POST /v1/stacks/{stack}/{env}/approvals/{plan}/reject`: why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    pub reason: String,
}

/// The answer to `berth approve`: the approval as it stands, a line for people, and the
/// deploy once the last approval started it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApproveResponse {
    pub approval: ApprovalView,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployResponse>,
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

/// What `berth secret rotate-key` (`POST /v1/secret-key/rotate`) did: every secret value is
/// now sealed under data key `key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretKeyRotated {
    /// The new data key's id.
    pub key: u64,
    /// How many records (secrets, and instances holding copies) were re-sealed.
    pub resealed: usize,
    /// Older data keys deleted from the store (no value named them any more).
    pub retired: Vec<u64>,
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
    /// How many times its agent restarted it after it exited (0 before a report).
    #[serde(default)]
    pub restarts: u32,
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
    /// Whether `berth maintenance on` holds the service: routers answer 503 with its page.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub maintenance: bool,
    /// For a route with an A/B `split` or a canary in progress: each arm's requests, errors
    /// and p99 latency over the last [`STATUS_TRAFFIC_WINDOW_MS`], summed over the routers'
    /// reports, so the experiment's or the canary's sides can be compared at a glance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<ArmTrafficView>,
}

/// How far back `berth status` sums each arm's traffic: recent enough to show what is
/// happening now, long enough to hold a few reports of every router.
pub const STATUS_TRAFFIC_WINDOW_MS: u64 = 60_000;

/// One arm of a routed service's traffic as `berth status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmTrafficView {
    /// The router's arm: `release` (the route's own release groups) or the A/B split service.
    pub arm: String,
    /// The release counted, or `None` for every release of the arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    /// Answers, matched requests excluded.
    pub requests: u64,
    /// Of `requests`, the 5xx ones.
    pub errors_5xx: u64,
    /// The latency bucket bound under which 99 % answered (ms); `None` without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
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
    /// The stack the change belongs to (none for a node or `berth gc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The environment, when the change belongs to one (releases, rollouts, instances, pins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// When the server saw the change (ms since the epoch); `None` for a change older than the
    /// server's start or its memory of recent revisions (the store keeps no time per change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ms: Option<u64>,
    /// Who made the change, where the record says (a release: the user who deployed or
    /// rolled back, `admin` for the admin token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub who: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> RouteView {
        RouteView {
            host: "shop.localhost".into(),
            path: "/".into(),
            stack: "shop".into(),
            service: "web".into(),
            endpoints: vec![EndpointView {
                addr: "127.0.0.1:1".into(),
                instance: "i1".into(),
                release: 2,
                weight: 100,
            }],
            ..RouteView::default()
        }
    }

    #[test]
    fn an_old_route_without_the_progressive_fields_means_what_it_meant() {
        let json = r#"{"host":"a","path":"/","stack":"s","service":"web",
            "endpoints":[{"addr":"127.0.0.1:1","instance":"i","release":1}]}"#;
        let route: RouteView = serde_json::from_str(json).expect("old route");
        assert!(route.shares.is_empty());
        assert_eq!(route.salt, "");
        assert_eq!(route.sticky, StickyView::Cookie);
        assert_eq!(route.matched, None);
        assert_eq!(route.split, None);
        // And today's routes serialise as they did (no new keys), so table versions do not
        // change for routes that use none of it.
        let plain = serde_json::to_value(route).expect("ser");
        let keys: Vec<&String> = plain.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["endpoints", "host", "path", "service", "stack"]);
    }

    #[test]
    fn a_progressive_route_round_trips() {
        let mut r = route();
        r.shares = vec![
            ReleaseShare {
                release: 1,
                basis_points: 9_950,
            },
            ReleaseShare {
                release: 2,
                basis_points: 50,
            },
        ];
        r.salt = "shop/production/2".into();
        r.matched = Some(MatchView {
            header: "X-Canary".into(),
            value: "always".into(),
            release: 2,
        });
        r.split = Some(SplitView {
            service: "web-next".into(),
            basis_points: 2_000,
            sticky: StickyView::Header {
                name: "X-User".into(),
            },
            endpoints: r.endpoints.clone(),
        });
        for sticky in [
            StickyView::Cookie,
            StickyView::None,
            StickyView::Header { name: "X-U".into() },
        ] {
            r.sticky = sticky;
            let json = serde_json::to_string(&r).expect("ser");
            let back: RouteView = serde_json::from_str(&json).expect("de");
            assert_eq!(back, r, "{json}");
        }
        let json = serde_json::to_value(&r.sticky).expect("ser");
        assert_eq!(json, serde_json::json!({"header": {"name": "X-U"}}));
        assert_eq!(
            serde_json::to_value(StickyView::None).expect("ser"),
            serde_json::json!("none")
        );
    }

    #[test]
    fn a_traffic_report_round_trips_and_matched_defaults() {
        let report = TrafficReport {
            at_ms: 7,
            started_ms: 3,
            counters: vec![ArmCounters {
                stack: "shop".into(),
                service: "web".into(),
                release: 2,
                arm: "release".into(),
                requests: 10,
                errors_5xx: 1,
                latency_ms_buckets: vec![0; LATENCY_SLOTS],
                matched: 3,
            }],
        };
        let json = serde_json::to_string(&report).expect("ser");
        assert_eq!(
            serde_json::from_str::<TrafficReport>(&json).expect("de"),
            report
        );
        let old = r#"{"stack":"s","service":"w","release":1,"arm":"release","requests":1,
            "errors_5xx":0,"latency_ms_buckets":[]}"#;
        let counters: ArmCounters = serde_json::from_str(old).expect("de");
        assert_eq!(counters.matched, 0);
    }

    #[test]
    fn quantiles_read_bucket_bounds() {
        let mut buckets = vec![0u64; LATENCY_SLOTS];
        assert_eq!(latency_quantile_ms(&buckets, 0.99), None);
        buckets[3] = 99; // <= 10 ms
        buckets[9] = 1; // <= 100 ms
        assert_eq!(latency_quantile_ms(&buckets, 0.99), Some(10));
        assert_eq!(latency_quantile_ms(&buckets, 1.0), Some(100));
        buckets[LATENCY_SLOTS - 1] = 50; // slower than every bound
        assert_eq!(latency_quantile_ms(&buckets, 0.99), Some(10_000));
        assert_eq!(latency_quantile_ms(&buckets, 0.0), Some(10));
    }
}
