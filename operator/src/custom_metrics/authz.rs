//! Authorisation: may this user read this metric? Asked of the API server with a
//! SubjectAccessReview, exactly as Kubernetes' delegating authorizer does for aggregated
//! API servers, with the request described the way the API server's own request-info
//! parser would (so the HPA controller's `custom.metrics.k8s.io` RBAC rule is what
//! decides). Decisions are cached for a few seconds: the HPA asks every 15 s per HPA.

use super::api::percent_decode;
use super::authn::User;
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::Client;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a decision is reused (Kubernetes' delegating authorizer uses 10 s too).
pub const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 4096;

/// What a request does, in SubjectAccessReview terms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attributes {
    /// A path that names no resource (discovery).
    NonResource {
        /// The URL path.
        path: String,
        /// Lower-case HTTP method.
        verb: String,
    },
    /// A resource request.
    Resource {
        /// get, list, create, …
        verb: String,
        /// Namespace, if any.
        namespace: Option<String>,
        /// API group.
        group: String,
        /// API version.
        version: String,
        /// Resource (e.g. `pods`).
        resource: String,
        /// Subresource (here: the metric name).
        subresource: Option<String>,
        /// Object name (`*` for all objects of a selector).
        name: Option<String>,
    },
}

/// Describes `method path` like the API server's request-info parser does for `/apis/...`.
pub fn attributes(method: &hyper::Method, path: &str) -> Attributes {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s).unwrap_or_else(|| s.to_string()))
        .collect();
    let non_resource = || Attributes::NonResource {
        path: path.to_string(),
        verb: method.as_str().to_ascii_lowercase(),
    };
    // apis / group / version / at least one more part.
    if segments.len() < 4 || segments[0] != "apis" {
        return non_resource();
    }
    let (group, version) = (segments[1].clone(), segments[2].clone());
    let mut parts = &segments[3..];
    let mut namespace = None;
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = Some(parts[1].clone());
        if parts.len() > 2 && !matches!(parts[2].as_str(), "status" | "finalize") {
            parts = &parts[2..];
        }
    }
    let name = parts.get(1).cloned();
    let verb = match *method {
        hyper::Method::GET | hyper::Method::HEAD if name.is_some() => "get",
        hyper::Method::GET | hyper::Method::HEAD => "list",
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE if name.is_some() => "delete",
        hyper::Method::DELETE => "deletecollection",
        _ => return non_resource(),
    };
    Attributes::Resource {
        verb: verb.into(),
        namespace,
        group,
        version,
        resource: parts[0].clone(),
        subresource: parts.get(2).cloned(),
        name,
    }
}

impl Attributes {
    /// The request as a Forbidden message says it.
    pub fn describe(&self) -> String {
        match self {
            Attributes::NonResource { path, verb } => format!("{verb} path {path:?}"),
            Attributes::Resource {
                verb,
                namespace,
                group,
                resource,
                subresource,
                ..
            } => {
                let what = match subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.clone(),
                };
                let place = namespace
                    .as_ref()
                    .map(|n| format!(" in the namespace {n:?}"))
                    .unwrap_or_else(|| " at the cluster scope".into());
                format!("{verb} resource {what:?} in API group {group:?}{place}")
            }
        }
    }

    fn review(&self, user: &User) -> SubjectAccessReview {
        let (resource_attributes, non_resource_attributes) = match self.clone() {
            Attributes::NonResource { path, verb } => (
                None,
                Some(NonResourceAttributes {
                    path: Some(path),
                    verb: Some(verb),
                }),
            ),
            Attributes::Resource {
                verb,
                namespace,
                group,
                version,
                resource,
                subresource,
                name,
            } => (
                Some(ResourceAttributes {
                    verb: Some(verb),
                    namespace,
                    group: Some(group),
                    version: Some(version),
                    resource: Some(resource),
                    subresource,
                    name,
                    ..ResourceAttributes::default()
                }),
                None,
            ),
        };
        SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
                resource_attributes,
                non_resource_attributes,
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        }
    }
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Forbidden, with the authorizer's reason (may be empty).
    Deny(String),
}

/// Asks the API server, caching decisions for [`CACHE_TTL`].
pub struct Authorizer {
    client: Client,
    cache: Mutex<HashMap<(User, Attributes), (Decision, Instant)>>,
}

impl Authorizer {
    /// An authorizer asking through `client` (which needs `create` on
    /// `subjectaccessreviews`).
    pub fn new(client: Client) -> Authorizer {
        Authorizer {
            client,
            cache: Mutex::default(),
        }
    }

