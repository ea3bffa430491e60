//! The generated CRD: in sync with the checked-in file, structural, two versions with one
//! schema, printer columns, and schema defaults equal to what the code defaults to.

use super::versions::NEWEST_ONLY_RULES;
use super::*;
use crate::builders::hpa;
use chat_gateway_config::{Config, EventsConfig, HookConfig};
use serde_json::{json, Value};

/// Path of the checked-in CRD, relative to this crate.
const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/chatgateway.yaml");

fn schema_of(version: &str) -> Value {
    let crd = serde_json::to_value(crd()).expect("json");
    let versions = crd["spec"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    versions
        .into_iter()
        .find(|v| v["name"] == version)
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .unwrap_or_else(|| panic!("no version {version}"))
}

#[test]
fn crd_file_is_in_sync_with_the_rust_types() {
    let generated = crate::crd_yaml().expect("CRD serialises");
    let on_disk = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
    assert!(
        on_disk == generated,
        "crds/chatgateway.yaml is out of date: run `make crds`"
    );
}

#[test]
fn v1beta1_is_stored_and_v1alpha1_served_with_the_same_schema() {
    let crd = crd();
    assert_eq!(crd.spec.group, "chatgateway.io");
    assert_eq!(crd.spec.names.short_names, Some(vec!["cgw".to_string()]));
    let summary: Vec<_> = crd
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage, v.deprecated))
        .collect();
    assert_eq!(
        summary,
        [
            ("v1beta1", true, true, None),
            ("v1alpha1", true, false, Some(true))
        ]
    );
    assert!(crd.spec.conversion.is_none(), "no conversion webhook");
    // Identical except the rules only v1beta1 enforces.
    let mut beta = schema_of("v1beta1");
    let alpha = schema_of("v1alpha1");
    let rules = beta["properties"]["spec"]["properties"]["gateway"]["x-kubernetes-validations"]
        .as_array_mut()
        .expect("gateway rules");
    let before = rules.len();
    rules.retain(|r| {
        !NEWEST_ONLY_RULES
            .iter()
            .any(|(_, rule, _)| r["rule"] == *rule)
    });
    assert_eq!(before - rules.len(), NEWEST_ONLY_RULES.len());
    assert_eq!(beta, alpha);
}

#[test]
fn the_crd_fits_the_last_applied_annotation_of_kubectl_apply() {
    // `kubectl apply` (client-side) records the whole object in an annotation of at most
    // 256 KiB; a bigger CRD cannot be installed that way.
    let json = serde_json::to_vec(&crd()).expect("json");
    assert!(json.len() < 200 * 1024, "the CRD is {} bytes", json.len());
    // Our own fields keep their descriptions (`kubectl explain`); the embedded Kubernetes
    // types keep only the description of the field itself.
    let spec = &schema_of(VERSION)["properties"]["spec"];
    assert!(spec["properties"]["sidecars"]["description"].is_string());
    assert!(
        spec["properties"]["sidecars"]["items"]["properties"]["image"]
            .get("description")
            .is_none()
    );
    assert!(spec["properties"]["drain"]["properties"]["timeout"]["description"].is_string());
}

#[test]
fn subresources_and_columns() {
    for v in &crd().spec.versions {
        let sub = v.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some());
        let scale = sub.scale.as_ref().expect("scale");
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.status_replicas_path, ".status.replicas");
        assert_eq!(
            scale.label_selector_path.as_deref(),
            Some(".status.selector")
        );
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            cols[0],
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status")
        );
        let names: Vec<_> = cols.iter().map(|c| c.0).collect();
        assert_eq!(
            names,
            [
                "Ready",
                "Replicas",
                "Ready-Replicas",
                "Reason",
                "Connections-Per-Pod",
                "Connections-Target",
                "Age"
            ]
        );
    }
}

#[test]
fn conditions_are_a_map_keyed_by_type() {
    let conditions = &schema_of("v1beta1")["properties"]["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert!(conditions["items"]["required"]
        .as_array()
        .is_some_and(|r| r.contains(&json!("type"))));
}

#[test]
fn gateway_and_auth_are_required() {
    let schema = schema_of("v1beta1");
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], json!(["gateway"]));
    assert_eq!(spec["properties"]["gateway"]["required"], json!(["auth"]));
    let config = &spec["properties"]["gateway"]["properties"]["config"];
    assert_eq!(config["type"], "object");
    assert_eq!(config["x-kubernetes-preserve-unknown-fields"], true);
}

