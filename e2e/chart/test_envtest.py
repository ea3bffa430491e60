"""The chart and manifests against a real kube-apiserver (v1.20.2 + etcd, RBAC on) from
e2e/k8s/envtest.sh: `kubectl apply -f manifests/install.yaml` on a fresh
server, `helm install` with Helm's install action, and the operator binary running with
exactly the chart's RBAC (its ServiceAccount's token) reconciling every example.

That server serves neither autoscaling/v2 nor policy/v1: the operator writes the HPA and
PDB as autoscaling/v2beta2 and policy/v1beta1 there (the same content)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from conftest import CHART, MANIFESTS, ROOT, free_port, load_values, operator_binary, yaml_docs

SCRIPT = ROOT / "e2e" / "k8s" / "envtest.sh"
INSTALL_NS = "chatgateway-system"
OPERATOR_SA = "chatgateway-chat-gateway"
APPS_NS = "apps"
HELM_NS = "helm-ns"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# kind -> (API path prefix, plural, namespaced)
KINDS = {
    "Namespace": ("api/v1", "namespaces", False),
    "CustomResourceDefinition": ("apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "ServiceAccount": ("api/v1", "serviceaccounts", True),
    "ConfigMap": ("api/v1", "configmaps", True),
    "Secret": ("api/v1", "secrets", True),
    "Service": ("api/v1", "services", True),
    "ClusterRole": ("apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "Deployment": ("apis/apps/v1", "deployments", True),
    "Lease": ("apis/coordination.k8s.io/v1", "leases", True),
    "Endpoints": ("api/v1", "endpoints", True),
    "ChatGateway": ("apis/chatgateway.io/v1beta1", "chatgateways", True),
    # The versions Kubernetes 1.20 serves (the operator picks them by discovery).
    "HorizontalPodAutoscaler": ("apis/autoscaling/v2beta2", "horizontalpodautoscalers", True),
    "PodDisruptionBudget": ("apis/policy/v1beta1", "poddisruptionbudgets", True),
    "APIService": ("apis/apiregistration.k8s.io/v1", "apiservices", False),
    "NetworkPolicy": ("apis/networking.k8s.io/v1", "networkpolicies", True),
}
CUSTOM_METRICS_SERVICE = f"{OPERATOR_SA}-custom-metrics"
CUSTOM_METRICS_SECRET = f"{OPERATOR_SA}-custom-metrics-tls"


class Api:
    """Just enough of a Kubernetes client (what `kubectl apply` does on a fresh server)."""

    def __init__(self, server: str, token: str):
        self.server, self.token = server, token
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.server}/{path.lstrip('/')}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except ValueError:
                return e.code, {"message": text.decode(errors="replace")}

    @staticmethod
    def path(kind: str, namespace: str | None, name: str | None = None) -> str:
        prefix, plural, namespaced = KINDS[kind]
        p = f"{prefix}/namespaces/{namespace}/{plural}" if namespaced else f"{prefix}/{plural}"
        return f"{p}/{name}" if name else p

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        code, body = self.request("GET", self.path(kind, namespace, name))
        if code == 404:
            return None
        assert code == 200, (kind, name, body)
        return body

    def apply_new(self, obj: dict, namespace: str = "default") -> dict:
        """`kubectl apply` of an object that does not exist yet: a create that records
        the last-applied configuration."""
        obj = json.loads(json.dumps(obj))
        kind = obj["kind"]
        ns = obj["metadata"].get("namespace", namespace) if KINDS[kind][2] else None
        if ns:
            obj["metadata"]["namespace"] = ns
        obj["metadata"].setdefault("annotations", {})[LAST_APPLIED] = json.dumps(obj, sort_keys=True)
        code, body = self.request("POST", self.path(kind, ns), obj)
        assert code == 201, f"apply {kind}/{obj['metadata']['name']}: HTTP {code}: {body.get('message', body)}"
        return body


def host_address() -> str:
    """A non-loopback IPv4 address of this machine: Endpoints may not name loopback, and
    the API server's aggregator dials the endpoint directly (--enable-aggregator-routing)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"],
                         capture_output=True, text=True, check=True).stdout
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    assert addresses, "this machine has no non-loopback IPv4 address for the Endpoints"
    return addresses[0]


