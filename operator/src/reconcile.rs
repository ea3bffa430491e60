//! One reconcile: build the children, check they are ours, apply them with server-side
//! apply, write status. `controller` decides when it runs.

use crate::builders::{self, collector, pod, Inputs, Owner, FIELD_MANAGER};
use crate::builders::{hpa::DEFAULT_MIN, TEMPLATE_HASH_ANNOTATION};
use crate::children::{self, apply, Found, Optional};
use crate::crd::{ChatGateway, ChatGatewayStatus};
use crate::error::{Error, Result};
use crate::handoff::{self, Plan};
use crate::metrics::Metrics;
use crate::old_configs;
use crate::served::{self, HPA_VERSIONS, PDB_VERSIONS};
use crate::status::{self, ChildCondition, Observed};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::served::ServedKinds;

/// Re-check a healthy gateway this often even without events (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Longest wait between retries of a failing gateway.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Shared state of the reconciler.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on the ChatGateway; `None` disables Events.
    pub recorder: Option<Recorder>,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Optional kinds the cluster serves.
    pub served: ServedKinds,
    /// Gateway image for ChatGateways that name none (`--gateway-image`).
    pub default_image: Option<String>,
    /// Consecutive failures per gateway, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context publishing Events as `reporter` (usually the operator's pod name).
    pub fn new(
        client: Client,
        served: ServedKinds,
        metrics: Metrics,
        reporter: Option<String>,
    ) -> Context {
        let recorder = reporter.map(|instance| {
            Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(instance),
                },
            )
        });
        Context {
            client,
            recorder,
            metrics,
            served,
            default_image: None,
            failures: Mutex::default(),
        }
    }

    /// The same context with a gateway image for ChatGateways that name none.
    pub fn with_default_image(mut self, image: Option<String>) -> Context {
        self.default_image = image;
        self
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only loses backoff counts; keep going.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reconciles one ChatGateway; on failure it reports a Degraded condition and an Event.
#[tracing::instrument(name = "reconcile", skip_all, fields(gateway = %format!("{}/{}", cgw.namespace().unwrap_or_default(), cgw.name_any())))]
pub async fn reconcile(cgw: Arc<ChatGateway>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .metrics
        .duration
        .with_label_values(&[] as &[&str])
        .start_timer();
    let key = format!("{}/{}", cgw.namespace().unwrap_or_default(), cgw.name_any());
    let result = apply_all(&cgw, &ctx).await;
    timer.observe_duration();
    match &result {
        Ok(_) => {
            ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
            ctx.failures().remove(&key);
        }
        Err(e) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics.errors.with_label_values(&[e.reason()]).inc();
            tracing::warn!(gateway = %key, reason = e.reason(), error = %e, "reconcile failed");
            report_failure(&cgw, &ctx, e).await;
        }
    }
    result
}

/// Requeue delay after a failure: the error's base delay doubled per consecutive failure.
pub fn error_policy(cgw: Arc<ChatGateway>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", cgw.namespace().unwrap_or_default(), cgw.name_any());
    let mut failures = ctx.failures();
    let n = failures.entry(key).or_insert(0);
    let delay = error
        .retry_after()
        .saturating_mul(1 << (*n).min(10))
        .min(MAX_BACKOFF);
    *n = n.saturating_add(1);
    Action::requeue(delay)
}

/// An optional child's API in the version the cluster serves (`None`: it serves none).
fn versioned_api<K: Resource<DynamicType = ()>>(
    client: &Client,
    ns: &str,
    version: Option<&'static str>,
) -> Option<(Api<DynamicObject>, &'static str)> {
    let version = version?;
    let resource = served::api_resource::<K>(version);
    Some((Api::namespaced_with(client.clone(), ns, &resource), version))
}

async fn found<K>(api: &Api<K>, name: &str, uid: &str) -> Result<Found>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(children::classify(
        children::lookup(api, name).await?.as_ref(),
        uid,
    ))
}

