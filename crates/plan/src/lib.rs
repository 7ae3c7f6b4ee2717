//! # berth-plan — what a deploy would change, and how much it could hurt
//!
//! Pure: no I/O, no clock, no threads. A shell hands in the live rendered stack (or nothing, for a
//! first deploy) and the proposed one, and gets back a [`Plan`]: the field-level diff, the blast
//! radius, the policy verdict and a stable id. `berth plan` prints it, `berth deploy --plan ID`
//! and the server's `apply` recompute the id from the live state and refuse the plan if it moved.
//!
//! ## Map
//! - [`Plan::new`] — the one entry point: diff + blast radius + policy + id.
//! - [`plan_hash`] — the id alone, for checking that live state has not moved since a plan.
//! - [`ServiceChange`], [`FieldChange`], [`RegionDelta`], [`BlastRadius`] — the parts of a plan.
//! - `impl Display for Plan` — the human rendering (`+`, `~`, `-`, like terraform);
//!   `Serialize` — the `--output json` form.
//! - [`IN_PLACE_FIELDS`] — the service fields whose change does not replace instances.
//! - `flatten` (private) — a value's serde JSON form as sorted `path → leaf` pairs.
//!
//! ## Vocabulary
//! - *base*: the stack of the live release; `None` when nothing is deployed yet.
//! - *target*: the proposed rendered stack.
//! - *field change*: one leaf path whose value differs, old → new (`env.VERSION: "1" → "2"`).
//! - *instances*: a service's `replicas` × the number of its environment's regions, counted per
//!   region so that moving a service from one region to another is a stop and a start.
//! - *replacement*: a change to anything outside [`IN_PLACE_FIELDS`] starts a new instance for
//!   every target instance and stops every old one; the rollout overlaps them, so a replacement
//!   on its own loses no capacity.
//! - *capacity lost*: per service, the share of its old instances that are stopped and not
//!   replaced in the same region — removal is 100 %, scaling 4 → 1 is 75 %.
//! - *destructive*: some capacity is lost, or a service is removed.
//! - *emptying*: a plan that removes a service, stops every instance of one, or leaves a region
//!   with no instance of the stack. It needs `--confirm STACK` whatever the environment's
//!   `max_capacity_drop` says ([`Plan::emptying`], [`Plan::needs_confirm`]): that is the shape
//!   of `--set web.replicas=0`, the command that emptied three clusters.
//! - *plan id*: the first 12 hex characters of the SHA-256 of the canonical JSON of base and
//!   target; the full hash is kept as well.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod flatten;
mod render;

use std::collections::{BTreeMap, BTreeSet};

use berth_spec::model::{Percent, Service, Stack};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::flatten::{flatten, path_string, under, Path};

/// Service fields (dotted paths, matched segment by segment) whose change is applied without
/// replacing running instances: the count (`replicas`), how traffic reaches them (`route`), how a
/// future rollout proceeds (`rollout`), start ordering (`depends_on`) and the scheduler's spread
/// preference (`placement.spread`). Everything else — image, process, command, env, secrets,
/// ports, resources, health, volumes, constraints, restart, stop_grace — reaches the instance's
/// process or its node, so a change to it replaces every instance. The list is deliberately short:
/// over-counting a replacement is safe, under-counting it would hide a restart of production.
pub const IN_PLACE_FIELDS: &[&str] = &[
    "replicas",
    "route",
    "rollout",
    "depends_on",
    "placement.spread",
];

/// What stands in for a secret's value: the model only knows secret *names*, but an `env` entry
/// with the same key as a secret must never be printed, so its value is replaced by this.
pub const SECRET_MASK: &str = "<secret>";

/// Why a plan could not be computed. Only serialisation can fail, and for the model's types it
/// should not; it is still an error rather than a panic so that a future field with a
/// non-serialisable shape degrades into a clear message.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A stack or service could not be turned into JSON for diffing or hashing.
    #[error("cannot serialise {what} for the plan: {source}")]
    Serialize {
        /// Which value failed (`target stack`, `service web`, …).
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// Whether a service appears, disappears or changes; the three cases render and count differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only in the target: every instance starts.
    Added,
    /// Only in the base: every instance stops; always destructive.
    Removed,
    /// In both, with field changes or instance changes (the latter also when only the
    /// environment's regions changed).
    Changed,
}

