//! Pure builders: a `ChatGateway` in, the exact child objects the operator applies out.
//!
//! Nothing here talks to the API server, so `render` and the tests see exactly what the
//! reconciler applies.

pub mod auth;
pub mod backend;
pub mod collector;
pub mod configmap;
pub mod deployment;
pub mod hpa;
pub mod namespaces;
pub mod networkpolicy;
pub mod pdb;
pub mod pod;
pub mod redis;
pub mod rollout;
pub mod service;

pub use redis::{redis_env, REDIS_URL_ENV};

use crate::crd::ChatGateway;
use crate::error::{Error, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::time::Duration;

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "chatgateway-operator";
/// Label key naming the application.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Label key naming the ChatGateway a child belongs to.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// Annotation on the pod template carrying the config hash, so config changes roll pods.
pub const CONFIG_HASH_ANNOTATION: &str = "chatgateway.io/config-hash";
/// Annotation on the pod template carrying a hash of the referenced Secret keys, so a
/// rotated key rolls the pods (the gateway reads keys once, at start).
pub const SECRET_HASH_ANNOTATION: &str = "chatgateway.io/secret-hash";
/// Annotation on the Deployment carrying a hash of its pod template: when it changes, the
/// apply starts a rollout (an Event says so).
pub const TEMPLATE_HASH_ANNOTATION: &str = "chatgateway.io/template-hash";
/// Container port of the gateway (WebSocket, health and metrics).
pub const HTTP_PORT: i32 = 8080;
/// Suffix of the server API's Service name: the longest suffix of a child whose name must
/// be a DNS-1035 label, so it sets the longest name of a ChatGateway with the API on
/// (`validate::MAX_NAME_LEN_WITH_API`).
pub const API_SERVICE_SUFFIX: &str = "-api";

/// What every builder needs to know about the owning resource.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Name of the ChatGateway (and of most children).
    pub name: String,
    /// Namespace of the ChatGateway and its children.
    pub namespace: String,
    /// Controller reference; absent when rendering a resource that was never stored.
    pub reference: Option<OwnerReference>,
}

impl Owner {
    /// Owner of the children of `cgw`; `default_namespace` is used when it has none.
    pub fn of(cgw: &ChatGateway, default_namespace: &str) -> Result<Owner> {
        let name = cgw
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingObjectKey("metadata.name"))?;
        Ok(Owner {
            name,
            namespace: cgw
                .namespace()
                .unwrap_or_else(|| default_namespace.to_string()),
            reference: cgw.controller_owner_ref(&()),
        })
    }

    /// Labels that select this gateway's pods (identical in Deployment, Service, HPA, PDB).
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_NAME.to_string(), "chat-gateway".to_string()),
            (LABEL_INSTANCE.to_string(), self.name.clone()),
        ])
    }

    /// The selector as the string the scale subresource reports.
    pub fn selector_string(&self) -> String {
        self.selector_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Metadata of a child object: name, namespace, labels and owner reference.
    pub fn meta(&self, name: &str) -> ObjectMeta {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_string(),
            FIELD_MANAGER.to_string(),
        );
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: self.reference.clone().map(|r| vec![r]),
            ..ObjectMeta::default()
        }
    }

    /// Name of the ConfigMap holding `config.yaml` whose content hash is `hash`: one
    /// ConfigMap per config, never changed in place (see `configmap::build`).
    pub fn config_map_name(&self, hash: &str) -> String {
        format!("{}-{hash}", self.config_map_prefix())
    }

    /// What every name of this gateway's config ConfigMaps starts with, and the whole
    /// name of the one ConfigMap that releases before content-named ones wrote.
    pub fn config_map_prefix(&self) -> String {
        format!("{}-config", self.name)
    }

    /// Name of the server API's Service.
    pub fn api_service_name(&self) -> String {
        format!("{}{API_SERVICE_SUFFIX}", self.name)
    }

    /// Name of the ConfigMap holding the OpenTelemetry Collector's config.
    pub fn collector_config_map_name(&self) -> String {
        format!("{}-otel-collector", self.name)
    }
}

/// All children of one ChatGateway; HPA and PDB are `None` when the spec turns them off.
#[derive(Clone, Debug)]
pub struct Children {
    /// Gateway config file.
    pub config_map: ConfigMap,
    /// OpenTelemetry Collector config, when `telemetry.collector.enabled`.
    pub collector_config_map: Option<ConfigMap>,
    /// The gateway pods.
    pub deployment: Deployment,
    /// Stable address of the pods.
    pub service: Service,
    /// The server API's own Service, when `gateway.api` is on.
    pub api_service: Option<Service>,
    /// Autoscaler, when `autoscaling.enabled`.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Disruption budget, unless `disruptionBudget.enabled` is false.
    pub pdb: Option<PodDisruptionBudget>,
    /// NetworkPolicy of the pods, when `networkPolicy` is set and enabled.
    pub network_policy: Option<NetworkPolicy>,
}

