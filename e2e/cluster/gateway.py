"""A ChatGateway under test: the repository's Redis, the ChatGateway itself, its pods,
and clients that connect through its Service from the node."""
from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import queue
import secrets
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

import kube
from wsclient import Closed, WebSocket

ROOT = Path(__file__).resolve().parents[2]
SELECTOR = "app.kubernetes.io/name=chat-gateway,app.kubernetes.io/instance={name}"


def deploy_redis(ns: str, image: str, flow: str) -> None:
    """manifests/redis/redis.yaml with the suite's Redis image (the Secret `chat-redis`
    holds its URL)."""
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests/redis/redis.yaml").read_text()) if d]
    for d in docs:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                c["image"] = image
                c["imagePullPolicy"] = "IfNotPresent"
    kube.apply(docs, ns)
    kube.eventually(flow, "Redis Ready", lambda: any(kube.pod_ready(p) for p in kube.items(
        "pods", ns, "app.kubernetes.io/name=redis")), 180, ns, "app.kubernetes.io/name=redis")


class Jwt:
    """How a ChatGateway's clients log in: HS256 tokens with its secret, audience and
    issuer (and extra claims, e.g. a `rooms` grant)."""

    def __init__(self, secret: str, audience: str, issuer: str | None = None, claims: dict | None = None):
        self.secret, self.audience, self.issuer, self.claims = secret, audience, issuer, claims or {}

    def token(self, user: str, ttl: int = 600) -> str:
        claims = {"sub": user, "aud": self.audience, "exp": int(time.time()) + ttl, **self.claims}
        if self.issuer:
            claims["iss"] = self.issuer
        return hs256(self.secret, claims)


