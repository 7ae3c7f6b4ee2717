//! The benchmark's stack: process services whose replicas add up to the instances asked for,
//! each behind a route, with tiny resource requests so they fit on the simulated nodes.
//!
//! The first service, `web`, is the small one whose release the benchmark changes (1% of the
//! instances, at least one); it rolls out with `max_surge: 100%`, so the whole change is one
//! step and its new instances reach the routers together. The rest is split evenly over as
//! few `bulk-N` services as [`MAX_REPLICAS`] allows.

use berth_spec::model::MAX_REPLICAS;

/// The stack's name (and what `--confirm` types back).
pub const STACK: &str = "bench";
/// The environment deployed to.
pub const ENV: &str = "bench";
/// The service whose release changes.
pub const CHANGED: &str = "web";
/// The file name deploy errors would point at.
pub const FILE: &str = "bench-control-plane.yaml";

/// Services and their replicas, adding up to `instances` (at least 1): `web` first.
pub fn services(instances: usize) -> Vec<(String, u32)> {
    let instances = instances.max(1);
    let web = (instances / 100).clamp(1, MAX_REPLICAS as usize);
    let mut out = vec![(CHANGED.to_string(), web as u32)];
    let rest = instances - web;
    if rest > 0 {
        let count = rest.div_ceil(MAX_REPLICAS as usize);
        for i in 0..count {
            // Even shares; the first `rest % count` take one more.
            let n = rest / count + usize::from(i < rest % count);
            out.push((format!("bulk-{}", i + 1), n as u32));
        }
    }
    out
}

/// The stack file for `services`, with `version` in `web`'s environment (a new version is a
/// new release of `web` alone).
pub fn yaml(services: &[(String, u32)], version: u32) -> String {
    let mut out = format!(
        "# berth bench control-plane: simulated agents report every instance healthy at once.\n\
         stack: {STACK}\nenvironments:\n  {ENV}:\n    regions: [{ENV}]\nservices:\n"
    );
    for (name, replicas) in services {
        let v = if name == CHANGED { version } else { 1 };
        out.push_str(&format!(
            "  {name}:\n\
             \x20   process:\n\
             \x20     command: [berth, whoami]\n\
             \x20   env: {{ VERSION: \"{v}\" }}\n\
             \x20   ports: {{ http: 0 }}\n\
             \x20   replicas: {replicas}\n\
             \x20   resources: {{ cpu: 1m, memory: 1Mi }}\n\
             \x20   route: {{ host: {name}.bench.localhost, path: /, port: http }}\n\
             \x20   rollout: {{ strategy: rolling, max_surge: 100%, max_unavailable: 0 }}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(s: &[(String, u32)]) -> usize {
        s.iter().map(|(_, n)| *n as usize).sum()
    }

    #[test]
    fn replicas_add_up_and_respect_the_cap() {
        for m in [1, 2, 99, 100, 5_000, 10_000, 100_000, 1_000_000, 123_457] {
            let s = services(m);
            assert_eq!(total(&s), m, "{m}");
            assert_eq!(s[0].0, CHANGED);
            assert!(
                s.iter().all(|(_, n)| *n >= 1 && *n <= MAX_REPLICAS),
                "{m}: {s:?}"
            );
        }
        assert_eq!(services(5_000)[0].1, 50);
        assert_eq!(services(100_000).len(), 11);
    }

    #[test]
    fn the_file_validates_and_a_new_version_changes_web_only() {
        let s = services(5_000);
        let (y1, y2) = (yaml(&s, 1), yaml(&s, 2));
        berth_spec::validate(y1.as_bytes()).expect("valid");
        let v1 = berth_spec::render(y1.as_bytes(), ENV, &[]).expect("renders");
        let v2 = berth_spec::render(y2.as_bytes(), ENV, &[]).expect("renders");
        assert_eq!(v1.services.len(), s.len());
        for (name, _) in &s {
            assert_eq!(
                v1.services[name] == v2.services[name],
                name != CHANGED,
                "{name}"
            );
        }
    }
}
