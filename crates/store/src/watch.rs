//! [`WatchStream`]: the receiving end of a watch, the same type for every backend.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::{StoreError, WatchEvent};

/// Ordered, gap-free changes under a prefix, as returned by [`crate::Store::watch`].
///
/// Backed by a bounded channel fed by a backend task: a slow reader makes that task wait (it
/// never drops events), and the task stops when this stream is dropped. Yields `Err` at most
/// once (e.g. [`StoreError::Compacted`] after falling too far behind) and then ends. `None`
/// means the store was closed.
///
/// Also a [`futures::Stream`], for adapters such as server-sent events.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent, StoreError>>,
}

impl WatchStream {
    /// Wraps the receiving end of a backend's channel. A backend sends events in revision order
    /// and, after an `Err`, nothing more.
    pub fn from_receiver(rx: mpsc::Receiver<Result<WatchEvent, StoreError>>) -> Self {
        WatchStream { rx }
    }

    /// The next event; `None` once the watch has ended.
    pub async fn recv(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        self.rx.recv().await
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchEvent, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}
