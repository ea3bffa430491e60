//! The custom metrics API itself: routes a request path to a discovery document or a
//! metric list, built from the last scrape ([`Snapshot`]). Pure: no I/O, so every answer
//! the HPA can get is unit-tested here.
//!
//! Served, for `v1beta1` and `v1beta2` (the HPA controller uses whichever discovery
//! prefers, v1beta2 where both exist):
//! - `GET /apis/custom.metrics.k8s.io/{v}`: the resources (`pods/chatgateway_connections`,
//!   `chatgateways.chatgateway.io/chatgateway_connections`);
//! - `GET …/{v}/namespaces/{ns}/pods/{name|*}/chatgateway_connections?labelSelector=`:
//!   one value per pod that was read (the HPA's `Pods` metric);
//! - `GET …/{v}/namespaces/{ns}/chatgateways.chatgateway.io/{name|*}/chatgateway_connections`:
//!   the total over a gateway's pods (an `Object` metric), only when every running pod of
//!   the gateway was read.

use super::scrape::{GatewaySample, PodSample, Snapshot};
use super::selector;
use crate::crd::ChatGateway;
use kube::core::{Selector, SelectorExt};
use kube::Resource;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The API group served.
pub const GROUP: &str = "custom.metrics.k8s.io";
/// The versions served, oldest first.
pub const VERSIONS: [&str; 2] = ["v1beta1", "v1beta2"];
/// The one metric.
pub const METRIC: &str = "chatgateway_connections";
/// The ChatGateway resource as the custom metrics API names it (group-qualified plural).
pub const GATEWAYS: &str = "chatgateways.chatgateway.io";

/// An answer: HTTP status and a JSON body (a document or a `Status`).
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

/// A `Status` object as the API server writes it for failures.
pub fn status(code: u16, reason: &str, message: impl Into<String>) -> Reply {
    Reply {
        status: code,
        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "reason": reason, "message": message.into(), "code": code}),
    }
}

fn not_found(message: impl Into<String>) -> Reply {
    status(404, "NotFound", message)
}

/// What the request names, after authentication and authorisation.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Discovery(&'a str),
    Metric {
        version: &'a str,
        namespace: String,
        resource: String,
        name: String,
        metric: String,
    },
}

/// Answers a GET of `path` with query string `query` from `snapshot`.
pub fn respond(path: &str, query: Option<&str>, snapshot: &Snapshot) -> Reply {
    let route = match route(path) {
        Ok(route) => route,
        Err(reply) => return reply,
    };
    let (version, namespace, resource, name, metric) = match route {
        Route::Discovery(version) => return discovery(version),
        Route::Metric {
            version,
            namespace,
            resource,
            name,
            metric,
        } => (version, namespace, resource, name, metric),
    };
    if metric != METRIC {
        return not_found(format!(
            "the server could not find the metric {metric} for {resource}"
        ));
    }
    let params = Params::parse(query.unwrap_or_default());
    let objects = match selector::parse(params.label_selector.as_deref().unwrap_or_default()) {
        Ok(s) => s,
        Err(e) => return status(400, "BadRequest", e.to_string()),
    };
    // The metric has no labels of its own: a metric selector either matches the empty
    // label set (and changes nothing) or nothing at all.
    let metric_selector = params.metric_label_selector.as_deref().unwrap_or_default();
    let metric_matches = match selector::parse(metric_selector) {
        Ok(s) => s.matches(&BTreeMap::new()),
        Err(e) => return status(400, "BadRequest", e.to_string()),
    };
    let items = match resource.as_str() {
        "pods" => pod_items(version, &namespace, &name, &objects, snapshot),
        GATEWAYS => gateway_items(version, &namespace, &name, &objects, snapshot),
        _ => {
            return not_found(format!(
                "the server could not find the metric {metric} for {resource}"
            ))
        }
    };
    let items: Vec<Value> = if metric_matches { items } else { Vec::new() };
    if name != "*" && items.is_empty() {
        return not_found(format!(
            "the server could not find the metric {metric} for {resource} {name}"
        ));
    }
    Reply {
        status: 200,
        body: json!({"kind": "MetricValueList", "apiVersion": format!("{GROUP}/{version}"),
                     "metadata": {}, "items": items}),
    }
}

