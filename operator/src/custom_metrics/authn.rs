//! Front-proxy authentication: who is asking, as the API server's aggregator says.
//!
//! The aggregator proxies a request to the operator with its front-proxy client
//! certificate and the user in headers (`X-Remote-User`, `X-Remote-Group`,
//! `X-Remote-Extra-*`). Those headers are believed only when the TLS client certificate
//! chains to the request-header CA and its common name is one of the allowed names, both
//! published by the API server in `kube-system/extension-apiserver-authentication` (the
//! same rule as Kubernetes' own request-header authenticator). Everything else is 401.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Namespace and name of the ConfigMap the API server publishes.
pub const AUTH_CONFIG_MAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// An authenticated user, as the SubjectAccessReview needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct User {
    /// User name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes and the like), keys lower-cased.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a request is not authenticated (the 401's message).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// The API server publishes no request-header CA (aggregation is not configured).
    #[error("no front-proxy (request-header) CA is configured in kube-system/extension-apiserver-authentication")]
    NotConfigured,
    /// No TLS client certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate does not chain to the request-header CA.
    #[error("client certificate not signed by the request-header CA: {0}")]
    Untrusted(String),
    /// Signed by the CA, but its common name is not allowed.
    #[error("client certificate common name {0:?} is not an allowed front-proxy name")]
    NameNotAllowed(String),
    /// Trusted proxy, but no user header.
    #[error("no user in the request headers")]
    NoUser,
}

/// The request-header settings of the API server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrontProxy {
    cas: Vec<CertificateDer<'static>>,
    allowed_names: Vec<String>,
    username_headers: Vec<String>,
    group_headers: Vec<String>,
    extra_prefixes: Vec<String>,
}

impl FrontProxy {
    /// Reads the `requestheader-*` keys of the ConfigMap; `None` when it has no CA (the
    /// API server was started without `--requestheader-client-ca-file`).
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<Option<FrontProxy>, String> {
        let Some(pem) = data.get("requestheader-client-ca-file") else {
            return Ok(None);
        };
        let cas = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("requestheader-client-ca-file: {e}"))?;
        if cas.is_empty() {
            return Err("requestheader-client-ca-file holds no certificate".into());
        }
        let list = |key: &str| -> Result<Vec<String>, String> {
            match data.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
                None => Ok(Vec::new()),
                Some(json) => serde_json::from_str(json).map_err(|e| format!("{key}: {e}")),
            }
        };
        Ok(Some(FrontProxy {
            cas,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_prefixes: list("requestheader-extra-headers-prefix")?,
        }))
    }

    /// The user a request speaks for, or why it is not believed.
    pub fn authenticate(
        &self,
        chain: &[CertificateDer<'_>],
        headers: &hyper::HeaderMap,
        now: UnixTime,
    ) -> Result<User, Unauthenticated> {
        let leaf = chain.first().ok_or(Unauthenticated::NoCertificate)?;
        let anchors = self
            .cas
            .iter()
            .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
            .collect::<Vec<_>>();
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| Unauthenticated::Untrusted(e.to_string()))?;
        let algorithms = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all;
        cert.verify_for_usage(
            algorithms,
            &anchors,
            &chain[1..],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| Unauthenticated::Untrusted(e.to_string()))?;
        if !self.allowed_names.is_empty() {
            let cn = common_name(leaf).unwrap_or_default();
            if !self.allowed_names.contains(&cn) {
                return Err(Unauthenticated::NameNotAllowed(cn));
            }
        }
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let name = self
            .username_headers
            .iter()
            .flat_map(|h| values(h))
            .find(|v| !v.is_empty())
            .ok_or(Unauthenticated::NoUser)?;
        let groups = self.group_headers.iter().flat_map(|h| values(h)).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            let header = header.as_str(); // lower case
            for prefix in &self.extra_prefixes {
                let prefix = prefix.to_ascii_lowercase();
                if let Some(key) = header.strip_prefix(prefix.as_str()) {
                    let key = super::api::percent_decode(key).unwrap_or_else(|| key.to_string());
                    if let Ok(v) = value.to_str() {
                        extra.entry(key).or_default().push(v.to_string());
                    }
                }
            }
        }
        Ok(User {
            name,
            groups,
            extra,
        })
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The current front-proxy settings, refreshed from the API server.
#[derive(Clone, Default)]
pub struct FrontProxyConfig(Arc<RwLock<Option<Arc<FrontProxy>>>>);

impl FrontProxyConfig {
    /// Settings as given (tests, or a fixed configuration).
    pub fn fixed(proxy: Option<FrontProxy>) -> FrontProxyConfig {
        FrontProxyConfig(Arc::new(RwLock::new(proxy.map(Arc::new))))
    }

