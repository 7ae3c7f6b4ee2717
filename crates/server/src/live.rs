//! The live cluster view: a [`View`] kept current by list-then-watch, shared by handlers,
//! long-polls and controllers, so no request path scans the store.
//!
//! Readers take [`LiveView::read`] (a read guard: decide, then let go before any `.await`).
//! A handler that has just written and must see its own write waits with
//! [`LiveView::caught_up`] for the revision its transaction returned.
//!
//! Long-polls wait on indexed wake-ups: [`LiveView::node_changes`] changes only when an event
//! touched that node's desired instances (or what every agent is sent), and
//! [`LiveView::routing_changes`] only when the routing table's inputs changed (see
//! [`crate::view::Touched`]). A heartbeat's status report on node A wakes nobody; a new
//! instance on node A wakes A's agent and, once healthy, the routers — not 10,000 agents.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use berth_store::{Store, WatchEvent};
use futures::StreamExt;
use tokio::sync::watch;

use crate::state::StateError;
use crate::view::{Touched, View};

/// The longest [`LiveView::caught_up`] waits.
pub const CATCH_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A [`View`] and the revision it is current to, for waiters.
pub struct LiveView {
    view: RwLock<View>,
    revision: watch::Sender<i64>,
    /// Node name → bumped when that node's answer may have changed. Only registered nodes
    /// get one (bounded by the node records); removed with the node.
    nodes: Mutex<HashMap<String, watch::Sender<i64>>>,
    /// The view's routing revision, sent when the routing table's inputs changed.
    routing: watch::Sender<i64>,
    /// When this server's view reached each recent revision (see [`LiveView::seen_at`]), and
    /// the revision at or below which nothing is known (the start, then the oldest forgotten).
    seen: Mutex<(i64, VecDeque<(i64, u64)>)>,
    /// The wall clock that stamps [`LiveView::seen`].
    clock: crate::clock::Clock,
}

/// How many revisions [`LiveView::seen_at`] remembers: the store keeps no time per change, so
/// the event stream's times come from here; older changes have none.
pub const SEEN_REVISIONS: usize = 4096;

impl LiveView {
    /// A live view starting from `view` (normally [`View::load`] at start-up).
    pub fn new(view: View) -> LiveView {
        let revision = view.revision;
        let routing = view.routing_revision();
        LiveView {
            view: RwLock::new(view),
            revision: watch::channel(revision).0,
            nodes: Mutex::new(HashMap::new()),
            routing: watch::channel(routing).0,
            seen: Mutex::new((revision, VecDeque::new())),
            clock: crate::clock::Clock::system(),
        }
    }

    /// The same view, stamping revisions with `clock` (tests drive it).
    pub fn with_clock(mut self, clock: crate::clock::Clock) -> LiveView {
        self.clock = clock;
        self
    }

    /// When (ms since the epoch) this server's view reached `revision`: the time of the first
    /// remembered revision at or after it, so at most the batch's latency late. `None` for a
    /// revision older than the last [`SEEN_REVISIONS`] or than this server's start.
    pub fn seen_at(&self, revision: i64) -> Option<u64> {
        let guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (floor, seen) = &*guard;
        if revision <= *floor {
            // Listed at start-up, or forgotten: it may have happened long before.
            return None;
        }
        let i = seen.partition_point(|(r, _)| *r < revision);
        seen.get(i).map(|(_, ms)| *ms)
    }

    fn stamp(&self, revision: i64) {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (floor, seen) = &mut *guard;
        if revision <= *floor || seen.back().is_some_and(|(r, _)| *r >= revision) {
            return;
        }
        if seen.len() == SEEN_REVISIONS {
            if let Some((forgotten, _)) = seen.pop_front() {
                *floor = forgotten;
            }
        }
        seen.push_back((revision, self.clock.now_ms()));
    }

    /// A receiver (a counter) that changes when node `name`'s desired instances (or what every agent is
    /// sent) may have changed; `None` for a node the view does not hold (then wait on
    /// [`LiveView::subscribe`]), so the map stays bounded by the registered nodes.
    pub fn node_changes(&self, name: &str) -> Option<watch::Receiver<i64>> {
        // Checked under the map's lock, which the follower also takes after applying an
        // event: a node removed meanwhile is not given a wake-up nobody would clear.
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = nodes.get(name) {
            return Some(tx.subscribe());
        }
        self.read().node(name)?;
        let (tx, rx) = watch::channel(0);
        nodes.insert(name.to_string(), tx);
        Some(rx)
    }

    /// A receiver that changes when the routing table's inputs changed.
    pub fn routing_changes(&self) -> watch::Receiver<i64> {
        self.routing.subscribe()
    }