/// One leaf path whose value differs between base and target. Values are the serde JSON leaves,
/// so a string stays distinguishable from a number (`"1"` vs `1`) in both renderings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Dotted path from the service (or stack) root: `env.VERSION`, `health.interval`.
    pub path: String,
    /// The base value; `None` when the path is new.
    pub old: Option<Value>,
    /// The target value; `None` when the path goes away.
    pub new: Option<Value>,
    /// The values were masked with [`SECRET_MASK`] because the key is a secret name, so a person
    /// sees that it changed but never what it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// A service's instance counts in one region. Kept per region because rollouts proceed in region
/// waves and because a region swap is invisible in totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionDelta {
    /// The region's name.
    pub region: String,
    /// Instances in this region before the plan.
    pub before: u64,
    /// Instances in this region after the plan.
    pub after: u64,
    /// New instances started here (all of `after` when replacing).
    pub start: u64,
    /// Instances stopped here (all of `before` when replacing).
    pub stop: u64,
}

/// Everything the plan says about one service: what changes and what it costs in instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChange {
    /// The service's name.
    pub name: String,
    /// Added, removed or changed.
    pub kind: ChangeKind,
    /// Changed leaves, sorted by path. For an added service every leaf (old `None`); for a
    /// removed one every leaf (new `None`), so the JSON form is complete either way.
    pub fields: Vec<FieldChange>,
    /// A change outside [`IN_PLACE_FIELDS`] means every instance is replaced.
    pub replaces_instances: bool,
    /// Instances across all regions before the plan.
    pub before: u64,
    /// Instances across all regions after the plan.
    pub after: u64,
    /// Instances started across all regions.
    pub start: u64,
    /// Instances stopped across all regions.
    pub stop: u64,
    /// Instances stopped and not replaced in their region: the healthy capacity lost.
    pub lost: u64,
    /// `lost` as a share of `before`, rounded up so that it never understates the loss (and so
    /// that comparing it with an integer `max_capacity_drop` is exact).
    pub capacity_lost_percent: u32,
    /// Per-region counts, in the target's rollout order, then regions only the base had.
    pub regions: Vec<RegionDelta>,
    /// For a `process:` service of the target: the user its instances run as, `process.user`,
    /// or [`AGENT_DEFAULT_USER`] when the stack leaves it to the agent. `None` for image
    /// services and removed ones. Shown so that a reviewer sees where a command runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_as: Option<String>,
}

/// What [`ServiceChange::runs_as`] says for a `process:` service without `process.user`: the
/// agent decides (its `--process-user`, else the user the agent runs as).
pub const AGENT_DEFAULT_USER: &str =
    "the agent's default (--process-user, else the agent's own user)";

/// Why a plan needs `--confirm STACK` whatever the environment allows: one emptying change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Emptying {
    /// A service of the live release is not in the target.
    ServiceRemoved {
        /// The service.
        service: String,
        /// Its instances before, per region (`after` is 0 everywhere).
        regions: Vec<RegionDelta>,
    },
    /// A service keeps existing but with no instance left (`replicas: 0`).
    ServiceEmptied {
        /// The service.
        service: String,
        /// Its instances before and after, per region.
        regions: Vec<RegionDelta>,
    },
    /// A region that ran instances of the stack runs none afterwards.
    RegionEmptied {
        /// The region.
        region: String,
        /// What each service had there before (`(service, instances)`), by service name.
        services: Vec<(String, u64)>,
    },
}

impl std::fmt::Display for Emptying {
    /// One line saying what would be lost, per service and region:
    /// `service web loses every instance: 6 → 0 (eu 2 → 0, us 2 → 0, ap 2 → 0)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per_region = |regions: &[RegionDelta]| {
            regions
                .iter()
                .filter(|d| d.before > 0 || d.after > 0)
                .map(|d| format!("{} {} → {}", d.region, d.before, d.after))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let total = |regions: &[RegionDelta]| regions.iter().map(|d| d.before).sum::<u64>();
        match self {
            Emptying::ServiceRemoved { service, regions } => {
                let n = total(regions);
                write!(f, "service {service} is removed: {n} → 0 instances")?;
                if n > 0 {
                    write!(f, " ({})", per_region(regions))?;
                }
                Ok(())
            }
            Emptying::ServiceEmptied { service, regions } => write!(
                f,
                "service {service} loses every instance: {} → 0 ({})",
                total(regions),
                per_region(regions)
            ),
            Emptying::RegionEmptied { region, services } => {
                let what: Vec<String> = services
                    .iter()
                    .map(|(s, n)| format!("{s} {n} → 0"))
                    .collect();
                write!(
                    f,
                    "region {region} is emptied: no instance of the stack is left there ({})",
                    what.join(", ")
                )
            }
        }
    }
}

