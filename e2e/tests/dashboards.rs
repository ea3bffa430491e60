//! The chart's Grafana dashboard and PrometheusRule query only metrics that exist: every
//! metric name in their PromQL is served by a live `chat-gateway` process (started here,
//! with traffic so that histograms and labelled counters have samples), or is an operator
//! metric (checked against the operator's registry by
//! `operator/tests/dashboard_metrics.rs`), or is one of the kube-state-metrics names
//! listed in [`EXTERNAL`].

use e2e::process::{free_port, GatewayProcess};
use e2e::{http_get, Client};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Metrics the queries may use that neither chatgateway process serves: kube-state-metrics.
const EXTERNAL: &[&str] = &[
    "kube_pod_container_status_ready",
    "kube_pod_owner",
    "kube_replicaset_owner",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_horizontalpodautoscaler_spec_min_replicas",
];

/// Checked by the operator crate against its own registry.
const OPERATOR_PREFIX: &str = "chatgateway_operator_";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/chat-gateway")
}

/// PromQL words followed by a list of label names: `by (a, b)`, `on (a)`, ...
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other PromQL identifiers that are words of the language, not metrics.
const KEYWORDS: &[&str] = &["bool", "and", "or", "unless", "offset", "inf", "nan"];

/// Removes every `open ... close` span, e.g. label matchers, ranges or (open == close)
/// string literals.
fn strip_between(s: &str, open: char, close: char) -> String {
    let mut out = String::with_capacity(s.len());
    let mut depth = 0usize;
    for c in s.chars() {
        if c == close && depth > 0 {
            depth -= 1;
        } else if c == open {
            depth += 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

/// Metric names in one PromQL expression: what is left after removing strings, label
/// matchers, ranges, grouping label lists, functions (an identifier before `(`), keywords
/// and `$variables`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut s = strip_between(expr, '"', '"');
    s = strip_between(&s, '{', '}');
    s = strip_between(&s, '[', ']');
    // Grouping lists: `by (a, b)`, `on (a)`, `group_left (x)`, ...
    let mut rest = s.as_str();
    let mut cleaned = String::new();
    loop {
        let next = GROUPING
            .iter()
            .filter_map(|k| find_word(rest, k).map(|i| (i, k.len())))
            .min();
        let Some((at, len)) = next else {
            cleaned.push_str(rest);
            break;
        };
        cleaned.push_str(&rest[..at]);
        let after = rest[at + len..].trim_start();
        rest = match after.strip_prefix('(') {
            Some(list) => list.split_once(')').map_or("", |(_, r)| r),
            None => after,
        };
    }
    let bytes = cleaned.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len() && {
                let c = bytes[i] as char;
                c.is_ascii_alphanumeric() || c == '_' || c == ':'
            } {
                i += 1;
            }
            let word = &cleaned[start..i];
            let variable = start > 0 && bytes[start - 1] == b'$';
            let number = start > 0 && (bytes[start - 1] as char).is_ascii_digit();
            let call = cleaned[i..].trim_start().starts_with('(');
            let keyword = KEYWORDS.contains(&word) || GROUPING.contains(&word);
            if !variable && !number && !call && !keyword {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Byte offset of `word` as a whole word in `s`.
fn find_word(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    s.match_indices(word)
        .map(|(i, _)| i)
        .find(|&i| (i == 0 || !ident(b[i - 1])) && b.get(i + word.len()).is_none_or(|&c| !ident(c)))
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(chart().join("files/dashboard.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(metric, label): the metric is the first argument.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            out.push(inner.split(',').next().unwrap_or_default().to_string());
        }
    }
    out
}

/// Every `expr: |` block of the PrometheusRule template, Helm actions removed, and the
/// PromQL fragments of _helpers.tpl those blocks include.
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(chart().join("templates/prometheusrule.yaml"))
        .expect("prometheusrule template");
    let mut text = text.as_str();
    let mut plain = String::new();
    while let Some(start) = text.find("{{") {
        plain.push_str(&text[..start]);
        text = text[start..].split_once("}}").map_or("", |(_, r)| r);
    }
    plain.push_str(text);
    let mut out = Vec::new();
    let mut lines = plain.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "expr: |" {
            let indent = line.len() - line.trim_start().len();
            let mut expr = String::new();
            while let Some(next) =
                lines.next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
            {
                expr.push_str(next);
                expr.push('\n');
            }
            out.push(expr);
        }
    }
    // The PromQL the rules include from _helpers.tpl (`chat-gateway.promql.*`).
    let helpers =
        std::fs::read_to_string(chart().join("templates/_helpers.tpl")).expect("chart helpers");
    for part in helpers.split("define \"chat-gateway.promql.").skip(1) {
        let body = part.split_once("}}").map_or("", |(_, body)| body);
        out.extend(body.split("{{").next().map(str::to_string));
    }
    out
}

/// A WebSocket echo server on a free port, the upstream of a forwarding route.
async fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Names of the samples a gateway serves, after traffic that gives every labelled counter
/// and histogram a sample.
async fn live_gateway_metrics() -> BTreeSet<String> {
    let echo = echo_upstream().await;
    let dead = free_port();
    let routes = format!(
        "[{{name: echo, pathPrefix: /echo, upstream: 'ws://127.0.0.1:{echo}'}}, \
          {{name: dead, pathPrefix: /dead, upstream: 'ws://127.0.0.1:{dead}', retries: 0}}]"
    );
    let gw = GatewayProcess::start(&[
        ("CHATGW_AUTH__MODE", "insecure"),
        ("CHATGW_ENGINE", "memory"),
        ("CHATGW_LIMITS__MESSAGE_RATE", "1"),
        ("CHATGW_LIMITS__MESSAGE_BURST", "3"),
        ("CHATGW_ROUTES", &routes),
    ]);
    let connect = |user: &str| {
        let url = gw.ws_url(&format!("user={user}"));
        async move { Client::connect(&url).await.expect("connect") }
    };
    let mut alice = connect("alice").await;
    let mut bob = connect("bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    assert_eq!(alice.send("lobby", json!("hello")).await["type"], "ok");
    assert_eq!(bob.next_msg().await["body"], "hello");
    // Past the burst: rate-limited commands (chatgateway_drops_total{reason="rate_limited"}).
    let mut limited = 0;
    for i in 0..6 {
        if alice.send("lobby", json!(i)).await["type"] == "error" {
            limited += 1;
        }
    }
    assert!(limited > 0, "no send was rate limited");
    // A refused upgrade (no Upgrade header), and a closed connection.
    let (status, _) = http_get(gw.addr, "/ws?user=carol").await;
    assert_eq!(status, 400, "a plain GET on /ws is a bad upgrade");
    drop(bob);
    // Forwarding: one echo through a route, and a route whose upstream is down.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/echo?user=dan", gw.addr))
        .await
        .expect("forwarded connection");
    ws.send(Message::text("ping")).await.expect("send upstream");
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(echoed, Ok(Some(Ok(ref m))) if m.to_text().ok() == Some("ping")),
        "{echoed:?}"
    );
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/dead?user=dan", gw.addr)).await;
    assert!(refused.is_err(), "the dead route answered an upgrade");

    // Poll until the closed connection is counted (the close happens asynchronously).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(gw.addr, "/metrics").await;
        assert_eq!(status, 200);
        let names: BTreeSet<String> = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        if names.contains("chatgateway_connections_closed_total")
            || tokio::time::Instant::now() > deadline
        {
            drop((alice, ws));
            return names;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_name_extractor_finds_metrics_and_only_metrics() {
    let names = metric_names(
        r#"sum by (namespace, le) (rate(chatgateway_x_bucket{pod=~"a.+", le!="1"}[5m])) / on (namespace) group_left (pod)
           label_replace(kube_y, "dst", "$1", "pod", "(.+)") > bool 0.99 and count_values("v", z_total offset 5m)
           unless $var_metric"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["chatgateway_x_bucket", "kube_y", "z_total"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_metrics_that_exist() {
    let served = live_gateway_metrics().await;
    let mut checked = BTreeSet::new();
    let mut missing = Vec::new();
    let sources = [("dashboard", dashboard_exprs()), ("alerts", alert_exprs())];
    for (source, exprs) in &sources {
        assert!(
            exprs.len() >= 10,
            "{source}: only {} queries found",
            exprs.len()
        );
        for expr in exprs {
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{source}: no metric in {expr}");
            for name in names {
                let known = served.contains(&name)
                    || name.starts_with(OPERATOR_PREFIX)
                    || EXTERNAL.contains(&name.as_str());
                if !known {
                    missing.push(format!("{source}: {name} (in {})", expr.trim()));
                }
                checked.insert(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "queries use metrics no live gateway serves, nor the operator, nor kube-state-metrics:\n{}\nserved: {served:?}",
        missing.join("\n")
    );
    // The panels the issue asks for, by the metrics they need.
    for want in [
        "chatgateway_connections",
        "chatgateway_upgrades_rejected_total",
        "chatgateway_delivery_latency_seconds_bucket",
        "chatgateway_redis_errors_total",
        "chatgateway_drain_forced_closes_total",
        "chatgateway_rebalance_shed_total",
        "kube_horizontalpodautoscaler_status_current_replicas",
        "chatgateway_operator_reconcile_errors_total",
    ] {
        assert!(checked.contains(want), "no query uses {want}");
    }
    // Every external name is used somewhere (the list stays honest).
    for name in EXTERNAL {
        assert!(
            checked.contains(*name),
            "EXTERNAL lists {name}, which no query uses"
        );
    }
}
