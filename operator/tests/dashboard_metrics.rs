//! Every `chatgateway_operator_*` metric that the chart's Grafana dashboard and
//! PrometheusRule query is one the operator's registry serves. (The gateway's metrics are
//! checked against a live gateway in e2e/tests/dashboards.rs, which leaves these to us.)

use chat_gateway_operator::metrics::Metrics;
use std::collections::BTreeSet;
use std::path::Path;

const PREFIX: &str = "chatgateway_operator_";

/// Every `chatgateway_operator_*` word in a file.
fn operator_names(path: &str) -> BTreeSet<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/chat-gateway")
        .join(path);
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    text.match_indices(PREFIX)
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn dashboard_and_alerts_query_metrics_the_operator_serves() {
    let m = Metrics::new();
    // Labelled series appear once they have a sample.
    m.reconciles.with_label_values(&["ok"]).inc();
    m.errors.with_label_values(&["ApiError"]).inc();
    m.duration.with_label_values(&[] as &[&str]).observe(0.1);
    let served: BTreeSet<String> = m
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let dashboard = operator_names("files/dashboard.json");
    let alerts = operator_names("templates/prometheusrule.yaml");
    assert!(
        dashboard.len() >= 3,
        "the dashboard's operator row: {dashboard:?}"
    );
    assert!(!alerts.is_empty(), "no operator alert");
    for name in dashboard.union(&alerts) {
        assert!(
            served.contains(name),
            "{name} is queried but the operator does not serve it; it serves {served:?}"
        );
    }
}