fn route(path: &str) -> Result<Route<'_>, Reply> {
    let prefix = format!("/apis/{GROUP}/");
    let rest = path
        .strip_prefix(&prefix)
        .ok_or_else(|| not_found(format!("the server could not find {path}")))?;
    let (version, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let version = VERSIONS
        .iter()
        .find(|v| **v == version)
        .ok_or_else(|| not_found(format!("the server could not find {path}")))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Ok(Route::Discovery(version));
    }
    let segments = rest
        .split('/')
        .map(percent_decode)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| status(400, "BadRequest", format!("malformed path {path}")))?;
    match <[String; 5]>::try_from(segments) {
        Ok([ns_word, namespace, resource, name, metric]) if ns_word == "namespaces" => {
            Ok(Route::Metric {
                version,
                namespace,
                resource,
                name,
                metric,
            })
        }
        // Root-scoped resources (nodes, namespaces' own metrics) have no ChatGateway metric.
        _ => Err(not_found(format!("the server could not find {path}"))),
    }
}

fn discovery(version: &str) -> Reply {
    let resource = |resource: &str| {
        json!({"name": format!("{resource}/{METRIC}"), "singularName": "", "namespaced": true,
               "kind": "MetricValueList", "verbs": ["get"]})
    };
    Reply {
        status: 200,
        body: json!({"kind": "APIResourceList", "apiVersion": "v1",
                     "groupVersion": format!("{GROUP}/{version}"),
                     "resources": [resource("pods"), resource(GATEWAYS)]}),
    }
}

fn pod_items(
    version: &str,
    namespace: &str,
    name: &str,
    objects: &Selector,
    snapshot: &Snapshot,
) -> Vec<Value> {
    snapshot
        .pods
        .iter()
        .filter(|p| p.namespace == namespace && (name == "*" || p.name == name))
        .filter(|p| objects.matches(&p.labels))
        .filter_map(|p: &PodSample| {
            // A pod that could not be read is left out, never reported as 0: a zero would
            // make the HPA scale down on a scrape failure.
            let value = p.connections?;
            let object = json!({"kind": "Pod", "namespace": p.namespace, "name": p.name,
                                "apiVersion": "v1"});
            Some(item(version, object, value, &p.at))
        })
        .collect()
}

fn gateway_items(
    version: &str,
    namespace: &str,
    name: &str,
    objects: &Selector,
    snapshot: &Snapshot,
) -> Vec<Value> {
    snapshot
        .gateways
        .iter()
        .filter(|g| g.namespace == namespace && (name == "*" || g.name == name))
        .filter(|g| objects.matches(&g.labels))
        .filter_map(|g: &GatewaySample| {
            let total = snapshot.total(&g.namespace, &g.name)?;
            let object = json!({"kind": ChatGateway::kind(&()), "namespace": g.namespace,
                                "name": g.name, "apiVersion": ChatGateway::api_version(&())});
            Some(item(version, object, total, &snapshot.at))
        })
        .collect()
}

/// One `MetricValue`: v1beta1 names the metric in `metricName`, v1beta2 in `metric.name`.
fn item(version: &str, described: Value, value: u64, at: &k8s_openapi::jiff::Timestamp) -> Value {
    let timestamp = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(*at);
    if version == "v1beta1" {
        json!({"describedObject": described, "metricName": METRIC, "timestamp": timestamp,
               "value": value.to_string(), "selector": null})
    } else {
        json!({"describedObject": described, "metric": {"name": METRIC},
               "timestamp": timestamp, "value": value.to_string()})
    }
}

/// The query parameters the API reads.
#[derive(Debug, Default, PartialEq)]
struct Params {
    label_selector: Option<String>,
    metric_label_selector: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Params {
        let mut params = Params::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            // A value that does not decode is kept as it came: the selector parser then
            // refuses it with a message naming it.
            let value = percent_decode(&value.replace('+', " ")).unwrap_or_else(|| value.into());
            match key {
                "labelSelector" => params.label_selector = Some(value),
                "metricLabelSelector" => params.metric_label_selector = Some(value),
                _ => {}
            }
        }
        params
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
