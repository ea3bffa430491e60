//! NetworkPolicy of the gateway pods (networking.k8s.io/v1), from `spec.networkPolicy`.
//!
//! In: the gateway's `http` port (WebSocket, health probes, metrics), from `ingressFrom` or
//! from anywhere; and, with the server API on, its `api` port from `gateway.api.allowFrom`
//! or the pods of the gateway's own namespace, never from anywhere (the API publishes and
//! disconnects on anyone's behalf). Out: unrestricted unless `egress` lists rules; then DNS
//! plus those rules, because a gateway that cannot resolve Redis or its OTLP endpoint fails
//! in ways that look like Redis or tracing outages.

use super::{backend, Owner};
use crate::crd::ChatGateway;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The NetworkPolicy, or `None` when the spec has no `networkPolicy` or turns it off.
pub fn build(cgw: &ChatGateway, owner: &Owner) -> Option<NetworkPolicy> {
    let spec = cgw.spec.network_policy.as_ref().filter(|n| n.enabled)?;
    let port = |port: IntOrString, protocol: &str| NetworkPolicyPort {
        port: Some(port),
        protocol: Some(protocol.to_string()),
        end_port: None,
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        ports: Some(vec![port(IntOrString::String("http".into()), "TCP")]),
        from: (!spec.ingress_from.is_empty()).then(|| spec.ingress_from.clone()),
    }];
    if let Some(api) = backend::api(&cgw.spec) {
        let from = if api.allow_from.is_empty() {
            // An empty pod selector without a namespace selector: this namespace's pods.
            vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                ..NetworkPolicyPeer::default()
            }]
        } else {
            api.allow_from.clone()
        };
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(vec![port(
                IntOrString::String(backend::PORT_NAME.into()),
                "TCP",
            )]),
            from: Some(from),
        });
    }
    let mut policy_types = vec!["Ingress".to_string()];
    let egress = spec.egress.as_ref().map(|rules| {
        policy_types.push("Egress".to_string());
        let dns = NetworkPolicyEgressRule {
            ports: Some(vec![
                port(IntOrString::Int(53), "UDP"),
                port(IntOrString::Int(53), "TCP"),
            ]),
            to: None,
        };
        std::iter::once(dns).chain(rules.iter().cloned()).collect()
    });
    Some(NetworkPolicy {
        metadata: owner.meta(&owner.name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels()),
                match_expressions: None,
            }),
            policy_types: Some(policy_types),
            ingress: Some(ingress),
            egress,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::*;

    fn policy(spec: &str) -> Option<NetworkPolicySpec> {
        let c = cgw(spec);
        build(&c, &Owner::of(&c, "d").expect("owner")).map(|p| p.spec.expect("spec"))
    }

    #[test]
    fn absent_or_disabled_means_none() {
        assert!(policy(MINIMAL).is_none());
        assert!(policy("networkPolicy: {enabled: false}").is_none());
    }

    #[test]
    fn ingress_only_to_the_gateway_port() {
        let p = policy("networkPolicy: {}").expect("on when present");
        let c = cgw(MINIMAL);
        let owner = Owner::of(&c, "d").expect("owner");
        assert_eq!(
            p.pod_selector.and_then(|s| s.match_labels),
            Some(owner.selector_labels())
        );
        assert_eq!(p.policy_types, Some(vec!["Ingress".to_string()]));
        let ingress = p.ingress.expect("ingress");
        assert_eq!(ingress.len(), 1);
        let ports = ingress[0].ports.clone().expect("ports");
        assert_eq!(ports[0].port, Some(IntOrString::String("http".into())));
        assert_eq!(ingress[0].from, None, "any source");
        assert_eq!(p.egress, None, "egress not restricted");
    }

    #[test]
    fn sources_and_egress_rules_from_the_spec() {
        let p = policy(
            r#"
networkPolicy:
  ingressFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}
  egress:
    - to: [{podSelector: {matchLabels: {app: redis}}}]
      ports: [{port: 6379, protocol: TCP}]
"#,
        )
        .expect("policy");
        let from = p.ingress.expect("ingress")[0].from.clone().expect("from");
        let labels = from[0]
            .namespace_selector
            .clone()
            .and_then(|s| s.match_labels)
            .expect("namespace selector");
        assert_eq!(labels["kubernetes.io/metadata.name"], "ingress-nginx");
        assert_eq!(
            p.policy_types,
            Some(vec!["Ingress".to_string(), "Egress".to_string()])
        );
        let egress = p.egress.expect("egress");
        assert_eq!(egress.len(), 2, "DNS, then the spec's rule");
        let dns: Vec<_> = egress[0]
            .ports
            .iter()
            .flatten()
            .map(|p| (p.port.clone(), p.protocol.clone()))
            .collect();
        assert_eq!(
            dns,
            [
                (Some(IntOrString::Int(53)), Some("UDP".to_string())),
                (Some(IntOrString::Int(53)), Some("TCP".to_string()))
            ]
        );
        assert_eq!(
            egress[1].ports.clone().expect("ports")[0].port,
            Some(IntOrString::Int(6379))
        );
        // An empty list denies all egress but DNS.
        let p = policy("networkPolicy: {egress: []}").expect("policy");
        assert_eq!(p.egress.map(|e| e.len()), Some(1));
    }

    #[test]
    fn the_api_port_only_from_its_peers_or_the_namespace() {
        let base = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, api: {keysSecretRef: {name: k, key: keys}";
        let p = policy(&format!("{base}}}}}\nnetworkPolicy: {{}}")).expect("policy");
        let ingress = p.ingress.expect("ingress");
        assert_eq!(ingress.len(), 2, "{ingress:?}");
        assert_eq!(ingress[0].from, None, "the public port: any source");
        let api = &ingress[1];
        assert_eq!(
            api.ports.clone().expect("ports")[0].port,
            Some(IntOrString::String("api".into()))
        );
        let from = api.from.clone().expect("never any source");
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
        assert_eq!(from[0].namespace_selector, None, "this namespace only");

        let p = policy(&format!(
            "{base}, allowFrom: [{{namespaceSelector: {{matchLabels: {{team: backend}}}}}}]}}}}\nnetworkPolicy: {{}}"
        ))
        .expect("policy");
        let from = p.ingress.expect("ingress")[1].from.clone().expect("from");
        let labels = from[0]
            .namespace_selector
            .clone()
            .and_then(|s| s.match_labels)
            .expect("namespace selector");
        assert_eq!(labels["team"], "backend");

        // The API turned off, or no policy: no rule.
        let p =
            policy(&format!("{base}, enabled: false}}}}\nnetworkPolicy: {{}}")).expect("policy");
        assert_eq!(p.ingress.map(|i| i.len()), Some(1));
        assert!(policy(&format!("{base}}}}}")).is_none());
    }
}