    /// Wakes the long-polls `touched` concerns (after the view holds the change).
    fn wake(&self, touched: &Touched, routing_revision: i64) {
        if touched.routing {
            self.routing.send_replace(routing_revision);
        }
        if touched.nodes.is_empty() && !touched.all_nodes {
            return;
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let bump = |tx: &watch::Sender<i64>| tx.send_modify(|n| *n = n.wrapping_add(1));
        if touched.all_nodes {
            nodes.values().for_each(bump);
        } else {
            for name in &touched.nodes {
                if let Some(tx) = nodes.get(name) {
                    bump(tx);
                }
            }
        }
        // A removed node's long-poll was woken above; its wake-up goes with it.
        let view = self.read();
        for name in &touched.nodes {
            if view.node(name).is_none() {
                nodes.remove(name);
            }
        }
    }

    /// The view as it is now. Hold the guard only for synchronous work: never across an
    /// `.await`, or the follower cannot apply changes meanwhile.
    pub fn read(&self) -> RwLockReadGuard<'_, View> {
        // A panic while a writer held the lock leaves a view that applied whole events only
        // (`View::apply` never half-applies), so a poisoned lock is still a consistent view.
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The revision the view is current to.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Waits until the view is current to at least `revision` (a write's own revision), at
    /// most [`CATCH_UP_LIMIT`]: true once it is. The follower applies every revision, also of
    /// records it cannot read, so this returns as soon as the watch has delivered it; the
    /// limit keeps a caller from hanging forever when the follower has stopped (the server
    /// shutting down, or a store whose watch keeps failing): the write is done either way, and
    /// the caller answers from the view it has.
    pub async fn caught_up(&self, revision: i64) -> bool {
        let mut rx = self.revision.subscribe();
        let reached = matches!(
            tokio::time::timeout(CATCH_UP_LIMIT, rx.wait_for(|r| *r >= revision)).await,
            Ok(Ok(_))
        );
        if !reached {
            tracing::warn!(
                revision,
                view = self.revision(),
                "the cluster view has not caught up with a write in time; answering from the view as it is"
            );
        }
        reached
    }

    /// A receiver that changes whenever the view applies a change.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Replaces the view (after a re-list).
    fn replace(&self, view: View) {
        let revision = view.revision;
        let routing = view.routing_revision();
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        self.revision.send_replace(revision);
        self.wake(&Touched::everything(), routing);
    }

    /// Keeps the view current until `stop`: watches from the view's revision + 1 and applies
    /// every event; when the watch ends or its history was compacted, lists again.
    pub async fn follow(&self, store: &dyn Store, mut stop: watch::Receiver<bool>) {
        loop {
            let from = self.revision() + 1;
            let mut stream = match store.watch("/", from).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the store; listing again");
                    if self.relist(store, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                let first = tokio::select! {
                    _ = stop.changed() => return,
                    item = stream.next() => item,
                };
                match first {
                    Some(Ok(event)) => {
                        let (batch, end) = ready_batch(event, &mut stream).await;
                        self.apply_batch(&batch, !matches!(end, BatchEnd::Full));
                        match end {
                            BatchEnd::Drained | BatchEnd::Full => {}
                            BatchEnd::Ended(None) => break,
                            BatchEnd::Ended(Some(e)) => {
                                tracing::warn!(error = %e, "store watch ended; listing again");
                                if self.relist(store, &mut stop).await {
                                    return;
                                }
                                break;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "store watch ended; listing again");
                        if self.relist(store, &mut stop).await {
                            return;
                        }
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// Applies a batch of events under one write lock (so no reader sees part of it), then
    /// publishes the revision the view is complete to and wakes the long-polls it touched.
    /// `drained`: the stream had nothing more ready, so the last revision is whole; otherwise
    /// its other events may follow and only the revision before it is published.
    fn apply_batch(&self, batch: &[WatchEvent], drained: bool) {
        let Some(last) = batch.last() else {
            return;
        };
        let mut touched = Touched::default();
        let routing = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            for event in batch {
                match view.apply(event) {
                    Ok(t) => touched.merge(t),
                    // An undecodable record is skipped, named in the log; the revision still
                    // moves on so waiters are not stuck behind it.
                    Err(e) => {
                        tracing::warn!(error = %e, "ignoring a store record the view cannot read");
                        view.revision = view.revision.max(event.revision);
                    }
                }
            }
            view.routing_revision()
        };
        let complete = if drained {
            last.revision
        } else {
            last.revision - 1
        };
        if complete > self.revision() {
            self.stamp(complete);
            self.revision.send_replace(complete);
        }
        self.wake(&touched, routing);
    }

    /// Lists everything again; true if stopping. Retries every 500 ms while the store fails.
    async fn relist(&self, store: &dyn Store, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            match View::load(store).await {
                Ok(view) => {
                    self.replace(view);
                    return false;
                }
                Err(e) => log_relist_error(&e),
            }
            tokio::select! {
                _ = stop.changed() => return true,
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            if *stop.borrow() {
                return true;
            }
        }
    }
}

/// Most events folded in under one write lock.
const MAX_BATCH: usize = 4_096;

/// Why a batch of events ended.
enum BatchEnd {
    /// Nothing more was ready: the last revision is whole.
    Drained,
    /// [`MAX_BATCH`] events: the last revision may go on in the next batch.
    Full,
    /// The watch ended (`None`) or failed.
    Ended(Option<berth_store::StoreError>),
}

/// `first` and every event the stream has ready after it, up to [`MAX_BATCH`]. A
/// transaction's events arrive one after another: a batch ends on "nothing ready" only after
/// one yield to the store's watch task, so a transaction being sent is normally taken whole.
async fn ready_batch(
    first: WatchEvent,
    stream: &mut berth_store::WatchStream,
) -> (Vec<WatchEvent>, BatchEnd) {
    use futures::FutureExt;
    let mut batch = vec![first];
    let mut yielded = false;
    while batch.len() < MAX_BATCH {
        match stream.next().now_or_never() {
            Some(Some(Ok(event))) => {
                batch.push(event);
                yielded = false;
            }
            Some(Some(Err(e))) => return (batch, BatchEnd::Ended(Some(e))),
            Some(None) => return (batch, BatchEnd::Ended(None)),
            None if !yielded => {
                tokio::task::yield_now().await;
                yielded = true;
            }
            None => return (batch, BatchEnd::Drained),
        }
    }
    (batch, BatchEnd::Full)
}

fn log_relist_error(e: &StateError) {
    tracing::warn!(error = %e, "cannot list the store for the cluster view; retrying");
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_store::{EmbeddedStore, Op, Txn};

    #[tokio::test]
    async fn caught_up_sees_every_write_of_a_transaction_and_wakes_only_the_touched_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path().join("s.redb"))
            .await
            .expect("store");
        let node = |name: &str| crate::state::NodeRecord {
            registration: berth_api::control::RegisterRequest {
                name: name.to_string(),
                labels: Default::default(),
                resources: Default::default(),
                drivers: vec![],
                address: "127.0.0.1".to_string(),
                router: None,
                keep_labels: false,
            },
            registered_ms: 0,
            draining: false,
        };
        for name in ["n1", "n2"] {
            store
                .put(&crate::keys::node(name), crate::state::encode(&node(name)))
                .await
                .expect("put");
        }
        let live = std::sync::Arc::new(LiveView::new(View::load(&store).await.expect("load")));
        let (stop_tx, stop) = watch::channel(false);
        let store = std::sync::Arc::new(store);
        let follower = {
            let (live, store) = (live.clone(), store.clone());
            tokio::spawn(async move { live.follow(store.as_ref(), stop).await })
        };
        let mut n1 = live.node_changes("n1").expect("n1 is registered");
        let mut n2 = live.node_changes("n2").expect("n2 is registered");
        assert!(live.node_changes("unknown").is_none());
        n1.borrow_and_update();
        n2.borrow_and_update();
        let ops = (0..50)
            .map(|i| {
                let record = crate::view::tests::instance(&format!("i{i}"), "shop", "prod", "n1");
                Op::put(
                    crate::keys::instance(&record.spec.id),
                    crate::state::encode(&record),
                )
            })
            .collect();
        let done = store
            .txn(Txn {
                compares: vec![],
                success: ops,
                failure: vec![],
            })
            .await
            .expect("txn");
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            live.caught_up(done.revision),
        )
        .await
        .expect("caught up");
        assert_eq!(live.read().instances_on("n1").count(), 50);
        assert!(n1.has_changed().expect("open"), "n1's long-poll is woken");
        assert!(!n2.has_changed().expect("open"), "n2's is not");
        let _ = stop_tx.send(true);
        follower.await.expect("follower");
    }

    #[test]
    fn seen_at_knows_only_revisions_this_server_saw_and_remembers_a_bounded_number() {
        let now = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1_000));
        let clock = {
            let now = now.clone();
            crate::clock::Clock::from_fn(move || now.load(std::sync::atomic::Ordering::SeqCst))
        };
        let mut view = View::default();
        view.revision = 10;
        let live = LiveView::new(view).with_clock(clock);
        assert_eq!(live.seen_at(11), None, "nothing seen yet");
        live.stamp(12);
        now.store(2_000, std::sync::atomic::Ordering::SeqCst);
        live.stamp(15);
        assert_eq!(
            live.seen_at(10),
            None,
            "listed at start: its time is unknown"
        );
        assert_eq!(live.seen_at(11), Some(1_000), "published with revision 12");
        assert_eq!(live.seen_at(12), Some(1_000));
        assert_eq!(live.seen_at(13), Some(2_000));
        assert_eq!(live.seen_at(15), Some(2_000));
        assert_eq!(live.seen_at(16), None, "not reached yet");
        for r in 0..SEEN_REVISIONS as i64 {
            live.stamp(100 + r);
        }
        assert_eq!(live.seen_at(12), None, "forgotten past the bound");
        assert_eq!(live.seen_at(100), Some(2_000));
        assert_eq!(live.seen.lock().unwrap().1.len(), SEEN_REVISIONS);
    }

    /// A waiter for a revision the view never reaches (no follower) gives up after the limit
    /// instead of hanging (it waited forever before).
    #[tokio::test(start_paused = true)]
    async fn caught_up_gives_up_when_the_view_never_gets_there() {
        let live = LiveView::new(View::default());
        assert!(live.caught_up(0).await, "already there");
        let started = crate::clock::tokio_now();
        assert!(!live.caught_up(5).await);
        assert!(started.elapsed() >= CATCH_UP_LIMIT);
    }
}
