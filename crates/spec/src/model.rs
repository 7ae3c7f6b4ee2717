//! The rendered stack: every field typed, every default explicit, every `${values.*}` substituted.
//!
//! This is what a release stores and what the plan core diffs. Its serde form *is* a valid stack
//! file for one environment (see `render`), so `validate → render → validate` holds and a release
//! can be read by a person. Units serialise as the canonical strings a user would write (`1s`,
//! `250m`, `128Mi`, `25%`), so the rendered file reads like the source.
//!
//! `${region}` is deliberately left in place: a stack is rendered once per environment and then
//! instantiated once per region wave with [`Stack::for_region`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A fully rendered stack for one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// `[a-z][a-z0-9-]*`
    pub stack: String,
    /// How many releases are kept per environment.
    pub history: u32,
    /// Exactly one environment: the one this stack was rendered for.
    pub environments: BTreeMap<String, Environment>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
}

/// `max_capacity_drop` when an environment does not say: a plan may lose at most half of a
/// service's healthy capacity without `--confirm STACK`. It was 100 % once, which let
/// `--set web.replicas=0` through unasked — the one command that emptied Dailymotion's
/// clusters.
pub const DEFAULT_MAX_CAPACITY_DROP: Percent = Percent(50);

/// `approval_timeout` when an environment does not say: a pending plan expires after a day.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration {
    millis: 24 * 3600 * 1000,
};

/// The default for serde (records written before `approval_timeout` existed).
fn default_approval_timeout() -> Duration {
    DEFAULT_APPROVAL_TIMEOUT
}

/// Whether `d` is the default, which is left out of the serialized record.
fn is_default_approval_timeout(d: &Duration) -> bool {
    *d == DEFAULT_APPROVAL_TIMEOUT
}

/// `approval` as records hold it: a count, or the boolean older records wrote (`true` is 1).
fn approval_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Bool(bool),
        Count(u32),
    }
    Ok(match Either::deserialize(d)? {
        Either::Bool(b) => u32::from(b),
        Either::Count(n) => n,
    })
}

/// An environment's rollout waves and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Regions in rollout order; each is one wave.
    pub regions: Vec<String>,
    /// `approval: N`: how many distinct people other than the author approve a plan before
    /// it applies (0: none). `true` in a stack file (and in records written before counts
    /// existed) means 1, `false` 0.
    #[serde(default, deserialize_with = "approval_count")]
    pub approval: u32,
    /// `approval_timeout`: how long a pending plan waits for its approvals before it expires
    /// ([`DEFAULT_APPROVAL_TIMEOUT`] when not written; not serialized then, so records written
    /// before it existed read the same).
    #[serde(
        default = "default_approval_timeout",
        skip_serializing_if = "is_default_approval_timeout"
    )]
    pub approval_timeout: Duration,
    /// The largest loss of healthy capacity a plan may cause without `--confirm STACK`
    /// ([`DEFAULT_MAX_CAPACITY_DROP`] when not written). A plan that removes a service, stops
    /// every instance of one or empties a region needs the confirmation whatever this says.
    pub max_capacity_drop: Percent,
    /// `waves:` — how a release moves from one region to the next: each wave bakes and must
    /// see enough requests before the next region starts, and a failure in a later wave says
    /// what happens to the regions already done. `None` (not written): a wave ends as soon as
    /// its services are done, as before waves could bake; written, every field is explicit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waves: Option<Waves>,
}

/// `environments.E.waves`: the bake between region waves and what a failure reverts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waves {
    /// A finished wave keeps serving this long before the next region starts.
    pub bake: Duration,
    /// And its new release answers at least this many requests first.
    pub min_requests: u32,
    /// What a failure in a later wave does to the waves already done.
    pub on_failure: WaveFailure,
}

/// `waves.on_failure`: no tool reverts every region on a failure in a later one; berth does by
/// default, because a release that fails in one region is suspect in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveFailure {
    /// Every region already done returns to the previous release (the default).
    RevertAll,
    /// Only the failing wave's region returns to the previous release.
    RevertWave,
    /// Nothing is reverted: the rollout stops where it is and says so.
    Halt,
}

