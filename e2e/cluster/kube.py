"""kubectl, waiting, and failure messages that say which flow broke and why (the
namespace's pods, events, the ChatGateway's status and the logs of its pods)."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml


class Failed(AssertionError):
    pass


def kubectl(*args: str, ns: str | None = None, input: str | None = None, check: bool = True,
            timeout: float = 120) -> str:
    cmd = ["kubectl", *(["-n", ns] if ns else []), *args]
    try:
        out = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"`{' '.join(cmd)}` did not finish within {timeout}s") from None
    if check and out.returncode != 0:
        raise Failed(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}")
    return out.stdout


def get(kind: str, name: str, ns: str | None = None) -> dict | None:
    """The object, or None when it does not exist. Any other error (an API server busy for
    a moment, a timeout) raises Failed, which `eventually` retries: taking it for "gone"
    ended a wait on the first hiccup."""
    cmd = ["kubectl", *(["-n", ns] if ns else []), "get", kind, name, "-o", "json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise Failed(f"`{' '.join(cmd)}` did not finish within 60s") from None
    if out.returncode == 0:
        return json.loads(out.stdout)
    if "(NotFound)" in out.stderr:
        return None
    raise Failed(f"`{' '.join(cmd)}` failed: {out.stderr.strip()}")


def items(kind: str, ns: str, selector: str | None = None) -> list[dict]:
    args = ["get", kind, "-o", "json", *(["-l", selector] if selector else [])]
    return json.loads(kubectl(*args, ns=ns))["items"]


def apply(obj: dict | list[dict], ns: str) -> None:
    docs = obj if isinstance(obj, list) else [obj]
    kubectl("apply", "-f", "-", ns=ns, input=yaml.safe_dump_all(docs))


def pod_ready(pod: dict) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp") \
        and any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def diagnose(ns: str, selector: str | None = None, log_lines: int = 25) -> str:
    """What a person would look at: pods, events, ChatGateways and pod logs."""
    parts = []

    def section(title: str, cmd: list[str]) -> None:
        out = subprocess.run(["kubectl", "-n", ns, *cmd], capture_output=True, text=True, timeout=60)
        text = (out.stdout or out.stderr).strip()
        parts.append(f"--- {title}\n{text}")

    section("pods", ["get", "pods", "-o", "wide"])
    section("events (last 30)", ["get", "events", "--sort-by=.lastTimestamp"])
    parts[-1] = "\n".join(parts[-1].splitlines()[-31:])
    section("chatgateways", ["get", "chatgateways", "-o",
                             "custom-columns=NAME:.metadata.name,GEN:.metadata.generation,"
                             "OBSERVED:.status.observedGeneration,READY:.status.readyReplicas,"
                             "REPLICAS:.status.replicas,CONDITIONS:.status.conditions"])
    try:
        pods = items("pods", ns, selector)
    except Failed:
        pods = []
    for pod in pods[:6]:
        name = pod["metadata"]["name"]
        for c in pod["spec"]["containers"]:
            section(f"logs {name}/{c['name']} (last {log_lines})",
                    ["logs", name, "-c", c["name"], f"--tail={log_lines}"])
            restarted = any(s.get("restartCount", 0) > 0 for s in pod["status"].get("containerStatuses") or [])
            if restarted:
                section(f"previous logs {name}/{c['name']}",
                        ["logs", name, "-c", c["name"], "--previous", f"--tail={log_lines}"])
    return "\n".join(parts)


def fail(flow: str, why: str, ns: str | None = None, selector: str | None = None):
    detail = f"\n{diagnose(ns, selector)}" if ns else ""
    pytest.fail(f"[{flow}] {why}{detail}", pytrace=False)


def eventually(flow: str, what: str, check, timeout: float, ns: str | None = None,
               selector: str | None = None, every: float = 1.0, detail=None):
    """Polls `check` until it returns something truthy; otherwise fails the flow with the
    last value, `detail()` (what the check saw) and the namespace's diagnosis."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (Failed, OSError) as e:  # OSError: a pod's HTTP endpoint not answering yet
            last = f"error: {e}"
        else:
            if last:
                return last
        time.sleep(every)
    seen = f"; {detail()}" if detail else ""
    fail(flow, f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}{seen})", ns, selector)
