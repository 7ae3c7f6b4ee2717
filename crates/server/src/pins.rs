//! Image pinning: the image id agents report for an instance becomes the id its release runs
//! for that service, so a rollback (and every new instance) runs exactly the same bytes, even
//! if the tag moved or no registry is reachable.
//!
//! A pin is its own key (`/pins/STACK/ENV/NNNNNNNNNN/SERVICE`, see [`crate::keys`]), created
//! once (the first report wins) and never rewritten: the release record is written by its
//! deploy and afterwards only its status changes, so a heartbeat never races the controller's
//! status writes. Readers see pins merged into `Release.images` ([`crate::state::release`],
//! [`crate::view::View::release`]).

use std::collections::BTreeMap;

use berth_api::InstanceStatus;
use berth_store::{Compare, Op, Txn};

use crate::state::{encode, StateError};
use crate::view::View;
use crate::{keys, Shared};

/// One pin to create: which release and service, and the image id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub stack: String,
    pub env: String,
    pub release: u64,
    pub service: String,
    pub image_id: String,
}

/// The pins `statuses` (one node's heartbeat) bring that `view` does not hold yet: for each
/// instance of an image service on `node` that reports an image id, its own release and the
/// rollout's target when the instance carries over unchanged into it, for each service with
/// no id yet. The first report of a (release, service) in `statuses` wins. Pure: the caller
/// writes them with [`write`].
pub fn wanted(view: &View, node: &str, statuses: &[InstanceStatus]) -> Vec<(Pin, i64)> {
    // (stack, env, release, service) → (image id, the release's mod_revision)
    let mut wanted: BTreeMap<(String, String, u64, String), (String, i64)> = BTreeMap::new();
    for status in statuses {
        let (Some(id), Some(rec)) = (&status.image_id, view.instance(&status.id)) else {
            continue;
        };
        let v = &rec.value;
        if v.spec.node != node || v.spec.spec.image.is_none() {
            continue;
        }
        let mut numbers = vec![v.spec.release];
        if let Some(r) = view.rollout(&v.spec.stack, &v.env) {
            if r.value.to != v.spec.release {
                numbers.push(r.value.to);
            }
        }
        for number in numbers {
            let Some(release) = view.release(&v.spec.stack, &v.env, number) else {
                continue;
            };
            if release.value.images.contains_key(&v.spec.service) {
                continue;
            }
            // The instance must run exactly what the release says for its service: its own
            // release always does; the rollout's target only if the spec carried over.
            let same = release
                .value
                .spec
                .service_for_region(&v.spec.service, &rec.value.region)
                .is_some_and(|s| s == v.spec.spec);
            if same {
                wanted
                    .entry((
                        v.spec.stack.clone(),
                        v.env.clone(),
                        number,
                        v.spec.service.clone(),
                    ))
                    .or_insert((id.clone(), release.mod_revision));
            }
        }
    }
    wanted
        .into_iter()
        .map(|((stack, env, release, service), (image_id, rev))| {
            (
                Pin {
                    stack,
                    env,
                    release,
                    service,
                    image_id,
                },
                rev,
            )
        })
        .collect()
}

/// Pins the image ids a node's heartbeat reports (see [`wanted`]), reading the live view.
/// Each pin is created only if absent, and only while its release is still the one read
/// (compared on the release's `mod_revision`, so retention deleting it meanwhile leaves no
/// orphan pin). A pin that loses a race is simply tried again on the next heartbeat.
pub async fn pin_images(
    shared: &Shared,
    node: &str,
    statuses: &[InstanceStatus],
) -> Result<(), StateError> {
    if statuses.iter().all(|s| s.image_id.is_none()) {
        return Ok(());
    }
    let pins = wanted(&shared.view.read(), node, statuses);
    for (pin, release_rev) in pins {
        if write(shared, &pin, release_rev).await? {
            tracing::info!(stack = %pin.stack, env = %pin.env, release = pin.release, service = %pin.service, image = %pin.image_id, "pinned image id");
        }
    }
    Ok(())
}

