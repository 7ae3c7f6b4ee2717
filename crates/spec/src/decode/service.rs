//! One service: every field typed, defaults made explicit, and the checks that involve more than
//! one field of the same service (driver, ports named by health and route, rollout progress).
//!
//! Decoding never stops at the first problem: a bad field is reported and replaced by its
//! default so the rest of the service is still checked. The caller discards the result if any
//! problem was found.

use std::collections::BTreeMap;

use super::fields::{Ctx, Fields, IntSpec, Item, Region};
use super::names::{did_you_mean, NameKind};
use super::scalar::{quote, Class};
use crate::diag::Pos;
use crate::model::{
    valid_header_name, Amount, BasisPoints, Constraint, Cpu, Duration, Health, Limits, Match,
    Memory, OnFailure, Percent, Placement, Process, Resources, RestartPolicy, Rollout, Route,
    Service, Split, Sticky, Strategy, Volume, ALL_TRAFFIC,
};
use crate::yaml::Node;

/// The fields a service may have.
pub const SERVICE_FIELDS: &[&str] = &[
    "process",
    "image",
    "command",
    "env",
    "secrets",
    "ports",
    "replicas",
    "health",
    "route",
    "rollout",
    "depends_on",
    "stop_grace",
    "volumes",
    "resources",
    "placement",
    "restart",
];
const HEALTH_FIELDS: &[&str] = &[
    "http",
    "tcp",
    "exec",
    "port",
    "interval",
    "timeout",
    "healthy",
    "unhealthy",
];
const ROUTE_FIELDS: &[&str] = &["host", "path", "port", "limits", "timeout", "split"];
const SPLIT_FIELDS: &[&str] = &["service", "weight", "sticky"];
const LIMITS_FIELDS: &[&str] = &["concurrency", "queue", "queue_timeout"];
const ROLLOUT_FIELDS: &[&str] = &[
    "strategy",
    "max_surge",
    "max_unavailable",
    "progress_deadline",
    "steps",
    "bake",
    "min_requests",
    "sticky",
    "match",
    "on_failure",
    "preview_host",
    "auto_promote",
    "keep_previous",
];
/// The fields only a canary has.
const CANARY_FIELDS: &[&str] = &["steps", "min_requests", "sticky", "match", "on_failure"];
/// The fields only a blue/green rollout has.
const BLUE_GREEN_FIELDS: &[&str] = &["preview_host", "auto_promote", "keep_previous"];
const MATCH_FIELDS: &[&str] = &["header", "value"];
/// The most canary steps: more is a typo, not a plan.
pub const MAX_STEPS: usize = 20;
const MIN_REQUESTS: IntSpec = IntSpec {
    what: "an integer from 1 to 1000000000",
    lo: 1,
    hi: 1_000_000_000,
    say_max: false,
};
const RESOURCES_FIELDS: &[&str] = &["cpu", "memory"];
const PLACEMENT_FIELDS: &[&str] = &["spread", "constraints"];
const PROCESS_FIELDS: &[&str] = &["command", "user"];

const COUNT: IntSpec = IntSpec {
    what: "a non-negative integer",
    lo: 0,
    hi: crate::model::MAX_REPLICAS as i128,
    say_max: true,
};
const THRESHOLD: IntSpec = IntSpec {
    what: "an integer from 1 to 1000",
    lo: 1,
    hi: 1000,
    say_max: false,
};
const PORT: IntSpec = IntSpec {
    what: "a port number from 0 to 65535",
    lo: 0,
    hi: 65535,
    say_max: false,
};

/// Defaults, as the stack file documents them.
pub mod defaults {
    use crate::model::{Cpu, Duration, Memory};
    /// `replicas`.
    pub const REPLICAS: u32 = 1;
    /// `stop_grace`: time between SIGTERM and SIGKILL.
    pub const STOP_GRACE: Duration = Duration { millis: 10_000 };
    /// `health.interval`.
    pub const HEALTH_INTERVAL: Duration = Duration { millis: 1_000 };
    /// `health.timeout`.
    pub const HEALTH_TIMEOUT: Duration = Duration { millis: 1_000 };
    /// `health.healthy`.
    pub const HEALTHY: u32 = 1;
    /// `health.unhealthy`.
    pub const UNHEALTHY: u32 = 3;
    /// `rollout.progress_deadline`.
    pub const PROGRESS_DEADLINE: Duration = Duration { millis: 60_000 };
    /// `rollout.steps` of a canary that does not list them.
    pub const CANARY_STEPS: [u32; 2] = [1_000, 5_000];
    /// `rollout.bake` of a canary: at least this long at each step.
    pub const CANARY_BAKE: Duration = Duration { millis: 300_000 };
    /// `rollout.min_requests` of a canary, and of `waves`.
    pub const MIN_REQUESTS: u32 = 300;
    /// `rollout.bake` of a blue/green rollout.
    pub const BLUE_GREEN_BAKE: Duration = Duration { millis: 60_000 };
    /// `rollout.keep_previous` of a blue/green rollout.
    pub const KEEP_PREVIOUS: Duration = Duration { millis: 900_000 };
    /// `waves.bake`.
    pub const WAVE_BAKE: Duration = Duration { millis: 300_000 };
    /// `resources.cpu`.
    pub const CPU: Cpu = Cpu { millis: 100 };
    /// `resources.memory`.
    pub const MEMORY: Memory = Memory {
        bytes: 64 * 1024 * 1024,
    };
}

