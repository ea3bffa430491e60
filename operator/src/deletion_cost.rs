//! `controller.kubernetes.io/pod-deletion-cost` from each gateway pod's open connections.
//!
//! When the HPA (or `kubectl scale`) removes pods, the ReplicaSet controller deletes the
//! pods with the lowest deletion cost first. Every connection on a removed pod has to
//! reconnect, so the cost of a pod is its connection count: the emptiest pod goes first.
//! The counts come from each ready pod's own `/metrics` (`chatgateway_connections`); a pod
//! that cannot be read keeps whatever cost it had. Each annotation write is a pod update,
//! so a cost is rewritten only when it moved by more than a tenth (and more than ten
//! connections). Kubernetes honours the annotation from 1.22 (beta, on by default); older
//! clusters ignore it.

use crate::builders::{Owner, HTTP_PORT};
use crate::crd::ChatGateway;
use crate::error::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The annotation the ReplicaSet controller reads.
pub const ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Field manager of the annotation (server-side apply of that one field).
pub const MANAGER: &str = "chatgateway-operator-deletion-cost";
/// How often the costs are refreshed.
pub const INTERVAL: Duration = Duration::from_secs(30);
/// Deadline of one pod's `/metrics` read.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/metrics` response read.
const MAX_METRICS_BYTES: u64 = 4 << 20;

/// The `chatgateway_connections` gauge from a Prometheus text exposition.
pub fn connections(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("chatgateway_connections")?;
        // Not `chatgateway_connections_accepted_total`: the name ends at a space or `{`.
        let value = rest.strip_prefix(' ').or_else(|| {
            rest.strip_prefix('{')
                .and_then(|r| r.split_once("} ").map(|(_, v)| v))
        })?;
        let n: f64 = value.split_whitespace().next()?.parse().ok()?;
        (n.is_finite() && n >= 0.0).then_some(n as u64)
    })
}

/// The cost to write for a pod with `connections` open, or `None` when its `current`
/// annotation is close enough.
pub fn cost_update(current: Option<&str>, connections: u64) -> Option<i32> {
    let new = i32::try_from(connections).unwrap_or(i32::MAX);
    match current.and_then(|c| c.trim().parse::<i32>().ok()) {
        Some(old) => {
            let slack = (old.unsigned_abs() / 10).max(10);
            (old.abs_diff(new) > slack).then_some(new)
        }
        None => Some(new),
    }
}

/// Reads one pod's connection count from `http://addr/metrics` (HTTP/1.0: no keep-alive,
/// the body ends with the connection); `None` when it cannot be read in time.
pub async fn scrape(addr: SocketAddr, timeout: Duration) -> Option<u64> {
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream
            .take(MAX_METRICS_BYTES)
            .read_to_end(&mut body)
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&body);
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.lines()
            .next()
            .is_some_and(|status| status.contains(" 200 "))
            .then(|| connections(body))?
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// Ready pods with an address: the only ones serving connections.
fn ready_address(pod: &Pod) -> Option<IpAddr> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let deleting = pod.metadata.deletion_timestamp.is_some();
    (ready && !deleting).then(|| status.pod_ip.as_deref()?.parse().ok())?
}

