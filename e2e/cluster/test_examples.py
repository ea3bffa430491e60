"""Flow `kubectl apply` of each example file (manifests/examples: its demo Secret and its
ChatGateway), next to the repository's Redis (manifests/redis) where the example uses
Redis: gateway pods Running and Ready, the Service's endpoints are exactly those pods, the
status (conditions, replica counts) matches, and two users with tokens minted by the
documented recipe chat through the Service."""
from __future__ import annotations

import secrets

import pytest
import yaml

import kube
from conftest import APP_VERSION, ROOT
from gateway import Gateway, command, deploy_redis, next_msg

EXAMPLES = sorted(p.name for p in (ROOT / "manifests" / "examples").glob("*.yaml"))
DEFAULT_GATEWAY_IMAGE = f"ghcr.io/chatgateway/chat-gateway:{APP_VERSION}"


def expected_replicas(spec: dict) -> int:
    auto = spec.get("autoscaling") or {}
    if auto.get("enabled"):
        return auto.get("minReplicas", 2)
    # The operator's default: one pod on the memory engine, two with Redis.
    return spec.get("replicas", 2 if (spec.get("gateway") or {}).get("redis") else 1)


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
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "examples" / example).read_text()) if d]
    (cgw,) = [d for d in docs if d["kind"] == "ChatGateway"]
    spec = cgw["spec"]
    gateway = spec["gateway"]
    # What the example's comments tell a user to create first: the Redis URL Secret (the
    # repository's Redis writes it), and random values for every other Secret it refers
    # to and does not carry itself (a JWT secret, the server API's keys).
    if gateway.get("redis"):
        deploy_redis(ns, cluster.images["redis"], flow)
    carried = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"} | {"chat-redis"}
    for name, keys in sorted(secret_refs(spec).items()):
        if name not in carried:
            literals = [f"--from-literal={k}={secrets.token_hex(32)}" for k in sorted(keys)]
            kube.kubectl("create", "secret", "generic", name, *literals, ns=ns)
    image = cluster.images["gateway"]
    if image != DEFAULT_GATEWAY_IMAGE:
        spec.setdefault("image", image)
    # Third-party sidecar images (an OpenTelemetry Collector, a team's bot) cannot be
    # pulled where no registry is reachable, and the node must not even try (traffic stays
    # on this machine): `Never` for those that are not on the node.
    missing = [i for i in images_of_sidecars(spec) if cluster.docker_host and not image_present(cluster, i)]
    for container in [*(spec.get("sidecars") or []), (spec.get("telemetry") or {}).get("collector") or {}]:
        if container.get("image") in missing:
            container["imagePullPolicy"] = "Never"
    kube.apply(docs, ns)
    gw = Gateway(ns, cgw["metadata"]["name"], flow)
    replicas = expected_replicas(spec)

    # Where the sidecar images are missing, the gateway container must still run and be
    # ready beside them, and the ChatGateway must say it is not Ready.
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
        # The documented token recipe works in the gateway container all the same.
        mint(gw, "alice")
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
    # The memory engine's budget follows the container's memory limit: the gateway reads
    # its cgroup (docs/operations.md, "Memory engine memory").
    if not gateway.get("redis"):
        limit = quantity(((spec.get("resources") or {}).get("limits") or {}).get("memory", "512Mi"))
        for p in pods:
            budget = gw.metric(p, "chatgateway_memory_engine_max_bytes")
            assert budget == limit // 2, f"[{flow}] budget {budget}, limit {limit}"

    # Users chat with tokens minted the documented way (the example's comments), sent in
    # the Authorization header (the production example turns `?token=` off). Rooms need a
    # grant where the default namespace says `join: grant`: the token carries it.
    room = "lobby"
    grant = ["--rooms", room] if (gateway.get("defaultNamespace") or {}).get("join") == "grant" else []
    alice, welcome = gw.connect("alice", mint(gw, "alice", *grant))
    assert welcome["user"] == "alice", welcome
    assert welcome["node"] in {p["metadata"]["name"] for p in pods}, welcome
    bob, _ = gw.connect("bob", mint(gw, "bob", *grant))
    for ws in (alice, bob):
        r = command(ws, {"type": "join", "id": 1, "room": room})
        assert r["type"] == "ok", f"[{flow}] join {room}: {r}"
    ok = command(alice, {"type": "send", "id": 2, "room": room, "msg_id": "hello-1", "body": "hello"})
    assert ok["type"] == "ok", ok
    got = next_msg(bob, room)
    assert (got["from"], got["seq"], got["body"]) == ("alice", ok["seq"], "hello"), got
    if grant:
        # Without the grant the same user may not join: deny by default holds.
        carol, _ = gw.connect("carol", mint(gw, "carol"))
        r = command(carol, {"type": "join", "id": 1, "room": room})
        assert (r["type"], r.get("code")) == ("error", "forbidden"), f"[{flow}] join without a grant: {r}"
        carol.close()
    alice.close()
    bob.close()


def quantity(q: str) -> int:
    """A Kubernetes memory quantity in bytes (the suffixes the examples and defaults use)."""
    for suffix, factor in (("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)):
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * factor
    return int(q)


def secret_refs(node, found: dict | None = None) -> dict[str, set[str]]:
    """Every `...SecretRef: {name, key}` of a spec: Secret name -> keys."""
    found = {} if found is None else found
    if isinstance(node, dict):
        for k, v in node.items():
            if k.lower().endswith("secretref") and isinstance(v, dict) and "name" in v:
                found.setdefault(v["name"], set()).add(v.get("key", "secret"))
            else:
                secret_refs(v, found)
    elif isinstance(node, list):
        for v in node:
            secret_refs(v, found)
    return found


def mint(gw: Gateway, user: str, *args: str) -> str:
    """`kubectl exec deploy/NAME -c gateway -- chat-gateway --config ... token --user USER`:
    the examples' recipe, with the gateway's own mounted secret, issuer and audience."""
    with gw.failing_with_diagnosis():
        out = kube.kubectl("exec", f"deploy/{gw.name}", "-c", "gateway", "--", "chat-gateway", "--config",
                           "/etc/chatgateway/config.yaml", "token", "--user", user, *args, ns=gw.ns)
    token = out.strip()
    if token.count(".") != 2:
        gw.fail(f"the token recipe printed no JWT: {out!r}")
    return token


def image_present(cluster, image: str) -> bool:
    try:
        cluster.docker("image", "inspect", image)
        return True
    except kube.Failed:
        return False
