//! The custom metrics API (`custom.metrics.k8s.io`, `v1beta1` and `v1beta2`), served by
//! the operator as an aggregated API: an HPA scales a ChatGateway on
//! `chatgateway_connections` with nothing else installed.
//!
//! One job per module:
//! - [`scrape`]: finds the running pods of every ChatGateway and reads their gauge
//!   ([`gauge`]: one pod's, over HTTP);
//! - [`readings`]: the watches and the scrape loop, the operator's one reader of the
//!   gauge (the pod-deletion cost uses the same readings);
//! - [`api`] (with [`selector`]): discovery documents and metric lists;
//! - [`authn`]: the API server's front-proxy client certificate and the user it names;
//! - [`authz`]: a SubjectAccessReview for that user;
//! - [`certs`]: the CA and serving certificate, renewed and rotated before expiry;
//! - [`tls`]: the TLS configuration, reloaded from the Secret;
//! - [`apiservice`]: the leader's upkeep of that Secret and of the APIServices' caBundle;
//! - [`server`]: the HTTPS listener that runs a request through all of the above;
//! - [`report`]: `status.connections` and Events on the ChatGateways.
//!
//! Every replica serves, the same data: each reads the pods itself ([`readings`]) and
//! serves the certificate from the shared Secret, so the Service behind the APIService can
//! route to any ready replica and the HPA keeps its metric through a leader hand-over. Only
//! the leader writes (the Secret, the caBundle, the status).

pub mod api;
pub mod apiservice;
pub mod authn;
pub mod authz;
pub mod certs;
pub mod gauge;
pub mod readings;
pub mod report;
pub mod scrape;
pub mod selector;
pub mod server;
pub mod tls;

#[cfg(test)]
pub(crate) mod testing;

use crate::builders::FIELD_MANAGER;
use crate::crd::ChatGateway;
use crate::metrics::Metrics;
use anyhow::Context as _;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::Client;
use readings::Readings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Command-line settings (`chat-gateway-operator run --custom-metrics-*`).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Serve custom.metrics.k8s.io over TLS on this address (e.g. 0.0.0.0:6443); unset:
    /// the API is not served.
    #[arg(long = "custom-metrics-addr", env = "OPERATOR_CUSTOM_METRICS_ADDR")]
    pub addr: Option<SocketAddr>,
    /// The Service (in the operator's namespace) the APIServices point at; names the
    /// serving certificate.
    #[arg(
        long = "custom-metrics-service",
        env = "OPERATOR_CUSTOM_METRICS_SERVICE",
        default_value = "chatgateway-operator-custom-metrics"
    )]
    pub service: String,
    /// The Secret (operator's namespace) holding the CA and serving certificate.
    #[arg(
        long = "custom-metrics-secret",
        env = "OPERATOR_CUSTOM_METRICS_SECRET",
        default_value = "chatgateway-operator-custom-metrics-tls"
    )]
    pub secret: String,
    /// APIServices whose caBundle the operator keeps (only while they point at the Service).
    #[arg(
        long = "custom-metrics-apiservices",
        value_delimiter = ',',
        default_value = "v1beta1.custom.metrics.k8s.io,v1beta2.custom.metrics.k8s.io"
    )]
    pub api_services: Vec<String>,
    /// How often every gateway pod's /metrics is read (for the custom metrics API and the
    /// pod-deletion cost; without the API only the leader reads, for the cost).
    #[arg(long = "custom-metrics-scrape-interval", default_value = "5s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
    /// Lifetime of the CA in the APIServices' caBundle (rotated with a third left).
    #[arg(long = "custom-metrics-ca-validity", default_value = "365days", value_parser = humantime::parse_duration)]
    pub ca_validity: Duration,
    /// Lifetime of the serving certificate (renewed with a third left); at most a third
    /// of the CA's.
    #[arg(long = "custom-metrics-cert-validity", default_value = "90days", value_parser = humantime::parse_duration)]
    pub cert_validity: Duration,
}

