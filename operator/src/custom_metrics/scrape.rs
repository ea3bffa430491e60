//! Reads `chatgateway_connections` from the gateway pods themselves.
//!
//! Why scrape `/metrics` rather than read the Redis node registry: gateways on the memory
//! engine have no Redis at all, the operator holds no Redis credentials (the URL lives in
//! the user's Secret, mounted only into gateway pods), and the pod's own gauge is the
//! number the Prometheus path reports too, so both paths show the same value. Every
//! running pod of every ChatGateway is read each interval (seconds), concurrently, with a
//! short timeout; a pod that cannot be read is recorded as unread and left out of every
//! answer, never reported as 0.

use crate::builders::{Owner, HTTP_PORT, LABEL_INSTANCE};
use crate::crd::ChatGateway;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The gauge read from each pod.
pub const GAUGE: &str = "chatgateway_connections";
/// Largest /metrics body read (a gateway's is a few KiB).
const MAX_BODY: usize = 4 << 20;
/// Pods read at the same time.
const CONCURRENCY: usize = 64;

/// One gateway pod as the last scrape saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSample {
    /// Namespace of the pod.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// The ChatGateway it belongs to.
    pub gateway: String,
    /// The pod's labels (for `labelSelector`).
    pub labels: BTreeMap<String, String>,
    /// `chatgateway_connections`; `None` when the pod could not be read.
    pub connections: Option<u64>,
    /// When it was read.
    pub at: Timestamp,
}

/// A ChatGateway known at the last scrape.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewaySample {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The ChatGateway's labels (for `labelSelector` on the object metric).
    pub labels: BTreeMap<String, String>,
}

/// Everything one scrape round learned.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Running pods of every ChatGateway, read or not.
    pub pods: Vec<PodSample>,
    /// Every ChatGateway.
    pub gateways: Vec<GatewaySample>,
    /// When the round started.
    pub at: Timestamp,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            pods: Vec::new(),
            gateways: Vec::new(),
            at: Timestamp::UNIX_EPOCH,
        }
    }
}

/// Connections of one ChatGateway, as the status shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Pods read.
    pub read: u32,
    /// Running pods that could not be read.
    pub unread: u32,
    /// Sum over the pods read.
    pub total: u64,
}

impl Snapshot {
    /// Read and unread pods of a gateway and the sum over those read.
    pub fn summary(&self, namespace: &str, gateway: &str) -> Summary {
        let mut s = Summary::default();
        for p in self
            .pods
            .iter()
            .filter(|p| p.namespace == namespace && p.gateway == gateway)
        {
            match p.connections {
                Some(n) => {
                    s.read += 1;
                    s.total += n;
                }
                None => s.unread += 1,
            }
        }
        s
    }

    /// The gateway's total, only when it is known and complete: `None` when the gateway is
    /// unknown or any of its running pods could not be read (an undercount would look
    /// like load going away).
    pub fn total(&self, namespace: &str, gateway: &str) -> Option<u64> {
        self.gateways
            .iter()
            .any(|g| g.namespace == namespace && g.name == gateway)
            .then(|| self.summary(namespace, gateway))
            .filter(|s| s.unread == 0)
            .map(|s| s.total)
    }
}

/// The latest snapshot, shared between the scraper and the API; stale ones are not served.
#[derive(Clone)]
pub struct Values {
    inner: Arc<RwLock<(Arc<Snapshot>, Option<Instant>)>>,
    max_age: Duration,
}

impl Values {
    /// An empty store whose snapshots count as current for `max_age`.
    pub fn new(max_age: Duration) -> Values {
        Values {
            inner: Arc::new(RwLock::new((Arc::new(Snapshot::default()), None))),
            max_age,
        }
    }

    /// Replaces the snapshot.
    pub fn set(&self, snapshot: Snapshot) {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *guard = (Arc::new(snapshot), Some(Instant::now()));
    }

    /// The last snapshot, or an empty one when it is older than `max_age`: a scraper
    /// that stopped making progress must not keep serving old numbers.
    pub fn current(&self) -> Arc<Snapshot> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match guard.1 {
            Some(t) if t.elapsed() <= self.max_age => guard.0.clone(),
            _ => Arc::new(Snapshot::default()),
        }
    }
}

/// A pod to read and where its gauge is served.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The sample to fill in (connections still `None`).
    pub sample: PodSample,
    /// Pod IP and the port of its `http` container port.
    pub addr: SocketAddr,
}