async fn apply_all(cgw: &ChatGateway, ctx: &Context) -> Result<Action> {
    let ns = cgw
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = cgw
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let owner = Owner::of(cgw, &ns)?;
    let (fitted, mut seen_problems) = fit_to_cluster(cgw, ctx.served);
    let cgw = fitted.as_ref().unwrap_or(cgw);
    // A spec that cannot work touches nothing (API servers without CEL let it through):
    // building is pure, so build once before any call to find every spec error. The
    // config's ConfigMap is named by its content, which the inputs do not change.
    let config_name = builders::build(cgw, &owner, &Inputs::default())?
        .config_map
        .name_any();
    let client = &ctx.client;
    let secret_hash = crate::secrets::hash(client, &ns, &cgw.spec).await?;

    // Every child's name is looked up before anything is written: a foreign object there
    // stops the reconcile with nothing changed.
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let hpas = versioned_api::<HorizontalPodAutoscaler>(client, &ns, ctx.served.hpa);
    let pdbs = versioned_api::<PodDisruptionBudget>(client, &ns, ctx.served.pdb);
    let config_found = found(&config_maps, &config_name, &uid).await?;
    let collector_name = owner.collector_config_map_name();
    let collector_found = found(&config_maps, &collector_name, &uid).await?;
    let live = deployments.get_opt(&owner.name).await?;
    let deployment_found = children::classify(live.as_ref().map(|d| &d.metadata), &uid);
    let service_found = found(&services, &owner.name, &uid).await?;
    let hpa_found = match &hpas {
        Some((api, _)) => found(api, &owner.name, &uid).await?,
        None => Found::Absent,
    };
    let pdb_found = match &pdbs {
        Some((api, _)) => found(api, &owner.name, &uid).await?,
        None => Found::Absent,
    };
    // networking.k8s.io/v1 is served everywhere. Gateways without a networkPolicy or
    // gateway.api section cost no request (enabled: false removes the child).
    let policy = Optional::<NetworkPolicy>::lookup(
        Api::namespaced(client.clone(), &ns),
        owner.name.clone(),
        cgw.spec.network_policy.is_some(),
        &uid,
    )
    .await?;
    let api_service = Optional::<Service>::lookup(
        services.clone(),
        owner.api_service_name(),
        cgw.spec.gateway.as_ref().is_some_and(|g| g.api.is_some()),
        &uid,
    )
    .await?;
    let live = live.filter(|_| matches!(deployment_found, Found::Owned { .. }));

    let inputs = Inputs {
        live_replicas: live.as_ref().and_then(|d| d.spec.as_ref()?.replicas),
        secret_hash,
        default_image: ctx.default_image.clone(),
    };
    let children = builders::build(cgw, &owner, &inputs)?;
    let name = owner.name.as_str();
    children::writable(&config_found, "ConfigMap", &ns, &config_name)?;
    if children.collector_config_map.is_some() {
        children::writable(&collector_found, "ConfigMap", &ns, &collector_name)?;
    }
    children::writable(&deployment_found, "Deployment", &ns, name)?;
    children::writable(&service_found, "Service", &ns, name)?;
    if children.hpa.is_some() {
        children::writable(&hpa_found, "HorizontalPodAutoscaler", &ns, name)?;
    }
    if children.pdb.is_some() {
        children::writable(&pdb_found, "PodDisruptionBudget", &ns, name)?;
    }
    policy.writable(children.network_policy.as_ref(), &ns)?;
    api_service.writable(children.api_service.as_ref(), &ns)?;

    apply(&config_maps, &children.config_map).await?;
    // The collector's ConfigMap exists before the pods that mount it, and goes after the
    // Deployment stopped mounting it.
    if let Some(cm) = &children.collector_config_map {
        apply(&config_maps, cm).await?;
    }
    // Autoscaling turned off: the HPA goes first, so it cannot scale once the operator
    // owns the replica count again.
    if let (None, Some((api, version))) = (&children.hpa, &hpas) {
        if children::delete_owned(api, name, &hpa_found).await? {
            deleted(
                ctx,
                cgw,
                &format!("{version} HorizontalPodAutoscaler {name}"),
            )
            .await;
        }
    }
    let autoscaling = cgw.spec.autoscaling.as_ref().filter(|a| a.enabled);
    let min = autoscaling
        .and_then(|a| a.min_replicas)
        .unwrap_or(DEFAULT_MIN);
    let plan = handoff::plan(autoscaling.is_some(), min, live.as_ref());
    if let Plan::Before(n) = plan {
        handoff::take_over(&deployments, name, n).await?;
    }
    let deployment = apply(&deployments, &children.deployment).await?;
    if let Plan::After(n) = plan {
        handoff::take_over(&deployments, name, n).await?;
    }
    apply(&services, &children.service).await?;
    if let Some(what) = api_service.settle(children.api_service.as_ref()).await? {
        deleted(ctx, cgw, &what).await;
    }
    if children.collector_config_map.is_none()
        && children::delete_owned(&config_maps, &collector_name, &collector_found).await?
    {
        deleted(ctx, cgw, &format!("ConfigMap {collector_name}")).await;
    }

    if let Some(what) = policy.settle(children.network_policy.as_ref()).await? {
        deleted(ctx, cgw, &what).await;
    }

    let mut seen = Observed::from_deployment(&deployment);
    if seen.rolled_out() {
        old_configs::prune(&config_maps, &owner, &config_name, &uid).await?;
    }
    let mut kind_problems = Vec::new();
    match (&children.hpa, &hpas) {
        (Some(hpa), Some((api, version))) => {
            let applied = apply_versioned(api, hpa, version, &ctx.served).await?;
            seen.hpa_conditions(&ChildCondition::list(applied.data.get("status")));
        }
        (Some(_), None) => kind_problems.push(unserved::<HorizontalPodAutoscaler>(HPA_VERSIONS)),
        (None, _) => {}
    }
    match (&children.pdb, &pdbs) {
        (Some(pdb), Some((api, version))) => {
            apply_versioned(api, pdb, version, &ctx.served).await?;
        }
        (Some(_), None) => kind_problems.push(unserved::<PodDisruptionBudget>(PDB_VERSIONS)),
        (None, Some((api, version))) => {
            if children::delete_owned(api, name, &pdb_found).await? {
                deleted(ctx, cgw, &format!("{version} PodDisruptionBudget {name}")).await;
            }
        }
        (None, None) => {}
    }
    if !kind_problems.is_empty() {
        seen_problems.insert(0, ("KindNotServed".into(), kind_problems.join("; ")));
    }
    let children_problems = std::mem::take(&mut seen.problems);
    seen.problems = seen_problems.into_iter().chain(children_problems).collect();

    announce(ctx, cgw, live.as_ref(), &children.deployment).await;
    let new_status = status::desired(cgw, &seen, &owner.selector_string());
    patch_status(client, &ns, name, &new_status).await?;
    Ok(Action::requeue(RESYNC))
}

