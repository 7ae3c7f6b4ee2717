//! The live cluster view: a [`View`] kept current by list-then-watch, shared by handlers,
//! long-polls and controllers, so no request path scans the store.
//!
//! Readers take [`LiveView::read`] (a read guard: decide, then let go before any `.await`).
//! A handler that has just written and must see its own write waits with
//! [`LiveView::caught_up`] for the revision its transaction returned.

use std::sync::{RwLock, RwLockReadGuard};

use berth_store::Store;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

use crate::state::StateError;
use crate::view::View;

/// A [`View`] and the revision it is current to, for waiters.
pub struct LiveView {
    view: RwLock<View>,
    revision: watch::Sender<i64>,
}

impl LiveView {
    /// A live view starting from `view` (normally [`View::load`] at start-up).
    pub fn new(view: View) -> LiveView {
        let revision = view.revision;
        LiveView {
            view: RwLock::new(view),
            revision: watch::channel(revision).0,
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

    /// Waits until the view is current to at least `revision` (a write's own revision).
    pub async fn caught_up(&self, revision: i64) {
        let mut rx = self.revision.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// A receiver that changes whenever the view applies a change.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Replaces the view (after a re-list).
    fn replace(&self, view: View) {
        let revision = view.revision;
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        self.revision.send_replace(revision);
    }

    /// Keeps the view current until `stop`: watches from the view's revision + 1 and applies
    /// every event; when the watch ends or its history was compacted, lists again.
    pub async fn follow(&self, store: &dyn Store, mut stop: watch::Receiver<bool>) {
        loop {
            let from = self.revision() + 1;
            let mut stream = match store.watch("/", from).await {
                Ok(s) => s.peekable(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the store; listing again");
                    if self.relist(store, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = stop.changed() => return,
                    item = stream.next() => match item {
                        Some(Ok(event)) => {
                            let applied = {
                                let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
                                Self::apply_logged(&mut view, &event);
                                // A transaction is several events at one revision: apply the
                                // rest of it that is already here under the same lock, so a
                                // reader woken for this revision sees the whole transaction.
                                while let Some(Some(Ok(more))) = std::pin::Pin::new(&mut stream)
                                    .next_if(|i| matches!(i, Ok(e) if e.revision == event.revision))
                                    .now_or_never()
                                {
                                    Self::apply_logged(&mut view, &more);
                                }
                                view.revision
                            };
                            self.revision.send_replace(applied);
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
    }

    /// Folds one event in. An undecodable record is skipped, named in the log; the revision
    /// still moves on so waiters are not stuck behind it.
    fn apply_logged(view: &mut View, event: &berth_store::WatchEvent) {
        if let Err(e) = view.apply(event) {
            tracing::warn!(error = %e, "ignoring a store record the view cannot read");
            view.revision = view.revision.max(event.revision);
        }
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

fn log_relist_error(e: &StateError) {
    tracing::warn!(error = %e, "cannot list the store for the cluster view; retrying");
}