/// A decoded service and what the cross-service checks need.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The service, defaults explicit.
    pub service: Service,
    /// `depends_on` entries with their positions.
    pub deps: Vec<Item>,
    /// The route's host and path, and where the host is written.
    pub route_at: Option<Pos>,
    /// `route.split.service` as written, and where (checked across services even when the
    /// split itself has another problem).
    pub split_at: Option<(String, Pos)>,
}

fn default_service() -> Service {
    Service {
        process: None,
        image: None,
        command: None,
        env: BTreeMap::new(),
        secrets: Vec::new(),
        ports: BTreeMap::new(),
        replicas: defaults::REPLICAS,
        health: None,
        route: None,
        rollout: Rollout::rolling(
            Amount::Count(1),
            Amount::Count(0),
            defaults::PROGRESS_DEADLINE,
        ),
        depends_on: Vec::new(),
        stop_grace: defaults::STOP_GRACE,
        volumes: Vec::new(),
        resources: Resources {
            cpu: defaults::CPU,
            memory: defaults::MEMORY,
        },
        placement: Placement {
            spread: Vec::new(),
            constraints: Vec::new(),
        },
        restart: RestartPolicy::Always,
    }
}

/// Decodes service `name` (whose key is at `key_pos`) with `ctx`'s values in scope.
pub fn service(ctx: &mut Ctx, name: &str, key_pos: Pos, node: &Node) -> Decoded {
    let path = format!("services.{name}");
    let mut out = Decoded {
        service: default_service(),
        deps: Vec::new(),
        route_at: None,
        split_at: None,
    };
    let Some(f) = ctx.fields(node, &path, "a mapping of service fields", SERVICE_FIELDS) else {
        return out;
    };
    let svc = &mut out.service;

    driver(ctx, &f, &path, key_pos, svc);
    if let Some(n) = f.get("env") {
        svc.env = env(ctx, n, &format!("{path}.env"));
    }
    if let Some(n) = f.get("secrets") {
        let p = format!("{path}.secrets");
        if let Some(list) = ctx.names(n, &p, "a list of secret names", NameKind::Secret) {
            for it in &list {
                if svc.env.contains_key(&it.text) {
                    ctx.error(
                        it.pos,
                        format!(
                            "{p}[{}]: `{}` is also set in env; a variable comes from one place",
                            it.index, it.text
                        ),
                    );
                }
            }
            svc.secrets = list.into_iter().map(|it| it.text).collect();
        }
    }
    if let Some(n) = f.get("ports") {
        svc.ports = ports(ctx, n, &format!("{path}.ports"));
    }
    // Port names, even those whose number was wrong, so health/route checks do not cascade.
    let port_names: Vec<String> = f
        .get("ports")
        .and_then(|n| match &n.kind {
            crate::yaml::NodeKind::Map(pairs) => Some(
                pairs
                    .iter()
                    .filter_map(|(k, _)| match &k.kind {
                        crate::yaml::NodeKind::Scalar { value, .. } => Some(value.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        })
        .unwrap_or_default();
    if let Some(n) = f.get("replicas") {
        if let Some(r) = ctx.int(n, &format!("{path}.replicas"), COUNT) {
            svc.replicas = u32::try_from(r).unwrap_or(defaults::REPLICAS);
        }
    }
    if let (Some(n), Some(kp)) = (f.get("health"), f.key_pos("health")) {
        svc.health = health(ctx, n, &format!("{path}.health"), kp, &port_names);
    }
    if let (Some(n), Some(kp)) = (f.get("route"), f.key_pos("route")) {
        let (route, at) = route(ctx, n, &format!("{path}.route"), kp, &port_names);
        svc.route = route;
        out.route_at = at;
        out.split_at = split_position(n);
    }
    if let Some(n) = f.get("rollout") {
        svc.rollout = rollout(ctx, n, &format!("{path}.rollout"));
    }
    if let Some(n) = f.get("depends_on") {
        let p = format!("{path}.depends_on");
        if let Some(list) = ctx.strings(n, &p, "a list of service names", Region::Deny) {
            out.deps = list;
        }
        svc.depends_on = out.deps.iter().map(|it| it.text.clone()).collect();
    }
    if let Some(n) = f.get("stop_grace") {
        if let Some(d) = ctx.unit::<Duration>(n, &format!("{path}.stop_grace"), "a duration") {
            svc.stop_grace = d;
        }
    }
    if let Some(n) = f.get("volumes") {
        let p = format!("{path}.volumes");
        let empty = matches!(&n.kind, crate::yaml::NodeKind::Seq(items) if items.is_empty());
        if svc.process.is_some() && svc.image.is_none() && !empty {
            ctx.error(
                n.pos,
                format!("{p}: volumes are only for image services; a process runs on the node's own filesystem"),
            );
        } else if let Some(list) =
            ctx.strings(n, &p, "a list of /host:/container[:ro]", Region::Deny)
        {
            for it in &list {
                match it.text.parse::<Volume>() {
                    Ok(vol) => svc.volumes.push(vol),
                    Err(e) => ctx.error(it.pos, format!("{p}[{}]: {e}", it.index)),
                }
            }
        }
    }
    if let Some(n) = f.get("resources") {
        svc.resources = resources(ctx, n, &format!("{path}.resources"));
    }
    if let Some(n) = f.get("placement") {
        svc.placement = placement(ctx, n, &format!("{path}.placement"));
    }
    if let Some(n) = f.get("restart") {
        let p = format!("{path}.restart");
        svc.restart = one_of(
            ctx,
            n,
            &p,
            &[
                ("always", RestartPolicy::Always),
                ("on-failure", RestartPolicy::OnFailure),
                ("never", RestartPolicy::Never),
            ],
        )
        .unwrap_or(RestartPolicy::Always);
    }
    out
}

/// `process:` or `image:` (exactly one), and `command:` for images.
fn driver(ctx: &mut Ctx, f: &Fields, path: &str, key_pos: Pos, svc: &mut Service) {
    let process = f.get("process");
    let image = f.get("image");
    match (process, image) {
        (Some(_), Some(i)) => ctx.error(
            i.pos,
            format!("{path}.image: a service has exactly one driver, and `process` is already set"),
        ),
        (None, None) => ctx.error(
            key_pos,
            format!("{path}: missing a driver; expected `process: {{command: [...]}}` or `image: NAME:TAG`"),
        ),
        _ => {}
    }
    if let Some(n) = process {
        let p = format!("{path}.process");
        let mut command = Vec::new();
        let mut user = None;
        if let Some(pf) = ctx.fields(n, &p, "a mapping with `command`", PROCESS_FIELDS) {
            if let Some(u) = pf.get("user") {
                user = ctx.name(u, &format!("{p}.user"), NameKind::User);
            }
            match pf.get("command") {
                Some(c) => command = command_list(ctx, c, &format!("{p}.command")),
                None => ctx.error(
                    f.key_pos("process").unwrap_or(n.pos),
                    format!("{p}: missing `command`; expected a list like [berth, whoami]"),
                ),
            }
        }
        svc.process = Some(Process { command, user });
    }
    if let Some(n) = image {
        let p = format!("{path}.image");
        if let Some(s) = ctx.string(n, &p, Region::Deny) {
            match super::image::check(&s) {
                Ok(()) => svc.image = Some(s),
                Err(e) => ctx.error(n.pos, format!("{p}: {e}")),
            }
        }
    }
    if let Some(n) = f.get("command") {
        let p = format!("{path}.command");
        if process.is_some() && image.is_none() {
            ctx.error(
                f.key_pos("command").unwrap_or(n.pos),
                format!("{p}: only image services take `command`; a process service sets `process.command`"),
            );
        } else {
            svc.command = Some(command_list(ctx, n, &p));
        }
    }
}

fn command_list(ctx: &mut Ctx, node: &Node, path: &str) -> Vec<String> {
    let Some(list) = ctx.strings(node, path, "a list of arguments", Region::Deny) else {
        return Vec::new();
    };
    // Only an empty list: items refused one by one were reported already.
    if matches!(&node.kind, crate::yaml::NodeKind::Seq(items) if items.is_empty()) {
        ctx.error(
            node.pos,
            format!("{path}: expected at least the program to run"),
        );
    }
    list.into_iter().map(|it| it.text).collect()
}

/// `env:` — names to strings. Numbers and bools are accepted and kept as written
/// (`VERSION: 1.10` is "1.10"), since every environment variable is text anyway.
fn env(ctx: &mut Ctx, node: &Node, path: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(entries) = ctx.entries(node, path, "a mapping of variable names to strings") else {
        return out;
    };
    for (k, pos, v) in entries {
        let p = format!("{path}.{k}");
        if !NameKind::EnvVar.accepts(k) {
            ctx.error(
                pos,
                format!(
                    "{p}: expected a variable name matching {}",
                    NameKind::EnvVar.rule()
                ),
            );
            continue;
        }
        if k == "PORT" || k.starts_with("PORT_") || k.starts_with("BERTH_") {
            ctx.error(
                pos,
                format!(
                    "{p}: `{k}` is set by berth for every instance (PORT, PORT_<NAME>, BERTH_*)"
                ),
            );
            continue;
        }
        if let Some(s) = ctx.string(v, &p, Region::Allow) {
            out.insert(k.to_string(), s);
        }
    }
    out
}

/// `ports:` — names to numbers; `0` lets the agent pick. Two names may not share a fixed number.
fn ports(ctx: &mut Ctx, node: &Node, path: &str) -> BTreeMap<String, u16> {
    let mut out: BTreeMap<String, u16> = BTreeMap::new();
    let Some(entries) = ctx.entries(node, path, "a mapping of port names to numbers") else {
        return out;
    };
    for (k, pos, v) in entries {
        let p = format!("{path}.{k}");
        if !NameKind::Port.accepts(k) {
            ctx.error(
                pos,
                format!(
                    "{p}: expected a port name matching {}",
                    NameKind::Port.rule()
                ),
            );
            continue;
        }
        let Some(n) = ctx.int(v, &p, PORT).and_then(|n| u16::try_from(n).ok()) else {
            continue;
        };
        if n != 0 {
            if let Some((other, _)) = out.iter().find(|(_, o)| **o == n) {
                ctx.error(v.pos, format!("{p}: port {n} is already used by `{other}`"));
                continue;
            }
        }
        out.insert(k.to_string(), n);
    }
    out
}

/// Resolves a `port:` reference, or the default when the service has exactly one port.
fn port_ref(
    ctx: &mut Ctx,
    given: Option<&Node>,
    path: &str,
    missing_at: Pos,
    what: &str,
    ports: &[String],
) -> Option<String> {
    if let Some(n) = given {
        let p = format!("{path}.port");
        let s = ctx.string(n, &p, Region::Deny)?;
        if ports.contains(&s) {
            return Some(s);
        }
        let declared = if ports.is_empty() {
            "the service declares no `ports`".to_string()
        } else {
            format!("expected one of the service's ports ({})", ports.join(", "))
        };
        ctx.error(
            n.pos,
            format!(
                "{p}: `{s}` is not a declared port; {declared}{}",
                did_you_mean(&s, ports.iter().map(String::as_str))
            ),
        );
        return None;
    }
    match ports {
        [only] => Some(only.clone()),
        [] => {
            ctx.error(
                missing_at,
                format!("{path}: {what} needs a port, and the service declares no `ports`"),
            );
            None
        }
        several => {
            ctx.error(
                missing_at,
                format!(
                    "{path}: missing `port`; {what} must name one of the service's ports ({})",
                    several.join(", ")
                ),
            );
            None
        }
    }
}

/// `health:` — exactly one of http/tcp/exec, and the port it probes.
fn health(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    key_pos: Pos,
    ports: &[String],
) -> Option<Health> {
    let f = ctx.fields(
        node,
        path,
        "a mapping with `http`, `tcp` or `exec`",
        HEALTH_FIELDS,
    )?;
    let mut h = Health {
        http: None,
        tcp: None,
        exec: None,
        port: None,
        interval: defaults::HEALTH_INTERVAL,
        timeout: defaults::HEALTH_TIMEOUT,
        healthy: defaults::HEALTHY,
        unhealthy: defaults::UNHEALTHY,
    };
    let kinds: Vec<&str> = ["http", "tcp", "exec"]
        .into_iter()
        .filter(|k| f.get(k).is_some())
        .collect();
    match kinds.as_slice() {
        [] => ctx.error(
            key_pos,
            format!("{path}: missing a check; expected exactly one of `http: /path`, `tcp: true` or `exec: [cmd]`"),
        ),
        [_] => {}
        [first, rest @ ..] => {
            for k in rest {
                if let Some(n) = f.get(k) {
                    ctx.error(
                        n.pos,
                        format!("{path}.{k}: a health check has exactly one of `http`, `tcp`, `exec`, and `{first}` is already set"),
                    );
                }
            }
        }
    }
    if let Some(n) = f.get("http") {
        let p = format!("{path}.http");
        if let Some(s) = ctx.string(n, &p, Region::Deny) {
            if s.starts_with('/') {
                h.http = Some(s);
            } else {
                ctx.error(
                    n.pos,
                    format!("{p}: expected a path starting with `/`, got {}", quote(&s)),
                );
            }
        }
    }
    if let Some(n) = f.get("tcp") {
        let p = format!("{path}.tcp");
        match ctx.bool(n, &p) {
            Some(true) => h.tcp = Some(true),
            Some(false) => ctx.error(
                n.pos,
                format!("{p}: expected `true` (a TCP connect check), got false; remove `health` to disable checks"),
            ),
            None => {}
        }
    }
    if let Some(n) = f.get("exec") {
        h.exec = Some(command_list(ctx, n, &format!("{path}.exec")));
    }
    let probe = f
        .get("http")
        .map(|n| ("an http check", n))
        .or(f.get("tcp").map(|n| ("a tcp check", n)));
    match (probe, f.get("port")) {
        (Some((what, check)), given) => {
            h.port = port_ref(ctx, given, path, check.pos, what, ports);
        }
        (None, Some(n)) if f.get("exec").is_some() => ctx.error(
            n.pos,
            format!("{path}.port: an exec check runs a command and probes no port; remove `port`"),
        ),
        _ => {}
    }
    if let Some(n) = f.get("interval") {
        h.interval = positive_duration(ctx, n, &format!("{path}.interval")).unwrap_or(h.interval);
    }
    if let Some(n) = f.get("timeout") {
        h.timeout = positive_duration(ctx, n, &format!("{path}.timeout")).unwrap_or(h.timeout);
    }
    if let Some(n) = f.get("healthy") {
        h.healthy = ctx
            .int(n, &format!("{path}.healthy"), THRESHOLD)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(h.healthy);
    }
    if let Some(n) = f.get("unhealthy") {
        h.unhealthy = ctx
            .int(n, &format!("{path}.unhealthy"), THRESHOLD)
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(h.unhealthy);
    }
    Some(h)
}

fn positive_duration(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Duration> {
    let d = ctx.unit::<Duration>(node, path, "a duration")?;
    if d.millis == 0 {
        ctx.error(
            node.pos,
            format!("{path}: expected a duration above 0, like 1s"),
        );
        return None;
    }
    Some(d)
}

/// `route:` — host, path (default `/`), and an explicit port: exposing a port to the router is
/// never implicit; optional `limits` and `timeout` (the response-head timeout, above 0).
fn route(
    ctx: &mut Ctx,
    node: &Node,
    path: &str,
    key_pos: Pos,
    ports: &[String],
) -> (Option<Route>, Option<Pos>) {
    let Some(f) = ctx.fields(
        node,
        path,
        "a mapping with `host`, `path` and `port`",
        ROUTE_FIELDS,
    ) else {
        return (None, None);
    };
    let mut host = String::new();
    let mut at = None;
    match f.get("host") {
        Some(n) => {
            let p = format!("{path}.host");
            if let Some(h) = ctx.string(n, &p, Region::Deny) {
                if valid_host(&h) {
                    host = h;
                    at = Some(n.pos);
                } else {
                    ctx.error(
                        n.pos,
                        format!(
                            "{p}: expected a host name like shop.example.com, got {}",
                            quote(&h)
                        ),
                    );
                }
            }
        }
        None => ctx.error(
            key_pos,
            format!("{path}: missing `host`; expected the host name the router serves"),
        ),
    }
    let mut route_path = "/".to_string();
    if let Some(n) = f.get("path") {
        let p = format!("{path}.path");
        if let Some(s) = ctx.string(n, &p, Region::Deny) {
            if s.starts_with('/') && !s.contains(char::is_whitespace) {
                route_path = s;
            } else {
                ctx.error(
                    n.pos,
                    format!("{p}: expected a path starting with `/`, got {}", quote(&s)),
                );
            }
        }
    }
    let port = match f.get("port") {
        Some(_) => port_ref(ctx, f.get("port"), path, key_pos, "a route", ports),
        None if ports.is_empty() => {
            ctx.error(
                key_pos,
                format!("{path}: a route needs a port, and the service declares no `ports`"),
            );
            None
        }
        None => {
            ctx.error(
                key_pos,
                format!(
                    "{path}: missing `port`; a route must name one of the service's ports ({})",
                    ports.join(", ")
                ),
            );
            None
        }
    };
    let limits = f
        .get("limits")
        .and_then(|n| limits(ctx, n, &format!("{path}.limits")));
    let timeout = f
        .get("timeout")
        .and_then(|n| positive_duration(ctx, n, &format!("{path}.timeout")));
    let split = f
        .get("split")
        .and_then(|n| split(ctx, n, &format!("{path}.split")));
    let route = Route {
        host,
        path: route_path,
        port: port.unwrap_or_default(),
        limits,
        timeout,
        split,
    };
    (Some(route), at)
}

/// `split.service` in a `route:` mapping, as written and where, if it is a plain string.
fn split_position(route: &Node) -> Option<(String, Pos)> {
    let find = |n: &Node, key: &str| -> Option<Node> {
        match &n.kind {
            crate::yaml::NodeKind::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| matches!(&k.kind, crate::yaml::NodeKind::Scalar { value, .. } if value == key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    };
    let split = find(route, "split")?;
    let service = find(&split, "service")?;
    match &service.kind {
        crate::yaml::NodeKind::Scalar { value, .. } => Some((value.clone(), service.pos)),
        _ => None,
    }
}

/// `route.split:` — `service` (a name; that it is another service of the stack with a route
/// port is checked across services), `weight` above 0 % and below 100 %, `sticky` (default
/// cookie).
fn split(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Split> {
    let f = ctx.fields(
        node,
        path,
        "a mapping with `service`, `weight` and `sticky`",
        SPLIT_FIELDS,
    )?;
    let service = match f.get("service") {
        Some(n) => ctx.name(n, &format!("{path}.service"), NameKind::Dns),
        None => {
            ctx.error(
                node.pos,
                format!("{path}: missing `service`; expected the service that answers the split"),
            );
            None
        }
    };
    let weight = match f.get("weight") {
        Some(n) => {
            let p = format!("{path}.weight");
            match ctx.unit::<BasisPoints>(n, &p, "a percentage like 20%") {
                Some(w) if w.0 == 0 || w.0 >= ALL_TRAFFIC => {
                    ctx.error(
                        n.pos,
                        format!("{p}: expected a share above 0% and below 100%, got {w}"),
                    );
                    None
                }
                w => w,
            }
        }
        None => {
            ctx.error(
                node.pos,
                format!("{path}: missing `weight`; expected the other service's share, like 20%"),
            );
            None
        }
    };
    let sticky = match f.get("sticky") {
        Some(n) => {
            ctx.unit::<Sticky>(n, &format!("{path}.sticky"), "cookie, header:NAME or none")?
        }
        None => Sticky::Cookie,
    };
    Some(Split {
        service: service?,
        weight: weight?,
        sticky,
    })
}

/// `route.limits:` — `concurrency` (required, at least 1), `queue` (default 0) and
/// `queue_timeout` (default 1s).
fn limits(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Limits> {
    const CONCURRENCY: IntSpec = IntSpec {
        what: "an integer from 1 to 1000000",
        lo: 1,
        hi: 1_000_000,
        say_max: false,
    };
    const QUEUE: IntSpec = IntSpec {
        what: "an integer from 0 to 1000000",
        lo: 0,
        hi: 1_000_000,
        say_max: false,
    };
    let f = ctx.fields(
        node,
        path,
        "a mapping with `concurrency`, `queue` and `queue_timeout`",
        LIMITS_FIELDS,
    )?;
    let concurrency = match f.get("concurrency") {
        Some(n) => ctx.int(n, &format!("{path}.concurrency"), CONCURRENCY),
        None => {
            ctx.error(
                node.pos,
                format!(
                    "{path}: missing `concurrency`; expected the most requests in flight at once"
                ),
            );
            None
        }
    };
    let queue = match f.get("queue") {
        Some(n) => ctx.int(n, &format!("{path}.queue"), QUEUE),
        None => Some(0),
    };
    let mut queue_timeout = Duration::from_millis(1000);
    if let Some(n) = f.get("queue_timeout") {
        if let Some(d) = ctx.unit::<Duration>(n, &format!("{path}.queue_timeout"), "a duration") {
            queue_timeout = d;
        }
    }
    Some(Limits {
        concurrency: u32::try_from(concurrency?).ok()?,
        queue: u32::try_from(queue?).ok()?,
        queue_timeout,
    })
}

fn valid_host(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `rollout:` — strategy and pace. A rolling rollout that may neither add nor remove an
/// instance can never progress, so both limits at zero is refused.
fn rollout(ctx: &mut Ctx, node: &Node, path: &str) -> Rollout {
    let mut r = default_service().rollout;
    let Some(f) = ctx.fields(node, path, "a mapping of rollout settings", ROLLOUT_FIELDS) else {
        return r;
    };
    if let Some(n) = f.get("strategy") {
        r.strategy = one_of(
            ctx,
            n,
            &format!("{path}.strategy"),
            &[
                ("rolling", Strategy::Rolling),
                ("blue_green", Strategy::BlueGreen),
                ("canary", Strategy::Canary),
            ],
        )
        .unwrap_or(Strategy::Rolling);
    }
    let surge = f
        .get("max_surge")
        .map(|n| (n, amount(ctx, n, &format!("{path}.max_surge"))));
    let unavailable = f
        .get("max_unavailable")
        .map(|n| (n, amount(ctx, n, &format!("{path}.max_unavailable"))));
    if let Some((_, Some(a))) = surge {
        r.max_surge = a;
    }
    if let Some((_, Some(a))) = unavailable {
        r.max_unavailable = a;
    }
    let surge_ok = surge.is_none_or(|(_, a)| a.is_some());
    let unavailable_ok = unavailable.is_none_or(|(_, a)| a.is_some());
    if r.strategy == Strategy::Rolling
        && surge_ok
        && unavailable_ok
        && r.max_surge.is_zero()
        && r.max_unavailable.is_zero()
    {
        let (field, n) = match (surge, unavailable) {
            (Some((n, _)), _) => ("max_surge", n),
            (None, Some((n, _))) => ("max_unavailable", n),
            (None, None) => ("max_surge", node),
        };
        ctx.error(
            n.pos,
            format!("{path}.{field}: a rolling rollout needs max_surge or max_unavailable above 0, or it can never progress"),
        );
    }
    if let Some(n) = f.get("progress_deadline") {
        r.progress_deadline = positive_duration(ctx, n, &format!("{path}.progress_deadline"))
            .unwrap_or(r.progress_deadline);
    }
    progressive(ctx, &f, path, &mut r);
    r
}

/// The canary and blue/green fields: each only under its own strategy, every default made
/// explicit for the strategy chosen (so the rendered file says what will happen), nothing for
/// `rolling` (so a rolling service renders as it always did).
fn progressive(ctx: &mut Ctx, f: &Fields, path: &str, r: &mut Rollout) {
    let (name, own): (&str, &[&str]) = match r.strategy {
        Strategy::Rolling => ("rolling", &[]),
        Strategy::Canary => ("canary", CANARY_FIELDS),
        Strategy::BlueGreen => ("blue_green", BLUE_GREEN_FIELDS),
    };
    for field in CANARY_FIELDS
        .iter()
        .chain(BLUE_GREEN_FIELDS)
        .chain(std::iter::once(&"bake"))
    {
        let mine = own.contains(field) || (*field == "bake" && r.strategy != Strategy::Rolling);
        if let (false, Some(at)) = (mine, f.key_pos(field)) {
            let whose = if CANARY_FIELDS.contains(field) {
                "strategy: canary"
            } else if BLUE_GREEN_FIELDS.contains(field) {
                "strategy: blue_green"
            } else {
                "strategy: canary or blue_green"
            };
            ctx.error(
                at,
                format!("{path}.{field}: only for {whose}; this rollout is {name}"),
            );
        }
    }
    let bake = f
        .get("bake")
        .filter(|_| r.strategy != Strategy::Rolling)
        .and_then(|n| ctx.unit::<Duration>(n, &format!("{path}.bake"), "a duration"));
    match r.strategy {
        Strategy::Rolling => {}
        Strategy::Canary => {
            r.bake = Some(bake.unwrap_or(defaults::CANARY_BAKE));
            r.steps = Some(
                f.get("steps")
                    .and_then(|n| steps(ctx, n, &format!("{path}.steps")))
                    .unwrap_or_else(|| defaults::CANARY_STEPS.map(BasisPoints).to_vec()),
            );
            let min = f
                .get("min_requests")
                .and_then(|n| ctx.int(n, &format!("{path}.min_requests"), MIN_REQUESTS))
                .and_then(|v| u32::try_from(v).ok());
            r.min_requests = Some(min.unwrap_or(defaults::MIN_REQUESTS));
            let sticky = f.get("sticky").and_then(|n| {
                ctx.unit::<Sticky>(n, &format!("{path}.sticky"), "cookie, header:NAME or none")
            });
            r.sticky = Some(sticky.unwrap_or(Sticky::Cookie));
            r.matched = f
                .get("match")
                .and_then(|n| matched(ctx, n, &format!("{path}.match")));
            let on_failure = f.get("on_failure").and_then(|n| {
                one_of(
                    ctx,
                    n,
                    &format!("{path}.on_failure"),
                    &[
                        ("rollback", OnFailure::Rollback),
                        ("pause", OnFailure::Pause),
                    ],
                )
            });
            r.on_failure = Some(on_failure.unwrap_or(OnFailure::Rollback));
        }
        Strategy::BlueGreen => {
            r.bake = Some(bake.unwrap_or(defaults::BLUE_GREEN_BAKE));
            r.preview_host = f.get("preview_host").and_then(|n| {
                let p = format!("{path}.preview_host");
                let h = ctx.string(n, &p, Region::Deny)?;
                if valid_host(&h) {
                    Some(h)
                } else {
                    ctx.error(
                        n.pos,
                        format!(
                            "{p}: expected a host name like preview.shop.example.com, got {}",
                            quote(&h)
                        ),
                    );
                    None
                }
            });
            let auto = f
                .get("auto_promote")
                .and_then(|n| ctx.bool(n, &format!("{path}.auto_promote")));
            r.auto_promote = Some(auto.unwrap_or(true));
            let keep = f.get("keep_previous").and_then(|n| {
                ctx.unit::<Duration>(n, &format!("{path}.keep_previous"), "a duration")
            });
            r.keep_previous = Some(keep.unwrap_or(defaults::KEEP_PREVIOUS));
        }
    }
}

/// `steps:` — strictly increasing shares, each above 0 % and below 100 %.
fn steps(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Vec<BasisPoints>> {
    let items = ctx.list(node, path, "a list of percentages like [10%, 50%]")?;
    if items.is_empty() {
        ctx.error(
            node.pos,
            format!("{path}: expected at least one step, like [10%, 50%]"),
        );
        return None;
    }
    if items.len() > MAX_STEPS {
        ctx.error(
            node.pos,
            format!(
                "{path}: {} steps; expected at most {MAX_STEPS}",
                items.len()
            ),
        );
        return None;
    }
    let mut out: Vec<BasisPoints> = Vec::with_capacity(items.len());
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(bp) = ctx.unit::<BasisPoints>(item, &p, "a percentage like 10%") else {
            ok = false;
            continue;
        };
        if bp.0 == 0 {
            ctx.error(item.pos, format!("{p}: a step needs a share above 0%"));
            ok = false;
        } else if bp.0 >= ALL_TRAFFIC {
            ctx.error(
                item.pos,
                format!("{p}: expected a share below 100%: 100% follows the last step by itself"),
            );
            ok = false;
        } else if let Some(prev) = out.last().filter(|prev| **prev >= bp) {
            ctx.error(
                item.pos,
                format!("{p}: {bp} after {prev}; steps must increase, since a canary only ever gains traffic"),
            );
            ok = false;
        }
        out.push(bp);
    }
    ok.then_some(out)
}

/// `match: { header, value }`.
fn matched(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Match> {
    let f = ctx.fields(
        node,
        path,
        "a mapping with `header` and `value`",
        MATCH_FIELDS,
    )?;
    let mut get = |field: &str, what: &str| -> Option<String> {
        match f.get(field) {
            Some(n) => ctx.string(n, &format!("{path}.{field}"), Region::Deny),
            None => {
                ctx.error(
                    node.pos,
                    format!("{path}: missing `{field}`; expected {what}"),
                );
                None
            }
        }
    };
    let header = get("header", "the request header to match, like X-Canary");
    let value = get("value", "the header value that selects the new release");
    let header = header?;
    if !valid_header_name(&header) {
        let at = f.get("header").map_or(node.pos, |n| n.pos);
        ctx.error(
            at,
            format!(
                "{path}.header: expected a header name like X-Canary, got {}",
                quote(&header)
            ),
        );
        return None;
    }
    Some(Match {
        header,
        value: value?,
    })
}

/// A count (`1`) or a percentage of the desired replicas (`25%`).
fn amount(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Amount> {
    const WHAT: &str = "a count like 1 or a percentage like 25%";
    let s = ctx.scalar(node, path, WHAT, Region::Deny)?;
    if s.class() == Class::Int
        || (!s.plain && s.text.bytes().all(|b| b.is_ascii_digit()) && !s.text.is_empty())
    {
        match s.text.parse::<u32>() {
            Ok(n) if n <= crate::model::MAX_REPLICAS => return Some(Amount::Count(n)),
            // Too large (including beyond u32): say the bound.
            _ if s.text.bytes().all(|b| b.is_ascii_digit()) => {
                ctx.error(
                    s.pos,
                    format!(
                        "{path}: expected a count no larger than {} or a percentage like 25%, got {}",
                        crate::model::MAX_REPLICAS,
                        s.got()
                    ),
                );
                return None;
            }
            _ => {}
        }
    } else if let Ok(p) = s.text.parse::<Percent>() {
        return Some(Amount::Percent(p));
    }
    ctx.error(s.pos, format!("{path}: expected {WHAT}, got {}", s.got()));
    None
}

fn resources(ctx: &mut Ctx, node: &Node, path: &str) -> Resources {
    let mut r = Resources {
        cpu: defaults::CPU,
        memory: defaults::MEMORY,
    };
    let Some(f) = ctx.fields(
        node,
        path,
        "a mapping with `cpu` and `memory`",
        RESOURCES_FIELDS,
    ) else {
        return r;
    };
    if let Some(n) = f.get("cpu") {
        let p = format!("{path}.cpu");
        match ctx.unit::<Cpu>(n, &p, "a CPU amount like 250m or 2") {
            Some(c) if c.millis == 0 => ctx.error(n.pos, format!("{p}: expected more than 0 CPU")),
            Some(c) => r.cpu = c,
            None => {}
        }
    }
    if let Some(n) = f.get("memory") {
        let p = format!("{path}.memory");
        match ctx.unit::<Memory>(n, &p, "a memory amount like 128Mi") {
            Some(m) if m.bytes == 0 => ctx.error(n.pos, format!("{p}: expected more than 0 bytes")),
            Some(m) => r.memory = m,
            None => {}
        }
    }
    r
}

fn placement(ctx: &mut Ctx, node: &Node, path: &str) -> Placement {
    let mut pl = Placement {
        spread: Vec::new(),
        constraints: Vec::new(),
    };
    let Some(f) = ctx.fields(
        node,
        path,
        "a mapping with `spread` and `constraints`",
        PLACEMENT_FIELDS,
    ) else {
        return pl;
    };
    if let Some(n) = f.get("spread") {
        let p = format!("{path}.spread");
        if let Some(list) = ctx.names(n, &p, "a list of node label keys", NameKind::Label) {
            pl.spread = list.into_iter().map(|it| it.text).collect();
        }
    }
    if let Some(n) = f.get("constraints") {
        let p = format!("{path}.constraints");
        if let Some(list) = ctx.strings(
            n,
            &p,
            "a list of constraints like \"zone == a\"",
            Region::Allow,
        ) {
            for it in &list {
                match it.text.parse::<Constraint>() {
                    Ok(c) => pl.constraints.push(c),
                    Err(e) => ctx.error(it.pos, format!("{p}[{}]: {e}", it.index)),
                }
            }
        }
    }
    pl
}

/// One of a fixed set of words, with a suggestion for a near miss.
pub fn one_of<T: Copy>(ctx: &mut Ctx, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
    let words: Vec<&str> = options.iter().map(|(w, _)| *w).collect();
    let what = format!("one of {}", words.join(", "));
    let s = ctx.scalar(node, path, &what, Region::Deny)?;
    if let Some((_, v)) = options.iter().find(|(w, _)| *w == s.text) {
        return Some(*v);
    }
    let hint = did_you_mean(&s.text, words.iter().copied());
    ctx.error(
        s.pos,
        format!("{path}: expected {what}, got {}{hint}", s.got()),
    );
    None
}
