//! One hook endpoint: a JSON POST with a deadline, retries only where the request cannot
//! have had an effect, a bound on the calls in flight, and a circuit breaker so a dead
//! backend costs nothing per call.
//!
//! The breaker counts only what says the backend is down or hung (no connection, a
//! lost one, a 5xx, a timeout). A 4xx or an answer that is not the hook's JSON fails
//! its own call: a backend that answers is up, and what it answers to is partly the
//! client's input, so counting those would let one client open the breaker for everyone.

use crate::config::HookConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest answer read from a hook.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a hook call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// No answer within the deadline (the backend may have acted: not retried).
    #[error("timed out")]
    Timeout,
    /// Could not connect, or a 5xx: the backend did not take the request.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The connection failed after the request went out (the backend may have acted:
    /// not retried).
    #[error("connection lost: {0}")]
    Lost(String),
    /// An answer that is not the expected JSON.
    #[error("bad answer: {0}")]
    BadAnswer(String),
    /// An answer neither 2xx nor 5xx (a 4xx, mostly).
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    /// The breaker is open after repeated failures.
    #[error("circuit open after repeated failures")]
    CircuitOpen,
    /// `maxConcurrent` calls were in flight for the whole timeout.
    #[error("too many calls in flight")]
    Busy,
}

impl HookError {
    /// Metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            HookError::Timeout => "timeout",
            HookError::Unavailable(_) | HookError::Lost(_) => "unavailable",
            HookError::BadAnswer(_) | HookError::Status(_) => "bad_answer",
            HookError::CircuitOpen => "circuit_open",
            HookError::Busy => "busy",
        }
    }

    /// What a client is told: the kind of failure, not the backend's statuses or what
    /// the parser quoted of its answer (those go to the log).
    pub fn for_client(&self) -> String {
        format!("the backend did not decide ({})", self.label())
    }

    /// Whether this failure says the backend is down or hung (counted by the breaker).
    fn is_outage(&self) -> bool {
        matches!(
            self,
            HookError::Timeout | HookError::Unavailable(_) | HookError::Lost(_)
        )
    }
}

/// Consecutive failures and, once they reach the threshold, when the breaker closes;
/// after that, until when the one trial call may take (it is out meanwhile).
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    trial_until: Option<Instant>,
}

/// A configured hook endpoint.
pub struct HookClient {
    /// Its configuration.
    pub cfg: HookConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Calls in flight (`maxConcurrent`): each holds a socket to the backend.
    slots: tokio::sync::Semaphore,
    breaker: Mutex<Breaker>,
    /// Its failures' log lines (one a period: a dead backend fails every call).
    pub(super) failure_log: crate::log_gate::LogGate,
}