/// The plan's total cost: what an operator weighs before typing the stack's name back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlastRadius {
    /// Instances started, all services and regions.
    pub start: u64,
    /// Instances stopped, all services and regions.
    pub stop: u64,
    /// The largest [`ServiceChange::capacity_lost_percent`].
    pub worst_capacity_lost_percent: u32,
    /// The service with that loss (first by name on a tie); `None` when nothing is lost.
    pub worst_service: Option<String>,
    /// Regions where any instance starts or stops, in rollout order.
    pub regions_touched: Vec<String>,
}

/// The difference between the live release and a proposed one, with its blast radius and policy
/// verdict. Built by [`Plan::new`]; printed with `Display`, sent with `Serialize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// First 12 hex characters of [`Plan::hash`]: short enough to type, `--plan ID`.
    pub id: String,
    /// Full hex SHA-256 of the canonical JSON of base and target; the same inputs always give
    /// the same hash, and any change gives a different one.
    pub hash: String,
    /// The target stack's name (what `--confirm` expects).
    pub stack: String,
    /// The target's environment, if it has one.
    pub environment: Option<String>,
    /// Whether there was a live release to diff against.
    pub first_deploy: bool,
    /// Stack-level changes: `history`, the environment's regions, `approval`,
    /// `max_capacity_drop` — every leaf of the stack outside `services`.
    pub stack_changes: Vec<FieldChange>,
    /// Services that change, are added or removed, or whose instances move; sorted by name.
    pub services: Vec<ServiceChange>,
    /// Totals and the worst loss.
    pub blast_radius: BlastRadius,
    /// The target environment requires a second person to approve.
    pub approval: bool,
    /// How many distinct approvers, none of them the author, the target environment needs
    /// (`approval: N`; 0 when `approval` is false).
    #[serde(default)]
    pub approvals_needed: u32,
    /// The target environment's allowed capacity drop without `--confirm` (0 % if it has none).
    pub max_capacity_drop: Percent,
    /// Some capacity is lost or a service is removed: the kind of plan that emptied three
    /// clusters once, so callers should make it visible.
    pub destructive: bool,
    /// The worst capacity loss is above `max_capacity_drop`: `--confirm STACK` is required.
    pub exceeds_capacity_drop: bool,
    /// The emptying changes (services removed or emptied, regions emptied): each needs
    /// `--confirm STACK` whatever `max_capacity_drop` says. Empty for a first deploy.
    #[serde(default)]
    pub emptying: Vec<Emptying>,
    /// `--confirm STACK` is required: [`Plan::exceeds_capacity_drop`] or any [`Plan::emptying`].
    #[serde(default)]
    pub needs_confirm: bool,
    /// What will likely fail although the stack is valid, one line each: volumes that every
    /// agent refuses by default (see [`refused_volumes`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Host paths every berth agent refuses to mount unless started with `--allow-host-path`:
/// `/`, `/etc`, `/root` and what is inside them, the Docker socket and what holds it. The plan
/// can tell only these statically (an agent also protects its data directories and resolves
/// symlinks); it warns rather than refuses, since an agent may allow them. One line per
/// volume of the target stack, by service name.
pub fn refused_volumes(target: &Stack) -> Vec<String> {
    const SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];
    let mut out = Vec::new();
    for (name, service) in &target.services {
        for v in &service.volumes {
            let host = std::path::Path::new(&v.host);
            let why = if host == std::path::Path::new("/") {
                Some("the root filesystem")
            } else if host.starts_with("/etc") || host.starts_with("/root") {
                Some("a system directory")
            } else if SOCKETS.iter().any(|s| std::path::Path::new(s) == host) {
                Some("the Docker socket, root on the node")
            } else if SOCKETS
                .iter()
                .any(|s| std::path::Path::new(s).starts_with(host))
            {
                Some("it holds the Docker socket, root on the node")
            } else {
                None
            };
            if let Some(why) = why {
                out.push(format!(
                    "service {name} mounts `{}` ({why}): every agent refuses it unless started with --allow-host-path {}, so its instances will fail",
                    v.host, v.host
                ));
            }
        }
    }
    out
}

