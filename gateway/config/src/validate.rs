//! Validation: relations between values that serde alone cannot check. The gateway runs it
//! at start and the operator runs it on the config a ChatGateway asks for, so a spec the
//! gateway would refuse is reported before any pod starts.

use crate::{is_reserved_prefix, AuthMode, Config, ConfigError, JwtAlgorithm};
use std::time::Duration;

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
        if l.outbound_queue_frames == 0 || l.outbound_queue_bytes < l.max_frame_bytes {
            return bad("limits.outboundQueueFrames must be >= 1 and limits.outboundQueueBytes >= limits.maxFrameBytes");
        }
        if l.max_room_name == 0 || l.max_room_name > 1024 {
            return bad("limits.maxRoomName must be between 1 and 1024");
        }
        if self.heartbeat.interval < Duration::from_millis(50) {
            return bad("heartbeat.interval must be at least 50ms");
        }
        if !(self.drain.evict_rate > 0.0 && self.drain.evict_rate.is_finite()) {
            return bad("drain.evictRate must be a positive number");
        }
        let r = &self.rebalance;
        let rel_ok = r.rel_threshold.is_finite() && r.rel_threshold >= 0.0;
        if !(r.rate > 0.0 && r.rate.is_finite() && rel_ok)
            || r.interval < Duration::from_millis(100)
        {
            return bad("rebalance.rate must be positive, rebalance.relThreshold >= 0, rebalance.interval >= 100ms");
        }
        self.validate_routes()?;
        if self.history.max_messages == 0 || self.inbox.max_messages == 0 {
            return bad("history.maxMessages and inbox.maxMessages must be at least 1");
        }
        if self.auth.mode == AuthMode::Jwt {
            let j = &self.auth.jwt;
            let ok = match j.algorithm {
                JwtAlgorithm::HS256 => j.secret.is_some() || j.secret_file.is_some(),
                JwtAlgorithm::RS256 => j.public_key.is_some() || j.public_key_file.is_some(),
            };
            if !ok {
                return bad("auth.mode is jwt but no key is configured: set auth.jwt.secret or auth.jwt.secretFile (HS256), or auth.jwt.publicKey or auth.jwt.publicKeyFile (RS256); for local development only, auth.mode: insecure");
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
            if r.max_frame_bytes < 256 {
                return what("maxFrameBytes must be at least 256");
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RouteConfig, RESERVED_PATHS};

    #[test]
    fn defaults_match_docs() {
        let c = Config::default();
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(c.limits.message_rate, 20.0);
        assert_eq!(c.limits.message_burst, 40);
        assert_eq!(c.limits.rooms_per_connection, 100);
        assert_eq!(c.limits.outbound_queue_frames, 1024);
        assert_eq!(c.limits.outbound_queue_bytes, 1 << 20);
        assert_eq!(c.heartbeat.interval, Duration::from_secs(25));
        assert_eq!(c.auth.mode, AuthMode::Jwt);
    }

    #[test]
    fn jwt_mode_without_key_is_refused() {
        let e = Config::load(None, Vec::new()).expect_err("no key");
        assert!(e.to_string().contains("auth.jwt.secret"), "{e}");
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            upstream_url("bots:9000").map(|u| u.to_string()),
            Ok("ws://bots:9000/".into())
        );
        assert!(upstream_url("ws://a.b.svc:80/base").is_ok());
        assert!(upstream_url("wss://x:443")
            .unwrap_err()
            .contains("not supported"));
        assert!(upstream_url("http://x:80").is_err());
        assert!(upstream_url("ws://x:80/?q=1").is_err());
        assert!(upstream_url("").is_err());
    }

    #[test]
    fn routes_may_not_shadow_the_gateways_own_paths() {
        let with_prefix = |p: &str| {
            let mut c = Config::default();
            c.auth.mode = AuthMode::Insecure;
            c.routes = vec![RouteConfig {
                name: "r".into(),
                path_prefix: p.into(),
                upstream: "s:80".into(),
                ..Default::default()
            }];
            c.validate()
        };
        for p in RESERVED_PATHS {
            assert!(with_prefix(p).is_err(), "{p}");
            assert!(with_prefix(&format!("{p}/x")).is_err(), "{p}/x");
            assert!(
                with_prefix(&format!("{p}x")).is_ok(),
                "{p}x is another path"
            );
        }
        assert!(with_prefix("/").is_err());
        assert!(with_prefix("/bots").is_ok());
    }
}
