//! PodDisruptionBudget (policy/v1).

use super::Owner;
use crate::crd::ChatGateway;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The PDB, or `None` when `disruptionBudget.enabled` is false. On by default: a node
/// drain then moves one pod's clients at a time.
pub fn build(cgw: &ChatGateway, owner: &Owner) -> Option<PodDisruptionBudget> {
    let d = cgw.spec.disruption_budget.clone().unwrap_or_default();
    if cgw.spec.disruption_budget.is_some() && !d.enabled {
        return None;
    }
    let max_unavailable = match (&d.max_unavailable, &d.min_available) {
        (None, None) => Some(IntOrString::Int(1)),
        (max, _) => max.clone(),
    };
    Some(PodDisruptionBudget {
        metadata: owner.meta(&owner.name),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(owner.selector_labels()),
                match_expressions: None,
            }),
            max_unavailable,
            min_available: if d.max_unavailable.is_some() {
                None
            } else {
                d.min_available.clone()
            },
            // A pod that is not ready serves nobody: let a node drain evict it even while
            // the budget is used up, or a crash-looping gateway would block drains forever.
            // (policy/v1 only; dropped when written as policy/v1beta1.)
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::*;

    fn pdb(spec: &str) -> Option<PodDisruptionBudgetSpec> {
        let c = cgw(spec);
        build(&c, &Owner::of(&c, "d").expect("owner")).map(|p| p.spec.expect("spec"))
    }

    #[test]
    fn variants() {
        let s = pdb(MINIMAL).expect("on by default");
        assert_eq!(
            s.unhealthy_pod_eviction_policy.as_deref(),
            Some("AlwaysAllow")
        );
        assert_eq!(
            (s.max_unavailable, s.min_available),
            (Some(IntOrString::Int(1)), None)
        );
        let s = pdb(FULL).expect("pdb");
        assert_eq!(
            (s.max_unavailable, s.min_available),
            (None, Some(IntOrString::String("50%".into())))
        );
        let s = pdb("disruptionBudget: {maxUnavailable: 2}").expect("pdb");
        assert_eq!(s.max_unavailable, Some(IntOrString::Int(2)));
        assert!(pdb("disruptionBudget: {enabled: false}").is_none());
    }
}
