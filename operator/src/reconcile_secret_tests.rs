//! The Secrets a gateway references: read before anything is applied, the keys whose change
//! needs new pods hashed onto the template, the key set checked but left out of the hash, and
//! a missing or unusable key reported instead of applied.

use super::*;

/// One successful read per (Secret, key, value), in order.
fn secret_reads(secrets: &[(&str, &str, &str)]) -> Vec<Step> {
    secrets
        .iter()
        .map(|(name, key, value)| secret_read(name, key, value))
        .collect()
}

/// The reads of FULL's three Secrets (Redis URL, HS256 key, key set), in order.
fn full_secrets(jwt_key: &str, jwks: &str) -> Vec<Step> {
    secret_reads(&[
        ("redis", "url", "redis://r:6379"),
        ("jwt", "secret", jwt_key),
        ("jwks", "jwks.json", jwks),
    ])
}

/// Everything a new FULL gateway applies after its Secrets were read.
fn full_applies() -> Vec<Step> {
    vec![
        step(Method::PATCH, CM),
        step(Method::PATCH, DEPLOY),
        handover(DEPLOY),
        step(Method::PATCH, SVC),
        step(Method::PATCH, HPA),
        step(Method::PATCH, PDB),
        step(Method::PATCH, STATUS),
    ]
}

#[tokio::test]
async fn full_spec_checks_secrets_then_applies_hpa_and_pdb() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with(with(full_secrets(JWT_KEY, JWKS), lookups()), full_applies()),
    );
    reconcile(Arc::new(cgw(FULL)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let hpa = &seen[13].1;
    assert_eq!(
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"],
        "chatgateway_connections"
    );
    // A new autoscaled Deployment starts at minReplicas, and the count is handed over.
    assert_eq!(seen[10].1["spec"]["replicas"], 3);
    assert_eq!(
        seen[11].1,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat"}, "spec": {"replicas": 3}})
    );
    let annotations = &seen[10].1["spec"]["template"]["metadata"]["annotations"];
    let redis = crate::crd::SecretKeyRef {
        name: "redis".into(),
        key: "url".into(),
    };
    let jwt = crate::crd::SecretKeyRef {
        name: "jwt".into(),
        key: "secret".into(),
    };
    assert_eq!(
        annotations["chatgateway.io/secret-hash"],
        crate::secrets::digest(
            &[&redis, &jwt],
            &[b"redis://r:6379".to_vec(), JWT_KEY.as_bytes().to_vec()]
        ),
        "the key set is read (it must exist) but not hashed: it rotates in place"
    );
}

#[tokio::test]
async fn a_key_the_gateway_would_refuse_is_degraded_and_nothing_is_applied() {
    // The reads stop at the first bad value.
    for (jwt, jwks, reads, problem) in [
        ("too-short", JWKS, 2, "the HS256 secret is 9 bytes"),
        (
            JWT_KEY,
            r#"{"keys": [{"kty": "oct"}]}"#,
            3,
            "keys[0] has no `kid`",
        ),
    ] {
        let (ctx, handle) = context(ServedKinds::ALL, true);
        let mut steps = full_secrets(jwt, jwks);
        steps.truncate(reads);
        let server = serve(
            handle,
            with(
                steps,
                vec![step(Method::POST, EVENTS), step(Method::PATCH, STATUS)],
            ),
        );
        let err = reconcile(Arc::new(cgw(FULL)), ctx).await.unwrap_err();
        assert_eq!(err.reason(), "InvalidSecret", "{err}");
        let seen = server.await.expect("server");
        let status = &seen[reads + 1].1;
        assert_eq!(condition(status, "Degraded"), ("True", "InvalidSecret"));
        let m = message(status, "Degraded");
        assert!(m.contains(problem), "{m}");
        assert!(!m.contains("too-short"), "the value never shows: {m}");
    }
}

#[tokio::test]
async fn missing_secret_is_degraded_with_an_event_and_backs_off() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            not_found(Method::GET, &format!("{NS}/secrets/redis")),
            step(Method::POST, EVENTS),
            step(Method::PATCH, STATUS),
        ],
    );
    let c = Arc::new(cgw(FULL));
    let err = reconcile(c.clone(), ctx.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::SecretRef { ref name, .. } if name == "redis"),
        "{err}"
    );
    let seen = server.await.expect("server");
    let event = &seen[1].1;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("SecretNotFound"))
    );
    assert_eq!(event["regarding"]["name"], "chat");
    let status = &seen[2].1;
    assert_eq!(condition(status, "Degraded"), ("True", "SecretNotFound"));
    assert_eq!(condition(status, "Reconciled"), ("False", "SecretNotFound"));
    // A failure says nothing new about the pods: never reconciled, so Unknown.
    assert_eq!(condition(status, "Ready"), ("Unknown", "NotReconciled"));
    // Exponential backoff per gateway.
    let first = error_policy(c.clone(), &err, ctx.clone());
    let second = error_policy(c.clone(), &err, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(10)));
    assert_eq!(second, Action::requeue(Duration::from_secs(20)));
    assert!(ctx
        .metrics
        .render()
        .contains("reason=\"SecretNotFound\"} 1"));
}

