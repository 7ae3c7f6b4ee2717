//! The records the server keeps in the store, and a consistent snapshot of them.
//!
//! Readers decide from records at known `mod_revision`s (a [`Snapshot`], or the cluster view
//! the controllers read) and write back with compare-and-swap on them, so a concurrent change
//! makes the write fail instead of being lost, and the next pass decides again.

use std::collections::BTreeMap;

use berth_api::control::{RegisterRequest, Release, ReleaseStatus};
use berth_api::{InstanceSpec, InstanceState, InstanceStatus};
use berth_store::{Store, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keys;

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub registration: RegisterRequest,
    pub registered_ms: u64,
    /// Set by `berth drain`; a draining node takes no new instances.
    #[serde(default)]
    pub draining: bool,
}

/// What the server wants of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desired {
    /// Keep it running; route to it when healthy.
    Run,
    /// Take it out of the routers, then stop it once they have let go (or a deadline passed).
    Drain,
    /// Stop it; the record is deleted once the agent confirms.
    Stop,
}

impl Desired {
    /// The word `berth status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Run => "run",
            Desired::Drain => "drain",
            Desired::Stop => "stop",
        }
    }
}

/// One instance: its immutable spec, the server's wish, and the agent's last observation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub spec: InstanceSpec,
    pub env: String,
    pub region: String,
    pub desired: Desired,
    pub created_ms: u64,
    /// When `desired` became `Drain` or `Stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_since_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InstanceStatus>,
    /// The version of each secret whose value is in `spec.secret_env`: an instance made with an
    /// older version than its release records is not the release's and gets replaced (see
    /// [`InstanceRecord::runs`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
    /// The values of the instance's secrets, sealed (see [`crate::seal`]): copies of the secret
    /// records' sealed values, opened only to answer the instance's own node. `spec.secret_env`
    /// stays empty in the store (a record written before sealing held the values there; the
    /// server seals them at start, see [`crate::secrets::seal_plaintext`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed_env: BTreeMap<String, crate::seal::Sealed>,
}

impl InstanceRecord {
    /// Whether this instance runs `service` as the release wants it: the same rendered spec,
    /// and for each secret the service declares, a value at least as new as the version the
    /// release was made with (`release_secrets`). "At least": an instance created after a
    /// `berth secret set` (say, replacing a failed one) already has the newer value, and
    /// counting it as the release's avoids replacing instances in a loop.
    pub fn runs(
        &self,
        service: &berth_spec::model::Service,
        release_secrets: &BTreeMap<String, u64>,
    ) -> bool {
        self.spec.spec == *service
            && service.secrets.iter().all(|name| {
                let want = release_secrets.get(name).copied().unwrap_or(0);
                self.secret_versions.get(name).copied().unwrap_or(0) >= want
            })
    }

    /// The observed state, `pending` until the agent reports.
    pub fn state(&self) -> InstanceState {
        self.status
            .as_ref()
            .map(|s| s.state)
            .unwrap_or(InstanceState::Pending)
    }

    /// Whether the instance holds its node's resources: the scheduler counts it against the
    /// node, and `berth nodes` shows it as reserved. One being stopped does not, nor one the
    /// controller has given up on (drained) whose process is already gone (failed or stopped):
    /// a failed instance must not keep its node full until the drain's deadline, or each failed
    /// round of a rollout would take more of the node.
    pub fn holds_resources(&self) -> bool {
        match self.desired {
            Desired::Run => true,
            Desired::Drain => !self.state().is_terminal(),
            Desired::Stop => false,
        }
    }
}

/// Where a stack's rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum RolloutPhase {
    /// Waves are being rolled out.
    Progressing,
    /// The target release runs everywhere; the controller keeps its counts.
    Succeeded,
    /// The rollout failed and there was nothing to roll back to (no other release went live, or
    /// this was an automatic rollback that failed too); the reason says which. Its instances are
    /// stopped.
    Failed { reason: String },
}

