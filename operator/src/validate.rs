//! Specs that cannot work, refused before anything is applied.
//!
//! The CRD refuses these at admission with CEL rules, but API servers before 1.25 ignore
//! CEL, and `render` has no API server at all: the operator checks them again and reports
//! `InvalidSpec`. Every rule with a CEL twin in `crd.rs` is run on the same specs as its
//! twin in `crd/cel_tests.rs`, so the two cannot drift apart.

use crate::builders::{API_SERVICE_SUFFIX, HTTP_PORT};
use crate::crd::{
    ApiSpec, AuthModeSpec, AuthSpec, ChatGatewaySpec, JwtAlgorithmSpec, RedisSpec, RolloutStrategy,
    ServiceType,
};
use crate::error::{Error, Result};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;

/// Environment variables the operator sets on the gateway container itself.
pub const OPERATOR_ENV: &[&str] = &[
    "POD_NAME",
    "POD_NAMESPACE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// Longest ChatGateway name. The name is the Service's name: Service names are DNS-1035
/// labels of at most 63 characters. That also bounds the `app.kubernetes.io/instance`
/// label value (63) and the other children (`<name>-config-<hash>`, `<name>-otel-collector`:
/// ConfigMap names, DNS-1123 subdomains of up to 253; the Deployment, HPA, PDB and
/// NetworkPolicy: `<name>`).
pub const MAX_NAME_LEN: usize = 63;
/// Longest ChatGateway name with the server API on: `<name>-api` is a Service too.
pub const MAX_NAME_LEN_WITH_API: usize = MAX_NAME_LEN - API_SERVICE_SUFFIX.len();

/// Refuses a ChatGateway name its children cannot carry. The API server accepts any
/// DNS-1123 subdomain as a ChatGateway's name (dots, a leading digit, 253 characters), but
/// the Services need DNS-1035 labels: without this check the ConfigMap and Deployment of
/// such a name would be created and the Service refused on every reconcile.
/// With the server API on (`api`), `<name>-api` must fit as well: a gateway of a longer
/// name (60 to 63 characters) runs without it, and turning it on is refused.
pub fn check_name(name: &str, api: bool) -> Result<()> {
    let label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let (max, services) = if api {
        (
            MAX_NAME_LEN_WITH_API,
            format!("{name}, {name}{API_SERVICE_SUFFIX}"),
        )
    } else {
        (MAX_NAME_LEN, name.to_string())
    };
    if label && name.len() <= max {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "metadata.name {name:?} cannot name the gateway's Services ({services}): use at most {max} lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"
    )))
}

/// Replicas of a new gateway whose spec names none: one chat server with the memory engine
/// (every pod would be a separate one), two with Redis.
pub fn default_replicas(spec: &ChatGatewaySpec) -> i32 {
    if uses_redis(spec) {
        2
    } else {
        1
    }
}

/// Whether the gateways share state through Redis (otherwise: the memory engine).
pub fn uses_redis(spec: &ChatGatewaySpec) -> bool {
    spec.gateway.as_ref().is_some_and(|g| g.redis.is_some())
}

