//! Notifications after the fact: `message` (stored), `connected`, `disconnected`. Events
//! wait in a bounded in-memory queue (the oldest dropped and counted beyond it) and are
//! posted in batches, retried with backoff until the backend answers 2xx (any body): at
//! least once while the gateway runs (a crashed gateway loses what was still queued).

use super::client::HookClient;
use crate::config::{EventsConfig, FailurePolicy, HookConfig};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
    events: &'a [Event],
}

/// The queue and its poster.
pub struct Notifier {
    cfg: EventsConfig,
    /// (id, event), oldest first; ids grow by one per queued event.
    queue: Mutex<(u64, VecDeque<(u64, Event)>)>,
    wake: Notify,
    client: HookClient,
    dropped: prometheus::IntCounter,
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
            queue: Mutex::new((0, VecDeque::new())),
            wake: Notify::new(),
            client,
            dropped,
            cfg,
            posting: tokio::sync::Mutex::new(()),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, (u64, VecDeque<(u64, Event)>)> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether events of `kind` are wanted.
    pub fn wants(&self, kind: &str) -> bool {
        self.cfg.kinds.iter().any(|k| k == kind)
    }

    /// Queues an event of a configured kind (never blocks).
    pub fn notify(&self, event: Event) {
        if !self.wants(event.kind()) {
            return;
        }
        let mut guard = self.queue();
        let (next, q) = &mut *guard;
        if q.len() >= self.cfg.queue_size {
            q.pop_front();
            self.dropped.inc();
        }
        *next += 1;
        q.push_back((*next, event));
        drop(guard);
        self.wake.notify_one();
    }

    /// Posts the oldest batch; `Ok(false)` when the queue was empty.
    async fn post_batch(&self) -> Result<bool, super::client::HookError> {
        let _posting = self.posting.lock().await;
        let (last, batch): (u64, Vec<Event>) = {
            let guard = self.queue();
            let taken: Vec<&(u64, Event)> = guard.1.iter().take(self.cfg.batch).collect();
            let last = taken.last().map_or(0, |(id, _)| *id);
            (last, taken.into_iter().map(|(_, e)| e.clone()).collect())
        };
        if batch.is_empty() {
            return Ok(false);
        }
        self.client.post_only(&Batch { events: &batch }).await?;
        // By id: the queue may have dropped some of the batch meanwhile.
        let mut guard = self.queue();
        while guard.1.front().is_some_and(|(id, _)| *id <= last) {
            guard.1.pop_front();
        }
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
