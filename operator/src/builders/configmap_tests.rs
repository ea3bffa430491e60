//! The gateway config a spec produces, read back by the gateway's own loader and validation.

use super::*;
use crate::builders::auth::{JWT_JWKS_FILE, JWT_PUBLIC_KEY_FILE, JWT_SECRET_FILE};
use crate::builders::testing::*;
use chat_gateway_config::{AuthMode, DmPolicy, JoinPolicy, JwtAlgorithm, SendPolicy};
use std::path::PathBuf;
use std::time::Duration;

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
    assert!(config.auth.dangerously_allow_insecure_on_network);
    assert_eq!(config.engine, EngineKind::Memory);
    assert_eq!(config.limits, Config::default().limits);
    let (_, hash) = config_of(MINIMAL);
    assert_eq!(
        cm.metadata.name.as_deref(),
        Some(format!("chat-config-{hash}").as_str()),
        "named by its content"
    );
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
    assert_eq!(c.auth.jwt.audience.as_deref(), Some("chat.example"));
    assert!(c.auth.jwt.require_audience);
    assert_eq!(c.auth.jwt.jwks_file, Some(PathBuf::from(JWT_JWKS_FILE)));
    assert_eq!(c.auth.jwt.public_key_file, None);
    assert_eq!(c.auth.jwt.reload_interval, Duration::from_secs(30));
    assert_eq!(c.auth.jwt.leeway, Duration::from_secs(10));
    assert_eq!(c.auth.jwt.rooms_claim, "chat_rooms");
    assert!(!c.auth.query_token);
    assert_eq!(c.auth.expiry_warning, Duration::from_secs(120));
    assert!(!c.auth.dangerously_allow_insecure_on_network);
    assert_eq!(c.limits.connections_per_user, 20);
    assert_eq!(c.limits.new_rooms_per_hour, 30);
    assert_eq!(
        (c.limits.user_message_rate, c.limits.user_message_burst),
        (40.0, 90)
    );
    let a = &c.admission;
    assert_eq!(
        (
            a.per_ip_rate,
            a.per_ip_burst,
            a.per_user_rate,
            a.per_user_burst
        ),
        (10.0, 30, 2.0, 8)
    );
    assert_eq!(c.heartbeat.interval.as_secs(), 20);
    assert_eq!(c.limits.max_frame_bytes, 32768);
    assert_eq!(c.limits.message_rate, 10.0);
    let l = &c.limits;
    assert_eq!(
        (
            l.frame_rate,
            l.frame_burst,
            l.handshakes_per_ip,
            l.presence_users
        ),
        (50.0, 80, 32, 200)
    );
    assert_eq!((l.history_page_bytes, l.replay_chunk_bytes), (65536, 32768));
    assert_eq!(
        (l.presence_linger, l.presence_batch, l.fanout_batch),
        (
            Duration::from_secs(2),
            Duration::from_millis(250),
            Duration::from_millis(10)
        )
    );
    assert_eq!(c.history.max_messages, 500);
    assert_eq!(c.history.max_age.as_secs(), 12 * 3600);
    assert_eq!(c.sessions.resume_ttl.as_secs(), 600);
    assert_eq!(c.sessions.kept_per_user, 12);
    assert_eq!(c.server.allowed_origins, ["https://chat.example"]);
    assert_eq!(c.drain.timeout.as_secs(), 90);
    assert_eq!(c.drain.accept_grace.as_secs(), 5);
    assert_eq!(c.drain.evict_rate, 200.0);
    assert!(c.rebalance.enabled);
    assert_eq!(c.rebalance.rel_threshold, 0.3);
    assert_eq!(c.rebalance.rate, 10.0);
    assert_eq!(c.rebalance.abs_threshold, 50);
    assert_eq!(c.rebalance.interval.as_secs(), 5);
    assert_eq!(c.admission.rate, 500);
    assert_eq!(c.drain.period.as_secs(), 30);
    assert_eq!(c.drain.reconnect_jitter.as_secs(), 3);
    // gateway.config fills in what the typed fields leave out; typed fields win.
    assert_eq!(c.limits.max_errors_in_row, 7);
    assert_eq!(c.limits.max_frame_bytes, 32768, "the typed field wins");
    assert_eq!(c.sessions.dedup_window.as_secs(), 120);
    assert_eq!(c.sessions.resume_ttl.as_secs(), 600);
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
    assert_eq!(bots.idle_timeout, std::time::Duration::from_secs(1800));
    assert_eq!(bots.max_connections, 500);
    assert_eq!(bots.max_frame_bytes, 65536);
    let games = &c.routes[1];
    let defaults = RouteConfig::default();
    assert_eq!(games.upstream, "ws://localhost:9100/base");
    assert_eq!(
        (
            games.retries,
            games.max_connections,
            games.max_frame_bytes,
            games.idle_timeout
        ),
        (
            defaults.retries,
            defaults.max_connections,
            defaults.max_frame_bytes,
            defaults.idle_timeout
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
            "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, routes: [{route}]}}"
        ));
        let err = build(&cgw, &Owner::of(&cgw, "default").expect("owner")).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
            "{route}: {err}"
        );
    }
}