/// Fails with the first rule `spec` breaks.
pub fn check(spec: &ChatGatewaySpec) -> Result<()> {
    let invalid = |m: &str| Err(Error::InvalidSpec(m.to_string()));
    let Some(auth) = spec.gateway.as_ref().and_then(|g| g.auth.as_ref()) else {
        return invalid(
            "spec.gateway.auth is required: `jwt` with a key Secret, or `mode: insecure` for demos",
        );
    };
    check_auth(auth)?;
    if let Some(api) = spec.gateway.as_ref().and_then(|g| g.api.as_ref()) {
        check_api(spec, api)?;
    }
    if let Some(redis) = spec.gateway.as_ref().and_then(|g| g.redis.as_ref()) {
        check_redis(redis)?;
    }
    if let Some(g) = &spec.gateway {
        if g.heartbeat_interval.is_some()
            && g.heartbeat.as_ref().is_some_and(|h| h.interval.is_some())
        {
            return invalid(
                "set gateway.heartbeat.interval or the old gateway.heartbeatInterval, not both",
            );
        }
    }
    if let Some(s) = &spec.service {
        let outside = matches!(
            s.type_,
            Some(ServiceType::LoadBalancer | ServiceType::NodePort)
        );
        if s.external_traffic_policy.is_some() && !outside {
            return invalid(
                "service.externalTrafficPolicy applies to type LoadBalancer or NodePort",
            );
        }
    }
    let autoscaling = spec.autoscaling.as_ref().filter(|a| a.enabled);
    if !uses_redis(spec) && (spec.replicas.is_some_and(|r| r > 1) || autoscaling.is_some()) {
        return invalid("the memory engine makes every pod its own chat server: more than one replica or autoscaling needs gateway.redis");
    }
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas.unwrap_or(2) > a.max_replicas.unwrap_or(10) {
            return invalid(
                "autoscaling.minReplicas (default 2) must not exceed maxReplicas (default 10)",
            );
        }
    }
    if let Some(d) = spec.disruption_budget.as_ref().filter(|d| d.enabled) {
        if d.max_unavailable.is_some() && d.min_available.is_some() {
            return invalid("set maxUnavailable or minAvailable, not both");
        }
        let floor = match autoscaling {
            Some(a) => a.min_replicas.unwrap_or(2),
            None => spec.replicas.unwrap_or_else(|| default_replicas(spec)),
        };
        let blocks = match &d.min_available {
            Some(IntOrString::Int(n)) => *n >= floor,
            // The disruption controller rounds a percentage up: 50% of one pod is one.
            Some(IntOrString::String(s)) => percent(s).is_some_and(|p| {
                let floor = i64::from(floor.max(0));
                (p * floor + 99) / 100 >= floor
            }),
            None => false,
        };
        if blocks {
            return invalid("disruptionBudget.minAvailable must stay below the replica floor (autoscaling.minReplicas, or replicas): otherwise no pod can ever be evicted and node drains block forever");
        }
        let none_down = match &d.max_unavailable {
            Some(IntOrString::Int(n)) => *n <= 0,
            Some(IntOrString::String(s)) => s == "0%",
            None => false,
        };
        if none_down {
            return invalid("disruptionBudget.maxUnavailable must allow at least one pod down: 0 blocks node drains forever");
        }
    }
    if let Some(d) = &spec.drain {
        let grace = duration(
            "drain.acceptGrace",
            d.accept_grace.as_deref(),
            Duration::from_secs(5),
        )?;
        let timeout = duration(
            "drain.timeout",
            d.timeout.as_deref(),
            Duration::from_secs(60),
        )?;
        if grace >= timeout {
            return invalid("drain.acceptGrace (default 5s) must be shorter than drain.timeout (default 60s): the drain would end before the pod stopped accepting");
        }
    }
    if let Some(r) = &spec.rollout {
        if r.max_surge.is_some() && r.strategy != Some(RolloutStrategy::Rolling) {
            return invalid("rollout.maxSurge applies to strategy Rolling only (SurgeAll starts every new pod first)");
        }
        if let Some(surge) = &r.max_surge {
            check_max_surge(surge)?;
        }
    }
    for (i, e) in spec.env.iter().enumerate() {
        if e.name.starts_with(chat_gateway_config::ENV_PREFIX) {
            return Err(Error::InvalidSpec(format!(
                "env[{i}].name {:?}: CHATGW_* variables would bypass the checked config; use gateway.config",
                e.name
            )));
        }
        if OPERATOR_ENV.contains(&e.name.as_str()) {
            return Err(Error::InvalidSpec(format!(
                "env[{i}].name {:?} is set by the operator",
                e.name
            )));
        }
    }
    for (i, e) in spec.env_from.iter().enumerate() {
        // Every variable of a source gets the prefix. The sources' own keys are not
        // checked: the operator does not read the ConfigMaps and Secrets they name.
        if let Some(prefix) = e
            .prefix
            .as_deref()
            .filter(|p| p.starts_with(chat_gateway_config::ENV_PREFIX))
        {
            return Err(Error::InvalidSpec(format!(
                "envFrom[{i}].prefix {prefix:?}: CHATGW_* variables would bypass the checked config; use gateway.config"
            )));
        }
    }
    Ok(())
}

