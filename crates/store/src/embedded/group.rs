//! The group-commit queue: a leader/follower queue on tokio's blocking pool.
//!
//! A caller of [`crate::Store::txn`] puts its transaction and a oneshot sender in the queue and
//! waits (asynchronously, holding no thread) for the answer. If no writer is draining the queue,
//! the caller starts one on the blocking pool. The writer takes the queue's head as one group
//! (bounded by [`EmbeddedOptions::max_group_txns`] and [`EmbeddedOptions::max_group_bytes`]),
//! commits it with one fsync ([`Inner::run_group`]), answers its callers, and takes the next
//! group: whatever arrived during that commit. It stops when the queue is empty. Whether a writer
//! runs is decided under the queue's lock, so a transaction is never left without one; nothing
//! polls or sleeps.
//!
//! [`EmbeddedOptions::max_group_txns`]: super::EmbeddedOptions::max_group_txns
//! [`EmbeddedOptions::max_group_bytes`]: super::EmbeddedOptions::max_group_bytes

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};

use tokio::sync::oneshot;

use super::Inner;
use crate::{CompareTarget, Op, StoreError, Txn, TxnResponse};

/// The waiting transactions, and whether a writer is draining them.
#[derive(Default)]
pub(super) struct Queue {
    waiting: VecDeque<Pending>,
    /// A writer task runs (or is about to) and will take `waiting` before it stops.
    draining: bool,
}

/// One queued transaction and where its answer goes.
struct Pending {
    txn: Txn,
    /// [`txn_bytes`] of `txn`, for the group's byte budget.
    bytes: usize,
    reply: oneshot::Sender<Result<TxnResponse, StoreError>>,
}

/// Queues `txn` for the next group commit, starts a writer if none runs, and waits for the
/// answer, which comes only after the fsync that holds the transaction.
///
/// If the caller stops waiting (its future is dropped), the transaction still runs, as a
/// transaction handed to the blocking pool did before group commit.
pub(super) async fn submit(inner: &Arc<Inner>, txn: Txn) -> Result<TxnResponse, StoreError> {
    let (reply, answer) = oneshot::channel();
    let bytes = txn_bytes(&txn);
    let start_writer = {
        let mut q = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.waiting.push_back(Pending { txn, bytes, reply });
        !std::mem::replace(&mut q.draining, true)
    };
    if start_writer {
        let writer = Writer {
            inner: inner.clone(),
            stopped: false,
        };
        // Detached: the writer answers through the oneshot senders.
        drop(tokio::task::spawn_blocking(move || writer.drain()));
    }
    answer.await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(
            "the store's writer stopped before committing this transaction (the runtime may be \
             shutting down); it may or may not have been stored: re-read and retry"
                .into(),
        ))
    })
}

/// The running writer. Owned by the blocking task, so that if the task never runs (the runtime
/// shuts down first) or panics, dropping it lets the next caller start a new writer.
struct Writer {
    inner: Arc<Inner>,
    /// Set when `drain` found the queue empty and cleared `draining` itself.
    stopped: bool,
}

impl Writer {
    /// Commits groups until the queue is empty.
    ///
    /// The last group's callers are answered only after this writer let go of the store, so a
    /// caller that drops its last handle once answered closes the file (and can reopen it)
    /// right away, as before group commit. Earlier groups are answered while the writer holds
    /// the store, which is then held by the callers still waiting anyway.
    fn drain(mut self) {
        let Some(mut group) = self.next_group() else {
            return;
        };
        loop {
            let (txns, replies): (Vec<Txn>, Vec<_>) =
                group.into_iter().map(|p| (p.txn, p.reply)).unzip();
            let results = self.inner.run_group(&txns);
            match self.next_group() {
                Some(next) => {
                    answer(replies, results);
                    group = next;
                }
                None => {
                    drop(self); // `stopped` is set: lets go of the store
                    answer(replies, results);
                    return;
                }
            }
        }
    }

    /// The next group from the queue, or `None` (and the writer marked stopped) if it is empty.
    fn next_group(&mut self) -> Option<Vec<Pending>> {
        let mut q = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if q.waiting.is_empty() {
            q.draining = false;
            self.stopped = true;
            return None;
        }
        let options = &self.inner.options;
        Some(take_group(
            &mut q.waiting,
            options.max_group_txns,
            options.max_group_bytes,
        ))
    }
}

/// Sends each caller its result. A caller that stopped waiting is not an error.
fn answer(
    replies: Vec<oneshot::Sender<Result<TxnResponse, StoreError>>>,
    results: Vec<Result<TxnResponse, StoreError>>,
) {
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // The task never ran or panicked: let the next caller start a writer. The transactions
        // still queued are dropped unanswered (their callers get `Unavailable`), as the runtime
        // that would have run them is going away or the writer hit a bug.
        let mut q = self
            .inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.draining = false;
        q.waiting.clear();
    }
}

/// Takes the head of `waiting` as one group: at least one transaction, then more while the
/// group stays within `max_txns` transactions and `max_bytes` bytes.
fn take_group(waiting: &mut VecDeque<Pending>, max_txns: usize, max_bytes: usize) -> Vec<Pending> {
    let mut group = Vec::with_capacity(waiting.len().min(max_txns));
    let mut bytes = 0usize;
    while let Some(next) = waiting.front() {
        if !group.is_empty() && (group.len() >= max_txns || bytes + next.bytes > max_bytes) {
            break;
        }
        bytes = bytes.saturating_add(next.bytes);
        group.extend(waiting.pop_front());
    }
    group
}

/// About how many bytes `txn` writes and compares: its keys and values.
fn txn_bytes(txn: &Txn) -> usize {
    let op = |op: &Op| match op {
        Op::Put { key, value } => key.len() + value.len(),
        Op::Delete { key } => key.len(),
        Op::DeletePrefix { prefix } => prefix.len(),
    };
    let compares = txn.compares.iter().map(|c| {
        c.key.len()
            + match &c.target {
                CompareTarget::Value(v) => v.len(),
                CompareTarget::ModRevision(_) => 8,
            }
    });
    txn.success
        .iter()
        .chain(&txn.failure)
        .map(op)
        .chain(compares)
        .fold(0usize, usize::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(value_len: usize) -> Pending {
        Pending {
            txn: Txn {
                compares: vec![],
                success: vec![Op::put("k", vec![0u8; value_len])],
                failure: vec![],
            },
            bytes: 1 + value_len,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_group_is_bounded_by_count_and_bytes_and_takes_at_least_one() {
        let mut q: VecDeque<Pending> = (0..10).map(|_| pending(9)).collect();
        assert_eq!(take_group(&mut q, 4, 1 << 20).len(), 4);
        assert_eq!(q.len(), 6);
        // 10 bytes each: 25 bytes hold two.
        assert_eq!(take_group(&mut q, 256, 25).len(), 2);
        // Bigger than the whole budget: still one.
        let mut big: VecDeque<Pending> = [pending(100), pending(1)].into_iter().collect();
        assert_eq!(take_group(&mut big, 256, 10).len(), 1);
        assert_eq!(take_group(&mut big, 256, 10).len(), 1);
        assert!(big.is_empty());
        assert!(take_group(&mut big, 256, 10).is_empty());
    }

    #[test]
    fn txn_bytes_counts_keys_values_and_compares() {
        let txn = Txn {
            compares: vec![crate::Compare::value("ab", "xyz")],
            success: vec![Op::put("k", "vv"), Op::delete("dd")],
            failure: vec![Op::delete_prefix("p/")],
        };
        assert_eq!(txn_bytes(&txn), 5 + 3 + 2 + 2);
    }
}
