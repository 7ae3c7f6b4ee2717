//! The cluster view: an in-memory projection of the records the controllers, handlers and
//! long-polls read — nodes, instances, releases, rollouts, secrets and maintenance modes —
//! current to one store revision.
//!
//! It is built by list-then-watch: [`View::load`] reads every key at one revision, and
//! [`View::apply`] folds each later [`WatchEvent`] in, in revision order. The store's watch is
//! gap-free, so a view that applied every event from `revision + 1` on equals a fresh
//! [`View::load`] at the same revision (a test below checks exactly that).
//!
//! This module is the data and its accessors only: pure, no I/O besides [`View::load`]. Who
//! keeps a view live (the follower task), who reads it and how long-polls are woken lives
//! elsewhere. Callers use the accessor methods, not the maps: the indexes behind them (a
//! node's instances, a stack's instances, the images to keep) are kept by [`View::apply`], so
//! a reader's cost is the size of its answer, not of the cluster.
//!
//! [`View::apply`] also says what an event [`Touched`]: which nodes' desired instances may
//! have changed and whether the routing table's inputs did, so long-polls are woken by
//! index (node A's change wakes node A's agent and the routers, not every agent).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use berth_api::control::{MaintenanceView, Release};
use berth_store::{EventKind, KeyValue, Store, WatchEvent};

use crate::keys;
use crate::rollouts::RolloutRecord;
use crate::state::{
    decode, Desired, InstanceRecord, NodeRecord, SecretRecord, StateError, Versioned,
};
use berth_api::InstanceState;

/// What one event may have changed, for waking long-polls by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// Nodes whose desired instances (specs of the instances not being stopped) changed, or
    /// whose record was removed. A status report alone touches no node: the agent sent it.
    pub nodes: BTreeSet<String>,
    /// What every agent is sent besides its instances changed (the images to keep, the
    /// garbage-collection generation).
    pub all_nodes: bool,
    /// The routing table's inputs changed (a routable instance, a node's address, a rollout's
    /// target, a release, a maintenance page).
    pub routing: bool,
}

impl Touched {
    /// Everything changed (a re-list).
    pub fn everything() -> Touched {
        Touched {
            nodes: BTreeSet::new(),
            all_nodes: true,
            routing: true,
        }
    }

    /// Adds what `other` touched.
    pub fn merge(&mut self, other: Touched) {
        self.nodes.extend(other.nodes);
        self.all_nodes |= other.all_nodes;
        self.routing |= other.routing;
    }

    /// Whether anything a long-poll answers from changed.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty() && !self.all_nodes && !self.routing
    }
}

/// The part of an instance its node's agent is sent: its spec, unless it is being stopped.
fn desired_part(r: &InstanceRecord) -> Option<&berth_api::InstanceSpec> {
    (r.desired != Desired::Stop).then_some(&r.spec)
}

/// See [`routing_of_rollout`]: from, to, progressing, out of traffic, progressive services.
type RolloutRouting<'a> = (
    Option<u64>,
    u64,
    bool,
    Option<u64>,
    Vec<(&'a String, &'a berth_rollout::ServiceRollout)>,
);

/// The part of a rollout record the routing table reads (see `routing::build`): the releases,
/// and what decides a canary's or blue/green's traffic split. A rolling rollout's service states
/// are left out, so its every step does not rebuild the table (as before canaries).
fn routing_of_rollout(r: &RolloutRecord) -> RolloutRouting<'_> {
    let progressive = r
        .services
        .iter()
        .filter(|(_, s)| !matches!(s, berth_rollout::ServiceRollout::Rolling(_)))
        .collect();
    (
        r.from,
        r.to,
        r.phase == crate::state::RolloutPhase::Progressing,
        r.out_of_traffic,
        progressive,
    )
}

/// The part of an instance the routing table reads: its ports and release, while it is
/// wanted and healthy (only such instances are endpoints).
fn routing_part(r: &InstanceRecord) -> Option<(&BTreeMap<String, u16>, u64)> {
    if r.desired != Desired::Run || r.state() != InstanceState::Healthy {
        return None;
    }
    r.status.as_ref().map(|s| (&s.ports, r.spec.release))
}

