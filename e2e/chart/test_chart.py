"""The Helm chart, linted, rendered and checked with the real Helm engine (helm-python-sdk)."""
from __future__ import annotations

import json
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


def test_defaults_render_the_crd_and_the_operator_only():
    objs = objects({})
    assert sorted(o["kind"] for o in objs) == sorted(
        ["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
         "RoleBinding", "Service", "Deployment",
         # the custom metrics API (customMetrics.enabled, on by default)
         "APIService", "APIService", "Service", "ClusterRole", "ClusterRoleBinding", "Role",
         "RoleBinding", "RoleBinding"])
    notes = render({})["chat-gateway/templates/NOTES.txt"]
    assert "kind: ChatGateway" in notes and "kubectl get cgw chat-demo" in notes
    assert "chatgateway_connections" in notes


def test_notes_show_the_server_api_where_the_gateway_has_one():
    on = {"chatGateway": {"enabled": True, "name": "chat", "spec": {"gateway": {
        "auth": {"mode": "jwt", "jwt": {"secretRef": {"name": "k", "key": "s"}, "audience": "a"}},
        "api": {"port": 9443, "keysSecretRef": {"name": "chat-api-keys", "key": "keys"}}}}}}
    notes = render(on)["chat-gateway/templates/NOTES.txt"]
    assert "http://chat-api.chat-system:9443/api/v1/nodes" in notes, notes
    assert "Secret\nchat-api-keys" in notes or "Secret chat-api-keys" in notes, notes
    on["chatGateway"]["spec"]["gateway"]["api"]["enabled"] = False
    assert "-api." not in render(on)["chat-gateway/templates/NOTES.txt"]
    del on["chatGateway"]["spec"]["gateway"]["api"]
    assert "-api." not in render(on)["chat-gateway/templates/NOTES.txt"]


@pytest.mark.parametrize("values", [{}, {"chatGateway": {"enabled": True}}, {"crds": {"enabled": False}}],
                         ids=["defaults", "instance", "no-crds"])
def test_notes_suit_a_packaged_chart(values):
    """Someone who installed a packaged chart has no repository checkout: NOTES names no
    file of it, and says plainly that the images must be built and pushed."""
    notes = render(values)["chat-gateway/templates/NOTES.txt"]
    paths = re.findall(r"(?<![\w/.:-])(?:manifests|charts|docs|crds|e2e|operator|gateway)/[\w./-]+", notes)
    assert not paths, f"NOTES.txt names repository paths: {paths}"
    assert "does not publish container images yet" in notes
    assert "build both" in notes and "push them" in notes
    assert "image.repository=" in notes and "chatGateway.image.repository=" in notes
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"] in notes
    assert ("did not install the ChatGateway CRD" in notes) == (values == {"crds": {"enabled": False}})


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
    "short-jwt-secret.yaml": "jwtSecret",
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

