//! The rollout strategy: how many new pods start before old ones drain.
//!
//! Every pod that drains sends its clients to reconnect through the Service, which spreads
//! them over all ready pods, old ones included. With a small surge (Kubernetes' default
//! 25 %) most reconnects land on old pods that drain later, and a client can move once per
//! batch. With every new pod up before any old pod drains (surge-all), the old pods all
//! drain at once and their clients can only land on new pods: each client moves once.
//! Surge-all doubles the pods for the length of a rollout; under autoscaling the surge is
//! kept within `maxReplicas`, the capacity the platform team planned for.

use crate::crd::{ChatGateway, RolloutStrategy};
use k8s_openapi::api::apps::v1::RollingUpdateDeployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Surge of the `Rolling` strategy when the spec names none (Kubernetes' default).
pub const DEFAULT_ROLLING_SURGE: &str = "25%";
/// Seconds a new pod must stay ready before it counts as available (and old pods drain):
/// a gateway that dies right after start must not take clients first.
pub const DEFAULT_MIN_READY_SECONDS: i32 = 10;

/// The Deployment's rolling update and `minReadySeconds` for a gateway that runs
/// `replicas` pods now. `maxUnavailable` is always 0: capacity first, then the drain.
pub fn strategy(cgw: &ChatGateway, replicas: i32) -> (RollingUpdateDeployment, i32) {
    let rollout = cgw.spec.rollout.clone().unwrap_or_default();
    let max_surge = match rollout.strategy.unwrap_or(RolloutStrategy::SurgeAll) {
        RolloutStrategy::Rolling => rollout
            .max_surge
            .unwrap_or_else(|| IntOrString::String(DEFAULT_ROLLING_SURGE.into())),
        RolloutStrategy::SurgeAll => surge_all(cgw, replicas),
    };
    (
        RollingUpdateDeployment {
            max_surge: Some(max_surge),
            max_unavailable: Some(IntOrString::Int(0)),
        },
        rollout
            .min_ready_seconds
            .unwrap_or(DEFAULT_MIN_READY_SECONDS),
    )
}

/// Surge-all: 100 % of the pods, or, under autoscaling, as many as fit below
/// `maxReplicas` (at least one, so a rollout at the maximum still progresses).
fn surge_all(cgw: &ChatGateway, replicas: i32) -> IntOrString {
    let Some(a) = cgw.spec.autoscaling.as_ref().filter(|a| a.enabled) else {
        return IntOrString::String("100%".into());
    };
    let max = a.max_replicas.unwrap_or(super::hpa::DEFAULT_MAX);
    let room = max.saturating_sub(replicas.max(0));
    if room >= replicas {
        IntOrString::String("100%".into())
    } else {
        IntOrString::Int(room.max(1))
    }
}

/// How many times, at most, a client can move during a rollout of `replicas` pods that
/// surges `surge` pods at a time (`maxUnavailable: 0`): once per batch of old pods that
/// drains while other old pods still take reconnects, plus the final move.
pub fn max_moves_per_client(replicas: i32, surge: i32) -> i32 {
    if replicas <= 0 {
        return 0;
    }
    let surge = surge.clamp(1, replicas);
    // ceil(replicas / surge) batches; a client on the last batch of old pods moves once,
    // one on the first batch can move once per batch.
    (replicas + surge - 1) / surge
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::cgw;

    fn surge_of(spec: &str, replicas: i32) -> (IntOrString, i32) {
        let (ru, min_ready) = strategy(&cgw(spec), replicas);
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        (ru.max_surge.expect("max surge"), min_ready)
    }

    const REDIS: &str =
        "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: r, key: u}}}";

    #[test]
    fn surge_all_by_default_without_autoscaling() {
        assert_eq!(
            surge_of(REDIS, 4),
            (
                IntOrString::String("100%".into()),
                DEFAULT_MIN_READY_SECONDS
            )
        );
    }

    #[test]
    fn surge_all_within_the_autoscaling_maximum() {
        let spec =
            format!("{REDIS}\nautoscaling: {{enabled: true, minReplicas: 2, maxReplicas: 10}}");
        // 5 + 5 fit under 10: every new pod first.
        assert_eq!(surge_of(&spec, 5).0, IntOrString::String("100%".into()));
        // 7 + 3 = 10: as many as fit, and clients may move up to three times.
        assert_eq!(surge_of(&spec, 7).0, IntOrString::Int(3));
        assert_eq!(max_moves_per_client(7, 3), 3);
        // At the maximum: still one at a time, or the rollout would never progress.
        assert_eq!(surge_of(&spec, 10).0, IntOrString::Int(1));
    }

    #[test]
    fn rolling_uses_the_given_surge_or_the_kubernetes_default() {
        let spec =
            format!("{REDIS}\nrollout: {{strategy: Rolling, maxSurge: 2, minReadySeconds: 30}}");
        assert_eq!(surge_of(&spec, 6), (IntOrString::Int(2), 30));
        let spec = format!("{REDIS}\nrollout: {{strategy: Rolling}}");
        assert_eq!(
            surge_of(&spec, 6).0,
            IntOrString::String(DEFAULT_ROLLING_SURGE.into())
        );
    }

    #[test]
    fn surge_all_moves_each_client_once_and_a_quarter_up_to_four_times() {
        // 8 pods, surge 100 %: one batch.
        assert_eq!(max_moves_per_client(8, 8), 1);
        // 8 pods, 25 % surge = 2 pods per batch: four batches.
        assert_eq!(max_moves_per_client(8, 2), 4);
        assert_eq!(max_moves_per_client(1, 1), 1);
        assert_eq!(max_moves_per_client(0, 1), 0);
    }
}
