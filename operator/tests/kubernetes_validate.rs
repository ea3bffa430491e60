//! `render` output of every example validates against the Kubernetes OpenAPI schemas of
//! the oldest supported (1.33) and the newest known minor version, with PyPI
//! `kubernetes-validate` from the project's venv (`make venv`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Oldest supported Kubernetes and the newest the installed validator knows.
const VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn validator() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: run `make venv` (creates .venv with kubernetes-validate)",
        bin.display()
    );
    bin
}

fn validate(file: &Path, version: &str) -> (bool, String) {
    let out = Command::new(validator())
        .args(["--strict", "--no-warn", "-k", version])
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn scratch(name: &str) -> PathBuf {
    // One directory per test file name, so parallel tests never share a file.
    let dir = std::env::temp_dir().join(format!("chatgw-kv-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

#[test]
fn rendered_examples_are_valid_kubernetes_objects() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    for example in examples {
        let text = std::fs::read_to_string(&example).expect("read example");
        let rendered = chat_gateway_operator::render::render(&text, "default").expect("render");
        let name = example
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = scratch(&format!("rendered-{name}"));
        std::fs::write(&file, &rendered).expect("write rendered");
        for version in VERSIONS {
            let (ok, report) = validate(&file, version);
            assert!(
                ok,
                "{name} rendered is invalid for Kubernetes {version}:\n{report}"
            );
            let kinds =
                rendered.matches("\nkind: ").count() + usize::from(rendered.starts_with("kind: "));
            assert!(
                report.matches("passed").count() >= kinds.max(3),
                "{name} {version}: {report}"
            );
        }
        let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
    }
}

#[test]
fn the_validator_catches_a_wrong_field() {
    // Guards against a validator that passes everything (e.g. unknown versions skipped).
    let file = scratch("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 2\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n",
    )
    .expect("write");
    for version in VERSIONS {
        let (ok, report) = validate(&file, version);
        assert!(
            !ok,
            "kubernetes-validate {version} accepted a typo: {report}"
        );
    }
    let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
}

#[test]
fn collector_native_sidecar_needs_a_version_with_native_sidecars_and_the_opt_out_does_not() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/sidecars.yaml");
    let text = std::fs::read_to_string(&example).expect("read the sidecars example");
    let rendered = chat_gateway_operator::render::render(&text, "default").expect("render");
    assert!(
        rendered.contains("initContainers:") && rendered.contains("restartPolicy: Always"),
        "{rendered}"
    );
    let file = scratch("collector-native.yaml");
    std::fs::write(&file, &rendered).expect("write");
    let (ok, report) = validate(&file, "1.33.0");
    assert!(ok, "native sidecar invalid for 1.33:\n{report}");
    // The validator really checks the field: 1.27 has no container restartPolicy.
    let (ok, report) = validate(&file, "1.27.0");
    assert!(
        !ok && report.contains("restartPolicy"),
        "1.27 accepted a native sidecar: {report}"
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
    // The opt-outs render plain containers, valid on old clusters too.
    let plain = format!(
        "{}  nativeSidecars: false\n",
        text.replace("enabled: true", "enabled: true\n      nativeSidecar: false")
    );
    let rendered = chat_gateway_operator::render::render(&plain, "default").expect("render");
    assert!(!rendered.contains("initContainers:"), "{rendered}");
    let file = scratch("collector-plain.yaml");
    std::fs::write(&file, &rendered).expect("write");
    for version in ["1.27.0", "1.33.0"] {
        let (ok, report) = validate(&file, version);
        assert!(
            ok,
            "plain collector container invalid for {version}:\n{report}"
        );
    }
    let _ = std::fs::remove_dir_all(file.parent().unwrap_or(&file));
}