#[test]
fn schema_defaults_are_what_the_code_defaults_to() {
    let schema = schema_of("v1beta1");
    let default_at = |path: &str| {
        let mut node = &schema["properties"]["spec"];
        for key in path.split('.') {
            node = &node["properties"][key];
        }
        node.get("default")
            .cloned()
            .unwrap_or_else(|| panic!("no default at spec.{path}"))
    };
    let gw = Config::default();
    // Durations compare by value: the schema says `60s` where humantime prints `1m`.
    let secs = |d: std::time::Duration| json!(d.as_millis() as u64);
    let default_at = |path: &str| {
        let v = default_at(path);
        match v.as_str().map(humantime::parse_duration) {
            Some(Ok(d)) => json!(d.as_millis() as u64),
            _ => v,
        }
    };
    for (path, want) in [
        ("drain.acceptGrace", secs(gw.drain.accept_grace)),
        ("drain.evictRate", json!(gw.drain.evict_rate as i64)),
        ("drain.period", secs(gw.drain.period)),
        ("drain.timeout", secs(gw.drain.timeout)),
        ("drain.reconnectJitter", secs(gw.drain.reconnect_jitter)),
        ("gateway.admission.rate", json!(gw.admission.rate)),
        ("gateway.rebalance.enabled", json!(gw.rebalance.enabled)),
        (
            "gateway.rebalance.tolerancePercent",
            json!((gw.rebalance.rel_threshold * 100.0).round() as i64),
        ),
        (
            "gateway.rebalance.absThreshold",
            json!(gw.rebalance.abs_threshold),
        ),
        ("gateway.rebalance.rate", json!(gw.rebalance.rate as i64)),
        ("gateway.rebalance.interval", secs(gw.rebalance.interval)),
        ("gateway.auth.mode", json!("jwt")),
        ("gateway.redis.mode", json!(gw.redis.mode)),
        (
            "gateway.auth.dangerouslyAllowInsecureOnNetwork",
            json!(gw.auth.dangerously_allow_insecure_on_network),
        ),
        ("gateway.auth.queryToken", json!(gw.auth.query_token)),
        ("gateway.auth.expiryWarning", secs(gw.auth.expiry_warning)),
        ("gateway.auth.jwt.algorithm", json!("HS256")),
        ("gateway.auth.jwt.leeway", secs(gw.auth.jwt.leeway)),
        (
            "gateway.auth.jwt.reloadInterval",
            secs(gw.auth.jwt.reload_interval),
        ),
        (
            "gateway.auth.jwt.requireAudience",
            json!(gw.auth.jwt.require_audience),
        ),
        (
            "gateway.auth.jwt.roomsClaim",
            json!(gw.auth.jwt.rooms_claim),
        ),
        (
            "gateway.admission.perIpRate",
            json!(gw.admission.per_ip_rate as i64),
        ),
        (
            "gateway.admission.perIpBurst",
            json!(gw.admission.per_ip_burst),
        ),
        (
            "gateway.admission.perUserRate",
            json!(gw.admission.per_user_rate as i64),
        ),
        (
            "gateway.admission.perUserBurst",
            json!(gw.admission.per_user_burst),
        ),
        ("autoscaling.minReplicas", json!(hpa::DEFAULT_MIN)),
        ("autoscaling.maxReplicas", json!(hpa::DEFAULT_MAX)),
        (
            "autoscaling.targetConnectionsPerPod",
            json!(hpa::DEFAULT_TARGET_CONNECTIONS),
        ),
        (
            "autoscaling.scaleDown.stabilizationWindowSeconds",
            json!(hpa::DEFAULT_STABILIZATION_SECONDS),
        ),
        ("autoscaling.scaleDown.podsPerPeriod", json!(1)),
        ("disruptionBudget.enabled", json!(true)),
        ("rollout.strategy", json!("SurgeAll")),
        (
            "rollout.minReadySeconds",
            json!(crate::builders::rollout::DEFAULT_MIN_READY_SECONDS),
        ),
        ("telemetry.samplingRatio", json!(0.1)),
        ("telemetry.serviceName", json!("chat-gateway")),
        ("telemetry.collector.enabled", json!(false)),
        ("telemetry.collector.nativeSidecar", json!(true)),
        ("service.type", json!("ClusterIP")),
        (
            "service.port",
            json!(crate::builders::service::DEFAULT_PORT),
        ),
        ("automountServiceAccountToken", json!(false)),
        ("nativeSidecars", json!(true)),
        ("gateway.api.enabled", json!(true)),
        ("gateway.api.port", json!(DEFAULT_API_PORT)),
        ("gateway.api.reloadInterval", secs(gw.api.reload_interval)),
        ("gateway.api.defaultSender", json!(gw.api.default_sender)),
        (
            "gateway.hooks.events.timeout",
            secs(EventsConfig::default().timeout),
        ),
        (
            "gateway.hooks.events.queueSize",
            json!(EventsConfig::default().queue_size),
        ),
        (
            "gateway.hooks.events.batch",
            json!(EventsConfig::default().batch),
        ),
        (
            "gateway.hooks.events.kinds",
            json!(EventsConfig::default().kinds),
        ),
    ] {
        assert_eq!(default_at(path), want, "spec.{path}");
    }
    // A namespace's fields default to the gateway's default namespace (a public lobby).
    let ns = chat_gateway_config::NamespaceConfig::default();
    let gateway = &schema["properties"]["spec"]["properties"]["gateway"]["properties"];
    for (field, want) in [
        ("join", json!(String::from(ns.join))),
        ("send", serde_json::to_value(ns.send).expect("send")),
        ("historyWithoutJoin", json!(ns.history_without_join)),
        ("keepHistory", json!(ns.keep_history)),
        ("presence", json!(ns.presence)),
        ("joinLeaveEvents", json!(ns.join_leave_events)),
        ("maxBodyBytes", json!(ns.max_body_bytes)),
        ("dm", json!(String::from(ns.dm))),
        ("dmQuota", json!(ns.dm_quota)),
    ] {
        let item = &gateway["namespaces"]["items"]["properties"][field];
        assert_eq!(item["default"], want, "namespaces[].{field}");
        let default = &gateway["defaultNamespace"]["properties"][field];
        assert_eq!(default["default"], want, "defaultNamespace.{field}");
    }
    // Every decision hook's fields default to the gateway's HookConfig.
    let hook = HookConfig::default();
    let hooks = &schema["properties"]["spec"]["properties"]["gateway"]["properties"]["hooks"];
    for name in ["connect", "join", "send", "refresh"] {
        let props = &hooks["properties"][name]["properties"];
        let duration = |field: &str| {
            let text = props[field]["default"].as_str().unwrap_or_default();
            humantime::parse_duration(text).unwrap_or_else(|e| panic!("{name}.{field}: {e}"))
        };
        assert_eq!(duration("timeout"), hook.timeout, "{name}.timeout");
        assert_eq!(duration("breakerCooldown"), hook.breaker_cooldown, "{name}");
        assert_eq!(props["retries"]["default"], json!(hook.retries), "{name}");
        assert_eq!(
            props["maxConcurrent"]["default"],
            json!(hook.max_concurrent),
            "{name}"
        );
        assert_eq!(
            props["breakerFailures"]["default"],
            json!(hook.breaker_failures),
            "{name}"
        );
        assert_eq!(
            props["onFailure"]["default"],
            serde_json::to_value(hook.on_failure).expect("policy"),
            "{name}"
        );
        assert_eq!(
            hooks["properties"][name]["required"],
            json!(["url"]),
            "{name}"
        );
    }
    // The CRD's spellings are the gateway's.
    let events = &hooks["properties"]["events"]["properties"];
    let kinds: Vec<_> = events["kinds"]["items"]["enum"]
        .as_array()
        .expect("kinds enum")
        .clone();
    assert_eq!(
        json!(kinds),
        json!(chat_gateway_config::backend::EVENT_KINDS)
    );
    for policy in hooks["properties"]["join"]["properties"]["onFailure"]["enum"]
        .as_array()
        .expect("onFailure enum")
    {
        serde_json::from_value::<chat_gateway_config::FailurePolicy>(policy.clone())
            .unwrap_or_else(|e| panic!("onFailure {policy}: {e}"));
    }
    // Derived from other fields, so deliberately without a schema default.
    for path in [
        "replicas",
        "autoscaling.scaleDown.periodSeconds",
        "rollout.maxSurge",
    ] {
        let mut node = &schema["properties"]["spec"];
        for key in path.split('.') {
            node = &node["properties"][key];
        }
        assert!(node.get("default").is_none(), "spec.{path} has a default");
    }
}

