//! A real kube-apiserver + etcd (v1.20.2) for the operator's integration tests, started by
//! `e2e/k8s/envtest.sh` (built from Debian's source by `e2e/k8s/build.sh`; the aggregation
//! layer is on), and the operator binary run against it. That
//! server has no controllers and no CEL, and serves the HPA and PDB only as
//! autoscaling/v2beta2 and policy/v1beta1.
#![allow(dead_code)] // each test binary uses a different part

use chat_gateway_operator::crd::ChatGateway;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts etcd + kube-apiserver in a fresh directory and stops them when dropped, also
/// when the test panics.
pub struct Envtest {
    script: PathBuf,
    /// Where the apiserver keeps its files (logs, kubeconfig).
    pub dir: PathBuf,
}

impl Envtest {
    pub fn start() -> Envtest {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = root.join("e2e/k8s/envtest.sh");
        assert!(script.exists(), "{} is missing", script.display());
        let dir = std::env::temp_dir().join(format!("chatgw-envtest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let guard = Envtest { script, dir };
        let status = Command::new("bash")
            .arg(&guard.script)
            .arg("start")
            .arg(&guard.dir)
            .status()
            .expect("run e2e/k8s/envtest.sh");
        assert!(
            status.success(),
            "e2e/k8s/envtest.sh start failed; see {}",
            guard.dir.display()
        );
        guard
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A value of DIR/env (`export NAME=value` lines), e.g. the front proxy's certificate.
    pub fn env(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("env")).expect("envtest env file");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("export {name}="))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| panic!("{name} missing from the envtest env file"))
    }

    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("client")
    }
}

impl Drop for Envtest {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .status();
        if std::thread::panicking() {
            eprintln!("envtest logs kept in {}", self.dir.display());
            let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
            if log.contains("fatal error: fault") && log.contains("reflect2") {
                eprintln!(
                    "the envtest kube-apiserver crashed in github.com/modern-go/reflect2: v1.20.2 vendors \
                     reflect2 1.0.1, which breaks under Go >= 1.18; it must be built with reflect2 1.0.2 \
                     (Debian golang-github-modern-go-reflect2-dev) in vendor/ (see docs/operator.md, Tests)"
                );
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The operator binary as a child process, stopped with SIGTERM (or killed) on drop.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    /// The operator holding its Lease in `default`, /metrics on 127.0.0.1:`metrics_port`.
    pub fn start(env: &Envtest, identity: &str, metrics_port: u16) -> Operator {
        let metrics = format!("127.0.0.1:{metrics_port}");
        Operator::start_with(
            env,
            identity,
            &["--lease-namespace", "default", "--metrics-addr", &metrics],
        )
    }

    /// The operator with `args` after `run --log-format text --identity IDENTITY
    /// --lease-duration 30s`. No test waits for the Lease to expire (a SIGTERM releases
    /// it), and a short one ends the operator when the API server is slow for a moment
    /// (each renewal must land within two thirds of it).
    pub fn start_with(env: &Envtest, identity: &str, args: &[&str]) -> Operator {
        let log = env.dir.join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_chat-gateway-operator"))
            .args(["run", "--log-format", "text", "--identity", identity])
            .args(["--lease-duration", "30s"])
            .args(args)
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "info,chat_gateway_operator=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Operator { child, log }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "operator did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to operator");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

/// `chatgateway_operator_reconciles_total{outcome="ok"}` on the operator's /metrics.
pub fn reconciles_ok(metrics_port: u16) -> f64 {
    http_get(metrics_port, "/metrics")
        .lines()
        .find(|l| l.starts_with("chatgateway_operator_reconciles_total{outcome=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
}

pub fn condition(cgw: &ChatGateway, type_: &str) -> Option<(String, String, String)> {
    let c = cgw
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

pub fn gateway(name: &str, spec: serde_json::Value) -> ChatGateway {
    serde_json::from_value(json!({
        "apiVersion": "chatgateway.io/v1beta1", "kind": "ChatGateway",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("gateway")
}

pub const WAIT: Duration = Duration::from_secs(30);

/// An API for `kind` in an older group version the typed client does not know.
pub fn versioned_api(
    client: &Client,
    ns: &str,
    api_version: &str,
    kind: &str,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').expect("group/version");
    let plural = format!("{}s", kind.to_lowercase());
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Creates the generated CRD and waits until it is established. Created, not server-side
/// applied: v1.20 predates CEL, and only a plain create drops the unknown
/// x-kubernetes-validations (as `kubectl apply --validate=false` does there).
pub async fn install_crd(client: &Client) {
    let crd_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/chatgateway.yaml"),
    )
    .expect("crds/chatgateway.yaml");
    let crd: CustomResourceDefinition =
        chat_gateway_operator::yaml::from_str(&crd_text).expect("crd yaml");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("the API server accepts the generated CRD");
    eventually("CRD established", WAIT, || {
        let crds = crds.clone();
        async move {
            let c = crds.get("chatgateways.chatgateway.io").await.ok()?;
            let conds = c.status?.conditions?;
            conds
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

/// The gateway config ConfigMap the Deployment `name` mounts (named by its content).
pub async fn mounted_config(
    client: &Client,
    ns: &str,
    name: &str,
) -> k8s_openapi::api::core::v1::ConfigMap {
    let deployment = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("the Deployment");
    let config_map = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.volumes)
        .into_iter()
        .flatten()
        .find(|v| v.name == "config")
        .and_then(|v| v.config_map)
        .map(|c| c.name)
        .expect("a config volume");
    assert!(
        config_map.starts_with(&format!("{name}-config-")),
        "{config_map}"
    );
    Api::namespaced(client.clone(), ns)
        .get(&config_map)
        .await
        .expect("the ConfigMap the pods mount")
}
