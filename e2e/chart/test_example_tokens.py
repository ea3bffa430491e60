"""The shipped examples log in with JWTs, and the documented way to get a test token works.

For every example (manifests/examples/*.yaml and the chart's examples/*-values.yaml rendered
by Helm): the operator's `render` gives the gateway's config.yaml and the pod; the Secret
keys are laid out in a temporary directory exactly as the pod mounts them (mount path +
item path); then the real `chat-gateway` binary
- mints a token with `chat-gateway --config config.yaml token --user alice` (what
  `kubectl exec deploy/NAME -c gateway -- chat-gateway --config ... token` runs in the pod),
- and with `CHATGW_AUTH__JWT__SECRET=... CHATGW_AUTH__JWT__AUDIENCE=... chat-gateway token`
  (the local recipe of docs/install.md),
and a gateway started with that same config accepts both tokens over a real socket, refuses
a connection without one, and takes `?token=` exactly when the example allows it."""
from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import MANIFESTS, ROOT, example_values, free_port, load_values, objects, yaml_docs

MIN_HS256 = 32


def operator_binary() -> Path:
    path = Path(os.environ.get("CHATGW_OPERATOR_BIN", ROOT / "target" / "debug" / "chat-gateway-operator"))
    if "CHATGW_OPERATOR_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "-q", "-p", "chat-gateway-operator", "--bin", "chat-gateway-operator"],
                       cwd=ROOT, check=True)
    assert path.exists(), f"{path} is missing: cargo build -p chat-gateway-operator"
    return path


def gateway_binary() -> Path:
    """e2e/tests/chart.rs passes the freshly built binary; run alone, build it."""
    path = Path(os.environ.get("CHATGW_GATEWAY_BIN", ROOT / "target" / "debug" / "chat-gateway"))
    if "CHATGW_GATEWAY_BIN" not in os.environ:
        subprocess.run(["cargo", "build", "-q", "-p", "chat-gateway", "--bin", "chat-gateway"], cwd=ROOT, check=True)
    assert path.exists(), f"{path} is missing: cargo build -p chat-gateway"
    return path


def example_sets() -> list[tuple[str, list[dict]]]:
    """(name, the Secrets and the ChatGateway a user applies) of every example."""
    sets = [(p.name, yaml_docs(p)) for p in sorted((MANIFESTS / "examples").glob("*.yaml"))]
    for p in example_values():
        objs = [o for o in objects(load_values(p)) if o["kind"] in ("Secret", "ChatGateway")]
        sets.append((f"chart {p.name}", objs))
    assert len(sets) >= 5, sets
    return sets


def secret_data(docs: list[dict]) -> dict[tuple[str, str], bytes]:
    out = {}
    for d in docs:
        if d["kind"] != "Secret":
            continue
        for k, v in (d.get("stringData") or {}).items():
            out[(d["metadata"]["name"], k)] = v.encode()
        for k, v in (d.get("data") or {}).items():
            out[(d["metadata"]["name"], k)] = base64.b64decode(v)
    return out


def chatgateway(docs: list[dict]) -> dict:
    (cgw,) = [d for d in docs if d["kind"] == "ChatGateway"]
    return cgw


@pytest.mark.parametrize("name,docs", example_sets(), ids=lambda v: v if isinstance(v, str) else "")
def test_examples_use_jwt_with_an_audience_and_a_usable_secret(name, docs):
    auth = chatgateway(docs)["spec"]["gateway"]["auth"]
    assert auth.get("mode", "jwt") == "jwt", f"{name}: the shipped examples log in with JWTs"
    jwt = auth["jwt"]
    assert jwt.get("audience"), f"{name}: tokens of other services must not open a socket"
    ref = jwt["secretRef"]
    shipped = secret_data(docs)
    if (ref["name"], ref["key"]) in shipped:
        # A demo secret in the example: long enough, and unmistakably a demo.
        value = shipped[(ref["name"], ref["key"])]
        assert len(value) >= MIN_HS256, f"{name}: the gateway refuses HS256 secrets under 32 bytes"
        assert b"REPLACE" in value, f"{name}: a published secret must say it is a demo"
    else:
        # Production examples name a Secret the user creates (the comments say how).
        text = (MANIFESTS / "examples" / name).read_text() if not name.startswith("chart") else ""
        assert not text or f"create secret generic {ref['name']}" in text, name


def test_production_examples_keep_tokens_out_of_urls():
    prod = chatgateway(yaml_docs(MANIFESTS / "examples" / "production.yaml"))
    assert prod["spec"]["gateway"]["auth"]["queryToken"] is False
    chart = load_values(ROOT / "charts" / "chat-gateway" / "examples" / "production-values.yaml")
    assert chart["chatGateway"]["spec"]["gateway"]["auth"]["queryToken"] is False


