//! The operator's one reader of every gateway pod's `chatgateway_connections`: watches of
//! the gateway pods and the ChatGateways, and the [`scrape`] loop over them.
//! The custom metrics API serves its readings to the HPA, and the pod-deletion cost
//! (`crate::deletion_cost`) ranks pods by the same numbers, so each pod is read once per
//! interval however many features use the count.
//!
//! It runs on every replica that serves the custom metrics API (any replica may answer the
//! aggregator); without that API, only the leader starts it, for the deletion cost.

use super::scrape::{self, Values};
use crate::crd::ChatGateway;
use crate::metrics::Metrics;
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Label every gateway pod carries (the operator's selector labels).
pub const POD_LABEL: &str = "app.kubernetes.io/name=chat-gateway";
/// Shortest scrape interval accepted.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// The readings and the caches they come from; the watches and the scraper stop when it
/// is dropped.
pub struct Readings {
    values: Values,
    pods: Store<Pod>,
    gateways: Store<ChatGateway>,
    tasks: Vec<JoinHandle<()>>,
}

impl Readings {
    /// Starts watching and reading every `interval`; registers
    /// `chatgateway_operator_pod_scrapes_total` in `metrics`.
    pub fn start(
        client: Client,
        interval: Duration,
        metrics: &Metrics,
    ) -> anyhow::Result<Readings> {
        anyhow::ensure!(
            interval >= MIN_INTERVAL,
            "the scrape interval must be at least {MIN_INTERVAL:?} (got {interval:?})"
        );
        let scrapes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "chatgateway_operator_pod_scrapes_total",
                "Reads of gateway pods' /metrics, by outcome (ok, error).",
            ),
            &["outcome"],
        )?;
        metrics
            .registry
            .register(Box::new(scrapes.clone()))
            .context("registering chatgateway_operator_pod_scrapes_total")?;
        // Stale after three missed rounds: answers then say "unknown", never old numbers.
        let values = Values::new(scrape::max_age(interval));
        let (pods, pod_writer) = reflector::store::<Pod>();
        let (gateways, gateway_writer) = reflector::store::<ChatGateway>();
        let pod_watch = watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(POD_LABEL),
        )
        .default_backoff()
        .reflect(pod_writer)
        .for_each(|_| futures::future::ready(()));
        let gateway_watch = watcher(Api::<ChatGateway>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(gateway_writer)
            .for_each(|_| futures::future::ready(()));
        let scraper = {
            let (pods, gateways, values) = (pods.clone(), gateways.clone(), values.clone());
            async move {
                // The first round waits for both caches: an empty cache is not "no pods".
                if pods.wait_until_ready().await.is_err()
                    || gateways.wait_until_ready().await.is_err()
                {
                    return;
                }
                scrape::run(pods, gateways, values, interval, scrapes).await;
            }
        };
        Ok(Readings {
            values,
            pods,
            gateways,
            tasks: vec![
                tokio::spawn(pod_watch),
                tokio::spawn(gateway_watch),
                tokio::spawn(scraper),
            ],
        })
    }

    /// The latest round (empty once stale).
    pub fn values(&self) -> Values {
        self.values.clone()
    }

    /// The gateway pods as last watched (labels, readiness, annotations).
    pub fn pods(&self) -> Store<Pod> {
        self.pods.clone()
    }

    /// The ChatGateways as last watched.
    pub fn gateways(&self) -> Store<ChatGateway> {
        self.gateways.clone()
    }
}

impl Drop for Readings {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
