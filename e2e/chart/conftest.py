"""Shared helpers for the chart and manifest tests (run by e2e/tests/chart.rs, or
`.venv/bin/python -m pytest e2e/chart -q` from the repository root)."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chat-gateway"
MANIFESTS = ROOT / "manifests"
sys.path.insert(0, str(ROOT / "charts"))

import generate  # noqa: E402  (charts/generate.py: the one renderer)

# Oldest supported Kubernetes; the newest is whatever kubernetes-validate knows.
OLDEST = "1.33.0"


def k8s_versions() -> list[str]:
    from kubernetes_validate.utils import latest_version

    newest = latest_version()
    assert newest.split(".")[:2] != OLDEST.split(".")[:2], "validator knows nothing newer than 1.33"
    return [OLDEST, newest]


def example_values() -> list[Path]:
    files = sorted((CHART / "examples").glob("*-values.yaml"))
    assert files, "no example values files under charts/chat-gateway/examples"
    return files


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict | None = None, *, name: str = "cg", namespace: str = "chat-system") -> dict[str, str]:
    return generate.render_chart(values, name=name, namespace=namespace)


def objects(values: dict | None = None, **kw) -> list[dict]:
    return generate.documents(render(values, **kw))


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def crd() -> dict:
    return yaml.safe_load((ROOT / "crds" / "chatgateway.yaml").read_text())


@pytest.fixture(scope="session")
def default_objects() -> list[dict]:
    return objects({})


def operator_binary() -> Path:
    """The operator binary: the one `cargo test --workspace` built (e2e/tests/chart.rs passes
    it in CHATGW_OPERATOR_BIN), or, run standalone, a fresh debug build."""
    if "CHATGW_OPERATOR_BIN" in os.environ:
        path = Path(os.environ["CHATGW_OPERATOR_BIN"])
    else:
        path = ROOT / "target" / "debug" / "chat-gateway-operator"
        subprocess.run(["cargo", "build", "-q", "-p", "chat-gateway-operator", "--bin",
                        "chat-gateway-operator"], cwd=ROOT, check=True)
    assert path.exists(), f"{path} is missing: cargo build -p chat-gateway-operator"
    return path


def operator_render(path: Path) -> list[dict]:
    """The objects the operator applies for the ChatGateways in `path` (`chat-gateway-operator
    render`): the real pod templates, not a copy of their labels."""
    out = subprocess.run([str(operator_binary()), "render", "-f", str(path)], capture_output=True,
                         text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def free_port(host: str = "127.0.0.1") -> int:
    """A free port on `host` for a server started next, from 20000-29999 as the Rust tests'
    `e2e::process::free_port`: below the ephemeral ports every outgoing connection takes one
    of (a port `bind(0)` gives may be taken by one before the server binds it) and below
    NodePorts."""
    for _ in range(10000):
        port = random.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in 20000-29999 on {host}")