class Pod:
    """The pod's files for one example: config.yaml and the mounted Secret keys under a
    temporary root, the config's paths pointing into it."""

    def __init__(self, root: Path, docs: list[dict]):
        cgw = chatgateway(docs)
        out = subprocess.run([str(operator_binary()), "render", "-f", "-", "-n", "apps"],
                             input=yaml.safe_dump(cgw), capture_output=True, text=True)
        assert out.returncode == 0, f"operator render: {out.stderr}"
        children = [d for d in yaml.safe_load_all(out.stdout) if d]
        config = next(c for c in children if c["kind"] == "ConfigMap" and "config.yaml" in c["data"])
        (dep,) = [c for c in children if c["kind"] == "Deployment"]
        pod = dep["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "gateway")
        values = secret_data(docs)
        # Secrets a production example expects the user to create, as its comments say.
        jwt = cgw["spec"]["gateway"]["auth"]["jwt"]
        values.setdefault((jwt["secretRef"]["name"], jwt["secretRef"]["key"]), secrets.token_hex(32).encode())
        api = cgw["spec"]["gateway"].get("api")
        self.api_key = None
        if api:
            ref = api["keysSecretRef"]
            values.setdefault((ref["name"], ref["key"]), (secrets.token_hex(32) + "\n").encode())
            self.api_key = values[(ref["name"], ref["key"])].decode().split()[0]
        parsed = yaml.safe_load(config["data"]["config.yaml"])
        self.jwt, self.engine = jwt, parsed["engine"]
        self.secret = values[(jwt["secretRef"]["name"], jwt["secretRef"]["key"])]
        # The pods' ports and the backend's hooks are the operator's and the cluster's: here
        # the API listens on loopback, and a hook would only reach a closed local port (the
        # login is under test, not the backend; no name is resolved outside this machine).
        self.api_listen = parsed.get("api", {}).get("listen")
        hooks = parsed.get("hooks") or {}
        for hook in hooks.values():
            if hook:
                hook["url"] = f"http://127.0.0.1:{free_port()}/hook"
        if self.api_listen:
            parsed["api"]["listen"] = f"127.0.0.1:{free_port()}"
            self.api_listen = parsed["api"]["listen"]
        text = yaml.safe_dump(parsed, sort_keys=False)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = 0
        for m in container["volumeMounts"]:
            secret = volumes[m["name"]].get("secret")
            if not secret:
                continue
            target = root / m["mountPath"].lstrip("/")
            target.mkdir(parents=True)
            for item in secret["items"]:
                (target / item["path"]).write_bytes(values[(secret["secretName"], item["key"])])
            text = text.replace(m["mountPath"] + "/", f"{target}/")
            mounted += 1
        assert mounted, "the key Secret is mounted into the gateway container"
        self.config = root / "config.yaml"
        self.config.write_text(text)
        # What the example asks for (the CRD's default: true), not what the operator wrote.
        self.query_token = cgw["spec"]["gateway"]["auth"].get("queryToken", True)


def run(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([str(gateway_binary()), *args], capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", "")} | env, timeout=60)
    assert out.returncode == 0, f"chat-gateway {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


def api_get(port: int, key: str, path: str = "/api/v1/nodes") -> tuple[int, str]:
    """GET on the server API with `Authorization: Bearer key`: the status and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                  "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode(errors="replace")


def upgrade(port: int, path: str = "/ws", headers: dict[str, str] | None = None) -> tuple[int, dict | None]:
    """A WebSocket upgrade: the HTTP status, and the first frame (`welcome`) on 101."""
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                   f"{extra}\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            assert chunk, "closed during the handshake"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            return status, None

        def exact(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n:
                chunk = s.recv(65536)
                assert chunk, "closed before the welcome"
                buf += chunk
            out, buf = buf[:n], buf[n:]
            return out

        b0, b1 = exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", exact(8))[0]
        assert b0 & 0x0F == 0x1, f"first frame opcode {b0 & 0x0F}"
        return status, json.loads(exact(n))


@pytest.mark.parametrize("name,docs", example_sets(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_documented_token_recipe_opens_a_socket(name, docs, tmp_path):
    pod = Pod(tmp_path, docs)
    # In the pod: the config file and the mounted secret, nothing else.
    in_pod = run(["--config", str(pod.config), "token", "--user", "alice"], {})
    # Locally, with the same secret and audience (and issuer, where the example sets one).
    local_env = {"CHATGW_AUTH__JWT__SECRET": pod.secret.decode(),
                 "CHATGW_AUTH__JWT__AUDIENCE": pod.jwt["audience"]}
    if pod.jwt.get("issuer"):
        local_env["CHATGW_AUTH__JWT__ISSUER"] = pod.jwt["issuer"]
    local = run(["token", "--user", "bob"], local_env)

    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn", "CHATGW_DRAIN__ACCEPT_GRACE": "0s"}
    if pod.engine == "redis":
        env["CHATGW_ENGINE"] = "memory"  # the login is under test here, not Redis
    log = tmp_path / "gateway.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(gateway_binary()), "--config", str(pod.config), "--listen", f"127.0.0.1:{port}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"{name}: the gateway exited:\n{log.read_text()}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"{name}: the gateway did not listen:\n{log.read_text()}"
                time.sleep(0.1)
        for user, token in (("alice", in_pod), ("bob", local)):
            status, welcome = upgrade(port, headers={"Authorization": f"Bearer {token}"})
            assert status == 101, f"{name}: {user}'s token refused ({status}):\n{log.read_text()}"
            assert welcome["type"] == "welcome" and welcome["user"] == user, welcome
        assert upgrade(port)[0] == 401, f"{name}: no token, no socket"
        if pod.api_listen:
            # The server API with the key from the mounted Secret, only on its own port.
            host, api_port = pod.api_listen.rsplit(":", 1)
            assert api_get(int(api_port), pod.api_key)[0] == 200, f"{name}: the API refused its key"
            assert api_get(int(api_port), "not-" + pod.api_key)[0] == 401
            assert api_get(port, pod.api_key)[0] == 404, f"{name}: the API is served on the public port"
        assert upgrade(port, headers={"Authorization": "Bearer x.y.z"})[0] == 401
        status, _ = upgrade(port, path=f"/ws?token={in_pod}")
        assert status == (101 if pod.query_token else 401), f"{name}: ?token= with queryToken {pod.query_token}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