    /// Whether `user` may do `attributes`. API failures are errors (the request then
    /// fails with 500), never an allow.
    pub async fn authorize(&self, user: &User, attributes: &Attributes) -> kube::Result<Decision> {
        let key = (user.clone(), attributes.clone());
        if let Some((decision, at)) = self.lock().get(&key) {
            if at.elapsed() < CACHE_TTL {
                return Ok(decision.clone());
            }
        }
        let api = Api::<SubjectAccessReview>::all(self.client.clone());
        let review = api
            .create(&PostParams::default(), &attributes.review(user))
            .await?;
        let status = review.status.unwrap_or_default();
        let decision = if status.allowed && !status.denied.unwrap_or(false) {
            Decision::Allow
        } else {
            Decision::Deny(status.reason.unwrap_or_default())
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (decision.clone(), Instant::now()));
        Ok(decision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(User, Attributes), (Decision, Instant)>> {
        // A poisoned cache only loses cached decisions.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::{ok_with, serve};
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;

    const SAR: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

    fn authorizer() -> (Authorizer, crate::reconcile::tests::Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Authorizer::new(Client::new(service, "default")), handle)
    }

    fn reviewed(allowed: bool, reason: &str) -> serde_json::Value {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {}, "status": {"allowed": allowed, "reason": reason}})
    }

    fn hpa() -> User {
        User {
            name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
            groups: vec!["system:serviceaccounts".into()],
            ..User::default()
        }
    }

    #[test]
    fn attributes_like_the_api_servers_request_info() {
        let get = hyper::Method::GET;
        assert_eq!(
            attributes(&get, "/apis/custom.metrics.k8s.io/v1beta2/namespaces/apps/pods/%2A/chatgateway_connections"),
            Attributes::Resource {
                verb: "get".into(),
                namespace: Some("apps".into()),
                group: "custom.metrics.k8s.io".into(),
                version: "v1beta2".into(),
                resource: "pods".into(),
                subresource: Some("chatgateway_connections".into()),
                name: Some("*".into()),
            }
        );
        assert_eq!(
            attributes(&get, "/apis/custom.metrics.k8s.io/v1beta1"),
            Attributes::NonResource {
                path: "/apis/custom.metrics.k8s.io/v1beta1".into(),
                verb: "get".into()
            }
        );
        let list = attributes(
            &get,
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/apps/pods",
        );
        assert!(
            matches!(list, Attributes::Resource { ref verb, ref name, .. } if verb == "list" && name.is_none())
        );
        let ns = attributes(
            &hyper::Method::POST,
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/apps",
        );
        assert!(
            matches!(ns, Attributes::Resource { ref verb, ref resource, .. } if verb == "create" && resource == "namespaces")
        );
    }

    #[tokio::test]
    async fn allowed_users_pass_and_the_review_describes_the_request() {
        let (authz, handle) = authorizer();
        let server = serve(
            handle,
            vec![ok_with(Method::POST, SAR, reviewed(true, "RBAC: allowed"))],
        );
        let attrs = attributes(
            &hyper::Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/apps/pods/*/chatgateway_connections",
        );
        assert_eq!(
            authz.authorize(&hpa(), &attrs).await.expect("review"),
            Decision::Allow
        );
        // Cached: no second review within the TTL (the mock would fail an extra request).
        assert_eq!(
            authz.authorize(&hpa(), &attrs).await.expect("cached"),
            Decision::Allow
        );
        let seen = server.await.expect("server");
        let spec = &seen[0].1["spec"];
        assert_eq!(
            spec["user"],
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(spec["groups"], json!(["system:serviceaccounts"]));
        assert_eq!(
            spec["resourceAttributes"],
            json!({"verb": "get", "namespace": "apps", "group": "custom.metrics.k8s.io",
                   "version": "v1beta2", "resource": "pods",
                   "subresource": "chatgateway_connections", "name": "*"})
        );
    }

    #[tokio::test]
    async fn denied_users_are_denied_with_the_reason() {
        let (authz, handle) = authorizer();
        let server = serve(
            handle,
            vec![ok_with(Method::POST, SAR, reviewed(false, "no RBAC rule"))],
        );
        let alice = User {
            name: "alice".into(),
            ..User::default()
        };
        let attrs = attributes(&hyper::Method::GET, "/apis/custom.metrics.k8s.io/v1beta1");
        assert_eq!(
            authz.authorize(&alice, &attrs).await.expect("review"),
            Decision::Deny("no RBAC rule".into())
        );
        let seen = server.await.expect("server");
        assert_eq!(
            seen[0].1["spec"]["nonResourceAttributes"],
            json!({"path": "/apis/custom.metrics.k8s.io/v1beta1", "verb": "get"})
        );
    }
}
