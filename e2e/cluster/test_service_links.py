"""Flow: Kubernetes injects service-link variables into every pod of a namespace, named
after its Services. A Service `chatgw-redis` gives `CHATGW_REDIS_PORT=tcp://...` and a
ChatGateway named `chatgw` gets a Service that gives `CHATGW_PORT`, `CHATGW_SERVICE_HOST`
and more: all shaped like the gateway's own `CHATGW_*` configuration. The gateway must
not break (service links off for its pods; the config loader ignores such variables)."""
from __future__ import annotations

import kube
from gateway import command, next_msg, redis_gateway

FLOW = "service links"


def test_services_named_like_the_config_prefix_do_not_break_the_gateway(namespace, cluster):
    ns = namespace
    kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "chatgw-redis"},
                "spec": {"selector": {"app": "nothing"}, "ports": [{"port": 6379}]}}, ns)
    gw = redis_gateway(ns, cluster, FLOW, name="chatgw")
    pods = gw.ready_pods()
    for p in pods:
        restarts = sum(s["restartCount"] for s in p["status"]["containerStatuses"])
        if restarts:
            gw.fail(f"{p['metadata']['name']} restarted {restarts} times")
    # The scenario really happened: the Services existed before the pods.
    svc = kube.get("service", "chatgw-redis", ns)
    assert svc["metadata"]["creationTimestamp"] <= min(p["metadata"]["creationTimestamp"] for p in pods)
    alice, _ = gw.connect("alice")
    bob, _ = gw.connect("bob")
    for ws in (alice, bob):
        assert command(ws, {"type": "join", "id": 1, "room": "links"})["type"] == "ok"
    ok = command(alice, {"type": "send", "id": 2, "room": "links", "body": "still here"})
    assert ok["type"] == "ok", ok
    assert next_msg(bob, "links")["seq"] == ok["seq"]
    alice.close()
    bob.close()
