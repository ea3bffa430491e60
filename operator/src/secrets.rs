//! The Secrets a ChatGateway references: checked and hashed on every reconcile, watched so
//! that a rotated key rolls the pods and a Secret created late is picked up at once.
//!
//! The gateway reads its keys once, at start (the Redis URL from the environment, the JWT
//! key from a mounted file), so a rotation only reaches it through new pods. The hash of
//! every referenced key goes on the pod template: a changed key changes the template and
//! the Deployment rolls the pods through the normal drain. The operator never copies a
//! Secret's value anywhere; the hash is one-way and covers all keys at once.

use crate::crd::{ChatGateway, ChatGatewaySpec, SecretKeyRef};
use crate::error::{Error, Result};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

/// Every Secret key the spec references, in a fixed order.
pub fn refs(spec: &ChatGatewaySpec) -> Vec<&SecretKeyRef> {
    let g = spec.gateway.as_ref();
    let jwt = g.and_then(|g| g.auth.as_ref()).and_then(|a| a.jwt.as_ref());
    [
        g.and_then(|g| g.redis.as_ref()).map(|r| &r.url_secret_ref),
        jwt.and_then(|j| j.secret_ref.as_ref()),
        jwt.and_then(|j| j.public_key_secret_ref.as_ref()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Reads every referenced key and returns the hash of their values (`None` when the spec
/// references none); fails with [`Error::SecretRef`] for a missing Secret or key.
pub async fn hash(client: &Client, ns: &str, spec: &ChatGatewaySpec) -> Result<Option<String>> {
    let refs = refs(spec);
    if refs.is_empty() {
        return Ok(None);
    }
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let mut values = Vec::with_capacity(refs.len());
    for r in &refs {
        let value = secrets
            .get_opt(&r.name)
            .await?
            .and_then(|s| s.data)
            .and_then(|mut d| d.remove(&r.key));
        let Some(value) = value else {
            return Err(Error::SecretRef {
                namespace: ns.into(),
                name: r.name.clone(),
                key: r.key.clone(),
            });
        };
        values.push(value.0);
    }
    Ok(Some(digest(&refs, &values)))
}

/// Hash over each reference and its value; lengths are included so that no two different
/// inputs concatenate to the same bytes.
pub fn digest(refs: &[&SecretKeyRef], values: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    for (r, v) in refs.iter().zip(values) {
        for part in [r.name.as_bytes(), r.key.as_bytes(), v.as_slice()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// The ChatGateways in `namespace` that reference the Secret `name` (the Secret watch's
/// mapper: a created, changed or deleted Secret reconciles exactly these).
pub fn gateways_using<'a>(
    namespace: &str,
    name: &str,
    gateways: impl IntoIterator<Item = &'a ChatGateway>,
) -> Vec<ObjectRef<ChatGateway>> {
    gateways
        .into_iter()
        .filter(|g| g.namespace().as_deref() == Some(namespace))
        .filter(|g| refs(&g.spec).iter().any(|r| r.name == name))
        .map(ObjectRef::from_obj)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::{cgw, FULL, MINIMAL};

    fn key(name: &str, key: &str) -> SecretKeyRef {
        SecretKeyRef {
            name: name.into(),
            key: key.into(),
        }
    }

    #[test]
    fn refs_in_order() {
        let c = cgw(FULL);
        let names: Vec<_> = refs(&c.spec)
            .iter()
            .map(|r| format!("{}/{}", r.name, r.key))
            .collect();
        assert_eq!(names, ["redis/url", "jwt/secret"]);
        assert!(refs(&cgw(MINIMAL).spec).is_empty());
    }

    #[test]
    fn the_hash_changes_with_any_value_and_nothing_else() {
        let (a, b) = (key("redis", "url"), key("jwt", "secret"));
        let refs = [&a, &b];
        let base = digest(&refs, &[b"redis://r".to_vec(), b"k1".to_vec()]);
        assert_eq!(
            base,
            digest(&refs, &[b"redis://r".to_vec(), b"k1".to_vec()])
        );
        assert_ne!(
            base,
            digest(&refs, &[b"redis://r".to_vec(), b"k2".to_vec()])
        );
        assert_ne!(
            base,
            digest(&refs, &[b"redis://s".to_vec(), b"k1".to_vec()])
        );
        // No two splits of the same bytes collide.
        let c = key("redi", "surl");
        assert_ne!(
            digest(&[&a], &[b"x".to_vec()]),
            digest(&[&c], &[b"x".to_vec()])
        );
        assert_eq!(base.len(), 16);
    }

    #[test]
    fn a_secret_maps_to_the_gateways_that_use_it() {
        let full = cgw(FULL); // apps/chat uses redis and jwt
        let mut other = cgw("gateway: {auth: {jwt: {secretRef: {name: jwt, key: k}}}}");
        other.metadata.name = Some("other".into());
        let mut elsewhere = cgw(FULL);
        elsewhere.metadata.namespace = Some("team-b".into());
        let all = [full, other, elsewhere, cgw(MINIMAL)];
        let names = |ns: &str, secret: &str| {
            gateways_using(ns, secret, all.iter())
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(names("apps", "redis"), ["apps/chat"]);
        assert_eq!(names("apps", "jwt"), ["apps/chat", "apps/other"]);
        assert_eq!(names("team-b", "jwt"), ["team-b/chat"]);
        assert!(names("apps", "unrelated").is_empty());
    }
}
