//! Service in front of the gateway pods.

use super::Owner;
use crate::crd::ChatGateway;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Service port when the spec names none.
pub const DEFAULT_PORT: i32 = 80;

/// The Service: one `http` port to the pods' `http` port.
pub fn build(cgw: &ChatGateway, owner: &Owner) -> Service {
    let s = cgw.spec.service.clone().unwrap_or_default();
    let mut metadata = owner.meta(&owner.name);
    if !s.annotations.is_empty() {
        metadata.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(
                s.type_
                    .map(|t| t.as_str())
                    .unwrap_or("ClusterIP")
                    .to_string(),
            ),
            selector: Some(owner.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: s.port.unwrap_or(DEFAULT_PORT),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::*;

    #[test]
    fn defaults_and_overrides() {
        let c = cgw(MINIMAL);
        let svc = build(&c, &Owner::of(&c, "d").expect("owner"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.as_ref().expect("ports")[0].port, DEFAULT_PORT);
        let c = cgw(FULL);
        let svc = build(&c, &Owner::of(&c, "d").expect("owner"));
        assert_eq!(
            svc.metadata.annotations.expect("annotations")["example.com/lb"],
            "internal"
        );
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 443);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
    }
}
