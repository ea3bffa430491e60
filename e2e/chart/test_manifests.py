"""Every rendered object and every file under manifests/ against the Kubernetes OpenAPI
schemas (kubernetes-validate, oldest supported and newest known version); ChatGateways
against the CRD schema; the generated bundles are fresh; the Dockerfiles follow the rules."""
from __future__ import annotations

import re
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (CHART, MANIFESTS, ROOT, by_kind, crd, example_values, k8s_versions,
                      load_values, objects, yaml_docs)

# Custom kinds kubernetes-validate has no schema for, and the minimal shape checked instead.
PROMETHEUS_OPERATOR = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}


def cgw_validator():
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema)


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields the CRD schema does not declare: the API server would silently prune them,
    so a typo in a ChatGateway would pass unnoticed."""
    out = []
    if isinstance(value, dict) and "properties" in schema and \
            not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
        for key, v in value.items():
            if key not in schema["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += unknown_fields(v, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += unknown_fields(v, schema["items"], f"{path}[{i}]")
    return out


def check(obj: dict, where: str) -> str:
    """Validates one object; returns how."""
    kind = obj.get("kind")
    if kind == "ChatGateway":
        assert obj["apiVersion"] == "chatgateway.io/v1beta1", where
        errors = sorted(cgw_validator().iter_errors(obj), key=str)
        assert not errors, f"{where}: ChatGateway invalid against the CRD schema: " + \
            "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
        schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        unknown = unknown_fields(obj["spec"], schema["properties"]["spec"], "spec")
        assert not unknown, f"{where}: ChatGateway fields the CRD does not declare (pruned by the server): {unknown}"
        return "crd"
    if kind == "PrometheusRule":  # its rules: promtool in test_alerts.py
        assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
        assert all(g["name"] and g["rules"] for g in obj["spec"]["groups"]), where
        return "shape"
    if kind in PROMETHEUS_OPERATOR:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
        assert obj["spec"]["selector"]["matchLabels"] and obj["spec"][PROMETHEUS_OPERATOR[kind]], where
        return "shape"
    for version in k8s_versions():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {kind}/{obj['metadata'].get('name')} invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
    return "k8s"


def rendered_sets():
    everything = {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                  "prometheusAdapterRules": {"enabled": True}, "replicaCount": 2,
                  "prometheusRule": {"enabled": True},
                  "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.96.0.1/32"]},
                                    "metricsFrom": [{"podSelector": {}}]},
                  "chatGateway": {"enabled": True, "spec": {
                      "replicas": 3, "gateway": {"auth": {"mode": "insecure", "dangerouslyAllowInsecureOnNetwork": True},
                                                 "redis": {"urlSecretRef": {"name": "r", "key": "url"}}}}}}
    yield "defaults", {}
    yield "everything-on", everything
    for p in example_values():
        yield p.name, load_values(p)


@pytest.mark.parametrize("name,values", list(rendered_sets()), ids=lambda v: v if isinstance(v, str) else "")
def test_rendered_chart_validates(name, values):
    objs = objects(values)
    how = [check(o, f"chart {name}") for o in objs]
    assert how.count("k8s") >= 7


def manifest_files():
    files = sorted(MANIFESTS.rglob("*.yaml"))
    assert len(files) >= 6, files
    return files


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_manifest_file_validates(path):
    docs = yaml_docs(path)
    assert docs, f"{path} has no objects"
    for d in docs:
        check(d, str(path.relative_to(ROOT)))


def test_validators_catch_mistakes():
    """Guards against validators that pass everything."""
    bad_dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
               "spec": {"replica": 2, "selector": {"matchLabels": {"a": "b"}},
                        "template": {"metadata": {"labels": {"a": "b"}},
                                     "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    for version in k8s_versions():
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad_dep, version, strict=True)
    bad_cgw = {"apiVersion": "chatgateway.io/v1beta1", "kind": "ChatGateway", "metadata": {"name": "x"},
               "spec": {"replicas": "two", "gateway": {"auth": {"mode": "sometimes"}}}}
    errors = list(cgw_validator().iter_errors(bad_cgw))
    assert len(errors) >= 2, errors
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert unknown_fields({"replica": 2, "gateway": {"auth": {"mod": "jwt"}}}, schema, "spec") == \
        ["spec.replica", "spec.gateway.auth.mod"]


def test_install_yaml_and_chart_crd_are_fresh():
    out = subprocess.run([sys.executable, str(ROOT / "charts" / "generate.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_install_yaml_is_crd_operator_and_rbac():
    docs = yaml_docs(MANIFESTS / "install.yaml")
    kinds = [d["kind"] for d in docs]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"], "namespace and CRD first"
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
            "Service", "Deployment"} <= set(kinds)
    assert docs[1] == crd()
    ns = docs[0]["metadata"]["name"]
    for d in docs[2:]:
        if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "APIService"):
            assert "namespace" not in d["metadata"], d["metadata"]
        elif d["metadata"]["name"].endswith("-auth-reader"):
            # The one object outside: the binding to the front-proxy CA reader role.
            assert (d["kind"], d["metadata"]["namespace"]) == ("RoleBinding", "kube-system")
        else:
            assert d["metadata"]["namespace"] == ns, d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl"
    # APIServices last: their Service exists when the aggregator first checks them.
    assert kinds[-2:] == ["APIService", "APIService"]


def test_redis_is_clearly_not_for_production():
    text = (MANIFESTS / "redis" / "redis.yaml").read_text()
    assert "NOT FOR PRODUCTION" in text.splitlines()[1]
    for d in yaml_docs(MANIFESTS / "redis" / "redis.yaml"):
        assert d["metadata"]["labels"]["chatgateway.io/not-for-production"] == "true"
    # It provides the Secret the production example refers to.
    (secret,) = [d for d in yaml_docs(MANIFESTS / "redis" / "redis.yaml") if d["kind"] == "Secret"]
    example = yaml_docs(MANIFESTS / "examples" / "production.yaml")[0]
    ref = example["spec"]["gateway"]["redis"]["urlSecretRef"]
    assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["stringData"]


def test_jaeger_is_v2_with_otlp():
    """Jaeger v2 (the v1 all-in-one image is past end of life): one config file in the
    Collector's layout, OTLP on 4317/4318 on every interface, stored in memory, UI on 16686."""
    docs = yaml_docs(MANIFESTS / "observability" / "jaeger.yaml")
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    repo, tag = c["image"].rsplit(":", 1)
    assert repo == "jaegertracing/jaeger" and int(tag.split(".")[0]) >= 2, c["image"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert c["args"] == ["--config", f"{mount['mountPath']}/config.yaml"]
    assert any(v["name"] == "config" and v["configMap"]["name"] == cm["metadata"]["name"] for v in pod["volumes"])
    config = yaml.safe_load(cm["data"]["config.yaml"])
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317" and protocols["http"]["endpoint"] == "0.0.0.0:4318"
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"] and pipeline["exporters"] == ["jaeger_storage_exporter"]
    storage = config["exporters"]["jaeger_storage_exporter"]["trace_storage"]
    assert storage == config["extensions"]["jaeger_query"]["storage"]["traces"]
    assert "memory" in config["extensions"]["jaeger_storage"]["backends"][storage]
    assert set(config["service"]["extensions"]) >= {"jaeger_storage", "jaeger_query", "healthcheckv2"}
    health = config["extensions"]["healthcheckv2"]["http"]
    port = int(health["endpoint"].rsplit(":", 1)[1])
    assert c["readinessProbe"]["httpGet"]["path"] == health["status"]["path"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[c["readinessProbe"]["httpGet"]["port"]] == port
    (svc,) = [d for d in docs if d["kind"] == "Service"]
    assert {p["port"] for p in svc["spec"]["ports"]} >= {4317, 4318, 16686}


def repo_services() -> dict[tuple[str, str], set[int]]:
    """(namespace, name) -> ports of every Service under manifests/."""
    out = {}
    for path in manifest_files():
        for d in yaml_docs(path):
            if d["kind"] == "Service":
                key = (d["metadata"].get("namespace", "default"), d["metadata"]["name"])
                out[key] = {p["port"] for p in d["spec"]["ports"]}
    return out


def otlp_endpoints() -> list[tuple[str, str]]:
    """(where, endpoint) of every OTLP endpoint in the example manifests and chart examples."""
    found = []
    for path in sorted((MANIFESTS / "examples").glob("*.yaml")):
        for d in yaml_docs(path):
            if d["kind"] != "ChatGateway":  # the demo examples carry their JWT Secret
                continue
            endpoint = (d["spec"].get("telemetry") or {}).get("otlpEndpoint")
            if endpoint:
                found.append((path.name, endpoint))
    for path in example_values():
        spec = load_values(path).get("chatGateway", {}).get("spec", {})
        endpoint = (spec.get("telemetry") or {}).get("otlpEndpoint")
        if endpoint:
            found.append((path.name, endpoint))
    return found


def test_example_otlp_endpoints_are_services_the_repo_creates():
    services = repo_services()
    endpoints = otlp_endpoints()
    assert len(endpoints) >= 3, endpoints
    for where, endpoint in endpoints:
        m = re.fullmatch(r"https?://([a-z0-9.-]+):(\d+)/?", endpoint)
        assert m, f"{where}: {endpoint} is not scheme://host:port"
        host, port = m.group(1), int(m.group(2))
        # A namespaced Service name: NAME.NAMESPACE[.svc[.cluster.local]] (a bare name would
        # depend on the namespace the example is applied in).
        parts = host.removesuffix(".cluster.local").removesuffix(".svc").split(".")
        assert len(parts) == 2, f"{where}: {host} is not NAME.NAMESPACE"
        name, namespace = parts
        assert (namespace, name) in services, \
            f"{where}: {endpoint} names Service {namespace}/{name}, which no file under manifests/ creates"
        assert port in services[(namespace, name)], f"{where}: {endpoint}: the Service has no port {port}"


def test_workloads_under_manifests_are_hardened():
    for path in manifest_files():
        for d in yaml_docs(path):
            if d["kind"] != "Deployment":
                continue
            pod = d["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, path
            assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", path
            for c in pod["containers"]:
                assert not c["image"].endswith(":latest") and ":" in c["image"].split("/")[-1], (path, c["image"])
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, path
                assert sc["capabilities"]["drop"] == ["ALL"], path
                assert c["resources"]["limits"]["memory"], path


# --- Dockerfiles (linted here; built and run by the cluster suite, e2e/k8s/images.sh) ------

def stages(text: str) -> list[tuple[str, str | None]]:
    out = []
    for line in text.splitlines():
        m = re.match(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.I)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("crate,binary", [("gateway", "chat-gateway"), ("operator", "chat-gateway-operator")])
def test_dockerfile(crate, binary):
    text = (ROOT / crate / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    froms = stages(text)
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"

    def resolve(image: str) -> str:
        # Base images are build args (e2e/k8s/images.sh swaps them for local ones): the
        # defaults, which may name earlier args, are what users build from.
        while "${" in image:
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        return image

    for image, _ in froms:
        resolved = resolve(image)
        assert ":" in resolved.split("/")[-1] or "@sha256:" in resolved, f"untagged base image {image}"
        assert not resolved.endswith(":latest"), f"{image} uses :latest"
    runtime = froms[-1][0]
    assert resolve(runtime).startswith(("gcr.io/distroless/", "scratch", "cgr.dev/chainguard/static")), runtime
    build_stage = froms[0][1]
    # The release binary of the right package is built and copied into the runtime stage.
    assert re.search(rf"cargo build --release --locked -p {crate if crate == 'operator' else 'chat-gateway'}"
                     rf"(-operator)? --bin {binary}\b", text) or f"--bin {binary}" in text
    copies = re.findall(r"^COPY --from=(\S+) (\S+) (\S+)", text, re.M)
    assert any(src == build_stage and path.endswith(f"/{binary}") and dest == f"/usr/local/bin/{binary}"
               for src, path, dest in copies), copies
    runtime_part = text.split(f"FROM {runtime}", 1)[1]
    users = re.findall(r"^USER\s+(\S+)", runtime_part, re.M)
    assert users, "runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid (runAsNonRoot), got {users[-1]}"
    entry = re.findall(r"^ENTRYPOINT\s+(\[.*\])", runtime_part, re.M)
    assert entry and yaml.safe_load(entry[-1]) == [f"/usr/local/bin/{binary}"], entry
    assert "EXPOSE 8080" in runtime_part
    # The package name in the build command exists in the workspace.
    cargo = (ROOT / crate / "Cargo.toml").read_text()
    assert re.search(rf'^name = "{binary}"', cargo, re.M), f"{crate}/Cargo.toml has no {binary}"


def test_dockerignore_keeps_the_context_small():
    lines = set((ROOT / ".dockerignore").read_text().split())
    assert {"target", ".git", ".venv"} <= lines


def test_images_the_chart_and_operator_use_match_the_dockerfiles():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"].endswith("/chat-gateway-operator")
    assert values["chatGateway"]["image"]["repository"].endswith("/chat-gateway")
    src = (ROOT / "operator" / "src" / "builders" / "pod.rs").read_text()
    assert values["chatGateway"]["image"]["repository"] in src, "the operator's default gateway image"
    for crate, repo in (("gateway", values["chatGateway"]["image"]["repository"]),
                        ("operator", values["image"]["repository"])):
        assert f"-t {repo}:" in (ROOT / crate / "Dockerfile").read_text()
    # The gateway pods' fsGroup is the image's group: the mounted key files (mode 0440,
    # owned by root) are readable by the gateway's user only through it.
    (user,) = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (ROOT / "gateway" / "Dockerfile").read_text(), re.M)
    group = re.search(r"pub const GATEWAY_GROUP: i64 = (\d+);", src)
    assert group and group.group(1) == user[1], (user, group)


def test_chart_chatgateways_render_to_valid_children():
    """The operator's own `render` of each ChatGateway the chart creates: the children it
    would apply are valid Kubernetes objects too."""
    import os
    from pathlib import Path

    # e2e/tests/chart.rs builds it fresh and passes it; run standalone, build it here. A
    # missing binary fails: skipping would hide an untested render.
    if "CHATGW_OPERATOR_BIN" in os.environ:
        binary = Path(os.environ["CHATGW_OPERATOR_BIN"])
    else:
        binary = ROOT / "target" / "debug" / "chat-gateway-operator"
        subprocess.run(["cargo", "build", "-q", "-p", "chat-gateway-operator", "--bin",
                        "chat-gateway-operator"], cwd=ROOT, check=True)
    assert binary.exists(), f"{binary} not built: cargo build -p chat-gateway-operator"
    for p in example_values():
        (cgw,) = by_kind(objects(load_values(p)), "ChatGateway")
        out = subprocess.run([str(binary), "render", "-f", "-", "-n", "chat-system"],
                             input=yaml.safe_dump(cgw), capture_output=True, text=True)
        assert out.returncode == 0, f"{p.name}: operator render failed: {out.stderr}"
        children = [d for d in yaml.safe_load_all(out.stdout) if d]
        kinds = {c["kind"] for c in children}
        assert {"ConfigMap", "Deployment", "Service"} <= kinds, kinds
        for child in children:
            check(child, f"{p.name} -> operator render")
        (dep,) = [c for c in children if c["kind"] == "Deployment"]
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == cgw["spec"]["image"]