class Gateway:
    def __init__(self, ns: str, name: str, flow: str, jwt: Jwt | None = None):
        self.ns, self.name, self.flow, self.jwt = ns, name, flow, jwt
        self.selector = SELECTOR.format(name=name)

    @classmethod
    def apply(cls, ns: str, name: str, spec: dict, flow: str, image: str | None = None,
              jwt: Jwt | None = None) -> "Gateway":
        spec = json.loads(json.dumps(spec))
        if image:
            spec.setdefault("image", image)
            spec.setdefault("imagePullPolicy", "IfNotPresent")
        cgw = {"apiVersion": "chatgateway.io/v1beta1", "kind": "ChatGateway",
               "metadata": {"name": name}, "spec": spec}
        kube.apply(cgw, ns)
        return cls(ns, name, flow, jwt)

    def cgw(self) -> dict:
        cgw = kube.get("chatgateway", self.name, self.ns)
        if cgw is None:
            # Failed, not the flow's failure: a wait (kube.eventually) retries it.
            raise kube.Failed(f"ChatGateway {self.ns}/{self.name} is gone")
        return cgw

    def conditions(self) -> dict:
        return {c["type"]: c for c in (self.cgw().get("status") or {}).get("conditions") or []}

    def pods(self) -> list[dict]:
        return kube.items("pods", self.ns, self.selector)

    def ready_pods(self) -> list[dict]:
        return [p for p in self.pods() if kube.pod_ready(p)]

    def ready_names(self, n: int, timeout: float = 60) -> list[str]:
        """The names of exactly `n` Ready pods, sorted, waiting for them: a pod Ready at an
        earlier wait may miss a probe under load (one unready pod broke an unpacking)."""
        def check():
            names = sorted(p["metadata"]["name"] for p in self.ready_pods())
            return names if len(names) == n else None
        return kube.eventually(self.flow, f"{n} Ready pods of {self.name}", check, timeout, self.ns,
                               self.selector)

    def wait_ready(self, replicas: int, timeout: float = 240) -> dict:
        """The ChatGateway reports Ready for its current generation with `replicas` ready
        pods, and exactly those pods are Ready (no old ones left)."""
        def check():
            cgw = self.cgw()
            st = cgw.get("status") or {}
            conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
            pods = self.pods()
            ready = [p for p in pods if kube.pod_ready(p)]
            if st.get("observedGeneration") == cgw["metadata"]["generation"] and conds.get("Ready") == "True" \
                    and st.get("readyReplicas") == replicas and len(ready) == replicas == len(pods):
                return cgw
            return None
        return kube.eventually(self.flow, f"ChatGateway {self.name} Ready with {replicas} pods", check,
                               timeout, self.ns, self.selector)

    def fail(self, why: str):
        kube.fail(self.flow, why, self.ns, self.selector)

    @contextlib.contextmanager
    def failing_with_diagnosis(self):
        """Turns an error of a helper (kubectl, chat-fleet) into this flow's failure with
        the namespace's diagnosis."""
        try:
            yield
        except kube.Failed as e:
            self.fail(str(e))

    def service(self) -> tuple[str, int]:
        svc = kube.get("service", self.name, self.ns)
        if not svc:
            raise kube.Failed(f"Service {self.name} missing")
        return svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]

    def url(self) -> str:
        ip, port = self.service()
        return f"ws://{ip}:{port}/ws"

    def connect(self, user: str, token: str | None = None) -> tuple[WebSocket, dict]:
        """A client through the Service with a token in the Authorization header (`token`,
        or one minted for `user` with the gateway's JWT settings); `?user=` when the
        gateway runs without JWT. Returns it and its welcome frame."""
        ip, port = self.service()
        if token is None and self.jwt:
            token = self.jwt.token(user)
        path, headers = ("/ws", {"Authorization": f"Bearer {token}"}) if token else (f"/ws?user={user}", {})
        last = None
        for _ in range(30):
            try:
                ws = WebSocket(ip, port, path, headers=headers)
                welcome = ws.recv()
                if welcome.get("type") == "welcome":
                    return ws, welcome
                last = welcome
            except (OSError, Closed) as e:
                last = e
            time.sleep(1)
        self.fail(f"no connection through Service {ip}:{port} for {user}: {last}")

    def connect_on(self, user: str, pod: str, tries: int = 60) -> WebSocket:
        """A client through the Service that landed on `pod` (welcome.node is the pod's
        name): kube-proxy picks a pod at random per connection."""
        for _ in range(tries):
            ws, welcome = self.connect(user)
            if welcome.get("node") == pod:
                return ws
            ws.close()
        self.fail(f"{tries} connections through the Service never reached pod {pod}")

    def metrics(self, pod: dict) -> str:
        ip = pod["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=10) as r:
            return r.read().decode()

    def metric(self, pod: dict, name: str) -> float:
        """A metric of the pod's /metrics (summed over its label sets; 0 when absent)."""
        total = 0.0
        for line in self.metrics(pod).splitlines():
            if line.split("{")[0].split(" ")[0] == name:
                total += float(line.split()[-1])
        return total

    def connections(self, pod: dict) -> float:
        return self.metric(pod, "chatgateway_connections")


def hs256(secret: str, claims: dict) -> str:
    """A JWT signed with HS256 (what a product's auth service would hand a client)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def command(ws: WebSocket, frame: dict, on_frame=None) -> dict:
    """Sends a command and returns its one reply; other frames go to `on_frame`."""
    ws.send(frame)
    while True:
        f = ws.recv()
        if f.get("type") in ("ok", "error") and f.get("ref") == frame["id"]:
            return f
        if on_frame:
            on_frame(f)


def next_msg(ws: WebSocket, room: str | None = None) -> dict:
    """The next message (of `room`); other frames are skipped."""
    while True:
        f = ws.recv()
        if f.get("type") == "msg" and (room is None or f.get("room") == room):
            return f


class Fleet:
    """`chat-fleet` (e2e/src/bin/chat-fleet.rs): reference clients that reconnect,
    resume, retry and deduplicate, and report what they lost."""

    def __init__(self, url: str, prefix: str, clients: int, rooms: int, send_every_ms: int = 700,
                 jwt: Jwt | None = None):
        binary = Path(os.environ.get("CHATGW_FLEET_BIN", ROOT / "target" / "release" / "chat-fleet"))
        if not binary.exists():
            subprocess.run(["cargo", "build", "--release", "-q", "-p", "e2e", "--bin", "chat-fleet"],
                           cwd=ROOT, check=True)
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [str(binary), "--url", url, "--prefix", prefix, "--clients", str(clients), "--rooms", str(rooms),
             "--send-every-ms", str(send_every_ms),
             *(["--jwt-audience", jwt.audience] if jwt else [])],
            # The secret through the environment, not the command line (ps shows that).
            env={**os.environ, **({"CHAT_FLEET_JWT_SECRET": jwt.secret} if jwt else {})},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, bufsize=1)
        # Its output through a queue, so that no read can hang a test.
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _line(self, timeout: float = 180) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise kube.Failed(f"chat-fleet said nothing for {timeout}s") from None
        if line is None:
            self.proc.wait(10)
            self.stderr.seek(0)
            raise kube.Failed(f"chat-fleet exited ({self.proc.returncode}): {self.stderr.read()[-2000:]}")
        return json.loads(line)

    def wait_ready(self) -> dict:
        first = self._line()
        if first["event"] != "ready":
            raise kube.Failed(f"chat-fleet did not get ready: {first}")
        return first

    def status(self) -> dict:
        self.proc.stdin.write("status\n")
        return self._line()

    def stop(self) -> dict:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.close()
        verdict = self._line()
        self.proc.wait(60)
        return verdict

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


AUDIENCE = "chatgateway"  # what chat-fleet mints for by default (e2e::jwt::AUDIENCE)


def redis_gateway(ns: str, cluster, flow: str, name: str = "chat", replicas: int = 2, **spec) -> Gateway:
    """The repository's Redis and a ChatGateway on it (JWT logins with a fresh HS256 secret
    in a Secret, room for a test's traffic in the rate limits), Ready with `replicas` pods."""
    deploy_redis(ns, cluster.images["redis"], flow)
    jwt = Jwt(secrets.token_hex(32), AUDIENCE)
    kube.kubectl("create", "secret", "generic", f"{name}-jwt", f"--from-literal=secret={jwt.secret}", ns=ns)
    full = {
        "replicas": replicas,
        "gateway": {"auth": {"mode": "jwt", "jwt": {"algorithm": "HS256", "audience": jwt.audience,
                                                   "secretRef": {"name": f"{name}-jwt", "key": "secret"}}},
                    "redis": {"urlSecretRef": {"name": "chat-redis", "key": "url"}},
                    "limits": {"messageRate": 200, "messageBurst": 200, "userMessageRate": 0}},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
    }
    for k, v in spec.items():
        if isinstance(v, dict) and isinstance(full.get(k), dict):
            full[k] = {**full[k], **v}
        else:
            full[k] = v
    gw = Gateway.apply(ns, name, full, flow, cluster.images["gateway"], jwt)
    gw.wait_ready(replicas if not (full.get("autoscaling") or {}).get("enabled")
                  else full["autoscaling"].get("minReplicas", 2))
    return gw
