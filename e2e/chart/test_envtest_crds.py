"""The CRD story of the chart on a fresh real kube-apiserver (v1.20.2, its own server, apart
from test_envtest.py's): `crds.enabled` installs the CRD with the release (and Helm's
kubeVersion check admits 1.20), `crds.keep` leaves it after `helm uninstall`, and a
ChatGateway in the same release as its CRD needs the documented two steps."""
from __future__ import annotations

import json

import helm_python as helm
import pytest

from conftest import CHART
from test_envtest import envtest, helm_install, wait_crd  # noqa: F401  (envtest: a fixture)

NS = "crd-ns"
CRD = "chatgateways.chatgateway.io"


def helm_upgrade(config: helm.Config, name: str, values: dict, namespace: str) -> dict:
    """Helm's upgrade action, client-side apply like helm_install (v1.20 and CEL)."""
    from helm_python import _native
    from helm_python.config import _loads_obj

    payload = _native.call_string(
        "helm_upgrade", config._raw(), config._context_arg(None), _native.HANDLE(0),
        str(CHART), name, json.dumps(values),
        json.dumps({"namespace": namespace, "timeout_seconds": 60, "reuse_values": True,
                    "server_side_apply": "false"}))
    return _loads_obj(payload)


@pytest.fixture(scope="module")
def config(envtest):  # noqa: F811
    c = helm.Config(kubeconfig_path=envtest["kubeconfig"], namespace=NS)
    yield c
    c.close()


# In file order, on one fresh server.

def test_first_install_cannot_create_a_chatgateway_beside_its_crd(envtest, config):  # noqa: F811
    api = envtest["admin"]
    assert api.get("CustomResourceDefinition", CRD) is None, "the server is not fresh"
    with pytest.raises(helm.HelmError) as err:
        helm_install(config, "cg-first", {"chatGateway": {"enabled": True}}, NS)
    assert "ChatGateway" in str(err.value), err.value
    print(f"first install with the ChatGateway: {err.value}")
    # Helm refused before creating anything.
    assert api.get("CustomResourceDefinition", CRD) is None


def test_install_creates_the_crd_with_labels_and_keep(envtest, config):  # noqa: F811
    api = envtest["admin"]
    # crds.enabled and crds.keep by default. Helm's kubeVersion check passes on v1.20.2, and
    # its validation of the CRD does too: the template leaves the CEL rules (1.25+) out.
    helm_install(config, "cg", {}, NS)
    wait_crd(api)
    crd = api.get("CustomResourceDefinition", CRD)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "cg"
    labels = crd["metadata"]["labels"]
    assert (labels["app.kubernetes.io/managed-by"], labels["app.kubernetes.io/component"]) == ("Helm", "crds")


def test_upgrade_then_adds_the_chatgateway(envtest, config):  # noqa: F811
    api = envtest["admin"]
    helm_upgrade(config, "cg", {"chatGateway": {"enabled": True, "name": "chat-demo",
                                                "spec": {"gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": True}}}}}, NS)
    cgw = api.get("ChatGateway", "chat-demo", NS)
    assert cgw is not None, "the upgrade created the ChatGateway"
    assert cgw["metadata"]["labels"]["app.kubernetes.io/instance"] == "cg"


def test_uninstall_keeps_the_crd(envtest, config):  # noqa: F811
    api = envtest["admin"]
    config.uninstall("cg", timeout=60)
    assert api.get("Deployment", "cg-chat-gateway", NS) is None, "the operator went with the release"
    crd = api.get("CustomResourceDefinition", CRD)
    assert crd is not None and crd["metadata"].get("deletionTimestamp") is None, \
        "crds.keep: the CRD (and every ChatGateway) stays"