/// `rollout.maxSurge` as the API server takes it beside the operator's `maxUnavailable: 0`
/// (see `builders::rollout`): a count or `N%`, not negative, and not 0, since a
/// Deployment with both at 0 could never replace a pod and is refused.
fn check_max_surge(surge: &IntOrString) -> Result<()> {
    let n = match surge {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => percent(s).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "rollout.maxSurge {s:?} is neither a number of pods nor a percentage like \"25%\""
            ))
        })?,
    };
    if n < 0 {
        return Err(Error::InvalidSpec(
            "rollout.maxSurge must not be negative".into(),
        ));
    }
    if n == 0 {
        return Err(Error::InvalidSpec("rollout.maxSurge must be at least 1 (or 1%): the operator keeps maxUnavailable at 0 so that no pod drains before its replacement is ready, and Kubernetes refuses a Deployment whose maxSurge and maxUnavailable are both 0".into()));
    }
    Ok(())
}

/// A percentage in Kubernetes' syntax: digits, then `%` (no sign, no plain number).
fn percent(s: &str) -> Option<i64> {
    s.strip_suffix('%')
        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<i64>().ok())
}

/// The CEL rules of `gateway.auth` and `gateway.auth.jwt` (crd/auth.rs), same messages.
fn check_auth(auth: &AuthSpec) -> Result<()> {
    let invalid = |m: &str| Err(Error::InvalidSpec(m.to_string()));
    let insecure = auth.mode == Some(AuthModeSpec::Insecure);
    if !insecure && auth.jwt.is_none() {
        return invalid("auth.jwt is required unless auth.mode is insecure");
    }
    if insecure && auth.dangerously_allow_insecure_on_network != Some(true) {
        return invalid("auth.mode insecure lets anyone who reaches a pod connect as any user (?user=NAME), and the pods listen on the network: use auth.mode jwt, or set auth.dangerouslyAllowInsecureOnNetwork: true for a demo nobody else can reach");
    }
    let Some(jwt) = &auth.jwt else { return Ok(()) };
    let key_set = jwt.jwks_secret_ref.is_some();
    match jwt.algorithm.unwrap_or(JwtAlgorithmSpec::HS256) {
        JwtAlgorithmSpec::HS256 if jwt.secret_ref.is_none() && !key_set => {
            return invalid("HS256 needs secretRef (or a key set: jwksSecretRef)")
        }
        JwtAlgorithmSpec::RS256 | JwtAlgorithmSpec::ES256 | JwtAlgorithmSpec::EdDSA
            if jwt.public_key_secret_ref.is_none() && !key_set =>
        {
            return invalid(
                "RS256, ES256 and EdDSA need publicKeySecretRef (or a key set: jwksSecretRef)",
            )
        }
        _ => {}
    }
    if jwt.audience.is_none() && jwt.require_audience != Some(false) {
        return invalid("auth.jwt.audience is required (the aud claim your tokens are minted for), unless requireAudience: false");
    }
    Ok(())
}

/// The CEL rules of `gateway.api` (crd/backend.rs), same messages, and a port clash only
/// the operator checks.
fn check_api(spec: &ChatGatewaySpec, api: &ApiSpec) -> Result<()> {
    let invalid = |m: &str| Err(Error::InvalidSpec(m.to_string()));
    if api.enabled && api.keys_secret_ref.is_none() {
        return invalid("gateway.api needs keysSecretRef: the API keys, one per line, in a Secret");
    }
    if api.port == Some(HTTP_PORT) {
        return invalid("gateway.api.port must not be 8080, the gateway's public port: the server API needs a port of its own");
    }
    let port = crate::builders::backend::api_port(spec);
    let collector = spec
        .telemetry
        .as_ref()
        .and_then(|t| t.collector.as_ref())
        .is_some_and(|c| c.enabled);
    if collector && port.is_some_and(|p| crate::builders::collector::PORTS.contains(&p)) {
        return Err(Error::InvalidSpec(format!(
            "gateway.api.port {} is the OpenTelemetry Collector's in the same pod (4317, 4318): pick another",
            port.unwrap_or_default()
        )));
    }
    Ok(())
}

