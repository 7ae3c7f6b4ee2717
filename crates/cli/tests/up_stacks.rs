//! Stacks other than the demo on `berth up` (issue 3): `berth logs` shows what instances print,
//! and `depends_on` starts a service only once what it depends on is healthy.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{cli, events, instances, service, status, wait_settled};
use common::up::BerthUp;
use common::{assert_exit, stdout, write_file};

/// Two instances that print a line naming themselves, then idle; no health check.
const CHATTY: &str = r#"stack: chatty
environments:
  local:
    regions: [local]
services:
  talker:
    process:
      command: [sh, -c, "echo hello-from-$BERTH_INSTANCE; exec sleep 1000"]
    replicas: 2
    stop_grace: 1s
"#;

#[test]
fn logs_prints_the_lines_of_every_instance() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "chatty.yaml", CHATTY);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    wait_settled(&up, "chatty", "talker", 2, Some(1));
    let ids: Vec<String> = status(&up)
        .and_then(|s| {
            service(&s, "chatty", "talker").map(|v| {
                instances(v)
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default();
    assert_eq!(ids.len(), 2, "two instances: {ids:?}");

    let agent_dir = up.data_dir().join("agent");
    let agent_dir = agent_dir.to_str().expect("UTF-8 temporary path");
    let mut last = String::new();
    let found = common::poll_until(Duration::from_secs(20), || {
        let out = cli(&up, &["logs", "talker", "--agent-dir", agent_dir]);
        assert_exit(&out, 0);
        last = stdout(&out);
        ids.iter().all(|id| {
            last.lines()
                .any(|l| l.ends_with(&format!(" | hello-from-{id}")))
        })
    });
    assert!(
        found,
        "berth logs talker should print `… | hello-from-ID` for {ids:?}; it printed:\n{last}"
    );
    // `STACK/SERVICE` names the same service.
    let out = cli(&up, &["logs", "chatty/talker", "--agent-dir", agent_dir]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    // A service that does not exist is an error, not silence.
    let out = cli(&up, &["logs", "nobody", "--agent-dir", agent_dir]);
    assert_exit(&out, 1);
}

/// `web` depends on `api`, whose health check needs two passes 300 ms apart.
const LAYERED: &str = r#"stack: layered
environments:
  local:
    regions: [local]
services:
  api:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    health: { http: /healthz, port: http, interval: 300ms, timeout: 300ms, healthy: 2 }
  web:
    process: { command: [berth, whoami] }
    ports: { http: 0 }
    replicas: 2
    health: { http: /healthz, port: http, interval: 300ms, timeout: 300ms, healthy: 1 }
    route: { host: layered.localhost, path: /, port: http }
    depends_on: [api]
"#;

#[test]
fn depends_on_creates_a_service_only_after_its_dependencies_are_healthy() {
    let up = BerthUp::start();
    let file = write_file(up.dir(), "layered.yaml", LAYERED);
    assert_exit(
        &cli(&up, &["deploy", "-f", &file, "--env", "local", "--wait"]),
        0,
    );
    wait_settled(&up, "layered", "api", 2, Some(1));
    wait_settled(&up, "layered", "web", 2, Some(1));

    // Per instance: the revision of its first event, and of its first `healthy` event.
    let mut first: BTreeMap<String, i64> = BTreeMap::new();
    let mut healthy: BTreeMap<String, i64> = BTreeMap::new();
    let all = events(&up, &["--since", "1"]);
    for e in all.iter().filter(|e| e["subject"] == "instance") {
        let id = e["key"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let rev = e["revision"].as_i64().expect("a revision");
        first.entry(id.to_string()).or_insert(rev);
        if e["summary"]
            .as_str()
            .is_some_and(|s| s.contains(": healthy "))
        {
            healthy.entry(id.to_string()).or_insert(rev);
        }
    }
    let of = |prefix: &str| -> Vec<String> {
        first
            .keys()
            .filter(|id| id.starts_with(prefix))
            .cloned()
            .collect()
    };
    let (apis, webs) = (of("layered-api-"), of("layered-web-"));
    assert_eq!(
        (apis.len(), webs.len()),
        (2, 2),
        "instances in the events: {first:?}"
    );
    let api_healthy = apis
        .iter()
        .map(|id| {
            *healthy
                .get(id)
                .unwrap_or_else(|| panic!("{id} never became healthy: {all:?}"))
        })
        .max()
        .expect("two api instances");
    let web_created = webs
        .iter()
        .map(|id| first[id])
        .min()
        .expect("two web instances");
    assert!(
        web_created > api_healthy,
        "web's first instance appeared at revision {web_created}, before both api instances were healthy (revision {api_healthy})"
    );
}
