//! Hooks: the gateway asks the application's backend before a connect, a join (in a
//! namespace with `join: backend`), a send and a refresh, and tells it what happened
//! afterwards (docs/backend.md). Each call is a JSON POST with its own deadline, retries
//! only where safe, a circuit breaker and a failure policy (refuse or allow); calls carry
//! the trace context, show up as `hook` spans, and are counted and timed in metrics.

pub mod client;
pub mod events;
#[cfg(test)]
pub(crate) mod tests;

use crate::config::namespaces::matches_pattern;
use crate::config::{FailurePolicy, HooksConfig};
use crate::log_gate::warn_gated;
use crate::metrics::Metrics;
use client::{HookClient, HookError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Instant;
use tracing::Instrument;

/// What a decision hook concluded (after the failure policy).
#[derive(Debug)]
pub enum Verdict<T> {
    /// Go ahead, with what the hook added or changed.
    Allow(T),
    /// The backend refused, with its reason.
    Deny(String),
    /// The hook failed and its policy is `refuse`.
    Failed(HookError),
}

/// `connect` hook request.
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    /// The authenticated user.
    pub user: &'a str,
    /// The client's address.
    pub ip: String,
}

/// `connect` hook answer.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectAnswer {
    /// Rooms the connection joins right after `welcome` (granted by the backend).
    #[serde(default, deserialize_with = "null_as_default")]
    pub rooms: Vec<String>,
    /// Any JSON, passed to the client in `welcome.data`.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
}

/// `join` hook request.
#[derive(Debug, Serialize)]
pub struct JoinRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// The room.
    pub room: &'a str,
}

/// `join` hook answer (besides `allow`).
#[derive(Debug, Default, Deserialize)]
pub struct JoinAnswer {
    /// Whether the member may send (default true; the namespace's `send` policy applies).
    #[serde(default = "yes", deserialize_with = "null_as_yes")]
    pub send: bool,
}

fn yes() -> bool {
    true
}

/// A field's `null` read as its absence: backends written in JavaScript often send
/// `"rooms": null` for none.
fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn null_as_yes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(true))
}

/// `send` hook request.
#[derive(Debug, Serialize)]
pub struct SendRequest<'a> {
    /// The sender.
    pub user: &'a str,
    /// Target room or inbox.
    pub room: &'a str,
    /// The message id.
    pub msg_id: &'a str,
    /// The body as sent.
    pub body: &'a RawValue,
}

/// `send` hook answer (besides `allow`).
#[derive(Debug, Default, Deserialize)]
pub struct SendAnswer {
    /// A replacement body, stored and fanned out instead of the sent one.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// `refresh` hook request.
#[derive(Debug, Serialize)]
pub struct RefreshRequest<'a> {
    /// The user.
    pub user: &'a str,
    /// The room of a subscription token; absent for the connection token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// The new token's expiry, Unix ms.
    pub expires_at: u64,
}

/// `refresh` hook answer (besides `allow`).
#[derive(Debug, Default, Deserialize)]
pub struct RefreshAnswer {
    /// An earlier expiry (Unix ms) than the token's; later ones are ignored.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// A decision answer: `allow` (required, true or false), then a `reason` when refused or
/// the hook's own fields when allowed.
#[derive(Debug)]
enum Answer<T> {
    Allow(T),
    Deny(String),
}

/// Reason of a refusal that gave none (or not as a string).
const NO_REASON: &str = "refused by the backend";

/// Reads a decision answer, `allow` first: a refusal stands whatever else the answer
/// holds. Read in one piece, `{"allow": false, "reason": 42}` or a refusal with a field
/// of the wrong type was a bad answer, which `onFailure: allow` turned into an allow.
/// The hook's fields are read only when allowed; wrong ones are a bad answer then.
fn read_answer<T: serde::de::DeserializeOwned>(
    answer: serde_json::Value,
) -> Result<Answer<T>, HookError> {
    match answer.get("allow") {
        Some(serde_json::Value::Bool(true)) => T::deserialize(answer)
            .map(Answer::Allow)
            .map_err(|e| HookError::BadAnswer(e.to_string())),
        Some(serde_json::Value::Bool(false)) => Ok(Answer::Deny(
            answer
                .get("reason")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(NO_REASON)
                .to_string(),
        )),
        _ => Err(HookError::BadAnswer("`allow` must be true or false".into())),
    }
}

/// The configured hooks of a node.
#[derive(Default)]
pub struct Hooks {
    connect: Option<HookClient>,
    join: Option<HookClient>,
    send: Option<HookClient>,
    refresh: Option<HookClient>,
    /// Notifications after the fact.
    pub events: Option<events::Notifier>,
}

impl Hooks {
    /// Clients for the configured hooks (the notifier's task is started by
    /// [`events::Notifier::run`]).
    pub fn new(cfg: &HooksConfig, metrics: &Metrics) -> Hooks {
        let client = |h: &Option<crate::config::HookConfig>| h.clone().map(HookClient::new);
        Hooks {
            connect: client(&cfg.connect),
            join: client(&cfg.join),
            send: client(&cfg.send),
            refresh: client(&cfg.refresh),
            events: cfg
                .events
                .clone()
                .map(|e| events::Notifier::new(e, metrics.hook_events_dropped.clone())),
        }
    }

