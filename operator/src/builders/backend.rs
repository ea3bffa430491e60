//! `gateway.api` and `gateway.hooks` as the gateway's `api` and `hooks` config.
//!
//! The API listens on all addresses of the pod on its own port (the `api` container port,
//! behind the `<name>-api` Service); its keys are a Secret key mounted as a file, never in
//! the ConfigMap, and the gateway re-reads that file, so they rotate without new pods.

use super::parse_duration;
use crate::crd::{
    ApiSpec, ChatGatewaySpec, EventKindSpec, EventsHookSpec, FailurePolicySpec, HookSpec,
    HooksSpec, DEFAULT_API_PORT,
};
use crate::error::{Error, Result};
use chat_gateway_config::{ApiConfig, EventsConfig, FailurePolicy, HookConfig, HooksConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// File the API keys are mounted as (docs/backend.md names this path).
pub const API_KEYS_FILE: &str = "/var/run/secrets/chatgateway/api/keys";
/// Name of the API's container and Service port.
pub const PORT_NAME: &str = "api";

/// The API section when it is on.
pub fn api(spec: &ChatGatewaySpec) -> Option<&ApiSpec> {
    spec.gateway
        .as_ref()
        .and_then(|g| g.api.as_ref())
        .filter(|a| a.enabled)
}

/// The API's port when it is on.
pub fn api_port(spec: &ChatGatewaySpec) -> Option<i32> {
    api(spec).map(|a| a.port.unwrap_or(DEFAULT_API_PORT))
}

/// Applies `spec.gateway.api` (when on) to the config.
pub fn apply_api(config: &mut ApiConfig, spec: &ApiSpec) -> Result<()> {
    if !spec.enabled {
        return Ok(());
    }
    let port = spec.port.unwrap_or(DEFAULT_API_PORT);
    let port = u16::try_from(port)
        .map_err(|_| Error::InvalidSpec(format!("gateway.api.port {port} out of range")))?;
    config.listen = Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    config.keys_file = spec
        .keys_secret_ref
        .as_ref()
        .map(|_| PathBuf::from(API_KEYS_FILE));
    config.reload_interval = parse_duration(
        "gateway.api.reloadInterval",
        spec.reload_interval.as_deref(),
        config.reload_interval,
    )?;
    if let Some(sender) = &spec.default_sender {
        config.default_sender = sender.clone();
    }
    Ok(())
}

/// Applies `spec.gateway.hooks` to the config: each hook set here replaces the same hook
/// of `gateway.config`.
pub fn apply_hooks(config: &mut HooksConfig, spec: &HooksSpec) -> Result<()> {
    for (name, target, hook) in [
        ("connect", &mut config.connect, &spec.connect),
        ("join", &mut config.join, &spec.join),
        ("send", &mut config.send, &spec.send),
        ("refresh", &mut config.refresh, &spec.refresh),
    ] {
        if let Some(h) = hook {
            *target = Some(decision_hook(name, h)?);
        }
    }
    if let Some(e) = &spec.events {
        config.events = Some(events_hook(e)?);
    }
    Ok(())
}

fn decision_hook(name: &str, h: &HookSpec) -> Result<HookConfig> {
    let field = |f: &str| format!("gateway.hooks.{name}.{f}");
    let mut c = HookConfig {
        url: h.url.clone(),
        rooms: h.rooms.clone(),
        ..HookConfig::default()
    };
    c.timeout = parse_duration(&field("timeout"), h.timeout.as_deref(), c.timeout)?;
    super::set(&mut c.retries, h.retries.map(i64::from))?;
    super::set(&mut c.max_concurrent, h.max_concurrent.map(i64::from))?;
    if let Some(policy) = h.on_failure {
        c.on_failure = match policy {
            FailurePolicySpec::Refuse => FailurePolicy::Refuse,
            FailurePolicySpec::Allow => FailurePolicy::Allow,
        };
    }
    super::set(&mut c.breaker_failures, h.breaker_failures.map(i64::from))?;
    c.breaker_cooldown = parse_duration(
        &field("breakerCooldown"),
        h.breaker_cooldown.as_deref(),
        c.breaker_cooldown,
    )?;
    Ok(c)
}

fn events_hook(e: &EventsHookSpec) -> Result<EventsConfig> {
    let mut c = EventsConfig {
        url: e.url.clone(),
        ..EventsConfig::default()
    };
    c.timeout = parse_duration(
        "gateway.hooks.events.timeout",
        e.timeout.as_deref(),
        c.timeout,
    )?;
    super::set(&mut c.queue_size, e.queue_size)?;
    super::set(&mut c.batch, e.batch)?;
    if let Some(kinds) = &e.kinds {
        c.kinds = kinds.iter().map(|k| kind(*k).to_string()).collect();
    }
    Ok(c)
}

/// The gateway's name of an event kind.
pub fn kind(k: EventKindSpec) -> &'static str {
    match k {
        EventKindSpec::Message => "message",
        EventKindSpec::Connected => "connected",
        EventKindSpec::Disconnected => "disconnected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::configmap::{self, CONFIG_KEY};
    use crate::builders::testing::*;
    use crate::builders::{auth, build, Inputs, Owner};
    use chat_gateway_config::{Config, JoinPolicy};
    use std::time::Duration;

    /// The config the operator writes for `spec`, read back by the gateway's own loader.
    fn gateway_config(spec: &str) -> Config {
        let c = cgw(spec);
        let (cm, _) = configmap::build(&c, &Owner::of(&c, "d").expect("owner")).expect("build");
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
    fn api_and_hooks_round_trip_through_the_gateway_loader() {
        let c = gateway_config(BACKEND);
        assert_eq!(c.api.listen, Some("0.0.0.0:9443".parse().expect("addr")));
        assert_eq!(c.api.keys_file, Some(PathBuf::from(API_KEYS_FILE)));
        assert!(c.api.keys.is_empty(), "keys never go into the ConfigMap");
        assert_eq!(c.api.reload_interval, Duration::from_secs(30));
        assert_eq!(c.api.default_sender, "announcer");
        assert_eq!(c.api.max_broadcast_rooms, 50, "from gateway.config");

        let connect = c.hooks.connect.expect("connect");
        assert_eq!(connect.url, "http://backend:8000/connect");
        assert_eq!(connect.timeout, Duration::from_millis(300));
        assert_eq!(connect.on_failure, FailurePolicy::Allow);
        assert_eq!(connect.retries, HookConfig::default().retries);
        let join = c.hooks.join.expect("join");
        assert_eq!((join.retries, join.breaker_failures), (0, 3));
        assert_eq!(join.max_concurrent, 32);
        assert_eq!(connect.max_concurrent, HookConfig::default().max_concurrent);
        assert_eq!(join.breaker_cooldown, Duration::from_secs(10));
        assert_eq!(join.on_failure, FailurePolicy::Refuse);
        assert_eq!(join.rooms, ["team:*"]);
        assert_eq!(c.hooks.send.expect("send").rooms, ["support:*", "lobby"]);
        let refresh = c.hooks.refresh.expect("refresh");
        assert_eq!(refresh.timeout, HookConfig::default().timeout);
        let events = c.hooks.events.expect("events");
        assert_eq!(events.url, "http://backend:8000/events");
        assert_eq!(events.timeout, Duration::from_secs(5));
        assert_eq!((events.queue_size, events.batch), (500, 20));
        assert_eq!(events.kinds, ["message"]);
        // The join hook makes `join: backend` a namespace the gateway accepts.
        let team = c
            .namespaces
            .iter()
            .find(|n| n.prefix == "team:")
            .expect("team:");
        assert_eq!(team.join, JoinPolicy::Backend);
    }

    #[test]
    fn defaults_are_the_gateways_and_off_means_no_api() {
        let c = gateway_config(
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {keysSecretRef: {name: k, key: keys}}, hooks: {events: {url: 'http://b/e'}}}",
        );
        assert_eq!(c.api.listen, Some(SocketAddr::from(([0, 0, 0, 0], 9090))));
        let defaults = ApiConfig::default();
        assert_eq!(c.api.reload_interval, defaults.reload_interval);
        assert_eq!(c.api.default_sender, defaults.default_sender);
        let events = c.hooks.events.expect("events");
        assert_eq!(events.kinds, EventsConfig::default().kinds);
        assert!(c.hooks.connect.is_none() && c.hooks.join.is_none());

        let off = gateway_config(
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: false}}",
        );
        assert_eq!(off.api, ApiConfig::default());
    }

    #[test]
    fn typed_hooks_replace_those_of_gateway_config() {
        let c = gateway_config(
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, hooks: {join: {url: 'http://typed/join'}}, config: {hooks: {join: {url: 'http://free/join'}, send: {url: 'http://free/send'}}}}",
        );
        assert_eq!(c.hooks.join.expect("join").url, "http://typed/join");
        assert_eq!(c.hooks.send.expect("send").url, "http://free/send");
    }

    #[test]
    fn specs_the_gateway_would_refuse_are_invalid() {
        for (gateway, want) in [
            // The API's listen address and keys are the operator's to set.
            (
                "config: {api: {listen: '0.0.0.0:9999'}}",
                "gateway.config.api.listen",
            ),
            (
                "config: {api: {keysFile: /k}}",
                "gateway.config.api.keysFile",
            ),
            ("config: {api: {keys: [k]}}", "API keys belong in a Secret"),
            // The gateway's own validation of what the hooks say.
            ("hooks: {join: {url: 'http://'}}", "hooks.join.url"),
            (
                "hooks: {send: {url: 'http://b/s', timeout: 0s}}",
                "hooks.send.timeout",
            ),
            (
                "hooks: {connect: {url: 'http://b/c', timeout: soon}}",
                "gateway.hooks.connect.timeout",
            ),
            (
                "namespaces: [{prefix: 'a:', join: backend}]",
                "join: backend needs hooks.join",
            ),
        ] {
            let c = cgw(&format!(
                "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, {gateway}}}"
            ));
            let err = configmap::build(&c, &Owner::of(&c, "d").expect("owner")).unwrap_err();
            assert!(
                matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
                "{gateway}: {err}"
            );
        }
    }

    #[test]
    fn the_pod_serves_the_api_port_and_mounts_the_keys_as_a_file() {
        let c = cgw(BACKEND);
        let children =
            build(&c, &Owner::of(&c, "d").expect("owner"), &Inputs::default()).expect("build");
        let pod = children
            .deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let gateway = &pod.containers[0];
        let ports: Vec<_> = gateway
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [("http".to_string(), 8080), ("api".to_string(), 9443)]
        );
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == auth::API_KEYS_VOLUME)
            .expect("api-keys volume");
        let secret = volume.secret.as_ref().expect("a Secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("chat-api"));
        let item = &secret.items.as_ref().expect("items")[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str(), item.mode),
            ("keys", "keys", Some(0o440))
        );
        let mount = gateway
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == auth::API_KEYS_VOLUME)
            .expect("mounted");
        // A whole-volume mount (no subPath): the kubelet rewrites the file in place.
        assert_eq!(
            (
                mount.mount_path.as_str(),
                mount.sub_path.as_deref(),
                mount.read_only
            ),
            ("/var/run/secrets/chatgateway/api", None, Some(true))
        );
        assert!(API_KEYS_FILE.starts_with(&format!("{}/", mount.mount_path)));
        // Off: neither the port nor the keys.
        let off = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: false, keysSecretRef: {name: chat-api, key: keys}}}");
        assert!(api(&off.spec).is_none());
        assert!(auth::key_files(&off.spec).is_empty());
    }
}
