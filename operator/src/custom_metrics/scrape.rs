//! Reads `chatgateway_connections` from the gateway pods themselves.
//!
//! Why scrape `/metrics` rather than read the Redis node registry: gateways on the memory
//! engine have no Redis at all, the operator holds no Redis credentials (the URL lives in
//! the user's Secret, mounted only into gateway pods), and the pod's own gauge is the
//! number the Prometheus path reports too, so both paths show the same value. Every
//! running pod of every ChatGateway is read each interval (seconds), concurrently, with a
//! short timeout; a pod that cannot be read is recorded as unread and left out of every
//! answer, never reported as 0.
//!
//! A round never outlives the snapshot it replaces. Pods whose address stops answering
//! (their node lost) each cost a whole timeout, and enough of them would make a round
//! longer than [`max_age`]: every list would then be empty until it ended, for every HPA.
//! So a round publishes what it has after [`round_budget`], reads the pods that answered
//! last time before the others, keeps the previous reading of a pod it did not get to,
//! and skips a pod that timed out for a few rounds ([`MAX_SKIPPED_ROUNDS`]).

use super::gauge::read_connections;
pub use super::gauge::{parse_connections, ScrapeError, GAUGE};
use crate::builders::{Owner, HTTP_PORT, LABEL_INSTANCE};
use crate::crd::ChatGateway;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Pods read at the same time.
const CONCURRENCY: usize = 64;
/// Longest a pod whose reads keep timing out goes unasked, in rounds (a minute at the
/// default 5 s): the skips double per consecutive timeout up to this, so pods on a lost
/// node stop costing a timeout each round, and one whose node came back is read again
/// within a minute.
pub const MAX_SKIPPED_ROUNDS: u32 = 12;

/// How long one pod may take to answer: a round should not wait longer than its interval
/// for one pod, and a gateway answers /metrics in milliseconds.
pub fn read_timeout(interval: Duration) -> Duration {
    interval.min(Duration::from_secs(3))
}

/// How long a round reads before it publishes what it has: two intervals, so a round
/// gets at least one [`read_timeout`] in (a pod that does not answer is then known to
/// time out and skipped next round) and publishes are at most interval + budget = three
/// intervals apart, less than [`max_age`].
pub fn round_budget(interval: Duration) -> Duration {
    interval * 2
}

