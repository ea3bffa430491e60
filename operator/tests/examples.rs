//! Every example under manifests/examples validates against the generated CRD schema and
//! renders with the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("manifests/examples exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the examples in {}",
        dir.display()
    );
    files
}

/// A validator for each served version's schema.
fn crd_validators() -> Vec<(String, jsonschema::Validator)> {
    let crd = serde_json::to_value(chat_gateway_operator::crd::crd()).expect("crd json");
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let schema = v["schema"]["openAPIV3Schema"].clone();
            let validator =
                jsonschema::validator_for(&schema).expect("the CRD schema is a valid JSON schema");
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                validator,
            )
        })
        .collect()
}

fn docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read example");
    chat_gateway_operator::yaml::documents(&text)
        .expect("yaml")
        .into_iter()
        .filter(|v| v["kind"] == "ChatGateway")
        .collect()
}

#[test]
fn examples_validate_against_the_crd_schema_of_both_versions() {
    let validators = crd_validators();
    assert_eq!(validators.len(), 2);
    for path in examples() {
        let docs = docs(&path);
        assert!(!docs.is_empty(), "{} has no ChatGateway", path.display());
        for doc in docs {
            assert_eq!(
                doc["apiVersion"],
                "chatgateway.io/v1beta1",
                "{}: examples use the stored version",
                path.display()
            );
            for (version, validator) in &validators {
                let errors: Vec<String> = validator
                    .iter_errors(&doc)
                    .map(|e| format!("{} at {}", e, e.instance_path))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{} ({version}): {errors:#?}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_schema_refuses_bad_values() {
    let validators = crd_validators();
    let bad = [
        // A ChatGateway must say how clients authenticate: `spec: {}` can never work.
        r#"{"spec": {}}"#,
        r#"{"spec": {"gateway": {}}}"#,
        r#"{"spec": {"rollout": {"strategy": "Sometimes"}}}"#,
        r#"{"spec": {"gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}, "config": "limits: {}"}}}"#,
        r#"{"spec": {"replicas": -1}}"#,
        r#"{"spec": {"imagePullPolicy": "Sometimes"}}"#,
        r#"{"spec": {"drain": {"timeout": "soon"}}}"#,
        r#"{"spec": {"telemetry": {"samplingRatio": 2}}}"#,
        r#"{"spec": {"autoscaling": {"targetCpuUtilization": 0}}}"#,
        r#"{"spec": {"service": {"port": 70000}}}"#,
        // Redis: the gateway's modes and a prefix without braces (a missing urlSecretRef
        // is a CEL rule: crd/cel_redis_tests.rs).
        r#"{"spec": {"gateway": {"redis": {"mode": "shards", "urlSecretRef": {"name": "r", "key": "u"}}}}}"#,
        r#"{"spec": {"gateway": {"redis": {"keyPrefix": "a{b}", "urlSecretRef": {"name": "r", "key": "u"}}}}}"#,
        r#"{"spec": {"gateway": {"redis": {"mode": "cluster", "nodes": ["redis://a:1"], "passwordSecretRef": {"name": "r"}}}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "Bots", "pathPrefix": "/b", "upstream": "s:1"}]}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "b", "pathPrefix": "b", "upstream": "s:1"}]}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "b", "pathPrefix": "/b"}]}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "b", "pathPrefix": "/b", "upstream": "s:1", "retries": 99}]}}}"#,
        // Namespaces: the gateway's spellings only, a prefix (the default namespace is
        // gateway.defaultNamespace), bounds.
        r#"{"spec": {"gateway": {"namespaces": [{"join": "public"}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": ""}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": "a:", "join": "everyone"}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": "a:", "join": "claim:"}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": "a:", "send": "all"}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": "a:", "dm": "friends"}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": "a:", "dmQuota": -1}]}}}"#,
        r#"{"spec": {"gateway": {"namespaces": [{"prefix": "a:", "retention": {"maxMessages": 0}}]}}}"#,
        r#"{"spec": {"gateway": {"defaultNamespace": {"join": "claim:"}}}}"#,
        r#"{"spec": {"gateway": {"defaultNamespace": {"keepHistory": "no"}}}}"#,
        // Auth: known algorithms, durations, an audience that says something.
        r#"{"spec": {"gateway": {"auth": {"jwt": {"algorithm": "HS512"}}}}}"#,
        r#"{"spec": {"gateway": {"auth": {"jwt": {"audience": ""}}}}}"#,
        r#"{"spec": {"gateway": {"auth": {"mode": "insecure", "expiryWarning": "soon"}}}}"#,
        r#"{"spec": {"gateway": {"auth": {"jwt": {"reloadInterval": "often"}}}}}"#,
        r#"{"spec": {"gateway": {"limits": {"connectionsPerUser": -1}}}}"#,
        r#"{"spec": {"gateway": {"admission": {"perUserBurst": 0}}}}"#,
    ];
    for doc in bad {
        let mut value: serde_json::Value = serde_json::from_str(doc).expect("json");
        // Everything but the two missing-section cases gets a valid `gateway.auth`, so the
        // schema refuses the field under test, not the missing section.
        if doc != r#"{"spec": {}}"# && doc != r#"{"spec": {"gateway": {}}}"# {
            let gateway = value["spec"]
                .as_object_mut()
                .expect("spec")
                .entry("gateway")
                .or_insert_with(|| serde_json::json!({}));
            if gateway.get("auth").is_none() {
                gateway["auth"] = serde_json::json!({"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true});
            }
        }
        for (version, validator) in &validators {
            assert!(
                !validator.is_valid(&value),
                "{version} schema accepted {doc}"
            );
        }
    }
    let good: serde_json::Value =
        serde_json::from_str(r#"{"spec": {"gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}}}}"#)
            .expect("json");
    for (version, validator) in &validators {
        assert!(
            validator.is_valid(&good),
            "{version} refused the minimal spec"
        );
    }
}

#[test]
fn render_prints_the_children_of_every_example() {
    for path in examples() {
        let out = Command::new(env!("CARGO_BIN_EXE_chat-gateway-operator"))
            .args(["render", "-f"])
            .arg(&path)
            .output()
            .expect("run the operator binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
            assert!(
                stdout.contains(&format!("kind: {kind}\n")),
                "{}: no {kind} in\n{stdout}",
                path.display()
            );
        }
        // The gateway ConfigMap inside is accepted by the gateway's own loader; a collector
        // ConfigMap is YAML with a traces pipeline.
        let mut gateway_configs = 0;
        for v in chat_gateway_operator::yaml::documents(&stdout).expect("yaml") {
            if v["kind"] != "ConfigMap" {
                continue;
            }
            if let Some(text) = v["data"]["config.yaml"].as_str() {
                chat_gateway_config::Config::from_yaml(text).expect("gateway parses it");
                gateway_configs += 1;
            } else {
                let text = v["data"]["collector.yaml"]
                    .as_str()
                    .expect("collector.yaml");
                let c: serde_json::Value =
                    chat_gateway_operator::yaml::from_str(text).expect("collector YAML");
                assert!(c["service"]["pipelines"]["traces"].is_object(), "{text}");
            }
        }
        assert_eq!(gateway_configs, 1, "{}", path.display());
    }
}

#[test]
fn render_reports_a_missing_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-gateway-operator"))
        .args(["render", "-f", "/nonexistent/cgw.yaml"])
        .output()
        .expect("run the operator binary");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cgw.yaml"));
}
