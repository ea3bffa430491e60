"""The Helm chart, linted, rendered and checked with the real Helm engine (helm-python-sdk)."""
from __future__ import annotations

import re

import helm_python as helm
import pytest
import yaml

from conftest import (CHART, MANIFESTS, ROOT, by_kind, crd, example_values, load_values, objects,
                      operator_render, render)


def test_lint_is_clean_for_defaults_and_every_example():
    cases = [(v, kube) for v in [{}] + [load_values(p) for p in example_values()]
             for kube in ("v1.33.0", None)]
    for values, kube in cases:
        report = helm.lint(CHART, values, strict=True, namespace="chat-system", kube_version=kube)
        assert report["total_charts_linted"] == 1, report
        assert not report["errors"], report
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        assert not bad, f"lint warnings/errors: {bad}"


@pytest.mark.parametrize("values_file", example_values(), ids=lambda p: p.name)
def test_example_values_render(values_file):
    values = load_values(values_file)
    objs = objects(values)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
            "RoleBinding", "Service"} <= kinds, kinds
    cgws = by_kind(objs, "ChatGateway")
    assert len(cgws) == 1, "every example creates its ChatGateway"
    assert cgws[0]["metadata"]["name"] == values["chatGateway"]["name"]
    notes = render(values)["chat-gateway/templates/NOTES.txt"]
    assert f"get cgw {values['chatGateway']['name']}" in notes


def test_defaults_render_the_operator_only():
    objs = objects({})
    assert sorted(o["kind"] for o in objs) == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
         "Service", "Deployment",
         # the custom metrics API (customMetrics.enabled, on by default)
         "APIService", "APIService", "Service", "ClusterRole", "ClusterRoleBinding", "Role",
         "RoleBinding", "RoleBinding"])
    notes = render({})["chat-gateway/templates/NOTES.txt"]
    assert "kubectl apply -f manifests/examples/minimal.yaml" in notes
    assert "chatgateway_connections" in notes


def test_optional_objects_follow_their_switches():
    objs = objects({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                    "prometheusAdapterRules": {"enabled": True}})
    (sm,) = by_kind(objs, "ServiceMonitor")
    (svc,) = [o for o in by_kind(objs, "Service") if o["metadata"]["name"] == "cg-chat-gateway-metrics"]
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert len(by_kind(objs, "PodMonitor")) == 1
    (cm,) = by_kind(objs, "ConfigMap")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == "chatgateway_connections"
    assert "chatgateway_connections" in rules[0]["seriesQuery"]
    assert set(rules[0]["resources"]["overrides"]) == {"namespace", "pod"}


def matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values,
              "NotIn": key not in labels or labels[key] not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


