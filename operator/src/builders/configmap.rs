//! ConfigMap holding the gateway's `config.yaml`, produced from the gateway's own `Config`.

use super::{parse_duration, Owner};
use crate::crd::{
    AuthModeSpec, ChatGateway, GatewaySpec, JwtAlgorithmSpec, RetentionSpec, RouteSpec,
};
use crate::error::{Error, Result};
use chat_gateway_config::{
    AuthMode, Config, EngineKind, JwtAlgorithm, RetentionConfig, RouteConfig,
};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Key of the config file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Directory the ConfigMap is mounted at.
pub const CONFIG_DIR: &str = "/etc/chatgateway";
/// File the HS256 secret is mounted as (outside the ConfigMap mount: nested mounts into a
/// read-only volume fail on some runtimes).
pub const JWT_SECRET_FILE: &str = "/var/run/secrets/chatgateway/jwt/secret";
/// File the RS256 public key is mounted as.
pub const JWT_PUBLIC_KEY_FILE: &str = "/var/run/secrets/chatgateway/jwt-public-key/public.pem";

/// The gateway config a spec asks for (validated like the gateway validates it at start).
pub fn gateway_config(cgw: &ChatGateway) -> Result<Config> {
    let mut config = Config::default();
    if let Some(g) = &cgw.spec.gateway {
        gateway_section(&mut config, g)?;
    }
    if let Some(d) = &cgw.spec.drain {
        let c = &mut config.drain;
        c.accept_grace = parse_duration(
            "drain.acceptGrace",
            d.accept_grace.as_deref(),
            c.accept_grace,
        )?;
        if let Some(rate) = d.evict_rate {
            c.evict_rate = f64::from(rate);
        }
        c.timeout = parse_duration("drain.timeout", d.timeout.as_deref(), c.timeout)?;
    }
    config
        .validate()
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    Ok(config)
}

/// Applies `spec.gateway` to the config.
fn gateway_section(config: &mut Config, g: &GatewaySpec) -> Result<()> {
    config.server.allowed_origins = g.allowed_origins.clone();
    if let Some(redis) = &g.redis {
        // The URL itself comes from the Secret through CHATGW_REDIS__URL, never the ConfigMap.
        config.engine = EngineKind::Redis;
        if let Some(prefix) = &redis.key_prefix {
            config.redis.key_prefix = prefix.clone();
        }
        config.redis.readiness_grace = parse_duration(
            "gateway.redis.readinessGrace",
            redis.readiness_grace.as_deref(),
            config.redis.readiness_grace,
        )?;
    }
    if let Some(auth) = &g.auth {
        config.auth.mode = match auth.mode {
            Some(AuthModeSpec::Insecure) => AuthMode::Insecure,
            Some(AuthModeSpec::Jwt) | None => AuthMode::Jwt,
        };
        if let Some(jwt) = &auth.jwt {
            let j = &mut config.auth.jwt;
            j.algorithm = match jwt.algorithm {
                Some(JwtAlgorithmSpec::RS256) => JwtAlgorithm::RS256,
                Some(JwtAlgorithmSpec::HS256) | None => JwtAlgorithm::HS256,
            };
            if jwt.secret_ref.is_some() {
                j.secret_file = Some(PathBuf::from(JWT_SECRET_FILE));
            }
            if jwt.public_key_secret_ref.is_some() {
                j.public_key_file = Some(PathBuf::from(JWT_PUBLIC_KEY_FILE));
            }
            j.issuer = jwt.issuer.clone();
            j.audience = jwt.audience.clone();
            j.leeway = parse_duration("gateway.auth.jwt.leeway", jwt.leeway.as_deref(), j.leeway)?;
        }
    }
    config.heartbeat.interval = parse_duration(
        "gateway.heartbeatInterval",
        g.heartbeat_interval.as_deref(),
        config.heartbeat.interval,
    )?;
    if let Some(l) = &g.limits {
        let c = &mut config.limits;
        // The schema bounds every value, so these conversions cannot truncate.
        set(&mut c.max_frame_bytes, l.max_frame_bytes)?;
        if let Some(rate) = l.message_rate {
            c.message_rate = rate as f64;
        }
        set(&mut c.message_burst, l.message_burst)?;
        set(&mut c.rooms_per_connection, l.rooms_per_connection)?;
        set(&mut c.connections_per_ip, l.connections_per_ip)?;
        set(&mut c.outbound_queue_frames, l.outbound_queue_frames)?;
        set(&mut c.outbound_queue_bytes, l.outbound_queue_bytes)?;
        set(&mut c.max_errors_in_row, l.max_errors_in_row)?;
        set(&mut c.max_room_name, l.max_room_name)?;
    }
    retention(&mut config.history, g.history.as_ref(), "gateway.history")?;
    retention(&mut config.inbox, g.inbox.as_ref(), "gateway.inbox")?;
    if let Some(s) = &g.sessions {
        let c = &mut config.sessions;
        c.resume_ttl = parse_duration(
            "gateway.sessions.resumeTtl",
            s.resume_ttl.as_deref(),
            c.resume_ttl,
        )?;
        c.dedup_window = parse_duration(
            "gateway.sessions.dedupWindow",
            s.dedup_window.as_deref(),
            c.dedup_window,
        )?;
    }
    if let Some(r) = &g.rebalance {
        let c = &mut config.rebalance;
        if let Some(enabled) = r.enabled {
            c.enabled = enabled;
        }
        if let Some(pct) = r.tolerance_percent {
            c.rel_threshold = f64::from(pct) / 100.0;
        }
        if let Some(rate) = r.rate {
            c.rate = f64::from(rate);
        }
    }
    config.routes = g
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(i, r))
        .collect::<Result<_>>()?;
    Ok(())
}