/// `, canary web at step 1/2 (10%), paused: …` for `berth status`; nothing for rolling.
fn progressive_note(name: &str, state: &berth_rollout::ServiceRollout) -> String {
    use berth_rollout::ServiceRollout;
    match state {
        ServiceRollout::Canary(c) if !c.phase.is_terminal() => {
            let step = match c.steps.get(c.step) {
                Some(bp) => format!(
                    "step {}/{} ({})",
                    c.step + 1,
                    c.steps.len(),
                    berth_spec::model::BasisPoints(*bp)
                ),
                None => "the 100% step".to_string(),
            };
            let paused = c
                .paused
                .as_ref()
                .map(|p| format!(", paused: {p}"))
                .unwrap_or_default();
            format!(", canary {name} at {step}{paused}")
        }
        ServiceRollout::BlueGreen(b) if !b.phase.is_terminal() => match (b.switched_ms, b.ready_ms)
        {
            (Some(_), _) => format!(
                ", blue/green {name} switched, keeping release {}",
                b.from_release
            ),
            (None, Some(_)) => format!(", blue/green {name} ready, baking before the switch"),
            (None, None) => format!(", blue/green {name} starting out of traffic"),
        },
        _ => String::new(),
    }
}

/// The persisted rollout of one stack in one environment (`/rollouts/STACK/ENV`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub stack: String,
    pub env: String,
    /// The release being replaced (`None` on a first deploy).
    pub from: Option<u64>,
    /// The release being rolled out: what the stack is meant to run.
    pub to: u64,
    pub started_ms: u64,
    /// Index of the current region wave.
    pub wave: usize,
    /// The state machine of each service that started in the current wave (rolling, canary or
    /// blue/green; a rolling one is stored exactly as before the others existed).
    pub services: BTreeMap<String, berth_rollout::ServiceRollout>,
    /// Services finished in the current wave.
    pub done: std::collections::BTreeSet<String>,
    pub phase: RolloutPhase,
    /// Set when this rollout is the automatic rollback of a failed one, with why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<String>,
    /// A rollback (by command or automatic): every instance of the release returned to starts at
    /// once (surge 100%), and the bad ones stop as soon as enough are healthy. Capacity never
    /// drops, and a rollback takes one step instead of one per instance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Services with instances no node could take, and the scheduler's explanation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unplaced: BTreeMap<String, String>,
    /// A release the routers send nothing to: the failed canary or blue/green release this
    /// rollback replaces, so traffic is 100 % stable from the verdict's table on, before its
    /// instances have even begun to drain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_traffic: Option<u64>,
    /// When the current wave's services were all done, if the environment's `waves` bake
    /// before the next region starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave_done_ms: Option<u64>,
    /// Why the rollout stopped where it is (`waves.on_failure: halt`); the controller leaves it
    /// alone until a person acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// A rollback that returns only its current wave's region to the previous release and then
    /// halts (`waves.on_failure: revert_wave`): the regions of earlier waves keep the failed
    /// target, which went live and baked there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revert_wave: bool,
    /// The target went live before the rollout finished: every service of the last wave is
    /// done or a blue/green that switched, and only `keep_previous` remains (the old release
    /// running out of traffic), so `berth deploy --wait` need not wait for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live_at_switch: bool,
}

impl RolloutRecord {
    /// A new rollout from `from` to `to`.
    pub fn new(stack: &str, env: &str, from: Option<u64>, to: u64, now_ms: u64) -> Self {
        RolloutRecord {
            stack: stack.to_string(),
            env: env.to_string(),
            from,
            to,
            started_ms: now_ms,
            wave: 0,
            services: BTreeMap::new(),
            done: std::collections::BTreeSet::new(),
            phase: RolloutPhase::Progressing,
            rollback_reason: None,
            rollback: false,
            unplaced: BTreeMap::new(),
            out_of_traffic: None,
            wave_done_ms: None,
            halted: None,
            revert_wave: false,
            live_at_switch: false,
        }
    }

    /// `, canary web at step 1/2 (10%)…` for each canary or blue/green service still
    /// progressing (empty for rolling): what status lines and events add.
    pub fn progress_notes(&self) -> String {
        self.services
            .iter()
            .map(|(name, state)| progressive_note(name, state))
            .collect()
    }

    /// How `berth status` describes it.
    pub fn describe(&self) -> String {
        match (&self.phase, &self.rollback_reason) {
            (RolloutPhase::Progressing, Some(why)) => match &self.halted {
                Some(halted) => halted.clone(),
                None => format!("rolling back to {} ({why})", self.to),
            },
            (RolloutPhase::Progressing, None) if self.live_at_switch => {
                format!("live{}", self.progress_notes())
            }
            (RolloutPhase::Progressing, None) => {
                let mut line = match self.from {
                    Some(from) => format!("rolling out {from} → {}", self.to),
                    None => format!("rolling out {}", self.to),
                };
                if let Some(why) = &self.halted {
                    line = format!("{line}, {why}");
                }
                line.push_str(&self.progress_notes());
                line
            }
            (RolloutPhase::Succeeded, Some(why)) => format!("rolled back to {} ({why})", self.to),
            (RolloutPhase::Succeeded, None) => "live".to_string(),
            (RolloutPhase::Failed { reason }, _) => format!("failed: {reason}"),
        }
    }
}