/// One kind of workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Process driver: a command run on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// Docker driver: an image reference with a tag or a digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For `image:` services, overrides the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// Names only; values live in the secret store and never appear in a spec or plan.
    pub secrets: Vec<String>,
    /// Named ports; `0` means the agent picks a free port.
    pub ports: BTreeMap<String, u16>,
    /// Replicas per region.
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    pub rollout: Rollout,
    pub depends_on: Vec<String>,
    pub stop_grace: Duration,
    pub volumes: Vec<Volume>,
    pub resources: Resources,
    pub placement: Placement,
    pub restart: RestartPolicy,
}

impl Service {
    /// Which driver runs this service.
    pub fn driver(&self) -> DriverKind {
        if self.image.is_some() {
            DriverKind::Docker
        } else {
            DriverKind::Process
        }
    }
}

/// The two drivers an agent may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    Process,
    Docker,
}

/// `process:` — a command on the node. `berth` as `command[0]` means the agent's own binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub command: Vec<String>,
    /// `user:` — the login name (or numeric uid) the command runs as, with that user's primary
    /// group and supplementary groups. `None`: the agent's `--process-user`, else the agent's
    /// own user. `root` (or uid 0) runs only on an agent started with `--allow-root-processes`.
    /// Skipped when unset so that releases stored before the field existed keep their plan id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A health check: exactly one of `http`, `tcp`, `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP GET of this path must answer 2xx/3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A TCP connect must succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    /// This command must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// A declared port name (for http and tcp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes before an instance counts as healthy.
    pub healthy: u32,
    /// Consecutive failures before an instance counts as unhealthy.
    pub unhealthy: u32,
}

/// How the router reaches this service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: String,
    pub path: String,
    /// A declared port name.
    pub port: String,
    /// Overload protection in the routers, as Twitter's TFE did: no app is overloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// `route.timeout`: how long an instance may take to send its response head before the
    /// router answers 504 (a hung backend must not hold clients). `None`: the router's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// `route.split`: an A/B split — a sticky share of this route's users goes to another
    /// service of the stack (an experiment; Etsy's 50/50 on a new schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// `split: { service: web-next, weight: 20%, sticky: cookie }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// The other service of the stack that answers the split's share.
    pub service: String,
    /// Its share of the route's users, above 0 and below 100 %.
    pub weight: BasisPoints,
    /// What keeps a user on their arm (default `cookie`).
    pub sticky: Sticky,
}

/// At most `concurrency` requests in flight to the service (per router), then up to `queue`
/// waiting at most `queue_timeout`; beyond that the router answers 503 with `Retry-After` at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub concurrency: u32,
    pub queue: u32,
    pub queue_timeout: Duration,
}

/// How a new release replaces the old one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub strategy: Strategy,
    pub max_surge: Amount,
    pub max_unavailable: Amount,
    /// Past this without progress, the rollout fails and rolls back.
    pub progress_deadline: Duration,
    /// `canary`: the new release's share of traffic at each step, strictly increasing, each
    /// above 0 and below 100 % (100 % follows the last step). Basis points, so 0.5 % is a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<BasisPoints>>,
    /// `canary`: the least time at each step; `blue_green`: how long the new release is fully
    /// healthy before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Duration>,
    /// `canary`: the least requests the new release answers at each step before the analysis
    /// may pass it; fewer is "insufficient data", never a pass and never a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u32>,
    /// `canary`: how a client keeps its arm across requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// `canary`: requests with this header value go to the new release at any step, and are
    /// left out of the analysis.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matched: Option<Match>,
    /// `canary`: what a failed analysis does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// `blue_green`: the host on which the new release answers before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_host: Option<String>,
    /// `blue_green`: switch by itself after `bake` (`false`: wait for `berth rollout promote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// `blue_green`: the old release keeps running, out of traffic, this long after the switch,
    /// so a rollback is a switch back that starts nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_previous: Option<Duration>,
}