#[test]
fn namespaces_are_a_list_keyed_by_prefix_with_the_gateways_spellings() {
    let gateway = &schema_of(VERSION)["properties"]["spec"]["properties"]["gateway"];
    let ns = &gateway["properties"]["namespaces"];
    assert_eq!(ns["x-kubernetes-list-type"], "map");
    assert_eq!(ns["x-kubernetes-list-map-keys"], json!(["prefix"]));
    // A list-map key must be required (the API server refuses the CRD otherwise), and
    // non-empty: older API servers read "" as null (the default namespace has its own field).
    assert_eq!(ns["items"]["required"], json!(["prefix"]));
    assert_eq!(ns["items"]["properties"]["prefix"]["minLength"], 1);
    assert!(gateway["properties"]["defaultNamespace"]["properties"]
        .get("prefix")
        .is_none());
    // Every spelling the pattern admits is one the gateway parses, and the other way round.
    let item = &ns["items"]["properties"];
    let matcher = |schema: &Value| {
        let v = jsonschema::validator_for(schema).expect("a valid schema");
        move |text: &str| v.is_valid(&json!(text))
    };
    let (join, dm) = (matcher(&item["join"]), matcher(&item["dm"]));
    for text in [
        "public",
        "grant",
        "backend",
        "claim:teams",
        "claim:",
        "claim",
        "Public",
        "anyone",
        "x",
    ] {
        let parses = chat_gateway_config::JoinPolicy::try_from(text.to_string()).is_ok();
        assert_eq!(join(text), parses, "join {text:?}");
    }
    for text in [
        "anyone",
        "sharedRoom",
        "claim:friends",
        "claim:",
        "shared",
        "public",
    ] {
        let parses = chat_gateway_config::DmPolicy::try_from(text.to_string()).is_ok();
        assert_eq!(dm(text), parses, "dm {text:?}");
    }
    let send: Vec<_> = item["send"]["enum"].as_array().expect("send enum").clone();
    for value in &send {
        serde_json::from_value::<chat_gateway_config::SendPolicy>(value.clone())
            .unwrap_or_else(|e| panic!("send {value}: {e}"));
    }
    assert_eq!(send.len(), 3);
    let algorithms = &gateway["properties"]["auth"]["properties"]["jwt"]["properties"]["algorithm"];
    for value in algorithms["enum"].as_array().expect("algorithm enum") {
        serde_json::from_value::<chat_gateway_config::JwtAlgorithm>(value.clone())
            .unwrap_or_else(|e| panic!("algorithm {value}: {e}"));
    }
}