#[test]
fn free_form_config_is_checked_by_the_gateway_and_keeps_out_of_operator_keys() {
    for (config, want) in [
        (
            "{server: {listen: '0.0.0.0:9000'}}",
            "gateway.config.server.listen is set by the operator",
        ),
        (
            "{node: {id: x}}",
            "gateway.config.node is set by the operator",
        ),
        (
            "{engine: redis}",
            "gateway.config.engine is set by the operator",
        ),
        (
            "{redis: {url: 'redis://x'}}",
            "gateway.config.redis.url is set by the operator",
        ),
        (
            "{auth: {mode: insecure}}",
            "gateway.config.auth is set by the operator",
        ),
        (
            "{drain: {timeout: 5m}}",
            "gateway.config.drain.timeout is set by the operator",
        ),
        // The gateway's own loader: unknown keys, wrong types, then its validation.
        (
            "{limits: {maxFrameBytez: 1}}",
            "gateway.config: invalid config: limits",
        ),
        (
            "{heartbeat: {interval: often}}",
            "gateway.config: invalid config: heartbeat.interval",
        ),
        (
            "{limits: {messageBurst: 0}}",
            "limits.messageBurst must be at least 1",
        ),
        (
            "{memory: {maxBytes: 1000}}",
            "memory.maxBytes must be at least 1048576",
        ),
        // The CRD's rule on spec.drain, which gateway.config goes around.
        (
            "{drain: {acceptGrace: 2m}}",
            "drain.acceptGrace must be shorter than drain.timeout",
        ),
    ] {
        let cgw = cgw(&format!(
            "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, config: {config}}}"
        ));
        let err = build(&cgw, &Owner::of(&cgw, "default").expect("owner")).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
            "{config}: {err}"
        );
    }
    let (cm, _) = config_of(
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, config: {redis: {keyPrefix: x}, routes: [{name: a, pathPrefix: /a, upstream: 'svc:80'}]}}",
    );
    let c = parsed(&cm);
    assert_eq!(c.redis.key_prefix, "x");
    let (cm, _) = config_of(
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, config: {memory: {maxBytes: 67108864}}}",
    );
    assert_eq!(parsed(&cm).memory.max_bytes, Some(64 << 20));
    // A pod on Redis has no memory engine to bound.
    let on_redis = cgw(
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {}, config: {memory: {maxBytes: 67108864}}}",
    );
    let err = build(&on_redis, &Owner::of(&on_redis, "default").expect("owner")).unwrap_err();
    assert!(
        matches!(err, Error::InvalidSpec(ref m) if m.contains("memory.maxBytes applies to engine: memory")),
        "{err}"
    );
    assert_eq!(
        c.routes.len(),
        1,
        "routes from gateway.config stay without typed routes"
    );
}

#[test]
fn the_old_heartbeat_spelling_still_works() {
    let (cm, _) = config_of("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, heartbeatInterval: 7s}");
    assert_eq!(parsed(&cm).heartbeat.interval.as_secs(), 7);
}

