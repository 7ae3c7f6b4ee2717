//! `healthcheck` → `health: exec`, and `deploy` (replicas, resource limits, update_config,
//! restart_policy) → `replicas`, `resources`, `rollout`, `restart`.

use crate::out::Health;
use crate::service::Svc;
use crate::tree::{Kind, Value};
use crate::units;

/// Compose's healthcheck defaults, written out so the stack checks as often as Compose did.
const DEFAULT_INTERVAL: &str = "30s";
const DEFAULT_TIMEOUT: &str = "30s";
const DEFAULT_RETRIES: u32 = 3;

/// `healthcheck: { test, interval, timeout, retries, start_period, disable }`.
pub fn healthcheck(svc: &mut Svc<'_>, v: &Value) {
    if v.get("disable").and_then(Value::str) == Some("true") {
        svc.note(v.at, "health", "compose disables the image's healthcheck: no berth health check (an instance is healthy once it runs)");
        return;
    }
    let Some(test) = v.get("test") else {
        svc.warn(v.at, "healthcheck", "no `test`: berth cannot use the image's own HEALTHCHECK; add an explicit test. No health check");
        return;
    };
    let exec: Vec<String> = match &test.kind {
        Kind::Str(s) => vec!["/bin/sh".into(), "-c".into(), s.text.clone()],
        Kind::Seq(items) => {
            let words: Vec<String> = items
                .iter()
                .filter_map(|i| i.str().map(str::to_string))
                .collect();
            match words.split_first() {
                Some((first, rest)) if first == "CMD" && !rest.is_empty() => rest.to_vec(),
                Some((first, rest)) if first == "CMD-SHELL" && !rest.is_empty() => {
                    vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
                }
                Some((first, _)) if first == "NONE" => {
                    svc.note(test.at, "health", "compose `test: [NONE]`: no berth health check (an instance is healthy once it runs)");
                    return;
                }
                _ => {
                    svc.report.error(test.at, format!("services.{}.healthcheck.test: expected [CMD, …], [CMD-SHELL, \"…\"], [NONE] or a string", svc.compose));
                    return;
                }
            }
        }
        Kind::Map(_) => {
            svc.report.error(
                test.at,
                format!(
                    "services.{}.healthcheck.test: expected a list or a string",
                    svc.compose
                ),
            );
            return;
        }
    };
    let mut dur = |key: &str, default: &str| -> String {
        match v.get(key).and_then(Value::str).map(units::duration) {
            Some(Ok(d)) => d.to_string(),
            Some(Err(e)) => {
                svc.report.error(
                    v.get(key).map(|x| x.at).unwrap_or(v.at),
                    format!("services.{}.healthcheck.{key}: {e}", svc.compose),
                );
                default.to_string()
            }
            None => default.to_string(),
        }
    };
    let interval = dur("interval", DEFAULT_INTERVAL);
    let timeout = dur("timeout", DEFAULT_TIMEOUT);
    let retries = match v.get("retries") {
        Some(r) => match r.str().and_then(|s| s.parse::<u32>().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                svc.report.error(
                    r.at,
                    format!(
                        "services.{}.healthcheck.retries: expected a whole number above 0",
                        svc.compose
                    ),
                );
                DEFAULT_RETRIES
            }
        },
        None => DEFAULT_RETRIES,
    };
    let mut defaults = Vec::new();
    for (k, d) in [
        ("interval", DEFAULT_INTERVAL),
        ("timeout", DEFAULT_TIMEOUT),
        ("retries", "3"),
    ] {
        if v.get(k).is_none() {
            defaults.push(format!("{k} {d}"));
        }
    }
    if !defaults.is_empty() {
        svc.out.comment(
            "health",
            format!(
                "compose's defaults where the healthcheck said nothing: {}",
                defaults.join(", ")
            ),
        );
    }
    svc.out.comment(
        "health",
        "compose `retries` → `unhealthy` (consecutive failures)",
    );
    for e in v.entries() {
        match e.key.as_str() {
            "test" => svc.mapped(e.key_at, "healthcheck.test", "health.exec", ""),
            "interval" => svc.mapped(e.key_at, "healthcheck.interval", "health.interval", ""),
            "timeout" => svc.mapped(e.key_at, "healthcheck.timeout", "health.timeout", ""),
            "retries" => svc.mapped(e.key_at, "healthcheck.retries", "health.unhealthy", ""),
            "start_period" | "start_interval" => svc.warn(e.key_at, &format!("healthcheck.{}", e.key), "berth has no start period: failures count from the start, and the rollout's progress_deadline (default 60s) bounds the time to become healthy. Not kept"),
            "disable" => {}
            k => svc.warn(e.key_at, &format!("healthcheck.{k}"), "not a healthcheck key berth knows; not kept"),
        }
    }
    svc.out.health = Some(Health {
        exec,
        interval,
        timeout,
        unhealthy: retries,
    });
}