#[tokio::test]
async fn secret_without_the_key_is_degraded() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        vec![
            secret_read("redis", "other", "x"),
            step(Method::PATCH, STATUS),
        ],
    );
    let err = reconcile(Arc::new(cgw(FULL)), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "SecretNotFound");
    server.await.expect("server");
}

async fn deployment_with_keys(jwt_key: &str, jwks: &str) -> Value {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with(with(full_secrets(jwt_key, jwks), lookups()), full_applies()),
    );
    reconcile(Arc::new(cgw(FULL)), ctx)
        .await
        .expect("reconcile");
    let mut seen = server.await.expect("server");
    seen.swap_remove(10).1
}

#[tokio::test]
async fn a_rotated_key_changes_the_pod_template_and_a_rotated_key_set_does_not() {
    let other_key = "fedcba9876543210fedcba9876543210";
    let other_set = JWKS.replace("\"k1\"", "\"k2\"");
    let before = deployment_with_keys(JWT_KEY, JWKS).await;
    let again = deployment_with_keys(JWT_KEY, JWKS).await;
    let after = deployment_with_keys(other_key, JWKS).await;
    let set_rotated = deployment_with_keys(JWT_KEY, &other_set).await;
    let hash = |d: &Value| {
        d["spec"]["template"]["metadata"]["annotations"]["chatgateway.io/secret-hash"].clone()
    };
    assert_eq!(hash(&before), hash(&again));
    assert_ne!(hash(&before), hash(&after), "a new key rolls the pods");
    let template = |d: &Value| d["metadata"]["annotations"]["chatgateway.io/template-hash"].clone();
    assert_ne!(template(&before), template(&after));
    // The kubelet rewrites the mounted key set and the gateway re-reads it: same pods.
    assert_eq!(hash(&before), hash(&set_rotated));
    assert_eq!(template(&before), template(&set_rotated));
    // The key itself never leaves the Secret.
    assert!(!after.to_string().contains(other_key));
}

/// A sentinel-mode gateway whose Redis and Sentinel passwords come from two Secrets.
const SENTINEL: &str = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {mode: sentinel, passwordSecretRef: {name: acl, key: pw}, sentinel: {masterName: chat, addresses: ['redis://s-0.s:26379', 'redis://s-1.s:26379'], passwordSecretRef: {name: sen, key: pw}}}}";

