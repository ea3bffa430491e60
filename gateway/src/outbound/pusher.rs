//! A fan-out's handle on one member's queue: how a live message reaches the socket.

use super::{Outbound, Shared};
use crate::engine::Envelope;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A queue handle for one fan-out (see
/// [`OutboundQueue::pusher`](super::OutboundQueue::pusher)).
pub struct Pusher(pub(super) Arc<Shared>);

/// How a fan-out hands a live message to a member (the hub decides, per room).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Straight to the socket if nothing is ahead of it (the fast path,
    /// [`wire`](super::wire)), else queued.
    Direct,
    /// Queued, the writer woken.
    Queue,
    /// Queued, the writer not woken: whoever chose this wakes it soon ([`Pusher::wake`]),
    /// and by then it has more to write in the same syscall.
    Quiet,
}

impl Pusher {
    /// Delivers a live message `via` the fast path or the queue. False if the connection
    /// is closing.
    pub fn deliver(&self, env: &Arc<Envelope>, via: Via) -> bool {
        if via == Via::Direct && !self.0.stopping.load(Ordering::Relaxed) {
            if let Some(taken) = self.0.write_now(env) {
                return taken;
            }
        }
        self.0
            .push_waking(Outbound::Msg(env.clone()), via != Via::Quiet)
    }

    /// Wakes the writer for what was queued [`Via::Quiet`].
    pub fn wake(&self) {
        self.0.queued.notify_one();
    }
}
