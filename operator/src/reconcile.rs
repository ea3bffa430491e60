//! The reconcile loop: build the children, apply them with server-side apply, write status.

use crate::builders::{self, collector, deployment, with_type_meta, Owner, FIELD_MANAGER};
use crate::crd::{ChatGateway, ChatGatewaySpec, ChatGatewayStatus};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::served::{self, HPA_VERSIONS, PDB_VERSIONS};
use crate::status::{self, Observed};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Re-check a healthy gateway this often even without events (drift repair).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Longest wait between retries of a failing gateway.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

pub use crate::served::ServedKinds;

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
            failures: Mutex::default(),
        }
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

async fn apply_all(cgw: &ChatGateway, ctx: &Context) -> Result<Action> {
    let ns = cgw
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let owner = Owner::of(cgw, &ns)?;
    // On a cluster without native sidecars the collector runs as a plain container (the
    // API server would refuse the init container's restartPolicy); reported in status.
    let plain = (!ctx.served.native_sidecars)
        .then(|| without_native_sidecars(cgw))
        .flatten();
    let sidecar_fallback = plain.is_some().then(|| {
        "the cluster does not run native sidecars (Kubernetes 1.29+): the collector runs as \
         a plain container (set telemetry.collector.nativeSidecar: false to say so)"
            .to_string()
    });
    let cgw = plain.as_ref().unwrap_or(cgw);
    let mut children = builders::build(cgw, &owner)?;
    let client = &ctx.client;
    check_secrets(client, &ns, &cgw.spec).await?;

    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    apply(&config_maps, &children.config_map).await?;
    // The collector's ConfigMap exists before the pods that mount it, and goes after the
    // Deployment stopped mounting it.
    if let Some(cm) = &children.collector_config_map {
        apply(&config_maps, cm).await?;
    }
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    if cgw.spec.autoscaling.as_ref().is_some_and(|a| a.enabled) {
        let live = deployments
            .get_opt(&owner.name)
            .await?
            .and_then(|d| d.spec?.replicas);
        if let Some(spec) = children.deployment.spec.as_mut() {
            spec.replicas = Some(deployment::hpa_replicas(cgw, live));
        }
    }
    let deployment = apply(&deployments, &children.deployment).await?;
    apply(
        &Api::<Service>::namespaced(client.clone(), &ns),
        &children.service,
    )
    .await?;

    if children.collector_config_map.is_none() {
        sync_optional(&config_maps, &owner.collector_config_map_name(), None).await?;
    }

    let mut problems = Vec::new();
    sync_versioned(
        client,
        &ns,
        &owner.name,
        children.hpa.as_ref(),
        ctx.served.hpa,
        HPA_VERSIONS,
        &mut problems,
    )
    .await?;
    sync_versioned(
        client,
        &ns,
        &owner.name,
        children.pdb.as_ref(),
        ctx.served.pdb,
        PDB_VERSIONS,
        &mut problems,
    )
    .await?;

    let mut seen = Observed::from_deployment(&deployment);
    if !problems.is_empty() {
        problems.extend(sidecar_fallback);
        seen.problem = Some(("KindNotServed".into(), problems.join("; ")));
    } else if let Some(message) = sidecar_fallback {
        seen.problem = Some(("NativeSidecarsNotSupported".into(), message));
    }
    let new_status = status::desired(cgw, &seen, &owner.selector_string());
    patch_status(client, &ns, &owner.name, &new_status).await?;
    Ok(Action::requeue(RESYNC))
}

/// `cgw` with its native-sidecar collector turned into a plain container; `None` when it
/// has no native-sidecar collector.
fn without_native_sidecars(cgw: &ChatGateway) -> Option<ChatGateway> {
    let mut c = collector::enabled(cgw)
        .filter(|c| collector::native(c))?
        .clone();
    c.native_sidecar = Some(false);
    let mut plain = cgw.clone();
    plain.spec.telemetry.as_mut()?.collector = Some(c);
    Some(plain)
}