/// Whether a release once went live (was fully rolled out): it is live, or it was live and a
/// later release replaced it. Only such a release is a rollback target (see
/// [`berth_rollout::rollback_target`]). A release replaced before its rollout finished is
/// `superseded` too, but carries the reason saying so; a failed one never counts.
pub fn went_live(release: &Release) -> bool {
    match release.status {
        ReleaseStatus::Live => true,
        ReleaseStatus::Superseded => release.reason.is_none(),
        ReleaseStatus::RollingOut | ReleaseStatus::Failed => false,
    }
}

/// A secret (`/secrets/STACK/NAME`). The value is sealed ([`crate::seal`]) and only ever
/// opened by the server to put it in the instance specs it sends to agents; the API shows
/// names, versions and times.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// The plaintext value, only in a record written before values were sealed: read once,
    /// at start, to seal it ([`crate::secrets::seal_plaintext`]), never written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value sealed under a data key, with (stack, name, version) as associated data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<crate::seal::Sealed>,
    /// 1 for the first write, bumped by every later one (also after a delete and a new set,
    /// so a version never names two values).
    pub version: u64,
    pub updated_ms: u64,
}

/// Never prints the value.
impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("value", &"<secret>")
            .field("sealed", &self.sealed)
            .field("version", &self.version)
            .field("updated_ms", &self.updated_ms)
            .finish()
    }
}

/// Every secret of a stack, by name.
pub async fn secrets(
    store: &dyn Store,
    stack: &str,
) -> Result<BTreeMap<String, Versioned<SecretRecord>>, StateError> {
    let prefix = keys::secrets(stack);
    let (_, v) = read_prefix::<SecretRecord>(store, &prefix).await?;
    Ok(v.into_iter()
        .map(|(k, r)| (k[prefix.len()..].to_string(), r))
        .collect())
}

/// A value read from the store together with the revision to compare against when writing it back.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

/// Everything the controllers look at, read at one store revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub nodes: BTreeMap<String, Versioned<NodeRecord>>,
    pub instances: BTreeMap<String, Versioned<InstanceRecord>>,
    pub rollouts: BTreeMap<(String, String), Versioned<RolloutRecord>>,
}

/// A store problem or a record that cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("record {key} in the store is not valid: {source}; it was written by an incompatible berth version")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
}

/// Decodes a JSON record, naming the key when it is corrupt.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|source| StateError::Decode {
        key: key.to_string(),
        source,
    })
}

/// Encodes a record as JSON. Our records always serialise (string keys, no NaN).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

async fn read_prefix<T: DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<(i64, Vec<(String, Versioned<T>)>), StateError> {
    let resp = store.range(prefix).await?;
    let mut out = Vec::with_capacity(resp.kvs.len());
    for kv in resp.kvs {
        let value = decode(&kv.key, &kv.value)?;
        out.push((
            kv.key,
            Versioned {
                value,
                mod_revision: kv.mod_revision,
            },
        ));
    }
    Ok((resp.revision, out))
}

impl Snapshot {
    /// Reads nodes, instances and rollouts. Each prefix is one consistent read; the revision is
    /// the oldest of the three, so a watch from it misses nothing.
    pub async fn load(store: &dyn Store) -> Result<Snapshot, StateError> {
        let (r1, nodes) = read_prefix::<NodeRecord>(store, keys::NODES).await?;
        let (r2, instances) = read_prefix::<InstanceRecord>(store, keys::INSTANCES).await?;
        let (r3, rollouts) = read_prefix::<RolloutRecord>(store, keys::ROLLOUTS).await?;
        Ok(Snapshot {
            revision: r1.min(r2).min(r3),
            nodes: nodes
                .into_iter()
                .map(|(_, v)| (v.value.registration.name.clone(), v))
                .collect(),
            instances: instances
                .into_iter()
                .map(|(_, v)| (v.value.spec.id.clone(), v))
                .collect(),
            rollouts: rollouts
                .into_iter()
                .map(|(_, v)| ((v.value.stack.clone(), v.value.env.clone()), v))
                .collect(),
        })
    }
}