/// One `spec.gateway.routes[i]` as the gateway's route config.
fn route(i: usize, r: &RouteSpec) -> Result<RouteConfig> {
    let mut c = RouteConfig {
        name: r.name.clone(),
        path_prefix: r.path_prefix.clone(),
        upstream: r.upstream.clone(),
        headers: r.headers.clone(),
        ..RouteConfig::default()
    };
    if let Some(strip) = r.strip_prefix {
        c.strip_prefix = strip;
    }
    if let Some(user) = r.forward_user {
        c.forward_user = user;
    }
    if let Some(trace) = r.forward_trace {
        c.forward_trace = trace;
    }
    let field = |f: &str| format!("gateway.routes[{i}].{f}");
    c.connect_timeout = parse_duration(
        &field("connectTimeout"),
        r.connect_timeout.as_deref(),
        c.connect_timeout,
    )?;
    c.retry_backoff = parse_duration(
        &field("retryBackoff"),
        r.retry_backoff.as_deref(),
        c.retry_backoff,
    )?;
    set(&mut c.retries, r.retries.map(i64::from))?;
    set(&mut c.max_connections, r.max_connections)?;
    set(&mut c.max_frame_bytes, r.max_frame_bytes)?;
    Ok(c)
}

fn set<T: TryFrom<i64>>(target: &mut T, value: Option<i64>) -> Result<()> {
    if let Some(v) = value {
        *target =
            T::try_from(v).map_err(|_| Error::InvalidSpec(format!("limit {v} out of range")))?;
    }
    Ok(())
}

fn retention(
    target: &mut RetentionConfig,
    spec: Option<&RetentionSpec>,
    field: &str,
) -> Result<()> {
    let Some(spec) = spec else { return Ok(()) };
    set(&mut target.max_messages, spec.max_messages)?;
    target.max_age = parse_duration(
        &format!("{field}.maxAge"),
        spec.max_age.as_deref(),
        target.max_age,
    )?;
    Ok(())
}