/// The CEL rules of `gateway.redis` (crd/redis.rs), same messages.
fn check_redis(r: &RedisSpec) -> Result<()> {
    use crate::crd::{
        BAD_ADDRESS, CLIENT_CERT_AND_KEY, CLUSTER_NEEDS_SEEDS, NODES_ONLY_CLUSTER,
        NO_URL_WITH_SENTINEL, SENTINEL_NEEDS_MASTER, SENTINEL_ONLY_SENTINEL, SINGLE_NEEDS_URL,
        TLS_NEEDS_REDISS,
    };
    use chat_gateway_config::RedisMode;
    let invalid = |m: &str| Err(Error::InvalidSpec(m.to_string()));
    let mode = r.mode();
    let sentinel = r.sentinel.as_ref();
    if mode == RedisMode::Single && r.url_secret_ref.is_none() {
        return invalid(SINGLE_NEEDS_URL);
    }
    if mode == RedisMode::Cluster && r.url_secret_ref.is_none() && r.nodes.is_empty() {
        return invalid(CLUSTER_NEEDS_SEEDS);
    }
    if mode == RedisMode::Sentinel
        && !sentinel.is_some_and(|s| s.master_name.is_some() && !s.addresses.is_empty())
    {
        return invalid(SENTINEL_NEEDS_MASTER);
    }
    if !r.nodes.is_empty() && mode != RedisMode::Cluster {
        return invalid(NODES_ONLY_CLUSTER);
    }
    if r.sentinel.is_some() && mode != RedisMode::Sentinel {
        return invalid(SENTINEL_ONLY_SENTINEL);
    }
    if r.url_secret_ref.is_some() && mode == RedisMode::Sentinel {
        return invalid(NO_URL_WITH_SENTINEL);
    }
    let addresses = sentinel.map(|s| s.addresses.as_slice()).unwrap_or_default();
    if !r.nodes.iter().chain(addresses).all(|a| redis_address(a)) {
        return invalid(BAD_ADDRESS);
    }
    if let Some(tls) = &r.tls {
        // The addresses the mode uses; a URL in a Secret is checked when it is read.
        let listed = match mode {
            RedisMode::Cluster => r.nodes.as_slice(),
            RedisMode::Sentinel => addresses,
            RedisMode::Single => &[],
        };
        if !listed.is_empty() && !listed.iter().any(|a| a.starts_with("rediss://")) {
            return invalid(TLS_NEEDS_REDISS);
        }
        if tls.client_cert_secret_ref.is_some() != tls.client_key_secret_ref.is_some() {
            return invalid(CLIENT_CERT_AND_KEY);
        }
    }
    Ok(())
}