def eventually(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def envtest():
    if not SCRIPT.exists():
        pytest.fail(f"{SCRIPT} is missing")
    workdir = Path(tempfile.mkdtemp(prefix="chatgw-chart-envtest-"))
    started = subprocess.run(["bash", str(SCRIPT), "start", str(workdir)], capture_output=True, text=True)
    try:
        assert started.returncode == 0, f"e2e/k8s/envtest.sh start failed:\n{started.stderr}"
        kubeconfig = yaml.safe_load((workdir / "kubeconfig").read_text())
        server = kubeconfig["clusters"][0]["cluster"]["server"]
        token = kubeconfig["users"][0]["user"]["token"]
        yield {"dir": workdir, "kubeconfig": workdir / "kubeconfig", "server": server,
               "admin": Api(server, token)}
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(workdir)], capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)


def wait_crd(api: Api):
    def established():
        crd = api.get("CustomResourceDefinition", "chatgateways.chatgateway.io")
        conds = ((crd or {}).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)
    eventually("the ChatGateway CRD to be established", established)


# The tests below run in file order on one server: install.yaml first, on a fresh server.

def test_install_yaml_applies_on_a_fresh_server(envtest):
    api = envtest["admin"]
    code, body = api.request("GET", "apis/chatgateway.io/v1beta1")
    assert code == 404, "the server is not fresh"
    docs = yaml_docs(MANIFESTS / "install.yaml")
    for obj in docs:
        api.apply_new(obj)
        if obj["kind"] == "CustomResourceDefinition":
            wait_crd(api)
    for obj in docs:
        ns = obj["metadata"].get("namespace")
        live = api.get(obj["kind"], obj["metadata"]["name"], ns)
        assert live is not None, obj["metadata"]
        assert LAST_APPLIED in live["metadata"]["annotations"]
    dep = api.get("Deployment", OPERATOR_SA, INSTALL_NS)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR_SA
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def helm_install(config: helm.Config, name: str, values: dict, namespace: str) -> dict:
    """Helm's install action. Client-side apply (`helm install --server-side=false`):
    Helm 4 server-side applies CRDs by default, and a v1.20 server rejects the CRD's
    x-kubernetes-validations (CEL, Kubernetes 1.25+) in an apply, while a create drops
    them. On the supported 1.33+ clusters the default (server-side) works."""
    from helm_python import _native
    from helm_python.config import _loads_obj

    payload = _native.call_string(
        "helm_install", config._raw(), config._context_arg(None), _native.HANDLE(0),
        str(CHART), name, json.dumps(values),
        json.dumps({"namespace": namespace, "create_namespace": True, "timeout_seconds": 60,
                    "server_side_apply": False}))
    return _loads_obj(payload)


def test_helm_install_with_the_real_helm_engine(envtest):
    api = envtest["admin"]
    # install.yaml already created the CRD (kubectl, no Helm ownership): the release leaves
    # it alone, as docs/install.md tells users in that situation.
    values = load_values(CHART / "examples" / "minimal-values.yaml") | {"crds": {"enabled": False}}
    config = helm.Config(kubeconfig_path=envtest["kubeconfig"], namespace=HELM_NS)
    try:
        release = helm_install(config, "cg-helm", values, HELM_NS)
        status = config.status("cg-helm")
    finally:
        config.close()
    text = json.dumps(release)
    assert "cg-helm" in text
    assert json.dumps(status).count("deployed") >= 1, status
    assert api.get("Deployment", "cg-helm-chat-gateway", HELM_NS) is not None
    assert api.get("ServiceAccount", "cg-helm-chat-gateway", HELM_NS) is not None
    assert api.get("ClusterRole", "cg-helm-chat-gateway") is not None
    assert api.get("Role", "cg-helm-chat-gateway-leader-election", HELM_NS) is not None
    assert api.get("Service", "cg-helm-chat-gateway-metrics", HELM_NS) is not None
    cgw = api.get("ChatGateway", "chat-demo", HELM_NS)
    assert cgw is not None, "the ChatGateway from values was created"
    # install.yaml (applied above) owns custom.metrics.k8s.io: Helm's lookup saw another
    # provider, so this release installed no APIService and left those alone.
    for version in ("v1beta1", "v1beta2"):
        owner = api.get("APIService", f"{version}.custom.metrics.k8s.io")["spec"]["service"]
        assert owner == {"namespace": INSTALL_NS, "name": CUSTOM_METRICS_SERVICE, "port": 443}, owner
    assert "Another provider already serves custom.metrics.k8s.io" in text, "NOTES say so"
    assert api.get("Service", "cg-helm-chat-gateway-custom-metrics", HELM_NS) is not None
    assert cgw["spec"]["image"].startswith("ghcr.io/chatgateway/chat-gateway:")
    # Its demo key, created by the release, is the Secret the ChatGateway names.
    ref = cgw["spec"]["gateway"]["auth"]["jwt"]["secretRef"]
    secret = api.get("Secret", ref["name"], HELM_NS)
    assert secret is not None and ref["key"] in secret["data"], ref
    # A bad values file fails the install action with the schema's message.
    config = helm.Config(kubeconfig_path=envtest["kubeconfig"], namespace=HELM_NS)
    try:
        with pytest.raises(helm.HelmError) as err:
            helm_install(config, "cg-bad", {"replicaCount": "two"}, HELM_NS)
        assert "replicaCount" in str(err.value)
    finally:
        config.close()


