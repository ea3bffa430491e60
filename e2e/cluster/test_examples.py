"""Flow `kubectl apply` of each example ChatGateway (manifests/examples), next to the
repository's Redis (manifests/redis): gateway pods Running and Ready, the Service's
endpoints are exactly those pods, and the status (conditions, replica counts) matches."""
from __future__ import annotations

import secrets
import time

import pytest
import yaml

import kube
from conftest import APP_VERSION, ROOT
from gateway import Gateway, deploy_redis, hs256

EXAMPLES = sorted(p.name for p in (ROOT / "manifests" / "examples").glob("*.yaml"))
DEFAULT_GATEWAY_IMAGE = f"ghcr.io/chatgateway/chat-gateway:{APP_VERSION}"


def expected_replicas(spec: dict) -> int:
    auto = spec.get("autoscaling") or {}
    if auto.get("enabled"):
        return auto.get("minReplicas", 2)
    return spec.get("replicas", 2)


def images_of_sidecars(spec: dict) -> list[str]:
    out = [s["image"] for s in spec.get("sidecars") or []]
    collector = (spec.get("telemetry") or {}).get("collector") or {}
    if collector.get("enabled"):
        out.append(collector["image"])
    return out


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_chatgateway_runs(example, namespace, cluster):
    flow = f"apply {example}"
    ns = namespace
    cgw = yaml.safe_load((ROOT / "manifests" / "examples" / example).read_text())
    spec = cgw["spec"]
    deploy_redis(ns, cluster.images["redis"], flow)
    jwt_secret = secrets.token_hex(32)
    kube.kubectl("create", "secret", "generic", "chat-jwt", f"--from-literal=secret={jwt_secret}", ns=ns)
    image = cluster.images["gateway"]
    if image != DEFAULT_GATEWAY_IMAGE:
        cgw["spec"].setdefault("image", image)
    kube.apply(cgw, ns)
    gw = Gateway(ns, cgw["metadata"]["name"], flow)
    replicas = expected_replicas(spec)

    # Third-party sidecar images (an OpenTelemetry Collector, a team's bot) cannot be
    # pulled where no registry is reachable: there the gateway container must still run
    # and be ready beside them, and the ChatGateway must say it is not Ready.
    missing = [i for i in images_of_sidecars(spec) if cluster.docker_host and not image_present(cluster, i)]
    if missing:
        def gateway_containers_ready():
            pods = gw.pods()
            ready = [p for p in pods if any(s["name"] == "gateway" and s.get("ready")
                                            for s in p["status"].get("containerStatuses") or [])]
            return len(pods) == replicas and len(ready) == replicas and pods
        pods = kube.eventually(flow, f"{replicas} pods whose gateway container is ready (sidecar images "
                               f"{missing} are not on this node)", gateway_containers_ready, 240, ns, gw.selector)
        waiting = {s["state"].get("waiting", {}).get("reason") for p in pods
                   for s in p["status"].get("containerStatuses") or [] if s["image"] in missing}
        assert waiting <= {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"}, waiting
        conds = kube.eventually(flow, "status conditions", lambda: gw.conditions(), 60, ns, gw.selector)
        assert conds.get("Ready", {}).get("status") != "True", conds
        return

    st = gw.wait_ready(replicas)["status"]
    pods = gw.ready_pods()
    assert st["replicas"] == replicas == len(pods), st
    assert st["readyReplicas"] == replicas, st
    assert st.get("selector") == gw.selector or set(st.get("selector", "").split(",")) == set(gw.selector.split(","))

    def endpoints_are_the_pods():
        ep = kube.get("endpoints", gw.name, ns) or {}
        ips = {a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}
        want = {p["status"]["podIP"] for p in gw.ready_pods()}
        return ips == want and ips
    kube.eventually(flow, "the Service's endpoints to be the ready pods", endpoints_are_the_pods, 60, ns,
                    gw.selector)
    # Every pod answers on its own address, and the Service reaches the gateway.
    for p in pods:
        assert "chatgateway_connections" in gw.metrics(p)
    auth = spec["gateway"]["auth"]
    token = None
    if auth["mode"] == "jwt":
        claims = {"sub": "example-user", "exp": int(time.time()) + 300}
        if auth["jwt"].get("issuer"):
            claims["iss"] = auth["jwt"]["issuer"]
        token = hs256(jwt_secret, claims)
    ws, welcome = gw.connect("example-user", token)
    assert welcome["user"] == "example-user", welcome
    assert welcome["node"] in {p["metadata"]["name"] for p in pods}, welcome
    ws.close()


def image_present(cluster, image: str) -> bool:
    try:
        cluster.docker("image", "inspect", image)
        return True
    except kube.Failed:
        return False
