//! `validate` on a generated 1,000-service stack with two environments, ten runs; prints the
//! median so it can be compared with the README's performance table.
//!
//! Run with `cargo bench -p berth-spec --bench validate_1000`.

#![expect(
    clippy::disallowed_methods,
    reason = "a benchmark: it measures wall-clock durations"
)]

use std::fmt::Write as _;
use std::time::Instant;

/// A realistic large stack: every service has env, ports, a health check, a route, resources,
/// placement, a templated replica count, and up to three dependencies on earlier services.
fn stack(services: usize) -> String {
    let mut s = String::from(
        "stack: big\nhistory: 10\nvalues:\n  replicas: 2\n  version: \"1.0\"\n  debug: false\n\
         environments:\n  staging:\n    regions: [local]\n    values: { replicas: 1, debug: true }\n  \
         production:\n    regions: [eu-west, us-east]\n    approval: true\n    max_capacity_drop: 25%\n    \
         values: { version: \"1.1\" }\nservices:\n",
    );
    for i in 0..services {
        let _ = writeln!(s, "  svc-{i}:");
        if i % 2 == 0 {
            let _ = writeln!(s, "    process: {{ command: [berth, whoami] }}");
        } else {
            let _ = writeln!(s, "    image: registry.example/svc-{i}:git-{i:07x}");
            let _ = writeln!(s, "    command: [/app/run, --port, \"8080\"]");
            let _ = writeln!(s, "    volumes: [\"/var/log/svc-{i}:/var/log:ro\"]");
        }
        let _ = writeln!(
            s,
            "    env: {{ VERSION: \"${{values.version}}\", DEBUG: \"${{values.debug}}\", NAME: svc-{i}, REGION: \"${{region}}\" }}"
        );
        let _ = writeln!(s, "    secrets: [DB_PASSWORD]");
        let _ = writeln!(s, "    ports: {{ http: 0, admin: {} }}", 10_000 + i);
        let _ = writeln!(s, "    replicas: ${{values.replicas}}");
        let _ = writeln!(
            s,
            "    health: {{ http: /healthz, port: http, interval: 1s, timeout: 500ms }}"
        );
        let _ = writeln!(s, "    route: {{ host: svc-{i}.example.com, port: http }}");
        let _ = writeln!(
            s,
            "    rollout: {{ strategy: rolling, max_surge: 25%, max_unavailable: 0 }}"
        );
        let deps: Vec<String> = (1..=3)
            .filter(|d| i >= *d * 7)
            .map(|d| format!("svc-{}", i - d * 7))
            .collect();
        let _ = writeln!(s, "    depends_on: [{}]", deps.join(", "));
        let _ = writeln!(s, "    resources: {{ cpu: 250m, memory: 128Mi }}");
        let _ = writeln!(
            s,
            "    placement: {{ spread: [zone], constraints: [\"region == ${{region}}\"] }}"
        );
    }
    s
}

fn main() {
    let source = stack(1000);
    berth_spec::validate(source.as_bytes()).expect("the generated stack is valid");
    let mut times: Vec<f64> = (0..10)
        .map(|_| {
            let t = Instant::now();
            let r = berth_spec::validate(std::hint::black_box(source.as_bytes()));
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(r.is_ok());
            ms
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let median = (times[4] + times[5]) / 2.0;
    println!("validate 1000-service stack: median {median:.1} ms (goal < 200 ms)");
}