/// Fails with [`Error::SecretRef`] unless every referenced Secret key exists.
async fn check_secrets(client: &Client, ns: &str, spec: &ChatGatewaySpec) -> Result<()> {
    let g = spec.gateway.as_ref();
    let jwt = g.and_then(|g| g.auth.as_ref()).and_then(|a| a.jwt.as_ref());
    let refs = [
        g.and_then(|g| g.redis.as_ref()).map(|r| &r.url_secret_ref),
        jwt.and_then(|j| j.secret_ref.as_ref()),
        jwt.and_then(|j| j.public_key_secret_ref.as_ref()),
    ];
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for r in refs.into_iter().flatten() {
        let secret = secrets.get_opt(&r.name).await?;
        let has_key = secret.is_some_and(|s| s.data.is_some_and(|d| d.contains_key(&r.key)));
        if !has_key {
            return Err(Error::SecretRef {
                namespace: ns.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            });
        }
    }
    Ok(())
}

/// Server-side apply of `obj` under the operator's field manager, taking over conflicts.
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    apply_json(api, obj.meta().name.as_deref(), with_type_meta(obj)?).await
}

/// Server-side apply of a JSON body (with apiVersion and kind) named `name`.
async fn apply_json<K>(api: &Api<K>, name: Option<&str>, body: serde_json::Value) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let name = name.ok_or(Error::MissingObjectKey("metadata.name"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(name, &params, &Patch::Apply(body)).await?)
}

/// Applies or deletes an optional child that is not a versioned kind (the collector
/// ConfigMap); `desired: None` deletes it if it exists.
async fn sync_optional<K>(api: &Api<K>, name: &str, desired: Option<&K>) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    match desired {
        Some(obj) => {
            apply(api, obj).await?;
        }
        None => delete_if_present(api, name, &K::kind(&())).await?,
    }
    Ok(())
}

/// Applies or deletes an optional child (HPA, PDB) in the version the cluster serves
/// (`served`, one of `versions`); records a problem when it serves none of them.
async fn sync_versioned<K>(
    client: &Client,
    ns: &str,
    name: &str,
    desired: Option<&K>,
    served: Option<&'static str>,
    versions: &[&str],
    problems: &mut Vec<String>,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let kind = K::kind(&());
    let Some(version) = served else {
        if desired.is_some() {
            problems.push(format!(
                "the cluster serves no {kind} version the operator writes ({}): not created",
                versions.join(", ")
            ));
        }
        return Ok(());
    };
    let resource = served::api_resource::<K>(version);
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource);
    match desired {
        Some(obj) => {
            let body = serde_json::to_value(served::versioned(obj, version)?)
                .map_err(|e| Error::Serialize(e.to_string()))?;
            apply_json(&api, Some(name), body).await?;
        }
        None => delete_if_present(&api, name, &format!("{version} {kind}")).await?,
    }
    Ok(())
}

/// Deletes `name` when it exists (the spec turned the child off).
async fn delete_if_present<K>(api: &Api<K>, name: &str, what: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::info!(%what, name, "deleted: turned off in the spec"),
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
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

/// Degraded condition and a Warning Event; failures to report are only logged.
async fn report_failure(cgw: &ChatGateway, ctx: &Context, error: &Error) {
    let message = error.to_string();
    if let Some(recorder) = &ctx.recorder {
        let event = Event {
            type_: EventType::Warning,
            reason: error.reason().into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &cgw.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing event failed");
        }
    }
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

/// Runs the controller until `shutdown` resolves; children are watched by their label.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let mut controller = Controller::new(
        Api::<ChatGateway>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
    .owns(Api::<Deployment>::all(client.clone()), children.clone())
    .owns(Api::<Service>::all(client.clone()), children.clone());
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

#[cfg(test)]
#[path = "reconcile_tests.rs"]
pub(crate) mod tests;
