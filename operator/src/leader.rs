//! Leader election on a coordination.k8s.io/v1 Lease: only the holder reconciles.
//!
//! The holder renews the Lease every `renew` interval. Another replica takes it over once
//! it has seen the same holder record (holder, renewTime) unchanged for
//! `leaseDurationSeconds` on its *own* monotonic clock, as client-go does: the holder's
//! `renewTime` is a wall-clock time written by another machine, and a holder whose clock
//! runs behind would otherwise look expired while it still renews. Writes carry the
//! Lease's resourceVersion, so two candidates can never both win the same round, and every
//! API call has a deadline, so a hung call cannot keep a leader believing it still leads.

use crate::error::{Error, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest Lease `--lease-duration` accepts. A Lease is held for whole seconds, the
/// holder renews every third of it and each API call may take two thirds: under 3 s the
/// Lease rounds to nothing held or the renewals spin against the API server.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(3);

/// `--lease-duration`: a duration such as `15s`, at least [`MIN_LEASE_DURATION`].
pub fn parse_lease_duration(text: &str) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < MIN_LEASE_DURATION {
        return Err(format!(
            "{text} is shorter than {}: a Lease is held for whole seconds and renewed every third of it",
            humantime::format_duration(MIN_LEASE_DURATION)
        ));
    }
    Ok(d)
}

/// One candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    call_timeout: Duration,
    /// Another holder's record as last seen, and when this replica first saw it.
    observed: Mutex<Option<(HolderRecord, Instant)>>,
}

/// What changes when a holder renews: compared, never interpreted as a time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HolderRecord {
    holder: String,
    renew_time: Option<MicroTime>,
    lease_duration_seconds: Option<i32>,
}

impl LeaderElector {
    /// A candidate named `identity` for Lease `namespace/name`, held for `duration` per
    /// renewal. Each API call times out after two thirds of `duration` (the renew deadline,
    /// as client-go's): a slow API server is not a lost lease, a hung call is.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            call_timeout: (duration * 2 / 3).max(Duration::from_millis(100)),
            observed: Mutex::new(None),
        }
    }

    /// The same candidate with another deadline per API call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How often the holder should renew: a third of the lease, so two renewals may fail.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the Lease; `true` when this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        self.try_acquire_or_renew_at(Instant::now()).await
    }

    /// [`Self::try_acquire_or_renew`] with `now` as this replica's monotonic time.
    pub async fn try_acquire_or_renew_at(&self, now: Instant) -> Result<bool> {
        let wall = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.deadline(self.api.get_opt(&self.name)).await?? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(wall)),
                    renew_time: Some(MicroTime(wall)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let params = PostParams::default();
            let created = self.api.create(&params, &lease);
            return conflict_is_false(self.deadline(created).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.identity {
            let record = HolderRecord {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                lease_duration_seconds: spec.lease_duration_seconds,
            };
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(seconds)).unwrap_or(0),
            );
            if !holder.is_empty() && !self.expired(record, held_for, now) {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(wall));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(previous = %holder, identity = %self.identity, "taking over the leader lease");
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(wall));
        let params = PostParams::default();
        let replaced = self.api.replace(&self.name, &params, &lease);
        conflict_is_false(self.deadline(replaced).await)
    }

    /// Whether `record` has stayed the same for `held_for` by this replica's clock; a new
    /// record restarts the count.
    fn expired(&self, record: HolderRecord, held_for: Duration, now: Instant) -> bool {
        // A poisoned lock only loses the observation; starting over is safe (it waits).
        let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => {
                now.saturating_duration_since(*since) >= held_for
            }
            _ => {
                *observed = Some((record, now));
                false
            }
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over without waiting it out.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.deadline(self.api.get_opt(&self.name)).await?? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let params = PostParams::default();
        let replaced = self.api.replace(&self.name, &params, &lease);
        conflict_is_false(self.deadline(replaced).await).map(|_| ())
    }

    /// Runs one API call with the per-call deadline.
    async fn deadline<T>(
        &self,
        call: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| Error::Timeout(format!("lease call took over {:?}", self.call_timeout)))
    }
}

