//! Writing children: server-side apply under the operator's field manager, only to objects
//! this ChatGateway owns or that do not exist yet, and deletes only of what it owns.
//!
//! A forced apply takes over every field of an existing object, whoever created it: without
//! this check, creating a ChatGateway named like an existing Deployment, Service or HPA
//! would quietly rewrite (or, for a turned-off HPA, delete) someone else's object. Every
//! child name is looked up (metadata only) before anything is written, so a conflict
//! leaves the cluster untouched.

use crate::builders::{with_type_meta, FIELD_MANAGER};
use crate::error::{Error, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

/// What is at a child's name now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the operator may create it.
    Absent,
    /// An object whose controller is this ChatGateway (its uid).
    Owned {
        /// The child's own uid, for delete preconditions.
        uid: Option<String>,
    },
    /// Someone else's object: never written, never deleted.
    Foreign {
        /// Its controller or owners, or "no owner".
        owner: String,
    },
}

/// Classifies an object's metadata against the ChatGateway's uid.
pub fn classify(meta: Option<&ObjectMeta>, owner_uid: &str) -> Found {
    let Some(meta) = meta else {
        return Found::Absent;
    };
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    if refs
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
    {
        return Found::Owned {
            uid: meta.uid.clone(),
        };
    }
    let owner = match refs
        .iter()
        .find(|r| r.controller == Some(true))
        .or(refs.first())
    {
        Some(r) => format!("owned by {} {} (uid {})", r.kind, r.name, r.uid),
        None => "it has no owner".to_string(),
    };
    Found::Foreign { owner }
}

/// Looks up the metadata at `name` (no body, no Secret data).
pub async fn lookup<K>(api: &Api<K>, name: &str) -> Result<Option<ObjectMeta>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(api.get_metadata_opt(name).await?.map(|m| m.metadata))
}

/// Fails with [`Error::NotOwned`] when `found` is someone else's object.
pub fn writable(found: &Found, kind: &str, namespace: &str, name: &str) -> Result<()> {
    match found {
        Found::Foreign { owner } => Err(Error::NotOwned {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            owner: owner.clone(),
        }),
        Found::Absent | Found::Owned { .. } => Ok(()),
    }
}

/// Server-side apply of a JSON body (with apiVersion and kind) named `name`, taking over
/// conflicts from other managers (only ever on an owned object: see [`writable`]).
pub async fn apply_json<K>(api: &Api<K>, name: &str, body: serde_json::Value) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(name, &params, &Patch::Apply(body)).await?)
}

/// Server-side apply of a typed child.
pub async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let name = obj
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    apply_json(api, &name, with_type_meta(obj)?).await
}

/// A child only some specs have (a NetworkPolicy, the API's Service), looked up only when
/// its section of the spec is present: gateways without the section cost no request, so
/// removing the section leaves the child; `enabled: false` removes it.
pub struct Optional<K> {
    api: Api<K>,
    name: String,
    kind: String,
    found: Found,
}

impl<K> Optional<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    /// Looks `name` up when `section` is present.
    pub async fn lookup(
        api: Api<K>,
        name: String,
        section: bool,
        owner_uid: &str,
    ) -> Result<Optional<K>> {
        let found = match section {
            true => classify(lookup(&api, &name).await?.as_ref(), owner_uid),
            false => Found::Absent,
        };
        Ok(Optional {
            api,
            name,
            kind: K::kind(&()).into_owned(),
            found,
        })
    }

    /// Fails with [`Error::NotOwned`] when `desired` would be written over someone's object.
    pub fn writable(&self, desired: Option<&K>, namespace: &str) -> Result<()> {
        match desired {
            Some(_) => writable(&self.found, &self.kind, namespace, &self.name),
            None => Ok(()),
        }
    }

    /// Applies `desired`, or deletes the owned child its section turned off. Returns what
    /// was deleted, for the Event.
    pub async fn settle(&self, desired: Option<&K>) -> Result<Option<String>> {
        if let Some(obj) = desired {
            apply(&self.api, obj).await?;
            return Ok(None);
        }
        let deleted = delete_owned(&self.api, &self.name, &self.found).await?;
        Ok(deleted.then(|| format!("{} {}", self.kind, self.name)))
    }
}

/// Deletes an owned child (the spec turned it off); `true` when something was deleted.
/// The uid precondition keeps a child recreated by someone else in the meantime safe.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, found: &Found) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Found::Owned { uid } = found else {
        return Ok(false);
    };
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(owners: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            uid: Some("child-uid".into()),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        }
    }

    fn owner(kind: &str, name: &str, uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn owned_only_when_this_gateway_is_the_controller() {
        assert_eq!(classify(None, "u1"), Found::Absent);
        assert_eq!(
            classify(
                Some(&meta(vec![owner("ChatGateway", "chat", "u1", true)])),
                "u1"
            ),
            Found::Owned {
                uid: Some("child-uid".into())
            }
        );
        // Another ChatGateway of the same name (deleted and recreated with orphans).
        let Found::Foreign { owner: who } = classify(
            Some(&meta(vec![owner("ChatGateway", "chat", "u0", true)])),
            "u1",
        ) else {
            panic!("foreign")
        };
        assert!(who.contains("ChatGateway chat (uid u0)"), "{who}");
        // A plain owner reference without controller is not ownership.
        assert!(matches!(
            classify(
                Some(&meta(vec![owner("ChatGateway", "chat", "u1", false)])),
                "u1"
            ),
            Found::Foreign { .. }
        ));
        let Found::Foreign { owner: who } = classify(Some(&ObjectMeta::default()), "u1") else {
            panic!("foreign")
        };
        assert_eq!(who, "it has no owner");
    }

    #[test]
    fn only_foreign_objects_are_refused() {
        let foreign = Found::Foreign {
            owner: "it has no owner".into(),
        };
        let err = writable(&foreign, "Service", "apps", "chat").unwrap_err();
        assert_eq!(err.reason(), "NotOwned");
        assert!(err.to_string().contains("Service apps/chat"), "{err}");
        assert!(writable(&Found::Absent, "Service", "apps", "chat").is_ok());
    }
}
