"""Flows where gateway pods go away while 100-200 reference clients (`chat-fleet`) chat
through the Service: a rolling update (the real kubelet's SIGTERM, the real endpoint
removal), `docker kill` of a gateway container, and evictions through the Eviction API
against the PodDisruptionBudget. Each time every acknowledged message must reach every
member, nothing may be stored twice, and every client that lost its pod must resume."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

import kube
from conftest import RUN_ID
from gateway import Fleet, redis_gateway


def judge(flow: str, gw, verdict: dict, moved_at_least: int) -> None:
    if verdict.get("event") != "done" or verdict["problems"]:
        gw.fail(f"the clients lost or doubled messages or did not resume ({len(verdict['problems'])} problems; "
                f"first 20): {json.dumps(verdict['problems'][:20], indent=1)}")
    if verdict["reconnected"] < moved_at_least:
        gw.fail(f"only {verdict['reconnected']} clients reconnected; at least {moved_at_least} were on the "
                f"pods that went away: {verdict}")
    if verdict["acked"] < 100:
        gw.fail(f"too little traffic to judge: {verdict}")
    print(f"[{flow}] {verdict['acked']} acknowledged messages checked, {verdict['reconnected']} clients "
          f"reconnected, {verdict['resumes']} resumes, {verdict['duplicates_dropped']} duplicates dropped")


def config_maps(gw) -> list[str]:
    """The gateway's config ConfigMaps (named by their content), not the collector's."""
    names = (c["metadata"]["name"] for c in kube.items("configmaps", gw.ns, gw.selector))
    return sorted(n for n in names if n.startswith(f"{gw.name}-config-"))


def test_rolling_update_while_200_clients_send(namespace, cluster):
    flow = "rolling update"
    gw = redis_gateway(namespace, cluster, flow, replicas=2, drain={"timeout": "30s"})
    old = {p["metadata"]["name"] for p in gw.pods()}
    (old_config,) = config_maps(gw)
    fleet = Fleet(gw.url(), f"roll{RUN_ID}u", clients=200, rooms=20, send_every_ms=1000, jwt=gw.jwt)
    try:
        with gw.failing_with_diagnosis():
            fleet.wait_ready()
            time.sleep(3)
            # A config change rolls every pod (the operator's strategy: surge, no unavailable);
            # the new pods mount a new ConfigMap, the old ones keep theirs.
            change = {"spec": {"gateway": {"limits": {"messageBurst": 201}}}}
            kube.kubectl("patch", "chatgateway", gw.name, "--type=merge", "-p", json.dumps(change), ns=gw.ns)
            kube.eventually(flow, "every old pod replaced by a Ready new one",
                            lambda: (lambda pods: len(pods) == 2 and not old & {p["metadata"]["name"] for p in pods}
                                     and all(kube.pod_ready(p) for p in pods))(gw.pods()), 300, gw.ns, gw.selector)
            gw.wait_ready(2)
            time.sleep(3)
            verdict = fleet.stop()
    finally:
        fleet.kill()
    judge(flow, gw, verdict, moved_at_least=200)
    # Once no pod of the old template is left, the old config's ConfigMap goes.
    def only_the_new_one():
        configs = config_maps(gw)
        return configs if len(configs) == 1 and configs[0] != old_config else None
    configs = kube.eventually(flow, "the old config's ConfigMap deleted, the new one kept", only_the_new_one,
                              120, gw.ns, gw.selector, detail=lambda: config_maps(gw))
    mounted = {v["configMap"]["name"] for p in gw.pods() for v in p["spec"]["volumes"] if v["name"] == "config"}
    assert mounted == set(configs), f"[{flow}] the pods mount {mounted}, the namespace holds {configs}"


def test_docker_kill_of_a_gateway_container(namespace, cluster):
    flow = "docker kill"
    if not cluster.docker_host:
        pytest.skip("docker kill needs the node's Docker engine (DOCKER_HOST): the local cluster has it")
    gw = redis_gateway(namespace, cluster, flow, replicas=2)
    fleet = Fleet(gw.url(), f"kill{RUN_ID}u", clients=100, rooms=10, send_every_ms=700, jwt=gw.jwt)
    try:
        with gw.failing_with_diagnosis():
            fleet.wait_ready()
            victim = gw.ready_pods()[0]
            name = victim["metadata"]["name"]
            on_victim = int(gw.connections(victim))
            restarts = {s["name"]: s["restartCount"] for s in victim["status"]["containerStatuses"]}["gateway"]
            ids = cluster.docker("ps", "-q", "--filter", f"label=io.kubernetes.pod.name={name}",
                                 "--filter", f"label=io.kubernetes.pod.namespace={gw.ns}",
                                 "--filter", "label=io.kubernetes.container.name=gateway").split()
            assert len(ids) == 1, f"[{flow}] gateway container of {name}: {ids}"
            cluster.docker("kill", ids[0])

            def restarted_and_ready():
                pod = kube.get("pod", name, gw.ns)
                st = {s["name"]: s for s in pod["status"].get("containerStatuses") or []}["gateway"]
                return st["restartCount"] > restarts and kube.pod_ready(pod)
            kube.eventually(flow, f"kubelet restarted the killed container of {name}", restarted_and_ready, 180,
                            gw.ns, gw.selector)
            time.sleep(3)
            verdict = fleet.stop()
    finally:
        fleet.kill()
    judge(flow, gw, verdict, moved_at_least=on_victim)


def evict(ns: str, pod: str) -> tuple[bool, str]:
    """POST pods/NAME/eviction (policy/v1 where served, else policy/v1beta1). Returns
    (allowed, what the API server said)."""
    version = "policy/v1" if "policy/v1\n" in kube.kubectl("api-versions") else "policy/v1beta1"
    body = json.dumps({"apiVersion": version, "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}})
    res = subprocess.run(["kubectl", "create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-"],
                         input=body, capture_output=True, text=True, timeout=60)
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def test_eviction_respects_the_disruption_budget(namespace, cluster):
    flow = "eviction"
    gw = redis_gateway(namespace, cluster, flow, replicas=2, disruptionBudget={"maxUnavailable": 1},
                       drain={"timeout": "20s"})

    def budget():
        pdb = kube.get("pdb", gw.name, gw.ns)
        return pdb if pdb and (pdb.get("status") or {}).get("disruptionsAllowed") == 1 else None
    pdb = kube.eventually(flow, "the ChatGateway's PodDisruptionBudget allowing one disruption (the operator "
                          "writes it in the newest policy version the cluster serves)", budget, 90, gw.ns,
                          gw.selector)
    assert pdb["spec"]["maxUnavailable"] == 1, pdb["spec"]
    fleet = Fleet(gw.url(), f"evict{RUN_ID}u", clients=100, rooms=10, send_every_ms=700, jwt=gw.jwt)
    try:
        with gw.failing_with_diagnosis():
            fleet.wait_ready()
            first, second = gw.ready_names(2)
            allowed, msg = evict(gw.ns, first)
            if not allowed:
                gw.fail(f"evicting {first} with one disruption allowed was refused: {msg}")
            allowed, msg = evict(gw.ns, second)
            if allowed:
                gw.fail(f"evicting {second} while {first} is going away was allowed: the budget did not hold")
            if "disruption budget" not in msg and "TooManyRequests" not in msg:
                gw.fail(f"evicting {second} was refused for another reason than the budget: {msg}")

            def replaced():
                ready = [p["metadata"]["name"] for p in gw.ready_pods()]
                return len(ready) == 2 and first not in ready and budget()
            kube.eventually(flow, f"a Ready replacement for {first} and the budget back to one", replaced, 180,
                            gw.ns, gw.selector)
            allowed, msg = evict(gw.ns, second)
            if not allowed:
                gw.fail(f"evicting {second} after the replacement was Ready was refused: {msg}")
            kube.eventually(flow, f"a Ready replacement for {second}",
                            lambda: (lambda r: len(r) == 2 and second not in r)(
                                [p["metadata"]["name"] for p in gw.ready_pods()]), 180, gw.ns, gw.selector)
            time.sleep(3)
            verdict = fleet.stop()
    finally:
        fleet.kill()
    judge(flow, gw, verdict, moved_at_least=1)
