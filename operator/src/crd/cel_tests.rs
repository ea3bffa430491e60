//! The CEL rules, evaluated client-side by kube's CEL validator against both versions'
//! schemas: the envtest apiserver (v1.20) ignores them, and a rule that fails to compile
//! would make a 1.25+ cluster refuse the whole CRD. Each refused spec is also refused by
//! the operator's own checks (`builders::build`), for API servers without CEL.

use super::*;
use crate::builders::testing::{BACKEND, FULL, MINIMAL, SIDECARS};
use crate::builders::{self, Owner};
use kube::core::cel::Validator;
use serde_json::Value;

/// The object as the API server would see it in `version`.
fn object(spec: &str, version: &str) -> Value {
    let spec: Value = crate::yaml::from_str(spec).expect("spec");
    serde_json::json!({
        "apiVersion": format!("chatgateway.io/{version}"), "kind": "ChatGateway",
        "metadata": {"name": "x", "namespace": "apps"}, "spec": spec,
    })
}

fn schema(version: &str) -> &'static Value {
    static CRD: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    let crd = CRD.get_or_init(|| serde_json::to_value(crd()).expect("json"));
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == version)
        .map(|v| &v["schema"]["openAPIV3Schema"])
        .expect("version")
}

fn cel(spec: &str, version: &str) -> Result<(), String> {
    Validator::new()
        .validate(schema(version), &object(spec, version), None)
        .map_err(|e| format!("{e:?}"))
}

/// `builders::build`, which runs every check the operator makes before applying.
fn operator(spec: &str) -> Result<(), String> {
    let spec: ChatGatewaySpec = crate::yaml::from_str(spec).expect("spec");
    let mut cgw = ChatGateway::new("x", spec);
    cgw.metadata.namespace = Some("apps".into());
    let owner = Owner::of(&cgw, "apps").map_err(|e| e.to_string())?;
    builders::build(&cgw, &owner, &builders::Inputs::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

const REDIS: &str = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: r, key: url}}}";

#[test]
fn valid_specs_pass_both_versions_and_the_operator() {
    let with_redis = |rest: &str| format!("{REDIS}\n{rest}");
    for spec in [
        MINIMAL.to_string(),
        "gateway: {auth: {jwt: {secretRef: {name: s, key: k}, audience: chat}}}".into(),
        "gateway: {auth: {mode: jwt, jwt: {algorithm: RS256, publicKeySecretRef: {name: s, key: k}, audience: chat}}}".into(),
        "gateway: {auth: {jwt: {algorithm: ES256, publicKeySecretRef: {name: s, key: k}, audience: chat}}}".into(),
        "gateway: {auth: {jwt: {algorithm: EdDSA, publicKeySecretRef: {name: s, key: k}, audience: chat}}}".into(),
        // A key set alone, for the default algorithm or another one.
        "gateway: {auth: {jwt: {jwksSecretRef: {name: s, key: jwks.json}, audience: chat}}}".into(),
        "gateway: {auth: {jwt: {algorithm: ES256, jwksSecretRef: {name: s, key: jwks.json}, audience: chat}}}".into(),
        // No audience, said explicitly.
        "gateway: {auth: {jwt: {secretRef: {name: s, key: k}, requireAudience: false}}}".into(),
        "gateway: {auth: {queryToken: false, expiryWarning: 2m, jwt: {secretRef: {name: s, key: k}, audience: chat, reloadInterval: 30s, roomsClaim: grants}}}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, namespaces: [{prefix: 'team:', join: 'claim:teams', send: grant}, {prefix: 'user:', dm: sharedRoom, dmQuota: 5}], defaultNamespace: {join: grant}}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, limits: {connectionsPerUser: 3}, admission: {perIpRate: 0, perUserRate: 1, perUserBurst: 2}}".into(),
        with_redis("autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 3}"),
        with_redis("autoscaling: {enabled: true, minReplicas: 8}"),
        with_redis("replicas: 3\ndisruptionBudget: {minAvailable: 2}"),
        with_redis("disruptionBudget: {minAvailable: 1}"),
        with_redis("autoscaling: {enabled: true, minReplicas: 4}\ndisruptionBudget: {minAvailable: 3}"),
        with_redis("disruptionBudget: {minAvailable: '50%'}"),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nservice: {type: LoadBalancer, externalTrafficPolicy: Local}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nservice: {type: NodePort, externalTrafficPolicy: Cluster}".into(),
        with_redis("autoscaling: {enabled: true, minReplicas: 4}\ndisruptionBudget: {minAvailable: '75%'}"),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndisruptionBudget: {minAvailable: '0%'}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nreplicas: 1\ndisruptionBudget: {enabled: false, minAvailable: 1}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndisruptionBudget: {maxUnavailable: '25%'}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {acceptGrace: 5s, timeout: 6s}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {acceptGrace: 1m, timeout: 1m30s}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nrollout: {strategy: Rolling, maxSurge: 2}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nrollout: {strategy: SurgeAll, minReadySeconds: 0}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, heartbeat: {interval: 10s}}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, routes: [{name: a, pathPrefix: /wsx, upstream: 's:80'}]}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nsidecars: [{name: bot, image: b}]\ntelemetry: {collector: {enabled: false}}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, config: {limits: {maxFrameBytes: 4096}}}".into(),
        SIDECARS.to_string(),
        FULL.to_string(),
        BACKEND.to_string(),
        // The server API: keys required only while it is on.
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {keysSecretRef: {name: k, key: keys}}}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: false}}".into(),
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {port: 8081, keysSecretRef: {name: k, key: keys}}}".into(),
    ] {
        for version in [VERSION, OLD_VERSION] {
            assert_eq!(cel(&spec, version), Ok(()), "{version}: {spec}");
        }
        assert_eq!(operator(&spec), Ok(()), "operator: {spec}");
    }
}

