//! Notifications after the fact: `message` (stored), `connected`, `disconnected`. Events
//! wait in an in-memory queue bounded by count (`queueSize`) and by bytes
//! ([`MAX_QUEUED_BYTES`]), the oldest dropped and counted beyond either, and are posted in
//! batches, retried with backoff until the backend answers 2xx (any body): at
//! least once while the gateway runs (a crashed gateway loses what was still queued).
//! A batch answered 413 (too large for the backend) goes again in halves; one event
//! answered so by itself is dropped and counted, or it would block the queue for good.

use super::client::{HookClient, HookError};
use crate::config::{EventsConfig, FailurePolicy, HookConfig};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod queue;

use queue::Queue;
pub use queue::MAX_QUEUED_BYTES;

/// One notification.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Event {
    /// A message was stored (not for duplicates or ephemeral messages).
    Message {
        /// Room or inbox.
        room: String,
        /// Its seq.
        seq: u64,
        /// The room's epoch.
        epoch: String,
        /// Message id.
        msg_id: String,
        /// Sender.
        from: String,
        /// Server time, Unix ms.
        ts: u64,
        /// The body as stored.
        body: Box<RawValue>,
    },
    /// A connection opened on `node`.
    Connected {
        /// The user.
        user: String,
        /// The connection's session id.
        session: String,
        /// The node.
        node: String,
        /// Unix ms.
        ts: u64,
    },
    /// A connection closed.
    Disconnected {
        /// The user.
        user: String,
        /// The connection's session id.
        session: String,
        /// The node.
        node: String,
        /// Unix ms.
        ts: u64,
        /// Close reason (`client closed`, `slow consumer`, ...).
        reason: String,
    },
}

impl Event {
    fn kind(&self) -> &'static str {
        match self {
            Event::Message { .. } => "message",
            Event::Connected { .. } => "connected",
            Event::Disconnected { .. } => "disconnected",
        }
    }
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Arc<Event>],
}

/// The queue and its poster.
pub struct Notifier {
    cfg: EventsConfig,
    /// Oldest first, within `queueSize` events and [`MAX_QUEUED_BYTES`].
    queue: Mutex<Queue>,
    wake: Notify,
    client: HookClient,
    dropped: prometheus::IntCounter,
    /// Events in the next post: `batch`, halved after a 413, doubled back after each
    /// post the backend took.
    batch: AtomicUsize,
    /// Log lines of events dropped as too large (a backend whose limit is below the
    /// bodies clients send refuses many).
    too_large_log: crate::log_gate::LogGate,
    /// Held while a batch is out: at shutdown [`flush`](Self::flush) and [`run`](Self::run)
    /// both post, and two posts at once would send the queue's front twice, out of order.
    posting: tokio::sync::Mutex<()>,
}

impl Notifier {
    /// A notifier posting to `cfg.url`.
    pub fn new(cfg: EventsConfig, dropped: prometheus::IntCounter) -> Notifier {
        let client = HookClient::new(HookConfig {
            url: cfg.url.clone(),
            timeout: cfg.timeout,
            retries: 0,
            on_failure: FailurePolicy::Refuse,
            breaker_failures: 0,
            ..Default::default()
        });
        Notifier {
            queue: Mutex::new(Queue::new(cfg.queue_size, MAX_QUEUED_BYTES)),
            wake: Notify::new(),
            client,
            dropped,
            batch: AtomicUsize::new(cfg.batch),
            too_large_log: Default::default(),
            cfg,
            posting: tokio::sync::Mutex::new(()),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether events of `kind` are wanted.
    pub fn wants(&self, kind: &str) -> bool {
        self.cfg.kinds.iter().any(|k| k == kind)
    }

    /// Queues an event of a configured kind (never blocks), dropping the oldest to keep
    /// within both bounds.
    pub fn notify(&self, event: Event) {
        if !self.wants(event.kind()) {
            return;
        }
        let dropped = self.queue().push(event);
        self.dropped.inc_by(dropped);
        self.wake.notify_one();
    }

    /// Posts the oldest batch; `Ok(false)` when the queue was empty. A batch too large
    /// for the backend (413) is halved for the next post (`Ok(true)`: go on at once).
    async fn post_batch(&self) -> Result<bool, HookError> {
        let _posting = self.posting.lock().await;
        let size = self.batch.load(Ordering::Relaxed);
        let (last, batch) = self.queue().front(size);
        if batch.is_empty() {
            return Ok(false);
        }
        match self.client.post_only(&Batch { events: &batch }).await {
            Ok(()) => self.batch.store(
                size.saturating_mul(2).min(self.cfg.batch),
                Ordering::Relaxed,
            ),
            Err(HookError::Status(413)) if batch.len() > 1 => {
                self.batch.store(batch.len() / 2, Ordering::Relaxed);
                return Ok(true);
            }
            Err(HookError::Status(413)) => {
                crate::log_gate::warn_gated!(
                    self.too_large_log,
                    kind = batch[0].kind(),
                    "an event the backend refuses as too large (413) by itself: dropped"
                );
                self.dropped.inc();
            }
            Err(e) => return Err(e),
        }
        // By id: the queue may have dropped some of the batch meanwhile.
        self.queue().remove_through(last);
        Ok(true)
    }

    /// Posts what is queued, until empty or a post fails (at shutdown, under a deadline).
    pub async fn flush(&self) {
        while let Ok(true) = self.post_batch().await {}
    }

    /// Posts batches until `stop`; a failed batch is retried (with backoff) before newer
    /// events, so the backend sees them in order.
    pub async fn run(&self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.post_batch().await {
                Ok(true) => backoff = Duration::from_millis(100),
                Ok(false) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.wake.notified() => {}
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "events not delivered; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::tests::{answering, connected, message};

    /// While nothing is posted, large bodies stop at the byte bound (the oldest dropped and
    /// counted) instead of filling `queueSize`; small events queued after them still reach
    /// the backend, and once it has everything the queue holds nothing.
    #[tokio::test]
    async fn large_bodies_are_bounded_by_bytes_and_small_events_still_flow() {
        let (addr, received) = answering(204, "", Some(Duration::ZERO)).await;
        let dropped = prometheus::IntCounter::new("d", "d").expect("counter");
        let n = Notifier::new(
            EventsConfig {
                url: format!("http://{addr}/events"),
                // Batches of 64 KiB bodies are megabytes: room for a loaded machine.
                timeout: Duration::from_secs(60),
                kinds: vec!["message".into(), "connected".into()],
                ..Default::default()
            },
            dropped.clone(),
        );
        for _ in 0..1_000 {
            n.notify(message(64 * 1024));
            assert!(n.queue().bytes() <= MAX_QUEUED_BYTES);
        }
        let held = n.queue().len();
        assert!(held < 1_000, "the byte bound binds before queueSize");
        assert_eq!(dropped.get() as usize, 1_000 - held);

        for s in ["s1", "s2", "s3"] {
            n.notify(connected(s));
        }
        n.flush().await;
        let left = n.queue();
        assert_eq!((left.len(), left.bytes()), (0, 0));
        drop(left);
        let batches = received.lock().expect("lock").clone();
        let sessions: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap_or_default();
                v["events"].as_array().cloned().unwrap_or_default()
            })
            .filter_map(|e| e["session"].as_str().map(str::to_string))
            .collect();
        assert_eq!(sessions, ["s1", "s2", "s3"]);
    }
}