/// The ConfigMap and the hash of its content (for the pod template annotation).
pub fn build(cgw: &ChatGateway, owner: &Owner) -> Result<(ConfigMap, String)> {
    let yaml = gateway_config(cgw)?.to_yaml();
    let hash = format!("{:x}", Sha256::digest(yaml.as_bytes()));
    let cm = ConfigMap {
        metadata: owner.meta(&owner.config_map_name()),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    };
    Ok((cm, hash[..16].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::*;

    fn config_of(spec: &str) -> (ConfigMap, String) {
        let cgw = cgw(spec);
        build(&cgw, &Owner::of(&cgw, "default").expect("owner")).expect("build")
    }

    fn parsed(cm: &ConfigMap) -> Config {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .expect("config.yaml");
        let config = Config::from_yaml(text).expect("the gateway parses the operator's config");
        config.validate().expect("and accepts it");
        config
    }

    #[test]
    fn minimal_spec_gives_gateway_defaults_with_insecure_auth() {
        let (cm, _) = config_of(MINIMAL);
        let config = parsed(&cm);
        assert_eq!(config.auth.mode, AuthMode::Insecure);
        assert_eq!(config.engine, EngineKind::Memory);
        assert_eq!(config.limits, Config::default().limits);
        assert_eq!(cm.metadata.name.as_deref(), Some("chat-config"));
    }

    #[test]
    fn full_spec_round_trips_through_the_gateway_loader() {
        let (cm, _) = config_of(FULL);
        let c = parsed(&cm);
        assert_eq!(c.engine, EngineKind::Redis);
        assert_eq!(c.redis.key_prefix, "prod");
        assert_eq!(c.auth.mode, AuthMode::Jwt);
        assert_eq!(c.auth.jwt.secret_file, Some(PathBuf::from(JWT_SECRET_FILE)));
        assert_eq!(
            c.auth.jwt.secret, None,
            "secrets never go into the ConfigMap"
        );
        assert_eq!(c.auth.jwt.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(c.heartbeat.interval.as_secs(), 20);
        assert_eq!(c.limits.max_frame_bytes, 32768);
        assert_eq!(c.limits.message_rate, 10.0);
        assert_eq!(c.history.max_messages, 500);
        assert_eq!(c.history.max_age.as_secs(), 12 * 3600);
        assert_eq!(c.sessions.resume_ttl.as_secs(), 600);
        assert_eq!(c.server.allowed_origins, ["https://chat.example"]);
        assert_eq!(c.drain.timeout.as_secs(), 90);
        assert_eq!(c.drain.accept_grace.as_secs(), 5);
        assert_eq!(c.drain.evict_rate, 200.0);
        assert!(c.rebalance.enabled);
        assert_eq!(c.rebalance.rel_threshold, 0.3);
        assert_eq!(c.rebalance.rate, 10.0);
        assert_eq!(c.routes.len(), 2);
        let bots = &c.routes[0];
        assert_eq!(
            (
                bots.name.as_str(),
                bots.path_prefix.as_str(),
                bots.upstream.as_str()
            ),
            ("bots", "/bots", "bot-service:9000")
        );
        assert!(bots.strip_prefix);
        assert_eq!(bots.headers.get("X-Team").map(String::as_str), Some("blue"));
        assert!(!bots.forward_user);
        assert!(bots.forward_trace, "unset keeps the gateway default");
        assert_eq!(bots.connect_timeout, std::time::Duration::from_secs(3));
        assert_eq!(bots.retries, 4);
        assert_eq!(bots.retry_backoff, std::time::Duration::from_millis(100));
        assert_eq!(bots.max_connections, 500);
        assert_eq!(bots.max_frame_bytes, 65536);
        let games = &c.routes[1];
        let defaults = RouteConfig::default();
        assert_eq!(games.upstream, "ws://localhost:9100/base");
        assert_eq!(
            (games.retries, games.max_connections, games.max_frame_bytes),
            (
                defaults.retries,
                defaults.max_connections,
                defaults.max_frame_bytes
            )
        );
    }

    #[test]
    fn routes_the_gateway_would_refuse_are_an_invalid_spec() {
        for (route, want) in [
            (
                "{name: a, pathPrefix: /healthz, upstream: svc:80}",
                "gateway's own endpoints",
            ),
            (
                "{name: a, pathPrefix: /a, upstream: 'http://x'}",
                "routes[0]",
            ),
            (
                "{name: a, pathPrefix: /a, upstream: svc:80, connectTimeout: soon}",
                "routes[0].connectTimeout",
            ),
        ] {
            let cgw = cgw(&format!(
                "gateway: {{auth: {{mode: insecure}}, routes: [{route}]}}"
            ));
            let err = build(&cgw, &Owner::of(&cgw, "default").expect("owner")).unwrap_err();
            assert!(
                matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
                "{route}: {err}"
            );
        }
    }

    #[test]
    fn rs256_points_at_the_mounted_public_key() {
        let (cm, _) = config_of(
            "gateway: {auth: {jwt: {algorithm: RS256, publicKeySecretRef: {name: k, key: pem}}}}",
        );
        let c = parsed(&cm);
        assert_eq!(c.auth.jwt.algorithm, JwtAlgorithm::RS256);
        assert_eq!(
            c.auth.jwt.public_key_file,
            Some(PathBuf::from(JWT_PUBLIC_KEY_FILE))
        );
    }

    #[test]
    fn jwt_without_a_key_is_refused_like_the_gateway_would() {
        let cgw = cgw("{}");
        let err = build(&cgw, &Owner::of(&cgw, "default").expect("owner")).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains("auth.jwt")),
            "{err}"
        );
    }

    #[test]
    fn config_hash_changes_with_the_config_only() {
        let (_, a) = config_of(MINIMAL);
        let (_, b) = config_of(MINIMAL);
        let (_, c) = config_of("gateway: {auth: {mode: insecure}, heartbeatInterval: 10s}");
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