/// The running pods of every ChatGateway (matched by the gateway's own selector labels)
/// and the gateways themselves.
pub fn targets(
    pods: &[Arc<Pod>],
    gateways: &[Arc<ChatGateway>],
    at: Timestamp,
) -> (Vec<Target>, Vec<GatewaySample>) {
    let mut selectors = HashMap::new();
    let mut known = Vec::new();
    for g in gateways {
        let (Some(namespace), Some(name)) = (g.namespace(), g.metadata.name.clone()) else {
            continue;
        };
        let owner = Owner {
            name: name.clone(),
            namespace: namespace.clone(),
            reference: None,
        };
        selectors.insert((namespace.clone(), name.clone()), owner.selector_labels());
        known.push(GatewaySample {
            namespace,
            name,
            labels: g.labels().clone(),
        });
    }
    let mut out = Vec::new();
    for pod in pods {
        let (Some(namespace), Some(name)) = (pod.namespace(), pod.metadata.name.clone()) else {
            continue;
        };
        let labels = pod.labels();
        let Some(gateway) = labels.get(LABEL_INSTANCE) else {
            continue;
        };
        let Some(selector) = selectors.get(&(namespace.clone(), gateway.clone())) else {
            continue;
        };
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            continue;
        }
        let Some(addr) = scrape_addr(pod) else {
            continue;
        };
        out.push(Target {
            sample: PodSample {
                namespace,
                name,
                gateway: gateway.clone(),
                labels: labels.clone(),
                connections: None,
                at,
            },
            addr,
        });
    }
    out.sort_by(|a, b| {
        (&a.sample.namespace, &a.sample.name).cmp(&(&b.sample.namespace, &b.sample.name))
    });
    (out, known)
}

/// Where a running pod serves /metrics: its IP and the container port named `http`
/// (the gateway's port, 8080 unless a spec says otherwise). Pods that are not running
/// or have no IP yet serve nothing and are not part of any answer.
fn scrape_addr(pod: &Pod) -> Option<SocketAddr> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("http"))
        .map_or(HTTP_PORT, |p| p.container_port);
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// Why a pod could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("connecting: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// Answered, but not 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Answered 200 without the gauge.
    #[error("no {GAUGE} sample in the response")]
    NoGauge,
}

/// `GET http://addr/metrics` and the gauge's value.
pub async fn read_connections(addr: SocketAddr, timeout: Duration) -> Result<u64, ScrapeError> {
    tokio::time::timeout(timeout, async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| ScrapeError::Http(e.to_string()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| ScrapeError::Http(e.to_string()))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(ScrapeError::Status(response.status().as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| ScrapeError::Http(e.to_string()))?
                .to_bytes();
            parse_connections(&String::from_utf8_lossy(&body)).ok_or(ScrapeError::NoGauge)
        }
        .await;
        conn.abort();
        result
    })
    .await
    .map_err(|_| ScrapeError::Timeout(timeout))?
}

/// The unlabelled `chatgateway_connections` sample in Prometheus text; `None` when it is
/// missing or not a non-negative whole number.
pub fn parse_connections(text: &str) -> Option<u64> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(GAUGE)?;
            let rest = rest.strip_prefix("{}").unwrap_or(rest);
            if !rest.starts_with([' ', '\t']) {
                return None; // another metric with this prefix, or labels
            }
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9.0e15)
                .then_some(value as u64)
        })
}

/// Reads every target once; unread pods keep `connections: None`.
pub async fn scrape_round(
    targets: Vec<Target>,
    timeout: Duration,
) -> Vec<(PodSample, Option<ScrapeError>)> {
    futures::stream::iter(targets)
        .map(|t| async move {
            let mut sample = t.sample;
            match read_connections(t.addr, timeout).await {
                Ok(n) => {
                    sample.connections = Some(n);
                    (sample, None)
                }
                Err(e) => (sample, Some(e)),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// Scrapes every `interval` until dropped, publishing each round into `values`.
pub async fn run(
    pods: Store<Pod>,
    gateways: Store<ChatGateway>,
    values: Values,
    interval: Duration,
    scrapes: prometheus::IntCounterVec,
) {
    let timeout = interval.min(Duration::from_secs(3));
    let mut failing: HashSet<(String, String)> = HashSet::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = Timestamp::now();
        let (targets, known) = targets(&pods.state(), &gateways.state(), at);
        let mut samples = Vec::with_capacity(targets.len());
        let mut now_failing = HashSet::new();
        for (sample, error) in scrape_round(targets, timeout).await {
            let key = (sample.namespace.clone(), sample.name.clone());
            match error {
                None => {
                    scrapes.with_label_values(&["ok"]).inc();
                    if failing.contains(&key) {
                        tracing::info!(pod = %format!("{}/{}", key.0, key.1), "gateway pod readable again");
                    }
                }
                Some(e) => {
                    scrapes.with_label_values(&["error"]).inc();
                    if !failing.contains(&key) {
                        tracing::warn!(pod = %format!("{}/{}", key.0, key.1), error = %e,
                            "cannot read {GAUGE} from a gateway pod; it is left out of the custom metrics API until it answers");
                    }
                    now_failing.insert(key);
                }
            }
            samples.push(sample);
        }
        failing = now_failing;
        samples.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        values.set(Snapshot {
            pods: samples,
            gateways: known,
            at,
        });
    }
}

#[cfg(test)]
#[path = "scrape_tests.rs"]
mod tests;
