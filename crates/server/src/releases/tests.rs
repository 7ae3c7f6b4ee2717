//! The service functions without HTTP: a real embedded store and a live view kept current by
//! its follower, as the server runs them.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_api::control::{Release, ReleaseStatus};
use berth_spec::Stack;
use berth_store::EmbeddedStore;

use super::*;
use crate::state::{self, Versioned};
use crate::{keys, pins, Clock, ServerConfig, Shared};

/// A server's shared state over a fresh store, its view followed until the guard drops.
struct Fixture {
    shared: Arc<Shared>,
    _stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path().join("state.redb"))
        .await
        .expect("store");
    let shared = Shared::new(ServerConfig {
        data_dir: dir.path().to_path_buf(),
        store: Arc::new(store),
        clock: Clock::system(),
        tls: None,
        secrets_key_file: None,
    })
    .await
    .expect("shared");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let follower = shared.clone();
    tokio::spawn(async move { follower.view.follow(follower.store.as_ref(), stopped).await });
    Fixture {
        shared,
        _stop: stop,
        _dir: dir,
    }
}

fn stack(version: u32, history: u32, secrets: &[&str]) -> Stack {
    let source = format!(
        r#"stack: shop
history: {history}
environments:
  staging:
    regions: [local]
services:
  web:
    process: {{command: [sleep, "1000"]}}
    env: {{ VERSION: "{version}" }}
    secrets: [{}]
    replicas: 1
"#,
        secrets.join(", ")
    );
    berth_spec::render(source.as_bytes(), "staging", &[]).expect("a valid stack")
}

fn admin() -> Start<'static> {
    Start {
        who: "admin",
        ..Start::default()
    }
}

