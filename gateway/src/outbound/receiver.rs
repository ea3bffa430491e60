//! The consumer end of a connection's queue: the writer (or the control plane) takes
//! items off it one at a time, and closing it lets go of the socket.

use super::{Outbound, Shared};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Consumer end, handed to [`run_writer`](super::run_writer).
pub struct OutboundReceiver {
    pub(super) shared: Arc<Shared>,
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.close_queue();
    }
}

impl OutboundReceiver {
    /// The next item, for a consumer that is not a socket writer (the control plane).
    pub async fn recv(&mut self) -> Option<Outbound> {
        let item = self.next().await?;
        self.shared
            .bytes
            .fetch_sub(item.weight(), Ordering::Relaxed);
        Some(item)
    }

    /// The next item, waiting for one; `None` once every producer is gone and the queue
    /// is empty, or after [`close_queue`](Self::close_queue). Cancel-safe: an item is
    /// only taken by the poll that returns it.
    pub(super) async fn next(&mut self) -> Option<Outbound> {
        loop {
            if self.shared.stopping.load(Ordering::Relaxed) {
                return None; // closing: what is still queued is not written
            }
            match self.try_next() {
                Ok(item) => return Some(item),
                Err(true) => return None,
                Err(false) => self.shared.queued.notified().await,
            }
        }
    }

    /// The next item if one is queued; `Err(true)` when none ever will be. The writer is
    /// busy from here until [`settle`](Self::settle).
    pub(super) fn try_next(&mut self) -> Result<Outbound, bool> {
        let mut items = self.shared.items();
        if let Some(item) = items.queue.pop_front() {
            items.busy = true;
            if items.queue.is_empty() {
                // Give the memory back, even a single reply's few slots: most connections
                // are idle most of the time, and an idle one holds none (256 bytes each
                // with four slots kept). A busy socket allocates once per batch again.
                items.queue = VecDeque::new();
            }
            return Ok(item);
        }
        Err(items.closed || items.senders == 0)
    }

    /// Everything taken so far is on the socket: if nothing else is queued, the fast
    /// path may write again.
    pub(super) fn settle(&mut self) {
        let mut items = self.shared.items();
        if items.queue.is_empty() {
            items.busy = false;
        }
    }

    /// Stops the queue: what is queued is dropped, nothing more is taken, and the fast
    /// path lets go of the socket.
    pub(super) fn close_queue(&mut self) {
        let mut items = self.shared.items();
        items.closed = true;
        items.queue = VecDeque::new();
        items.fast = None;
        drop(items);
        self.shared
            .wire_at
            .store(std::ptr::null_mut(), Ordering::Relaxed);
    }
}

#[cfg(any(test, feature = "testing"))]
impl OutboundReceiver {
    /// Takes one queued item without a writer (tests only).
    pub fn try_recv_for_test(&mut self) -> Option<Outbound> {
        self.try_next().ok()
    }

    /// Waits for an item as the writer does, woken as it is (tests only).
    pub async fn recv_for_test(&mut self) -> Option<Outbound> {
        self.next().await
    }
}