/// `process:` services of the target that run as root (`process.user: root` or uid `0`):
/// every agent refuses them unless started with `--allow-root-processes`. A warning rather
/// than a refusal, as with [`refused_volumes`], since an agent may allow them.
pub fn root_processes(target: &Stack) -> Vec<String> {
    target
        .services
        .iter()
        .filter_map(|(name, s)| {
            let user = s.process.as_ref()?.user.as_deref()?;
            (user == "root" || (!user.is_empty() && user.bytes().all(|b| b == b'0'))).then(|| {
                format!(
                    "service {name} runs as {user}: every agent refuses it unless started with --allow-root-processes, so its instances will fail"
                )
            })
        })
        .collect()
}

/// The emptying changes among `services` (sorted by name), then the regions (in `regions`
/// order) where the stack had instances in `base` and has none in `target`.
fn emptying(
    services: &[ServiceChange],
    regions: &[String],
    base: Option<&Stack>,
    target: &Stack,
) -> Vec<Emptying> {
    let mut out = Vec::new();
    for s in services {
        match s.kind {
            ChangeKind::Removed => out.push(Emptying::ServiceRemoved {
                service: s.name.clone(),
                regions: s.regions.clone(),
            }),
            ChangeKind::Changed if s.before > 0 && s.after == 0 => {
                out.push(Emptying::ServiceEmptied {
                    service: s.name.clone(),
                    regions: s.regions.clone(),
                })
            }
            _ => {}
        }
    }
    // A region is emptied when the stack had instances there and has none afterwards,
    // counting every service (one the plan does not touch may still run there).
    let count = |side: Option<&Stack>, region: &str| -> u64 {
        side.map_or(0, |st| {
            st.services
                .values()
                .map(|svc| instances_in(Some((svc, st.regions())), region))
                .sum()
        })
    };
    for region in regions {
        if count(base, region) == 0 || count(Some(target), region) > 0 {
            continue;
        }
        let had: Vec<(String, u64)> = base
            .map(|b| {
                b.services
                    .iter()
                    .map(|(n, svc)| (n.clone(), instances_in(Some((svc, b.regions())), region)))
                    .filter(|(_, k)| *k > 0)
                    .collect()
            })
            .unwrap_or_default();
        out.push(Emptying::RegionEmptied {
            region: region.clone(),
            services: had,
        });
    }
    out
}

/// The full hex SHA-256 identifying the move from `base` to `target`. Exposed on its own so that
/// `apply` can recompute it from the live state and refuse a plan whose base moved, without
/// building the whole plan. The hashed bytes are a version tag followed by the JSON of
/// `{"base": …, "target": …}`; the model's maps are `BTreeMap`s, so that JSON is canonical.
pub fn plan_hash(base: Option<&Stack>, target: &Stack) -> Result<String, PlanError> {
    #[derive(Serialize)]
    struct Inputs<'a> {
        base: Option<&'a Stack>,
        target: &'a Stack,
    }
    let json =
        serde_json::to_vec(&Inputs { base, target }).map_err(|source| PlanError::Serialize {
            what: "stacks for the plan id".to_string(),
            source,
        })?;
    let mut h = Sha256::new();
    h.update(b"berth-plan-v1\n");
    h.update(&json);
    Ok(hex::encode(h.finalize()))
}

impl Plan {
    /// Length of [`Plan::id`] in hex characters: 48 bits, enough to not collide among the plans
    /// of one stack, short enough to type.
    pub const ID_LEN: usize = 12;

