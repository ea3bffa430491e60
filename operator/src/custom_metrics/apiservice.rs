//! The leader's upkeep of the aggregated API: the Secret with the CA and serving
//! certificate (created, renewed, rotated: [`super::certs`]) and the `caBundle` of the
//! APIServices that point at the operator's Service. The `caBundle` is always written
//! before the Secret, so no replica serves a certificate the API server does not trust.
//!
//! The chart creates the APIServices (`v1beta1` and `v1beta2` of `custom.metrics.k8s.io`)
//! so that `helm uninstall` removes them; the operator only writes their `caBundle`
//! (RBAC: `get`/`update` on those two names). An APIService that points elsewhere — say,
//! at prometheus-adapter — belongs to another provider: it is left alone, logged, counted
//! in `chatgateway_operator_custom_metrics_apiservice{provider="other"}` and reported on
//! autoscaled ChatGateways as a Warning Event.

use super::certs::{self, Material, Policy};
use crate::builders::FIELD_MANAGER;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::Client;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Why a pass failed; retried at the next pass.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Generating a certificate failed.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
}

/// Who serves an APIService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    /// It points at the operator's Service: the operator keeps its caBundle.
    Operator,
    /// It does not exist (the chart value is off, or it was deleted).
    Missing,
    /// Someone else: `namespace/service`, or `local` for the API server itself.
    Other(String),
}

impl Provider {
    /// Label value of the provider gauge.
    pub fn label(&self) -> &'static str {
        match self {
            Provider::Operator => "operator",
            Provider::Missing => "missing",
            Provider::Other(_) => "other",
        }
    }
}

/// Last seen provider of each managed APIService, shared with the status reporter.
#[derive(Clone, Default)]
pub struct Providers(Arc<RwLock<BTreeMap<String, Provider>>>);

impl Providers {
    /// The current map.
    pub fn get(&self) -> BTreeMap<String, Provider> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, name: &str, provider: Provider) -> Option<Provider> {
        let mut map = self.0.write().unwrap_or_else(|p| p.into_inner());
        map.insert(name.to_string(), provider)
    }
}

/// What the leader keeps in order.
pub struct Upkeep {
    /// Secrets in the operator's namespace.
    secrets: Api<Secret>,
    apiservices: Api<APIService>,
    namespace: String,
    secret: String,
    service: String,
    names: Vec<String>,
    policy: Policy,
    /// Providers seen, for the reporter and the gauge.
    pub providers: Providers,
    gauge: prometheus::IntGaugeVec,
}