#[test]
fn rs256_points_at_the_mounted_public_key() {
    let (cm, _) = config_of(
        "gateway: {auth: {jwt: {algorithm: RS256, publicKeySecretRef: {name: k, key: pem}, audience: chat}}}",
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
    let (a_cm, a) = config_of(MINIMAL);
    let (_, b) = config_of(MINIMAL);
    let (c_cm, c) = config_of("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, heartbeatInterval: 10s}");
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(
        a_cm.metadata.name, c_cm.metadata.name,
        "a new config, a new ConfigMap"
    );
}

/// The pods mount the ConfigMap of their own template's config: an old pod keeps its own.
#[test]
fn the_pods_mount_the_config_map_of_their_config() {
    let c = cgw(MINIMAL);
    let owner = Owner::of(&c, "default").expect("owner");
    let children = crate::builders::build(&c, &owner, &Default::default()).expect("build");
    let pod = children
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    let mounted = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "config")
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone());
    assert_eq!(mounted, children.config_map.metadata.name);
}

#[test]
fn namespaces_map_onto_the_gateways_and_keep_its_defaults() {
    let (cm, _) = config_of(FULL);
    let c = parsed(&cm);
    let prefixes: Vec<&str> = c.namespaces.iter().map(|n| n.prefix.as_str()).collect();
    assert_eq!(prefixes, ["team:", "typing:", "user:", ""]);
    let [team, typing, inbox, default] = &c.namespaces[..] else {
        panic!("four namespaces: {:?}", c.namespaces);
    };
    assert_eq!(team.join, JoinPolicy::Claim("teams".into()));
    assert_eq!(team.send, SendPolicy::Grant);
    // A retention names what changes; the rest is the rooms' history retention.
    let team_retention = team.retention.as_ref().expect("team retention");
    assert_eq!(team_retention.max_age, Duration::from_secs(3600));
    assert_eq!(team_retention.max_messages, 500, "from gateway.history");
    assert!(
        team.keep_history && team.presence,
        "unset: gateway defaults"
    );
    assert!(!typing.keep_history && !typing.presence);
    assert_eq!(typing.retention, None);
    assert_eq!(inbox.dm, DmPolicy::SharedRoom);
    assert_eq!(inbox.dm_quota, 20);
    let inbox_retention = inbox.retention.as_ref().expect("inbox retention");
    assert_eq!(inbox_retention.max_messages, 50);
    assert_eq!(
        inbox_retention.max_age,
        Config::default().inbox.max_age,
        "user: starts from gateway.inbox, not history"
    );
    assert_eq!(default.join, JoinPolicy::Grant);
    assert!(default.history_without_join && !default.join_leave_events);
    assert_eq!(default.max_body_bytes, 4096);
    assert_eq!(default.dm, DmPolicy::Anyone);
    assert_eq!(default.dm_quota, 100);
}

#[test]
fn typed_namespaces_replace_those_of_gateway_config() {
    let (cm, _) = config_of(
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, namespaces: [{prefix: 'a:'}], config: {namespaces: [{prefix: 'b:'}, {prefix: 'c:'}]}}",
    );
    let prefixes: Vec<String> = parsed(&cm)
        .namespaces
        .into_iter()
        .map(|n| n.prefix)
        .collect();
    assert_eq!(prefixes, ["a:"]);
    let (cm, _) = config_of(
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, config: {namespaces: [{prefix: 'b:', keepHistory: false}]}}",
    );
    assert!(!parsed(&cm).namespaces[0].keep_history);
    // The default namespace alone replaces them too, and is written as the gateway's "".
    let (cm, _) = config_of(
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, defaultNamespace: {send: none}, config: {namespaces: [{prefix: 'b:'}]}}",
    );
    let c = parsed(&cm);
    assert_eq!(c.namespaces.len(), 1);
    assert_eq!(
        (c.namespaces[0].prefix.as_str(), c.namespaces[0].send),
        ("", SendPolicy::None)
    );
}

