//! ConfigMap holding the gateway's `config.yaml`, produced from the gateway's own `Config`.

use super::{auth, backend, namespaces, parse_duration, redis, set, Owner};
use crate::crd::{AdmissionSpec, ChatGateway, GatewaySpec, LimitsSpec, RetentionSpec, RouteSpec};
use crate::error::{Error, Result};
use chat_gateway_config::{
    AdmissionConfig, Config, EngineKind, LimitsConfig, RetentionConfig, RouteConfig,
};
use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Key of the config file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Directory the ConfigMap is mounted at.
pub const CONFIG_DIR: &str = "/etc/chatgateway";

/// Keys of `gateway.config` the operator controls itself, and what to use instead.
const RESERVED: &[(&[&str], &str)] = &[
    (
        &["server", "listen"],
        "the pods listen on port 8080, where the probes and the Service point",
    ),
    (&["node"], "node.id is the pod name"),
    (&["engine"], "the engine follows gateway.redis"),
    (
        &["redis", "url"],
        "the URL comes from gateway.redis.urlSecretRef",
    ),
    (&["redis", "mode"], "use gateway.redis.mode"),
    (&["redis", "nodes"], "use gateway.redis.nodes"),
    (
        &["redis", "sentinel"],
        "use gateway.redis.sentinel, whose credentials come from Secrets",
    ),
    (
        &["redis", "username"],
        "the user comes from gateway.redis.usernameSecretRef",
    ),
    (
        &["redis", "password"],
        "a password belongs in a Secret: gateway.redis.passwordSecretRef",
    ),
    (
        &["redis", "tls"],
        "use gateway.redis.tls, whose CA and client certificate come from Secrets, mounted as those files",
    ),
    (&["auth"], "use gateway.auth, whose keys come from Secrets"),
    (
        &["drain", "timeout"],
        "use spec.drain.timeout, which also sets the pods' grace period",
    ),
    (
        &["api", "listen"],
        "use gateway.api.port: the pods' api port, where the <name>-api Service points",
    ),
    (
        &["api", "keysFile"],
        "use gateway.api.keysSecretRef, mounted as that file",
    ),
    (
        &["api", "keys"],
        "API keys belong in a Secret (gateway.api.keysSecretRef), not in the ConfigMap",
    ),
];

/// The gateway config a spec asks for: `gateway.config` first, the typed fields over it,
/// validated like the gateway validates it at start.
pub fn gateway_config(cgw: &ChatGateway) -> Result<Config> {
    let free_form = cgw.spec.gateway.as_ref().and_then(|g| g.config.as_ref());
    let mut config = match free_form {
        Some(value) => free_form_config(value)?,
        None => Config::default(),
    };
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
        c.period = parse_duration("drain.period", d.period.as_deref(), c.period)?;
        c.timeout = parse_duration("drain.timeout", d.timeout.as_deref(), c.timeout)?;
        c.reconnect_jitter = parse_duration(
            "drain.reconnectJitter",
            d.reconnect_jitter.as_deref(),
            c.reconnect_jitter,
        )?;
    }
    config
        .validate()
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    Ok(config)
}

/// `gateway.config` read by the gateway's own loader (unknown keys and bad values are
/// refused with the gateway's message), after refusing the keys the operator controls.
fn free_form_config(value: &serde_json::Value) -> Result<Config> {
    for (path, instead) in RESERVED {
        let mut node = Some(value);
        for key in *path {
            node = node.and_then(|n| n.get(key));
        }
        if node.is_some() {
            return Err(Error::InvalidSpec(format!(
                "gateway.config.{} is set by the operator: {instead}",
                path.join(".")
            )));
        }
    }
    let yaml = chat_gateway_config::to_yaml(value).map_err(Error::Serialize)?;
    Config::from_yaml(&yaml).map_err(|e| Error::InvalidSpec(format!("gateway.config: {e}")))
}

