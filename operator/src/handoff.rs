//! Handing `spec.replicas` of the Deployment to the HPA, the server-side-apply way.
//!
//! While autoscaling is off the operator's apply sets `spec.replicas` and owns it. While an
//! HPA scales, the field must belong to the HPA: the operator's apply leaves it out. But
//! when an applier stops sending a field it alone owns, the API server removes it and the
//! Deployment falls back to 1 replica. So, as the Kubernetes docs describe for handing a
//! field to an HPA, a second field manager first takes shared ownership of the current
//! value with a non-forced apply of only `spec.replicas`; then the operator's apply drops
//! the field, and the value stays. The HPA's first scale takes the field from that manager.
//! The non-forced apply cannot undo an HPA write: if the HPA changed the value in the
//! meantime, it owns the field and the apply fails with a conflict, which ends the
//! hand-off (nothing to hand over). Nothing reads the count and then forces it back.

use crate::builders::FIELD_MANAGER;
use crate::error::Result;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};

/// Field manager that holds `spec.replicas` between the operator and the HPA.
pub const HANDOVER_MANAGER: &str = "chatgateway-operator-handover";

/// What to do with `spec.replicas` in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing beyond the operator's own apply.
    Nothing,
    /// Take shared ownership of this count before the operator's apply drops the field
    /// (autoscaling was just turned on).
    Before(i32),
    /// Take shared ownership of this count after the operator's apply created the
    /// Deployment with it (a new autoscaled gateway).
    After(i32),
}

/// The plan for an autoscaled gateway (`min`: its `minReplicas`) given the live Deployment.
pub fn plan(autoscaling: bool, min: i32, live: Option<&Deployment>) -> Plan {
    if !autoscaling {
        return Plan::Nothing;
    }
    let Some(live) = live else {
        return Plan::After(min);
    };
    if replicas_owners(live).iter().any(|m| m != FIELD_MANAGER) {
        // The HPA (or the hand-off manager, or a person with kubectl) holds it already.
        return Plan::Nothing;
    }
    Plan::Before(live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(min))
}

/// Field managers that own `spec.replicas` of `d`.
pub fn replicas_owners(d: &Deployment) -> Vec<String> {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
        })
        .filter_map(|m| m.manager.clone())
        .collect()
}

/// The non-forced apply of only `spec.replicas` under [`HANDOVER_MANAGER`]; a conflict
/// means another manager (the HPA) owns a different value: nothing to hand over.
pub async fn take_over(api: &Api<Deployment>, name: &str, replicas: i32) -> Result<()> {
    let body = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas},
    });
    match api
        .patch(
            name,
            &PatchParams::apply(HANDOVER_MANAGER),
            &Patch::Apply(body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::debug!(name, "replicas already owned by another manager");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn live(replicas: i32, owners: &[&str]) -> Deployment {
        let managed: Vec<_> = owners
            .iter()
            .map(|m| {
                json!({"manager": m, "operation": "Apply", "apiVersion": "apps/v1",
                            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}})
            })
            .chain([
                json!({"manager": "kube-controller-manager", "operation": "Update",
                           "apiVersion": "apps/v1", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:status": {"f:replicas": {}}}}),
            ])
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "chat", "managedFields": managed},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
        }))
        .expect("deployment")
    }

    #[test]
    fn only_autoscaled_gateways_hand_over() {
        assert_eq!(plan(false, 2, None), Plan::Nothing);
        assert_eq!(
            plan(false, 2, Some(&live(5, &[FIELD_MANAGER]))),
            Plan::Nothing
        );
    }

    #[test]
    fn a_new_deployment_is_handed_over_after_it_is_created() {
        assert_eq!(plan(true, 3, None), Plan::After(3));
    }

    #[test]
    fn turning_autoscaling_on_hands_over_the_live_count_first() {
        assert_eq!(
            plan(true, 2, Some(&live(6, &[FIELD_MANAGER]))),
            Plan::Before(6)
        );
        // Nobody owns it (an object from before server-side apply): hand it over too.
        assert_eq!(plan(true, 2, Some(&live(4, &[]))), Plan::Before(4));
    }

    #[test]
    fn once_another_manager_owns_it_the_operator_leaves_it_alone() {
        for owners in [
            &[HANDOVER_MANAGER][..],
            &["kube-controller-manager"],
            &[FIELD_MANAGER, HANDOVER_MANAGER],
            &["kubectl"],
        ] {
            assert_eq!(
                plan(true, 2, Some(&live(9, owners))),
                Plan::Nothing,
                "{owners:?}"
            );
        }
        assert_eq!(
            replicas_owners(&live(9, &[FIELD_MANAGER, "kube-controller-manager"])),
            [FIELD_MANAGER, "kube-controller-manager"]
        );
    }
}