/// Every record the control plane decides from, at [`View::revision`].
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The store revision this view is current to.
    pub revision: i64,
    /// Node name → its record.
    nodes: BTreeMap<String, Versioned<NodeRecord>>,
    /// Instance id → its record.
    instances: BTreeMap<String, Versioned<InstanceRecord>>,
    /// (stack, env) → its rollout.
    rollouts: BTreeMap<(String, String), Versioned<RolloutRecord>>,
    /// (stack, env) → release number → the release.
    releases: BTreeMap<(String, String), BTreeMap<u64, Versioned<Release>>>,
    /// Stack → secret name → the secret.
    secrets: BTreeMap<String, BTreeMap<String, Versioned<SecretRecord>>>,
    /// (stack, service) → its maintenance page, while in maintenance mode.
    maintenance: BTreeMap<(String, String), MaintenanceView>,
    /// The garbage-collection generation and its `mod_revision` (0 and 0 before any `berth gc`).
    gc_generation: (u64, i64),
    /// Image pins (`/pins/…`) by release, also merged into `releases`' `images`.
    pins: crate::state::Pins,
    /// Index: node name → ids of the instances placed on it.
    by_node: HashMap<String, BTreeSet<String>>,
    /// Index: (stack, env) → ids of its instances.
    by_stack: HashMap<(String, String), BTreeSet<String>>,
    /// [`crate::state::images_to_keep`] over every retained release, kept on release changes.
    keep_images: Arc<Vec<String>>,
    /// The last revision that changed the routing table's inputs (see [`Touched::routing`]).
    routing_revision: i64,
}

impl View {
    /// Reads every record at one store revision (one range over the whole key space: every
    /// record the view holds is then from the same snapshot). Watch from `revision + 1`.
    pub async fn load(store: &dyn Store) -> Result<View, StateError> {
        let resp = store.range("/").await?;
        let mut view = View {
            revision: resp.revision,
            ..View::default()
        };
        for kv in resp.kvs {
            view.put(&kv)?;
        }
        view.routing_revision = view.revision;
        Ok(view)
    }

    /// Folds one watch event in. Events must come in revision order; one transaction's events
    /// share a revision, so an event *older* than [`View::revision`] is ignored (a re-watch
    /// may replay it; replaying the current revision again is harmless: puts and deletes are
    /// idempotent). A record that
    /// cannot be decoded fails with the key named, and the view keeps the record's previous
    /// value (it never holds a half-applied event).
    ///
    /// Answers what the event [`Touched`], for waking long-polls.
    pub fn apply(&mut self, event: &WatchEvent) -> Result<Touched, StateError> {
        if event.revision < self.revision {
            return Ok(Touched::default());
        }
        self.revision = event.revision;
        let touched = match event.kind {
            EventKind::Put => self.put(&event.kv)?,
            EventKind::Delete => self.delete(&event.kv.key),
        };
        if touched.routing {
            self.routing_revision = event.revision;
        }
        Ok(touched)
    }

    /// Adds an instance to the indexes.
    fn index(&mut self, r: &InstanceRecord) {
        self.by_node
            .entry(r.spec.node.clone())
            .or_default()
            .insert(r.spec.id.clone());
        self.by_stack
            .entry((r.spec.stack.clone(), r.env.clone()))
            .or_default()
            .insert(r.spec.id.clone());
    }

