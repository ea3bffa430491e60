"""Opt-in end-to-end suite for a real cluster (kind, or any cluster in KUBECONFIG).

    make e2e-cluster        # = .venv/bin/python -m pytest e2e/cluster -v -rs

Needs: KUBECONFIG (or ~/.kube/config) pointing at a cluster you may install into, kubectl
on PATH (for port-forward), and the images the chart references loadable by the cluster:
CHATGW_OPERATOR_IMAGE / CHATGW_GATEWAY_IMAGE (repository:tag; defaults: the chart's), e.g.

    docker build -f operator/Dockerfile -t chatgateway/operator:dev .
    docker build -f gateway/Dockerfile -t chatgateway/gateway:dev .
    kind load docker-image chatgateway/operator:dev chatgateway/gateway:dev
    CHATGW_OPERATOR_IMAGE=chatgateway/operator:dev CHATGW_GATEWAY_IMAGE=chatgateway/gateway:dev make e2e-cluster

Without a configured cluster every test is skipped with a message saying so.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _kubeconfig() -> str | None:
    env = os.environ.get("KUBECONFIG")
    if env:
        return env
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def pytest_collection_modifyitems(config, items):
    reason = None
    if not _kubeconfig():
        reason = "no cluster configured: set KUBECONFIG (e.g. `kind create cluster`) to run e2e/cluster"
    elif not shutil.which("kubectl"):
        reason = "kubectl is not on PATH (needed for port-forward): e2e/cluster skipped"
    else:
        probe = subprocess.run(["kubectl", "version", "--request-timeout=5s"], capture_output=True, text=True)
        if probe.returncode != 0:
            reason = f"the cluster in KUBECONFIG is unreachable ({probe.stderr.strip()[:200]}): e2e/cluster skipped"
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))
