//! Tree → source stack: the file as written, every top-level field checked.
//!
//! The top of the file (`stack`, `history`, `values`, `environments`) is literal and decoded
//! once. Services may use `${values.NAME}`, whose type and value depend on the environment, so
//! [`decode`] only checks that `services` is a mapping of well-named services and keeps each
//! service's tree; [`service::service`] decodes a service with one environment's values in scope.

pub mod fields;
pub mod graph;
pub mod image;
pub mod names;
pub mod scalar;
pub mod service;
pub mod template;

use std::collections::BTreeMap;

use self::fields::{Ctx, IntSpec};
use self::names::{did_you_mean, NameKind};
use self::scalar::{parse_int, Class};
use crate::diag::{Diagnostic, Pos};
use crate::model::{Duration, Environment, Percent, WaveFailure, Waves};
use crate::yaml::Node;

/// A typed entry of `values` (or an overlay of one).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// The type and the value.
    pub kind: ValueKind,
    /// Where the value is written.
    pub pos: Pos,
}

/// The four types a value may have. A float keeps its text so that `${values.x}` inside a
/// string reads exactly as written.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueKind {
    /// A plain integer that fits in 64 bits.
    Int(i64),
    /// `true` or `false`.
    Bool(bool),
    /// A finite float, as written.
    Float(String),
    /// A string (quoted, or plain text that is no other type).
    Str(String),
}

impl ValueKind {
    /// The type's name in messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueKind::Int(_) => "an integer",
            ValueKind::Bool(_) => "a bool",
            ValueKind::Float(_) => "a float",
            ValueKind::Str(_) => "a string",
        }
    }
}

/// Values by name.
pub type Values = BTreeMap<String, Value>;

/// One entry of `environments`, with its overlay already type-checked against `values`.
#[derive(Debug, Clone)]
pub struct SourceEnv {
    /// The environment's name.
    pub name: String,
    /// Regions and policy, as the rendered stack holds them.
    pub env: Environment,
    /// Only the overlaid names; [`Source::values_for`] merges them over the defaults.
    pub overlay: Values,
}

/// One entry of `services`, not yet decoded.
#[derive(Debug, Clone)]
pub struct SourceService<'n> {
    /// The service's name (checked, but kept even when invalid so its fields are still checked).
    pub name: String,
    /// The position of the service's key.
    pub pos: Pos,
    /// The service's tree, decoded per environment.
    pub node: &'n Node,
}

/// The file as written.
#[derive(Debug, Clone)]
pub struct Source<'n> {
    /// The stack's name (empty when missing or invalid; a diagnostic says so).
    pub stack: String,
    /// Releases kept per environment.
    pub history: u32,
    /// Typed defaults for `${values.NAME}`.
    pub values: Values,
    /// In source order.
    pub environments: Vec<SourceEnv>,
    /// In source order.
    pub services: Vec<SourceService<'n>>,
    /// Problems in the literal parts of the file.
    pub diags: Vec<Diagnostic>,
}

impl Source<'_> {
    /// An environment by name.
    pub fn environment(&self, name: &str) -> Option<&SourceEnv> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The defaults with `env`'s overlay applied (the defaults alone for `None`).
    pub fn values_for(&self, env: Option<&SourceEnv>) -> Values {
        let mut values = self.values.clone();
        if let Some(env) = env {
            for (k, v) in &env.overlay {
                values.insert(k.clone(), v.clone());
            }
        }
        values
    }
}

const TOP_FIELDS: &[&str] = &["stack", "history", "values", "environments", "services"];
const ENV_FIELDS: &[&str] = &[
    "regions",
    "values",
    "approval",
    "approval_timeout",
    "max_capacity_drop",
    "waves",
];
const WAVES_FIELDS: &[&str] = &["bake", "min_requests", "on_failure"];

/// The default number of releases kept per environment.
pub const DEFAULT_HISTORY: u32 = 10;