/// docs/operator.md promises these sections under the gateway config's own names: every
/// key of the gateway's section is a field of the CRD's, and no other. Before, nine of
/// `limits` were missing, which an API server drops from a ChatGateway without a word.
#[test]
fn typed_sections_carry_every_key_of_the_gateway_config() {
    let schema = schema_of("v1beta1");
    let gateway = &schema["properties"]["spec"]["properties"]["gateway"]["properties"];
    let config = serde_json::to_value(Config::default()).expect("config serialises");
    for section in [
        "limits",
        "admission",
        "history",
        "inbox",
        "sessions",
        "heartbeat",
    ] {
        let keys = |v: &Value| -> Vec<String> {
            let mut k: Vec<_> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&gateway[section]["properties"]),
            keys(&config[section]),
            "spec.gateway.{section}"
        );
    }
}

#[test]
fn schema_is_structural() {
    // The API server refuses schemas whose shape depends on values: no anyOf/oneOf
    // without a type at the same level, every node typed or int-or-string.
    for version in [VERSION, OLD_VERSION] {
        let schema = schema_of(version);
        let mut problems = Vec::new();
        check_structural(&schema, "$", &mut problems);
        assert!(problems.is_empty(), "non-structural schema: {problems:#?}");
    }
}

fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else { return };
    let typed = obj.contains_key("type")
        || obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !typed {
        problems.push(format!("{path}: no type"));
    }
    for bad in [
        "$ref",
        "definitions",
        "$defs",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
    ] {
        if obj.contains_key(bad) && !obj.contains_key("x-kubernetes-int-or-string") {
            problems.push(format!("{path}: has {bad}"));
        }
    }
    if let Some(props) = obj.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            check_structural(v, &format!("{path}.{k}"), problems);
        }
    }
    if let Some(items) = obj.get("items") {
        check_structural(items, &format!("{path}[]"), problems);
    }
    if let Some(extra) = obj.get("additionalProperties") {
        if extra.is_object() {
            check_structural(extra, &format!("{path}{{}}"), problems);
        }
    }
}