impl Rollout {
    /// Rolling settings with every strategy-specific field absent: what a service without a
    /// `rollout:` gets (and what tests build).
    pub fn rolling(
        max_surge: Amount,
        max_unavailable: Amount,
        progress_deadline: Duration,
    ) -> Self {
        Rollout {
            strategy: Strategy::Rolling,
            max_surge,
            max_unavailable,
            progress_deadline,
            steps: None,
            bake: None,
            min_requests: None,
            sticky: None,
            matched: None,
            on_failure: None,
            preview_host: None,
            auto_promote: None,
            keep_previous: None,
        }
    }
}

/// A share of traffic in basis points (1/100 of a percent: 10 % = 1000, 0.5 % = 50), written
/// `10%` or `0.5%` (at most two decimals). Argo Rollouts' smallest weight is 1 %; berth's is
/// 0.01 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BasisPoints(pub u32);

/// All of a route's traffic, in basis points.
pub const ALL_TRAFFIC: u32 = 10_000;

impl fmt::Display for BasisPoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else if frac % 10 == 0 {
            write!(f, "{whole}.{}%", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

impl FromStr for BasisPoints {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a percentage: expected 0% to 100%, with at most two decimals like 0.5%")
        };
        let n = s.strip_suffix('%').ok_or_else(bad)?;
        let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
        let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || whole.len() > 3 || !digits(whole) || frac.len() > 2 || !digits(frac)
        {
            return Err(bad());
        }
        if n.contains('.') && frac.is_empty() {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let frac: u32 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<2}").parse().map_err(|_| bad())?
        };
        let bp = whole * 100 + frac;
        if bp > ALL_TRAFFIC {
            return Err(bad());
        }
        Ok(BasisPoints(bp))
    }
}

/// `sticky:` — what keeps a client on its arm. The sticky key is hashed with a per-rollout
/// salt into 10,000 buckets and the new release holds buckets `[0, w)`, so raising the weight
/// only adds clients (Flagger's cookies slowly pushed everyone to the canary: flagger#1532).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sticky {
    /// The router sets a cookie on a client's first answer (the default).
    Cookie,
    /// The value of this request header is the sticky key (`header:NAME`).
    Header(String),
    /// Every request is placed on its own.
    None,
}

impl fmt::Display for Sticky {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sticky::Cookie => f.write_str("cookie"),
            Sticky::Header(name) => write!(f, "header:{name}"),
            Sticky::None => f.write_str("none"),
        }
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token), at most 128 bytes.
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FromStr for Sticky {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cookie" => Ok(Sticky::Cookie),
            "none" => Ok(Sticky::None),
            _ => match s.strip_prefix("header:") {
                Some(name) if valid_header_name(name) => Ok(Sticky::Header(name.to_string())),
                Some("") => Err("`header:` needs a header name, like header:X-User".to_string()),
                Some(name) => Err(format!(
                    "`{name}` is not a header name: expected letters, digits and `-`, like header:X-User"
                )),
                None => Err(format!(
                    "`{s}` is not a sticky mode: expected cookie, header:NAME or none"
                )),
            },
        }
    }
}

/// `match:` — requests whose `header` has exactly `value` go to the new release at any step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// The request header's name.
    pub header: String,
    /// The value it must have, compared exactly.
    pub value: String,
}

/// `on_failure:` of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Traffic returns to the stable release and the new one is marked failed (the default).
    Rollback,
    /// Traffic returns to the stable release, and the rollout waits for a person.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Rolling,
    BlueGreen,
    Canary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// `/abs/host:/abs/container[:ro]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: String,
    pub container: String,
    pub read_only: bool,
}

/// CPU and memory a single instance reserves on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu: Cpu,
    pub memory: Memory,
}

/// Where instances may go and how they spread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Label keys whose values should hold even counts.
    pub spread: Vec<String>,
    /// Each must hold on a node for an instance to go there. `${region}` may appear.
    pub constraints: Vec<Constraint>,
}

/// `label == value`, `label != value` or `label in [a, b]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub label: String,
    pub op: ConstraintOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintOp {
    Eq(String),
    Ne(String),
    In(Vec<String>),
}