    /// Removes an instance from the indexes (empty entries go, so they stay bounded by the
    /// records).
    fn unindex(&mut self, id: &str, r: &InstanceRecord) {
        if let Some(ids) = self.by_node.get_mut(&r.spec.node) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_node.remove(&r.spec.node);
            }
        }
        let at = (r.spec.stack.clone(), r.env.clone());
        if let Some(ids) = self.by_stack.get_mut(&at) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_stack.remove(&at);
            }
        }
    }

    /// Recomputes the images to keep; true if they changed.
    fn refresh_keep_images(&mut self) -> bool {
        let keep = crate::state::images_to_keep(self.all_releases().map(|r| &r.value));
        if *self.keep_images == keep {
            return false;
        }
        self.keep_images = Arc::new(keep);
        true
    }

    /// What replacing instance `old` by `new` touched.
    fn instance_touched(old: Option<&InstanceRecord>, new: Option<&InstanceRecord>) -> Touched {
        let mut touched = Touched::default();
        if old.and_then(desired_part) != new.and_then(desired_part) {
            for r in old.into_iter().chain(new) {
                touched.nodes.insert(r.spec.node.clone());
            }
        }
        touched.routing = old.and_then(routing_part) != new.and_then(routing_part);
        touched
    }

    fn put(&mut self, kv: &KeyValue) -> Result<Touched, StateError> {
        let key = kv.key.as_str();
        // Image pins: their own keys, merged into the release they pin (see `keys`).
        if key.starts_with(keys::PINS) {
            return Ok(Touched {
                all_nodes: self.put_pin(kv)?,
                ..Touched::default()
            });
        }
        fn versioned<T>(value: T, kv: &KeyValue) -> Versioned<T> {
            Versioned {
                value,
                mod_revision: kv.mod_revision,
            }
        }
        let mut touched = Touched::default();
        if let Some(name) = key.strip_prefix(keys::NODES) {
            let record: NodeRecord = decode(key, &kv.value)?;
            let old = self.nodes.insert(name.to_string(), versioned(record, kv));
            // Its address is in the routing table; draining and labels are not.
            touched.routing = old.map(|o| o.value.registration.address)
                != self
                    .nodes
                    .get(name)
                    .map(|n| n.value.registration.address.clone());
        } else if let Some(id) = key.strip_prefix(keys::INSTANCES) {
            let record: InstanceRecord = decode(key, &kv.value)?;
            let old = self.instances.remove(id);
            if let Some(old) = &old {
                self.unindex(id, &old.value);
            }
            touched = Self::instance_touched(old.as_ref().map(|o| &o.value), Some(&record));
            self.index(&record);
            self.instances.insert(id.to_string(), versioned(record, kv));
        } else if key.starts_with(keys::ROLLOUTS) {
            let record: RolloutRecord = decode(key, &kv.value)?;
            let at = (record.stack.clone(), record.env.clone());
            // The table routes the rollout's target release with weights from its strategy's
            // traffic split: (from, to), and for a canary or blue/green its services' states
            // (a step, a switch), its phase and the release a rollback holds out of traffic.
            touched.routing = self.rollouts.get(&at).map(|o| routing_of_rollout(&o.value))
                != Some(routing_of_rollout(&record));
            self.rollouts.insert(at, versioned(record, kv));
        } else if key.starts_with(keys::RELEASES) {
            let mut release: Release = decode(key, &kv.value)?;
            let at = (release.stack.clone(), release.env.clone());
            let number = release.number;
            if let Some(pins) = self.pins.get(&(at.0.clone(), at.1.clone(), number)) {
                crate::state::merge_pins(&mut release, pins);
            }
            self.releases
                .entry(at)
                .or_default()
                .insert(number, versioned(release, kv));
            touched.routing = true;
            touched.all_nodes = self.refresh_keep_images();
        } else if let Some(rest) = key.strip_prefix(keys::SECRETS) {
            if let Some((stack, name)) = rest.split_once('/') {
                let record: SecretRecord = decode(key, &kv.value)?;
                self.secrets
                    .entry(stack.to_string())
                    .or_default()
                    .insert(name.to_string(), versioned(record, kv));
            }
        } else if let Some(rest) = key.strip_prefix(keys::MAINTENANCE) {
            if let Some((stack, service)) = rest.split_once('/') {
                let page: MaintenanceView = decode(key, &kv.value)?;
                self.maintenance
                    .insert((stack.to_string(), service.to_string()), page);
                touched.routing = true;
            }
        } else if key == keys::GC_GENERATION {
            let generation: u64 = decode(key, &kv.value)?;
            touched.all_nodes = generation != self.gc_generation.0;
            self.gc_generation = (generation, kv.mod_revision);
        }
        Ok(touched)
    }

    fn delete(&mut self, key: &str) -> Touched {
        let mut touched = Touched::default();
        if key.starts_with(keys::PINS) {
            touched.all_nodes = self.delete_pin(key);
        } else if let Some(name) = key.strip_prefix(keys::NODES) {
            if self.nodes.remove(name).is_some() {
                touched.routing = true;
                // Its agent's long-poll answers (and lets go of its wake-up).
                touched.nodes.insert(name.to_string());
            }
        } else if let Some(id) = key.strip_prefix(keys::INSTANCES) {
            if let Some(old) = self.instances.remove(id) {
                self.unindex(id, &old.value);
                touched = Self::instance_touched(Some(&old.value), None);
            }
        } else if let Some(rest) = key.strip_prefix(keys::ROLLOUTS) {
            if let Some((stack, env)) = rest.split_once('/') {
                touched.routing = self
                    .rollouts
                    .remove(&(stack.to_string(), env.to_string()))
                    .is_some();
            }
        } else if let Some(rest) = key.strip_prefix(keys::RELEASES) {
            let mut parts = rest.splitn(3, '/');
            if let (Some(stack), Some(env), Some(number)) =
                (parts.next(), parts.next(), parts.next())
            {
                let at = (stack.to_string(), env.to_string());
                if let (Some(all), Ok(number)) = (self.releases.get_mut(&at), number.parse()) {
                    all.remove(&number);
                    if all.is_empty() {
                        self.releases.remove(&at);
                    }
                    touched.routing = true;
                    touched.all_nodes = self.refresh_keep_images();
                }
            }
        } else if let Some(rest) = key.strip_prefix(keys::SECRETS) {
            if let Some((stack, name)) = rest.split_once('/') {
                if let Some(all) = self.secrets.get_mut(stack) {
                    all.remove(name);
                    if all.is_empty() {
                        self.secrets.remove(stack);
                    }
                }
            }
        } else if let Some(rest) = key.strip_prefix(keys::MAINTENANCE) {
            if let Some((stack, service)) = rest.split_once('/') {
                touched.routing = self
                    .maintenance
                    .remove(&(stack.to_string(), service.to_string()))
                    .is_some();
            }
        } else if key == keys::GC_GENERATION {
            touched.all_nodes = self.gc_generation.0 != 0;
            self.gc_generation = (0, 0);
        }
        touched
    }

    /// A pin key written: remember it, and merge it into its release if that is held. True if
    /// the images to keep changed (a pinned id is kept like its tag).
    fn put_pin(&mut self, kv: &KeyValue) -> Result<bool, StateError> {
        let Some((stack, env, number, service)) = keys::parse_pin(&kv.key) else {
            return Ok(false);
        };
        let id: String = decode(&kv.key, &kv.value)?;
        let at = (stack.to_string(), env.to_string());
        if let Some(release) = self
            .releases
            .get_mut(&at)
            .and_then(|all| all.get_mut(&number))
        {
            let pin = BTreeMap::from([(service.to_string(), id.clone())]);
            crate::state::merge_pins(&mut release.value, &pin);
        }
        self.pins
            .entry((at.0, at.1, number))
            .or_default()
            .insert(service.to_string(), id);
        Ok(self.refresh_keep_images())
    }

    /// A pin key deleted (with its release, by retention): forget it, and take it out of the
    /// release if that is still held and its id came from the pin. True if the images to keep
    /// changed.
    fn delete_pin(&mut self, key: &str) -> bool {
        let Some((stack, env, number, service)) = keys::parse_pin(key) else {
            return false;
        };
        let at = (stack.to_string(), env.to_string(), number);
        let Some(pins) = self.pins.get_mut(&at) else {
            return false;
        };
        let Some(id) = pins.remove(service) else {
            return false;
        };
        if pins.is_empty() {
            self.pins.remove(&at);
        }
        if let Some(release) = self
            .releases
            .get_mut(&(at.0, at.1))
            .and_then(|all| all.get_mut(&number))
        {
            let pin = BTreeMap::from([(service.to_string(), id)]);
            crate::state::record_images(&mut release.value, &pin);
        }
        self.refresh_keep_images()
    }

    /// The image ids pinned by their own keys for one release, by service (merged into
    /// [`View::release`]'s `images` already): what a writer of the release leaves out of the
    /// record (see [`crate::state::record_images`]), and what retention deletes with it.
    pub fn pins_of(
        &self,
        stack: &str,
        env: &str,
        number: u64,
    ) -> Option<&BTreeMap<String, String>> {
        self.pins.get(&(stack.to_string(), env.to_string(), number))
    }

    /// One retained release as its record holds it: without the image ids only its pin keys
    /// hold. What a writer of the release (a status change) starts from, so that writing it
    /// back does not copy pins into the record; readers use [`View::release`].
    pub fn release_record(
        &self,
        stack: &str,
        env: &str,
        number: u64,
    ) -> Option<Versioned<Release>> {
        let mut release = self.release(stack, env, number)?.clone();
        if let Some(pins) = self.pins_of(stack, env, number) {
            crate::state::record_images(&mut release.value, pins);
        }
        Some(release)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> &BTreeMap<String, Versioned<NodeRecord>> {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&Versioned<NodeRecord>> {
        self.nodes.get(name)
    }

    /// Every instance, by id.
    pub fn instances(&self) -> &BTreeMap<String, Versioned<InstanceRecord>> {
        &self.instances
    }

    /// One instance.
    pub fn instance(&self, id: &str) -> Option<&Versioned<InstanceRecord>> {
        self.instances.get(id)
    }

    /// The instances placed on `node` (any desired state).
    /// From the index: as costly as the node's instances, in id order.
    pub fn instances_on(&self, node: &str) -> impl Iterator<Item = &Versioned<InstanceRecord>> {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.instances.get(id))
    }

    /// The instances of a stack in one environment (any desired state).
    pub fn instances_of(
        &self,
        stack: &str,
        env: &str,
    ) -> impl Iterator<Item = &Versioned<InstanceRecord>> {
        // From the index: as costly as the stack's instances, in id order.
        self.by_stack
            .get(&(stack.to_string(), env.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.instances.get(id))
    }

    /// Every rollout, by (stack, env).
    pub fn rollouts(&self) -> &BTreeMap<(String, String), Versioned<RolloutRecord>> {
        &self.rollouts
    }

    /// The rollout of a stack in one environment.
    pub fn rollout(&self, stack: &str, env: &str) -> Option<&Versioned<RolloutRecord>> {
        self.rollouts.get(&(stack.to_string(), env.to_string()))
    }

    /// The retained releases of a stack in one environment, by number (oldest first).
    pub fn releases_of(
        &self,
        stack: &str,
        env: &str,
    ) -> Option<&BTreeMap<u64, Versioned<Release>>> {
        self.releases.get(&(stack.to_string(), env.to_string()))
    }

    /// One retained release.
    pub fn release(&self, stack: &str, env: &str, number: u64) -> Option<&Versioned<Release>> {
        self.releases_of(stack, env)?.get(&number)
    }

    /// Every retained release of every stack and environment.
    pub fn all_releases(&self) -> impl Iterator<Item = &Versioned<Release>> {
        self.releases.values().flat_map(|r| r.values())
    }

    /// A stack's secrets, by name (empty if it has none).
    pub fn secrets_of(&self, stack: &str) -> &BTreeMap<String, Versioned<SecretRecord>> {
        static NONE: BTreeMap<String, Versioned<SecretRecord>> = BTreeMap::new();
        self.secrets.get(stack).unwrap_or(&NONE)
    }

    /// Services in maintenance: (stack, service) → the page routers answer with.
    pub fn maintenance(&self) -> &BTreeMap<(String, String), MaintenanceView> {
        &self.maintenance
    }

    /// The garbage-collection generation and its `mod_revision`.
    pub fn gc_generation(&self) -> (u64, i64) {
        self.gc_generation
    }

    /// What agents must keep from garbage collection ([`crate::state::images_to_keep`] over
    /// every retained release), kept current by [`View::apply`]: shared, not recomputed per
    /// long-poll.
    pub fn keep_images(&self) -> Arc<Vec<String>> {
        self.keep_images.clone()
    }

    /// The last revision that changed the routing table's inputs: a table built at or after
    /// it is current (see `routing::TableCache`).
    pub fn routing_revision(&self) -> i64 {
        self.routing_revision
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use berth_store::{EmbeddedStore, Op, Txn};
    use futures::StreamExt;

    /// Everything the view holds, comparable (the records' `Debug` forms with revisions).
    fn fingerprint(v: &View) -> String {
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            v.nodes, v.instances, v.rollouts, v.releases, v.secrets, v.maintenance, v.gc_generation
        )
    }

    #[tokio::test]
    async fn a_view_that_applied_the_watch_equals_a_fresh_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path().join("s.redb"))
            .await
            .expect("store");
        let mut view = View::load(&store).await.expect("load");
        let mut events = store.watch("/", view.revision + 1).await.expect("watch");
        let secret = SecretRecord {
            value: None,
            sealed: None,
            version: 1,
            updated_ms: 1,
        };
        let writes = vec![
            Op::put(keys::secret("shop", "db"), crate::state::encode(&secret)),
            Op::put(keys::maintenance("shop", "web"), b"{}".to_vec()),
            Op::put(keys::GC_GENERATION, b"3".to_vec()),
            Op::put("/unrelated/key", b"not json".to_vec()),
        ];
        for op in writes {
            store
                .txn(Txn {
                    compares: vec![],
                    success: vec![op],
                    failure: vec![],
                })
                .await
                .expect("write");
        }
        store
            .delete(&keys::maintenance("shop", "web"))
            .await
            .expect("delete");
        let last = store.revision().await.expect("revision");
        while view.revision < last {
            let event = events.next().await.expect("event").expect("ok");
            view.apply(&event).expect("apply");
        }
        let fresh = View::load(&store).await.expect("reload");
        assert_eq!(fingerprint(&view), fingerprint(&fresh));
        assert_eq!(view.gc_generation().0, 3);
        assert_eq!(view.secrets_of("shop").len(), 1);
        assert!(view.maintenance().is_empty());
    }

    /// Image pins: their own keys, merged into their release's `images` whichever comes
    /// first, kept out of nothing else; a transaction's several events (one revision) all
    /// apply; a pin deleted with its release leaves nothing behind.
    #[tokio::test]
    async fn pins_merge_into_their_release_from_a_watch_as_from_a_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path().join("s.redb"))
            .await
            .expect("store");
        let source = "stack: shop\nenvironments:\n  staging:\n    regions: [local]\nservices:\n  web:\n    image: example/web:1\n";
        let spec = berth_spec::render(source.as_bytes(), "staging", &[]).expect("stack");
        let release = |number| Release {
            number,
            stack: "shop".into(),
            env: "staging".into(),
            created_ms: 0,
            who: "admin".into(),
            status: berth_api::control::ReleaseStatus::Live,
            summary: String::new(),
            plan_id: String::new(),
            rollback_of: None,
            reason: None,
            vetoed: false,
            approved_by: Vec::new(),
            images: BTreeMap::new(),
            secrets: BTreeMap::new(),
            spec: spec.clone(),
        };
        let mut view = View::load(&store).await.expect("load");
        let mut events = store.watch("/", view.revision + 1).await.expect("watch");
        let txn = |ops| Txn {
            compares: vec![],
            success: ops,
            failure: vec![],
        };
        let id = |s: &str| crate::state::encode(&s.to_string());
        // Release 1 and its pin in one transaction; release 2, then its pin.
        let writes = vec![
            txn(vec![
                Op::put(
                    keys::release("shop", "staging", 1),
                    crate::state::encode(&release(1)),
                ),
                Op::put(keys::pin("shop", "staging", 1, "web"), id("sha256:one")),
            ]),
            txn(vec![Op::put(
                keys::release("shop", "staging", 2),
                crate::state::encode(&release(2)),
            )]),
            txn(vec![Op::put(
                keys::pin("shop", "staging", 2, "web"),
                id("sha256:two"),
            )]),
        ];
        for t in writes {
            store.txn(t).await.expect("write");
        }
        let last = store.revision().await.expect("revision");
        while view.revision < last {
            let event = events.next().await.expect("event").expect("ok");
            view.apply(&event).expect("apply");
        }
        // Drain what is left at the last revision (a transaction is several events).
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(std::time::Duration::from_millis(50), events.next()).await
        {
            view.apply(&event).expect("apply");
        }
        let fresh = View::load(&store).await.expect("reload");
        assert_eq!(fingerprint(&view), fingerprint(&fresh));
        for (number, pinned) in [(1, "sha256:one"), (2, "sha256:two")] {
            let r = view.release("shop", "staging", number).expect("release");
            assert_eq!(r.value.images["web"], pinned, "release {number}");
            let record = view
                .release_record("shop", "staging", number)
                .expect("record");
            assert!(
                record.value.images.is_empty(),
                "a writer starts from the record"
            );
            assert_eq!(record.mod_revision, r.mod_revision);
        }
        // Retention: the release and its pins in one transaction.
        store
            .txn(txn(vec![
                Op::delete(keys::release("shop", "staging", 1)),
                Op::delete_prefix(keys::release_pins("shop", "staging", 1)),
            ]))
            .await
            .expect("retire");
        let last = store.revision().await.expect("revision");
        while view.revision < last {
            let event = events.next().await.expect("event").expect("ok");
            view.apply(&event).expect("apply");
        }
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(std::time::Duration::from_millis(50), events.next()).await
        {
            view.apply(&event).expect("apply");
        }
        assert!(view.release("shop", "staging", 1).is_none());
        assert!(view.pins_of("shop", "staging", 1).is_none());
        assert_eq!(
            format!("{:?}", view.pins),
            format!("{:?}", View::load(&store).await.expect("reload").pins)
        );
    }

    /// A service to place: the fields do not matter to the view.
    pub(crate) fn service() -> berth_spec::model::Service {
        use berth_spec::model::{
            Amount, Cpu, Duration, Memory, Placement, Process, Resources, RestartPolicy, Rollout,
            Service,
        };
        Service {
            process: Some(Process {
                command: vec!["berth".into(), "whoami".into()],
                user: None,
            }),
            image: None,
            command: None,
            env: BTreeMap::new(),
            secrets: vec![],
            ports: BTreeMap::new(),
            replicas: 1,
            health: None,
            route: None,
            rollout: Rollout::rolling(
                Amount::Count(1),
                Amount::Count(0),
                Duration::from_millis(600_000),
            ),
            depends_on: vec![],
            stop_grace: Duration::from_millis(10_000),
            volumes: vec![],
            resources: Resources {
                cpu: Cpu { millis: 100 },
                memory: Memory { bytes: 1 << 20 },
            },
            placement: Placement {
                spread: vec![],
                constraints: vec![],
            },
            restart: RestartPolicy::Always,
        }
    }

    /// An instance record of `stack`/`env` on `node`.
    pub(crate) fn instance(id: &str, stack: &str, env: &str, node: &str) -> InstanceRecord {
        InstanceRecord {
            spec: berth_api::InstanceSpec {
                id: id.to_string(),
                stack: stack.to_string(),
                service: "web".to_string(),
                release: 1,
                node: node.to_string(),
                spec: service(),
                image_id: None,
                secret_env: BTreeMap::new(),
            },
            env: env.to_string(),
            region: "default".to_string(),
            desired: Desired::Run,
            created_ms: 0,
            desired_since_ms: None,
            status: None,
            secret_versions: BTreeMap::new(),
            sealed_env: BTreeMap::new(),
        }
    }

    fn event(revision: i64, kind: EventKind, key: String, value: Vec<u8>) -> WatchEvent {
        WatchEvent {
            revision,
            kind,
            kv: KeyValue {
                key,
                value,
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
            prev: None,
        }
    }

    #[test]
    fn every_event_of_one_transaction_is_applied() {
        // A transaction's events share its revision: a deploy writes its release and its
        // rollout at once, a heartbeat all its statuses. (The first version of `apply` took
        // only the first of them.)
        let mut view = View::default();
        for id in ["i1", "i2", "i3"] {
            let record = instance(id, "shop", "prod", "n1");
            let e = event(
                7,
                EventKind::Put,
                keys::instance(id),
                crate::state::encode(&record),
            );
            view.apply(&e).expect("apply");
        }
        assert_eq!(view.instances_on("n1").count(), 3);
        // An older event (a replay) is still ignored.
        let old = instance("i0", "shop", "prod", "n1");
        let e = event(
            6,
            EventKind::Put,
            keys::instance("i0"),
            crate::state::encode(&old),
        );
        view.apply(&e).expect("apply");
        assert!(view.instance("i0").is_none());
    }

    #[test]
    fn the_indexes_equal_a_full_scan_after_random_puts_and_deletes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut view = View::default();
        let nodes = ["n1", "n2", "n3", "n4"];
        let stacks = [("shop", "prod"), ("shop", "staging"), ("blog", "prod")];
        for revision in 1..=3_000i64 {
            let id = format!("i{}", rng.gen_range(0..60));
            let event = if rng.gen_bool(0.3) {
                event(revision, EventKind::Delete, keys::instance(&id), vec![])
            } else {
                // A record may move to another node or stack: the index must follow it.
                let (stack, env) = stacks[rng.gen_range(0..stacks.len())];
                let node = nodes[rng.gen_range(0..nodes.len())];
                let record = instance(&id, stack, env, node);
                let value = crate::state::encode(&record);
                event(revision, EventKind::Put, keys::instance(&id), value)
            };
            view.apply(&event).expect("apply");
            for node in nodes.iter().chain(&["nowhere"]) {
                let indexed: Vec<&str> = view
                    .instances_on(node)
                    .map(|r| r.value.spec.id.as_str())
                    .collect();
                let scanned: Vec<&str> = view
                    .instances()
                    .values()
                    .filter(|r| r.value.spec.node == *node)
                    .map(|r| r.value.spec.id.as_str())
                    .collect();
                assert_eq!(indexed, scanned, "node {node} at revision {revision}");
            }
            for (stack, env) in stacks {
                let indexed: Vec<&str> = view
                    .instances_of(stack, env)
                    .map(|r| r.value.spec.id.as_str())
                    .collect();
                let scanned: Vec<&str> = view
                    .instances()
                    .values()
                    .filter(|r| r.value.spec.stack == stack && r.value.env == env)
                    .map(|r| r.value.spec.id.as_str())
                    .collect();
                assert_eq!(indexed, scanned, "{stack}/{env} at revision {revision}");
            }
            // No empty entries linger: the indexes stay bounded by the records.
            assert!(view.by_node.values().all(|ids| !ids.is_empty()));
            assert!(view.by_stack.values().all(|ids| !ids.is_empty()));
        }
    }

    #[test]
    fn apply_says_which_node_and_whether_routing_changed() {
        let mut view = View::default();
        let mut record = instance("i1", "shop", "prod", "n1");
        let put = |rev, r: &InstanceRecord| {
            event(
                rev,
                EventKind::Put,
                keys::instance(&r.spec.id),
                crate::state::encode(r),
            )
        };
        let touched = view.apply(&put(1, &record)).expect("apply");
        assert_eq!(touched.nodes, BTreeSet::from(["n1".to_string()]));
        assert!(!touched.routing, "a pending instance is no endpoint");
        // A status report that is not healthy: nobody's answer changed.
        record.status = Some(berth_api::InstanceStatus {
            id: "i1".into(),
            state: InstanceState::Starting,
            pid: None,
            ports: BTreeMap::from([("http".to_string(), 8080)]),
            restarts: 0,
            message: None,
            since_ms: 1,
            image_id: None,
        });
        assert!(view.apply(&put(2, &record)).expect("apply").is_empty());
        // Healthy: the routers' table changed, the agent's desired set did not.
        if let Some(s) = record.status.as_mut() {
            s.state = InstanceState::Healthy;
        }
        let touched = view.apply(&put(3, &record)).expect("apply");
        assert!(touched.routing && touched.nodes.is_empty());
        assert_eq!(view.routing_revision(), 3);
        // Stopping it: both.
        record.desired = Desired::Stop;
        let touched = view.apply(&put(4, &record)).expect("apply");
        assert!(touched.routing);
        assert_eq!(touched.nodes, BTreeSet::from(["n1".to_string()]));
        // The gc generation reaches every agent.
        let gc = event(
            5,
            EventKind::Put,
            keys::GC_GENERATION.to_string(),
            b"1".to_vec(),
        );
        assert!(view.apply(&gc).expect("apply").all_nodes);
    }
}
