//! Validation: relations between values that serde alone cannot check. The gateway runs it
//! at start and the operator runs it on the config a ChatGateway asks for, so a spec the
//! gateway would refuse is reported before any pod starts.

use crate::{
    is_reserved_prefix, AuthMode, Config, ConfigError, EngineKind, JoinPolicy, MemoryConfig,
};

/// Shortest HS256 secret accepted, in bytes (the length of the hash: shorter secrets make
/// the key brute-forceable).
pub const MIN_HS256_SECRET: usize = 32;
use std::time::Duration;

/// Most extra dials of a forwarding route (as the CRD allows).
pub const MAX_ROUTE_RETRIES: u32 = 10;
/// Largest `maxFrameBytes` of a forwarding route (as the CRD allows): 64 MiB.
pub const MAX_ROUTE_FRAME_BYTES: usize = 64 << 20;

/// Shortest duration the Redis engine can store. It gives stored durations to Redis in
/// whole milliseconds (`SET … PX`, `PEXPIRE`, truncated), and 0 there is an error or a
/// deletion: `PX 0` in publish.lua fails after the message was appended (stored, never
/// published), and in a session save stores no session; `PEXPIRE 0` deletes a room's
/// stream as it is written.
const MIN_STORED_DURATION: Duration = Duration::from_millis(1);

