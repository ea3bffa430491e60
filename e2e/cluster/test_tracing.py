"""Flow: see a trace. One message sent on pod A and delivered on pod B gives one trace
with spans from both pods in an OTLP receiver running in the cluster
(e2e/images/otlp-receiver), found through cluster DNS."""
from __future__ import annotations

import json
import urllib.request

import kube
from gateway import command, next_msg, redis_gateway

FLOW = "trace across two pods"


def deploy_receiver(ns: str, image: str) -> str:
    labels = {"app.kubernetes.io/name": "otlp-receiver"}
    kube.apply([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "otlp", "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "automountServiceAccountToken": False,
                      "containers": [{"name": "receiver", "image": image, "imagePullPolicy": "IfNotPresent",
                                      "ports": [{"name": "otlp", "containerPort": 4317},
                                                {"name": "http", "containerPort": 8080}],
                                      "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                                                         "periodSeconds": 2}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "otlp", "labels": labels},
         "spec": {"selector": labels, "ports": [{"name": "otlp", "port": 4317, "targetPort": "otlp"},
                                                {"name": "http", "port": 8080, "targetPort": "http"}]}},
    ], ns)
    selector = "app.kubernetes.io/name=otlp-receiver"
    kube.eventually(FLOW, "the OTLP receiver Ready", lambda: any(kube.pod_ready(p) for p in kube.items(
        "pods", ns, selector)), 120, ns, selector)
    return kube.get("service", "otlp", ns)["spec"]["clusterIP"]


def spans(ip: str) -> list[dict]:
    with urllib.request.urlopen(f"http://{ip}:8080/spans", timeout=10) as r:
        return json.load(r)


def test_one_message_one_trace_across_two_pods(namespace, cluster):
    ns = namespace
    receiver = deploy_receiver(ns, cluster.images["otlp"])
    # The gateway resolves the receiver by its Service name (cluster DNS).
    gw = redis_gateway(ns, cluster, FLOW, telemetry={"otlpEndpoint": f"http://otlp.{ns}.svc:4317",
                                                    "samplingRatio": 1.0})
    a, b = gw.ready_names(2)
    alice, bob = gw.connect_on("alice", a), gw.connect_on("bob", b)
    for ws in (alice, bob):
        assert command(ws, {"type": "join", "id": 1, "room": "traced"})["type"] == "ok"
    ok = command(alice, {"type": "send", "id": 2, "room": "traced", "msg_id": "t-1", "body": "traced"})
    assert ok["type"] == "ok", ok
    got = next_msg(bob, "traced")
    tp = got.get("traceparent")
    if not tp:
        gw.fail(f"the delivered message carries no traceparent: {got}")
    trace_id, send_span = tp.split("-")[1], tp.split("-")[2]

    def pod_of(span: dict) -> str | None:
        return dict(span["resource"]).get("k8s.pod.name")

    def both_pods():
        got = [s for s in spans(receiver) if s["trace_id"] == trace_id]
        send = [s for s in got if s["name"] == "send" and pod_of(s) == a]
        deliver = [s for s in got if s["name"] == "deliver" and pod_of(s) == b]
        return (send, deliver, got) if send and deliver else None
    send, deliver, trace = kube.eventually(
        FLOW, f"spans of trace {trace_id}: `send` from {a} and `deliver` from {b} in the receiver",
        both_pods, 60, ns, gw.selector, every=2)
    assert send[0]["span_id"] == send_span, (send, tp)
    assert any(d["parent_span_id"] == send[0]["span_id"] for d in deliver), \
        f"[{FLOW}] deliver on {b} is not a child of send on {a}: {deliver}"
    assert {pod_of(s) for s in trace} >= {a, b}
    assert dict(send[0]["attributes"]).get("room") == "traced"