/// `deploy: { replicas, resources, update_config, restart_policy, … }`.
pub fn deploy(svc: &mut Svc<'_>, v: &Value) {
    for e in v.entries() {
        let at = e.key_at;
        match e.key.as_str() {
            "replicas" => match e.value.str().and_then(|s| s.parse::<u32>().ok()) {
                Some(n) if n <= berth_spec::model::MAX_REPLICAS => {
                    svc.out.replicas = Some(n);
                    svc.mapped(at, "deploy.replicas", "replicas", "per region");
                }
                _ => svc.report.error(e.value.at, format!("services.{}.deploy.replicas: expected a whole number up to {}", svc.compose, berth_spec::model::MAX_REPLICAS)),
            },
            "mode" if e.value.str() == Some("replicated") => {}
            "mode" => svc.warn(at, "deploy.mode", "berth runs `replicas` instances per region, not one per node. Not kept"),
            "resources" => resources(svc, &e.value),
            "update_config" => update_config(svc, &e.value),
            "restart_policy" => restart_policy(svc, &e.value),
            "placement" => svc.warn(at, "deploy.placement", "berth's placement is `placement: { constraints: [\"label == value\"], spread: [label] }` on node labels; write it by hand. Not kept"),
            "rollback_config" => svc.warn(at, "deploy.rollback_config", "berth rolls a failed rollout back with the same rollout settings. Not kept"),
            k => svc.warn(at, &format!("deploy.{k}"), "berth has no equivalent. Not kept"),
        }
    }
}

fn resources(svc: &mut Svc<'_>, v: &Value) {
    for e in v.entries() {
        match e.key.as_str() {
            "limits" => {
                for l in e.value.entries() {
                    let s = l.value.str().unwrap_or_default();
                    match l.key.as_str() {
                        "cpus" => match units::cpu(s) {
                            Ok(c) => {
                                svc.out.cpu = Some(c.to_string());
                                svc.mapped(l.key_at, "deploy.resources.limits.cpus", "resources.cpu", "");
                            }
                            Err(err) => svc.report.error(l.value.at, format!("services.{}.deploy.resources.limits.cpus: {err}", svc.compose)),
                        },
                        "memory" => match units::memory(s) {
                            Ok(m) => {
                                svc.out.memory = Some(m.to_string());
                                svc.mapped(l.key_at, "deploy.resources.limits.memory", "resources.memory", "");
                            }
                            Err(err) => svc.report.error(l.value.at, format!("services.{}.deploy.resources.limits.memory: {err}", svc.compose)),
                        },
                        k => svc.warn(l.key_at, &format!("deploy.resources.limits.{k}"), "berth limits CPU and memory only. Not kept"),
                    }
                }
                svc.out.comment("resources", "compose limits: berth reserves these on the node and limits the container to them");
            }
            "reservations" => svc.warn(e.key_at, "deploy.resources.reservations", "berth reserves what it limits (`resources` are both): the limits are kept, the reservations not"),
            k => svc.warn(e.key_at, &format!("deploy.resources.{k}"), "berth has no equivalent. Not kept"),
        }
    }
}

fn update_config(svc: &mut Svc<'_>, v: &Value) {
    let parallelism = match v.get("parallelism") {
        None => 1,
        Some(p) => match p.str().and_then(|s| s.parse::<u32>().ok()) {
            Some(n) if n <= berth_spec::model::MAX_REPLICAS => n,
            _ => {
                svc.report.error(
                    p.at,
                    format!(
                        "services.{}.deploy.update_config.parallelism: expected a whole number",
                        svc.compose
                    ),
                );
                1
            }
        },
    };
    let amount = if parallelism == 0 {
        "100%".to_string()
    } else {
        parallelism.to_string()
    };
    let order = v.get("order").and_then(Value::str).unwrap_or("stop-first");
    let rollout = match order {
        "start-first" => (amount.clone(), "0".to_string()),
        "stop-first" => ("0".to_string(), amount.clone()),
        other => {
            svc.report.error(v.get("order").map(|o| o.at).unwrap_or(v.at), format!("services.{}.deploy.update_config.order: `{other}` is not start-first or stop-first", svc.compose));
            return;
        }
    };
    svc.out.comment("rollout", format!("compose update_config: parallelism {parallelism}, order {order} → max_surge {}, max_unavailable {}", rollout.0, rollout.1));
    svc.out.rollout = Some(rollout);
    for e in v.entries() {
        match e.key.as_str() {
            "parallelism" => svc.mapped(e.key_at, "deploy.update_config.parallelism", if order == "start-first" { "rollout.max_surge" } else { "rollout.max_unavailable" }, ""),
            "order" => svc.mapped(e.key_at, "deploy.update_config.order", "rollout", ""),
            "failure_action" => match e.value.str() {
                Some("rollback") => svc.mapped(e.key_at, "deploy.update_config.failure_action", "rollout", "berth always rolls a failed rollout back"),
                _ => svc.warn(e.key_at, "deploy.update_config.failure_action", "berth always rolls a failed rollout back (it neither pauses nor continues). Not kept"),
            },
            "monitor" => svc.warn(e.key_at, "deploy.update_config.monitor", "berth counts a new instance once it is healthy; the rollout's progress_deadline (default 60s) bounds a stuck rollout. Not kept"),
            k => svc.warn(e.key_at, &format!("deploy.update_config.{k}"), "berth has no equivalent (it moves on as soon as new instances are healthy). Not kept"),
        }
    }
}

fn restart_policy(svc: &mut Svc<'_>, v: &Value) {
    for e in v.entries() {
        match (e.key.as_str(), e.value.str()) {
            ("condition", Some(c)) => {
                let policy = match c {
                    "none" => "never",
                    "on-failure" => "on-failure",
                    "any" => "always",
                    other => {
                        svc.report.error(e.value.at, format!("services.{}.deploy.restart_policy.condition: `{other}` is not none, on-failure or any", svc.compose));
                        continue;
                    }
                };
                svc.out.restart = Some(policy);
                svc.mapped(e.key_at, "deploy.restart_policy.condition", "restart", "");
            }
            (k, _) => svc.warn(
                e.key_at,
                &format!("deploy.restart_policy.{k}"),
                "berth restarts with its own backoff and no attempt limit. Not kept",
            ),
        }
    }
}