async fn numbers(shared: &Shared) -> Vec<u64> {
    state::releases(shared.store.as_ref(), "shop", "staging")
        .await
        .expect("releases")
        .iter()
        .map(|r| r.value.number)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_stores_a_release_that_history_shows_at_once() {
    let f = fixture().await;
    let resp = deploy(&f.shared, "staging", &stack(1, 10, &[]), &admin())
        .await
        .expect("deploy");
    assert_eq!(resp.release, Some(1));
    assert!(resp.plan.text.contains("plan id: "), "{}", resp.plan.text);
    // Read-your-writes: the view has it when the deploy answers.
    let shown = history(&f.shared.view.read(), "shop", "staging").expect("history");
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].status, ReleaseStatus::RollingOut);
    // The same content again while it rolls out: nothing stored.
    let again = deploy(&f.shared, "staging", &stack(1, 10, &[]), &admin())
        .await
        .expect("deploy again");
    assert_eq!(again.release, None);
    assert!(
        again
            .unchanged
            .as_deref()
            .is_some_and(|u| u.contains("is already rolling out exactly this")),
        "{again:?}"
    );
    // A plan stores nothing.
    let planned = plan(&f.shared, "staging", &stack(2, 10, &[]))
        .await
        .expect("plan");
    assert_eq!(planned.release, None);
    assert_eq!(numbers(&f.shared).await, vec![1]);
    assert!(matches!(
        history(&f.shared.view.read(), "shop", "prod"),
        Err(ReleaseError::NoHistory { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_is_refused_for_a_moved_plan_and_for_a_secret_not_set() {
    let f = fixture().await;
    let how = Start {
        plan_id: Some("000000000000"),
        ..admin()
    };
    let err = deploy(&f.shared, "staging", &stack(1, 10, &[]), &how)
        .await
        .expect_err("a plan id that is not the plan");
    assert!(
        matches!(&err, ReleaseError::PlanMoved { given, .. } if given == "000000000000"),
        "{err:?}"
    );
    let err = deploy(
        &f.shared,
        "staging",
        &stack(1, 10, &["DB_PASSWORD"]),
        &admin(),
    )
    .await
    .expect_err("DB_PASSWORD is not set");
    let ReleaseError::MissingSecrets { missing, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(missing.len(), 1);
    assert!(
        err.to_string()
            .contains("run `berth secret set shop DB_PASSWORD`"),
        "{err}"
    );
    assert!(numbers(&f.shared).await.is_empty(), "nothing was stored");
    // Set, it is recorded by version (never by value).
    crate::secrets::put(&f.shared, "shop", "DB_PASSWORD", "s3cret")
        .await
        .expect("set");
    deploy(
        &f.shared,
        "staging",
        &stack(1, 10, &["DB_PASSWORD"]),
        &admin(),
    )
    .await
    .expect("deploy");
    let r = f.shared.view.read().release("shop", "staging", 1).cloned();
    let r = r.expect("release 1");
    assert_eq!(r.value.secrets, BTreeMap::from([("DB_PASSWORD".into(), 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_a_release_with_its_pins() {
    let f = fixture().await;
    deploy(&f.shared, "staging", &stack(1, 2, &[]), &admin())
        .await
        .expect("deploy 1");
    let r1 = state::release(f.shared.store.as_ref(), "shop", "staging", 1)
        .await
        .expect("read")
        .expect("release 1");
    let pin = pins::Pin {
        stack: "shop".into(),
        env: "staging".into(),
        release: 1,
        service: "web".into(),
        image_id: "sha256:aa".into(),
    };
    assert!(pins::write(&f.shared, &pin, r1.mod_revision)
        .await
        .expect("pin"));
    for v in [2, 3] {
        deploy(&f.shared, "staging", &stack(v, 2, &[]), &admin())
            .await
            .expect("deploy");
    }
    assert_eq!(numbers(&f.shared).await, vec![2, 3]);
    let left = f
        .shared
        .store
        .range(&keys::release_pins("shop", "staging", 1))
        .await
        .expect("range");
    assert!(left.kvs.is_empty(), "release 1's pin went with it");
    assert!(f.shared.view.read().pins_of("shop", "staging", 1).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_leaves_the_release_record_alone_and_the_first_report_wins() {
    let f = fixture().await;
    deploy(&f.shared, "staging", &stack(1, 10, &[]), &admin())
        .await
        .expect("deploy");
    let key = keys::release("shop", "staging", 1);
    let before = f.shared.store.get(&key).await.expect("get").expect("kv");
    let pin = |id: &str| pins::Pin {
        stack: "shop".into(),
        env: "staging".into(),
        release: 1,
        service: "web".into(),
        image_id: id.into(),
    };
    assert!(
        pins::write(&f.shared, &pin("sha256:aa"), before.mod_revision)
            .await
            .expect("pin")
    );
    assert!(
        !pins::write(&f.shared, &pin("sha256:bb"), before.mod_revision)
            .await
            .expect("second pin")
    );
    let after = f.shared.store.get(&key).await.expect("get").expect("kv");
    assert_eq!(
        after.mod_revision, before.mod_revision,
        "the record is not rewritten"
    );
    assert_eq!(after.value, before.value);
    let read = state::release(f.shared.store.as_ref(), "shop", "staging", 1)
        .await
        .expect("read")
        .expect("release 1");
    assert_eq!(read.value.images["web"], "sha256:aa");
    let revision = f.shared.store.revision().await.expect("revision");
    f.shared.view.caught_up(revision).await;
    let view = f.shared.view.read();
    let seen = view.release("shop", "staging", 1).expect("in the view");
    assert_eq!(seen.value.images["web"], "sha256:aa");
    assert_eq!(seen.mod_revision, before.mod_revision);
}

fn release(
    number: u64,
    status: ReleaseStatus,
    reason: Option<&str>,
    version: u32,
) -> Versioned<Release> {
    Versioned {
        value: Release {
            number,
            stack: "shop".into(),
            env: "staging".into(),
            created_ms: 0,
            who: "admin".into(),
            status,
            summary: String::new(),
            plan_id: String::new(),
            rollback_of: None,
            reason: reason.map(str::to_string),
            vetoed: false,
            approved_by: Vec::new(),
            images: BTreeMap::new(),
            secrets: BTreeMap::new(),
            spec: stack(version, 10, &[]),
        },
        mod_revision: number as i64,
    }
}

#[test]
fn a_default_rollback_target_went_live() {
    use ReleaseStatus::*;
    let early = Some("replaced by release 3 before its rollout finished");
    let all = vec![
        release(1, Superseded, None, 1),
        release(2, Superseded, early, 2),
        release(3, Failed, Some("unhealthy"), 3),
        release(4, Live, None, 4),
    ];
    let current = Some(&all[3].value);
    let pick = |requested| rollback::target(&all, current, requested, "shop", "staging");
    assert_eq!(pick(None).expect("a target").number, 1);
    // By number, any retained release.
    assert_eq!(pick(Some(3)).expect("release 3").number, 3);
    assert!(matches!(
        pick(Some(9)),
        Err(ReleaseError::NotRetained { number: 9, .. })
    ));
    // None went live before the current one: refused, saying so.
    let none = vec![release(1, Superseded, early, 1), release(2, Live, None, 2)];
    let err = rollback::target(&none, Some(&none[1].value), None, "shop", "staging")
        .expect_err("nothing went live");
    assert!(
        err.to_string().contains("no earlier release went live"),
        "{err}"
    );
    // The same content as the current release is no rollback either.
    let same = vec![release(1, Superseded, None, 1), release(2, Live, None, 1)];
    assert!(rollback::target(&same, Some(&same[1].value), None, "shop", "staging").is_err());
}

#[test]
fn a_record_written_by_an_older_version_keeps_its_pins() {
    let mut old = release(1, ReleaseStatus::Live, None, 1).value;
    old.images.insert("web".into(), "sha256:old".into());
    // A pin key for the same service does not override the record's own id.
    let pins = BTreeMap::from([
        ("web".to_string(), "sha256:new".to_string()),
        ("api".to_string(), "sha256:api".to_string()),
    ]);
    let mut merged = old.clone();
    state::merge_pins(&mut merged, &pins);
    assert_eq!(merged.images["web"], "sha256:old");
    assert_eq!(merged.images["api"], "sha256:api");
    // Written back, the record holds only its own ids.
    state::record_images(&mut merged, &pins);
    assert_eq!(merged.images, old.images);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_written_by_an_older_version_reads_its_pins_from_the_record() {
    let f = fixture().await;
    let mut old = release(1, ReleaseStatus::Live, None, 1).value;
    old.images.insert("web".into(), "sha256:old".into());
    f.shared
        .store
        .put(&keys::release("shop", "staging", 1), state::encode(&old))
        .await
        .expect("put");
    let read = state::release(f.shared.store.as_ref(), "shop", "staging", 1)
        .await
        .expect("read")
        .expect("release 1");
    assert_eq!(read.value.images["web"], "sha256:old");
    let all = state::all_releases(f.shared.store.as_ref())
        .await
        .expect("all");
    assert_eq!(all[0].value.images["web"], "sha256:old");
    deploy::catch_up(&f.shared).await.expect("catch up");
    let shown = history(&f.shared.view.read(), "shop", "staging").expect("history");
    assert_eq!(shown[0].images["web"], "sha256:old");
    assert!(f.shared.view.read().pins_of("shop", "staging", 1).is_none());
}

/// In an `approval: 1` environment a rollback to a release that went live runs at once
/// (getting back to a known-good state stays one command); a rollback to one that never went
/// live waits for an approver like a deploy, and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_needs_no_approval_only_to_a_release_that_went_live() {
    let f = fixture().await;
    let gated = |version: u32| {
        let source = format!("stack: shop\nenvironments:\n  staging:\n    regions: [local]\n    approval: 1\nservices:\n  web:\n    process: {{command: [sleep, \"1000\"]}}\n    env: {{ VERSION: \"{version}\" }}\n    replicas: 1\n");
        berth_spec::render(source.as_bytes(), "staging", &[]).expect("a valid stack")
    };
    for (n, status, version) in [
        (1, ReleaseStatus::Superseded, 1),
        (2, ReleaseStatus::Failed, 2),
        (3, ReleaseStatus::Live, 3),
    ] {
        let mut r = release(n, status, None, version).value;
        r.spec = gated(version);
        if status == ReleaseStatus::Failed {
            r.reason = Some("unhealthy".into());
        }
        f.shared
            .store
            .put(&keys::release("shop", "staging", n), state::encode(&r))
            .await
            .expect("put");
    }
    let err = rollback(&f.shared, "shop", "staging", Some(2), "alice")
        .await
        .expect_err("release 2 never went live");
    assert!(
        matches!(&err, ReleaseError::Pending { view } if view.author == "alice" && view.rollback_of == Some(2)),
        "{err:?}"
    );
    assert_eq!(numbers(&f.shared).await, vec![1, 2, 3], "nothing stored");
    let done = rollback(&f.shared, "shop", "staging", Some(1), "alice")
        .await
        .expect("release 1 went live: no approval needed");
    assert_eq!(done.release, Some(4));
}