/// What the reconciler learned from the cluster that shapes the children. `render` has no
/// cluster and uses the default: a new gateway, no Secret hash, the built-in image.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Replicas of the live Deployment, when it exists.
    pub live_replicas: Option<i32>,
    /// Hash of the referenced Secret keys (see [`SECRET_HASH_ANNOTATION`]).
    pub secret_hash: Option<String>,
    /// Gateway image when the spec names none (the operator's `--gateway-image`).
    pub default_image: Option<String>,
}

/// Builds every child of `cgw`, after refusing a name or spec that cannot work.
pub fn build(cgw: &ChatGateway, owner: &Owner, inputs: &Inputs) -> Result<Children> {
    crate::validate::check_name(&owner.name, backend::api_port(&cgw.spec).is_some())?;
    crate::validate::check(&cgw.spec)?;
    let (config_map, hash) = configmap::build(cgw, owner)?;
    let (collector_config_map, collector_hash) = match collector::build_config_map(cgw, owner)? {
        Some((cm, hash)) => (Some(cm), Some(hash)),
        None => (None, None),
    };
    let hashes = deployment::Hashes {
        config: &hash,
        collector: collector_hash.as_deref(),
        secrets: inputs.secret_hash.as_deref(),
    };
    Ok(Children {
        deployment: deployment::build(cgw, owner, &hashes, inputs)?,
        collector_config_map,
        service: service::build(cgw, owner),
        api_service: service::build_api(cgw, owner),
        hpa: hpa::build(cgw, owner)?,
        pdb: pdb::build(cgw, owner),
        network_policy: networkpolicy::build(cgw, owner),
        config_map,
    })
}

impl Children {
    /// The children as one multi-document YAML stream, in apply order.
    pub fn to_yaml(&self) -> Result<String> {
        let mut docs = vec![to_yaml_doc(&self.config_map)?];
        if let Some(cm) = &self.collector_config_map {
            docs.push(to_yaml_doc(cm)?);
        }
        docs.push(to_yaml_doc(&self.deployment)?);
        docs.push(to_yaml_doc(&self.service)?);
        if let Some(svc) = &self.api_service {
            docs.push(to_yaml_doc(svc)?);
        }
        if let Some(hpa) = &self.hpa {
            docs.push(to_yaml_doc(hpa)?);
        }
        if let Some(pdb) = &self.pdb {
            docs.push(to_yaml_doc(pdb)?);
        }
        if let Some(np) = &self.network_policy {
            docs.push(to_yaml_doc(np)?);
        }
        Ok(docs.join("---\n"))
    }
}

/// One object with its apiVersion and kind, as YAML (those two first, for human readers).
fn to_yaml_doc<K>(obj: &K) -> Result<String>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        api_version: serde_json::Value,
        kind: serde_json::Value,
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
    }
    let mut rest = match with_type_meta(obj)? {
        serde_json::Value::Object(map) => map,
        other => return Err(Error::Serialize(format!("not an object: {other}"))),
    };
    let doc = Doc {
        api_version: rest.remove("apiVersion").unwrap_or_default(),
        kind: rest.remove("kind").unwrap_or_default(),
        rest,
    };
    crate::yaml::to_string(&doc).map_err(Error::Serialize)
}

/// `obj` as JSON with `apiVersion` and `kind` set (k8s-openapi leaves them to the caller;
/// server-side apply needs them).
pub fn with_type_meta<K>(obj: &K) -> Result<serde_json::Value>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(obj).map_err(|e| Error::Serialize(e.to_string()))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    Ok(value)
}

/// Parses a humantime duration from the spec, naming the field in the error.
pub fn parse_duration(field: &str, value: Option<&str>, default: Duration) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| Error::InvalidSpec(format!("{field}: {text:?}: {e}"))),
    }
}

