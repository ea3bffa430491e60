//! The operator's own Prometheus metrics.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Reconcile counters and durations, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// Registry served on /metrics.
    pub registry: Registry,
    /// Reconciles run, by outcome (`ok` or `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles, by error reason.
    pub errors: IntCounterVec,
    /// Seconds per reconcile.
    pub duration: HistogramVec,
}

impl Metrics {
    /// New metrics in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "chatgateway_operator_reconciles_total",
                "Reconciles run, by outcome.",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new(
                "chatgateway_operator_reconcile_errors_total",
                "Failed reconciles, by reason.",
            ),
            &["reason"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "chatgateway_operator_reconcile_duration_seconds",
                "Seconds per reconcile.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )
        .expect("static metric definition");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
        ] {
            registry.register(c).expect("names are unique");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_counters() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["ok"]).inc();
        m.errors.with_label_values(&["SecretNotFound"]).inc();
        m.duration.with_label_values(&[] as &[&str]).observe(0.02);
        let text = m.render();
        assert!(
            text.contains("chatgateway_operator_reconciles_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text
            .contains("chatgateway_operator_reconcile_errors_total{reason=\"SecretNotFound\"} 1"));
        assert!(text.contains("chatgateway_operator_reconcile_duration_seconds_count 1"));
    }
}