    /// Whether a `send` to `room` goes through the send hook.
    pub fn sends_through(&self, room: &str) -> bool {
        self.send.as_ref().is_some_and(|h| {
            h.cfg.rooms.is_empty() || h.cfg.rooms.iter().any(|p| matches_pattern(p, room))
        })
    }

    /// Whether the `message` notification wants a copy of bodies.
    pub fn wants_messages(&self) -> bool {
        self.events.as_ref().is_some_and(|e| e.wants("message"))
    }

    /// Tells the backend a message was stored (nothing for duplicates and ephemeral
    /// messages, which are not stored).
    pub fn message_stored(
        &self,
        room: &str,
        from: &str,
        msg_id: &str,
        body: Box<RawValue>,
        published: &crate::engine::Published,
    ) {
        let Some(events) = &self.events else { return };
        if published.duplicate || published.ephemeral {
            return;
        }
        events.notify(events::Event::Message {
            room: room.to_string(),
            seq: published.at.seq,
            epoch: published.at.epoch.to_string(),
            msg_id: msg_id.to_string(),
            from: from.to_string(),
            ts: published.ts,
            body,
        });
    }

    /// Whether a join hook is configured.
    pub fn has_join(&self) -> bool {
        self.join.is_some()
    }

    /// The `connect` hook; `Allow(default)` when none is configured.
    pub async fn connect(
        &self,
        metrics: &Metrics,
        req: &ConnectRequest<'_>,
    ) -> Verdict<ConnectAnswer> {
        decide("connect", self.connect.as_ref(), metrics, req).await
    }

    /// The `join` hook; `Deny` when none is configured (a `backend` namespace needs it).
    pub async fn join(&self, metrics: &Metrics, req: &JoinRequest<'_>) -> Verdict<JoinAnswer> {
        if self.join.is_none() {
            return Verdict::Deny("no backend decides joins here".into());
        }
        decide("join", self.join.as_ref(), metrics, req).await
    }

    /// The `send` hook for a room it covers.
    pub async fn send(&self, metrics: &Metrics, req: &SendRequest<'_>) -> Verdict<SendAnswer> {
        decide("send", self.send.as_ref(), metrics, req).await
    }

    /// The `refresh` hook; `Allow(default)` when none is configured.
    pub async fn refresh(
        &self,
        metrics: &Metrics,
        req: &RefreshRequest<'_>,
    ) -> Verdict<RefreshAnswer> {
        decide("refresh", self.refresh.as_ref(), metrics, req).await
    }
}

/// One decision call: span, metrics, failure policy.
async fn decide<Q: Serialize, A: Default + serde::de::DeserializeOwned>(
    name: &'static str,
    hook: Option<&HookClient>,
    metrics: &Metrics,
    req: &Q,
) -> Verdict<A> {
    let Some(hook) = hook else {
        return Verdict::Allow(A::default());
    };
    let span = if crate::telemetry::enabled() {
        let span = tracing::info_span!(
            "hook",
            hook = name,
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        crate::telemetry::record_trace_id(&span);
        span
    } else {
        tracing::Span::none()
    };
    let traceparent = crate::telemetry::traceparent(&span);
    let started = Instant::now();
    let answer = hook
        .call(req, traceparent.as_deref())
        .instrument(span.clone())
        .await
        .and_then(read_answer::<A>);
    metrics
        .hook_seconds
        .with_label_values(&[name])
        .observe(started.elapsed().as_secs_f64());
    let (outcome, verdict) = match answer {
        Ok(Answer::Allow(a)) => ("allowed", Verdict::Allow(a)),
        Ok(Answer::Deny(reason)) => ("denied", Verdict::Deny(reason)),
        Err(e) => {
            let policy = hook.cfg.on_failure;
            warn_gated!(hook.failure_log, hook = name, error = %e, ?policy, "hook failed");
            let verdict = match hook.cfg.on_failure {
                FailurePolicy::Allow => Verdict::Allow(A::default()),
                FailurePolicy::Refuse => Verdict::Failed(e.clone()),
            };
            (e.label(), verdict)
        }
    };
    span.record("outcome", outcome);
    metrics.hook_calls.with_label_values(&[name, outcome]).inc();
    verdict
}
