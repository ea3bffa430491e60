//! The CRD's versions: v1beta1 (stored) and v1alpha1 (served, deprecated) share one
//! schema, generated from the Rust types, apart from the rules only v1beta1 enforces.

use super::{ChatGateway, OLD_VERSION, VERSION};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool, ValidationRule,
};
use kube::CustomResourceExt;

/// Rules only the newest version enforces: `(path of the object under spec, rule, message)`.
/// Old spellings stay valid in v1alpha1 (the stored objects keep working) and are refused
/// in v1beta1, where the aligned names replace them.
pub(super) const NEWEST_ONLY_RULES: &[(&[&str], &str, &str)] = &[(
    &["gateway"],
    "!has(self.heartbeatInterval)",
    "gateway.heartbeatInterval is the v1alpha1 spelling: use gateway.heartbeat.interval",
)];

/// The CRD: v1beta1 (stored) and v1alpha1 (served, deprecated) with one schema, so stored
/// objects read the same in both and no conversion webhook is needed.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = ChatGateway::crd();
    let mut versions = std::mem::take(&mut crd.spec.versions);
    let Some(mut newest) = versions.pop() else {
        return crd;
    };
    let mut old = newest.clone();
    old.name = OLD_VERSION.into();
    old.storage = false;
    old.deprecated = Some(true);
    old.deprecation_warning = Some(format!(
        "chatgateway.io/{OLD_VERSION} ChatGateway is deprecated; use chatgateway.io/{VERSION} (the same fields)"
    ));
    for (path, rule, message) in NEWEST_ONLY_RULES {
        add_rule(&mut newest, path, rule, message);
    }
    let mut versions = vec![newest, old];
    for version in &mut versions {
        for path in EMBEDDED_KUBERNETES_TYPES {
            if let Some(node) = spec_node(version, path) {
                strip_descriptions_below(node);
            }
        }
    }
    crd.spec.versions = versions;
    crd
}

/// Fields holding standard Kubernetes types (documented by `kubectl explain pod.spec...`).
/// Their nested descriptions are dropped: with them, the two versions' schemas exceed the
/// 256 KiB that `kubectl apply` can record in its last-applied annotation.
const EMBEDDED_KUBERNETES_TYPES: &[&[&str]] = &[
    &["resources"],
    &["env"],
    &["envFrom"],
    &["sidecars"],
    &["placement", "affinity"],
    &["placement", "tolerations"],
    &["placement", "topologySpreadConstraints"],
    &["telemetry", "collector", "resources"],
    &["gateway", "api", "allowFrom"],
];

/// The schema of `spec.<path>` in `version`.
fn spec_node<'a>(
    version: &'a mut CustomResourceDefinitionVersion,
    path: &[&str],
) -> Option<&'a mut JSONSchemaProps> {
    let mut node = version
        .schema
        .as_mut()?
        .open_api_v3_schema
        .as_mut()?
        .properties
        .as_mut()?
        .get_mut("spec")?;
    for key in path {
        node = node.properties.as_mut()?.get_mut(*key)?;
    }
    Some(node)
}

/// Removes the descriptions of everything under `node` (not its own).
fn strip_descriptions_below(node: &mut JSONSchemaProps) {
    let mut children: Vec<&mut JSONSchemaProps> = Vec::new();
    if let Some(props) = node.properties.as_mut() {
        children.extend(props.values_mut());
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = node.items.as_mut() {
        children.push(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = node.additional_properties.as_mut() {
        children.push(extra);
    }
    for child in children {
        child.description = None;
        strip_descriptions_below(child);
    }
}

/// Adds a CEL rule to the object at `spec.<path>` of `version`'s schema.
fn add_rule(
    version: &mut CustomResourceDefinitionVersion,
    path: &[&str],
    rule: &str,
    message: &str,
) {
    if let Some(node) = spec_node(version, path) {
        node.x_kubernetes_validations
            .get_or_insert_with(Vec::new)
            .push(ValidationRule {
                rule: rule.into(),
                message: Some(message.into()),
                ..ValidationRule::default()
            });
    }
}
