//! The stack the import writes, and its text: a stack file with only the fields the Compose
//! project said something about (berth's defaults stay implicit), strings quoted, keys in a
//! fixed order, and a `#` comment above every field where the import made a choice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// The stack being built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stack {
    pub name: String,
    pub env: String,
    /// Comment lines at the top of the file.
    pub header: Vec<String>,
    pub services: BTreeMap<String, Service>,
}

/// One service being built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeSet<String>,
    pub ports: BTreeMap<String, u16>,
    pub replicas: Option<u32>,
    pub health: Option<Health>,
    pub route: Option<Route>,
    pub rollout: Option<(String, String)>,
    pub depends_on: BTreeSet<String>,
    pub stop_grace: Option<String>,
    pub volumes: Vec<String>,
    pub cpu: Option<String>,
    pub memory: Option<String>,
    pub restart: Option<&'static str>,
    /// Names of HTTP ports compose published on the host (candidates for the route; not written).
    pub published_http: Vec<String>,
    /// Comment lines per field (`"image"`, `"ports"`, … and `""` for the service itself).
    pub comments: BTreeMap<&'static str, Vec<String>>,
}

/// `health: { exec: […], interval, timeout, unhealthy }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub exec: Vec<String>,
    pub interval: String,
    pub timeout: String,
    pub unhealthy: u32,
}

/// `route: { host, path, port }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub host: String,
    pub path: String,
    pub port: String,
}

impl Service {
    /// Adds a comment line above `field`.
    pub fn comment(&mut self, field: &'static str, line: impl Into<String>) {
        let line = line.into();
        let lines = self.comments.entry(field).or_default();
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
}

/// A YAML double-quoted string (JSON's escapes are YAML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The stack file's text.
pub fn emit(stack: &Stack) -> String {
    let mut o = String::new();
    for line in &stack.header {
        let _ = writeln!(o, "# {line}");
    }
    let _ = writeln!(o, "stack: {}", stack.name);
    let _ = writeln!(o, "environments:");
    let _ = writeln!(
        o,
        "  # one environment with one region, `local` (what `berth up` runs); add regions for more"
    );
    let _ = writeln!(o, "  {}:", stack.env);
    let _ = writeln!(o, "    regions: [local]");
    let _ = writeln!(o, "services:");
    for (name, s) in &stack.services {
        service(&mut o, name, s);
    }
    o
}

fn service(o: &mut String, name: &str, s: &Service) {
    let c = |o: &mut String, field: &str| {
        for line in s.comments.get(field).into_iter().flatten() {
            let _ = writeln!(o, "    # {line}");
        }
    };
    for line in s.comments.get("").into_iter().flatten() {
        let _ = writeln!(o, "  # {line}");
    }
    let _ = writeln!(o, "  {name}:");
    c(o, "image");
    let _ = writeln!(o, "    image: {}", q(&s.image));
    if let Some(cmd) = &s.command {
        c(o, "command");
        let _ = writeln!(o, "    command: {}", list(cmd));
    }
    if !s.env.is_empty() {
        c(o, "env");
        let _ = writeln!(o, "    env:");
        for (k, v) in &s.env {
            let _ = writeln!(o, "      {k}: {}", q(v));
        }
    }
    if !s.secrets.is_empty() {
        c(o, "secrets");
        let names: Vec<String> = s.secrets.iter().cloned().collect();
        let _ = writeln!(o, "    secrets: [{}]", names.join(", "));
    }
    if !s.ports.is_empty() {
        c(o, "ports");
        let _ = writeln!(o, "    ports:");
        for (k, v) in &s.ports {
            let _ = writeln!(o, "      {k}: {v}");
        }
    }
    if let Some(n) = s.replicas {
        c(o, "replicas");
        let _ = writeln!(o, "    replicas: {n}");
    }
    if let Some(h) = &s.health {
        c(o, "health");
        let _ = writeln!(o, "    health:");
        let _ = writeln!(o, "      exec: {}", list(&h.exec));
        let _ = writeln!(o, "      interval: {}", h.interval);
        let _ = writeln!(o, "      timeout: {}", h.timeout);
        let _ = writeln!(o, "      unhealthy: {}", h.unhealthy);
    }
    if let Some(r) = &s.route {
        c(o, "route");
        let _ = writeln!(
            o,
            "    route: {{ host: {}, path: {}, port: {} }}",
            q(&r.host),
            q(&r.path),
            r.port
        );
    }
    if let Some((surge, unavailable)) = &s.rollout {
        c(o, "rollout");
        let _ = writeln!(
            o,
            "    rollout: {{ strategy: rolling, max_surge: {surge}, max_unavailable: {unavailable} }}"
        );
    }
    if !s.depends_on.is_empty() {
        c(o, "depends_on");
        let names: Vec<String> = s.depends_on.iter().cloned().collect();
        let _ = writeln!(o, "    depends_on: [{}]", names.join(", "));
    }
    if let Some(g) = &s.stop_grace {
        c(o, "stop_grace");
        let _ = writeln!(o, "    stop_grace: {g}");
    }
    if !s.volumes.is_empty() {
        c(o, "volumes");
        let _ = writeln!(o, "    volumes: {}", list(&s.volumes));
    }
    if s.cpu.is_some() || s.memory.is_some() {
        c(o, "resources");
        let mut parts = Vec::new();
        if let Some(cpu) = &s.cpu {
            parts.push(format!("cpu: {cpu}"));
        }
        if let Some(m) = &s.memory {
            parts.push(format!("memory: {m}"));
        }
        let _ = writeln!(o, "    resources: {{ {} }}", parts.join(", "));
    }
    if let Some(r) = s.restart {
        c(o, "restart");
        let _ = writeln!(o, "    restart: {r}");
    }
}