def test_chart_crd_equals_the_generated_crd():
    """The CRD template renders crds/chatgateway.yaml exactly, plus the release's labels and
    (crds.keep) Helm's keep annotation; crds.enabled=false leaves it out."""
    (rendered,) = by_kind(objects({}), "CustomResourceDefinition")
    want = crd()
    meta = rendered.pop("metadata")
    assert meta["name"] == want.pop("metadata")["name"]
    assert rendered == want, "templates/crds.yaml differs from crds/chatgateway.yaml: run `make manifests`"
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"]["app.kubernetes.io/component"] == "crds"
    (dropped,) = by_kind(objects({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "annotations" not in dropped["metadata"]
    assert not by_kind(objects({"crds": {"enabled": False}}), "CustomResourceDefinition")
    # Not in Helm's crds/ directory: that one is never upgraded and cannot be switched off.
    assert helm.Chart.load(CHART).crds == []


# The labels every object carries (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
STANDARD_LABELS = ["helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                   "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                   "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]


def everything_on() -> dict:
    """Values that switch on every optional object of the chart."""
    on = {"enabled": True}
    return {"serviceMonitor": on, "podMonitor": on, "prometheusAdapterRules": on,
            "chatGateway": on, "networkPolicy": on, "prometheusRule": on, "grafanaDashboard": on,
            "commonLabels": {"team": "chat"}}


def test_every_object_carries_the_standard_labels():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    objs = objects(everything_on(), name="rel")
    assert len(objs) >= 12
    for obj in objs:
        labels = obj["metadata"].get("labels") or {}
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        missing = [k for k in STANDARD_LABELS if not labels.get(k)]
        assert not missing, f"{where} lacks {missing}"
        assert labels["helm.sh/chart"] == f"{chart['name']}-{chart['version']}", where
        assert labels["app.kubernetes.io/instance"] == "rel", where
        assert labels["app.kubernetes.io/part-of"] == "chatgateway", where
        assert labels["app.kubernetes.io/version"] == chart["appVersion"], where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where
        assert labels["team"] == "chat", f"{where}: commonLabels missing"
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["metadata"]["labels"]
            assert {k: labels[k] for k in STANDARD_LABELS} == {k: pod[k] for k in STANDARD_LABELS}
            assert "team" not in obj["spec"]["selector"]["matchLabels"], "commonLabels stay out of selectors"
    # A commonLabels or podLabels key may not override a selector label (a pod template
    # whose labels miss the selector is refused by the API server).
    for values in ("commonLabels", "podLabels"):
        with pytest.raises(helm.HelmValuesError):
            helm.Chart.load(CHART).validate_schema({values: {"app.kubernetes.io/name": "x"}})
    helm.Chart.load(CHART).validate_schema({"podLabels": {"team": "chat"}})


def test_the_demo_gateway_name_is_one_the_operator_takes():
    """The operator refuses a ChatGateway name that cannot name a Service (a DNS-1035
    label: a letter first); the chart refuses it before installing anything."""
    chart = helm.Chart.load(CHART)
    chart.validate_schema({"chatGateway": {"name": "chat-1"}})
    for name in ("1chat", "chat-", "Chat"):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"chatGateway": {"name": name}})


def test_kube_version_admits_the_oldest_tested_cluster():
    """Helm refuses to install on a cluster outside kubeVersion; the envtest suite installs
    the chart on a real v1.20.2 API server, which proves the range admits it."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.20.0-0"


def test_operator_probes_come_from_values():
    _, c = container(objects({"livenessProbe": {"periodSeconds": 30, "failureThreshold": 6},
                              "readinessProbe": {"enabled": False}}))
    live = c["livenessProbe"]
    assert live["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert (live["periodSeconds"], live["failureThreshold"], live["initialDelaySeconds"]) == (30, 6, 5)
    assert "enabled" not in live
    assert "readinessProbe" not in c
    with pytest.raises(helm.HelmValuesError) as err:
        helm.Chart.load(CHART).validate_schema({"livenessProbe": {"periodSeconds": 0}})
    assert "periodSeconds" in str(err.value)


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
                         "--gateway-image",
                         "--custom-metrics-addr", "--custom-metrics-service",
                         "--custom-metrics-secret", "--custom-metrics-scrape-interval"}
    assert args["--metrics-addr"] == "0.0.0.0:8080"
    # ChatGateways that name no image get the gateway release matching the chart.
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert args["--gateway-image"] == f"ghcr.io/chatgateway/chat-gateway:{chart['appVersion']}"
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


@pytest.mark.parametrize("values,key", [
    ({"operator": {"leaderElection": {"leaseDuration": "2s"}}}, "leaseDuration"),
    ({"operator": {"leaderElection": {"leaseDuration": "2s999ms"}}}, "leaseDuration"),
    ({"operator": {"leaderElection": {"leaseDuration": "2900ms"}}}, "leaseDuration"),
    ({"customMetrics": {"scrapeInterval": "499ms"}}, "scrapeInterval"),
])
def test_durations_the_operator_refuses_fail_the_install(values, key):
    """The schema admits any duration; the operator refuses a Lease under 3s and a scrape
    interval under 500ms at start: the render fails instead of a crash-looping release."""
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert key in str(err.value), err.value
    # The shortest accepted, in mixed units, and a short interval nobody scrapes with.
    for ok in ({"operator": {"leaderElection": {"leaseDuration": "2s1000ms"}}},
               {"operator": {"leaderElection": {"leaseDuration": "1m"}}},
               {"customMetrics": {"scrapeInterval": "500ms"}},
               {"customMetrics": {"enabled": False, "scrapeInterval": "1ms"}}):
        render(ok)


def test_grafana_dashboard_without_extra_labels_renders():
    objs = objects({"grafanaDashboard": {"enabled": True, "labels": {"grafana_dashboard": None}}})
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboard"


def test_crd_is_the_one_the_operator_serves():
    c = crd()
    assert c["metadata"]["name"] == "chatgateways.chatgateway.io"
    assert c["spec"]["names"]["shortNames"] == ["cgw"]


def test_operator_network_policy():
    assert not by_kind(objects({}), "NetworkPolicy"), "off by default"
    objs = objects({"networkPolicy": {"enabled": True}})
    (np,) = by_kind(objs, "NetworkPolicy")
    dep, c = container(objs)
    spec = np["spec"]
    assert spec["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # In: the metrics port, from anywhere by default, and the custom metrics API (the
    # aggregator comes from the control plane's addresses).
    assert spec["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]},
                               {"ports": [{"port": "custom-metrics", "protocol": "TCP"}]}]
    assert [p["name"] for p in c["ports"]] == ["metrics", "custom-metrics"]
    # Out: DNS and the API server ports, to any address by default, and the gateway pods'
    # http port (their /metrics), by the label every gateway pod carries.
    assert spec["egress"][0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert spec["egress"][1] == {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    assert spec["egress"][2] == {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "chat-gateway"}}}], "ports": [{"port": "http", "protocol": "TCP"}]}
    assert len(spec["egress"]) == 3
    off = objects({"networkPolicy": {"enabled": True}, "customMetrics": {"enabled": False}})
    (np_off,) = by_kind(off, "NetworkPolicy")
    assert np_off["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]

    prom = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    otlp = {"to": [{"namespaceSelector": {}}], "ports": [{"port": 4317, "protocol": "TCP"}]}
    extra_in = {"ports": [{"port": 6443, "protocol": "TCP"}]}
    (np,) = by_kind(objects({"networkPolicy": {
        "enabled": True, "metricsFrom": [prom], "extraIngress": [extra_in], "extraEgress": [otlp],
        "apiServer": {"ports": [6443], "cidrs": ["10.0.0.1/32"]}}}), "NetworkPolicy")
    assert np["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}], "from": [prom]},
                                     {"ports": [{"port": "custom-metrics", "protocol": "TCP"}]}, extra_in]
    assert np["spec"]["egress"][1] == \
        {"ports": [{"port": 6443, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}
    assert np["spec"]["egress"][3:] == [otlp]
    with pytest.raises(helm.HelmValuesError) as err:
        helm.Chart.load(CHART).validate_schema({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}})
    assert "cidrs" in str(err.value)


def test_grafana_dashboard_configmap():
    assert not [o for o in objects({}) if o["metadata"]["name"].endswith("-dashboard")]
    objs = objects({"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "chat"}}})
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", "the Grafana chart sidecar's default label"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "chat"}
    assert cm["metadata"]["namespace"] == "chat-system"
    dashboard = json.loads(cm["data"]["chatgateway.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for want in ("Connections per pod", "Upgrades accepted and refused", "Delivery latency",
                 "Redis errors and reconnects", "Drains", "Rebalancing", "HPA replicas"):
        assert want in titles, want
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["expr"] and target["datasource"]["uid"] == "${datasource}", panel["title"]
    (cm,) = [o for o in by_kind(objects({"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}),
                                "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring"


def test_chart_readme_is_generated_from_values_and_documents_every_value():
    import chart_readme

    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    table = chart_readme.rows(values, chart_readme.descriptions(text))
    undocumented = [key for key, _, _, desc in table if not desc]
    assert not undocumented, f"values.yaml keys without a comment right above them: {undocumented}"
    keys = {key for key, *_ in table}

    def leaves(value, path=()):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                yield from leaves(v, path + (k,))
        else:
            yield ".".join(path)
    for leaf in leaves(values):
        assert any(leaf == k or leaf.startswith(k + ".") for k in keys), f"{leaf} is not in the README table"
    readme = (CHART / "README.md").read_text()
    assert readme == chart_readme.readme(CHART), "charts/chat-gateway/README.md is stale: run `make manifests`"
    for key in keys:
        assert f"| `{key}` |" in readme
    # Not packaged: the template is the source, README.md the artefact.
    assert "README.md.tmpl" in (CHART / ".helmignore").read_text().split()


def test_chart_readme_parser():
    import chart_readme

    text = ("# -- Section (a whole mapping).\nres:\n  a: 1\n\n# Not attached (blank line).\n\n"
            "top:\n  # Inner one,\n  # two lines.\n  inner: x\n  bare: 2\nlist: [1]\n")
    docs = chart_readme.descriptions(text)
    assert docs[("res",)] == "Section (a whole mapping)."
    assert docs[("top",)] == "" and docs[("top", "inner")] == "Inner one, two lines."
    assert chart_readme.rows(yaml.safe_load(text), docs) == [
        ("res", "object", '{"a": 1}', "Section (a whole mapping)."),
        ("top.inner", "string", '"x"', "Inner one, two lines."),
        ("top.bare", "int", "2", ""),
        ("list", "list", "[1]", ""),
    ]
