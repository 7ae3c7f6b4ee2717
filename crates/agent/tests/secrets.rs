//! Secrets as environment variables: a process instance sees its secrets' values, which win
//! over the service's `env` and lose to berth's own variables; the values never reach
//! `instance.json`, so after an agent restart an instance that must start again waits for the
//! server to send them.

mod common;

use std::collections::BTreeMap;
use std::fs;

use berth_agent::process::instance_env;
use berth_agent::{ProcessDriver, Supervisor, SupervisorConfig};
use berth_api::{InstanceSpec, InstanceState};
use common::*;

const VALUE: &str = "s3cr3t-value-4f1e";

/// An instance that writes `$DB_PASSWORD` to `out` and only its length to its log.
fn secret_instance(id: &str, out: &std::path::Path) -> InstanceSpec {
    let mut spec = sh(
        id,
        &format!(
            "printf %s \"$DB_PASSWORD\" > '{}'; echo \"LEN=${{#DB_PASSWORD}} NODE=$BERTH_NODE\"; exec sleep 60",
            out.display()
        ),
    );
    spec.spec.secrets = vec!["DB_PASSWORD".into()];
    spec.spec
        .env
        .insert("DB_PASSWORD".into(), "from-env".into());
    spec.secret_env = BTreeMap::from([("DB_PASSWORD".to_string(), VALUE.to_string())]);
    spec
}

#[test]
fn secrets_come_after_env_and_before_berths_variables() {
    let mut spec = sh("x-1", "true");
    spec.spec
        .env
        .insert("DB_PASSWORD".into(), "from-env".into());
    spec.secret_env = BTreeMap::from([
        ("DB_PASSWORD".to_string(), VALUE.to_string()),
        ("BERTH_NODE".to_string(), "spoofed".to_string()),
    ]);
    let env = instance_env(&spec, &BTreeMap::new()).expect("env");
    assert_eq!(env["DB_PASSWORD"], VALUE);
    assert_eq!(env["BERTH_NODE"], "node-a");
}

#[tokio::test]
async fn a_process_sees_its_secret_which_never_touches_the_disk() {
    let dir = workload_dir();
    let outdir = tempfile::tempdir().expect("temp dir");
    let out = outdir.path().join("secret.out");
    let sup = Supervisor::start(SupervisorConfig::new(dir.path()), std::future::pending())
        .await
        .expect("supervisor");
    let mut rx = sup.statuses();
    let spec = secret_instance("sec-1", &out);
    sup.set_desired(vec![spec.clone()]);
    let s = statuses_where(&mut rx, "sec-1 healthy", |s| {
        s.get("sec-1")
            .is_some_and(|x| x.state == InstanceState::Healthy)
    })
    .await;
    let pid = s["sec-1"].pid.expect("a pid");
    let seen = eventually("the instance to write its secret", || {
        fs::read_to_string(&out).ok().filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(seen, VALUE);
    let driver = ProcessDriver::new(dir.path());
    let log = eventually("the length in the log", || {
        fs::read_to_string(driver.log_path("sec-1").ok()?)
            .ok()
            .filter(|l| l.contains("LEN="))
    })
    .await;
    assert!(log.contains(&format!("LEN={}", VALUE.len())), "{log}");
    let record = fs::read_to_string(driver.record_path("sec-1").expect("path")).expect("record");
    assert!(
        !record.contains(VALUE),
        "instance.json holds the value: {record}"
    );
    assert!(record.contains("DB_PASSWORD"), "the name is kept: {record}");

    // The agent goes away and the workload dies meanwhile: the new agent has no value to
    // start it with until the server sends one.
    sup.detach().await;
    kill9(pid);
    fs::remove_file(&out).expect("remove the output");
    let sup = Supervisor::start(SupervisorConfig::new(dir.path()), std::future::pending())
        .await
        .expect("second supervisor");
    let mut rx = sup.statuses();
    let s = statuses_where(&mut rx, "sec-1 waiting for its secrets", |s| {
        s.get("sec-1").is_some_and(|x| {
            x.state == InstanceState::Pending
                && x.message.as_deref().is_some_and(|m| m.contains("secrets"))
        })
    })
    .await;
    assert!(s["sec-1"].pid.is_none());
    assert!(!out.exists(), "started without its secret");
    // The server's desired set brings the value: it starts, with it.
    sup.set_desired(vec![spec]);
    statuses_where(&mut rx, "sec-1 healthy again", |s| {
        s.get("sec-1")
            .is_some_and(|x| x.state == InstanceState::Healthy)
    })
    .await;
    let seen = eventually("the restarted instance to write its secret", || {
        fs::read_to_string(&out).ok().filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(seen, VALUE);
    let record = fs::read_to_string(driver.record_path("sec-1").expect("path")).expect("record");
    assert!(!record.contains(VALUE), "{record}");
    sup.set_desired(vec![]);
    statuses_where(&mut rx, "sec-1 stopped", |s| {
        s.get("sec-1")
            .is_some_and(|x| x.state == InstanceState::Stopped)
    })
    .await;
    sup.detach().await;
}