    /// The settings now, or why every request is refused.
    pub fn get(&self) -> Result<Arc<FrontProxy>, Unauthenticated> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(Unauthenticated::NotConfigured)
    }

    fn set(&self, proxy: Option<FrontProxy>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = proxy.map(Arc::new);
    }

    /// Re-reads the ConfigMap every `every` until dropped: the API server rewrites it
    /// when its request-header CA rotates. A failed read keeps the last good settings.
    pub async fn refresh(self, client: Client, every: Duration) {
        let api = Api::<ConfigMap>::namespaced(client, AUTH_CONFIG_MAP.0);
        let mut last_error = None;
        loop {
            let result = match api.get_opt(AUTH_CONFIG_MAP.1).await {
                Ok(cm) => FrontProxy::from_config_map(&cm.and_then(|c| c.data).unwrap_or_default()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(proxy) => {
                    if proxy.is_none() && last_error.is_none() {
                        tracing::warn!("{}", Unauthenticated::NotConfigured);
                    }
                    let changed = self.get().ok().as_deref() != proxy.as_ref();
                    if changed {
                        tracing::info!(configured = proxy.is_some(), "front-proxy settings loaded");
                    }
                    self.set(proxy);
                    last_error = None;
                }
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "reading kube-system/extension-apiserver-authentication");
                    }
                    last_error = Some(e);
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom_metrics::testing::{ca, client_cert, front_proxy_data};
    use hyper::HeaderMap;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn the_aggregator_is_believed() {
        let ca = ca("front-proxy-ca");
        let proxy =
            FrontProxy::from_config_map(&front_proxy_data(&ca.pem, &["front-proxy-client"]))
                .expect("valid")
                .expect("configured");
        let cert = client_cert(&ca, "front-proxy-client");
        let user = proxy
            .authenticate(
                std::slice::from_ref(&cert.der),
                &headers(&[
                    (
                        "x-remote-user",
                        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                    ),
                    ("x-remote-group", "system:serviceaccounts"),
                    ("x-remote-group", "system:authenticated"),
                    ("x-remote-extra-scopes", "a"),
                    ("x-remote-extra-scopes", "b"),
                    (
                        "x-remote-extra-authentication.kubernetes.io%2fpod-name",
                        "p",
                    ),
                ]),
                UnixTime::now(),
            )
            .expect("authenticated");
        assert_eq!(
            user.name,
            "system:serviceaccount:kube-system:horizontal-pod-autoscaler"
        );
        assert_eq!(
            user.groups,
            ["system:serviceaccounts", "system:authenticated"]
        );
        assert_eq!(user.extra["scopes"], ["a", "b"]);
        assert_eq!(user.extra["authentication.kubernetes.io/pod-name"], ["p"]);
    }

    #[test]
    fn everything_else_is_unauthenticated() {
        let ca1 = ca("front-proxy-ca");
        let proxy =
            FrontProxy::from_config_map(&front_proxy_data(&ca1.pem, &["front-proxy-client"]))
                .expect("valid")
                .expect("configured");
        let user = headers(&[
            ("x-remote-user", "admin"),
            ("x-remote-group", "system:masters"),
        ]);
        let now = UnixTime::now();
        assert_eq!(
            proxy.authenticate(&[], &user, now),
            Err(Unauthenticated::NoCertificate)
        );
        // Signed by another CA (say, the cluster's client CA: a user's own certificate).
        let other = client_cert(&ca("someone-else"), "front-proxy-client");
        assert!(matches!(
            proxy.authenticate(std::slice::from_ref(&other.der), &user, now),
            Err(Unauthenticated::Untrusted(_))
        ));
        // Signed by the CA, but not an allowed name.
        let wrong = client_cert(&ca1, "mallory");
        assert_eq!(
            proxy.authenticate(std::slice::from_ref(&wrong.der), &user, now),
            Err(Unauthenticated::NameNotAllowed("mallory".into()))
        );
        // Right certificate, no user.
        let right = client_cert(&ca1, "front-proxy-client");
        assert_eq!(
            proxy.authenticate(std::slice::from_ref(&right.der), &headers(&[]), now),
            Err(Unauthenticated::NoUser)
        );
        // Expired.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(4_000_000_000));
        assert!(matches!(
            proxy.authenticate(std::slice::from_ref(&right.der), &user, later),
            Err(Unauthenticated::Untrusted(_))
        ));
    }

    #[test]
    fn any_name_when_no_names_are_listed_and_bad_config_maps() {
        let ca1 = ca("front-proxy-ca");
        let proxy = FrontProxy::from_config_map(&front_proxy_data(&ca1.pem, &[]))
            .expect("valid")
            .expect("configured");
        let any = client_cert(&ca1, "whoever");
        let user = headers(&[("x-remote-user", "u")]);
        assert!(proxy
            .authenticate(std::slice::from_ref(&any.der), &user, UnixTime::now())
            .is_ok());
        assert_eq!(FrontProxy::from_config_map(&BTreeMap::new()), Ok(None));
        let mut bad = front_proxy_data(&ca1.pem, &[]);
        bad.insert("requestheader-allowed-names".into(), "not json".into());
        assert!(FrontProxy::from_config_map(&bad).is_err());
        let mut empty = front_proxy_data(&ca1.pem, &[]);
        empty.insert("requestheader-client-ca-file".into(), "no pem here".into());
        assert!(FrontProxy::from_config_map(&empty).is_err());
        assert_eq!(
            FrontProxyConfig::default().get().err(),
            Some(Unauthenticated::NotConfigured)
        );
    }
}