/// Applies `spec.gateway` to the config.
fn gateway_section(config: &mut Config, g: &GatewaySpec) -> Result<()> {
    if !g.allowed_origins.is_empty() {
        config.server.allowed_origins = g.allowed_origins.clone();
    }
    if let Some(r) = &g.redis {
        // The URL and credentials come from Secrets through the environment, never the
        // ConfigMap (builders::redis).
        config.engine = EngineKind::Redis;
        redis::apply(&mut config.redis, r)?;
    }
    if let Some(a) = &g.auth {
        auth::apply(&mut config.auth, a)?;
    }
    // `heartbeatInterval` is the v1alpha1 spelling; `validate` refuses both at once.
    let (field, interval) = match g.heartbeat.as_ref().and_then(|h| h.interval.as_deref()) {
        Some(i) => ("gateway.heartbeat.interval", Some(i)),
        None => ("gateway.heartbeatInterval", g.heartbeat_interval.as_deref()),
    };
    config.heartbeat.interval = parse_duration(field, interval, config.heartbeat.interval)?;
    if let Some(a) = &g.admission {
        admission(&mut config.admission, a)?;
    }
    if let Some(l) = &g.limits {
        limits(&mut config.limits, l)?;
    }
    retention(&mut config.history, g.history.as_ref(), "gateway.history")?;
    retention(&mut config.inbox, g.inbox.as_ref(), "gateway.inbox")?;
    if !g.namespaces.is_empty() || g.default_namespace.is_some() {
        // After `history` and `inbox`: a namespace's own retention starts from them.
        config.namespaces = namespaces::namespaces(
            &g.namespaces,
            g.default_namespace.as_ref(),
            &config.history,
            &config.inbox,
        )?;
    }
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
        set(&mut c.kept_per_user, s.kept_per_user)?;
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
        if let Some(abs) = r.abs_threshold {
            c.abs_threshold = u64::try_from(abs).map_err(|_| {
                Error::InvalidSpec(format!("gateway.rebalance.absThreshold {abs} out of range"))
            })?;
        }
        c.interval = parse_duration(
            "gateway.rebalance.interval",
            r.interval.as_deref(),
            c.interval,
        )?;
    }
    if let Some(api) = &g.api {
        backend::apply_api(&mut config.api, api)?;
    }
    if let Some(hooks) = &g.hooks {
        backend::apply_hooks(&mut config.hooks, hooks)?;
    }
    if !g.routes.is_empty() {
        config.routes = g
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route(i, r))
            .collect::<Result<_>>()?;
    }
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
    c.idle_timeout = parse_duration(
        &field("idleTimeout"),
        r.idle_timeout.as_deref(),
        c.idle_timeout,
    )?;
    set(&mut c.retries, r.retries.map(i64::from))?;
    set(&mut c.max_connections, r.max_connections)?;
    set(&mut c.max_frame_bytes, r.max_frame_bytes)?;
    Ok(c)
}

/// `spec.gateway.admission`; rates are whole numbers in the CRD (CRDs avoid floats).
fn admission(c: &mut AdmissionConfig, a: &AdmissionSpec) -> Result<()> {
    set(&mut c.rate, a.rate)?;
    set_rate(&mut c.per_ip_rate, a.per_ip_rate);
    set_rate(&mut c.per_user_rate, a.per_user_rate);
    set(&mut c.per_ip_burst, a.per_ip_burst)?;
    set(&mut c.per_user_burst, a.per_user_burst)?;
    Ok(())
}

/// Sets a per-second rate from a spec integer, if given (bounded by the schema, so exact
/// in an f64).
fn set_rate(target: &mut f64, value: Option<i64>) {
    if let Some(v) = value {
        *target = v as f64;
    }
}

fn limits(c: &mut LimitsConfig, l: &LimitsSpec) -> Result<()> {
    // The schema bounds every value, so these conversions cannot truncate.
    set(&mut c.max_frame_bytes, l.max_frame_bytes)?;
    set_rate(&mut c.message_rate, l.message_rate);
    set(&mut c.message_burst, l.message_burst)?;
    set_rate(&mut c.user_message_rate, l.user_message_rate);
    set(&mut c.user_message_burst, l.user_message_burst)?;
    set_rate(&mut c.frame_rate, l.frame_rate);
    set(&mut c.frame_burst, l.frame_burst)?;
    set(&mut c.rooms_per_connection, l.rooms_per_connection)?;
    set(&mut c.connections_per_ip, l.connections_per_ip)?;
    set(&mut c.handshakes_per_ip, l.handshakes_per_ip)?;
    set(&mut c.connections_per_user, l.connections_per_user)?;
    set(&mut c.new_rooms_per_hour, l.new_rooms_per_hour)?;
    set(&mut c.outbound_queue_frames, l.outbound_queue_frames)?;
    set(&mut c.outbound_queue_bytes, l.outbound_queue_bytes)?;
    set(&mut c.max_errors_in_row, l.max_errors_in_row)?;
    set(&mut c.max_room_name, l.max_room_name)?;
    set(&mut c.history_page_bytes, l.history_page_bytes)?;
    set(&mut c.replay_chunk_bytes, l.replay_chunk_bytes)?;
    set(&mut c.presence_users, l.presence_users)?;
    for (target, value, field) in [
        (&mut c.presence_linger, &l.presence_linger, "presenceLinger"),
        (&mut c.presence_batch, &l.presence_batch, "presenceBatch"),
        (&mut c.fanout_batch, &l.fanout_batch, "fanoutBatch"),
    ] {
        let field = format!("gateway.limits.{field}");
        *target = parse_duration(&field, value.as_deref(), *target)?;
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
///
/// Named by that hash: a pod mounts the whole ConfigMap, so the kubelet rewrites the file
/// in running pods when the ConfigMap changes, and an old pod restarting during a rollout
/// (or after a Deployment the API server refused) would start its old image with the new
/// config: one naming files its volumes do not hold, or fields its gateway does not know,
/// crash-loops. A new config is a new ConfigMap; the reconciler deletes the old ones once
/// no pod of an older template is left.
pub fn build(cgw: &ChatGateway, owner: &Owner) -> Result<(ConfigMap, String)> {
    let redis = cgw.spec.gateway.as_ref().and_then(|g| g.redis.as_ref());
    let yaml = redis::config_yaml(&gateway_config(cgw)?, redis);
    let hash = format!("{:x}", Sha256::digest(yaml.as_bytes()))[..16].to_string();
    let cm = ConfigMap {
        metadata: owner.meta(&owner.config_map_name(&hash)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    };
    Ok((cm, hash))
}

#[cfg(test)]
#[path = "configmap_tests.rs"]
mod tests;