/// How old the last publish may be before nothing is served: three missed rounds and 3 s
/// to spare. Rounds that run publish more often than this (see [`round_budget`]), so
/// only a scraper that stopped makes the snapshot stale.
pub fn max_age(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(3)
}

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

    /// Whether a snapshot was published within `max_age`, one that found no pods
    /// included: what [`current`](Values::current) serves is then the scrape's, not the
    /// empty stand-in.
    pub fn is_fresh(&self) -> bool {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        guard.1.is_some_and(|t| t.elapsed() <= self.max_age)
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

/// Reads `targets` in order, [`CONCURRENCY`] at a time, for at most `budget`: the answer
/// of each, `None` for those not answered by then (not started, or still waiting).
async fn read_all(
    targets: &[Target],
    timeout: Duration,
    budget: Duration,
) -> Vec<Option<Result<u64, ScrapeError>>> {
    let mut answers: Vec<_> = std::iter::repeat_with(|| None)
        .take(targets.len())
        .collect();
    // Owned addresses: a stream of futures borrowing `targets` is not `Send` for
    // `tokio::spawn` (higher-ranked lifetimes).
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let mut reads = futures::stream::iter(addrs.into_iter().enumerate())
        .map(|(i, addr)| async move { (i, read_connections(addr, timeout).await) })
        .buffer_unordered(CONCURRENCY);
    // Dropping the stream at the budget cancels the reads still waiting.
    let _ = tokio::time::timeout(budget, async {
        while let Some((i, answer)) = reads.next().await {
            answers[i] = Some(answer);
        }
    })
    .await;
    answers
}

/// What the scraper remembers of a pod from the rounds before.
enum Last {
    /// Read: the reading and when, kept for a round that does not get to the pod.
    Read {
        connections: u64,
        at: Timestamp,
        when: Instant,
    },
    /// Failed `timeouts` consecutive times by timing out (0: failed otherwise); not
    /// asked again for `skip` more rounds.
    Failed { timeouts: u32, skip: u32 },
}

impl Last {
    /// Reading order: pods that answered last time first, so pods that stopped answering
    /// cannot crowd them out of a round's budget; then new pods, then failing ones.
    fn rank(last: Option<&Last>) -> u8 {
        match last {
            Some(Last::Read { .. }) => 0,
            None => 1,
            Some(Last::Failed { .. }) => 2,
        }
    }

    /// After a failed read: a timeout skips the next 1, 2, 4, ... rounds (at most
    /// [`MAX_SKIPPED_ROUNDS`]); a quick failure (refused, 404) costs nothing to retry.
    fn failed(previous: Option<&Last>, timed_out: bool) -> Last {
        let before = match previous {
            Some(Last::Failed { timeouts, .. }) => *timeouts,
            _ => 0,
        };
        if !timed_out {
            return Last::Failed {
                timeouts: 0,
                skip: 0,
            };
        }
        let timeouts = before.saturating_add(1);
        let skip = 1u32
            .checked_shl(timeouts - 1)
            .unwrap_or(u32::MAX)
            .min(MAX_SKIPPED_ROUNDS);
        Last::Failed { timeouts, skip }
    }
}

type Key = (String, String);

fn key(sample: &PodSample) -> Key {
    (sample.namespace.clone(), sample.name.clone())
}

/// One round: reads `targets` (in the order of [`Last::rank`], skipping pods in their
/// back-off) within `budget`, updates `memory`, and returns every target's sample.
async fn round(
    targets: Vec<Target>,
    memory: &mut HashMap<Key, Last>,
    timeout: Duration,
    budget: Duration,
    max_age: Duration,
    scrapes: &prometheus::IntCounterVec,
) -> Vec<PodSample> {
    let current: HashSet<Key> = targets.iter().map(|t| key(&t.sample)).collect();
    memory.retain(|k, _| current.contains(k));
    let mut samples = Vec::with_capacity(targets.len());
    let mut to_read = Vec::with_capacity(targets.len());
    for t in targets {
        match memory.get_mut(&key(&t.sample)) {
            Some(Last::Failed { skip, .. }) if *skip > 0 => {
                *skip -= 1;
                samples.push(t.sample); // unread
            }
            _ => to_read.push(t),
        }
    }
    to_read.sort_by_key(|t| Last::rank(memory.get(&key(&t.sample))));
    let answers = read_all(&to_read, timeout, budget).await;
    let mut unanswered = 0usize;
    for (t, answer) in to_read.into_iter().zip(answers) {
        let mut sample = t.sample;
        let k = key(&sample);
        let pod = || format!("{}/{}", k.0, k.1);
        match answer {
            Some(Ok(n)) => {
                scrapes.with_label_values(&["ok"]).inc();
                if matches!(memory.get(&k), Some(Last::Failed { .. })) {
                    tracing::info!(pod = %pod(), "gateway pod readable again");
                }
                sample.connections = Some(n);
                let (at, when) = (sample.at, Instant::now());
                let read = Last::Read {
                    connections: n,
                    at,
                    when,
                };
                memory.insert(k, read);
            }
            Some(Err(e)) => {
                scrapes.with_label_values(&["error"]).inc();
                let previous = memory.get(&k);
                if !matches!(previous, Some(Last::Failed { .. })) {
                    tracing::warn!(pod = %pod(), error = %e,
                        "cannot read {GAUGE} from a gateway pod; it is left out of the custom metrics API until it answers");
                }
                let next = Last::failed(previous, matches!(e, ScrapeError::Timeout(_)));
                memory.insert(k, next);
            }
            None => {
                // Not the pod's fault: the round ran out of time. Its reading from a
                // round before stands while it is younger than a snapshot may be.
                unanswered += 1;
                if let Some(Last::Read {
                    connections,
                    at,
                    when,
                }) = memory.get(&k)
                {
                    if when.elapsed() <= max_age {
                        (sample.connections, sample.at) = (Some(*connections), *at);
                    }
                }
            }
        }
        samples.push(sample);
    }
    if unanswered > 0 {
        tracing::warn!(
            unanswered,
            ?budget,
            "a scrape round ran out of time: the pods it did not get to keep their last reading"
        );
    }
    samples.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    samples
}

/// Scrapes every `interval` until dropped, publishing each round into `values`.
pub async fn run(
    pods: Store<Pod>,
    gateways: Store<ChatGateway>,
    values: Values,
    interval: Duration,
    scrapes: prometheus::IntCounterVec,
) {
    let (timeout, budget) = (read_timeout(interval), round_budget(interval));
    let mut memory = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let at = Timestamp::now();
        let (targets, known) = targets(&pods.state(), &gateways.state(), at);
        let samples = round(
            targets,
            &mut memory,
            timeout,
            budget,
            max_age(interval),
            &scrapes,
        )
        .await;
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
