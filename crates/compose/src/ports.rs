//! `ports` → named `ports`, Traefik labels, and the `route` of a service that serves HTTP.
//!
//! berth publishes a container port on a host port the agent picks, and its router serves HTTP
//! by host name: a Compose port published on the host becomes a named container port, and an
//! HTTP one (a Traefik rule, `app_protocol: http`, or a well-known HTTP port) gets a `route`.

use crate::out::Route;
use crate::service::Svc;
use crate::tree::{At, Kind, Value};

/// Container ports that are taken to speak HTTP when nothing says otherwise.
const HTTP_PORTS: &[u16] = &[80, 3000, 4000, 5000, 8000, 8008, 8080, 8081, 8888];

/// Names for well-known non-HTTP ports.
fn well_known(port: u16) -> Option<&'static str> {
    Some(match port {
        443 | 8443 => "https",
        5432 => "postgres",
        3306 => "mysql",
        6379 => "redis",
        27017 => "mongo",
        11211 => "memcached",
        5672 => "amqp",
        9200 => "elasticsearch",
        _ => return None,
    })
}

fn valid_port_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// One parsed Compose port.
struct Port {
    at: At,
    target: u16,
    published: Option<String>,
    name: Option<String>,
    http: bool,
}

/// Reads `ports` (short `[IP:][HOST:]CONTAINER[/PROTO]` and long syntax) into `svc.out.ports`.
pub fn collect(svc: &mut Svc<'_>, v: &Value) {
    let Kind::Seq(items) = &v.kind else {
        svc.report.error(
            v.at,
            format!("services.{}.ports: expected a list", svc.compose),
        );
        return;
    };
    for item in items {
        let Some(p) = parse(svc, item) else { continue };
        if svc.out.ports.values().any(|&t| t == p.target) {
            continue;
        }
        let name = p
            .name
            .clone()
            .filter(|n| valid_port_name(n))
            .or_else(|| (p.http && !svc.out.ports.contains_key("http")).then(|| "http".to_string()))
            .or_else(|| {
                well_known(p.target)
                    .filter(|n| !svc.out.ports.contains_key(*n))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| format!("p{}", p.target));
        let note = match &p.published {
            Some(h) => format!("compose published it on host port {h}; berth publishes it on a port the agent picks"),
            None => String::new(),
        };
        if let Some(h) = &p.published {
            svc.out.comment("ports", format!("{name}: compose published container port {} on host port {h}; berth publishes it on a loopback port the agent picks (the router and health checks find it)", p.target));
        }
        svc.mapped(p.at, "ports", &format!("ports.{name}"), &note);
        if p.http && p.published.is_some() {
            svc.out.published_http.push(name.clone());
        }
        svc.out.ports.insert(name, p.target);
    }
}

fn parse(svc: &mut Svc<'_>, item: &Value) -> Option<Port> {
    let bad = |svc: &mut Svc<'_>, what: String| {
        svc.report
            .error(item.at, format!("services.{}.ports: {what}", svc.compose));
    };
    let (target, published, protocol, name, app) = match &item.kind {
        Kind::Str(s) => {
            let (spec, proto) = s.text.split_once('/').unwrap_or((&s.text, "tcp"));
            let (host, target) = match spec.rsplit_once(':') {
                Some((h, t)) => (Some(h), t),
                None => (None, spec),
            };
            // `IP:HOST:` or `HOST:` or `IP::`: the published port is the last part of `host`.
            let published = host
                .map(|h| h.rsplit_once(':').map_or(h, |(_, p)| p).to_string())
                .filter(|p| !p.is_empty());
            (target.to_string(), published, proto.to_string(), None, None)
        }
        Kind::Map(_) => {
            let get = |k: &str| item.get(k).and_then(Value::str).map(str::to_string);
            (
                get("target").unwrap_or_default(),
                get("published"),
                get("protocol").unwrap_or_else(|| "tcp".to_string()),
                get("name"),
                get("app_protocol"),
            )
        }
        Kind::Seq(_) => {
            bad(svc, "expected a string or a mapping".to_string());
            return None;
        }
    };
    if protocol != "tcp" {
        svc.warn(
            item.at,
            "ports",
            &format!("{protocol} port {target}: berth publishes and routes TCP only. Not kept"),
        );
        return None;
    }
    if target.contains('-') {
        svc.warn(item.at, "ports", &format!("port range {target}: berth declares single named ports; list each one you need. Not kept"));
        return None;
    }
    let Ok(target) = target.parse::<u16>() else {
        bad(svc, format!("`{target}` is not a container port"));
        return None;
    };
    if target == 0 {
        bad(svc, "container port 0".to_string());
        return None;
    }
    let http = match app.as_deref() {
        Some(a) => a == "http",
        None => HTTP_PORTS.contains(&target),
    };
    Some(Port {
        at: item.at,
        target,
        published,
        name,
        http,
    })
}

/// Keeps the Traefik labels for [`route`]; every other label is a warning.
pub fn labels(svc: &mut Svc<'_>, v: &Value) {
    for e in v.entries() {
        if e.key.starts_with("traefik.") {
            svc.traefik.push(e.clone());
        } else {
            svc.warn(e.key_at, "labels", &format!("`{}`: berth labels its containers itself (stack, service, instance, release) and does not carry compose labels. Not kept", e.key));
        }
    }
}