    /// Diffs `base` (the live stack, `None` before the first deploy) against `target` and
    /// computes the blast radius, policy verdict and id. Pure and deterministic.
    pub fn new(base: Option<&Stack>, target: &Stack) -> Result<Plan, PlanError> {
        let hash = plan_hash(base, target)?;
        let id = hash.chars().take(Self::ID_LEN).collect();

        let stack_changes = diff_leaves(
            &stack_leaves(base, "base stack")?,
            &stack_leaves(Some(target), "target stack")?,
            |_| false,
        );

        let base_regions: &[String] = base.map(Stack::regions).unwrap_or(&[]);
        let target_regions = target.regions();
        let regions = region_union(target_regions, base_regions);

        let empty = BTreeMap::new();
        let base_services = base.map(|b| &b.services).unwrap_or(&empty);
        let names: BTreeSet<&String> = base_services.keys().chain(target.services.keys()).collect();
        let mut services = Vec::new();
        for name in names {
            let old = base_services.get(name);
            let new = target.services.get(name);
            let change = service_change(
                name,
                old.map(|s| (s, base_regions)),
                new.map(|s| (s, target_regions)),
                &regions,
            )?;
            if let Some(change) = change {
                services.push(change);
            }
        }

        let blast_radius = blast_radius(&services, &regions);
        let (approval, max_capacity_drop) = target
            .environment()
            .map(|(_, e)| (e.approval, e.max_capacity_drop))
            .unwrap_or((0, Percent(0)));
        let (approval, approvals_needed) = (approval > 0, approval);
        let destructive = services
            .iter()
            .any(|s| s.lost > 0 || s.kind == ChangeKind::Removed);
        let exceeds_capacity_drop = blast_radius.worst_capacity_lost_percent > max_capacity_drop.0;
        let emptying = emptying(&services, &regions, base, target);
        let needs_confirm = exceeds_capacity_drop || !emptying.is_empty();
        let mut warnings = refused_volumes(target);
        warnings.extend(root_processes(target));

        Ok(Plan {
            id,
            hash,
            stack: target.stack.clone(),
            environment: target.environment().map(|(n, _)| n.clone()),
            first_deploy: base.is_none(),
            stack_changes,
            services,
            blast_radius,
            approval,
            approvals_needed,
            max_capacity_drop,
            destructive,
            exceeds_capacity_drop,
            emptying,
            needs_confirm,
            warnings,
        })
    }

    /// No change at all: nothing to apply. A deploy of an empty plan is a no-op rather than a
    /// new release, so the CLI can say "up to date".
    pub fn is_empty(&self) -> bool {
        self.stack_changes.is_empty() && self.services.is_empty()
    }
}

/// Every leaf of a stack outside `services`, or none for a missing stack.
fn stack_leaves(stack: Option<&Stack>, what: &str) -> Result<BTreeMap<Path, Value>, PlanError> {
    let Some(stack) = stack else {
        return Ok(BTreeMap::new());
    };
    let mut v = serde_json::to_value(stack).map_err(|source| PlanError::Serialize {
        what: what.to_string(),
        source,
    })?;
    if let Value::Object(map) = &mut v {
        map.remove("services");
    }
    Ok(flatten(&v))
}

/// Every leaf of a service.
fn service_leaves(name: &str, svc: &Service) -> Result<BTreeMap<Path, Value>, PlanError> {
    let v = serde_json::to_value(svc).map_err(|source| PlanError::Serialize {
        what: format!("service {name}"),
        source,
    })?;
    Ok(flatten(&v))
}

/// Leaves whose value differs (or that exist on one side only), sorted by path; `masked` paths
/// get their values replaced by [`SECRET_MASK`].
fn diff_leaves(
    old: &BTreeMap<Path, Value>,
    new: &BTreeMap<Path, Value>,
    masked: impl Fn(&Path) -> bool,
) -> Vec<FieldChange> {
    let paths: BTreeSet<&Path> = old.keys().chain(new.keys()).collect();
    let mut out = Vec::new();
    for path in paths {
        let (o, n) = (old.get(path), new.get(path));
        if o == n {
            continue;
        }
        let secret = masked(path);
        let show = |v: Option<&Value>| {
            v.map(|v| {
                if secret {
                    Value::String(SECRET_MASK.to_string())
                } else {
                    v.clone()
                }
            })
        };
        out.push(FieldChange {
            path: path_string(path),
            old: show(o),
            new: show(n),
            secret,
        });
    }
    out
}

/// Target regions in rollout order, then regions only the base had, each once.
fn region_union(target: &[String], base: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in target.iter().chain(base) {
        if !out.contains(r) {
            out.push(r.clone());
        }
    }
    out
}

/// A service's instances in one region: replicas × how often the region is listed (normally once).
fn instances_in(side: Option<(&Service, &[String])>, region: &str) -> u64 {
    side.map_or(0, |(svc, regions)| {
        let n = regions.iter().filter(|r| *r == region).count() as u64;
        u64::from(berth_spec::model::desired_replicas(svc)).saturating_mul(n)
    })
}