impl Args {
    /// Refuses settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.scrape_interval >= readings::MIN_INTERVAL,
            "--custom-metrics-scrape-interval must be at least 500ms"
        );
        anyhow::ensure!(
            self.cert_validity >= Duration::from_secs(30),
            "--custom-metrics-cert-validity must be at least 30s"
        );
        anyhow::ensure!(
            self.cert_validity <= self.ca_validity / 3,
            "--custom-metrics-cert-validity must be at most a third of --custom-metrics-ca-validity \
             (the CA is rotated with a third of its life left, before the serving certificate needs it)"
        );
        anyhow::ensure!(
            !self.service.is_empty(),
            "--custom-metrics-service is empty"
        );
        Ok(())
    }

    /// How often the leader checks the certificates and caBundle.
    fn upkeep_every(&self) -> Duration {
        (self.cert_validity / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Metrics of this module, registered in the operator's registry.
#[derive(Clone)]
struct Counters {
    requests: prometheus::IntCounterVec,
    apiservices: prometheus::IntGaugeVec,
}

impl Counters {
    fn register(metrics: &Metrics) -> anyhow::Result<Counters> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "chatgateway_operator_custom_metrics_requests_total",
                "Custom metrics API requests answered, by HTTP status.",
            ),
            &["code"],
        )?;
        let apiservices = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "chatgateway_operator_custom_metrics_apiservice",
                "1 for the provider each custom metrics APIService has (operator, other, missing).",
            ),
            &["apiservice", "provider"],
        )?;
        metrics.registry.register(Box::new(requests.clone()))?;
        metrics.registry.register(Box::new(apiservices.clone()))?;
        Ok(Counters {
            requests,
            apiservices,
        })
    }
}

/// The custom metrics API of one replica; its tasks stop when it is dropped.
pub struct CustomMetrics {
    client: Client,
    args: Args,
    namespace: String,
    serving: Arc<tls::ServingCert>,
    values: scrape::Values,
    gateways: Store<ChatGateway>,
    counters: Counters,
    tasks: Vec<JoinHandle<()>>,
}

impl CustomMetrics {
    /// Binds the listener and starts what every replica runs besides the `readings`:
    /// following the Secret and the front-proxy settings, serving.
    pub async fn start(
        client: Client,
        args: &Args,
        namespace: &str,
        metrics: &Metrics,
        readings: &Readings,
    ) -> anyhow::Result<CustomMetrics> {
        args.validate()?;
        let addr = args.addr.context("--custom-metrics-addr is not set")?;
        let counters = Counters::register(metrics).context("registering metrics")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let serving = Arc::new(tls::ServingCert::default());
        let tls_config = Arc::new(tls::server_config(serving.clone())?);
        let (values, gateways) = (readings.values(), readings.gateways());

        let front_proxy = authn::FrontProxyConfig::default();
        let state = Arc::new(server::State {
            front_proxy: front_proxy.clone(),
            authorizer: authz::Authorizer::new(client.clone()),
            values: values.clone(),
            requests: counters.requests.clone(),
        });
        tracing::info!(%addr, service = %args.service, "serving custom.metrics.k8s.io (chatgateway_connections)");
        let tasks = vec![
            tokio::spawn(front_proxy.refresh(client.clone(), Duration::from_secs(30))),
            tokio::spawn(tls::follow_secret(
                client.clone(),
                namespace.to_string(),
                args.secret.clone(),
                serving.clone(),
                Duration::from_secs(5),
            )),
            tokio::spawn(server::serve(listener, tls_config, state)),
        ];
        Ok(CustomMetrics {
            client,
            args: args.clone(),
            namespace: namespace.to_string(),
            serving,
            values,
            gateways,
            counters,
            tasks,
        })
    }

    /// Whether this replica can serve (its certificate is loaded and its readings are
    /// fresh): the operator's /readyz, so the Service routes only to replicas that can
    /// answer.
    pub fn is_ready(&self) -> bool {
        ready(&self.serving, &self.values)
    }

