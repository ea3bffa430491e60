"""Flow: the HPA scales on connections. The operator's HPA targets the Pods metric
`chatgateway_connections` (average per pod), served through the custom metrics API
(custom.metrics.k8s.io) and written in the newest autoscaling version the cluster serves.
Clients connect: the Deployment scales up; rebalancing moves connections onto the new
pods; the clients leave: it scales back down (short windows set in this ChatGateway)."""
from __future__ import annotations

import time

import kube
from conftest import RUN_ID
from gateway import Fleet, redis_gateway

FLOW = "HPA on connections"
TARGET = 20


def test_hpa_scales_up_rebalances_and_scales_down(namespace, cluster):
    gw = redis_gateway(
        namespace, cluster, FLOW,
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": TARGET,
                     "scaleDown": {"stabilizationWindowSeconds": 15, "podsPerPeriod": 1, "periodSeconds": 15}},
        gateway={"rebalance": {"enabled": True, "tolerancePercent": 20, "rate": 20}})
    hpa = kube.eventually(FLOW, "the ChatGateway's HorizontalPodAutoscaler (autoscaling/v2, or v2beta2 where "
                          "v2 is not served)", lambda: kube.get("hpa", gw.name, gw.ns), 60, gw.ns, gw.selector)
    (metric,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metric["pods"]["metric"]["name"] == "chatgateway_connections", metric

    def reads_the_metric():
        st = (kube.get("hpa", gw.name, gw.ns) or {}).get("status") or {}
        current = [m for m in st.get("currentMetrics") or [] if m.get("type") == "Pods"]
        return current or None
    kube.eventually(FLOW, "the HPA reading chatgateway_connections through custom.metrics.k8s.io (HPA "
                    "conditions and `kubectl get apiservice v1beta1.custom.metrics.k8s.io` tell why not)",
                    reads_the_metric, 120, gw.ns, gw.selector, every=3)

    # 60 idle-ish clients at a target of 20 per pod: 3 pods (the maximum).
    fleet = Fleet(gw.url(), f"hpa{RUN_ID}u", clients=60, rooms=6, send_every_ms=5000)
    try:
        with gw.failing_with_diagnosis():
            fleet.wait_ready()
            kube.eventually(FLOW, "the Deployment scaled up to 3 Ready pods",
                            lambda: len(gw.ready_pods()) == 3, 180, gw.ns, gw.selector, every=3)

            def balanced():
                counts = [gw.connections(p) for p in gw.ready_pods()]
                return counts if len(counts) == 3 and sum(counts) == 60 and min(counts) >= 10 else None
            counts = kube.eventually(FLOW, "rebalancing to spread the 60 connections over the 3 pods",
                                     balanced, 120, gw.ns, gw.selector, every=2)
            print(f"[{FLOW}] connections per pod after rebalancing: {counts}")
            verdict = fleet.stop()
    finally:
        fleet.kill()
    if verdict["problems"]:
        gw.fail(f"clients lost messages while the HPA scaled: {verdict['problems'][:20]}")
    started = time.monotonic()
    kube.eventually(FLOW, "the Deployment scaled back down to 1 pod after the clients left",
                    lambda: (kube.get("deployment", gw.name, gw.ns) or {}).get("spec", {}).get("replicas") == 1,
                    240, gw.ns, gw.selector, every=3)
    print(f"[{FLOW}] scaled down {time.monotonic() - started:.0f}s after the clients left")