/// Creates one pin if it is absent and its release unchanged since `release_rev`; true if
/// it was created.
pub async fn write(shared: &Shared, pin: &Pin, release_rev: i64) -> Result<bool, StateError> {
    let key = keys::pin(&pin.stack, &pin.env, pin.release, &pin.service);
    let resp = shared
        .store
        .txn(Txn {
            compares: vec![
                Compare::absent(&key),
                Compare::mod_revision(
                    keys::release(&pin.stack, &pin.env, pin.release),
                    release_rev,
                ),
            ],
            success: vec![Op::put(key, encode(&pin.image_id))],
            failure: vec![],
        })
        .await?;
    Ok(resp.succeeded)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_api::control::{Release, ReleaseStatus};
    use berth_api::{InstanceSpec, InstanceState, InstanceStatus};
    use berth_store::{EmbeddedStore, Store};

    use super::*;
    use crate::rollouts::RolloutRecord;
    use crate::state::{Desired, InstanceRecord};

    fn stack(tag: &str) -> berth_spec::Stack {
        let source = format!(
            "stack: shop\nenvironments:\n  staging:\n    regions: [local]\nservices:\n  web:\n    image: example/web:{tag}\n"
        );
        berth_spec::render(source.as_bytes(), "staging", &[]).expect("stack")
    }

    fn release(number: u64, spec: berth_spec::Stack) -> Release {
        Release {
            number,
            stack: "shop".into(),
            env: "staging".into(),
            created_ms: 0,
            who: "admin".into(),
            status: ReleaseStatus::Live,
            summary: String::new(),
            plan_id: String::new(),
            rollback_of: None,
            reason: None,
            vetoed: false,
            approved_by: Vec::new(),
            images: BTreeMap::new(),
            secrets: BTreeMap::new(),
            spec,
        }
    }

    fn instance(id: &str, number: u64, node: &str, spec: &berth_spec::Stack) -> InstanceRecord {
        InstanceRecord {
            spec: InstanceSpec {
                id: id.into(),
                stack: "shop".into(),
                service: "web".into(),
                release: number,
                node: node.into(),
                spec: spec.service_for_region("web", "local").expect("web"),
                image_id: None,
                secret_env: BTreeMap::new(),
            },
            env: "staging".into(),
            region: "local".into(),
            desired: Desired::Run,
            created_ms: 0,
            desired_since_ms: None,
            status: None,
            secret_versions: BTreeMap::new(),
            sealed_env: BTreeMap::new(),
        }
    }

    fn status(id: &str, image: &str) -> InstanceStatus {
        InstanceStatus {
            id: id.into(),
            state: InstanceState::Healthy,
            pid: None,
            ports: BTreeMap::new(),
            restarts: 0,
            message: None,
            since_ms: 0,
            image_id: Some(image.into()),
        }
    }

    async fn view_of(records: Vec<(String, Vec<u8>)>) -> View {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path().join("s.redb"))
            .await
            .expect("store");
        for (key, value) in records {
            store.put(&key, value).await.expect("put");
        }
        View::load(&store).await.expect("load")
    }

    #[tokio::test]
    async fn a_report_pins_its_release_and_the_target_it_carries_over_into() {
        let (v1, v2) = (stack("1"), stack("1"));
        let mut r2 = release(2, v2);
        r2.status = ReleaseStatus::RollingOut;
        let view = view_of(vec![
            (
                keys::release("shop", "staging", 1),
                encode(&release(1, v1.clone())),
            ),
            (keys::release("shop", "staging", 2), encode(&r2)),
            (
                keys::rollout("shop", "staging"),
                encode(&RolloutRecord::new("shop", "staging", Some(1), 2, 0)),
            ),
            (keys::instance("a"), encode(&instance("a", 1, "n1", &v1))),
            (keys::instance("b"), encode(&instance("b", 1, "n2", &v1))),
        ])
        .await;
        let wanted = wanted(
            &view,
            "n1",
            &[status("a", "sha256:a"), status("a", "sha256:late")],
        );
        let got: Vec<(u64, &str)> = wanted
            .iter()
            .map(|(p, _)| (p.release, p.image_id.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(1, "sha256:a"), (2, "sha256:a")],
            "first report wins"
        );
        // Another node's instance is not this node's to report.
        assert!(wanted_of(&view, "n1", "b").is_empty());
    }

    fn wanted_of(view: &View, node: &str, id: &str) -> Vec<(Pin, i64)> {
        wanted(view, node, &[status(id, "sha256:x")])
    }

    #[tokio::test]
    async fn nothing_is_pinned_twice_nor_into_a_release_with_another_spec() {
        let (v1, v2) = (stack("1"), stack("2"));
        let mut r1 = release(1, v1.clone());
        r1.images.insert("web".into(), "sha256:kept".into());
        let view = view_of(vec![
            // An older version's record, with its pin inside.
            (keys::release("shop", "staging", 1), encode(&r1)),
            (keys::release("shop", "staging", 2), encode(&release(2, v2))),
            (
                keys::rollout("shop", "staging"),
                encode(&RolloutRecord::new("shop", "staging", Some(1), 2, 0)),
            ),
            (keys::instance("a"), encode(&instance("a", 1, "n1", &v1))),
        ])
        .await;
        assert!(wanted_of(&view, "n1", "a").is_empty());
    }
}