/// Decodes the literal parts of a stack file and collects its services.
pub fn decode(root: &Node) -> Source<'_> {
    let mut ctx = Ctx::literal();
    let mut src = Source {
        stack: String::new(),
        history: DEFAULT_HISTORY,
        values: Values::new(),
        environments: Vec::new(),
        services: Vec::new(),
        diags: Vec::new(),
    };
    let Some(f) = ctx.fields(
        root,
        "",
        "a mapping with `stack`, `environments` and `services`",
        TOP_FIELDS,
    ) else {
        src.diags = ctx.diags;
        return src;
    };
    match f.get("stack") {
        Some(n) => {
            if let Some(name) = ctx.name(n, "stack", NameKind::Dns) {
                src.stack = name;
            }
        }
        None => ctx.diags.push(Diagnostic::global(
            "stack: missing; expected the stack's name, like `stack: shop`",
        )),
    }
    if let Some(n) = f.get("history") {
        let spec = IntSpec {
            what: "an integer from 1 to 1000",
            lo: 1,
            hi: 1000,
            say_max: false,
        };
        if let Some(h) = ctx.int(n, "history", spec) {
            src.history = u32::try_from(h).unwrap_or(DEFAULT_HISTORY);
        }
    }
    if let Some(n) = f.get("values") {
        src.values = decode_values(&mut ctx, n, "values");
    }
    match f.get("environments") {
        Some(n) => src.environments = decode_environments(&mut ctx, n, &src.values),
        None => ctx.diags.push(Diagnostic::global(
            "environments: missing; expected at least one environment with its `regions`",
        )),
    }
    match f.get("services") {
        Some(n) => {
            if let Some(entries) = ctx.entries(n, "services", "a mapping of services by name") {
                for (name, pos, node) in entries {
                    if !NameKind::Dns.accepts(name) {
                        ctx.error(
                            pos,
                            format!(
                                "services.{name}: expected a service name matching {}",
                                NameKind::Dns.rule()
                            ),
                        );
                    }
                    src.services.push(SourceService {
                        name: name.to_string(),
                        pos,
                        node,
                    });
                }
            }
        }
        None => ctx.diags.push(Diagnostic::global(
            "services: missing; expected a mapping of services by name",
        )),
    }
    src.diags = ctx.diags;
    src
}

/// `values:` — names to typed scalars.
fn decode_values(ctx: &mut Ctx, node: &Node, path: &str) -> Values {
    let mut out = Values::new();
    let Some(entries) = ctx.entries(node, path, "a mapping of value names to scalars") else {
        return out;
    };
    for (name, pos, v) in entries {
        let p = format!("{path}.{name}");
        if !NameKind::Value.accepts(name) {
            ctx.error(
                pos,
                format!(
                    "{p}: expected a value name matching {}",
                    NameKind::Value.rule()
                ),
            );
            continue;
        }
        if let Some(value) = decode_value(ctx, v, &p) {
            out.insert(name.to_string(), value);
        }
    }
    out
}

