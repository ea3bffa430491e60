//! Integration test against a real kube-apiserver + etcd (v1.20.2) started by
//! `e2e/k8s/envtest.sh` (built from Debian's source by `e2e/k8s/build.sh`). That server has no controllers, no CEL, and
//! serves neither autoscaling/v2 nor policy/v1, so the operator must report those kinds
//! in a condition. The real operator binary runs against it.

use chat_gateway_operator::crd::ChatGateway;
use chat_gateway_operator::leader::LeaderElector;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts etcd + kube-apiserver in a fresh directory and stops them when dropped, also
/// when the test panics.
struct Envtest {
    script: PathBuf,
    dir: PathBuf,
}

impl Envtest {
    fn start() -> Envtest {
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

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    async fn client(&self) -> Client {
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
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(env: &Envtest, identity: &str, metrics_port: u16) -> Operator {
        let log = env.dir.join(format!("operator-{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_chat-gateway-operator"))
            .args([
                "run",
                "--log-format",
                "text",
                "--lease-namespace",
                "default",
                "--identity",
                identity,
            ])
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--lease-duration",
                "6s",
            ])
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "info,chat_gateway_operator=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the operator");
        Operator { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
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
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
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

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to operator");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn condition(cgw: &ChatGateway, type_: &str) -> Option<(String, String, String)> {
    let c = cgw
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn gateway(name: &str, spec: serde_json::Value) -> ChatGateway {
    serde_json::from_value(json!({
        "apiVersion": "chatgateway.io/v1alpha1", "kind": "ChatGateway",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("gateway")
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_apiserver() {
    let started = Instant::now();
    let env = Envtest::start();
    let client = env.client().await;
    eprintln!("envtest up after {:?}", started.elapsed());

    // Without the CRD the operator refuses to start and says how to install it.
    let out = Command::new(env!("CARGO_BIN_EXE_chat-gateway-operator"))
        .args([
            "run",
            "--log-format",
            "text",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", env.kubeconfig())
        .output()
        .expect("run operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kubectl apply -f crds/chatgateway.yaml"),
        "{stderr}"
    );

    // The generated CRD is accepted (the server checks the schema is structural).
    let crd_text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/chatgateway.yaml"),
    )
    .expect("crds/chatgateway.yaml");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_text).expect("crd yaml");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    // Created, not server-side applied: v1.20 predates CEL, and only a plain create drops
    // the unknown x-kubernetes-validations (as `kubectl apply` does there).
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

    let metrics_port = free_port();
    let mut operator = Operator::start(&env, "op-1", metrics_port);

    // --- create: ConfigMap, Deployment, Service by server-side apply; status written.
    create_namespace(&client, "team-a").await;
    let cgws = Api::<ChatGateway>::namespaced(client.clone(), "team-a");
    cgws.create(
        &PostParams::default(),
        &gateway(
            "chat",
            json!({"replicas": 2, "gateway": {"auth": {"mode": "insecure"}}}),
        ),
    )
    .await
    .expect("create ChatGateway");
    let status_of = |name: &'static str, generation: i64| {
        let cgws = cgws.clone();
        move || {
            let cgws = cgws.clone();
            async move {
                let c = cgws.get(name).await.ok()?;
                (c.status.as_ref()?.observed_generation == Some(generation)).then_some(c)
            }
        }
    };
    let chat = eventually("status of generation 1", WAIT, status_of("chat", 1)).await;
    let (status, reason, message) = condition(&chat, "Degraded").expect("Degraded condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "KindNotServed"),
        "{message}"
    );
    assert!(
        message.contains("policy/v1 PodDisruptionBudget"),
        "{message}"
    );
    assert!(condition(&chat, "Ready").is_some() && condition(&chat, "Progressing").is_some());
    let selector = chat
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    assert_eq!(
        selector,
        "app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-gateway"
    );

    let cm = Api::<ConfigMap>::namespaced(client.clone(), "team-a")
        .get("chat-config")
        .await
        .expect("ConfigMap");
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.yaml"))
        .expect("config.yaml");
    chat_gateway_config::Config::from_yaml(text).expect("the gateway parses the applied ConfigMap");
    let managers: Vec<_> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("chatgateway-operator".into(), "Apply".into())),
        "{managers:?}"
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), "team-a");
    let dep = deployments.get("chat").await.expect("Deployment");
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_eq!(
        dep.metadata
            .owner_references
            .as_ref()
            .map(|r| r[0].name.as_str()),
        Some("chat")
    );
    Api::<Service>::namespaced(client.clone(), "team-a")
        .get("chat")
        .await
        .expect("Service");
    eprintln!("create reconciled after {:?}", started.elapsed());

    // --- update: a config change rolls the pods (new hash), replicas follow the spec.
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("chatgateway.io/config-hash").cloned())
    };
    let old_hash = hash(&dep).expect("config hash");
    cgws.patch(
        "chat",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3, "gateway": {"heartbeatInterval": "10s"}}})),
    )
    .await
    .expect("update spec");
    eventually("status of generation 2", WAIT, status_of("chat", 2)).await;
    let dep = deployments.get("chat").await.expect("Deployment");
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_ne!(
        hash(&dep),
        Some(old_hash),
        "config change must roll the pods"
    );

    // --- `kubectl scale cgw chat --replicas=5` goes through the scale subresource.
    let scale = cgws
        .patch_scale(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("scale subresource");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(5));
    eventually("Deployment scaled to 5", WAIT, || {
        let deployments = deployments.clone();
        async move { (deployments.get("chat").await.ok()?.spec?.replicas == Some(5)).then_some(()) }
    })
    .await;
    let scale = cgws.get_scale("chat").await.expect("get scale");
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some(selector.as_str())
    );

    // --- a missing Secret is a Degraded condition and an Event, and heals once created.
    let bad_spec = json!({
        "gateway": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}, "auth": {"mode": "insecure"}},
        "autoscaling": {"enabled": true, "minReplicas": 2, "maxReplicas": 4},
    });
    cgws.create(&PostParams::default(), &gateway("bad", bad_spec))
        .await
        .expect("create bad");
    let bad = eventually("Degraded SecretNotFound", WAIT, || {
        let cgws = cgws.clone();
        async move {
            let c = cgws.get("bad").await.ok()?;
            (condition(&c, "Degraded")?.1 == "SecretNotFound").then_some(c)
        }
    })
    .await;
    assert_eq!(
        condition(&bad, "Degraded").map(|c| c.0).as_deref(),
        Some("True")
    );
    let events = Api::<Event>::namespaced(client.clone(), "team-a");
    let event = eventually("Warning Event", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")
                    && e.reason.as_deref() == Some("SecretNotFound")
            })
        }
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(Api::<Deployment>::namespaced(client.clone(), "team-a")
        .get_opt("bad")
        .await
        .expect("get")
        .is_none());

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "redis"}, "stringData": {"url": "redis://redis:6379"}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "team-a")
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    // Healing waits for the next retry: 10 s after the first failure, doubling, and the
    // Degraded status write itself triggers one more failed attempt, so allow ~3 rounds.
    let healed = eventually(
        "bad heals after the Secret appears",
        Duration::from_secs(75),
        || {
            let cgws = cgws.clone();
            async move {
                let c = cgws.get("bad").await.ok()?;
                (condition(&c, "Degraded")?.1 == "KindNotServed").then_some(c)
            }
        },
    )
    .await;
    let message = condition(&healed, "Degraded")
        .map(|c| c.2)
        .unwrap_or_default();
    assert!(
        message.contains("autoscaling/v2 HorizontalPodAutoscaler"),
        "{message}"
    );
    let dep = deployments
        .get("bad")
        .await
        .expect("Deployment of the healed gateway");
    assert_eq!(
        dep.spec.and_then(|s| s.replicas),
        Some(2),
        "autoscaling on: a new Deployment starts at minReplicas"
    );
    eprintln!("secret scenario done after {:?}", started.elapsed());

    // --- leader election: op-1 holds the Lease; another candidate cannot take it.
    let leases = Api::<Lease>::namespaced(client.clone(), "default");
    let lease = leases.get("chatgateway-operator").await.expect("Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("op-1")
    );
    let other = LeaderElector::new(
        client.clone(),
        "default",
        "chatgateway-operator",
        "op-2",
        Duration::from_secs(6),
    );
    assert!(
        !other.try_acquire_or_renew().await.expect("election"),
        "the Lease is held by op-1"
    );

    // --- its own metrics and health endpoints.
    let metrics = http_get(metrics_port, "/metrics");
    assert!(
        metrics.contains("chatgateway_operator_reconciles_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chatgateway_operator_reconcile_errors_total{reason=\"SecretNotFound\"}"),
        "{metrics}"
    );
    assert!(http_get(metrics_port, "/healthz").contains(" 200 OK"));
    // Status writes that change nothing must not trigger further reconciles (no hot loop).
    let count = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("chatgateway_operator_reconciles_total{outcome=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = count(&metrics);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = count(&http_get(metrics_port, "/metrics"));
    eprintln!("reconciles: {before} then {after} after 3 idle seconds");
    assert!(
        after - before <= 2.0,
        "reconciles keep running while nothing changes: {before} -> {after}"
    );

    // --- SIGTERM: clean exit, Lease released so a standby takes over at once.
    let status = operator.terminate();
    assert!(
        status.success(),
        "operator exit {status:?}:\n{}",
        operator.log()
    );
    let lease = leases.get("chatgateway-operator").await.expect("Lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None);
    assert!(
        other.try_acquire_or_renew().await.expect("election"),
        "a released Lease is free"
    );
    eprintln!("envtest scenario finished after {:?}", started.elapsed());
}
