"""The cluster suite: the user flows of chatgateway on a real Kubernetes cluster.

    make e2e-cluster      # against KUBECONFIG when set; otherwise it starts the local
                          # single-node cluster (e2e/k8s/cluster.sh), builds the images
                          # into it (e2e/k8s/images.sh), runs this suite, and stops it

Run by hand against a cluster that is up: `.venv/bin/python -m pytest e2e/cluster -v`
with KUBECONFIG set and kubectl on PATH (`eval "$(bash e2e/k8s/cluster.sh env)"` gives
both for the local cluster; `make cluster-up` starts it with the images). The suite talks to Services and pods by their cluster addresses,
so it runs on a node of the cluster (the local cluster's node is this machine). Images:
CHATGW_OPERATOR_IMAGE, CHATGW_GATEWAY_IMAGE (default: the chart's), CHATGW_REDIS_IMAGE
(default: the one in manifests/redis/redis.yaml), CHATGW_OTLP_IMAGE (the suite's trace
receiver, e2e/images/otlp-receiver); `docker kill` needs DOCKER_HOST of the node's engine.

Without KUBECONFIG every test is skipped with a message; with a KUBECONFIG whose cluster
does not answer, every test fails (a cluster suite that skips is no proof).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

import kube

ROOT = Path(__file__).resolve().parents[2]
CRD = "chatgateways.chatgateway.io"
RUN_ID = uuid.uuid4().hex[:6]
APP_VERSION = re.search(r'^appVersion:\s*"?([^"\s]+)', (ROOT / "charts/chat-gateway/Chart.yaml").read_text(), re.M)[1]


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("KUBECONFIG"):
        skip = pytest.mark.skip(reason="no cluster configured: run `make e2e-cluster` (it starts a local "
                                       "cluster) or set KUBECONFIG")
        for item in items:
            item.add_marker(skip)


class Cluster:
    def __init__(self):
        out = subprocess.run(["kubectl", "version", "-o", "json", "--request-timeout=10s"],
                             capture_output=True, text=True)
        if out.returncode != 0 or '"serverVersion"' not in out.stdout:
            pytest.fail(f"the cluster in KUBECONFIG={os.environ['KUBECONFIG']} does not answer: "
                        f"{out.stderr.strip()[:300]}", pytrace=False)
        server = json.loads(out.stdout)["serverVersion"]
        self.version = (int(server["major"]), int(re.match(r"\d+", server["minor"])[0]))
        # The local cluster's node is this machine and its engine is in DOCKER_HOST.
        self.docker_host = os.environ.get("DOCKER_HOST")
        self.images = {
            "operator": os.environ.get("CHATGW_OPERATOR_IMAGE",
                                       f"ghcr.io/chatgateway/chat-gateway-operator:{APP_VERSION}"),
            "gateway": os.environ.get("CHATGW_GATEWAY_IMAGE", f"ghcr.io/chatgateway/chat-gateway:{APP_VERSION}"),
            "redis": os.environ.get("CHATGW_REDIS_IMAGE", "redis:7.4.1-alpine"),
            "otlp": os.environ.get("CHATGW_OTLP_IMAGE", "chatgateway-e2e/otlp-receiver:dev"),
        }

    def docker(self, *args: str) -> str:
        # Debian's docker client matches the local cluster's engine; any other on PATH too.
        docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
        out = subprocess.run([docker, *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise kube.Failed(f"docker {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    return Cluster()


def split_image(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return (repo, tag) if repo and "/" not in tag else (ref, "latest")


def helm_install(config, release: str, values: dict, ns: str, server_side: bool) -> dict:
    """Helm's install action, waiting for the release's objects (`--wait=watcher`).
    Before Kubernetes 1.25 client-side (`--server-side=false`, docs/install.md): Helm 4
    server-side applies CRDs, and an old API server refuses the CRD's CEL rules in an
    apply while a create drops them."""
    from helm_python import _native
    from helm_python.config import _loads_obj

    payload = _native.call_string(
        "helm_install", config._raw(), config._context_arg(None), _native.HANDLE(0),
        str(ROOT / "charts" / "chat-gateway"), release, json.dumps(values),
        json.dumps({"namespace": ns, "timeout_seconds": 300, "wait": "watcher",
                    "server_side_apply": server_side}))
    return _loads_obj(payload)


@pytest.fixture(scope="session")
def operator(cluster):
    """`helm install` of the chart (Helm's own install action, PyPI helm-python-sdk)
    into a fresh namespace; uninstalled at the end."""
    import helm_python as helm

    ns = f"chatgw-op-{RUN_ID}"
    release = "chatgw"
    repo, tag = split_image(cluster.images["operator"])
    values = {"image": {"repository": repo, "tag": tag, "pullPolicy": "IfNotPresent"},
              "operator": {"logFormat": "text", "logLevel": "info,chat_gateway_operator=debug,kube=warn"}}
    kube.kubectl("create", "namespace", ns)
    config = helm.Config(kubeconfig_path=os.environ["KUBECONFIG"], namespace=ns)
    # `helm uninstall` keeps the CRD (its keep annotation): the suite deletes it after if
    # this install created it, so that the next run can install again.
    crd_was_there = kube.get("crd", CRD) is not None
    try:
        try:
            helm_install(config, release, values, ns, server_side=cluster.version >= (1, 25))
        except Exception as e:  # noqa: BLE001 - the flow's failure message carries the cause
            kube.fail("helm install", f"helm install failed: {e}", ns)
        yield {"namespace": ns, "release": release}
    finally:
        try:
            config.uninstall(release)
        except Exception as e:  # noqa: BLE001 - cleanup goes on
            print(f"helm uninstall: {e}")
        config.close()
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if not crd_was_there:
            kube.kubectl("delete", "crd", CRD, "--wait=false", check=False)


@pytest.fixture
def namespace(request, operator):
    """A namespace for one test, deleted after it (with everything in it)."""
    flow = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:30].strip("-")
    ns = f"e2e-{RUN_ID}-{flow}"
    kube.kubectl("create", "namespace", ns)
    kube.kubectl("label", "namespace", ns, f"chatgateway.io/e2e-run={RUN_ID}")
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