#[test]
fn invalid_specs_are_refused_by_cel_and_by_the_operator() {
    let with_redis = |rest: &str| format!("{REDIS}\n{rest}");
    for (spec, message) in [
        (
            with_redis("autoscaling: {minReplicas: 5, maxReplicas: 4}"),
            "must not exceed maxReplicas",
        ),
        (
            with_redis("autoscaling: {minReplicas: 20}"),
            "must not exceed maxReplicas",
        ),
        (
            with_redis("disruptionBudget: {minAvailable: 1, maxUnavailable: 1}"),
            "not both",
        ),
        ("gateway: {auth: {mode: jwt}}".into(), "auth.jwt is required"),
        ("gateway: {auth: {}}".into(), "auth.jwt is required"),
        (
            "gateway: {auth: {jwt: {algorithm: RS256, audience: a}}}".into(),
            "RS256, ES256 and EdDSA need publicKeySecretRef",
        ),
        (
            "gateway: {auth: {jwt: {algorithm: EdDSA, secretRef: {name: s, key: k}, audience: a}}}".into(),
            "RS256, ES256 and EdDSA need publicKeySecretRef",
        ),
        (
            "gateway: {auth: {jwt: {issuer: me, audience: a}}}".into(),
            "HS256 needs secretRef",
        ),
        (
            "gateway: {auth: {jwt: {publicKeySecretRef: {name: s, key: k}, audience: a}}}".into(),
            "HS256 needs secretRef",
        ),
        (
            "gateway: {auth: {jwt: {secretRef: {name: s, key: k}}}}".into(),
            "auth.jwt.audience is required",
        ),
        (
            "gateway: {auth: {jwt: {secretRef: {name: s, key: k}, requireAudience: true}}}".into(),
            "auth.jwt.audience is required",
        ),
        (
            "gateway: {auth: {mode: insecure}}".into(),
            "auth.dangerouslyAllowInsecureOnNetwork: true",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: false}}".into(),
            "auth.dangerouslyAllowInsecureOnNetwork: true",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nsidecars: [{name: bot, image: b}, {name: gateway, image: g}]".into(),
            "must not be gateway or otel-collector",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nsidecars: [{name: otel-collector, image: o}]".into(),
            "must not be gateway or otel-collector",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ntelemetry: {collector: {enabled: true}}".into(),
            "needs telemetry.otlpEndpoint",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, routes: [{name: a, pathPrefix: /metrics, upstream: 's:80'}]}".into(),
            "collides with the gateway's own endpoints",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, routes: [{name: a, pathPrefix: /ws/x, upstream: 's:80'}]}".into(),
            "collides with the gateway's own endpoints",
        ),
        // The memory engine: every pod its own chat server.
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nreplicas: 2".into(),
            "more than one replica or autoscaling needs gateway.redis",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nautoscaling: {enabled: true}".into(),
            "more than one replica or autoscaling needs gateway.redis",
        ),
        // A budget no eviction can ever satisfy.
        (
            with_redis("replicas: 3\ndisruptionBudget: {minAvailable: 3}"),
            "minAvailable must stay below the replica floor",
        ),
        (
            with_redis("disruptionBudget: {minAvailable: 2}"),
            "minAvailable must stay below the replica floor",
        ),
        (
            with_redis("autoscaling: {enabled: true, minReplicas: 3}\ndisruptionBudget: {minAvailable: 3}"),
            "minAvailable must stay below the replica floor",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndisruptionBudget: {minAvailable: 1}".into(),
            "minAvailable must stay below the replica floor",
        ),
        (
            with_redis("disruptionBudget: {minAvailable: '100%'}"),
            "minAvailable must stay below the replica floor",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nservice: {externalTrafficPolicy: Local}".into(),
            "externalTrafficPolicy applies to type LoadBalancer or NodePort",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nservice: {type: ClusterIP, externalTrafficPolicy: Local}".into(),
            "externalTrafficPolicy applies to type LoadBalancer or NodePort",
        ),
        // Percentages round up: 51% of two pods is two, 1% of one pod is one.
        (
            with_redis("disruptionBudget: {minAvailable: '51%'}"),
            "minAvailable must stay below the replica floor",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndisruptionBudget: {minAvailable: '1%'}".into(),
            "minAvailable must stay below the replica floor",
        ),
        (
            with_redis("autoscaling: {enabled: true, minReplicas: 4}\ndisruptionBudget: {minAvailable: '76%'}"),
            "minAvailable must stay below the replica floor",
        ),
        (
            with_redis("disruptionBudget: {maxUnavailable: 0}"),
            "must allow at least one pod down",
        ),
        (
            with_redis("disruptionBudget: {maxUnavailable: '0%'}"),
            "must allow at least one pod down",
        ),
        // A drain that ends before the pod stops accepting.
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {acceptGrace: 60s}".into(),
            "must be shorter than drain.timeout",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {acceptGrace: 10s, timeout: 10s}".into(),
            "must be shorter than drain.timeout",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\ndrain: {timeout: 2s}".into(),
            "must be shorter than drain.timeout",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nrollout: {maxSurge: 2}".into(),
            "applies to strategy Rolling only",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, heartbeatInterval: 10s, heartbeat: {interval: 20s}}".into(),
            "not both",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {}}".into(),
            "gateway.api needs keysSecretRef",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: true, port: 9091}}".into(),
            "gateway.api needs keysSecretRef",
        ),
        (
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {port: 8080, keysSecretRef: {name: k, key: keys}}}".into(),
            "gateway.api.port must not be 8080",
        ),
    ] {
        for version in [VERSION, OLD_VERSION] {
            let err = cel(&spec, version).expect_err(&spec);
            assert!(err.contains(message), "{version}: {spec}: {err}");
        }
        let err = operator(&spec).expect_err(&spec);
        assert!(err.starts_with("invalid spec:"), "operator: {spec}: {err}");
    }
}