/// Every release of a stack in one environment, oldest first, with its image pins merged in.
pub async fn releases(
    store: &dyn Store,
    stack: &str,
    env: &str,
) -> Result<Vec<Versioned<Release>>, StateError> {
    let (_, v) = read_prefix::<Release>(store, &keys::releases(stack, env)).await?;
    let pins = read_pins(store, &keys::pins(stack, env)).await?;
    Ok(with_pins(v.into_iter().map(|(_, r)| r), &pins))
}

/// Every retained release of every stack and environment, with their image pins merged in.
pub async fn all_releases(store: &dyn Store) -> Result<Vec<Versioned<Release>>, StateError> {
    let (_, v) = read_prefix::<Release>(store, keys::RELEASES).await?;
    let pins = read_pins(store, keys::PINS).await?;
    Ok(with_pins(v.into_iter().map(|(_, r)| r), &pins))
}

/// Image pins by release: (stack, env, number) → service → image id.
pub type Pins = BTreeMap<(String, String, u64), BTreeMap<String, String>>;

/// The image pins under `prefix` (see [`keys::pin`]). Keys that are not pins are skipped.
async fn read_pins(store: &dyn Store, prefix: &str) -> Result<Pins, StateError> {
    let resp = store.range(prefix).await?;
    let mut pins = Pins::new();
    for kv in resp.kvs {
        let Some((stack, env, number, service)) = keys::parse_pin(&kv.key) else {
            continue;
        };
        let id: String = decode(&kv.key, &kv.value)?;
        pins.entry((stack.to_string(), env.to_string(), number))
            .or_default()
            .insert(service.to_string(), id);
    }
    Ok(pins)
}

fn with_pins(
    releases: impl Iterator<Item = Versioned<Release>>,
    pins: &Pins,
) -> Vec<Versioned<Release>> {
    releases
        .map(|mut r| {
            let at = (r.value.stack.clone(), r.value.env.clone(), r.value.number);
            if let Some(p) = pins.get(&at) {
                merge_pins(&mut r.value, p);
            }
            r
        })
        .collect()
}

/// Adds a release's pin keys to its `images`. An id the record itself holds wins (a store
/// written by an older version kept pins in the record; a rollback's record carries the pins
/// of the release it returns to): pins are first-report-wins, and that one came first.
/// Whoever writes the release back must not write these merged pins along: see
/// [`record_images`].
pub fn merge_pins(release: &mut Release, pins: &BTreeMap<String, String>) {
    for (service, id) in pins {
        release
            .images
            .entry(service.clone())
            .or_insert_with(|| id.clone());
    }
}

/// A merged release's `images` as its record holds them: without the ids that only its pin
/// keys hold, so writing the release back (a status change) does not copy pins into it.
pub fn record_images(release: &mut Release, pins: &BTreeMap<String, String>) {
    release
        .images
        .retain(|service, id| pins.get(service) != Some(id));
}

/// What garbage collection must keep: every image reference and pinned image id of an image
/// service in any retained release, sorted and without duplicates. A rollback may return to
/// any of them, and must work with no registry reachable.
pub fn images_to_keep<'a>(releases: impl IntoIterator<Item = &'a Release>) -> Vec<String> {
    let mut keep = std::collections::BTreeSet::new();
    for r in releases {
        for (name, service) in &r.spec.services {
            if let Some(image) = &service.image {
                keep.insert(image.clone());
                if let Some(id) = r.images.get(name) {
                    keep.insert(id.clone());
                }
            }
        }
    }
    keep.into_iter().collect()
}

/// The garbage-collection generation and its `mod_revision` (0 and 0 before any `berth gc`).
pub async fn gc_generation(store: &dyn Store) -> Result<(u64, i64), StateError> {
    match store.get(keys::GC_GENERATION).await? {
        Some(kv) => Ok((decode(keys::GC_GENERATION, &kv.value)?, kv.mod_revision)),
        None => Ok((0, 0)),
    }
}

/// One release, if it is still retained, with its image pins merged in.
pub async fn release(
    store: &dyn Store,
    stack: &str,
    env: &str,
    number: u64,
) -> Result<Option<Versioned<Release>>, StateError> {
    let key = keys::release(stack, env, number);
    match store.get(&key).await? {
        Some(kv) => {
            let mut value: Release = decode(&key, &kv.value)?;
            let pins = read_pins(store, &keys::release_pins(stack, env, number)).await?;
            if let Some(p) = pins.get(&(stack.to_string(), env.to_string(), number)) {
                merge_pins(&mut value, p);
            }
            Ok(Some(Versioned {
                value,
                mod_revision: kv.mod_revision,
            }))
        }
        None => Ok(None),
    }
}