/// Reconciles SENTINEL with these passwords; returns every request body.
async fn sentinel_gateway(redis_pw: &str, sentinel_pw: &str) -> Vec<(String, Value)> {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let reads = vec![
        secret_read("acl", "pw", redis_pw),
        secret_read("sen", "pw", sentinel_pw),
    ];
    let server = serve(
        handle,
        with(
            with(reads, lookups()),
            applies(&[CM, DEPLOY, SVC, PDB, STATUS]),
        ),
    );
    reconcile(Arc::new(cgw(SENTINEL)), ctx)
        .await
        .expect("reconcile");
    server.await.expect("server")
}

#[tokio::test]
async fn sentinel_mode_reads_both_password_secrets_and_a_new_sentinel_password_rolls_the_pods() {
    let seen = sentinel_gateway("redis-pw", "sentinel-pw").await;
    assert_eq!(
        paths(&seen)[..2],
        [
            "GET /api/v1/namespaces/apps/secrets/acl",
            "GET /api/v1/namespaces/apps/secrets/sen"
        ]
    );
    let config = seen[8].1["data"]["config.yaml"].as_str().expect("config");
    assert!(
        config.contains("mode: sentinel") && config.contains("masterName: chat"),
        "{config}"
    );
    let deployment = &seen[9].1;
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    for var in ["CHATGW_REDIS__PASSWORD", "CHATGW_REDIS__SENTINEL__PASSWORD"] {
        assert!(env.contains(var), "{env}");
    }
    let everything = serde_json::to_string(&seen).expect("json");
    assert!(!everything.contains("redis-pw") && !everything.contains("sentinel-pw"));
    let hash = |seen: &[(String, Value)]| {
        seen[9].1["spec"]["template"]["metadata"]["annotations"]["chatgateway.io/secret-hash"]
            .clone()
    };
    let (acl, sen) = (
        crate::crd::SecretKeyRef {
            name: "acl".into(),
            key: "pw".into(),
        },
        crate::crd::SecretKeyRef {
            name: "sen".into(),
            key: "pw".into(),
        },
    );
    assert_eq!(
        hash(&seen),
        crate::secrets::digest(
            &[&acl, &sen],
            &[b"redis-pw".to_vec(), b"sentinel-pw".to_vec()]
        )
    );
    let rotated = sentinel_gateway("redis-pw", "new-sentinel-pw").await;
    assert_ne!(
        hash(&seen),
        hash(&rotated),
        "a new sentinel password rolls the pods"
    );
}

/// A single-mode gateway over TLS: its URL, a private CA, and a client certificate and key
/// from a second Secret.
const TLS: &str = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: redis, key: url}, tls: {caSecretRef: {name: redis-tls, key: ca.crt}, clientCertSecretRef: {name: redis-client, key: tls.crt}, clientKeySecretRef: {name: redis-client, key: tls.key}}}}";

/// A PEM certificate and its PEM key.
fn pem_pair() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["redis.apps".into()]).expect("cert");
    (cert.pem(), signing_key.serialize_pem())
}

/// The reads of TLS's Secrets, in order: URL, CA, client certificate, client key.
fn tls_secrets(ca: &str, cert: &str, key: &str) -> Vec<Step> {
    secret_reads(&[
        ("redis", "url", "rediss://redis.apps:6380"),
        ("redis-tls", "ca.crt", ca),
        ("redis-client", "tls.crt", cert),
        ("redis-client", "tls.key", key),
    ])
}

/// Reconciles TLS with these PEM files; returns every request body.
async fn tls_gateway(ca: &str, cert: &str, key: &str) -> Vec<(String, Value)> {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with(
            with(tls_secrets(ca, cert, key), lookups()),
            applies(&[CM, DEPLOY, SVC, PDB, STATUS]),
        ),
    );
    reconcile(Arc::new(cgw(TLS)), ctx).await.expect("reconcile");
    server.await.expect("server")
}

