//! Deployment of the gateway pods: replicas, rollout strategy and the pod template.

use super::{collector, pod, rollout, Inputs, Owner};
use super::{CONFIG_HASH_ANNOTATION, HTTP_PORT, SECRET_HASH_ANNOTATION, TEMPLATE_HASH_ANNOTATION};
use crate::crd::ChatGateway;
use crate::error::{Error, Result};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use sha2::{Digest, Sha256};

pub use super::pod::{
    check_sidecars, default_drain_timeout, CONTAINER, DEFAULT_IMAGE, DRAIN_MARGIN_SECONDS,
};

/// Content hashes put on the pod template, so a change to any of them rolls the pods.
#[derive(Clone, Copy, Debug)]
pub struct Hashes<'a> {
    /// The gateway's config file.
    pub config: &'a str,
    /// The collector's config file, when the collector runs.
    pub collector: Option<&'a str>,
    /// The referenced Secret keys, when the reconciler read them.
    pub secrets: Option<&'a str>,
}

/// The Deployment.
pub fn build(
    cgw: &ChatGateway,
    owner: &Owner,
    hashes: &Hashes<'_>,
    inputs: &Inputs,
) -> Result<Deployment> {
    let spec = &cgw.spec;
    let image = spec
        .image
        .clone()
        .or_else(|| inputs.default_image.clone())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());

    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(owner.selector_labels());
    let mut pod_annotations = spec.pod_annotations.clone();
    pod_annotations.insert(CONFIG_HASH_ANNOTATION.into(), hashes.config.into());
    if let Some(hash) = hashes.collector {
        pod_annotations.insert(collector::HASH_ANNOTATION.into(), hash.into());
    }
    if let Some(hash) = hashes.secrets {
        pod_annotations.insert(SECRET_HASH_ANNOTATION.into(), hash.into());
    }
    pod_annotations.insert("prometheus.io/scrape".into(), "true".into());
    pod_annotations.insert("prometheus.io/port".into(), HTTP_PORT.to_string());
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod::spec(cgw, owner, &image, hashes.config)?),
    };

    let replicas = replicas(cgw, inputs.live_replicas);
    let now = inputs
        .live_replicas
        .or(replicas)
        .unwrap_or_else(|| crate::validate::default_replicas(spec));
    let (rolling_update, min_ready_seconds) = rollout::strategy(cgw, now);
    let mut metadata = owner.meta(&owner.name);
    metadata.annotations = Some(
        [(
            TEMPLATE_HASH_ANNOTATION.to_string(),
            template_hash(&template)?,
        )]
        .into(),
    );
    Ok(Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas,
            min_ready_seconds: Some(min_ready_seconds),
            selector: LabelSelector {
                match_labels: Some(owner.selector_labels()),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(rolling_update),
            }),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// `spec.replicas` of the apply, `None` to leave the field to its other owners.
///
/// Autoscaling off: the spec's count, else the live one (turning autoscaling off keeps the
/// pods the HPA had instead of dropping to a default), else the default for the engine.
/// Autoscaling on: `minReplicas` when the Deployment is new; afterwards the field belongs
/// to the HPA, and the reconciler hands it over the server-side-apply way (see
/// `reconcile::replicas`), so the operator's apply never mentions it again.
pub fn replicas(cgw: &ChatGateway, live: Option<i32>) -> Option<i32> {
    match cgw.spec.autoscaling.as_ref().filter(|a| a.enabled) {
        Some(a) => live
            .is_none()
            .then(|| a.min_replicas.unwrap_or(super::hpa::DEFAULT_MIN)),
        None => Some(
            cgw.spec
                .replicas
                .or(live)
                .unwrap_or_else(|| crate::validate::default_replicas(&cgw.spec)),
        ),
    }
}

/// Hash of the pod template as applied: a change means the apply starts a rollout.
fn template_hash(template: &PodTemplateSpec) -> Result<String> {
    let json = serde_json::to_vec(template).map_err(|e| Error::Serialize(e.to_string()))?;
    Ok(format!("{:x}", Sha256::digest(&json))[..16].to_string())
}

#[cfg(test)]
#[path = "deployment_tests.rs"]
mod tests;
