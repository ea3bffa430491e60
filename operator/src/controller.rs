//! The controller: what triggers a reconcile (ChatGateways, their children, the Secrets
//! they reference).

use crate::builders::FIELD_MANAGER;
use crate::crd::ChatGateway;
use crate::reconcile::{error_policy, reconcile, Context};
use crate::served;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::runtime::controller::Controller;
use kube::runtime::{predicates, reflector, watcher, WatchStreamExt};
use kube::ResourceExt;
use std::future::Future;
use std::sync::Arc;

/// Runs the controller until `shutdown` resolves. Children are watched by their label;
/// Secrets by their metadata only (no Secret data in the operator's memory), mapped to the
/// ChatGateways that reference them.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    // Only a change of spec (a new generation) starts a reconcile: a reconcile reads
    // nothing else of the ChatGateway. Its status is written by the reconciler itself
    // and, as connections come and go, by the metrics reporter (status.connections,
    // every scrape round while the numbers move); each such write would otherwise
    // re-apply every child of the gateway. Children, Secrets and the periodic resync
    // still start reconciles as before.
    let (store, writer) = reflector::store();
    let gateways = watcher(
        Api::<ChatGateway>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(predicates::generation, Default::default());
    let mut controller = Controller::for_stream(gateways, store)
        .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
        .owns(Api::<Deployment>::all(client.clone()), children.clone())
        .owns(Api::<Service>::all(client.clone()), children.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), children.clone());
    // HPA and PDB in the version the cluster serves (autoscaling/v2beta2 and
    // policy/v1beta1 on Kubernetes 1.20).
    let versioned = [
        ctx.served
            .hpa
            .map(served::api_resource::<HorizontalPodAutoscaler>),
        ctx.served
            .pdb
            .map(served::api_resource::<PodDisruptionBudget>),
    ];
    for resource in versioned.into_iter().flatten() {
        controller = controller.owns_with(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            resource,
            children.clone(),
        );
    }
    let gateways = controller.store();
    let secrets = watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    controller = controller.watches_stream(secrets, move |secret: PartialObjectMeta<Secret>| {
        let state = gateways.state();
        crate::secrets::gateways_using(
            &secret.namespace().unwrap_or_default(),
            &secret.name_any(),
            state.iter().map(|g| g.as_ref()),
        )
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(gateway = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}
