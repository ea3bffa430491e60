//! The chatgateway operator: the `ChatGateway` CRD, pure builders from a spec to the objects
//! it needs, and a kube-rs controller that applies them with server-side apply.

pub mod builders;
pub mod crd;
pub mod custom_metrics;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod status;

use kube::CustomResourceExt;

/// The CRD as the YAML document checked in as `crds/chatgateway.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd::ChatGateway::crd())
}
