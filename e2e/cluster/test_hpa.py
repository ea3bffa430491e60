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
TARGET = 100
CLIENTS = 300


def test_hpa_scales_up_rebalances_and_scales_down(namespace, cluster):
    gw = redis_gateway(
        namespace, cluster, FLOW,
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetConnectionsPerPod": TARGET,
                     "scaleDown": {"stabilizationWindowSeconds": 15, "podsPerPeriod": 1, "periodSeconds": 15}},
        gateway={"rebalance": {"enabled": True, "tolerancePercent": 20, "rate": 20},
                 "limits": {"messageRate": 200, "messageBurst": 200, "userMessageRate": 0}})
    # kubectl's default HPA version (autoscaling/v1) has no metrics list: ask for v2.
    version = "v2" if "autoscaling/v2\n" in kube.kubectl("api-versions") else "v2beta2"
    kind = f"horizontalpodautoscalers.{version}.autoscaling"
    hpa = kube.eventually(FLOW, f"the ChatGateway's HorizontalPodAutoscaler (autoscaling/{version}, the newest "
                          "the cluster serves)", lambda: kube.get(kind, gw.name, gw.ns), 60, gw.ns, gw.selector)
    (metric,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metric["pods"]["metric"]["name"] == "chatgateway_connections", metric
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": str(TARGET)}, metric

    def reads_the_metric():
        st = (kube.get(kind, gw.name, gw.ns) or {}).get("status") or {}
        current = [m for m in st.get("currentMetrics") or [] if m.get("type") == "Pods"]
        return current or None
    kube.eventually(FLOW, "the HPA reading chatgateway_connections through custom.metrics.k8s.io (HPA "
                    "conditions and `kubectl get apiservice v1beta1.custom.metrics.k8s.io` tell why not)",
                    reads_the_metric, 120, gw.ns, gw.selector, every=3)

    # 300 clients at a target of 100 per pod: 3 pods (the maximum). They all connect to
    # the one pod there is; the HPA adds two, which get no new connections: only
    # rebalancing (a pod at least `absThreshold`, 100 by default, and 20 % above the
    # mean sheds through goaway + resume) moves clients onto them.
    first = {p["metadata"]["name"] for p in gw.ready_pods()}
    fleet = Fleet(gw.url(), f"hpa{RUN_ID}u", clients=CLIENTS, rooms=10, send_every_ms=5000, jwt=gw.jwt)
    try:
        with gw.failing_with_diagnosis():
            fleet.wait_ready()
            kube.eventually(FLOW, "the Deployment scaled up to 3 Ready pods",
                            lambda: len(gw.ready_pods()) == 3, 180, gw.ns, gw.selector, every=3)
            seen: dict[str, float] = {}

            def moved():
                seen.clear()
                seen.update({p["metadata"]["name"]: gw.connections(p) for p in gw.ready_pods()})
                added = [n for name, n in seen.items() if name not in first]
                return len(added) == 2 and min(added) >= 20
            kube.eventually(FLOW, "rebalancing to move at least 20 connections onto each pod the HPA added",
                            moved, 120, gw.ns, gw.selector, every=2, detail=lambda: f"connections per pod {seen}")
            shed = sum(gw.metric(p, "chatgateway_rebalance_shed_total") for p in gw.ready_pods()
                       if p["metadata"]["name"] in first)
            if shed < 20:
                gw.fail(f"the added pods got their connections without rebalancing ({shed} shed): {seen}")
            print(f"[{FLOW}] connections per pod after rebalancing: {seen} (first pod: {first}, {shed:.0f} shed)")
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