def sar(api: Api, verb: str, resource: str, group: str = "", namespace: str | None = APPS_NS,
        subresource: str = "", name: str = "") -> bool:
    attrs = {"verb": verb, "resource": resource, "group": group}
    if name:
        attrs["name"] = name
    if namespace:
        attrs["namespace"] = namespace
    if subresource:
        attrs["subresource"] = subresource
    code, body = api.request("POST", "apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{INSTALL_NS}:{OPERATOR_SA}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{INSTALL_NS}",
                            "system:authenticated"],
                 "resourceAttributes": attrs}})
    assert code == 201, body
    return bool(body["status"].get("allowed"))


def test_the_service_account_gets_nothing_more(envtest):
    api = envtest["admin"]
    assert sar(api, "watch", "chatgateways", "chatgateway.io")
    assert sar(api, "patch", "chatgateways", "chatgateway.io", subresource="status")
    assert sar(api, "create", "deployments", "apps")
    assert sar(api, "get", "secrets")
    # Secrets are watched by metadata (rotations); gateway pods watched (the one reading of
    # their /metrics) and annotated (pod-deletion-cost).
    assert sar(api, "watch", "secrets")
    assert sar(api, "watch", "pods", namespace=None)
    assert sar(api, "patch", "pods")
    assert sar(api, "get", "services")
    # The server API's Service goes when gateway.api is turned off (reconcile: settle).
    assert sar(api, "delete", "services")
    assert sar(api, "update", "leases", "coordination.k8s.io", namespace=INSTALL_NS)
    denied = [("update", "secrets", ""), ("delete", "pods", ""), ("create", "chatgateways", "chatgateway.io"),
              ("delete", "chatgateways", "chatgateway.io"), ("update", "chatgateways", "chatgateway.io"),
              ("get", "leases", "coordination.k8s.io"), ("create", "pods", ""), ("create", "secrets", ""),
              ("create", "events", ""), ("escalate", "clusterroles", "rbac.authorization.k8s.io"),
              ("delete", "customresourcedefinitions", "apiextensions.k8s.io"),
              ("delete", "deployments", "apps"), ("update", "deployments", "apps"),
              ("get", "chatgateways", "chatgateway.io")]
    allowed = [d for d in denied if sar(api, d[0], d[1], d[2])]
    assert not allowed, f"the operator's ServiceAccount may do more than it needs: {allowed}"
    # The custom metrics API: exactly its reviews, Secret and two APIServices.
    assert sar(api, "create", "subjectaccessreviews", "authorization.k8s.io", namespace=None)
    for version in ("v1beta1", "v1beta2"):
        assert sar(api, "update", "apiservices", "apiregistration.k8s.io", namespace=None,
                   name=f"{version}.custom.metrics.k8s.io")
    assert sar(api, "create", "secrets", namespace=INSTALL_NS)
    assert sar(api, "update", "secrets", namespace=INSTALL_NS, name=CUSTOM_METRICS_SECRET)
    assert sar(api, "get", "configmaps", namespace="kube-system", name="extension-apiserver-authentication")
    too_much = [("update", "apiservices", "apiregistration.k8s.io", None, "v1.apps"),
                ("create", "apiservices", "apiregistration.k8s.io", None, ""),
                ("update", "secrets", "", INSTALL_NS, "someone-elses"),
                ("get", "pods", "", APPS_NS, "a-pod"), ("delete", "pods", "", APPS_NS, "")]
    allowed = [d for d in too_much if sar(api, d[0], d[1], d[2], namespace=d[3], name=d[4])]
    assert not allowed, f"the custom metrics rules grant more than they need: {allowed}"


