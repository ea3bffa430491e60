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

/// What became of a live message handed to a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Written to the socket by the fast path: the fan-out counts it (metrics).
    Written,
    /// Queued for the writer, which counts it when it writes it.
    Queued,
    /// Dropped: the member has it already, or left its room.
    Skipped,
    /// The connection is closing.
    Closing,
}

impl Delivered {
    /// Whether the member took it (written, queued or had it): not closing.
    pub fn taken(self) -> bool {
        self != Delivered::Closing
    }
}

impl Pusher {
    /// Delivers a live message `via` the fast path or the queue.
    pub fn deliver(&self, env: &Arc<Envelope>, via: Via) -> Delivered {
        if via == Via::Direct && !self.0.stopping.load(Ordering::Relaxed) {
            if let Some(done) = self.0.write_now(env) {
                return done;
            }
        }
        if self
            .0
            .push_waking(Outbound::Msg(env.clone()), via != Via::Quiet)
        {
            Delivered::Queued
        } else {
            Delivered::Closing
        }
    }

    /// Asks the CPU to fetch what [`deliver`](Self::deliver) reads of this member's queue
    /// (the first two cache lines of its allocation: see `Shared`), without waiting for
    /// it. A fan-out calls it two members ahead of the one it writes to: each write takes
    /// microseconds of kernel time, long enough for the lines to arrive, and the writes in
    /// between have evicted them since the last message. (Two, not one: the member after
    /// this one has its socket prefetched from these lines by
    /// [`prefetch_wire`](Self::prefetch_wire).)
    pub fn prefetch(&self) {
        // The value starts after the Arc's two counts: the pointer is in the
        // allocation's first line, 64 bytes on in its second.
        prefetch_two_lines(Arc::as_ptr(&self.0).cast());
    }

    /// Asks the CPU to fetch this member's socket (the `Wire` the fast path sends
    /// through, an allocation of its own, the next miss of a delivery after the queue's
    /// lines). It reads where the socket is from those lines, so a fan-out calls it one
    /// member after [`prefetch`](Self::prefetch): for the next member, whose lines were
    /// asked for a delivery earlier.
    pub fn prefetch_wire(&self) {
        let p = self.0.wire_at.load(Ordering::Relaxed).cast_const();
        // A socket freed since (its queue closed meanwhile) costs a useless fetch, no
        // fault: a prefetch reads nothing.
        if !p.is_null() {
            prefetch_two_lines(p);
        }
    }

    /// Wakes the writer for what was queued [`Via::Quiet`].
    pub fn wake(&self) {
        self.0.queued.notify_one();
    }
}

/// Asks the CPU for the cache line at `p` and the one after it, without waiting. Only a
/// hint: on other targets than x86_64 it does nothing.
#[inline(always)]
fn prefetch_two_lines(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = p.cast::<i8>();
        // SAFETY: SSE is part of every x86_64 CPU (the target's baseline), and a
        // prefetch dereferences nothing: it cannot fault, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