#[test]
fn namespaces_the_gateway_would_refuse_are_an_invalid_spec() {
    for (namespaces, want) in [
        // No join hook (gateway.hooks.join): the gateway's validation refuses `backend`.
        ("[{prefix: 'vip:', join: backend}]", "join: backend"),
        (
            "[{prefix: 'a:'}, {prefix: 'a:', send: none}]",
            "prefix is used twice",
        ),
        // The schema's pattern refuses these; API servers that skip it meet the gateway's parser.
        (
            "[{prefix: 'a:', join: 'claim:'}]",
            "gateway.namespaces[0].join",
        ),
        ("[{prefix: 'a:', dm: everyone}]", "gateway.namespaces[0].dm"),
        // The schema's minLength too; the default namespace has a field of its own.
        ("[{prefix: ''}]", "gateway.defaultNamespace"),
        (
            "[{prefix: 'a:', retention: {maxAge: soon}}]",
            "gateway.namespaces[0].retention.maxAge",
        ),
    ] {
        let cgw = cgw(&format!(
            "gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, namespaces: {namespaces}}}"
        ));
        let err = build(&cgw, &Owner::of(&cgw, "default").expect("owner")).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
            "{namespaces}: {err}"
        );
    }
}

#[test]
fn every_algorithm_and_key_source_points_at_its_mounted_file() {
    for (jwt, alg) in [
        (
            "{algorithm: ES256, publicKeySecretRef: {name: k, key: pem}, audience: a}",
            JwtAlgorithm::ES256,
        ),
        (
            "{algorithm: EdDSA, publicKeySecretRef: {name: k, key: pem}, audience: a}",
            JwtAlgorithm::EdDSA,
        ),
    ] {
        let (cm, _) = config_of(&format!("gateway: {{auth: {{jwt: {jwt}}}}}"));
        let c = parsed(&cm);
        assert_eq!(c.auth.jwt.algorithm, alg);
        assert_eq!(
            c.auth.jwt.public_key_file,
            Some(PathBuf::from(JWT_PUBLIC_KEY_FILE))
        );
        assert_eq!(
            (
                c.auth.jwt.secret_file.as_ref(),
                c.auth.jwt.jwks_file.as_ref()
            ),
            (None, None)
        );
    }
    // A key set alone is enough, whatever the single key's algorithm.
    let (cm, _) = config_of(
        "gateway: {auth: {jwt: {algorithm: ES256, jwksSecretRef: {name: keys, key: jwks.json}, audience: a}}}",
    );
    let c = parsed(&cm);
    assert_eq!(c.auth.jwt.jwks_file, Some(PathBuf::from(JWT_JWKS_FILE)));
    assert_eq!(c.auth.jwt.public_key_file, None);
}

#[test]
fn auth_the_gateway_would_refuse_is_an_invalid_spec() {
    // The CRD's CEL rules and `validate` refuse these first; `gateway_config` alone (what
    // `build` runs after `validate`) must refuse them too, with the gateway's message.
    for (auth, want) in [
        ("{mode: insecure}", "auth.dangerouslyAllowInsecureOnNetwork"),
        (
            "{jwt: {secretRef: {name: s, key: k}}}",
            "auth.jwt.audience is not set",
        ),
        (
            "{jwt: {secretRef: {name: s, key: k}, audience: a, reloadInterval: 10ms}}",
            "auth.jwt.reloadInterval",
        ),
        (
            "{mode: insecure, dangerouslyAllowInsecureOnNetwork: true, expiryWarning: 0s}",
            "auth.expiryWarning",
        ),
    ] {
        let err = gateway_config(&cgw(&format!("gateway: {{auth: {auth}}}"))).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains(want)),
            "{auth}: {err}"
        );
    }
    // Without an audience requirement, no audience is needed.
    let (cm, _) =
        config_of("gateway: {auth: {jwt: {secretRef: {name: s, key: k}, requireAudience: false}}}");
    let c = parsed(&cm);
    assert!(!c.auth.jwt.require_audience && c.auth.jwt.audience.is_none());
}