fn unserved<K: Resource<DynamicType = ()>>(versions: &[&str]) -> String {
    format!(
        "the cluster serves no {} version the operator writes ({}): not created",
        K::kind(&()),
        versions.join(", ")
    )
}

/// `cgw` as this cluster can run it: without native sidecars (before 1.29) the collector
/// and the user sidecars become plain containers (the API server would refuse the init
/// containers' restartPolicy), with a problem saying so. `None`: run as specified.
fn fit_to_cluster(
    cgw: &ChatGateway,
    served: ServedKinds,
) -> (Option<ChatGateway>, Vec<(String, String)>) {
    if served.native_sidecars {
        return (None, Vec::new());
    }
    let mut plain = cgw.clone();
    let mut fallen_back = Vec::new();
    if let Some(c) = collector::enabled(cgw).filter(|c| collector::native(c)) {
        let mut c = c.clone();
        c.native_sidecar = Some(false);
        if let Some(t) = plain.spec.telemetry.as_mut() {
            t.collector = Some(c);
            fallen_back.push("the collector");
        }
    }
    if !cgw.spec.sidecars.is_empty() && pod::native_sidecars(cgw) {
        plain.spec.native_sidecars = Some(false);
        fallen_back.push("spec.sidecars");
    }
    if fallen_back.is_empty() {
        return (None, Vec::new());
    }
    let message = format!(
        "the cluster does not run native sidecars (Kubernetes 1.29+): {} run as plain containers and may stop before the gateway finished draining (set telemetry.collector.nativeSidecar / nativeSidecars: false to say so)",
        fallen_back.join(" and ")
    );
    (
        Some(plain),
        vec![("NativeSidecarsNotSupported".into(), message)],
    )
}

