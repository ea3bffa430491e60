//! Upper bounds. The other checks hold the least a value may be; these hold the most, for
//! the values whose arithmetic would overflow (an `Instant` plus a duration panics, a
//! product wraps) or whose per-client cost would be absurd. Where the operator's CRD
//! already bounds a field, the bound here is the same, so that a value set through
//! `gateway.config` (which the CRD does not type) meets it too.

use crate::{Config, ConfigError};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Longest retention (`maxAge`): ten years. Redis is handed twice it in milliseconds as a
/// Lua number, which it prints in exponent form past about 5e13 s and then refuses, after
/// the message was appended (stored, never published).
const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The CRD's `limits.maxFrameBytes` maximum: 16 MiB.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

impl Config {
    pub(super) fn validate_bounds(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        // (key, value, most, the most as configured)
        let mut durations: Vec<(String, Duration, Duration, &str)> = vec![
            // More than the current time in seconds wrapped jsonwebtoken's `now - leeway`:
            // every token was refused as expired.
            ("auth.jwt.leeway".into(), self.auth.jwt.leeway, HOUR, "1h"),
            // Clients ping every half of it (a JavaScript timer holds at most 2^31 ms).
            (
                "heartbeat.interval".into(),
                self.heartbeat.interval,
                10 * MINUTE,
                "10m",
            ),
            (
                "limits.presenceLinger".into(),
                l.presence_linger,
                MINUTE,
                "1m",
            ),
            (
                "sessions.resumeTtl".into(),
                self.sessions.resume_ttl,
                7 * DAY,
                "168h",
            ),
            (
                "sessions.dedupWindow".into(),
                self.sessions.dedup_window,
                DAY,
                "24h",
            ),
            (
                "history.maxAge".into(),
                self.history.max_age,
                MAX_RETENTION,
                "87600h",
            ),
            (
                "inbox.maxAge".into(),
                self.inbox.max_age,
                MAX_RETENTION,
                "87600h",
            ),
            ("drain.timeout".into(), self.drain.timeout, DAY, "24h"),
            (
                "drain.reconnectJitter".into(),
                self.drain.reconnect_jitter,
                5 * MINUTE,
                "5m",
            ),
        ];
        let retention = self
            .namespaces
            .iter()
            .filter_map(|ns| Some((ns.retention.as_ref()?.max_age, &ns.prefix)));
        for (max_age, prefix) in retention {
            if max_age > MAX_RETENTION {
                return Err(ConfigError::Invalid(format!(
                    "namespaces ({prefix:?}): retention.maxAge must be at most 87600h"
                )));
            }
        }
        let hooks = [
            ("hooks.connect", &self.hooks.connect),
            ("hooks.join", &self.hooks.join),
            ("hooks.send", &self.hooks.send),
            ("hooks.refresh", &self.hooks.refresh),
        ];
        for (name, hook) in hooks {
            let Some(h) = hook else { continue };
            if h.retries > 10 {
                return Err(ConfigError::Invalid(format!(
                    "{name}.retries must be at most 10"
                )));
            }
            durations.push((
                format!("{name}.breakerCooldown"),
                h.breaker_cooldown,
                HOUR,
                "1h",
            ));
        }
        if let Some((key, _, _, most)) = durations.iter().find(|(_, d, max, _)| d > max) {
            return Err(ConfigError::Invalid(format!(
                "{key} must be at most {most}"
            )));
        }
        for r in &self.routes {
            if r.retry_backoff > Duration::from_secs(30) {
                return Err(ConfigError::Invalid(format!(
                    "routes ({:?}): retryBackoff must be at most 30s",
                    r.name
                )));
            }
        }
        let counts = [
            ("limits.maxFrameBytes", l.max_frame_bytes, MAX_FRAME_BYTES),
            ("limits.roomsPerConnection", l.rooms_per_connection, 100_000),
            (
                "limits.outboundQueueFrames",
                l.outbound_queue_frames,
                1_000_000,
            ),
            ("limits.outboundQueueBytes", l.outbound_queue_bytes, 1 << 30),
            ("limits.historyPageBytes", l.history_page_bytes, 1 << 30),
            ("limits.replayChunkBytes", l.replay_chunk_bytes, 1 << 30),
            ("limits.presenceUsers", l.presence_users, 1_000_000),
            // Each half-open handshake may hold this much, `limits.handshakesPerIp` each.
            (
                "server.maxHeaderBytes",
                self.server.max_header_bytes,
                1 << 20,
            ),
        ];
        if let Some((key, _, max)) = counts.iter().find(|(_, n, max)| n > max) {
            return Err(ConfigError::Invalid(format!("{key} must be at most {max}")));
        }
        if l.rooms_per_connection == 0 {
            return Err(ConfigError::Invalid(
                "limits.roomsPerConnection must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
