//! One Compose service → one berth service: the dispatch over its keys, and the simple ones
//! (image, command, restart, volumes, stop_grace_period, the keys berth has no equivalent for).

use std::collections::BTreeMap;

use crate::out;
use crate::report::Report;
use crate::tree::{At, Entry, Kind, Value};
use crate::{deploy, env, ports, units, Options};

/// What the mapping of one service needs: its names, the import's options and variables, the
/// report, and the service being built.
pub struct Svc<'a> {
    /// The name in the Compose file.
    pub compose: &'a str,
    /// Where the service's name is written (messages about the service as a whole point here).
    pub key_at: At,
    /// The berth name (`[a-z][a-z0-9-]*`).
    pub name: String,
    /// Compose name → berth name, for `depends_on`.
    pub names: &'a BTreeMap<String, String>,
    pub options: &'a Options,
    pub vars: &'a crate::interp::Vars,
    pub read_env_file: &'a dyn Fn(&str) -> Result<String, String>,
    pub report: &'a mut Report,
    pub out: out::Service,
    /// Traefik labels, collected for the route once ports are known.
    pub traefik: Vec<Entry>,
}

impl Svc<'_> {
    /// Records a mapping `compose key → services.NAME.berth`.
    pub fn mapped(&mut self, at: At, compose: &str, berth: &str, note: &str) {
        let berth = if berth.is_empty() {
            format!("services.{}", self.name)
        } else {
            format!("services.{}.{berth}", self.name)
        };
        self.report.mapped(at, self.compose, compose, &berth, note);
    }

    /// A warning about `key` of this service.
    pub fn warn(&mut self, at: At, key: &str, what: &str) {
        self.report
            .warn(at, format!("services.{}.{key}: {what}", self.compose));
    }

    /// A note (a choice made), also written above `field` in the stack.
    pub fn note(&mut self, at: At, field: &'static str, what: &str) {
        self.out.comment(field, what.to_string());
        self.report
            .note(at, format!("services.{}: {what}", self.compose));
    }
}

/// What berth does instead, for the Compose keys it has no field for.
fn instead(key: &str) -> Option<&'static str> {
    Some(match key {
        "networks" => "berth has no container networks; services reach each other through the router (a `route`) or the ports berth publishes on the node. Not kept",
        "network_mode" => "berth runs every container on Docker's default network with its `ports` published on the node. Not kept",
        "privileged" | "cap_add" | "cap_drop" | "security_opt" | "devices" | "pid" | "ipc" | "userns_mode" | "cgroup_parent" | "ulimits" | "sysctls" => "berth runs containers with Docker's default privileges and capabilities and has no way to raise them. Not kept",
        "container_name" | "hostname" | "domainname" => "berth names each instance's container itself (several replicas cannot share a name). Not kept",
        "links" | "external_links" | "extra_hosts" | "dns" | "dns_search" | "dns_opt" | "mac_address" => "berth does not set container name resolution; services reach each other through the router (a `route`). Not kept",
        "expose" => "berth declares only `ports`, published on the node for the router and health checks; add the port under `ports` if something must reach it. Not kept",
        "logging" => "berth collects every instance's output itself (`berth logs SERVICE`). Not kept",
        "secrets" | "configs" => "berth passes secrets as environment variables, not files: declare the name in `secrets:` and set it with `berth secret set`. Not kept",
        "tmpfs" | "shm_size" => "berth mounts only bind `volumes`. Not kept",
        "user" | "working_dir" | "tty" | "stdin_open" | "init" | "platform" | "pull_policy" | "stop_signal" | "isolation" | "runtime" | "storage_opt" | "group_add" | "oom_kill_disable" | "oom_score_adj" | "mem_reservation" | "memswap_limit" | "mem_swappiness" | "cpu_shares" | "cpu_quota" | "cpu_period" | "cpuset" | "cpu_count" | "cpu_percent" | "blkio_config" | "read_only" | "annotations" | "attach" | "post_start" | "pre_stop" | "develop" | "volumes_from" | "credential_spec" | "gpus" | "use_api_socket" | "models" | "provider" => "berth has no equivalent; bake it into the image. Not kept",
        "profiles" => "berth imports every service whatever its profiles; remove the ones you do not want",
        "extends" => "`extends` is not followed; merge the files with several -f instead",
        _ => return None,
    })
}

/// The keys whose text the import writes into the stack as it is (`environment` and `env_file`
/// are not among them: their secret values go to `secrets:`).
const WRITTEN_AS_IS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "healthcheck",
    "ports",
    "volumes",
];

