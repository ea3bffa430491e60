//! Every example under manifests/examples validates against the generated CRD schema and
//! renders with the real binary.

use chat_gateway_operator::crd::ChatGateway;
use kube::CustomResourceExt;
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

fn crd_validator() -> jsonschema::Validator {
    let crd = serde_json::to_value(ChatGateway::crd()).expect("crd json");
    let schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
    jsonschema::validator_for(&schema).expect("the CRD schema is a valid JSON schema")
}

fn docs(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("read example");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &serde_json::Value| v["kind"] == "ChatGateway")
        .collect()
}

#[test]
fn examples_validate_against_the_crd_schema() {
    let validator = crd_validator();
    for path in examples() {
        let docs = docs(&path);
        assert!(!docs.is_empty(), "{} has no ChatGateway", path.display());
        for doc in docs {
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{} at {}", e, e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        }
    }
}

#[test]
fn the_schema_refuses_bad_values() {
    let validator = crd_validator();
    let bad = [
        r#"{"spec": {"replicas": -1}}"#,
        r#"{"spec": {"imagePullPolicy": "Sometimes"}}"#,
        r#"{"spec": {"drain": {"timeout": "soon"}}}"#,
        r#"{"spec": {"telemetry": {"samplingRatio": 2}}}"#,
        r#"{"spec": {"autoscaling": {"targetCpuUtilization": 0}}}"#,
        r#"{"spec": {"service": {"port": 70000}}}"#,
        r#"{"spec": {"gateway": {"redis": {"keyPrefix": "x"}}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "Bots", "pathPrefix": "/b", "upstream": "s:1"}]}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "b", "pathPrefix": "b", "upstream": "s:1"}]}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "b", "pathPrefix": "/b"}]}}}"#,
        r#"{"spec": {"gateway": {"routes": [{"name": "b", "pathPrefix": "/b", "upstream": "s:1", "retries": 99}]}}}"#,
    ];
    for doc in bad {
        let value: serde_json::Value = serde_json::from_str(doc).expect("json");
        assert!(!validator.is_valid(&value), "schema accepted {doc}");
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
        for doc in serde_yaml::Deserializer::from_str(&stdout) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("yaml");
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
                let c: serde_yaml::Value = serde_yaml::from_str(text).expect("collector YAML");
                assert!(c["service"]["pipelines"]["traces"].is_mapping(), "{text}");
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
