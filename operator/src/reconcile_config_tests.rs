//! The config's ConfigMaps in the request sequences: one per config (named by its
//! content), the older ones deleted once the Deployment has rolled out, never before.

use super::*;

const CONFIG_MAPS: &str = "/api/v1/namespaces/apps/configmaps";

/// The applied Deployment as the API server answers it: two pods, both of the current
/// template (`rolled_out`) or one still of the one before.
fn live(rolled_out: bool) -> Value {
    let updated = if rolled_out { 2 } else { 1 };
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "chat", "namespace": "apps", "generation": 4},
        "spec": {"replicas": 2, "selector": {}, "template": {}},
        "status": {"observedGeneration": 4, "replicas": 2, "readyReplicas": 2,
                   "availableReplicas": 2, "updatedReplicas": updated}})
}

/// A ConfigMap's metadata in a list, owned by the `cgw` fixture or by nobody.
fn item(name: &str, owned: bool) -> Value {
    let mut metadata = owned_meta(name);
    if !owned {
        metadata["ownerReferences"] = json!([]);
    }
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": metadata})
}

/// A reconcile of the minimal spec whose Deployment apply answers `live`, with `prune` (the
/// list and deletes of older configs) after the Service.
fn sequence(live: Value, prune: Vec<Step>) -> Vec<Step> {
    let applies = vec![
        step(Method::PATCH, CM),
        ok_with(Method::PATCH, DEPLOY, live),
        step(Method::PATCH, SVC),
    ];
    let rest = vec![step(Method::PATCH, PDB), step(Method::PATCH, STATUS)];
    with(with(with(lookups(), applies), prune), rest)
}

#[tokio::test]
async fn older_config_maps_go_once_the_deployment_rolled_out() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let cgw = cgw(MINIMAL);
    let owner = Owner::of(&cgw, "apps").expect("owner");
    let current = builders::build(&cgw, &owner, &Inputs::default())
        .expect("build")
        .config_map
        .name_any();
    let list = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
    "metadata": {}, "items": [
        item(&current, true),
        item("chat-config", true),
        item("chat-config-1111111111111111", true),
        item("chat-config-2222222222222222", false),
        item("chat-otel-collector", true),
    ]});
    let prune = vec![
        ok_with(Method::GET, CONFIG_MAPS, list),
        // The fixed name of releases before content names, and an older config; not the
        // current one, not someone else's, not the collector's.
        deleted(&format!("{CONFIG_MAPS}/chat-config")),
        deleted(&format!("{CONFIG_MAPS}/chat-config-1111111111111111")),
    ];
    let server = serve(handle, sequence(live(true), prune));
    reconcile(Arc::new(cgw), ctx).await.expect("reconcile");
    server.await.expect("server");
}

#[tokio::test]
async fn older_config_maps_stay_while_pods_of_their_template_run() {
    let (ctx, handle) = context(ServedKinds::ALL, false);
    let server = serve(handle, sequence(live(false), Vec::new()));
    reconcile(Arc::new(cgw(MINIMAL)), ctx)
        .await
        .expect("reconcile");
    server.await.expect("server");
}