    /// A readiness check to hand to the HTTP endpoints.
    pub fn readiness(&self) -> impl Fn() -> bool + Clone + Send + Sync + 'static {
        let (serving, values) = (self.serving.clone(), self.values.clone());
        move || ready(&serving, &values)
    }

    /// Starts the leader's jobs (Secret, caBundle, status, Events published as
    /// `identity`); they stop when the returned handle is dropped, at the end of the term.
    pub fn lead(&self, identity: &str) -> Leading {
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity.to_string()),
            },
        );
        let providers = apiservice::Providers::default();
        let upkeep = apiservice::Upkeep::new(
            self.client.clone(),
            &self.namespace,
            &self.args.secret,
            &self.args.service,
            self.args.api_services.clone(),
            certs::Policy {
                ca_validity: self.args.ca_validity,
                cert_validity: self.args.cert_validity,
                dns_names: certs::Policy::service_names(&self.args.service, &self.namespace),
            },
            providers.clone(),
            self.counters.apiservices.clone(),
        );
        let every = self.args.upkeep_every();
        let report = report::run(
            self.client.clone(),
            self.gateways.clone(),
            self.values.clone(),
            providers,
            Some(recorder),
            (self.args.scrape_interval * 3).max(Duration::from_secs(15)),
        );
        Leading(vec![tokio::spawn(upkeep.run(every)), tokio::spawn(report)])
    }
}

/// Ready to serve: the certificate is loaded and a scrape round has published within the
/// snapshot's max age. Without the second, a replica joining the Service during a rollout
/// answers the HPA empty lists until its first round ends (`FailedGetPodsMetric`, nothing
/// scales for a cycle or two). A round that found no gateway pods publishes too, so a
/// cluster without ChatGateways still gets a ready operator, as soon as its watches have
/// listed the pods and gateways; rounds are bounded ([`scrape::round_budget`]), so a
/// running scraper keeps it ready however slow the pods are.
fn ready(serving: &tls::ServingCert, values: &scrape::Values) -> bool {
    serving.is_loaded() && values.is_fresh()
}

impl Drop for CustomMetrics {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The leader's custom metrics jobs; aborted on drop.
pub struct Leading(Vec<JoinHandle<()>>);

impl Drop for Leading {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// Ready once the certificate is loaded and the readings published, not before.
    #[test]
    fn ready_with_a_certificate_and_a_published_round() {
        let material = certs::renew(
            None,
            &certs::Policy {
                ca_validity: Duration::from_secs(3600),
                cert_validity: Duration::from_secs(1200),
                dns_names: certs::Policy::service_names("cm", "ops"),
            },
            std::time::SystemTime::now(),
            true,
        )
        .expect("issue")
        .expect("material")
        .material;
        let serving = tls::ServingCert::default();
        let values = scrape::Values::new(Duration::from_secs(60));
        values.set(scrape::Snapshot::default());
        assert!(!ready(&serving, &values), "no certificate yet");
        serving
            .set(&material.cert, &material.key)
            .expect("usable pair");
        let never = scrape::Values::new(Duration::from_secs(60));
        assert!(!ready(&serving, &never), "no round published yet");
        // A round that found no gateway pods at all counts.
        never.set(scrape::Snapshot::default());
        assert!(ready(&serving, &never));
        assert!(ready(&serving, &values));
        let stale = scrape::Values::new(Duration::ZERO);
        stale.set(scrape::Snapshot::default());
        std::thread::sleep(Duration::from_millis(5));
        assert!(!ready(&serving, &stale), "the scraper stopped");
    }

    #[test]
    fn defaults_and_validation() {
        let cli = Cli::parse_from(["x"]);
        assert!(cli.args.addr.is_none(), "off unless asked for");
        assert_eq!(cli.args.api_services.len(), 2);
        assert_eq!(cli.args.scrape_interval, Duration::from_secs(5));
        cli.args.validate().expect("defaults are valid");
        assert_eq!(cli.args.upkeep_every(), Duration::from_secs(60));
        let bad = Cli::parse_from(["x", "--custom-metrics-cert-validity", "200days"]);
        assert!(
            bad.args.validate().is_err(),
            "longer than a third of the CA's life"
        );
        let short = Cli::parse_from([
            "x",
            "--custom-metrics-ca-validity",
            "3m",
            "--custom-metrics-cert-validity",
            "1m",
        ]);
        short.args.validate().expect("short lifetimes for tests");
        assert_eq!(short.args.upkeep_every(), Duration::from_secs(3));
    }
}