#[tokio::test]
async fn the_redis_tls_secrets_are_read_mounted_and_a_rotated_ca_rolls_the_pods() {
    let ((ca, _), (cert, key)) = (pem_pair(), pem_pair());
    let seen = tls_gateway(&ca, &cert, &key).await;
    assert_eq!(
        paths(&seen)[..4],
        [
            "GET /api/v1/namespaces/apps/secrets/redis",
            "GET /api/v1/namespaces/apps/secrets/redis-tls",
            "GET /api/v1/namespaces/apps/secrets/redis-client",
            "GET /api/v1/namespaces/apps/secrets/redis-client",
        ]
    );
    let config = seen[10].1["data"]["config.yaml"].as_str().expect("config");
    assert!(
        config.contains("caFile: /var/run/secrets/chatgateway/redis-tls/ca.crt"),
        "{config}"
    );
    let pod = &seen[11].1["spec"]["template"]["spec"];
    assert!(pod["volumes"].to_string().contains("redis-client"), "{pod}");
    let hash = |seen: &[(String, Value)]| {
        seen[11].1["spec"]["template"]["metadata"]["annotations"]["chatgateway.io/secret-hash"]
            .clone()
    };
    let r = |name: &str, key: &str| crate::crd::SecretKeyRef {
        name: name.into(),
        key: key.into(),
    };
    let refs = [
        r("redis", "url"),
        r("redis-tls", "ca.crt"),
        r("redis-client", "tls.crt"),
        r("redis-client", "tls.key"),
    ];
    let values = ["rediss://redis.apps:6380", &ca, &cert, &key].map(|v| v.as_bytes().to_vec());
    assert_eq!(
        hash(&seen),
        crate::secrets::digest(&refs.iter().collect::<Vec<_>>(), &values)
    );
    let everything = serde_json::to_string(&seen[4..]).expect("json");
    assert!(
        !everything.contains(key.lines().nth(1).unwrap_or("-")),
        "the key never leaves its Secret"
    );
    assert_eq!(hash(&seen), hash(&tls_gateway(&ca, &cert, &key).await));
    let (new_ca, _) = pem_pair();
    assert_ne!(
        hash(&seen),
        hash(&tls_gateway(&new_ca, &cert, &key).await),
        "a new CA rolls the pods"
    );
    let (new_cert, new_key) = pem_pair();
    assert_ne!(
        hash(&seen),
        hash(&tls_gateway(&ca, &new_cert, &new_key).await),
        "a new client certificate rolls the pods"
    );
}

#[tokio::test]
async fn a_missing_ca_secret_or_a_plain_url_is_degraded_and_nothing_is_applied() {
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            secret_read("redis", "url", "rediss://redis.apps:6380"),
            not_found(Method::GET, &format!("{NS}/secrets/redis-tls")),
            step(Method::POST, EVENTS),
            step(Method::PATCH, STATUS),
        ],
    );
    let err = reconcile(Arc::new(cgw(TLS)), ctx).await.unwrap_err();
    assert!(
        matches!(err, Error::SecretRef { ref name, ref key, .. } if name == "redis-tls" && key == "ca.crt"),
        "{err}"
    );
    let seen = server.await.expect("server");
    assert_eq!(seen[2].1["reason"], "SecretNotFound");
    assert_eq!(
        condition(&seen[3].1, "Degraded"),
        ("True", "SecretNotFound")
    );

    // TLS asked for, but the URL in the Secret is plain text: reported, not crash-looping.
    let (ctx, handle) = context(ServedKinds::ALL, true);
    let server = serve(
        handle,
        vec![
            secret_read("redis", "url", "redis://:hunter2@redis.apps:6379"),
            step(Method::POST, EVENTS),
            step(Method::PATCH, STATUS),
        ],
    );
    let err = reconcile(Arc::new(cgw(TLS)), ctx).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidSecret", "{err}");
    let seen = server.await.expect("server");
    let m = message(&seen[2].1, "Degraded");
    assert!(m.contains("use rediss://"), "{m}");
    assert!(!m.contains("hunter2"), "the value never shows: {m}");
}
