//! The chatgateway operator: the `ChatGateway` CRD, pure builders from a spec to the objects
//! it needs, and a kube-rs controller that applies them with server-side apply.

pub mod builders;
pub mod children;
pub mod controller;
pub mod crd;
pub mod custom_metrics;
pub mod deletion_cost;
pub mod error;
pub mod handoff;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod old_configs;
pub mod reconcile;
pub mod render;
pub mod secrets;
pub mod served;
pub mod status;
pub mod validate;
pub mod yaml;

/// The CRD as the YAML document checked in as `crds/chatgateway.yaml`.
pub fn crd_yaml() -> Result<String, error::Error> {
    yaml::to_string(&crd::crd()).map_err(error::Error::Serialize)
}
