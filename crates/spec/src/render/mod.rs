//! Source stack + environment + `--set` → [`Stack`], and the checks `validate` runs.
//!
//! Rendering one environment: merge its overlay over `values`, write the overrides into the
//! services' trees, decode every service with those values in scope, then check the graph.
//! [`validate_all`] renders the defaults and every environment so that problems that only an
//! overlay causes are found too.

pub mod overrides;
pub mod yaml_out;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use self::overrides::Override;
use crate::decode::fields::Ctx;
use crate::decode::names::did_you_mean;
use crate::decode::{graph, service, Source, SourceEnv};
use crate::diag::Diagnostic;
use crate::model::{Environment, Stack};

/// Renders the services of `src` with `env`'s values (the defaults for `None`) and `overrides`.
/// Returns the stack when neither the source nor this rendering has a problem.
pub fn render_env(
    src: &Source,
    env: Option<&SourceEnv>,
    overrides: &[Override],
) -> (Option<Stack>, Vec<Diagnostic>) {
    let values = src.values_for(env);
    let mut ctx = Ctx::with_values(&values);
    let mut decoded = Vec::with_capacity(src.services.len());
    for s in &src.services {
        let mine: Vec<(usize, &Override)> = overrides
            .iter()
            .enumerate()
            .filter(|(_, o)| o.service == s.name)
            .collect();
        let node = if mine.is_empty() {
            Cow::Borrowed(s.node)
        } else {
            let mut n = s.node.clone();
            for (i, o) in mine {
                overrides::apply(&mut n, &o.path, o.value.clone(), overrides::marker(i));
            }
            Cow::Owned(n)
        };
        decoded.push(service::service(&mut ctx, &s.name, s.pos, &node));
    }
    let nodes: Vec<graph::Node> = src
        .services
        .iter()
        .zip(&decoded)
        .map(|(s, d)| graph::Node {
            name: &s.name,
            deps: &d.deps,
            route: match (&d.service.route, d.route_at) {
                (Some(r), Some(at)) => Some((r.host.as_str(), r.path.as_str(), at)),
                _ => None,
            },
            split: d.split_at.as_ref().map(|(name, at)| (name.as_str(), *at)),
            route_port: d.service.route.as_ref().map(|r| r.port.as_str()),
            ports: d.service.ports.keys().map(String::as_str).collect(),
        })
        .collect();
    let mut diags = ctx.diags;
    diags.extend(graph::check(&nodes));
    let diags: Vec<Diagnostic> = diags
        .into_iter()
        .map(|d| overrides::attribute(d, overrides))
        .collect();
    if !diags.is_empty() || !src.diags.is_empty() {
        return (None, diags);
    }
    let (name, environment) = match env {
        Some(e) => (e.name.clone(), e.env.clone()),
        None => (
            String::new(),
            Environment {
                regions: Vec::new(),
                approval: 0,
                approval_timeout: crate::model::DEFAULT_APPROVAL_TIMEOUT,
                max_capacity_drop: crate::model::DEFAULT_MAX_CAPACITY_DROP,
                waves: None,
            },
        ),
    };
    let stack = Stack {
        stack: src.stack.clone(),
        history: src.history,
        environments: BTreeMap::from([(name, environment)]),
        services: src
            .services
            .iter()
            .zip(decoded)
            .map(|(s, d)| (s.name.clone(), d.service))
            .collect(),
    };
    (Some(stack), diags)
}

/// Renders one named environment with command-line overrides.
pub fn render_named(
    src: &Source,
    environment: &str,
    raw_overrides: &[String],
) -> Result<Stack, Vec<Diagnostic>> {
    let mut diags = src.diags.clone();
    let mut parsed = Vec::with_capacity(raw_overrides.len());
    for (i, raw) in raw_overrides.iter().enumerate() {
        match overrides::parse(i, raw) {
            Ok(o) => {
                if src.services.iter().any(|s| s.name == o.service) {
                    parsed.push(o);
                } else {
                    diags.push(Diagnostic::global(format!(
                        "--set {raw}: unknown service `{}`{}",
                        o.service,
                        did_you_mean(&o.service, src.services.iter().map(|s| s.name.as_str()))
                    )));
                }
            }
            Err(d) => diags.push(d),
        }
    }
    let Some(env) = src.environment(environment) else {
        diags.push(Diagnostic::global(format!(
            "unknown environment `{environment}`{}",
            did_you_mean(
                environment,
                src.environments.iter().map(|e| e.name.as_str())
            )
        )));
        return Err(diags);
    };
    let (stack, more) = render_env(src, Some(env), &parsed);
    diags.extend(more);
    match stack {
        Some(s) if diags.is_empty() => Ok(s),
        _ => Err(diags),
    }
}

/// Every problem in the file: the literal parts, the services with the default values, and the
/// services with each environment's overlay. A problem that only an overlay causes says which
/// environment; identical problems are reported once.
pub fn validate_all(src: &Source) -> Vec<Diagnostic> {
    let mut out = src.diags.clone();
    let (_, base) = render_env(src, None, &[]);
    let seen: HashSet<Diagnostic> = base.iter().cloned().collect();
    out.extend(base);
    for env in &src.environments {
        let (_, diags) = render_env(src, Some(env), &[]);
        out.extend(
            diags
                .into_iter()
                .filter(|d| !seen.contains(d))
                .map(|d| Diagnostic {
                    pos: d.pos,
                    message: format!("{} (in environment `{}`)", d.message, env.name),
                }),
        );
    }
    out
}
