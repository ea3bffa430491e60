//! HorizontalPodAutoscaler (autoscaling/v2) on open connections per pod.

use super::Owner;
use crate::crd::ChatGateway;
use crate::error::Result;
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource, ResourceMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Per-pod gauge the gateway exports and the HPA averages.
pub const CONNECTIONS_METRIC: &str = "chatgateway_connections";
/// Defaults when the spec leaves them out.
pub const DEFAULT_MIN: i32 = 2;
/// Most pods by default.
pub const DEFAULT_MAX: i32 = 10;
/// Connections per pod aimed for by default.
pub const DEFAULT_TARGET_CONNECTIONS: i64 = 1000;
/// Seconds of lower recommendations before a scale-down, by default.
pub const DEFAULT_STABILIZATION_SECONDS: i32 = 300;
/// Longest scale-down period the HPA accepts.
const MAX_PERIOD_SECONDS: i64 = 1800;

/// Scale-down period when the spec names none: the pods' grace period (drain timeout plus
/// margin), so a removed pod has finished draining before the next removal starts and two
/// drains never overlap (their clients would land on each other's pods).
pub fn default_scale_down_period(cgw: &ChatGateway) -> Result<i32> {
    let grace = super::pod::grace_period_seconds(cgw)?;
    Ok(i32::try_from(grace.clamp(1, MAX_PERIOD_SECONDS)).unwrap_or(60))
}

/// The HPA, or `None` when autoscaling is off.
pub fn build(cgw: &ChatGateway, owner: &Owner) -> Result<Option<HorizontalPodAutoscaler>> {
    let Some(a) = cgw.spec.autoscaling.as_ref().filter(|a| a.enabled) else {
        return Ok(None);
    };
    let mut metrics = vec![MetricSpec {
        type_: "Pods".into(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: CONNECTIONS_METRIC.into(),
                selector: None,
            },
            target: MetricTarget {
                type_: "AverageValue".into(),
                average_value: Some(Quantity(
                    a.target_connections_per_pod
                        .unwrap_or(DEFAULT_TARGET_CONNECTIONS)
                        .to_string(),
                )),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    }];
    if let Some(cpu) = a.target_cpu_utilization {
        metrics.push(MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(cpu),
                    ..MetricTarget::default()
                },
            }),
            ..MetricSpec::default()
        });
    }
    let down = a.scale_down.clone().unwrap_or_default();
    let period = match down.period_seconds {
        Some(p) => p,
        None => default_scale_down_period(cgw)?,
    };
    Ok(Some(HorizontalPodAutoscaler {
        metadata: owner.meta(&owner.name),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: owner.name.clone(),
            },
            min_replicas: Some(a.min_replicas.unwrap_or(DEFAULT_MIN)),
            max_replicas: a.max_replicas.unwrap_or(DEFAULT_MAX),
            metrics: Some(metrics),
            // Removing a pod makes all its clients reconnect: wait for a stable low and
            // then remove few pods per period.
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(
                        down.stabilization_window_seconds
                            .unwrap_or(DEFAULT_STABILIZATION_SECONDS),
                    ),
                    select_policy: Some("Min".into()),
                    policies: Some(vec![HPAScalingPolicy {
                        type_: "Pods".into(),
                        value: down.pods_per_period.unwrap_or(1),
                        period_seconds: period,
                    }]),
                    ..HPAScalingRules::default()
                }),
                scale_up: None,
            }),
        }),
        status: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::*;

    fn hpa(spec: &str) -> Option<HorizontalPodAutoscaler> {
        let c = cgw(spec);
        build(&c, &Owner::of(&c, "d").expect("owner")).expect("build")
    }

    #[test]
    fn off_unless_enabled() {
        assert!(hpa(MINIMAL).is_none());
        assert!(hpa("autoscaling: {enabled: false, maxReplicas: 5}").is_none());
    }

    #[test]
    fn connections_metric_cpu_and_slow_scale_down() {
        let spec = hpa(FULL).expect("hpa").spec.expect("spec");
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 30));
        let metrics = spec.metrics.expect("metrics");
        let pods = metrics[0].pods.as_ref().expect("pods metric");
        assert_eq!(pods.metric.name, CONNECTIONS_METRIC);
        assert_eq!(pods.target.type_, "AverageValue");
        assert_eq!(pods.target.average_value, Some(Quantity("5000".into())));
        let cpu = metrics[1].resource.as_ref().expect("cpu metric");
        assert_eq!(
            (cpu.name.as_str(), cpu.target.average_utilization),
            ("cpu", Some(70))
        );
        let down = spec
            .behavior
            .and_then(|b| b.scale_down)
            .expect("scale down");
        assert_eq!(down.stabilization_window_seconds, Some(300));
        let p = &down.policies.expect("policies")[0];
        // drain.timeout 90s + 15 s margin: one removal drains before the next.
        assert_eq!(
            (p.type_.as_str(), p.value, p.period_seconds),
            ("Pods", 1, 105)
        );
    }

    #[test]
    fn scale_down_period_follows_the_drain_unless_set() {
        let period = |spec: &str| {
            hpa(spec)
                .and_then(|h| h.spec?.behavior?.scale_down?.policies)
                .map(|p| p[0].period_seconds)
        };
        let redis = "gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}, redis: {urlSecretRef: {name: r, key: u}}}";
        assert_eq!(
            period(&format!("{redis}\nautoscaling: {{enabled: true}}")),
            Some(60 + 15)
        );
        assert_eq!(
            period(&format!(
                "{redis}\nautoscaling: {{enabled: true}}\ndrain: {{timeout: 5m}}"
            )),
            Some(300 + 15)
        );
        assert_eq!(
            period(&format!(
                "{redis}\nautoscaling: {{enabled: true}}\ndrain: {{timeout: 2h}}"
            )),
            Some(1800),
            "the HPA's maximum"
        );
        assert_eq!(
            period(&format!(
                "{redis}\nautoscaling: {{enabled: true, scaleDown: {{periodSeconds: 30}}}}"
            )),
            Some(30)
        );
    }

    #[test]
    fn defaults_without_cpu() {
        let spec = hpa("autoscaling: {enabled: true}")
            .expect("hpa")
            .spec
            .expect("spec");
        assert_eq!(
            (spec.min_replicas, spec.max_replicas),
            (Some(DEFAULT_MIN), DEFAULT_MAX)
        );
        assert_eq!(spec.metrics.expect("metrics").len(), 1);
    }
}