/// Server-side apply of a child in the version the cluster serves, without the fields it
/// does not declare.
async fn apply_versioned<K>(
    api: &Api<DynamicObject>,
    obj: &K,
    version: &str,
    served: &ServedKinds,
) -> Result<DynamicObject>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let body = serde_json::to_value(served::versioned(obj, version, served)?)
        .map_err(|e| Error::Serialize(e.to_string()))?;
    children::apply_json(api, &name, body).await
}

async fn patch_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &ChatGatewayStatus,
) -> Result<()> {
    let api = Api::<ChatGateway>::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": ChatGateway::api_version(&()),
        "kind": ChatGateway::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// Publishes an Event on the ChatGateway; failures are only logged.
async fn publish(ctx: &Context, cgw: &ChatGateway, type_: EventType, reason: &str, note: String) {
    let Some(recorder) = &ctx.recorder else {
        return;
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &cgw.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}

async fn deleted(ctx: &Context, cgw: &ChatGateway, what: &str) {
    tracing::info!(%what, "deleted: turned off in the spec");
    publish(
        ctx,
        cgw,
        EventType::Normal,
        "Deleted",
        format!("deleted {what}: turned off in the spec"),
    )
    .await;
}

/// Normal Events for what the apply did to the pods: created, scaled, rolled.
async fn announce(
    ctx: &Context,
    cgw: &ChatGateway,
    live: Option<&Deployment>,
    applied: &Deployment,
) {
    let name = cgw.name_any();
    let Some(live) = live else {
        publish(
            ctx,
            cgw,
            EventType::Normal,
            "Created",
            format!("created Deployment {name} and its ConfigMap and Service"),
        )
        .await;
        return;
    };
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    if let (Some(from), Some(to)) = (replicas(live), replicas(applied)) {
        if from != to {
            publish(
                ctx,
                cgw,
                EventType::Normal,
                "Scaled",
                format!("scaled Deployment {name} from {from} to {to} pods"),
            )
            .await;
        }
    }
    let hash = |d: &Deployment| {
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION).cloned())
    };
    if hash(live) != hash(applied) {
        publish(ctx, cgw, EventType::Normal, "RollingUpdate", format!("the pod template of Deployment {name} changed (config, Secrets, image or pod settings): rolling the pods")).await;
    }
}

/// Degraded and not Reconciled, and a Warning Event; failures to report are only logged.
async fn report_failure(cgw: &ChatGateway, ctx: &Context, error: &Error) {
    let message = error.to_string();
    publish(
        ctx,
        cgw,
        EventType::Warning,
        error.reason(),
        message.clone(),
    )
    .await;
    let (Some(ns), Some(name)) = (cgw.namespace(), cgw.metadata.name.clone()) else {
        return;
    };
    let owner = Owner {
        name: name.clone(),
        namespace: ns.clone(),
        reference: None,
    };
    let failed = status::failed(cgw, error.reason(), &message, &owner.selector_string());
    if let Err(e) = patch_status(&ctx.client, &ns, &name, &failed).await {
        tracing::warn!(error = %e, "writing Degraded status failed");
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
pub(crate) mod tests;