fn decode_value(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Value> {
    const WHAT: &str = "an integer, bool, float or string";
    let s = ctx.scalar(node, path, WHAT, fields::Region::Deny)?;
    let kind = match s.class() {
        Class::Null => {
            ctx.error(s.pos, format!("{path}: expected {WHAT}, got null"));
            return None;
        }
        Class::Bool(b) => ValueKind::Bool(b),
        Class::Int => match parse_int(&s.text).and_then(|i| i64::try_from(i).ok()) {
            Some(i) => ValueKind::Int(i),
            None => {
                ctx.error(
                    s.pos,
                    format!(
                        "{path}: expected an integer that fits in 64 bits, got {}",
                        s.got()
                    ),
                );
                return None;
            }
        },
        Class::Float => {
            if !s.text.parse::<f64>().is_ok_and(f64::is_finite) {
                ctx.error(
                    s.pos,
                    format!("{path}: expected a finite float, got {}", s.got()),
                );
                return None;
            }
            ValueKind::Float(s.text.into_owned())
        }
        Class::Str => {
            if let Err(e) = template::check_literal(&s.text) {
                ctx.error(s.pos, format!("{path}: {e}"));
                return None;
            }
            ValueKind::Str(s.text.into_owned())
        }
    };
    Some(Value {
        kind,
        pos: node.pos,
    })
}

/// `environments:` — each with regions, policy, and an overlay typed like `values`.
fn decode_environments(ctx: &mut Ctx, node: &Node, values: &Values) -> Vec<SourceEnv> {
    let mut out = Vec::new();
    let Some(entries) = ctx.entries(node, "environments", "a mapping of environments by name")
    else {
        return out;
    };
    if entries.is_empty() {
        ctx.error(
            node.pos,
            "environments: expected at least one environment with its `regions`",
        );
    }
    for (name, pos, v) in entries {
        let path = format!("environments.{name}");
        if !NameKind::Dns.accepts(name) {
            ctx.error(
                pos,
                format!(
                    "{path}: expected an environment name matching {}",
                    NameKind::Dns.rule()
                ),
            );
        }
        let mut env = SourceEnv {
            name: name.to_string(),
            env: Environment {
                regions: Vec::new(),
                approval: 0,
                approval_timeout: crate::model::DEFAULT_APPROVAL_TIMEOUT,
                max_capacity_drop: crate::model::DEFAULT_MAX_CAPACITY_DROP,
                waves: None,
            },
            overlay: Values::new(),
        };
        if let Some(f) = ctx.fields(v, &path, "a mapping with `regions`", ENV_FIELDS) {
            match f.get("regions") {
                Some(n) => {
                    let p = format!("{path}.regions");
                    if let Some(regions) =
                        ctx.names(n, &p, "a list of regions, in rollout order", NameKind::Region)
                    {
                        if regions.is_empty() && matches!(n.kind, crate::yaml::NodeKind::Seq(_)) {
                            ctx.error(n.pos, format!("{p}: expected at least one region"));
                        }
                        env.env.regions = regions.into_iter().map(|it| it.text).collect();
                    }
                }
                None => ctx.error(
                    pos,
                    format!("{path}: missing `regions`; expected the rollout waves in order, like `regions: [eu-west]`"),
                ),
            }
            if let Some(n) = f.get("approval") {
                env.env.approval = decode_approval(ctx, n, &format!("{path}.approval"));
            }
            if let Some(n) = f.get("approval_timeout") {
                if let Some(d) = ctx.unit::<Duration>(
                    n,
                    &format!("{path}.approval_timeout"),
                    "a duration like 24h or 30m",
                ) {
                    env.env.approval_timeout = d;
                }
            }
            if let Some(n) = f.get("max_capacity_drop") {
                if let Some(p) =
                    ctx.unit::<Percent>(n, &format!("{path}.max_capacity_drop"), "a percentage")
                {
                    env.env.max_capacity_drop = p;
                }
            }
            if let Some(n) = f.get("waves") {
                env.env.waves = decode_waves(ctx, n, &format!("{path}.waves"));
            }
            if let Some(n) = f.get("values") {
                env.overlay = decode_overlay(ctx, n, &format!("{path}.values"), values);
            }
        }
        out.push(env);
    }
    out
}

/// `approval: N` (distinct approvers), or `true` (1) / `false` (0) as before counts existed.
fn decode_approval(ctx: &mut Ctx, node: &Node, path: &str) -> u32 {
    const COUNT: IntSpec = IntSpec {
        what: "true, false or a number of approvers from 0 to 6",
        lo: 0,
        hi: 6,
        say_max: false,
    };
    if let crate::yaml::NodeKind::Scalar { value, plain: true } = &node.kind {
        match value.trim() {
            "true" => return 1,
            "false" => return 0,
            _ => {}
        }
    }
    ctx.int(node, path, COUNT)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// `waves: { bake, min_requests, on_failure }`, every field defaulted when left out.
fn decode_waves(ctx: &mut Ctx, node: &Node, path: &str) -> Option<Waves> {
    const MIN_REQUESTS: IntSpec = IntSpec {
        what: "an integer from 0 to 1000000000",
        lo: 0,
        hi: 1_000_000_000,
        say_max: false,
    };
    let f = ctx.fields(
        node,
        path,
        "a mapping with `bake`, `min_requests` and `on_failure`",
        WAVES_FIELDS,
    )?;
    let mut waves = Waves {
        bake: service::defaults::WAVE_BAKE,
        min_requests: service::defaults::MIN_REQUESTS,
        on_failure: WaveFailure::RevertAll,
    };
    if let Some(n) = f.get("bake") {
        if let Some(d) = ctx.unit::<Duration>(n, &format!("{path}.bake"), "a duration") {
            waves.bake = d;
        }
    }
    if let Some(n) = f.get("min_requests") {
        if let Some(v) = ctx.int(n, &format!("{path}.min_requests"), MIN_REQUESTS) {
            waves.min_requests = u32::try_from(v).unwrap_or(waves.min_requests);
        }
    }
    if let Some(n) = f.get("on_failure") {
        let p = format!("{path}.on_failure");
        let options = [
            ("revert_all", WaveFailure::RevertAll),
            ("revert_wave", WaveFailure::RevertWave),
            ("halt", WaveFailure::Halt),
        ];
        if let Some(v) = service::one_of(ctx, n, &p, &options) {
            waves.on_failure = v;
        }
    }
    Some(waves)
}

/// An environment's `values:` — each name must exist in `values` and keep its type. An integer
/// is accepted where the default is a float (and then reads as written).
fn decode_overlay(ctx: &mut Ctx, node: &Node, path: &str, defaults: &Values) -> Values {
    let mut out = Values::new();
    let Some(entries) = ctx.entries(node, path, "a mapping of value names to scalars") else {
        return out;
    };
    for (name, pos, v) in entries {
        let p = format!("{path}.{name}");
        let Some(default) = defaults.get(name) else {
            ctx.error(
                pos,
                format!(
                    "{p}: no such value in `values`{}",
                    did_you_mean(name, defaults.keys().map(String::as_str))
                ),
            );
            continue;
        };
        let Some(mut value) = decode_value(ctx, v, &p) else {
            continue;
        };
        match (&default.kind, &value.kind) {
            (ValueKind::Float(_), ValueKind::Int(i)) => {
                value.kind = ValueKind::Float(i.to_string())
            }
            (d, o) if std::mem::discriminant(d) == std::mem::discriminant(o) => {}
            (d, o) => {
                ctx.error(
                    v.pos,
                    format!(
                        "{p}: expected {} (as in values), got {}",
                        d.type_name(),
                        o.type_name()
                    ),
                );
                continue;
            }
        }
        out.insert(name.to_string(), value);
    }
    out
}
