//! docs/operations.md's metric table against the node's registry: every metric the gateway
//! serves has a row, and every row names a metric it serves. Dashboards and alerts are
//! written from that table (the chart's own are checked against a live process by
//! `e2e/tests/dashboards.rs`).

use super::Metrics;
use std::collections::BTreeSet;

/// The metric names of the `## Metrics` table (a row's first cell, labels dropped).
fn documented() -> BTreeSet<String> {
    crate::doc_tables::section(crate::doc_tables::OPERATIONS, "Metrics")
        .lines()
        .filter_map(|l| l.strip_prefix("| `chatgateway_"))
        .map(|l| {
            let name = l.split(['`', '{']).next().unwrap_or_default();
            format!("chatgateway_{name}")
        })
        .collect()
}

/// The names `Metrics::new` registers. Read from its source: the registry gathers a
/// labelled family only once it has a sample, so a fresh registry cannot list them all.
/// [`registered`] confirms each one with the registry itself.
fn in_source() -> BTreeSet<String> {
    include_str!("../metrics.rs")
        .split('"')
        .filter(|s| s.starts_with("chatgateway_") && !s.contains(' '))
        .map(str::to_string)
        .collect()
}

/// Whether `name` is in `m`'s registry: a second metric of that name is refused.
fn registered(m: &Metrics, name: &str) -> bool {
    let probe = prometheus::IntCounter::new(name, "probe").expect("valid name");
    matches!(
        m.registry.register(Box::new(probe)),
        Err(prometheus::Error::AlreadyReg)
    )
}

#[test]
fn every_metric_has_a_row_and_every_row_a_metric() {
    let m = Metrics::new();
    let served = in_source();
    assert!(
        served.len() >= 29,
        "only {} metric names found",
        served.len()
    );
    let unregistered: Vec<_> = served.iter().filter(|n| !registered(&m, n)).collect();
    assert!(
        unregistered.is_empty(),
        "not in the registry: {unregistered:?}"
    );

    let documented = documented();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/operations.md's Metrics table: {undocumented:?}"
    );
    let m = Metrics::new();
    let stale: Vec<_> = documented.iter().filter(|n| !registered(&m, n)).collect();
    assert!(
        stale.is_empty(),
        "in docs/operations.md's Metrics table but not served: {stale:?}"
    );
}