impl Constraint {
    /// Whether a node with these labels satisfies the constraint. A missing label never equals.
    pub fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.label);
        match &self.op {
            ConstraintOp::Eq(v) => value == Some(v),
            ConstraintOp::Ne(v) => value != Some(v),
            ConstraintOp::In(vs) => value.is_some_and(|x| vs.contains(x)),
        }
    }

    /// The same constraint with `${region}` replaced.
    pub fn for_region(&self, region: &str) -> Constraint {
        let sub = |s: &String| s.replace("${region}", region);
        Constraint {
            label: sub(&self.label),
            op: match &self.op {
                ConstraintOp::Eq(v) => ConstraintOp::Eq(sub(v)),
                ConstraintOp::Ne(v) => ConstraintOp::Ne(sub(v)),
                ConstraintOp::In(vs) => ConstraintOp::In(vs.iter().map(sub).collect()),
            },
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            ConstraintOp::Eq(v) => write!(f, "{} == {}", self.label, v),
            ConstraintOp::Ne(v) => write!(f, "{} != {}", self.label, v),
            ConstraintOp::In(vs) => write!(f, "{} in [{}]", self.label, vs.join(", ")),
        }
    }
}

impl FromStr for Constraint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let word = |w: &str| -> Result<String, String> {
            let w = w.trim();
            if w.is_empty() || w.chars().any(|c| c.is_whitespace() || "[],=!".contains(c)) {
                Err(format!("`{w}` is not a label or value"))
            } else {
                Ok(w.to_string())
            }
        };
        let bad = || {
            format!("cannot parse constraint `{s}`: expected `label == value`, `label != value` or `label in [a, b]`")
        };
        if let Some((l, r)) = s.split_once("==") {
            return Ok(Constraint {
                label: word(l).map_err(|_| bad())?,
                op: ConstraintOp::Eq(word(r).map_err(|_| bad())?),
            });
        }
        if let Some((l, r)) = s.split_once("!=") {
            return Ok(Constraint {
                label: word(l).map_err(|_| bad())?,
                op: ConstraintOp::Ne(word(r).map_err(|_| bad())?),
            });
        }
        if let Some((l, r)) = s.split_once(" in ") {
            let r = r.trim();
            let inner = r
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .ok_or_else(bad)?;
            let values: Result<Vec<String>, String> = inner.split(',').map(word).collect();
            let values = values.map_err(|_| bad())?;
            return Ok(Constraint {
                label: word(l).map_err(|_| bad())?,
                op: ConstraintOp::In(values),
            });
        }
        Err(bad())
    }
}

/// A span of time with millisecond resolution: `200ms`, `1s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    pub millis: u64,
}

impl Duration {
    pub fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

impl fmt::Display for Duration {
    /// The largest unit that represents the value exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis;
        if ms != 0 && ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms != 0 && ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a duration: expected a number with a unit, like 200ms, 1s, 5m or 1h"
            )
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().map_err(|_| bad())?;
        let factor = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        n.checked_mul(factor)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("duration `{s}` is too large"))
    }
}

/// CPU in millicores: `250m` or `2` (cores) or `0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cpu {
    pub millis: u64,
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis.is_multiple_of(1000) {
            write!(f, "{}", self.millis / 1000)
        } else {
            write!(f, "{}m", self.millis)
        }
    }
}

impl FromStr for Cpu {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a CPU amount: expected millicores like 250m, or cores like 2 or 0.5"
            )
        };
        if let Some(m) = s.strip_suffix('m') {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            return m.parse().map(|millis| Cpu { millis }).map_err(|_| bad());
        }
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 3
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let frac_ms: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().map_err(|_| bad())?
        };
        whole
            .checked_mul(1000)
            .and_then(|w| w.checked_add(frac_ms))
            .map(|millis| Cpu { millis })
            .ok_or_else(bad)
    }
}

/// Memory in bytes: `128Mi`, `1Gi`, `512Ki`, or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Memory {
    pub bytes: u64,
}

