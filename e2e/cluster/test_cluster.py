"""On a real cluster: install the chart, create a ChatGateway (Redis engine, autoscaling,
disruption budget), wait for Ready, chat through a port-forward, roll the Deployment while
clients chat and assert that no acknowledged message is lost, and check the HPA and PDB.
Opt-in; see conftest.py for what it needs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import uuid

import pytest
import yaml

from conftest import ROOT, _kubeconfig
from wsclient import Closed, WebSocket

NS = f"chatgw-e2e-{uuid.uuid4().hex[:6]}"
RELEASE = "chatgw-e2e"
CGW = "chat"
ROOM = "e2e-room"


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    out = subprocess.run(["kubectl", "-n", NS, *args], input=input, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def get(kind: str, name: str) -> dict | None:
    out = subprocess.run(["kubectl", "-n", NS, "get", kind, name, "-o", "json"], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait(what: str, check, timeout: float):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(2)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def image_values(env: str, default_repo: str) -> dict:
    ref = os.environ.get(env)
    if not ref:
        return {}
    repo, _, tag = ref.rpartition(":")
    return {"repository": repo, "tag": tag} if repo else {"repository": ref}


@pytest.fixture(scope="module")
def installed():
    import helm_python as helm

    subprocess.run(["kubectl", "create", "namespace", NS], capture_output=True)
    values = {"image": {"repository": "ghcr.io/chatgateway/chat-gateway-operator", "pullPolicy": "IfNotPresent",
                        **image_values("CHATGW_OPERATOR_IMAGE", "")},
              "operator": {"logFormat": "text"}}
    config = helm.Config(kubeconfig_path=_kubeconfig(), namespace=NS)
    try:
        config.install(str(ROOT / "charts" / "chat-gateway"), RELEASE, values, namespace=NS,
                       wait="watcher", timeout=300)
        yield
    finally:
        try:
            config.uninstall(RELEASE)
        except Exception as e:  # noqa: BLE001 - cleanup goes on
            print(f"helm uninstall: {e}")
        config.close()
        subprocess.run(["kubectl", "delete", "namespace", NS, "--wait=false"], capture_output=True)


@pytest.fixture(scope="module")
def gateway(installed):
    kubectl("apply", "-f", str(ROOT / "manifests" / "redis" / "redis.yaml"))
    kubectl("rollout", "status", "deployment/redis", "--timeout=180s")
    gw_image = image_values("CHATGW_GATEWAY_IMAGE", "")
    spec = {
        "replicas": 2,
        "gateway": {"auth": {"mode": "insecure"},
                    "redis": {"urlSecretRef": {"name": "chat-redis", "key": "url"}},
                    "limits": {"messageRate": 200, "messageBurst": 200}},
        "drain": {"timeout": "20s"},
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4, "targetConnectionsPerPod": 500},
        "disruptionBudget": {"maxUnavailable": 1},
        "placement": {"topologySpreadConstraints": []},
    }
    if gw_image:
        spec["image"] = f"{gw_image['repository']}:{gw_image.get('tag', 'latest')}"
        spec["imagePullPolicy"] = "IfNotPresent"
    cgw = {"apiVersion": "chatgateway.io/v1alpha1", "kind": "ChatGateway", "metadata": {"name": CGW}, "spec": spec}
    kubectl("apply", "-f", "-", input=yaml.safe_dump(cgw))
    ready(timeout=300)
    return cgw


def ready(timeout: float) -> dict:
    def check():
        cgw = get("chatgateway", CGW)
        if not cgw or (cgw.get("status") or {}).get("observedGeneration") != cgw["metadata"]["generation"]:
            return None
        conds = {c["type"]: c for c in cgw["status"].get("conditions", [])}
        return cgw if conds.get("Ready", {}).get("status") == "True" else None
    return wait(f"ChatGateway {NS}/{CGW} Ready", check, timeout)


class PortForward:
    """`kubectl port-forward svc/chat`, restarted when its pod goes away (a roll)."""

    def __init__(self):
        self.proc = None
        self.port = None
        self.start()

    def start(self):
        self.stop()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(["kubectl", "-n", NS, "port-forward", f"svc/{CGW}", f"{self.port}:80"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        assert "Forwarding" in line, f"port-forward: {line}"

    def connect(self, user: str) -> WebSocket:
        for _ in range(30):
            try:
                if self.proc.poll() is not None:
                    self.start()
                return WebSocket("127.0.0.1", self.port, f"/ws?user={user}")
            except (OSError, Closed, AssertionError):
                time.sleep(1)
                try:
                    self.start()
                except AssertionError:
                    pass
        raise AssertionError("could not reconnect through port-forward")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def command(ws: WebSocket, frame: dict, on_msg=None) -> dict:
    ws.send(frame)
    while True:
        f = ws.recv()
        if f.get("type") in ("ok", "error") and f.get("ref") == frame["id"]:
            return f
        if f.get("type") == "msg" and on_msg:
            on_msg(f)


def test_chat_through_a_port_forward(gateway):
    pf = PortForward()
    try:
        alice, bob = pf.connect("alice"), pf.connect("bob")
        assert alice.recv()["type"] == "welcome" and bob.recv()["type"] == "welcome"
        assert command(bob, {"type": "join", "id": 1, "room": "hello"})["type"] == "ok"
        assert command(alice, {"type": "join", "id": 1, "room": "hello"})["type"] == "ok"
        ok = command(alice, {"type": "send", "id": 2, "room": "hello", "msg_id": "hi-1", "body": {"text": "hi"}})
        assert ok["type"] == "ok", ok
        while True:
            f = bob.recv()
            if f["type"] == "msg":
                assert (f["room"], f["seq"], f["from"], f["body"]) == ("hello", ok["seq"], "alice", {"text": "hi"})
                break
        alice.close()
        bob.close()
    finally:
        pf.stop()


def test_rolling_update_loses_no_message(gateway):
    sent: dict[str, int] = {}   # msg_id -> seq acknowledged
    received: dict[int, str] = {}
    stop = threading.Event()
    errors: list[str] = []

    def sender():
        pf = PortForward()
        n = 0
        ws = None
        try:
            while not stop.is_set() or n < 20:
                n += 1
                msg_id = f"m-{n}"
                while msg_id not in sent:
                    try:
                        if ws is None:
                            ws = pf.connect("sender")
                            ws.recv()  # welcome
                            r = command(ws, {"type": "join", "id": f"j{n}", "room": ROOM})
                            assert r["type"] == "ok", r
                        r = command(ws, {"type": "send", "id": n, "room": ROOM, "msg_id": msg_id, "body": n})
                        if r["type"] == "ok":
                            sent[msg_id] = r["seq"]
                        elif r.get("code") not in ("unavailable", "rate_limited"):
                            errors.append(f"send {msg_id}: {r}")
                            return
                        else:
                            time.sleep(0.5)
                    except (Closed, OSError):
                        ws = None  # goaway/close 1012 or the port-forward died: retry, same msg_id
                time.sleep(0.05)
        finally:
            pf.stop()

    def receiver():
        pf = PortForward()
        last = 0
        ws = None

        def got(f):
            nonlocal last
            if f["room"] == ROOM:
                received.setdefault(f["seq"], f["msg_id"])
                last = max(last, f["seq"])
        try:
            while not stop.is_set() or (sent and last < max(sent.values())):
                try:
                    if ws is None:
                        ws = pf.connect("receiver")
                        ws.recv()
                        frame = {"type": "join", "id": 1, "room": ROOM}
                        if last:
                            frame["since"] = last
                        r = command(ws, frame, on_msg=got)
                        assert r["type"] == "ok", r
                        if last and r.get("recovered") is False:
                            errors.append(f"join since {last} not recovered: {r}")
                            return
                    f = ws.recv()
                    if f["type"] == "msg":
                        got(f)
                except (Closed, OSError):
                    ws = None  # closed, rolled away, or idle past the socket timeout: rejoin since `last`
        finally:
            pf.stop()

    threads = [threading.Thread(target=receiver, daemon=True), threading.Thread(target=sender, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(5)
    # A template change rolls every pod (maxSurge 25%, maxUnavailable 0, drain with goaway).
    kubectl("patch", "chatgateway", CGW, "--type=merge", "-p",
            json.dumps({"spec": {"podAnnotations": {"e2e/rolled-at": str(time.time())}}}))
    kubectl("rollout", "status", f"deployment/{CGW}", "--timeout=300s")
    ready(timeout=120)
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(sent) >= 20
    acked = set(sent.values())
    missing = sorted(s for s in acked if s not in received)
    assert not missing, f"acknowledged messages never delivered after the roll: seqs {missing[:20]}"
    assert {received[s] for s in acked} == set(sent), "delivered msg_ids differ from the acknowledged ones"


def test_hpa_and_pdb_have_the_expected_specs(gateway):
    hpa = get("hpa", CGW)
    assert hpa and hpa["apiVersion"] == "autoscaling/v2", hpa
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": CGW}
    (metric,) = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert metric["pods"]["metric"]["name"] == "chatgateway_connections"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "500"}
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"], "conservative scale-down"
    pdb = get("pdb", CGW)
    assert pdb and pdb["apiVersion"] == "policy/v1", pdb
    assert pdb["spec"]["maxUnavailable"] == 1
    dep = get("deployment", CGW)
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
