//! What the cluster serves: the API version each optional child is written in, and
//! whether pods may have native sidecars.
//!
//! Kubernetes 1.20 serves the HorizontalPodAutoscaler as `autoscaling/v2beta2` and the
//! PodDisruptionBudget as `policy/v1beta1`; current clusters serve only `autoscaling/v2`
//! and `policy/v1`. The builders produce the newest types, and [`versioned`] rewrites one
//! for the version the cluster serves. The content is the same (v2 and v1 are the GA
//! releases of v2beta2 and v1beta1, field for field) except `unhealthyPodEvictionPolicy`,
//! which only `policy/v1` has, and only from Kubernetes 1.26 (policy/v1 is served from
//! 1.21). Server-side apply refuses a field the server's schema does not declare ("field
//! not declared in schema"), so where the server lacks it the field is left out.

use crate::builders::with_type_meta;
use crate::error::{Error, Result};
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::{Client, Resource};
use serde::Serialize;

/// HorizontalPodAutoscaler versions the operator writes, newest first.
pub const HPA_VERSIONS: &[&str] = &["autoscaling/v2", "autoscaling/v2beta2"];
/// PodDisruptionBudget versions the operator writes, newest first.
pub const PDB_VERSIONS: &[&str] = &["policy/v1", "policy/v1beta1"];

/// The PodDisruptionBudget field only `policy/v1` of Kubernetes 1.26+ declares.
const EVICTION_POLICY: &str = "unhealthyPodEvictionPolicy";

/// Optional API kinds and the version the cluster serves them in (found by discovery at
/// start; `None` when it serves none of the versions the operator writes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServedKinds {
    /// The HorizontalPodAutoscaler version, one of [`HPA_VERSIONS`].
    pub hpa: Option<&'static str>,
    /// The PodDisruptionBudget version, one of [`PDB_VERSIONS`].
    pub pdb: Option<&'static str>,
    /// Native sidecars (init containers with `restartPolicy: Always`; on by default from
    /// Kubernetes 1.29).
    pub native_sidecars: bool,
    /// PodDisruptionBudgets have `unhealthyPodEvictionPolicy` (Kubernetes 1.26+).
    pub pdb_eviction_policy: bool,
}

impl ServedKinds {
    /// A current cluster: the newest versions and native sidecars.
    pub const ALL: ServedKinds = ServedKinds {
        hpa: Some(HPA_VERSIONS[0]),
        pdb: Some(PDB_VERSIONS[0]),
        native_sidecars: true,
        pdb_eviction_policy: true,
    };

    /// What Kubernetes 1.20 serves (the oldest version the tests run against).
    pub const KUBERNETES_1_20: ServedKinds = ServedKinds {
        hpa: Some("autoscaling/v2beta2"),
        pdb: Some("policy/v1beta1"),
        native_sidecars: false,
        pdb_eviction_policy: false,
    };

    /// Asks the API server which versions it serves. A version is unserved when its group
    /// version is missing or lacks the resource; other errors are returned. Fields and pod
    /// features discovery does not list are told by the server's version.
    pub async fn discover(client: &Client) -> Result<ServedKinds> {
        let hpa = newest_served(client, HPA_VERSIONS, "horizontalpodautoscalers").await?;
        let pdb = newest_served(client, PDB_VERSIONS, "poddisruptionbudgets").await?;
        let v = client.apiserver_version().await?;
        Ok(ServedKinds {
            hpa,
            pdb,
            native_sidecars: has_native_sidecars(&v.major, &v.minor),
            pdb_eviction_policy: has_pdb_eviction_policy(&v.major, &v.minor),
        })
    }

    /// Fields of the builders' (newest) types an object written as `api_version` leaves
    /// out, because this server's schema does not declare them.
    fn undeclared(&self, api_version: &str) -> &'static [&'static str] {
        match api_version {
            "policy/v1" if self.pdb_eviction_policy => &[],
            // policy/v1beta1 never had it (its last server, 1.24, predates the field).
            "policy/v1" | "policy/v1beta1" => &[EVICTION_POLICY],
            _ => &[],
        }
    }
}