impl Config {
    /// Checks relations between values that serde alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if l.max_frame_bytes < 256 {
            return bad("limits.maxFrameBytes must be at least 256");
        }
        if !(l.message_rate > 0.0 && l.message_rate.is_finite()) {
            return bad("limits.messageRate must be a positive number");
        }
        if l.message_burst == 0 {
            return bad("limits.messageBurst must be at least 1");
        }
        if !(l.user_message_rate >= 0.0 && l.user_message_rate.is_finite())
            || (l.user_message_rate > 0.0 && l.user_message_burst == 0)
        {
            return bad("limits.userMessageRate must be 0 (no limit) or a positive number, with limits.userMessageBurst at least 1");
        }
        if !(l.frame_rate >= 0.0 && l.frame_rate.is_finite())
            || (l.frame_rate > 0.0 && l.frame_burst == 0)
        {
            return bad("limits.frameRate must be 0 (no limit) or a positive number, with limits.frameBurst at least 1");
        }
        if l.outbound_queue_frames == 0 || l.outbound_queue_bytes < l.max_frame_bytes {
            return bad("limits.outboundQueueFrames must be >= 1 and limits.outboundQueueBytes >= limits.maxFrameBytes");
        }
        if l.max_room_name == 0 || l.max_room_name > 1024 {
            return bad("limits.maxRoomName must be between 1 and 1024");
        }
        // (Both are also capped at half the outbound queue where they are used, so a page
        // or a chunk always fits next to what is queued already.)
        if l.history_page_bytes < 1024 || l.replay_chunk_bytes < 1024 {
            return bad(
                "limits.historyPageBytes and limits.replayChunkBytes must be at least 1024",
            );
        }
        // A longer window only delays presence without saving more frames than it costs
        // in staleness; the bound also keeps a typo (`100s`) from hiding presence.
        if l.presence_users == 0 {
            return bad("limits.presenceUsers must be at least 1");
        }
        if l.presence_batch > Duration::from_secs(5) {
            return bad("limits.presenceBatch must be at most 5s");
        }
        // Every message of a busy room waits up to this long: beyond a second a chat
        // feels broken, and no syscall saving is worth it.
        if l.fanout_batch > Duration::from_secs(1) {
            return bad("limits.fanoutBatch must be at most 1s");
        }
        if self.server.listen_backlog == 0 || self.server.listen_backlog > i32::MAX as u32 {
            return bad("server.listenBacklog must be between 1 and 2147483647");
        }
        // hyper's floor: below it, its builder panics.
        if self.server.max_header_bytes < 8192 {
            return bad("server.maxHeaderBytes must be at least 8192");
        }
        let stored = [
            ("sessions.resumeTtl", self.sessions.resume_ttl),
            ("sessions.dedupWindow", self.sessions.dedup_window),
            ("history.maxAge", self.history.max_age),
            ("inbox.maxAge", self.inbox.max_age),
        ];
        if let Some((key, _)) = stored.iter().find(|(_, d)| *d < MIN_STORED_DURATION) {
            return Err(ConfigError::Invalid(format!("{key} must be at least 1ms")));
        }
        if self.heartbeat.interval < Duration::from_millis(50) {
            return bad("heartbeat.interval must be at least 50ms");
        }
        if !(self.drain.evict_rate > 0.0 && self.drain.evict_rate.is_finite()) {
            return bad("drain.evictRate must be a positive number");
        }
        // The operator's CRD refuses this too, but `gateway.config` reaches here unchecked.
        if self.drain.accept_grace >= self.drain.timeout {
            return bad("drain.acceptGrace must be shorter than drain.timeout: the drain would end before the gateway stopped accepting, and close every connection at once");
        }
        let r = &self.rebalance;
        let rel_ok = r.rel_threshold.is_finite() && r.rel_threshold >= 0.0;
        if !(r.rate > 0.0 && r.rate.is_finite() && rel_ok)
            || r.interval < Duration::from_millis(100)
        {
            return bad("rebalance.rate must be positive, rebalance.relThreshold >= 0, rebalance.interval >= 100ms");
        }
        self.validate_routes()?;
        self.validate_bounds()?;
        if self.history.max_messages == 0 || self.inbox.max_messages == 0 {
            return bad("history.maxMessages and inbox.maxMessages must be at least 1");
        }
        self.validate_memory()?;
        self.validate_auth()?;
        self.redis.validate()?;
        self.validate_namespaces()?;
        self.validate_backend()?;
        let a = &self.admission;
        let rate_ok = |r: f64| r.is_finite() && r >= 0.0;
        if !rate_ok(a.per_ip_rate) || !rate_ok(a.per_user_rate) {
            return bad("admission.perIpRate and admission.perUserRate must be >= 0");
        }
        Ok(())
    }

    fn validate_memory(&self) -> Result<(), ConfigError> {
        let Some(max) = self.memory.max_bytes else {
            return Ok(());
        };
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.engine != EngineKind::Memory {
            // Redis's own `maxmemory` bounds what the Redis engine stores; a budget here
            // would look like it did.
            return bad("memory.maxBytes applies to engine: memory only (with Redis, its maxmemory bounds the messages)".into());
        }
        // Four of the largest messages at least, so one room's newest ones always fit.
        let min = MemoryConfig::MIN_BYTES.max(4 * self.limits.max_frame_bytes as u64);
        if max < min {
            return bad(format!(
                "memory.maxBytes must be at least {min} (1 MiB, and 4 × limits.maxFrameBytes)"
            ));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let auth = &self.auth;
        match auth.mode {
            AuthMode::Insecure => {
                let ip = self.server.listen.ip();
                if !ip.is_loopback() && !auth.dangerously_allow_insecure_on_network {
                    return bad(format!(
                        "auth.mode is insecure (anyone can connect as any user with ?user=) but \
                         server.listen is {ip}, not a loopback address: listen on 127.0.0.1, use \
                         auth.mode: jwt, or set auth.dangerouslyAllowInsecureOnNetwork: true for a \
                         demo nobody else can reach"
                    ));
                }
            }
            AuthMode::Jwt => {
                let j = &auth.jwt;
                if !j.has_key() {
                    return bad("auth.mode is jwt but no key is configured: set auth.jwt.secret or auth.jwt.secretFile (HS256), auth.jwt.publicKey or auth.jwt.publicKeyFile (RS256, ES256, EdDSA), or auth.jwt.jwksFile; for local development only, auth.mode: insecure".into());
                }
                if j.secret
                    .as_ref()
                    .is_some_and(|s| s.len() < MIN_HS256_SECRET)
                {
                    return bad(format!(
                        "auth.jwt.secret is shorter than {MIN_HS256_SECRET} bytes: an HS256 secret must be at least as long as the hash"
                    ));
                }
                if j.audience.is_none() && j.require_audience {
                    return bad("auth.jwt.audience is not set: name the audience your tokens are minted for (their `aud` claim), or set auth.jwt.requireAudience: false to accept tokens of any audience".into());
                }
                if j.reload_interval < Duration::from_millis(100) {
                    return bad("auth.jwt.reloadInterval must be at least 100ms".into());
                }
                // Read from an empty variable these are set, not unset (taken verbatim):
                // an empty audience or issuer would be required of every token.
                let empty = [
                    ("audience", j.audience.as_deref().is_some_and(str::is_empty)),
                    ("issuer", j.issuer.as_deref().is_some_and(str::is_empty)),
                    ("secretFile", is_empty_path(&j.secret_file)),
                    ("publicKeyFile", is_empty_path(&j.public_key_file)),
                    ("jwksFile", is_empty_path(&j.jwks_file)),
                ];
                if let Some((key, _)) = empty.iter().find(|(_, empty)| *empty) {
                    return bad(format!(
                        "auth.jwt.{key} is set but empty: give it a value, or leave it out"
                    ));
                }
            }
        }
        // The token check (jsonwebtoken) counts the leeway in whole seconds, the 4401 close
        // timer in milliseconds: `1500ms` would be 1 s at connect and 1.5 s at the close.
        if auth.jwt.leeway.subsec_nanos() != 0 {
            return bad(format!(
                "auth.jwt.leeway must be whole seconds (tokens are checked to the second), not {}",
                humantime_serde::re::humantime::format_duration(auth.jwt.leeway)
            ));
        }
        if auth.expiry_warning.is_zero() {
            return bad("auth.expiryWarning must be positive".into());
        }
        Ok(())
    }

    fn validate_namespaces(&self) -> Result<(), ConfigError> {
        let mut prefixes = std::collections::BTreeSet::new();
        for (i, n) in self.namespaces.iter().enumerate() {
            let what = |m: &str| {
                Err(ConfigError::Invalid(format!(
                    "namespaces[{i}] (prefix {:?}): {m}",
                    n.prefix
                )))
            };
            if !prefixes.insert(n.prefix.as_str()) {
                return what("prefix is used twice");
            }
            if n.join == JoinPolicy::Backend && self.hooks.join.is_none() {
                return what("join: backend needs hooks.join (the backend endpoint that decides)");
            }
            if n.retention.as_ref().is_some_and(|r| r.max_messages == 0) {
                return what("retention.maxMessages must be at least 1");
            }
            if n.retention
                .as_ref()
                .is_some_and(|r| r.max_age < MIN_STORED_DURATION)
            {
                return what("retention.maxAge must be at least 1ms");
            }
        }
        Ok(())
    }

    fn validate_backend(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(api) = self.api.listen {
            if api.port() == self.server.listen.port() && api.port() != 0 {
                return bad(format!(
                    "api.listen {api} is the public port: the server API needs a port of its own"
                ));
            }
            if is_empty_path(&self.api.keys_file) {
                return bad("api.keysFile is set but empty: name the file, or leave it out".into());
            }
            if let Some(i) = self.api.keys.iter().position(|k| k.trim().is_empty()) {
                return bad(format!(
                    "api.keys[{i}] is empty: it would admit a request with an empty key"
                ));
            }
            if self.api.keys.is_empty() && self.api.keys_file.is_none() {
                return bad(
                    "api.listen is set but no key is: set api.keysFile (or api.keys)".into(),
                );
            }
        }
        // The keys file's reload timer: a zero period would panic the API's task.
        if self.api.reload_interval < Duration::from_millis(100) {
            return bad("api.reloadInterval must be at least 100ms".into());
        }
        let hooks = [
            ("connect", &self.hooks.connect),
            ("join", &self.hooks.join),
            ("send", &self.hooks.send),
            ("refresh", &self.hooks.refresh),
        ];
        for (name, hook) in hooks {
            let Some(h) = hook else { continue };
            if let Err(e) = http_url(&h.url) {
                return bad(format!("hooks.{name}.url: {e}"));
            }
            if h.timeout.is_zero() {
                return bad(format!("hooks.{name}.timeout must be positive"));
            }
            if h.max_concurrent == 0 {
                return bad(format!("hooks.{name}.maxConcurrent must be at least 1"));
            }
        }
        if let Some(e) = &self.hooks.events {
            if let Err(err) = http_url(&e.url) {
                return bad(format!("hooks.events.url: {err}"));
            }
            if e.timeout.is_zero() {
                return bad("hooks.events.timeout must be positive".into());
            }
            if e.queue_size == 0 || e.batch == 0 {
                return bad("hooks.events.queueSize and batch must be at least 1".into());
            }
            let known = crate::backend::EVENT_KINDS;
            if let Some(k) = e.kinds.iter().find(|k| !known.contains(&k.as_str())) {
                return bad(format!(
                    "hooks.events.kinds: unknown kind {k:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn validate_routes(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let what = |m: &str| {
                Err(ConfigError::Invalid(format!(
                    "routes[{i}] ({:?}): {m}",
                    r.name
                )))
            };
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return what("name must be non-empty [a-z0-9-]");
            }
            if !names.insert(r.name.clone()) {
                return what("name is used twice");
            }
            if !r.path_prefix.starts_with('/') || r.path_prefix.len() < 2 {
                return what("pathPrefix must start with / and name a path (not just /)");
            }
            if is_reserved_prefix(&r.path_prefix) {
                return what("pathPrefix collides with the gateway's own endpoints");
            }
            if let Err(e) = upstream_url(&r.upstream) {
                return what(&e);
            }
            // The CRD's bounds: a client waits out every dial while it holds its slots,
            // and each piped connection may buffer a message of this size each way.
            if !(256..=MAX_ROUTE_FRAME_BYTES).contains(&r.max_frame_bytes) {
                return what("maxFrameBytes must be from 256 to 67108864 (64 MiB)");
            }
            if r.retries > MAX_ROUTE_RETRIES {
                return what("retries must be at most 10");
            }
            // Every dial would time out at once: a 502 for every client.
            if r.connect_timeout.is_zero() {
                return what("connectTimeout must be positive");
            }
        }
        Ok(())
    }
}

/// Whether an optional path is set to the empty path (an empty environment variable: the
/// value is taken verbatim), which names no file.
fn is_empty_path(path: &Option<std::path::PathBuf>) -> bool {
    path.as_ref().is_some_and(|p| p.as_os_str().is_empty())
}

/// Checks a hook URL: `http://host:port/path` (TLS is a sidecar's job inside a cluster).
pub fn http_url(url: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!(
            "{url:?}: only http:// is supported (use a TLS sidecar for https)"
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?}: needs a host"));
    }
    Ok(u)
}

/// Parses a route's upstream: `ws://host:port/base`, or `service:port` (a Kubernetes
/// Service name, `localhost` for a sidecar), which means `ws://service:port`.
pub fn upstream_url(upstream: &str) -> Result<url::Url, String> {
    let full = if upstream.contains("://") {
        upstream.to_string()
    } else {
        format!("ws://{upstream}")
    };
    let url = url::Url::parse(&full).map_err(|e| format!("upstream {upstream:?}: {e}"))?;
    match url.scheme() {
        "ws" => {}
        "wss" => {
            return Err(format!(
                "upstream {upstream:?}: wss:// is not supported in this build; use ws:// inside the cluster (or a TLS sidecar)"
            ))
        }
        other => return Err(format!("upstream {upstream:?}: scheme {other} is not ws://")),
    }
    if url.host_str().is_none_or(str::is_empty) || url.port_or_known_default().is_none() {
        return Err(format!("upstream {upstream:?}: needs a host and a port"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "upstream {upstream:?}: no query or fragment allowed"
        ));
    }
    Ok(url)
}

mod bounds;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;
