//! Services in front of the gateway pods: the public one, and the server API's own.

use super::{backend, Owner};
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
            external_traffic_policy: s.external_traffic_policy.map(|p| p.as_str().to_string()),
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

/// The server API's Service `<name>-api` when the API is on: ClusterIP always (the API is
/// for the backend inside the cluster, never behind the public Service or a load balancer),
/// one `api` port to the pods' `api` port.
pub fn build_api(cgw: &ChatGateway, owner: &Owner) -> Option<Service> {
    let port = backend::api_port(&cgw.spec)?;
    Some(Service {
        metadata: owner.meta(&owner.api_service_name()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(owner.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some(backend::PORT_NAME.into()),
                port,
                target_port: Some(IntOrString::String(backend::PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
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
        assert_eq!(spec.external_traffic_policy, None, "Kubernetes' default");
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.port, 443);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
    }

    #[test]
    fn a_load_balancer_may_keep_client_addresses() {
        let c = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}\nservice: {type: LoadBalancer, externalTrafficPolicy: Local}");
        let svc = build(&c, &Owner::of(&c, "d").expect("owner"));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    }

    #[test]
    fn the_api_gets_a_cluster_ip_service_of_its_own() {
        assert!(build_api(
            &cgw(MINIMAL),
            &Owner::of(&cgw(MINIMAL), "d").expect("owner")
        )
        .is_none());
        let off = cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {enabled: false, keysSecretRef: {name: k, key: keys}}}");
        assert!(build_api(&off, &Owner::of(&off, "d").expect("owner")).is_none());
        // Even when the public Service is a load balancer.
        let c = cgw(
            "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {port: 9443, keysSecretRef: {name: k, key: keys}}}\nservice: {type: LoadBalancer, port: 443}",
        );
        let owner = Owner::of(&c, "d").expect("owner");
        let svc = build_api(&c, &owner).expect("api service");
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-api"));
        assert_eq!(
            svc.metadata.owner_references,
            owner.meta("x").owner_references
        );
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector, Some(owner.selector_labels()));
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("api"), 9443)
        );
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("api".into()))
        );
        // The public Service never carries the API.
        let public = build(&c, &owner).spec.expect("spec").ports.expect("ports");
        assert!(
            public.iter().all(|p| p.name.as_deref() == Some("http")),
            "{public:?}"
        );
    }
}