/// The first of `candidates` (newest first) whose group version serves `plural`.
async fn newest_served(
    client: &Client,
    candidates: &[&'static str],
    plural: &str,
) -> Result<Option<&'static str>> {
    for &group_version in candidates {
        match client.list_api_group_resources(group_version).await {
            Ok(list) if list.resources.iter().any(|r| r.name == plural) => {
                return Ok(Some(group_version))
            }
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Whether an API server of this version runs native sidecars by default (1.29+).
pub fn has_native_sidecars(major: &str, minor: &str) -> bool {
    at_least(major, minor, 29)
}

/// Whether an API server of this version declares the PodDisruptionBudget's
/// `unhealthyPodEvictionPolicy` (1.26+; alpha and off by default in 1.26, where the server
/// accepts and drops it).
pub fn has_pdb_eviction_policy(major: &str, minor: &str) -> bool {
    at_least(major, minor, 26)
}

/// Whether the version is 1.`wanted` or later. Minor versions may carry a suffix (`29+`
/// on some managed clusters); unparsable means no, which only turns features off.
fn at_least(major: &str, minor: &str, wanted: u32) -> bool {
    let num = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (num(major), num(minor)) {
        (Some(major), Some(minor)) => major > 1 || (major == 1 && minor >= wanted),
        _ => false,
    }
}

/// The API resource of `K`'s kind in `api_version` (`group/version`).
pub fn api_resource<K: Resource<DynamicType = ()>>(api_version: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, &K::kind(&())),
        &K::plural(&()),
    )
}

/// `obj` (built as the newest version) as an object of `api_version` on a cluster serving
/// `served`: the same content, without the fields that server does not declare.
pub fn versioned<K>(obj: &K, api_version: &str, served: &ServedKinds) -> Result<DynamicObject>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let mut value = with_type_meta(obj)?;
    value["apiVersion"] = api_version.into();
    if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) {
        for field in served.undeclared(api_version) {
            spec.remove(*field);
        }
    }
    serde_json::from_value(value).map_err(|e| Error::Serialize(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{cgw, FULL};
    use crate::builders::{self, Owner};
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(!has_native_sidecars("1", "20"));
        assert!(!has_native_sidecars("1", "28"));
        assert!(has_native_sidecars("1", "29"));
        assert!(has_native_sidecars("1", "33+"));
        assert!(has_native_sidecars("2", "0"));
        assert!(!has_native_sidecars("", ""));
    }

    #[test]
    fn api_resources_of_each_version() {
        let ar = api_resource::<HorizontalPodAutoscaler>("autoscaling/v2beta2");
        assert_eq!(
            (
                ar.group.as_str(),
                ar.version.as_str(),
                ar.api_version.as_str(),
                ar.kind.as_str(),
                ar.plural.as_str()
            ),
            (
                "autoscaling",
                "v2beta2",
                "autoscaling/v2beta2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers"
            )
        );
        let ar = api_resource::<PodDisruptionBudget>("policy/v1beta1");
        assert_eq!(
            (ar.api_version.as_str(), ar.plural.as_str()),
            ("policy/v1beta1", "poddisruptionbudgets")
        );
    }

    #[test]
    fn older_versions_carry_the_same_content() {
        let c = cgw(FULL);
        let children = builders::build(
            &c,
            &Owner::of(&c, "d").expect("owner"),
            &builders::Inputs::default(),
        )
        .expect("build");
        let json = |v: Result<DynamicObject>| serde_json::to_value(v.expect("versioned"));
        let all = &ServedKinds::ALL;
        let hpa = children.hpa.expect("hpa");
        let v2 = json(versioned(&hpa, "autoscaling/v2", all)).expect("json");
        let v2beta2 = json(versioned(&hpa, "autoscaling/v2beta2", all)).expect("json");
        assert_eq!(v2["apiVersion"], "autoscaling/v2");
        assert_eq!(v2beta2["apiVersion"], "autoscaling/v2beta2");
        assert_eq!(v2beta2["kind"], "HorizontalPodAutoscaler");
        assert_eq!(v2["spec"], v2beta2["spec"]);
        assert_eq!(v2["metadata"], v2beta2["metadata"]);

        let pdb = children.pdb.expect("pdb");
        let v1 = json(versioned(&pdb, "policy/v1", all)).expect("json");
        let old = &ServedKinds::KUBERNETES_1_20;
        let v1beta1 = json(versioned(&pdb, "policy/v1beta1", old)).expect("json");
        assert_eq!(v1["spec"]["unhealthyPodEvictionPolicy"], "AlwaysAllow");
        assert!(
            v1beta1["spec"].get("unhealthyPodEvictionPolicy").is_none(),
            "policy/v1beta1 has no unhealthyPodEvictionPolicy"
        );
        let mut without = v1["spec"].clone();
        without
            .as_object_mut()
            .map(|s| s.remove("unhealthyPodEvictionPolicy"));
        assert_eq!(without, v1beta1["spec"]);
        assert_eq!(v1beta1["apiVersion"], "policy/v1beta1");
        // policy/v1 of 1.21 to 1.25: the version is served, the field not yet declared.
        let before_1_26 = ServedKinds {
            pdb_eviction_policy: false,
            ..ServedKinds::ALL
        };
        let v1_old = json(versioned(&pdb, "policy/v1", &before_1_26)).expect("json");
        assert_eq!(v1_old["apiVersion"], "policy/v1");
        assert_eq!(v1_old["spec"], without);
    }

    #[test]
    fn the_eviction_policy_from_1_26() {
        assert!(!has_pdb_eviction_policy("1", "21"));
        assert!(!has_pdb_eviction_policy("1", "25+"));
        assert!(has_pdb_eviction_policy("1", "26"));
        assert!(has_pdb_eviction_policy("1", "33+"));
        assert!(!has_pdb_eviction_policy("", ""));
    }
}
