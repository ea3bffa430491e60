//! Leader election on a coordination.k8s.io/v1 Lease: only the holder reconciles.
//!
//! The holder renews the Lease every `renew` interval; another replica takes it over once
//! `renewTime + leaseDurationSeconds` has passed. Writes carry the Lease's resourceVersion,
//! so two candidates can never both win the same round.

use crate::error::Result;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::Duration;

/// One candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    /// A candidate named `identity` for Lease `namespace/name`, held for `duration` per renewal.
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
        }
    }

    /// How often the holder should renew: a third of the lease, so two renewals may fail.
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the Lease; `true` when this candidate holds it afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.identity {
            let held_for = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(seconds),
            ));
            let expired = match &spec.renew_time {
                Some(MicroTime(t)) => *t + held_for < now,
                None => true,
            };
            if !holder.is_empty() && !expired {
                return Ok(false);
            }
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(previous = %holder, identity = %self.identity, "taking over the leader lease");
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Gives the Lease up (on shutdown) so a standby takes over without waiting it out.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
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
        conflict_is_false(
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await,
        )
        .map(|_| ())
    }
}

/// A write that lost a race (409 Conflict, or AlreadyExists on create) means "not leader".
fn conflict_is_false(result: kube::Result<Lease>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::{not_found, ok_with, serve, step};
    use http::{Method, Request, Response};
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
    async fn takes_over_an_expired_lease_with_its_resource_version() {
        let (e, handle) = elector();
        let server = serve(
            handle,
            vec![
                ok_with(Method::GET, LEASE, lease("other", 60)),
                step(Method::PUT, LEASE),
            ],
        );
        assert!(e.try_acquire_or_renew().await.expect("election"));
        let seen = server.await.expect("server");
        let put = &seen[1].1;
        assert_eq!(put["spec"]["holderIdentity"], "me");
        assert_eq!(put["spec"]["leaseTransitions"], 4);
        assert_eq!(
            put["metadata"]["resourceVersion"], "7",
            "optimistic concurrency"
        );
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