/// Sets `target` from a spec integer, if given (the schema bounds every value; a value
/// the target type cannot hold is an invalid spec, never a truncation).
pub(crate) fn set<T: TryFrom<i64>>(target: &mut T, value: Option<i64>) -> Result<()> {
    if let Some(v) = value {
        *target =
            T::try_from(v).map_err(|_| Error::InvalidSpec(format!("limit {v} out of range")))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn selector_labels_are_consistent_across_children() {
        let cgw = cgw(FULL);
        let owner = Owner::of(&cgw, "default").expect("owner");
        let c = build(&cgw, &owner, &Inputs::default()).expect("build");
        let want = Some(owner.selector_labels());
        let dep = c.deployment.spec.as_ref().expect("deployment spec");
        assert_eq!(dep.selector.match_labels, want);
        let pod_labels = dep
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone());
        for (k, v) in owner.selector_labels() {
            assert_eq!(pod_labels.as_ref().and_then(|l| l.get(&k)), Some(&v));
        }
        assert_eq!(
            c.service.spec.as_ref().and_then(|s| s.selector.clone()),
            want
        );
        let pdb = c.pdb.expect("pdb");
        assert_eq!(
            pdb.spec
                .and_then(|s| s.selector)
                .and_then(|s| s.match_labels),
            want
        );
        let hpa = c.hpa.expect("hpa");
        assert_eq!(hpa.spec.expect("hpa spec").scale_target_ref.name, "chat");
        assert_eq!(
            owner.selector_string(),
            "app.kubernetes.io/instance=chat,app.kubernetes.io/name=chat-gateway"
        );
    }

    #[test]
    fn children_carry_the_controller_owner_reference() {
        let cgw = cgw(MINIMAL);
        let owner = Owner::of(&cgw, "default").expect("owner");
        let c = build(&cgw, &owner, &Inputs::default()).expect("build");
        let refs = c.deployment.metadata.owner_references.expect("owner refs");
        assert_eq!(refs[0].kind, "ChatGateway");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(c.config_map.metadata.namespace.as_deref(), Some("apps"));
    }

    #[test]
    fn render_yaml_has_type_meta_and_documents_in_order() {
        let cgw = cgw(FULL);
        let owner = Owner::of(&cgw, "default").expect("owner");
        let yaml = build(&cgw, &owner, &Inputs::default())
            .expect("build")
            .to_yaml()
            .expect("yaml");
        let kinds: Vec<String> = yaml
            .split("---\n")
            .map(|d| {
                let v: serde_json::Value = crate::yaml::from_str(d).expect("doc");
                format!(
                    "{}/{}",
                    v["apiVersion"].as_str().unwrap_or(""),
                    v["kind"].as_str().unwrap_or("")
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "v1/ConfigMap",
                "apps/v1/Deployment",
                "v1/Service",
                "autoscaling/v2/HorizontalPodAutoscaler",
                "policy/v1/PodDisruptionBudget"
            ]
        );
    }

    #[test]
    fn the_longest_name_fits_every_child_and_a_longer_one_builds_nothing() {
        for spec in [MINIMAL, FULL, SIDECARS, BACKEND] {
            let mut c = cgw(spec);
            let longest = match backend::api_port(&c.spec) {
                Some(_) => "a".repeat(crate::validate::MAX_NAME_LEN_WITH_API),
                None => "a".repeat(crate::validate::MAX_NAME_LEN),
            };
            c.metadata.name = Some(longest.clone());
            let owner = Owner::of(&c, "d").expect("owner");
            let yaml = build(&c, &owner, &Inputs::default())
                .expect("build")
                .to_yaml()
                .expect("yaml");
            for doc in yaml.split("---\n") {
                let v: serde_json::Value = crate::yaml::from_str(doc).expect("doc");
                let name = v["metadata"]["name"].as_str().expect("name");
                // Services: DNS-1035 labels; the other kinds: DNS-1123 subdomains.
                let max = if v["kind"] == "Service" { 63 } else { 253 };
                assert!(name.len() <= max, "{} {name}", v["kind"]);
                let labels = v["metadata"]["labels"].as_object().expect("labels");
                assert!(labels
                    .values()
                    .all(|l| l.as_str().is_some_and(|l| l.len() <= 63)));
            }
            c.metadata.name = Some(format!("{longest}a"));
            let owner = Owner::of(&c, "d").expect("owner");
            let err = build(&c, &owner, &Inputs::default()).expect_err("too long");
            assert_eq!(err.reason(), "InvalidSpec", "{err}");
        }
    }

    #[test]
    fn bad_duration_is_an_invalid_spec() {
        let err = parse_duration("drain.timeout", Some("soon"), Duration::ZERO).unwrap_err();
        assert!(
            matches!(err, Error::InvalidSpec(ref m) if m.contains("drain.timeout")),
            "{err}"
        );
    }
}
