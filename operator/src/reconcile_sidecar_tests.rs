//! Sidecars in the request sequences: the collector's ConfigMap around the Deployment, and
//! the fallback to plain containers on clusters without native sidecars.

use super::*;

#[tokio::test]
async fn collector_config_map_is_applied_before_the_deployment() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(
        handle,
        with(
            lookups(),
            applies(&[CM, COLLECTOR_CM, DEPLOY, SVC, PDB, STATUS]),
        ),
    );
    reconcile(Arc::new(cgw(SIDECARS)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    assert!(seen[7].1["data"]["collector.yaml"]
        .as_str()
        .is_some_and(|c| c.contains("jaeger-collector.observability:4317")));
    let pod = &seen[8].1["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "otel-collector");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(pod["initContainers"][1]["name"], "bot");
    assert_eq!(pod["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(condition(&seen[11].1, "Degraded"), ("False", "AsExpected"));
}

#[tokio::test]
async fn disabling_the_collector_deletes_its_config_map() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let mut steps = lookups();
    steps[1] = owned(COLLECTOR_CM, "chat-otel-collector");
    let server = serve(
        handle,
        with(
            steps,
            vec![
                step(Method::PATCH, CM),
                step(Method::PATCH, DEPLOY),
                step(Method::PATCH, SVC),
                deleted(COLLECTOR_CM),
                step(Method::PATCH, PDB),
                step(Method::PATCH, STATUS),
            ],
        ),
    );
    let spec = SIDECARS.replace("enabled: true", "enabled: false");
    let mut c = cgw(&spec);
    c.metadata.generation = Some(2);
    reconcile(Arc::new(c), ctx).await.expect("reconcile");
    let seen = server.await.expect("server");
    let pod = &seen[7].1["spec"]["template"]["spec"];
    let init: Vec<_> = pod["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(init, ["bot"], "{pod}");
    assert_eq!(seen[11].1["status"]["observedGeneration"], 2);
}

#[tokio::test]
async fn without_native_sidecars_all_sidecars_are_plain_containers_and_reported() {
    let (ctx, handle) = context(
        ServedKinds {
            native_sidecars: false,
            ..ServedKinds::ALL
        },
        false,
    );
    let server = serve(
        handle,
        with(
            lookups(),
            applies(&[CM, COLLECTOR_CM, DEPLOY, SVC, PDB, STATUS]),
        ),
    );
    reconcile(Arc::new(cgw(SIDECARS)), ctx)
        .await
        .expect("reconcile");
    let seen = server.await.expect("server");
    let pod = &seen[8].1["spec"]["template"]["spec"];
    assert!(pod.get("initContainers").is_none(), "{pod}");
    let names: Vec<_> = pod["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["gateway", "otel-collector", "bot"]);
    assert!(pod["containers"][1].get("restartPolicy").is_none());
    let status = &seen[11].1;
    assert_eq!(
        condition(status, "Degraded"),
        ("True", "NativeSidecarsNotSupported")
    );
    assert!(
        message(status, "Degraded")
            .contains("the collector and spec.sidecars run as plain containers"),
        "{status}"
    );
}