/// ``Host(`a`)``, ``Host(`a`) && PathPrefix(`/p`)``: the first host and path prefix.
fn traefik_rule(rule: &str) -> (Option<String>, Option<String>, bool) {
    let arg = |func: &str| -> Option<String> {
        let i = rule.find(&format!("{func}("))?;
        let rest = &rule[i + func.len() + 1..];
        let start = rest.find('`')? + 1;
        let len = rest[start..].find('`')?;
        Some(rest[start..start + len].to_string())
    };
    let host = arg("Host");
    let path = arg("PathPrefix");
    let simple = rule.matches('`').count()
        == 2 * (host.is_some() as usize + path.is_some() as usize)
        && !rule.contains("||");
    (host, path, simple)
}

/// The route: from a Traefik router rule, else from a published HTTP port.
pub fn route(svc: &mut Svc<'_>) {
    let published_http = svc.out.published_http.clone();
    let mut host = None;
    let mut path = None;
    let mut lb_port: Option<(At, u16)> = None;
    let mut rule_at = None;
    let labels = std::mem::take(&mut svc.traefik);
    for e in &labels {
        let k = e.key.as_str();
        let val = e.value.str().unwrap_or_default();
        let parts: Vec<&str> = k.split('.').collect();
        match parts.as_slice() {
            ["traefik", "enable"] => svc.mapped(e.key_at, &format!("labels.{k}"), "route", ""),
            ["traefik", "http", "routers", _, "rule"] if host.is_none() => {
                let (h, p, simple) = traefik_rule(val);
                if h.is_none() {
                    svc.warn(e.key_at, "labels", &format!("Traefik rule `{val}` has no Host(`…`): berth routes by host name. Not kept"));
                    continue;
                }
                if !simple {
                    svc.warn(e.key_at, "labels", &format!("Traefik rule `{val}`: berth routes one host and one path prefix; only the first Host and PathPrefix are kept"));
                }
                svc.mapped(e.key_at, &format!("labels.{k}"), "route.host", "");
                host = h;
                path = p;
                rule_at = Some(e.key_at);
            }
            ["traefik", "http", "services", _, "loadbalancer", "server", "port"] => match val.parse::<u16>() {
                Ok(p) if p > 0 => lb_port = Some((e.key_at, p)),
                _ => svc.report.error(e.value.at, format!("services.{}.labels.{k}: `{val}` is not a port", svc.compose)),
            },
            ["traefik", "http", "routers", _, "entrypoints" | "service"] => {}
            ["traefik", "http", "routers", _, "tls", ..] => svc.warn(e.key_at, "labels", "TLS: berth's router terminates TLS with its own certificates (`berth router --tls-cert`). Not kept"),
            _ => svc.warn(e.key_at, "labels", &format!("`{k}`: berth's router has no equivalent of this Traefik setting. Not kept")),
        }
    }
    if let Some(host) = host {
        let at = rule_at.unwrap_or_default();
        let port = match lb_port {
            Some((pat, p)) => {
                svc.mapped(
                    pat,
                    "labels.traefik…loadbalancer.server.port",
                    "route.port",
                    "",
                );
                port_named(svc, p)
            }
            None if svc.out.ports.len() == 1 => svc.out.ports.keys().next().cloned(),
            None => svc
                .out
                .ports
                .iter()
                .find(|(_, p)| HTTP_PORTS.contains(p))
                .map(|(k, _)| k.clone()),
        };
        let Some(port) = port else {
            svc.warn(at, "labels", "a Traefik rule but no port to route to: add the container port under `ports` (or a loadbalancer.server.port label). No route");
            return;
        };
        svc.out.comment("route", "from the Traefik rule");
        svc.out.route = Some(Route {
            host,
            path: path.unwrap_or_else(|| "/".to_string()),
            port,
        });
        return;
    }
    let Some(port) = published_http.first().cloned() else {
        return;
    };
    let host = format!("{}.localhost", svc.name);
    svc.out.comment(
        "route",
        format!("compose published HTTP port `{port}` on the host; berth's router serves it by host name: `{host}` was chosen, change it to yours"),
    );
    if published_http.len() > 1 {
        svc.out.comment(
            "route",
            format!(
                "berth routes one port per service: `{port}`, not {}",
                published_http[1..].join(", ")
            ),
        );
    }
    svc.out.route = Some(Route {
        host,
        path: "/".to_string(),
        port,
    });
}

/// The name of container port `p`, declaring it as `http` (or `pN`) if `ports` lacks it.
fn port_named(svc: &mut Svc<'_>, p: u16) -> Option<String> {
    if let Some((k, _)) = svc.out.ports.iter().find(|(_, &v)| v == p) {
        return Some(k.clone());
    }
    let name = if svc.out.ports.contains_key("http") {
        format!("p{p}")
    } else {
        "http".to_string()
    };
    svc.out.comment(
        "ports",
        format!("{name}: the port Traefik's loadbalancer label names"),
    );
    svc.out.ports.insert(name.clone(), p);
    Some(name)
}
