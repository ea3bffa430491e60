"""The local single-node cluster itself (e2e/k8s/cluster.sh), when that is the cluster
under test: pods may reach nothing outside this machine. Checked by reading the rules,
never by sending packets out."""
from __future__ import annotations

import os
import subprocess

import pytest

BRIDGE = "chatgw0"


@pytest.fixture
def local():
    if not os.environ.get("CHATGW_CLUSTER_DIR"):
        pytest.skip("not the local cluster of e2e/k8s/cluster.sh")


def rules(table: str) -> list[str]:
    out = subprocess.run(["iptables", "-w", "-t", table, "-S", "FORWARD"], capture_output=True, text=True,
                         check=True)
    return out.stdout.splitlines()


def test_the_egress_guard_drops_everything_forwarded_off_the_pod_bridge(local, cluster):
    mangle = rules("mangle")
    # mangle FORWARD runs before filter FORWARD, where kube-proxy and Docker put ACCEPTs.
    for rule in (f"-A FORWARD -i {BRIDGE} ! -o {BRIDGE} -m comment --comment chatgateway-k8s -j DROP",
                 f"-A FORWARD ! -i {BRIDGE} -o {BRIDGE} -m comment --comment chatgateway-k8s -j DROP"):
        assert rule in mangle, f"[egress guard] missing in mangle FORWARD: {rule}\n{mangle}"
    # Nothing earlier in mangle FORWARD accepts or jumps elsewhere.
    first_guard = next(i for i, r in enumerate(mangle) if "chatgateway-k8s" in r)
    assert all(r.startswith("-P ") for r in mangle[:first_guard]), mangle
    # Pods masquerade nowhere: no NAT rule of the bridge plugin for the pod range.
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"], capture_output=True,
                         text=True, check=True).stdout
    assert "CNI-" not in nat, nat


def test_pods_resolve_only_cluster_names(local, cluster):
    resolv = open(os.path.join(os.environ["CHATGW_CLUSTER_DIR"], "resolv.conf")).read()
    assert "nameserver" not in resolv, "kubelet must not hand pods the machine's resolvers"