def test_operator_with_the_chart_rbac_reconciles_every_example(envtest):
    api = envtest["admin"]
    # A token of the operator's ServiceAccount (TokenRequest): the operator gets exactly the
    # permissions install.yaml grants it, enforced by the server's RBAC authorizer.
    code, body = api.request(
        "POST", f"api/v1/namespaces/{INSTALL_NS}/serviceaccounts/{OPERATOR_SA}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    assert code == 201, body
    sa_token = body["status"]["token"]
    kubeconfig = envtest["dir"] / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "op",
        "clusters": [{"name": "envtest", "cluster": {"server": envtest["server"], "insecure-skip-tls-verify": True}}],
        "users": [{"name": "op", "user": {"token": sa_token}}],
        "contexts": [{"name": "op", "context": {"cluster": "envtest", "user": "op", "namespace": INSTALL_NS}}]}))

    api.apply_new({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APPS_NS}})
    for obj in yaml_docs(MANIFESTS / "redis" / "redis.yaml"):
        if obj["kind"] == "Secret":  # the chat-redis Secret the production example uses
            api.apply_new(obj, APPS_NS)
    # What production.yaml's comments tell users to create (`openssl rand -hex 32`).
    api.apply_new({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "chat-jwt"},
                   "stringData": {"secret": "0123456789abcdef0123456789abcdef"}}, APPS_NS)
    api.apply_new({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "chat-api-keys"},
                   "stringData": {"keys": "fedcba9876543210fedcba9876543210\n"}}, APPS_NS)

    port = free_port()
    log = envtest["dir"] / "operator.log"
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), POD_NAMESPACE=INSTALL_NS,
               POD_NAME="operator-0", RUST_LOG="info,chat_gateway_operator=debug")
    with open(log, "w") as out:
        # The custom metrics API on too, as the chart runs it (its Service and Secret names),
        # on an address of this machine that the Service's Endpoints name (no kube-proxy or
        # endpoints controller here: the test writes them, as for a pod).
        host = host_address()
        cm_port = free_port(host)
        api.apply_new({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": CUSTOM_METRICS_SERVICE},
                       "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": cm_port}]}]},
                      INSTALL_NS)
        proc = subprocess.Popen([str(operator_binary()), "run", "--log-format", "text",
                                 "--metrics-addr", f"127.0.0.1:{port}", "--lease-duration", "30s",
                                 "--custom-metrics-addr", f"{host}:{cm_port}",
                                 "--custom-metrics-service", CUSTOM_METRICS_SERVICE,
                                 "--custom-metrics-secret", CUSTOM_METRICS_SECRET],
                                env=env, stdout=subprocess.DEVNULL, stderr=out)
    try:
        def leading():
            assert proc.poll() is None, f"operator exited:\n{log.read_text()}"
            lease = api.get("Lease", "chatgateway-operator", INSTALL_NS)
            return lease and lease["spec"].get("holderIdentity") == "operator-0"
        eventually("the operator to hold the Lease in its namespace", leading)

        expected = {}
        for example in sorted((MANIFESTS / "examples").glob("*.yaml")):
            # `kubectl apply -f example`: the demo examples carry their JWT Secret.
            for obj in yaml_docs(example):
                assert obj["kind"] in ("ChatGateway", "Secret"), example
                created = api.apply_new(obj, APPS_NS)
                if obj["kind"] == "ChatGateway":
                    expected[(APPS_NS, obj["metadata"]["name"])] = created
        expected[(HELM_NS, "chat-demo")] = api.get("ChatGateway", "chat-demo", HELM_NS)
        assert len(expected) >= 3

        for (ns, name), created in expected.items():
            def reconciled():
                assert proc.poll() is None, f"operator exited:\n{log.read_text()}"
                cgw = api.get("ChatGateway", name, ns)
                status = cgw.get("status") or {}
                if status.get("observedGeneration") != cgw["metadata"]["generation"]:
                    return None
                # A failed reconcile also records the generation (Reconciled False, retried
                # in seconds): wait for one that succeeded.
                conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
                return cgw if conditions.get("Reconciled") == "True" else None
            cgw = eventually(f"status of ChatGateway {ns}/{name}\n(operator log: {log})", reconciled, 45)
            uid = cgw["metadata"]["uid"]
            # The config's ConfigMap is named by its content: the one the pods mount.
            deployment = api.get("Deployment", name, ns) or {}
            volumes = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("volumes") or []
            config = next((v["configMap"]["name"] for v in volumes if v["name"] == "config"), None)
            assert config and config.startswith(f"{name}-config-"), volumes
            for kind, child in (("ConfigMap", config), ("Deployment", name), ("Service", name)):
                obj = api.get(kind, child, ns)
                assert obj is not None, f"{ns}/{name}: no {kind} {child}"
                owners = obj["metadata"].get("ownerReferences", [])
                assert any(o["uid"] == uid and o.get("controller") for o in owners), (kind, owners)
            conditions = {c["type"]: c for c in cgw["status"]["conditions"]}
            assert {"Ready", "Progressing", "Degraded"} <= set(conditions), conditions
            api_on = "api" in cgw["spec"]["gateway"]
            optional = [("HorizontalPodAutoscaler", name, bool(cgw["spec"].get("autoscaling", {}).get("enabled"))),
                        ("PodDisruptionBudget", name, cgw["spec"].get("disruptionBudget", {}).get("enabled", True)),
                        ("NetworkPolicy", name, "networkPolicy" in cgw["spec"]),
                        # The server API's own Service (production.yaml turns the API on).
                        ("Service", f"{name}-api", api_on)]
            for kind, child, wanted in optional:
                # v1.20 serves them as autoscaling/v2beta2 and policy/v1beta1.
                obj = api.get(kind, child, ns)
                if wanted:
                    assert obj is not None, f"{ns}/{name}: no {kind}"
                    owners = obj["metadata"].get("ownerReferences", [])
                    assert any(o["uid"] == uid and o.get("controller") for o in owners), (kind, owners)
                else:
                    assert obj is None, f"{ns}/{name}: {kind} although the spec turns it off"
            # Only the collector's native sidecar is missing on v1.20 (a plain container).
            assert conditions["Degraded"]["reason"] in ("AsExpected", "NativeSidecarsNotSupported"), \
                conditions["Degraded"]
        # Under the chart's RBAC the leader created its certificate Secret and wrote its CA
        # into both APIServices install.yaml created.
        def ca_published():
            secret = api.get("Secret", CUSTOM_METRICS_SECRET, INSTALL_NS)
            if not secret:
                return None
            bundle = secret["data"]["ca.crt"]
            services = [api.get("APIService", f"{v}.custom.metrics.k8s.io") for v in ("v1beta1", "v1beta2")]
            return all(a["spec"].get("caBundle") == bundle for a in services)
        eventually(f"the custom metrics CA in the APIServices\n(operator log: {log})", ca_published, 30)
        # The aggregator reaches the operator through install.yaml's APIServices and Service
        # (port name https), checks the serving certificate against that CA: Available. A
        # metric read through it answers (no gateway pod runs here: an empty list).
        def available():
            conds = [(api.get("APIService", f"{v}.custom.metrics.k8s.io").get("status") or {}).get("conditions") or []
                     for v in ("v1beta1", "v1beta2")]
            return all(any(c["type"] == "Available" and c["status"] == "True" for c in cs) for cs in conds)
        eventually(f"the custom metrics APIServices to become Available\n(operator log: {log})", available, 60)
        code, body = api.request("GET", f"apis/custom.metrics.k8s.io/v1beta2/namespaces/{APPS_NS}/pods/*/chatgateway_connections")
        assert (code, body.get("kind"), body.get("items")) == (200, "MetricValueList", []), body
        prod = api.get("Deployment", "chat", APPS_NS)
        assert prod["spec"]["replicas"] == 3, "autoscaling starts at minReplicas"
        # The API on a ClusterIP Service of its own, to the pods' api port; the public one
        # (a LoadBalancer in this example) never carries it.
        api_service = api.get("Service", "chat-api", APPS_NS)
        assert api_service["spec"]["type"] == "ClusterIP"
        assert [(p["name"], p["port"], p["targetPort"]) for p in api_service["spec"]["ports"]] == [("api", 9090, "api")]
        assert [p["name"] for p in api.get("Service", "chat", APPS_NS)["spec"]["ports"]] == ["http"]
        ports = prod["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert {"name": "api", "containerPort": 9090, "protocol": "TCP"} in ports, ports
        ingress = api.get("NetworkPolicy", "chat", APPS_NS)["spec"]["ingress"]
        assert ingress[1]["ports"] == [{"port": "api", "protocol": "TCP"}], ingress
        assert ingress[1]["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "chat-backend"}}}]
        text = log.read_text()
        assert "forbidden" not in text.lower(), f"the operator hit an RBAC denial:\n{text[-4000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # On SIGTERM the leader released its Lease (leases get/update are enough for that).
    lease = api.get("Lease", "chatgateway-operator", INSTALL_NS)
    assert not lease["spec"].get("holderIdentity"), lease["spec"]