const KI: u64 = 1024;

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes;
        for (unit, size) in [
            ("Ti", KI.pow(4)),
            ("Gi", KI.pow(3)),
            ("Mi", KI.pow(2)),
            ("Ki", KI),
        ] {
            if b != 0 && b.is_multiple_of(size) {
                return write!(f, "{}{unit}", b / size);
            }
        }
        write!(f, "{b}")
    }
}

impl FromStr for Memory {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{s}` is not a memory amount: expected a number with Ki, Mi, Gi or Ti, like 128Mi"
            )
        };
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(split);
        if n.is_empty() {
            return Err(bad());
        }
        let n: u64 = n.parse().map_err(|_| bad())?;
        let factor = match unit {
            "" => 1,
            "Ki" => KI,
            "Mi" => KI.pow(2),
            "Gi" => KI.pow(3),
            "Ti" => KI.pow(4),
            _ => return Err(bad()),
        };
        n.checked_mul(factor)
            .map(|bytes| Memory { bytes })
            .ok_or_else(bad)
    }
}

/// A percentage from 0 to 100: `25%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Percent(pub u32);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a percentage: expected 0% to 100%");
        let n = s.strip_suffix('%').ok_or_else(bad)?;
        let n: u32 = n.parse().map_err(|_| bad())?;
        if n > 100 {
            return Err(bad());
        }
        Ok(Percent(n))
    }
}

/// The most replicas a service may ask for in one region (`replicas`, a `max_surge` or
/// `max_unavailable` count, `--set web.replicas=N`). Far above what one berth cluster runs, and
/// low enough that nothing sized by a count (the scheduler's placements, the rollout's instance
/// records, one controller pass) can exhaust memory or time: `replicas: 4294967295` used to
/// validate and then abort the server on a 68 GB allocation.
pub const MAX_REPLICAS: u32 = 10_000;

/// A count of instances or a percentage of the desired count (`max_surge: 1`, `max_surge: 25%`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Amount {
    Count(u32),
    Percent(Percent),
}

impl Amount {
    /// Resolves against a desired count. Surge rounds up and unavailability rounds down, as
    /// Kubernetes does, so a percentage never blocks progress on its own.
    pub fn resolve(self, desired: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(Percent(p)) => {
                let x = u64::from(desired) * u64::from(p);
                let r = if round_up { x.div_ceil(100) } else { x / 100 };
                u32::try_from(r).unwrap_or(u32::MAX)
            }
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(Percent(0)))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}"),
        }
    }
}

impl fmt::Display for Volume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.container)?;
        if self.read_only {
            write!(f, ":ro")?;
        }
        Ok(())
    }
}

impl FromStr for Volume {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("volume `{s}` {why}: expected /abs/host:/abs/container[:ro]");
        let parts: Vec<&str> = s.split(':').collect();
        let (host, container, read_only) = match parts.as_slice() {
            [h, c] => (*h, *c, false),
            [h, c, "ro"] => (*h, *c, true),
            [_, _, m] => return Err(bad(&format!("has an unknown mode `{m}`"))),
            _ => return Err(bad("is malformed")),
        };
        for p in [host, container] {
            if !p.starts_with('/') {
                return Err(bad(&format!("has a relative path `{p}`")));
            }
            if p.split('/').any(|seg| seg == "..") {
                return Err(bad(&format!("has `..` in `{p}`")));
            }
        }
        Ok(Volume {
            host: host.to_string(),
            container: container.to_string(),
            read_only,
        })
    }
}

/// Serialises a type as its `Display` string and parses it back with `FromStr`.
macro_rules! string_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_serde!(
    Duration,
    Cpu,
    Memory,
    Percent,
    Volume,
    Constraint,
    BasisPoints,
    Sticky
);

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u32(*n),
            Amount::Percent(p) => s.collect_str(p),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Amount::Count(n)),
            Raw::S(s) => s
                .parse()
                .map(Amount::Percent)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// How many instances of `service` its stack file asks for in each region: the one reader of
/// `replicas`, so that what decides a count (today the file, later an autoscaler writing
/// through the server) changes in one place. Plans, the scheduler's demands and the rollout
/// state machines all go through it.
pub fn desired_replicas(service: &Service) -> u32 {
    service.replicas
}