impl Upkeep {
    /// Upkeep of `secret` and the APIServices `names` for the Service `service`, all
    /// in the operator's `namespace`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        namespace: &str,
        secret: &str,
        service: &str,
        names: Vec<String>,
        policy: Policy,
        providers: Providers,
        gauge: prometheus::IntGaugeVec,
    ) -> Upkeep {
        Upkeep {
            secrets: Api::namespaced(client.clone(), namespace),
            apiservices: Api::all(client),
            namespace: namespace.into(),
            secret: secret.into(),
            service: service.into(),
            names,
            policy,
            providers,
            gauge,
        }
    }

    /// One pass at `now`; returns whether the CA was rotated (the next pass should come
    /// soon, to move the serving certificate once the new CA is published).
    pub async fn pass(&self, now: SystemTime) -> Result<bool, UpkeepError> {
        let secret = self.secrets.get_opt(&self.secret).await?;
        let material = secret.as_ref().and_then(material_of);
        let mut live = Vec::new();
        for name in &self.names {
            let found = self.apiservices.get_opt(name).await?;
            let provider = self.provider_of(found.as_ref());
            self.note(name, &provider);
            live.push((name, provider, found));
        }
        let current_ca = material.as_ref().and_then(Material::current_ca);
        // The serving certificate moves to a new CA only once every APIService we keep
        // trusts that CA.
        let published = live
            .iter()
            .filter(|(_, p, _)| *p == Provider::Operator)
            .all(|(_, _, a)| match (bundle_of(a.as_ref()), &current_ca) {
                (Some(bundle), Some(ca)) => certs::parse_bundle(&bundle).contains(ca),
                _ => false,
            });
        let renewal = certs::renew(material.as_ref(), &self.policy, now, published)?;
        let rotated = renewal
            .as_ref()
            .is_some_and(|r| r.reason.contains("CA rotated"));
        let Some(next) = renewal.as_ref().map(|r| &r.material).or(material.as_ref()) else {
            return Ok(rotated);
        };
        // Trust first: the APIServices get the new bundle before any replica can serve a
        // certificate that needs it (the bundle keeps the old CA, so what is served now
        // stays trusted). A failure here leaves the Secret untouched for the next pass.
        for (name, provider, found) in live {
            let Some(mut apiservice) = found.filter(|_| provider == Provider::Operator) else {
                continue;
            };
            if bundle_of(Some(&apiservice)).as_deref() == Some(next.bundle.as_str()) {
                continue;
            }
            // A replace of what was just read (its resourceVersion makes a concurrent
            // change a 409, retried next pass), not a server-side apply: the API server's
            // aggregator before Kubernetes 1.21 cannot apply APIServices.
            if let Some(spec) = apiservice.spec.as_mut() {
                spec.ca_bundle = Some(ByteString(next.bundle.clone().into_bytes()));
            }
            self.apiservices
                .replace(name, &PostParams::default(), &apiservice)
                .await?;
            tracing::info!(apiservice = %name, "caBundle updated");
        }
        if let Some(r) = renewal {
            tracing::info!(secret = %format!("{}/{}", self.namespace, self.secret), reason = %r.reason,
                "custom metrics certificate renewed");
            self.store(secret, &r.material).await?;
        }
        Ok(rotated)
    }

    /// Passes until dropped: every `every`, sooner after a CA rotation; errors are logged
    /// and retried at the next pass.
    pub async fn run(self, every: Duration) {
        loop {
            let wait = match self.pass(SystemTime::now()).await {
                Ok(true) => every.min(Duration::from_secs(5)),
                Ok(false) => every,
                Err(e) => {
                    tracing::warn!(error = %e, "custom metrics certificate upkeep failed; retrying");
                    every.min(Duration::from_secs(10))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn provider_of(&self, found: Option<&APIService>) -> Provider {
        let Some(a) = found else {
            return Provider::Missing;
        };
        match a.spec.as_ref().and_then(|s| s.service.as_ref()) {
            None => Provider::Other("local".into()),
            Some(s) => {
                let ns = s.namespace.clone().unwrap_or_default();
                let name = s.name.clone().unwrap_or_default();
                if ns == self.namespace && name == self.service {
                    Provider::Operator
                } else {
                    Provider::Other(format!("{ns}/{name}"))
                }
            }
        }
    }

    /// Records and logs a provider change.
    fn note(&self, name: &str, provider: &Provider) {
        for label in ["operator", "missing", "other"] {
            self.gauge
                .with_label_values(&[name, label])
                .set(i64::from(label == provider.label()));
        }
        if self.providers.set(name, provider.clone()).as_ref() == Some(provider) {
            return;
        }
        match provider {
            Provider::Operator => {
                tracing::info!(apiservice = %name, "serving the custom metrics API through this APIService")
            }
            Provider::Missing => tracing::warn!(apiservice = %name,
                "APIService not installed: HPAs cannot read chatgateway_connections from the operator (chart value customMetrics.enabled)"),
            Provider::Other(other) => tracing::warn!(apiservice = %name, provider = %other,
                "another provider serves this APIService (e.g. prometheus-adapter); leaving it alone: \
                 chatgateway_connections must come from it (docs/operations.md, Autoscaling)"),
        }
    }

    async fn store(&self, existing: Option<Secret>, m: &Material) -> kube::Result<()> {
        let data = m
            .to_data()
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        match existing {
            Some(mut secret) => {
                secret.data = Some(data);
                secret.string_data = None;
                // Carries its resourceVersion: a concurrent writer makes this a 409 and
                // the next pass starts from what is stored.
                self.secrets
                    .replace(&self.secret, &PostParams::default(), &secret)
                    .await?;
            }
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.secret.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([
                            (
                                "app.kubernetes.io/managed-by".to_string(),
                                FIELD_MANAGER.to_string(),
                            ),
                            (
                                "app.kubernetes.io/component".to_string(),
                                "custom-metrics".to_string(),
                            ),
                        ])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                self.secrets.create(&PostParams::default(), &secret).await?;
            }
        }
        Ok(())
    }
}

fn material_of(secret: &Secret) -> Option<Material> {
    let data = secret
        .data
        .clone()?
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Material::from_data(&data)
}

fn bundle_of(a: Option<&APIService>) -> Option<String> {
    let bytes = a?.spec.as_ref()?.ca_bundle.as_ref()?.0.clone();
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
#[path = "apiservice_tests.rs"]
mod tests;
