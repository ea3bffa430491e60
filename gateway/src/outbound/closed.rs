//! The future a connection's closing resolves ([`Shared::closed`](super::Shared)).

use std::sync::atomic::{AtomicBool, Ordering};

pin_project_lite::pin_project! {
    /// [`Shared::closed`]'s future. Written out rather than an async fn: it sits in the
    /// socket loop's `select!`, whose state every connection carries for its life, and
    /// an async fn's state (the `Notified`, a reference, its own state) was 24 bytes more.
    pub(super) struct Closed<'a> {
        // Created with the future: it sees every `notify_waiters` from then on, and the
        // flag covers a stop before it, so a stop in between is not missed.
        #[pin]
        pub(super) notified: tokio::sync::futures::Notified<'a>,
        pub(super) stopping: &'a AtomicBool,
    }
}

impl std::future::Future for Closed<'_> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        if this.stopping.load(Ordering::Acquire) {
            return std::task::Poll::Ready(());
        }
        this.notified.poll(cx)
    }
}