/// An error at every scalar of a key written into the stack as it is (see [`WRITTEN_AS_IS`],
/// and the `traefik.*` labels, whose rule becomes `route.host`) that interpolates a variable
/// whose name looks like a secret: its value would land in the stack file in clear. Only an
/// environment variable can be a berth secret, so the fix is to pass it through `environment`.
fn refuse_secrets_in_clear(svc: &mut Svc<'_>, f: &Entry) {
    let mut stack: Vec<(&Value, String)> = Vec::new();
    if WRITTEN_AS_IS.contains(&f.key.as_str()) {
        stack.push((&f.value, f.key.clone()));
    } else if f.key == "labels" {
        match &f.value.kind {
            Kind::Map(m) => stack.extend(
                m.iter()
                    .filter(|e| e.key.starts_with("traefik."))
                    .map(|e| (&e.value, "labels".to_string())),
            ),
            Kind::Seq(items) => stack.extend(
                items
                    .iter()
                    .filter(|v| v.str().is_some_and(|s| s.starts_with("traefik.")))
                    .map(|v| (v, "labels".to_string())),
            ),
            Kind::Str(_) => {}
        }
    }
    while let Some((v, key)) = stack.pop() {
        match &v.kind {
            Kind::Str(s) => {
                let mut secret: Vec<&str> = s
                    .vars
                    .iter()
                    .map(String::as_str)
                    .filter(|n| env::looks_secret(n))
                    .collect();
                secret.dedup();
                if let Some(first) = secret.first() {
                    let names = secret
                        .iter()
                        .map(|n| format!("${{{n}}}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let fix = if key == "labels" {
                        "a route's host is not secret: write it in the label".to_string()
                    } else {
                        format!("pass it to the container through `environment` (imported as a berth secret) and read it there (`sh -c '… $${first}'`)")
                    };
                    svc.report.error(
                        v.at,
                        format!(
                            "services.{}.{key}: interpolates {names}, whose name looks like a secret: its value would be written in the stack file in clear; {fix}",
                            svc.compose
                        ),
                    );
                }
            }
            Kind::Seq(items) => stack.extend(items.iter().rev().map(|i| (i, key.clone()))),
            Kind::Map(m) => stack.extend(m.iter().rev().map(|e| (&e.value, key.clone()))),
        }
    }
}

/// Maps one service's keys into `svc.out`.
pub fn map(svc: &mut Svc<'_>, value: &Value) {
    let Kind::Map(fields) = &value.kind else {
        svc.report.error(
            value.at,
            format!("services.{}: a service must be a mapping", svc.compose),
        );
        return;
    };
    let mut build: Option<At> = None;
    let mut image: Option<(At, String)> = None;
    let mut command: Option<(At, Vec<String>)> = None;
    let mut entrypoint: Option<(At, Vec<String>)> = None;
    let mut env_files: Option<&Value> = None;
    let mut environment: Option<&Value> = None;
    for f in fields {
        let at = f.key_at;
        refuse_secrets_in_clear(svc, f);
        match f.key.as_str() {
            "image" => match f.value.str() {
                Some(s) => image = Some((f.value.at, s.to_string())),
                None => svc.report.error(
                    f.value.at,
                    format!("services.{}.image: expected a string", svc.compose),
                ),
            },
            "build" => build = Some(at),
            "command" => command = words(svc, &f.value, "command").map(|w| (at, w)),
            "entrypoint" => entrypoint = words(svc, &f.value, "entrypoint").map(|w| (at, w)),
            "environment" => environment = Some(&f.value),
            "env_file" => env_files = Some(&f.value),
            "ports" => ports::collect(svc, &f.value),
            "labels" => ports::labels(svc, &f.value),
            "healthcheck" => deploy::healthcheck(svc, &f.value),
            "depends_on" => depends_on(svc, &f.value),
            "deploy" => deploy::deploy(svc, &f.value),
            "restart" => restart(svc, at, &f.value),
            "volumes" => volumes(svc, &f.value),
            "stop_grace_period" => match f.value.str().map(units::duration) {
                Some(Ok(d)) => {
                    svc.out.stop_grace = Some(d.to_string());
                    svc.mapped(at, "stop_grace_period", "stop_grace", "");
                }
                Some(Err(e)) => svc.report.error(f.value.at, e),
                None => svc
                    .report
                    .error(f.value.at, "stop_grace_period: expected a duration"),
            },
            "scale" => match f.value.str().and_then(|s| s.parse::<u32>().ok()) {
                Some(n) => {
                    svc.out.replicas.get_or_insert(n);
                    svc.mapped(at, "scale", "replicas", "");
                }
                None => svc
                    .report
                    .error(f.value.at, "scale: expected a whole number"),
            },
            "mem_limit" => match f.value.str().map(units::memory) {
                Some(Ok(m)) => {
                    svc.out.memory.get_or_insert(m.to_string());
                    svc.mapped(at, "mem_limit", "resources.memory", "");
                }
                _ => svc
                    .report
                    .error(f.value.at, "mem_limit: expected a size like 512m"),
            },
            "cpus" => match f.value.str().map(units::cpu) {
                Some(Ok(c)) => {
                    svc.out.cpu.get_or_insert(c.to_string());
                    svc.mapped(at, "cpus", "resources.cpu", "");
                }
                _ => svc
                    .report
                    .error(f.value.at, "cpus: expected a number like 0.5"),
            },
            k if k.starts_with("x-") => {}
            k => match instead(k) {
                Some(what) => svc.warn(at, k, what),
                None => svc.warn(at, k, "not a Compose service key berth knows; not kept"),
            },
        }
    }
    env::map(svc, env_files, environment);
    ports::route(svc);
    choose_image(svc, build, image);
    match (entrypoint, command) {
        (Some((at, mut e)), c) => {
            if let Some((_, c)) = c {
                e.extend(c);
            }
            svc.out.command = Some(e);
            svc.mapped(
                at,
                "entrypoint",
                "command",
                "entrypoint followed by command",
            );
            svc.warn(at, "entrypoint", "berth overrides only the image's command (CMD), not its ENTRYPOINT: the entrypoint and command are written as `command`, which is right only if the image has no ENTRYPOINT of its own; otherwise rebuild the image with this entrypoint");
            svc.out.comment("command", "compose `entrypoint` + `command`: berth sets only the image's CMD (see the warning)");
        }
        (None, Some((at, c))) => {
            svc.out.command = Some(c);
            svc.mapped(at, "command", "command", "");
        }
        (None, None) => {}
    }
}

/// A `command`/`entrypoint`: a list, or a string split as a shell would.
fn words(svc: &mut Svc<'_>, v: &Value, key: &str) -> Option<Vec<String>> {
    match &v.kind {
        Kind::Str(_) if v.is_null() => None,
        Kind::Str(s) => match units::shell_words(&s.text) {
            Ok(w) => Some(w),
            Err(e) => {
                svc.report
                    .error(v.at, format!("services.{}.{key}: {e}", svc.compose));
                None
            }
        },
        Kind::Seq(items) => {
            let mut out = Vec::new();
            for i in items {
                match i.str() {
                    Some(s) => out.push(s.to_string()),
                    None => svc.report.error(
                        i.at,
                        format!("services.{}.{key}: expected strings", svc.compose),
                    ),
                }
            }
            Some(out)
        }
        Kind::Map(_) => {
            svc.report.error(
                v.at,
                format!(
                    "services.{}.{key}: expected a string or a list",
                    svc.compose
                ),
            );
            None
        }
    }
}

/// `image`, `build` and `--image SERVICE=REF`.
fn choose_image(svc: &mut Svc<'_>, build: Option<At>, image: Option<(At, String)>) {
    let given = svc
        .options
        .images
        .get(svc.compose)
        .or_else(|| svc.options.images.get(&svc.name))
        .cloned();
    let chosen = match (given, build, image) {
        (Some(r), Some(at), _) => {
            svc.mapped(at, "build", "image", "--image");
            svc.out.comment(
                "image",
                format!(
                    "compose builds this image; --image {}={r} names the pushed build",
                    svc.compose
                ),
            );
            Some((at, r))
        }
        (Some(r), None, Some((at, _))) => {
            svc.mapped(at, "image", "image", "--image");
            svc.out.comment(
                "image",
                format!(
                    "--image {}={r} replaces the compose file's image",
                    svc.compose
                ),
            );
            Some((at, r))
        }
        (Some(r), None, None) => Some((svc.key_at, r)),
        (None, Some(at), img) => {
            let hint = img
                .map(|(_, i)| format!(" (`{i}` once it is pushed)"))
                .unwrap_or_default();
            svc.report.error(at, format!("services.{}.build: berth does not build images; build and push it, then pass --image {}=REGISTRY/NAME:TAG{hint}", svc.compose, svc.compose));
            None
        }
        (None, None, Some((at, i))) => {
            svc.mapped(at, "image", "image", "");
            Some((at, i))
        }
        (None, None, None) => {
            svc.report.error(
                svc.key_at,
                format!(
                    "services.{}: no `image` (berth runs images; pass --image {}=REF)",
                    svc.compose, svc.compose
                ),
            );
            None
        }
    };
    let Some((at, r)) = chosen else { return };
    let last = r.rsplit('/').next().unwrap_or(&r);
    let repository = last.split(['@', ':']).next().unwrap_or(last);
    if repository == "traefik" {
        svc.warn(at, "image", "this service runs Traefik, whose job berth's router does (the Traefik labels of the other services became their `route`): it is imported as written; remove it from the stack unless it serves something else");
    }
    if !last.contains(':') && !r.contains('@') {
        svc.report.error(at, format!("services.{}: image `{r}` has no tag, which means `latest`: berth refuses it (it names a different image tomorrow); pin a version in the compose file or pass --image {}={r}:VERSION", svc.compose, svc.compose));
    } else if last.ends_with(":latest") {
        svc.report.error(at, format!("services.{}: image `{r}`: berth refuses the tag `latest` (it names a different image tomorrow); pin a version or pass --image {}=REF", svc.compose, svc.compose));
    }
    svc.out.image = r;
}

/// `depends_on`, as a list (already a mapping here, see `merge::normalise`) or with conditions.
fn depends_on(svc: &mut Svc<'_>, v: &Value) {
    for e in v.entries() {
        let Some(target) = svc.names.get(&e.key).cloned() else {
            svc.report.error(
                e.key_at,
                format!(
                    "services.{}.depends_on: no service `{}`",
                    svc.compose, e.key
                ),
            );
            continue;
        };
        let condition = e
            .value
            .get("condition")
            .and_then(Value::str)
            .unwrap_or("service_started");
        match condition {
            "service_healthy" => svc.mapped(e.key_at, "depends_on", "depends_on", ""),
            "service_started" => {
                svc.mapped(
                    e.key_at,
                    "depends_on",
                    "depends_on",
                    "berth waits until healthy",
                );
                svc.out.comment("depends_on", format!("{}: berth starts this service once `{target}` is healthy (stricter than compose's service_started)", e.key));
            }
            "service_completed_successfully" => {
                svc.warn(e.key_at, "depends_on", &format!("{}: berth has no one-shot jobs to wait for, and a service that exits never becomes healthy: the dependency is not kept (run `{target}` as a step before deploying)", e.key));
                continue;
            }
            other => svc.report.error(
                e.key_at,
                format!(
                    "services.{}.depends_on.{}: unknown condition `{other}`",
                    svc.compose, e.key
                ),
            ),
        }
        for x in e.value.entries() {
            match x.key.as_str() {
                "condition" => {}
                "required" if x.value.str() == Some("false") => svc.warn(
                    x.key_at,
                    "depends_on",
                    "berth has no optional dependencies: the dependency is kept",
                ),
                "required" => {}
                "restart" => svc.warn(
                    x.key_at,
                    "depends_on",
                    "berth does not restart a service when its dependency restarts. Not kept",
                ),
                k => svc.warn(
                    x.key_at,
                    "depends_on",
                    &format!("`{k}` is not a depends_on key berth knows; not kept"),
                ),
            }
        }
        svc.out.depends_on.insert(target);
    }
}

/// `restart`: `no` → never, `always`, `on-failure[:N]`, `unless-stopped` → always.
fn restart(svc: &mut Svc<'_>, at: At, v: &Value) {
    let s = v.str().unwrap_or_default();
    let (policy, note) = match s.split_once(':').map_or(s, |(p, _)| p) {
        "no" | "false" => ("never", ""),
        "always" => ("always", ""),
        "unless-stopped" => (
            "always",
            "compose `unless-stopped`: berth restarts until the service is removed from the stack",
        ),
        "on-failure" => ("on-failure", ""),
        _ => {
            svc.report.error(
                v.at,
                format!(
                    "services.{}.restart: `{s}` is not no, always, on-failure or unless-stopped",
                    svc.compose
                ),
            );
            return;
        }
    };
    if s.contains(':') {
        svc.warn(at, "restart", "berth has no restart count limit: it restarts on failure with a backoff. The count is not kept");
    }
    if !note.is_empty() {
        svc.out.comment("restart", note);
    }
    svc.out.restart = Some(policy);
    svc.mapped(at, "restart", "restart", note);
}

/// Bind `volumes` (short and long syntax); named volumes and tmpfs are warnings.
fn volumes(svc: &mut Svc<'_>, v: &Value) {
    let Kind::Seq(items) = &v.kind else {
        svc.report.error(
            v.at,
            format!("services.{}.volumes: expected a list", svc.compose),
        );
        return;
    };
    for item in items {
        let (source, target, read_only, kind) = match &item.kind {
            Kind::Str(s) => {
                let parts: Vec<&str> = s.text.split(':').collect();
                let (src, dst, mode) = match parts.as_slice() {
                    [dst] => ("", *dst, ""),
                    [src, dst] => (*src, *dst, ""),
                    [src, dst, mode] => (*src, *dst, *mode),
                    _ => {
                        svc.report.error(
                            item.at,
                            format!(
                                "services.{}.volumes: `{}` is not SOURCE:TARGET[:MODE]",
                                svc.compose, s.text
                            ),
                        );
                        continue;
                    }
                };
                let modes: Vec<&str> = mode.split(',').filter(|m| !m.is_empty()).collect();
                for m in &modes {
                    if !matches!(*m, "ro" | "rw") {
                        svc.warn(item.at, "volumes", &format!("mode `{m}` of `{}`: berth mounts read-write or `:ro` only. Not kept", s.text));
                    }
                }
                let kind = if src.is_empty() {
                    "anonymous"
                } else if src.starts_with(['/', '.', '~']) {
                    "bind"
                } else {
                    "volume"
                };
                (
                    src.to_string(),
                    dst.to_string(),
                    modes.contains(&"ro"),
                    kind,
                )
            }
            Kind::Map(_) => {
                let get = |k: &str| {
                    item.get(k)
                        .and_then(Value::str)
                        .unwrap_or_default()
                        .to_string()
                };
                let kind = match get("type").as_str() {
                    "bind" => "bind",
                    "tmpfs" => "tmpfs",
                    _ => "volume",
                };
                (
                    get("source"),
                    get("target"),
                    get("read_only") == "true",
                    kind,
                )
            }
            Kind::Seq(_) => {
                svc.report.error(
                    item.at,
                    format!(
                        "services.{}.volumes: expected a string or a mapping",
                        svc.compose
                    ),
                );
                continue;
            }
        };
        if kind != "bind" {
            let what = match kind {
                "tmpfs" => "a tmpfs mount: berth mounts only bind volumes. Not kept".to_string(),
                "anonymous" => format!("anonymous volume `{target}`: berth has no Docker volumes; the container's own filesystem is used (lost on replacement). Not kept"),
                _ => format!("named volume `{source}`: berth has no Docker volumes; mount a host directory instead (`/srv/{source}:{target}`) and pin the service to that node with placement constraints. Not kept"),
            };
            svc.warn(item.at, "volumes", &what);
            continue;
        }
        let Some(host) = host_path(&source, &svc.options.project_dir) else {
            let why = if source.starts_with('~') {
                "`~` is the home directory of whoever runs compose, which berth cannot know on a node"
            } else {
                "it cannot be made an absolute path without `..` (berth's rule for volumes)"
            };
            svc.warn(
                item.at,
                "volumes",
                &format!("bind source `{source}`: {why}; write an absolute path. Not kept"),
            );
            continue;
        };
        if !target.starts_with('/') {
            svc.report.error(
                item.at,
                format!(
                    "services.{}.volumes: target `{target}` is not an absolute path",
                    svc.compose
                ),
            );
            continue;
        }
        let spec = format!("{host}:{target}{}", if read_only { ":ro" } else { "" });
        if host != source {
            svc.out.comment(
                "volumes",
                format!("`{source}` is relative to the compose project: written as `{host}`"),
            );
        }
        svc.mapped(item.at, "volumes", "volumes", "");
        if !svc.out.volumes.contains(&spec) {
            svc.out.volumes.push(spec);
        }
    }
}

/// A bind source as the absolute path berth requires: relative to the project directory,
/// `.` and `..` resolved lexically. `~` is refused (the import does not read `$HOME`).
fn host_path(source: &str, project_dir: &str) -> Option<String> {
    if source.starts_with('~') {
        return None;
    }
    let joined = if source.starts_with('/') {
        source.to_string()
    } else {
        format!("{}/{source}", project_dir.trim_end_matches('/'))
    };
    if !joined.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(format!("/{}", parts.join("/")))
}