impl Stack {
    /// The single environment this stack was rendered for.
    pub fn environment(&self) -> Option<(&String, &Environment)> {
        self.environments.iter().next()
    }

    /// The regions of the rendered environment, in rollout order.
    pub fn regions(&self) -> &[String] {
        self.environment()
            .map(|(_, e)| e.regions.as_slice())
            .unwrap_or(&[])
    }

    /// A service as it runs in one region: `${region}` substituted in its constraints and env.
    pub fn service_for_region(&self, name: &str, region: &str) -> Option<Service> {
        let mut svc = self.services.get(name)?.clone();
        for c in &mut svc.placement.constraints {
            *c = c.for_region(region);
        }
        for v in svc.env.values_mut() {
            *v = v.replace("${region}", region);
        }
        Some(svc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_through_their_canonical_strings() {
        for s in ["200ms", "1s", "5m", "2h", "1500ms", "0s"] {
            assert_eq!(s.parse::<Duration>().unwrap().to_string(), s);
        }
        assert_eq!("60s".parse::<Duration>().unwrap().to_string(), "1m");
        for s in ["250m", "2", "1500m"] {
            assert_eq!(s.parse::<Cpu>().unwrap().to_string(), s);
        }
        assert_eq!("0.5".parse::<Cpu>().unwrap().millis, 500);
        for s in ["128Mi", "1Gi", "100"] {
            assert_eq!(s.parse::<Memory>().unwrap().to_string(), s);
        }
        assert!("1s5".parse::<Duration>().is_err());
        assert!("abc".parse::<Cpu>().is_err());
        assert!("12MB".parse::<Memory>().is_err());
        assert!("101%".parse::<Percent>().is_err());
    }

    #[test]
    fn basis_points_round_trip_and_refuse_what_is_not_a_share() {
        for (s, bp) in [
            ("10%", 1000),
            ("0.5%", 50),
            ("12.34%", 1234),
            ("100%", 10_000),
            ("0.05%", 5),
        ] {
            let parsed: BasisPoints = s.parse().unwrap();
            assert_eq!(parsed, BasisPoints(bp));
            assert_eq!(parsed.to_string(), s);
        }
        assert_eq!("0.50%".parse::<BasisPoints>().unwrap(), BasisPoints(50));
        for bad in [
            "100.01%", "101%", "1.234%", "10", "-1%", ".5%", "5.%", "1e2%", "10 %",
        ] {
            assert!(bad.parse::<BasisPoints>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sticky_modes_parse_and_print_as_written() {
        for s in ["cookie", "none", "header:X-User"] {
            assert_eq!(s.parse::<Sticky>().unwrap().to_string(), s);
        }
        assert!("header:".parse::<Sticky>().is_err());
        assert!("header:a b".parse::<Sticky>().is_err());
        assert!("cookies".parse::<Sticky>().is_err());
    }

    #[test]
    fn constraints_parse_and_hold() {
        let c: Constraint = "region == ${region}".parse().unwrap();
        let labels = BTreeMap::from([("region".to_string(), "eu".to_string())]);
        assert!(c.for_region("eu").holds(&labels));
        assert!(!c.for_region("us").holds(&labels));
        let c: Constraint = "zone in [a, b]".parse().unwrap();
        assert_eq!(c.to_string(), "zone in [a, b]");
        assert!("zone ~ a".parse::<Constraint>().is_err());
        assert!("== a".parse::<Constraint>().is_err());
    }

    #[test]
    fn volumes_reject_relative_paths_and_dotdot() {
        assert!("/a:/b:ro".parse::<Volume>().unwrap().read_only);
        assert!("a:/b".parse::<Volume>().is_err());
        assert!("/a/../etc:/b".parse::<Volume>().is_err());
        assert!("/a:/b:rw".parse::<Volume>().is_err());
    }

    #[test]
    fn amounts_round_as_kubernetes_does() {
        let p = Amount::Percent(Percent(25));
        assert_eq!(p.resolve(10, true), 3);
        assert_eq!(p.resolve(10, false), 2);
        assert_eq!(Amount::Count(1).resolve(10, true), 1);
    }
}
