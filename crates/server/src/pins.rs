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