/// What `crd::REDIS_ADDRESS_PATTERN` accepts: `redis://` or `rediss://`, then a host and
/// port without `/`, `@` or spaces, and at most a trailing `/`.
fn redis_address(a: &str) -> bool {
    let Some(rest) = a
        .strip_prefix("redis://")
        .or_else(|| a.strip_prefix("rediss://"))
    else {
        return false;
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    !host.is_empty() && !host.contains(['/', '@', ' '])
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    crate::builders::parse_duration(field, text, default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{BACKEND, FULL, MINIMAL, SIDECARS};

    fn check_yaml(spec: &str) -> Result<()> {
        check(&crate::yaml::from_str(spec).expect("spec"))
    }

    const REDIS: &str = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: r, key: u}}}";

    #[test]
    fn the_fixtures_pass() {
        for spec in [MINIMAL, FULL, SIDECARS, BACKEND] {
            assert!(check_yaml(spec).is_ok(), "{spec}");
        }
    }

    #[test]
    fn operator_only_rules() {
        for (spec, want) in [
            (
                "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nenv: [{name: CHATGW_ENGINE, value: redis}]",
                "env[0].name \"CHATGW_ENGINE\"",
            ),
            (
                "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nenv: [{name: RUST_LOG, value: debug}, {name: POD_NAME, value: x}]",
                "env[1].name \"POD_NAME\" is set by the operator",
            ),
        ] {
            let err = check_yaml(spec).expect_err(spec);
            assert!(err.to_string().contains(want), "{spec}: {err}");
        }
        assert!(check_yaml(
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nenv: [{name: RUST_LOG, value: debug}]"
        )
        .is_ok());
    }

    #[test]
    fn names_the_services_cannot_carry_are_refused() {
        let fits_alone = "a".repeat(MAX_NAME_LEN_WITH_API + 1);
        for (name, api) in [
            ("a".repeat(64), false),
            ("chat.v2".into(), false),
            ("1chat".into(), false),
            (fits_alone.clone(), true),
        ] {
            let err = check_name(&name, api).expect_err(&name);
            assert!(
                matches!(&err, Error::InvalidSpec(m) if m.starts_with("metadata.name")),
                "{name}: {err}"
            );
        }
        for name in ["Chat", "chat-", "-chat", "chat_v2", ""] {
            assert!(check_name(name, false).is_err(), "{name}");
        }
        for (name, api) in [
            ("chat".to_string(), true),
            ("chat-v2".into(), true),
            ("a".repeat(MAX_NAME_LEN_WITH_API), true),
            (fits_alone, false),
            ("a".repeat(MAX_NAME_LEN), false),
        ] {
            assert!(check_name(&name, api).is_ok(), "{name}");
        }
    }

    #[test]
    fn rolling_needs_a_surge_kubernetes_accepts_beside_no_unavailable_pod() {
        let spec =
            |surge: &str| format!("{REDIS}\nrollout: {{strategy: Rolling, maxSurge: {surge}}}");
        for (surge, want) in [
            ("0", "must be at least 1"),
            ("'0%'", "must be at least 1"),
            ("'000%'", "must be at least 1"),
            ("-1", "must not be negative"),
            ("'-5%'", "neither a number of pods nor a percentage"),
            ("'2'", "neither a number of pods nor a percentage"),
            ("'%'", "neither a number of pods nor a percentage"),
            ("'25 %'", "neither a number of pods nor a percentage"),
            ("many", "neither a number of pods nor a percentage"),
        ] {
            let err = check_yaml(&spec(surge)).expect_err(surge);
            assert!(
                matches!(&err, Error::InvalidSpec(m) if m.contains("rollout.maxSurge") && m.contains(want)),
                "{surge}: {err}"
            );
        }
        for surge in ["1", "3", "'1%'", "'25%'", "'150%'"] {
            assert!(check_yaml(&spec(surge)).is_ok(), "{surge}");
        }
    }

    #[test]
    fn env_from_must_not_make_chatgw_variables() {
        let spec = |prefix: &str| {
            format!("{REDIS}\nenvFrom: [{{configMapRef: {{name: a}}}}, {{prefix: '{prefix}', secretRef: {{name: b}}}}]")
        };
        for prefix in ["CHATGW_", "CHATGW_REDIS__"] {
            let err = check_yaml(&spec(prefix)).expect_err(prefix);
            assert!(
                matches!(&err, Error::InvalidSpec(m) if m.starts_with(&format!("envFrom[1].prefix {prefix:?}: CHATGW_*"))),
                "{prefix}: {err}"
            );
        }
        for prefix in ["APP_", "chatgw_", ""] {
            assert!(check_yaml(&spec(prefix)).is_ok(), "{prefix:?}");
        }
    }

    #[test]
    fn the_api_port_must_not_be_the_collectors() {
        let spec = |port: u16, collector: bool| {
            format!(
                "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, api: {{port: {port}, keysSecretRef: {{name: k, key: keys}}}}}}\ntelemetry: {{otlpEndpoint: 'http://c:4317', collector: {{enabled: {collector}}}}}"
            )
        };
        for port in [4317, 4318] {
            let err = check_yaml(&spec(port, true)).expect_err("clash");
            assert!(err.to_string().contains("OpenTelemetry Collector"), "{err}");
            assert!(
                check_yaml(&spec(port, false)).is_ok(),
                "no collector, no clash"
            );
        }
        assert!(check_yaml(&spec(9090, true)).is_ok());
    }

    #[test]
    fn default_replicas_follow_the_engine() {
        let spec = |s: &str| crate::yaml::from_str::<ChatGatewaySpec>(s).expect("spec");
        assert_eq!(default_replicas(&spec(MINIMAL)), 1);
        assert_eq!(default_replicas(&spec(FULL)), 2);
    }
}