/// A write that lost a race (409 Conflict, or AlreadyExists on create) means "not leader".
fn conflict_is_false(result: Result<kube::Result<Lease>>) -> Result<bool> {
    match result? {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_under_three_seconds_is_refused() {
        assert_eq!(parse_lease_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_lease_duration("3s"), Ok(MIN_LEASE_DURATION));
        for short in ["0s", "2s", "2999ms"] {
            let err = parse_lease_duration(short).expect_err(short);
            assert!(err.contains("shorter than 3s"), "{err}");
        }
        assert!(parse_lease_duration("soon").is_err());
    }
    use crate::reconcile::tests::{not_found, ok_with, serve, step};
    use http::{Method, Request, Response};
    use k8s_openapi::jiff::SignedDuration;
    use kube::client::Body;
    use serde_json::json;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/op";

    fn elector() -> (LeaderElector, crate::reconcile::tests::Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        (
            LeaderElector::new(client, "ops", "op", "me", Duration::from_secs(15)),
            handle,
        )
    }

    fn lease(holder: &str, renewed_secs_ago: i64) -> serde_json::Value {
        let renew = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "op", "namespace": "ops", "resourceVersion": "7"},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                        "renewTime": renew.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "leaseTransitions": 3}})
    }

    #[tokio::test]
    async fn creates_the_lease_when_there_is_none() {
        let (e, handle) = elector();
        let server = serve(
            handle,
            vec![
                not_found(Method::GET, LEASE),
                step(
                    Method::POST,
                    "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
                ),
            ],
        );
        assert!(e.try_acquire_or_renew().await.expect("election"));
        let seen = server.await.expect("server");
        assert_eq!(seen[1].1["spec"]["holderIdentity"], "me");
    }

    #[tokio::test]
    async fn stands_by_while_another_holder_renews() {
        let (e, handle) = elector();
        let server = serve(handle, vec![ok_with(Method::GET, LEASE, lease("other", 2))]);
        assert!(!e.try_acquire_or_renew().await.expect("election"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn takes_over_a_lease_seen_unchanged_for_its_duration() {
        let (e, handle) = elector();
        let stale = lease("other", 60);
        let server = serve(
            handle,
            vec![
                ok_with(Method::GET, LEASE, stale.clone()),
                ok_with(Method::GET, LEASE, stale.clone()),
                ok_with(Method::GET, LEASE, stale),
                step(Method::PUT, LEASE),
            ],
        );
        let t0 = Instant::now();
        // A renewTime a minute old proves nothing about the holder's clock: first watch it.
        assert!(!e.try_acquire_or_renew_at(t0).await.expect("election"));
        assert!(!e
            .try_acquire_or_renew_at(t0 + Duration::from_secs(14))
            .await
            .expect("election"));
        assert!(e
            .try_acquire_or_renew_at(t0 + Duration::from_secs(15))
            .await
            .expect("election"));
        let seen = server.await.expect("server");
        let put = &seen[3].1;
        assert_eq!(put["spec"]["holderIdentity"], "me");
        assert_eq!(put["spec"]["leaseTransitions"], 4);
        assert_eq!(
            put["metadata"]["resourceVersion"], "7",
            "optimistic concurrency"
        );
    }

    #[tokio::test]
    async fn a_holder_whose_clock_lags_keeps_the_lease_while_it_renews() {
        let (e, handle) = elector();
        // Each renewal writes a renewTime far in the past (the holder's clock is behind);
        // what counts is that the record changes.
        let server = serve(
            handle,
            vec![
                ok_with(Method::GET, LEASE, lease("other", 3600)),
                ok_with(Method::GET, LEASE, lease("other", 3590)),
                ok_with(Method::GET, LEASE, lease("other", 3580)),
            ],
        );
        let t0 = Instant::now();
        for step in [0, 10, 20] {
            assert!(
                !e.try_acquire_or_renew_at(t0 + Duration::from_secs(step))
                    .await
                    .expect("election"),
                "taken over at +{step}s from a holder that renews"
            );
        }
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once() {
        let (e, handle) = elector();
        let mut released = lease("", 0);
        released["spec"]
            .as_object_mut()
            .map(|s| s.remove("holderIdentity"));
        let server = serve(
            handle,
            vec![
                ok_with(Method::GET, LEASE, released),
                step(Method::PUT, LEASE),
            ],
        );
        assert!(e.try_acquire_or_renew().await.expect("election"));
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_call_that_hangs_times_out() {
        let (e, mut handle) = elector();
        let e = e.with_call_timeout(Duration::from_millis(200));
        // The fake API server takes the request and never answers.
        let server = tokio::spawn(async move {
            let request = handle.next_request().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(request);
        });
        let err = e.try_acquire_or_renew().await.expect_err("timed out");
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        server.abort();
    }

    #[tokio::test]
    async fn losing_the_race_is_not_leading() {
        let (e, handle) = elector();
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "conflict"});
        let mut put = ok_with(Method::PUT, LEASE, conflict);
        put.status = http::StatusCode::CONFLICT;
        let server = serve(
            handle,
            vec![ok_with(Method::GET, LEASE, lease("me", 1)), put],
        );
        assert!(!e.try_acquire_or_renew().await.expect("election"));
        server.await.expect("server");
    }
}