@pytest.mark.parametrize("example", sorted((MANIFESTS / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_pod_monitor_selects_the_gateway_pods_the_operator_renders(example):
    """Against the pod templates `chat-gateway-operator render` produces (labels and port
    names as the operator really writes them), not a hand-kept copy."""
    (pm,) = by_kind(objects({"podMonitor": {"enabled": True}}), "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    deployments = [o for o in operator_render(example) if o["kind"] == "Deployment"]
    assert deployments, f"render of {example.name} produced no Deployment"
    for dep in deployments:
        template = dep["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert matches(pm["spec"]["selector"], labels), \
            f"the PodMonitor selector {pm['spec']['selector']} misses {example.name}'s pods {labels}"
        ports = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports") or []}
        assert pm["spec"]["podMetricsEndpoints"][0]["port"] in ports, ports
    # And nothing else: not the operator's own pods, not another app's.
    (op,) = by_kind(objects({}), "Deployment")
    assert not matches(pm["spec"]["selector"], op["spec"]["template"]["metadata"]["labels"])
    assert not matches(pm["spec"]["selector"], {"app.kubernetes.io/name": "chat-gateway"}), \
        "a pod without a ChatGateway instance label"


def test_custom_metrics_api_objects_fit_together(default_objects):
    """The APIServices point at the Service, whose port reaches the operator's TLS port;
    the operator's flags name that Service and the Secret its Role lets it write."""
    (dep,) = by_kind(default_objects, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = dict(a.split("=", 1) for a in c["args"][1:])
    (svc,) = [o for o in by_kind(default_objects, "Service") if o["metadata"]["name"].endswith("-custom-metrics")]
    assert args["--custom-metrics-service"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    (port,) = svc["spec"]["ports"]
    container_port = {p["name"]: p["containerPort"] for p in c["ports"]}[port["targetPort"]]
    assert args["--custom-metrics-addr"] == f"0.0.0.0:{container_port}"
    apiservices = by_kind(default_objects, "APIService")
    assert sorted(a["metadata"]["name"] for a in apiservices) == \
        ["v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io"]
    for a in apiservices:
        spec = a["spec"]
        assert spec["group"] == "custom.metrics.k8s.io"
        assert a["metadata"]["name"] == f"{spec['version']}.custom.metrics.k8s.io"
        assert spec["service"] == {"namespace": "chat-system", "name": svc["metadata"]["name"],
                                   "port": port["port"]}
        # The operator writes the CA; nothing may switch verification off.
        assert "caBundle" not in spec and not spec.get("insecureSkipTLSVerify")
    priority = {a["spec"]["version"]: a["spec"]["versionPriority"] for a in apiservices}
    assert priority["v1beta2"] > priority["v1beta1"], "the HPA should prefer v1beta2"
    # The serving certificate's names come from the flag and the pod's namespace.
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    secret_rules = [r for role in by_kind(default_objects, "Role") for r in role["rules"]
                    if "secrets" in r["resources"] and r.get("resourceNames")]
    assert secret_rules and all(r["resourceNames"] == [args["--custom-metrics-secret"]] for r in secret_rules)
    (reader,) = [b for b in by_kind(default_objects, "RoleBinding") if b["metadata"]["namespace"] == "kube-system"]
    assert reader["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                 "name": "extension-apiserver-authentication-reader"}
    notes = render({})["chat-gateway/templates/NOTES.txt"]
    assert "kubectl get --raw" in notes and "custom.metrics.k8s.io" in notes


def test_custom_metrics_off_renders_none_of_it():
    objs = objects({"customMetrics": {"enabled": False}})
    assert not by_kind(objs, "APIService")
    assert [o["metadata"]["name"] for o in by_kind(objs, "Service")] == ["cg-chat-gateway-metrics"]
    (dep,) = by_kind(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert not [a for a in c["args"] if a.startswith("--custom-metrics")]
    assert [p["name"] for p in c["ports"]] == ["metrics"]
    assert not any("custom-metrics" in o["metadata"]["name"] for o in objs)
    notes = render({"customMetrics": {"enabled": False}})["chat-gateway/templates/NOTES.txt"]
    assert "prometheus-adapter" in notes


# Bad values files and the key the error message must name.
BAD = {
    "unknown-key.yaml": "replicas",
    "latest-tag.yaml": "tag",
    "wrong-type.yaml": "replicaCount",
    "bad-log-format.yaml": "logFormat",
    "bad-lease-duration.yaml": "leaseDuration",
    "root.yaml": "runAsNonRoot",
    "writable-root.yaml": "readOnlyRootFilesystem",
    "bad-pull-policy.yaml": "pullPolicy",
    "bad-instance-name.yaml": "name",
}


def test_every_bad_values_file_is_listed():
    files = {p.name for p in (ROOT / "e2e" / "chart" / "bad-values").glob("*.yaml")}
    assert files == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_values_are_rejected_by_the_schema(name):
    values = load_values(ROOT / "e2e" / "chart" / "bad-values" / name)
    chart = helm.Chart.load(CHART)
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(values)
    message = str(err.value)
    assert BAD[name] in message, f"error does not name {BAD[name]!r}: {message}"
    # And lint (what `helm install`/`helm lint` run) refuses them too.
    report = helm.lint(CHART, values, namespace="chat-system")
    assert report["errors"] or any(m["severity"] == 3 for m in report["messages"]), report


# --- invariants ---------------------------------------------------------------------------

def documented_rbac() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) from the RBAC table in docs/operator.md."""
    text = (ROOT / "docs" / "operator.md").read_text()
    section = text.split("## RBAC", 1)[1].split("\n## ", 1)[0]
    grants = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        group = cells[0].strip("`").replace('""', "")
        resources = re.findall(r"`([^`]+)`", cells[1])
        verbs = [v.strip() for v in cells[2].split(",")]
        grants |= {(group, r, v) for r in resources for v in verbs}
    assert grants, "no RBAC table found in docs/operator.md"
    return grants


def granted(objs: list[dict]) -> set[tuple[str, str, str]]:
    out = set()
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        out.add((g, r, v))
    return out


def test_rbac_grants_exactly_what_the_operator_documents(default_objects):
    assert granted(default_objects) == documented_rbac()


def test_rbac_has_no_wildcards_and_binds_the_service_account(default_objects):
    for role in by_kind(default_objects, "ClusterRole") + by_kind(default_objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert "resourceNames" not in rule or rule["resourceNames"]
            assert "nonResourceURLs" not in rule
    (sa,) = by_kind(default_objects, "ServiceAccount")
    (dep,) = by_kind(default_objects, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    for binding in by_kind(default_objects, "ClusterRoleBinding") + by_kind(default_objects, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": "chat-system"}]
    # Leases only in the operator's namespace; Secrets only readable one by one.
    (role,) = [r for r in by_kind(default_objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert role["metadata"]["namespace"] == "chat-system"
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"leases"}
    # The custom metrics Secret: written only in the operator's namespace, updated by name.
    for role in by_kind(default_objects, "Role"):
        assert role["metadata"]["namespace"] == "chat-system", role["metadata"]
        for rule in role["rules"]:
            if "update" in rule["verbs"] or "get" in rule["verbs"]:
                assert rule.get("resourceNames") or rule["resources"] == ["leases"], rule
    apiservice_rules = [r for role in by_kind(default_objects, "ClusterRole") for r in role["rules"]
                        if "apiservices" in r["resources"]]
    assert apiservice_rules and all(r["resourceNames"] == ["v1beta1.custom.metrics.k8s.io",
                                                           "v1beta2.custom.metrics.k8s.io"]
                                    for r in apiservice_rules)
    cluster = granted(by_kind(default_objects, "ClusterRole"))
    assert {v for g, r, v in cluster if r == "secrets"} == {"get"}
    assert not any(r == "leases" for _, r, _ in cluster)


def test_chart_crd_equals_the_generated_crd():
    assert (CHART / "crds" / "chatgateway.yaml").read_bytes() == (ROOT / "crds" / "chatgateway.yaml").read_bytes(), \
        "charts/chat-gateway/crds/chatgateway.yaml differs from crds/chatgateway.yaml: copy it (make manifests)"
    chart = helm.Chart.load(CHART)
    assert [c["name"] for c in chart.crds] == ["crds/chatgateway.yaml"], chart.crds


def container(objs):
    (dep,) = by_kind(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, c


def test_images_and_tags_come_from_values():
    _, c = container(objects({}))
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert c["image"] == f"ghcr.io/chatgateway/chat-gateway-operator:{chart['appVersion']}"
    _, c = container(objects({"image": {"repository": "reg.example/op", "tag": "9.9.9", "pullPolicy": "Always"}}))
    assert (c["image"], c["imagePullPolicy"]) == ("reg.example/op:9.9.9", "Always")
    digest = "sha256:" + "a" * 64
    _, c = container(objects({"image": {"repository": "reg.example/op", "tag": "1", "digest": digest}}))
    assert c["image"] == f"reg.example/op@{digest}"
    objs = objects({"chatGateway": {"enabled": True, "image": {"repository": "reg.example/gw", "tag": "2.0.0"}}})
    (cgw,) = by_kind(objs, "ChatGateway")
    assert cgw["spec"]["image"] == "reg.example/gw:2.0.0"
    objs = objects({"chatGateway": {"enabled": True}})
    (cgw,) = by_kind(objs, "ChatGateway")
    assert cgw["spec"]["image"] == f"ghcr.io/chatgateway/chat-gateway:{chart['appVersion']}"
    # No image anywhere in the templates is written literally.
    for tpl in (CHART / "templates").glob("*.yaml"):
        assert not re.search(r"image:\s*[\"']?[a-z0-9.-]+/", tpl.read_text()), tpl


def test_operator_security_context_probes_and_leader_election(default_objects):
    dep, c = container(default_objects)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The binary's flags (operator/src/main.rs) and the downward API for the Lease.
    assert c["args"][0] == "run"
    args = dict(a.split("=", 1) for a in c["args"][1:])
    assert set(args) == {"--metrics-addr", "--lease-name", "--lease-duration", "--log-format",
                         "--custom-metrics-addr", "--custom-metrics-service",
                         "--custom-metrics-secret", "--custom-metrics-scrape-interval"}
    assert args["--metrics-addr"] == "0.0.0.0:8080"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "custom-metrics", "containerPort": 6443, "protocol": "TCP"}]
    (svc,) = [o for o in by_kind(default_objects, "Service") if o["metadata"]["name"] == "cg-chat-gateway-metrics"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    # The operator's own selector never matches gateway pods (app.kubernetes.io/name=chat-gateway).
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] != "chat-gateway"


def test_crd_is_the_one_the_operator_serves():
    c = crd()
    assert c["metadata"]["name"] == "chatgateways.chatgateway.io"
    assert c["spec"]["names"]["shortNames"] == ["cgw"]