/// One pass over one gateway's pods; returns how many costs were written.
pub async fn update_gateway(client: &Client, gateway: &ChatGateway, port: u16) -> Result<usize> {
    let ns = gateway.namespace().unwrap_or_default();
    let owner = Owner {
        name: gateway.name_any(),
        namespace: ns.clone(),
        reference: None,
    };
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&owner.selector_string()))
        .await?;
    let mut written = 0;
    for pod in list.items {
        let Some(ip) = ready_address(&pod) else {
            continue;
        };
        let Some(open) = scrape(SocketAddr::new(ip, port), SCRAPE_TIMEOUT).await else {
            continue;
        };
        let current = pod.annotations().get(ANNOTATION).map(String::as_str);
        let Some(cost) = cost_update(current, open) else {
            continue;
        };
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod.name_any(), "annotations": {ANNOTATION: cost.to_string()}},
        });
        let params = PatchParams::apply(MANAGER).force();
        match pods
            .patch(&pod.name_any(), &params, &Patch::Apply(body))
            .await
        {
            Ok(_) => written += 1,
            // Gone since the list: nothing to rank.
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// Refreshes the costs of every gateway in `gateways` that runs more than one pod, every
/// [`INTERVAL`], until `shutdown` resolves.
pub async fn run(client: Client, gateways: Store<ChatGateway>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    let port = u16::try_from(HTTP_PORT).unwrap_or(8080);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
        for gateway in gateways.state() {
            let pods = gateway
                .status
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(0);
            if pods < 2 {
                continue;
            }
            if let Err(e) = update_gateway(&client, &gateway, port).await {
                tracing::warn!(gateway = %gateway.name_any(), error = %e, "updating pod deletion costs");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::testing::cgw;
    use crate::reconcile::tests::{context, ok_with, serve, step};
    use crate::reconcile::ServedKinds;
    use http::Method;
    use serde_json::json;

    #[test]
    fn the_connections_gauge_and_nothing_like_it() {
        let text = "# HELP chatgateway_connections Open WebSocket connections on this pod.\n\
                    # TYPE chatgateway_connections gauge\n\
                    chatgateway_connections_accepted_total 912\n\
                    chatgateway_connections 37\n";
        assert_eq!(connections(text), Some(37));
        assert_eq!(
            connections("chatgateway_connections{pod=\"a\"} 5\n"),
            Some(5)
        );
        assert_eq!(connections("chatgateway_connections 1e3\n"), Some(1000));
        assert_eq!(
            connections("chatgateway_connections_accepted_total 3\n"),
            None
        );
        assert_eq!(connections("chatgateway_connections NaN\n"), None);
        assert_eq!(connections("chatgateway_connections -1\n"), None);
        assert_eq!(connections(""), None);
    }

    #[test]
    fn the_emptiest_pod_gets_the_lowest_cost_and_small_moves_are_not_written() {
        assert_eq!(cost_update(None, 120), Some(120));
        assert_eq!(cost_update(Some("garbage"), 3), Some(3));
        // Within max(10, 10 %) of the current cost: no pod update.
        assert_eq!(cost_update(Some("100"), 108), None);
        assert_eq!(cost_update(Some("5000"), 5400), None);
        assert_eq!(cost_update(Some("5000"), 5600), Some(5600));
        assert_eq!(cost_update(Some("100"), 0), Some(0));
        assert_eq!(cost_update(Some("0"), 9), None);
        assert_eq!(cost_update(None, u64::MAX), Some(i32::MAX));
        // The order the ReplicaSet controller sees is the order of the counts.
        let mut pods = [("a", 900u64), ("b", 12), ("c", 300)];
        pods.sort_by_key(|(_, n)| cost_update(None, *n));
        assert_eq!(pods.map(|(p, _)| p), ["b", "c", "a"]);
    }

    /// A pod's `/metrics` on a real socket.
    async fn metrics_server(body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let reply = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{body}");
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn scrape_reads_a_pod_and_gives_up_on_one_that_does_not_answer() {
        let addr = metrics_server("chatgateway_connections 42\n").await;
        assert_eq!(scrape(addr, SCRAPE_TIMEOUT).await, Some(42));
        // Nothing listens there (a port just freed).
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert_eq!(scrape(closed, SCRAPE_TIMEOUT).await, None);
        // Accepts but never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr");
        let _hold = tokio::spawn(async move {
            let kept = silent.accept().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(kept);
        });
        assert_eq!(scrape(addr, Duration::from_millis(200)).await, None);
    }

    fn pod(name: &str, ready: bool, cost: Option<&str>) -> serde_json::Value {
        let mut p = json!({"metadata": {"name": name, "namespace": "apps"},
            "status": {"podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if let Some(c) = cost {
            p["metadata"]["annotations"] = json!({ANNOTATION: c});
        }
        p
    }

    #[tokio::test]
    async fn a_pass_writes_only_the_costs_that_moved() {
        let addr = metrics_server("chatgateway_connections 250\n").await;
        let (ctx, handle) = context(ServedKinds::ALL, false);
        let pods_path = "/api/v1/namespaces/apps/pods";
        let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [pod("chat-a", true, None), pod("chat-b", true, Some("245")),
                      pod("chat-c", false, None)]});
        let mut patch = step(Method::PATCH, &format!("{pods_path}/chat-a"));
        patch.apply_as = (MANAGER, true);
        let server = serve(handle, vec![ok_with(Method::GET, pods_path, list), patch]);
        let written = update_gateway(
            &ctx.client,
            &cgw("gateway: {auth: {mode: insecure, dangerouslyAllowInsecureOnNetwork: true}}"),
            addr.port(),
        )
        .await
        .expect("pass");
        assert_eq!(written, 1, "chat-b is close enough, chat-c is not ready");
        let seen = server.await.expect("server");
        assert_eq!(
            seen[1].1["metadata"]["annotations"][ANNOTATION], "250",
            "{}",
            seen[1].1
        );
    }
}
