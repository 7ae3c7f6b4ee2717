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
//! elsewhere. Callers use the accessor methods, not the maps, so indexes can be added behind
//! them without changing a caller.

use std::collections::BTreeMap;

use berth_api::control::{MaintenanceView, Release};
use berth_store::{EventKind, KeyValue, Store, WatchEvent};

use crate::keys;
use crate::rollouts::RolloutRecord;
use crate::state::{decode, InstanceRecord, NodeRecord, SecretRecord, StateError, Versioned};

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
        Ok(view)
    }

    /// Folds one watch event in. Events must come in revision order, none older than
    /// [`View::revision`]; an older one is ignored (a re-watch may replay it). One transaction
    /// is several events at the same revision, so an event *at* the view's revision is still
    /// applied (applying an event again is harmless: puts and deletes are idempotent). A record that
    /// cannot be decoded fails with the key named, and the view keeps the record's previous
    /// value (it never holds a half-applied event).
    pub fn apply(&mut self, event: &WatchEvent) -> Result<(), StateError> {
        if event.revision < self.revision {
            return Ok(());
        }
        self.revision = event.revision;
        match event.kind {
            EventKind::Put => self.put(&event.kv),
            EventKind::Delete => {
                self.delete(&event.kv.key);
                Ok(())
            }
        }
    }

    fn put(&mut self, kv: &KeyValue) -> Result<(), StateError> {
        let key = kv.key.as_str();
        // Image pins: their own keys, merged into the release they pin (see `keys`).
        if key.starts_with(keys::PINS) {
            return self.put_pin(kv);
        }
        fn versioned<T>(value: T, kv: &KeyValue) -> Versioned<T> {
            Versioned {
                value,
                mod_revision: kv.mod_revision,
            }
        }
        if let Some(name) = key.strip_prefix(keys::NODES) {
            let record: NodeRecord = decode(key, &kv.value)?;
            self.nodes.insert(name.to_string(), versioned(record, kv));
        } else if let Some(id) = key.strip_prefix(keys::INSTANCES) {
            let record: InstanceRecord = decode(key, &kv.value)?;
            self.instances.insert(id.to_string(), versioned(record, kv));
        } else if key.starts_with(keys::ROLLOUTS) {
            let record: RolloutRecord = decode(key, &kv.value)?;
            let at = (record.stack.clone(), record.env.clone());
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
            }
        } else if key == keys::GC_GENERATION {
            let generation: u64 = decode(key, &kv.value)?;
            self.gc_generation = (generation, kv.mod_revision);
        }
        Ok(())
    }

    fn delete(&mut self, key: &str) {
        if key.starts_with(keys::PINS) {
            self.delete_pin(key);
        } else if let Some(name) = key.strip_prefix(keys::NODES) {
            self.nodes.remove(name);
        } else if let Some(id) = key.strip_prefix(keys::INSTANCES) {
            self.instances.remove(id);
        } else if let Some(rest) = key.strip_prefix(keys::ROLLOUTS) {
            if let Some((stack, env)) = rest.split_once('/') {
                self.rollouts.remove(&(stack.to_string(), env.to_string()));
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
                self.maintenance
                    .remove(&(stack.to_string(), service.to_string()));
            }
        } else if key == keys::GC_GENERATION {
            self.gc_generation = (0, 0);
        }
    }

    /// A pin key written: remember it, and merge it into its release if that is held.
    fn put_pin(&mut self, kv: &KeyValue) -> Result<(), StateError> {
        let Some((stack, env, number, service)) = keys::parse_pin(&kv.key) else {
            return Ok(());
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
        Ok(())
    }

    /// A pin key deleted (with its release, by retention): forget it, and take it out of the
    /// release if that is still held and its id came from the pin.
    fn delete_pin(&mut self, key: &str) {
        let Some((stack, env, number, service)) = keys::parse_pin(key) else {
            return;
        };
        let at = (stack.to_string(), env.to_string(), number);
        let Some(pins) = self.pins.get_mut(&at) else {
            return;
        };
        let Some(id) = pins.remove(service) else {
            return;
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
    pub fn instances_on(&self, node: &str) -> impl Iterator<Item = &Versioned<InstanceRecord>> {
        let node = node.to_string();
        self.instances
            .values()
            .filter(move |r| r.value.spec.node == node)
    }

    /// The instances of a stack in one environment (any desired state).
    pub fn instances_of(
        &self,
        stack: &str,
        env: &str,
    ) -> impl Iterator<Item = &Versioned<InstanceRecord>> {
        let (stack, env) = (stack.to_string(), env.to_string());
        self.instances
            .values()
            .filter(move |r| r.value.spec.stack == stack && r.value.env == env)
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
}

#[cfg(test)]
mod tests {
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
            value: "v".into(),
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
}
