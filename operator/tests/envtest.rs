//! Integration test against a real kube-apiserver + etcd (v1.20.2) started by
//! `e2e/k8s/envtest.sh` (built from Debian's source by `e2e/k8s/build.sh`). That server has no controllers and no CEL, and
//! serves the HPA and PDB only as autoscaling/v2beta2 and policy/v1beta1, so the operator
//! must write them in those versions. The real operator binary runs against it.

mod support;

use chat_gateway_operator::crd::ChatGateway;
use chat_gateway_operator::leader::LeaderElector;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

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
        stderr.contains("kubectl apply --server-side -f crds/chatgateway.yaml")
            && stderr.contains("--validate=false"),
        "{stderr}"
    );

    // The generated CRD is accepted (the server checks the schema is structural).
    install_crd(&client).await;

    let metrics_port = e2e::process::free_port();
    let mut operator = Operator::start(&env, "op-1", metrics_port);

    // --- create: ConfigMap, Deployment, Service by server-side apply; status written.
    create_namespace(&client, "team-a").await;
    let chat_redis: Secret = serde_json::from_value(json!({
        "metadata": {"name": "chat-redis"}, "stringData": {"url": "redis://redis:6379"}
    }))
    .expect("secret");
    Api::<Secret>::namespaced(client.clone(), "team-a")
        .create(&PostParams::default(), &chat_redis)
        .await
        .expect("secret");
    let cgws = Api::<ChatGateway>::namespaced(client.clone(), "team-a");
    let redis = json!({"urlSecretRef": {"name": "chat-redis", "key": "url"}});
    cgws.create(
        &PostParams::default(),
        &gateway(
            "chat",
            json!({"replicas": 2, "gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}, "redis": redis}}),
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
        ("False", "AsExpected"),
        "{message}"
    );
    // v1.20 serves the PDB as policy/v1beta1 only: written there, same content.
    let pdb = versioned_api(&client, "team-a", "policy/v1beta1", "PodDisruptionBudget")
        .get("chat")
        .await
        .expect("policy/v1beta1 PodDisruptionBudget");
    assert_eq!(pdb.data["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "chat"
    );
    for type_ in ["Ready", "Available", "Progressing"] {
        assert!(condition(&chat, type_).is_some(), "no {type_} condition");
    }
    assert_eq!(
        condition(&chat, "Reconciled").map(|c| (c.0, c.1)),
        Some(("True".into(), "ReconcileSucceeded".into()))
    );
    let selector = chat
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    assert_eq!(
        selector,
        "app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-gateway"
    );

    let cm = mounted_config(&client, "team-a", "chat").await;
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
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(
        (
            pod.enable_service_links,
            pod.automount_service_account_token
        ),
        (Some(false), Some(false)),
        "no service-link variables and no API token in gateway pods"
    );
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
        &Patch::Merge(
            json!({"spec": {"replicas": 3, "gateway": {"heartbeat": {"interval": "10s"}}}}),
        ),
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

    // --- the server API: a Service of its own, the keys mounted from their Secret and
    // rotated without a rollout, and the Service deleted when the API is turned off.
    let secrets = Api::<Secret>::namespaced(client.clone(), "team-a");
    let keys = |value: &str| {
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": "chat-api-keys"}, "stringData": {"keys": value}
        }))
        .expect("secret")
    };
    secrets
        .create(&PostParams::default(), &keys("key-1\n"))
        .await
        .expect("keys secret");
    let api_on = json!({"spec": {"gateway": {"api": {"keysSecretRef": {"name": "chat-api-keys", "key": "keys"}}}}});
    cgws.patch("chat", &PatchParams::default(), &Patch::Merge(api_on))
        .await
        .expect("API on");
    let services = Api::<Service>::namespaced(client.clone(), "team-a");
    let api_service = eventually("the chat-api Service", WAIT, || {
        let services = services.clone();
        async move { services.get_opt("chat-api").await.ok()? }
    })
    .await;
    let spec = api_service.spec.clone().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let ports: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.port))
        .collect();
    assert_eq!(ports, [("api".to_string(), 9090)]);
    assert_eq!(
        api_service
            .metadata
            .owner_references
            .map(|r| r[0].name.clone()),
        Some("chat".into())
    );
    let template_hash = |d: &Deployment| {
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("chatgateway.io/template-hash").cloned())
    };
    let dep = deployments.get("chat").await.expect("Deployment");
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod");
    assert!(
        pod.containers[0]
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some("api") && p.container_port == 9090),
        "{:?}",
        pod.containers[0].ports
    );
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "api-keys");
    assert_eq!(
        volume
            .and_then(|v| v.secret.as_ref()?.secret_name.clone())
            .as_deref(),
        Some("chat-api-keys")
    );
    let with_api = template_hash(&dep).expect("template hash");
    // A keys Secret without a key is reported; a good one clears it; neither rolls the pods.
    let degraded = |want: &'static str| {
        let cgws = cgws.clone();
        move || {
            let cgws = cgws.clone();
            async move {
                let c = cgws.get("chat").await.ok()?;
                (condition(&c, "Degraded")?.1 == want).then_some(c)
            }
        }
    };
    for (value, want) in [
        ("# none\n", "InvalidSecret"),
        ("key-2\nkey-1\n", "AsExpected"),
    ] {
        secrets
            .replace("chat-api-keys", &PostParams::default(), &keys(value))
            .await
            .expect("rotate the keys");
        eventually(want, WAIT, degraded(want)).await;
        let dep = deployments.get("chat").await.expect("Deployment");
        assert_eq!(
            template_hash(&dep).as_deref(),
            Some(with_api.as_str()),
            "{want}"
        );
    }
    let api_off = json!({"spec": {"gateway": {"api": {"enabled": false}}}});
    cgws.patch("chat", &PatchParams::default(), &Patch::Merge(api_off))
        .await
        .expect("API off");
    eventually("the chat-api Service deleted", WAIT, || {
        let services = services.clone();
        async move {
            services
                .get_opt("chat-api")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;
    eprintln!("server API scenario done after {:?}", started.elapsed());

    // --- a missing Secret is a Degraded condition and an Event, and heals once created.
    let bad_spec = json!({
        "gateway": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}, "auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": true}},
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
                (condition(&c, "Degraded")?.1 == "AsExpected").then_some(c)
            }
        },
    )
    .await;
    assert_eq!(
        condition(&healed, "Degraded").map(|c| c.0).as_deref(),
        Some("False")
    );
    // v1.20 serves the HPA as autoscaling/v2beta2 only: written there, same content.
    let hpa = versioned_api(
        &client,
        "team-a",
        "autoscaling/v2beta2",
        "HorizontalPodAutoscaler",
    )
    .get("bad")
    .await
    .expect("autoscaling/v2beta2 HorizontalPodAutoscaler");
    assert_eq!(
        (
            &hpa.data["spec"]["minReplicas"],
            &hpa.data["spec"]["maxReplicas"]
        ),
        (&json!(2), &json!(4))
    );
    assert_eq!(
        hpa.data["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "chatgateway_connections"
    );
    assert_eq!(
        hpa.metadata
            .owner_references
            .as_ref()
            .map(|r| r[0].name.as_str()),
        Some("bad")
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
    let before = reconciles_ok(metrics_port);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = reconciles_ok(metrics_port);
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