/// The change to one service, or `None` when it neither changes nor moves instances.
fn service_change(
    name: &str,
    old: Option<(&Service, &[String])>,
    new: Option<(&Service, &[String])>,
    regions: &[String],
) -> Result<Option<ServiceChange>, PlanError> {
    let kind = match (old, new) {
        (None, None) => return Ok(None),
        (None, Some(_)) => ChangeKind::Added,
        (Some(_), None) => ChangeKind::Removed,
        (Some(_), Some(_)) => ChangeKind::Changed,
    };
    let leaves = |side: Option<(&Service, &[String])>| match side {
        Some((svc, _)) => service_leaves(name, svc),
        None => Ok(BTreeMap::new()),
    };
    // A key is masked if either side lists it as a secret: the old value of a key that just
    // became secret is as sensitive as the new one.
    let secrets: BTreeSet<&String> = old
        .iter()
        .chain(new.iter())
        .flat_map(|(svc, _)| svc.secrets.iter())
        .collect();
    let (old_leaves, new_leaves) = (leaves(old)?, leaves(new)?);
    let fields = diff_leaves(&old_leaves, &new_leaves, |p| {
        p.len() == 2 && p[0] == "env" && secrets.contains(&p[1])
    });
    let replaces_instances =
        kind == ChangeKind::Changed && fields_replace(&old_leaves, &new_leaves);

    let mut deltas = Vec::new();
    for region in regions {
        let before = instances_in(old, region);
        let after = instances_in(new, region);
        let (start, stop) = if replaces_instances {
            (after, before)
        } else {
            (after.saturating_sub(before), before.saturating_sub(after))
        };
        if before > 0 || after > 0 {
            deltas.push(RegionDelta {
                region: region.clone(),
                before,
                after,
                start,
                stop,
            });
        }
    }
    let sum = |f: fn(&RegionDelta) -> u64| deltas.iter().map(f).sum::<u64>();
    let (before, after, start, stop) = (
        sum(|d| d.before),
        sum(|d| d.after),
        sum(|d| d.start),
        sum(|d| d.stop),
    );
    // Replaced or not, what is not back in the same region afterwards is lost.
    let lost = sum(|d| d.before.saturating_sub(d.after));
    let capacity_lost_percent = if before == 0 {
        0
    } else {
        u32::try_from(lost.saturating_mul(100).div_ceil(before)).unwrap_or(100)
    };

    if kind == ChangeKind::Changed && fields.is_empty() && start == 0 && stop == 0 {
        return Ok(None);
    }
    let runs_as = new.and_then(|(svc, _)| {
        let p = svc.process.as_ref()?;
        Some(
            p.user
                .clone()
                .unwrap_or_else(|| AGENT_DEFAULT_USER.to_string()),
        )
    });
    Ok(Some(ServiceChange {
        name: name.to_string(),
        runs_as,
        kind,
        fields,
        replaces_instances,
        before,
        after,
        start,
        stop,
        lost,
        capacity_lost_percent,
        regions: deltas,
    }))
}

/// Whether any differing leaf lies outside [`IN_PLACE_FIELDS`]. Decided on the unmasked leaves.
fn fields_replace(old: &BTreeMap<Path, Value>, new: &BTreeMap<Path, Value>) -> bool {
    old.keys()
        .chain(new.keys())
        .filter(|p| old.get(*p) != new.get(*p))
        .any(|p| !IN_PLACE_FIELDS.iter().any(|f| under(p, f)))
}

/// Totals, the worst loss and the regions touched.
fn blast_radius(services: &[ServiceChange], regions: &[String]) -> BlastRadius {
    let mut worst: Option<&ServiceChange> = None;
    for s in services {
        if s.capacity_lost_percent > worst.map_or(0, |w| w.capacity_lost_percent) {
            worst = Some(s);
        }
    }
    let regions_touched = regions
        .iter()
        .filter(|r| {
            services.iter().any(|s| {
                s.regions
                    .iter()
                    .any(|d| &d.region == *r && (d.start > 0 || d.stop > 0))
            })
        })
        .cloned()
        .collect();
    BlastRadius {
        start: services.iter().map(|s| s.start).sum(),
        stop: services.iter().map(|s| s.stop).sum(),
        worst_capacity_lost_percent: worst.map_or(0, |w| w.capacity_lost_percent),
        worst_service: worst.map(|w| w.name.clone()),
        regions_touched,
    }
}

#[cfg(test)]
mod tests;