impl HookClient {
    /// A client of `cfg.url` (validated by the config: http://).
    pub fn new(cfg: HookConfig) -> HookClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.timeout));
        connector.set_nodelay(true);
        HookClient {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            slots: tokio::sync::Semaphore::new(cfg.max_concurrent as usize),
            cfg,
            breaker: Mutex::new(Breaker::default()),
            failure_log: Default::default(),
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// POSTs `request` and decodes the answer, retrying what cannot have had an effect.
    /// An answer that is not the expected JSON fails this call only (not counted by the
    /// breaker).
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        request: &Q,
        traceparent: Option<&str>,
    ) -> Result<A, HookError> {
        self.exchange(request, traceparent, |text| {
            serde_json::from_slice(text).map_err(|e| HookError::BadAnswer(e.to_string()))
        })
        .await
    }

    /// POSTs `request`; any 2xx answer will do, whatever its body (a notification's
    /// endpoint may well answer 204 No Content).
    pub async fn post_only<Q: Serialize>(&self, request: &Q) -> Result<(), HookError> {
        self.exchange(request, None, |_| Ok(())).await
    }

    /// The breaker, the POST with its retries, and `read` of the answer's body.
    async fn exchange<Q: Serialize, A>(
        &self,
        request: &Q,
        traceparent: Option<&str>,
        read: impl FnOnce(&[u8]) -> Result<A, HookError>,
    ) -> Result<A, HookError> {
        let body = serde_json::to_vec(request)
            .map(Bytes::from)
            .map_err(|e| HookError::BadAnswer(e.to_string()))?;
        // Admitted before waiting for a slot: while the breaker is open, calls fail at once.
        self.admit()?;
        let _slot = tokio::time::timeout(self.cfg.timeout, self.slots.acquire())
            .await
            .map_err(|_| HookError::Busy)?
            .map_err(|_| HookError::Busy)?;
        let mut attempt = 0;
        let result = loop {
            match self.post(body.clone(), traceparent).await {
                Err(HookError::Unavailable(_)) if attempt < self.cfg.retries => attempt += 1,
                other => break other,
            }
        };
        self.record(!result.as_ref().is_err_and(HookError::is_outage));
        result.and_then(|text| read(&text))
    }

    /// Whether a call may go out: not while the breaker is open, and once its cooldown
    /// is over only one trial call until that call's outcome is known (a backend that
    /// hangs would otherwise hold every call made meanwhile for the whole timeout). A
    /// trial whose caller went away without an outcome frees the way after its deadline.
    fn admit(&self) -> Result<(), HookError> {
        if self.cfg.breaker_failures == 0 {
            return Ok(());
        }
        let mut b = self.breaker();
        let now = Instant::now();
        match b.open_until {
            Some(t) if now < t => Err(HookError::CircuitOpen),
            Some(_) if b.trial_until.is_some_and(|t| now < t) => Err(HookError::CircuitOpen),
            Some(_) => {
                // The wait for a slot, then every attempt.
                let longest = self
                    .cfg
                    .timeout
                    .saturating_mul(self.cfg.retries.saturating_add(2));
                b.trial_until = now.checked_add(longest);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn record(&self, ok: bool) {
        if self.cfg.breaker_failures == 0 {
            return;
        }
        let mut b = self.breaker();
        if ok {
            *b = Breaker::default();
            return;
        }
        b.failures += 1;
        b.trial_until = None;
        if b.failures >= self.cfg.breaker_failures {
            // Open, or re-open after the one trial call failed.
            b.open_until = Some(Instant::now() + self.cfg.breaker_cooldown);
        }
    }

    async fn post(&self, body: Bytes, traceparent: Option<&str>) -> Result<Bytes, HookError> {
        let mut req = http::Request::post(&self.cfg.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json");
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| HookError::Unavailable(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // Only a failed connect certainly sent nothing (hyper itself resends a
                // request a pooled connection closed before taking).
                if e.is_connect() {
                    HookError::Unavailable(e.to_string())
                } else {
                    HookError::Lost(e.to_string())
                }
            })?;
            let status = resp.status();
            if status.is_server_error() {
                return Err(HookError::Unavailable(format!("HTTP {status}")));
            }
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| HookError::BadAnswer(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(HookError::Status(status.as_u16()));
            }
            Ok(bytes)
        };
        tokio::time::timeout(self.cfg.timeout, exchange)
            .await
            .unwrap_or(Err(HookError::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_the_configured_failures_and_closes_on_success() {
        let c = HookClient::new(HookConfig {
            url: "http://127.0.0.1:1/".into(),
            breaker_failures: 2,
            breaker_cooldown: Duration::from_secs(60),
            ..Default::default()
        });
        c.record(false);
        assert!(c.breaker().open_until.is_none(), "one failure");
        c.record(false);
        assert!(c.breaker().open_until.is_some(), "two: open");
        c.record(true);
        assert!(c.breaker().open_until.is_none(), "a success closes it");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_opens_the_breaker() {
        let c = HookClient::new(HookConfig {
            url: "http://127.0.0.1:1/hook".into(),
            retries: 1,
            breaker_failures: 1,
            ..Default::default()
        });
        let r: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
        assert!(matches!(r, Err(HookError::Unavailable(_))), "{r:?}");
        let r: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
        assert_eq!(r, Err(HookError::CircuitOpen));
    }

    #[tokio::test]
    async fn a_call_finding_every_slot_taken_for_its_timeout_is_busy() {
        let c = HookClient::new(HookConfig {
            url: "http://127.0.0.1:1/hook".into(),
            max_concurrent: 1,
            timeout: Duration::from_millis(50),
            breaker_failures: 1,
            ..Default::default()
        });
        let held = c.slots.acquire().await.expect("slot");
        let r: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
        assert_eq!(r, Err(HookError::Busy));
        drop(held);
        let r: Result<serde_json::Value, _> = c.call(&serde_json::json!({}), None).await;
        assert!(
            matches!(r, Err(HookError::Unavailable(_))),
            "a busy call is not a backend failure: the next one goes out, {r:?}"
        );
    }
}