#[test]
fn the_old_heartbeat_spelling_is_v1alpha1_only() {
    let spec = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, heartbeatInterval: 10s}";
    assert_eq!(cel(spec, OLD_VERSION), Ok(()));
    let err = cel(spec, VERSION).expect_err("refused in v1beta1");
    assert!(err.contains("use gateway.heartbeat.interval"), "{err}");
    // The operator reads every object as v1beta1 and still honours the old spelling.
    assert_eq!(operator(spec), Ok(()));
}

#[test]
fn route_rule_refuses_exactly_the_gateways_reserved_paths() {
    let route = |prefix: &str| {
        format!("gateway: {{auth: {{mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}, routes: [{{name: a, pathPrefix: '{prefix}', upstream: 's:80'}}]}}")
    };
    for path in chat_gateway_config::RESERVED_PATHS {
        for version in [VERSION, OLD_VERSION] {
            assert!(
                cel(&route(path), version).is_err(),
                "{path} must be refused"
            );
            let under = format!("{path}/x");
            assert!(
                cel(&route(&under), version).is_err(),
                "{under} must be refused"
            );
            let other = format!("{path}x");
            assert_eq!(
                cel(&route(&other), version),
                Ok(()),
                "{other} is another path"
            );
        }
    }
}

#[test]
fn api_rules_say_the_same_in_cel_and_in_the_operator() {
    for spec in [
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {}}",
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {port: 8080, keysSecretRef: {name: k, key: keys}}}",
    ] {
        let cel = cel(spec, VERSION).expect_err(spec);
        let operator = operator(spec).expect_err(spec);
        let message = operator
            .strip_prefix("invalid spec: ")
            .unwrap_or_else(|| panic!("{spec}: {operator}"));
        assert!(
            cel.contains(&format!("message: {message:?}")),
            "{spec}: the operator says {message:?}, CEL {cel}"
        );
    }
}

#[test]
fn auth_rules_say_the_same_in_cel_and_in_the_operator() {
    // API servers without CEL store these; the operator then reports the same words.
    for spec in [
        "gateway: {auth: {mode: insecure}}",
        "gateway: {auth: {jwt: {secretRef: {name: s, key: k}}}}",
        "gateway: {auth: {jwt: {algorithm: ES256, audience: a}}}",
        "gateway: {auth: {jwt: {audience: a}}}",
        "gateway: {auth: {mode: jwt}}",
    ] {
        let cel = cel(spec, VERSION).expect_err(spec);
        let operator = operator(spec).expect_err(spec);
        let message = operator
            .strip_prefix("invalid spec: ")
            .unwrap_or_else(|| panic!("{spec}: {operator}"));
        assert!(
            cel.contains(&format!("message: {message:?}")),
            "{spec}: the operator says {message:?}, CEL {cel}"
        );
    }
    // The insecure opt-in names the field.
    let err = operator("gateway: {auth: {mode: insecure}}").expect_err("refused");
    assert!(
        err.contains("auth.dangerouslyAllowInsecureOnNetwork"),
        "{err}"
    );
}

#[path = "cel_redis_tests.rs"]
mod redis;
