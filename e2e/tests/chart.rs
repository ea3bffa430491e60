//! The Helm chart, manifests/ and the Dockerfiles, checked by the python suite in
//! e2e/chart (pytest, helm-python-sdk = Helm's Go SDK, kubernetes-validate) from the
//! project's venv (`make venv`):
//! - `chart_and_manifests_render_and_validate`: lint and render with the real Helm engine
//!   (defaults and every example values file), bad values refused by values.schema.json,
//!   every rendered object and every file under manifests/ valid for Kubernetes 1.33 and
//!   the newest known version, ChatGateways valid against the CRD schema, RBAC exactly the
//!   documented needs, chart CRD == crds/, manifests fresh, Dockerfile lint; the
//!   PrometheusRule through `promtool check rules` and `promtool test rules` (each alert
//!   fires on its synthetic series, none on healthy ones); every example's documented
//!   test token (`chat-gateway token`, in the pod and locally) accepted by the real gateway
//!   binary running the config the operator renders for it.
//! - `chart_and_manifests_against_a_real_apiserver`: `kubectl apply` of
//!   manifests/install.yaml on a fresh kube-apiserver (e2e/k8s/envtest.sh), `helm install`,
//!   and the operator binary under exactly the chart's RBAC reconciling every example; on a
//!   second fresh server the chart's CRD story (crds.enabled installs it, crds.keep keeps it
//!   on uninstall, a ChatGateway beside its CRD needs install then upgrade).
//! - `bench_summary_judges_targets`: bench/summarize.py (what `make bench` reports) marks a
//!   target unmet on a run with errors, drops, a missing figure or a short delivery rate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The operator binary, (re)built next to this test's executable: a missing or stale one
/// fails the test instead of being skipped or testing old code.
fn operator_binary() -> PathBuf {
    e2e::process::package_bin("chat-gateway-operator", "chat-gateway-operator")
}

fn pytest(args: &[&str]) {
    let root = root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make venv` (the chart tests need pytest, helm-python-sdk and \
         kubernetes-validate from requirements-dev.txt)",
        python.display()
    );
    let probe = Command::new(&python)
        .args([
            "-c",
            "import pytest, helm_python, kubernetes_validate, jsonschema, yaml",
        ])
        .output()
        .expect("run the venv's python");
    assert!(
        probe.status.success(),
        "the venv lacks a chart-test package ({}); requirements-dev.txt must list pytest, \
         helm-python-sdk, kubernetes-validate and PyYAML: run `make venv`",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let started = Instant::now();
    let mut cmd = Command::new(&python);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf"])
        .args(args)
        .current_dir(&root);
    cmd.env("CHATGW_OPERATOR_BIN", operator_binary());
    // Rebuilt first when stale (`cargo test -p e2e` alone builds no other package's binary).
    cmd.env(
        "CHATGW_GATEWAY_BIN",
        e2e::process::workspace_bin("chat-gateway"),
    );
    let out = cmd.output().expect("run pytest");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}\n(pytest {args:?} took {:?})", started.elapsed());
    assert!(out.status.success(), "chart tests failed:\n{report}");
}

#[test]
fn chart_and_manifests_render_and_validate() {
    pytest(&[
        "e2e/chart/test_chart.py",
        "e2e/chart/test_chart_rbac.py",
        "e2e/chart/test_manifests.py",
        "e2e/chart/test_alerts.py",
        "e2e/chart/test_example_tokens.py",
    ]);
}

#[test]
fn bench_summary_judges_targets() {
    pytest(&["bench/test_summarize.py"]);
}

#[test]
fn chart_and_manifests_against_a_real_apiserver() {
    pytest(&[
        "e2e/chart/test_envtest.py",
        "e2e/chart/test_envtest_crds.py",
    ]);
}
