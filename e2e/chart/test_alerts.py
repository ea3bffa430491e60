"""The chart's PrometheusRule with Prometheus's own tools (`promtool` from Debian's
`prometheus` package, installed by `make deps`): the rule file is valid, every alert fires
on a synthetic series of its problem and stays quiet on healthy series, thresholds come
from values, and every alert has its runbook section in docs/operations.md."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, by_kind, objects

POD = "chat-6f7d9c8b5-x2x7q"  # a gateway pod of the ChatGateway `chat` (Deployment `chat`)
OTHER_POD = "chat-6f7d9c8b5-k8v4w"
APPS = 'namespace="apps"'


def owners(pod: str, replicaset: str, deployment: str, values: str = "1x45") -> list[dict]:
    """kube-state-metrics' series tying a pod to its ReplicaSet and that to its Deployment."""
    return [{"series": f'kube_pod_owner{{{APPS},pod="{pod}",owner_kind="ReplicaSet",owner_name="{replicaset}",'
                       'owner_is_controller="true"}', "values": values},
            {"series": f'kube_replicaset_owner{{{APPS},replicaset="{replicaset}",owner_kind="Deployment",'
                       f'owner_name="{deployment}",owner_is_controller="true"}}', "values": values}]


# Every gateway pod's owners, and a web app's.
OWNERS = [*owners(POD, "chat-6f7d9c8b5", "chat"), *owners(OTHER_POD, "chat-6f7d9c8b5", "chat"),
          *owners("web-5d8f-abcde", "web-5d8f", "web"), *owners("fixed-7c9d5b6f4-q2w3e", "fixed-7c9d5b6f4", "fixed")]


def bucket(metric: str, le_values: dict[str, str]) -> list[dict]:
    return [{"series": f'{metric}_bucket{{{APPS},pod="{POD}",le="{le}"}}', "values": v}
            for le, v in le_values.items()]


# alert -> (series showing the problem, when to evaluate, the labels the alert must carry)
FIRING = {
    "ChatGatewayNoReadyPods": (
        [{"series": f'kube_pod_container_status_ready{{{APPS},pod="{POD}",container="gateway"}}', "values": "0x10"},
         {"series": f'kube_pod_container_status_ready{{{APPS},pod="{OTHER_POD}",container="gateway"}}', "values": "0x10"},
         # Another app's pods are not chatgateway's business.
         {"series": f'kube_pod_container_status_ready{{{APPS},pod="web-5d8f-abcde",container="web"}}', "values": "0x10"},
         *OWNERS],
        "5m", {"severity": "critical", "namespace": "apps", "chatgateway": "chat"}),
    "ChatGatewayUpgradeRefusals": (
        [{"series": f'chatgateway_upgrades_rejected_total{{{APPS},pod="{POD}",reason="auth_invalid"}}', "values": "0+60x30"},
         {"series": f'chatgateway_connections_accepted_total{{{APPS},pod="{POD}"}}', "values": "0+60x30"}],
        "20m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewaySlowConsumerCloses": (
        [{"series": f'chatgateway_drops_total{{{APPS},pod="{POD}",reason="slow_consumer"}}', "values": "0+120x30"}],
        "20m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewayDeliveryLatencyHigh": (
        bucket("chatgateway_delivery_latency_seconds", {"1": "0x30", "2.5": "0+100x30", "+Inf": "0+100x30"}),
        "20m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewayRedisErrors": (
        [{"series": f'chatgateway_redis_errors_total{{{APPS},pod="{POD}"}}', "values": "0+60x10"}],
        "6m", {"severity": "critical", "namespace": "apps", "pod": POD}),
    "ChatGatewayPublishLatencyHigh": (
        bucket("chatgateway_publish_duration_seconds", {"0.25": "0x30", "0.5": "0+100x30", "+Inf": "0+100x30"}),
        "20m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewayDrainForcedCloses": (
        [{"series": f'chatgateway_drain_forced_closes_total{{{APPS},pod="{POD}"}}', "values": "0 0 7"}],
        "2m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewayRebalancingForLong": (
        [{"series": f'chatgateway_rebalance_shed_total{{{APPS},pod="{POD}"}}', "values": "0+10x45"}],
        "40m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewayAdmissionShedding": (
        [{"series": f'chatgateway_upgrades_rejected_total{{{APPS},pod="{POD}",reason="admission"}}', "values": "0+100x30"}],
        "25m", {"severity": "warning", "namespace": "apps"}),
    "ChatGatewayHPAAtMax": (
        [{"series": f'kube_horizontalpodautoscaler_status_current_replicas{{{APPS},horizontalpodautoscaler="{h}"}}', "values": "20x45"}
         for h in ("chat", "web", "fixed")]
        + [{"series": f'kube_horizontalpodautoscaler_spec_max_replicas{{{APPS},horizontalpodautoscaler="{h}"}}', "values": "20x45"}
           for h in ("chat", "web", "fixed")]
        + [{"series": f'kube_horizontalpodautoscaler_spec_min_replicas{{{APPS},horizontalpodautoscaler="{h}"}}', "values": v}
           for h, v in (("chat", "3x45"), ("web", "3x45"), ("fixed", "20x45"))]
        # `chat` and `fixed` are ChatGateways (their pods serve chatgateway_connections);
        # `web` is not; `fixed` cannot scale (min == max).
        + [{"series": f'chatgateway_connections{{{APPS},pod="{p}"}}', "values": "100x45"}
           for p in (POD, "fixed-7c9d5b6f4-q2w3e")]
        + OWNERS,
        "40m", {"severity": "warning", "namespace": "apps", "horizontalpodautoscaler": "chat"}),
    "ChatGatewayOperatorReconcileErrors": (
        [{"series": 'chatgateway_operator_reconcile_errors_total{namespace="chatgateway-system",reason="ApiError"}',
          "values": "0+5x30"}],
        "25m", {"severity": "warning", "namespace": "chatgateway-system", "reason": "ApiError"}),
}

# A day in the life: traffic, a few refusals and closes, fast deliveries, an autoscaler
# with room, one drain that moved everyone with goaway.
HEALTHY = [
    {"series": f'kube_pod_container_status_ready{{{APPS},pod="{POD}",container="gateway"}}', "values": "1x45"},
    {"series": f'kube_pod_container_status_ready{{{APPS},pod="{OTHER_POD}",container="gateway"}}', "values": "0x45"},
    {"series": f'chatgateway_upgrades_rejected_total{{{APPS},pod="{POD}",reason="auth_invalid"}}', "values": "0+1x45"},
    # Drains refuse upgrades by design; not counted as refusals.
    {"series": f'chatgateway_upgrades_rejected_total{{{APPS},pod="{POD}",reason="shutting_down"}}', "values": "0+600x45"},
    {"series": f'chatgateway_connections_accepted_total{{{APPS},pod="{POD}"}}', "values": "0+600x45"},
    {"series": f'chatgateway_drops_total{{{APPS},pod="{POD}",reason="slow_consumer"}}', "values": "0+6x45"},
    *bucket("chatgateway_delivery_latency_seconds", {"0.01": "0+100x45", "1": "0+100x45", "+Inf": "0+100x45"}),
    *bucket("chatgateway_publish_duration_seconds", {"0.01": "0+100x45", "0.25": "0+100x45", "+Inf": "0+100x45"}),
    {"series": f'chatgateway_redis_errors_total{{{APPS},pod="{POD}"}}', "values": "0x45"},
    {"series": f'chatgateway_drain_forced_closes_total{{{APPS},pod="{POD}"}}', "values": "0x45"},
    {"series": f'chatgateway_rebalance_shed_total{{{APPS},pod="{POD}"}}', "values": "0+10x5 50x40"},
    {"series": f'chatgateway_upgrades_rejected_total{{{APPS},pod="{POD}",reason="admission"}}', "values": "0+100x3 300x42"},
    {"series": f'kube_horizontalpodautoscaler_status_current_replicas{{{APPS},horizontalpodautoscaler="chat"}}', "values": "5x45"},
    {"series": f'kube_horizontalpodautoscaler_spec_max_replicas{{{APPS},horizontalpodautoscaler="chat"}}', "values": "20x45"},
    {"series": f'kube_horizontalpodautoscaler_spec_min_replicas{{{APPS},horizontalpodautoscaler="chat"}}', "values": "3x45"},
    {"series": f'chatgateway_connections{{{APPS},pod="{POD}"}}', "values": "100x45"},
    *OWNERS,
    {"series": 'chatgateway_operator_reconcile_errors_total{namespace="chatgateway-system",reason="ApiError"}',
     "values": "0+1x2 2x43"},
]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make deps` installs Debian's prometheus package"
    return path


def rule_object(values: dict | None = None) -> dict:
    (rule,) = by_kind(objects({"prometheusRule": {"enabled": True, **(values or {})}}), "PrometheusRule")
    return rule


def alerts(rule: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def run_promtool(tmp_path: Path, rule: dict, tests: list[dict]) -> subprocess.CompletedProcess:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    check = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, f"promtool check rules:\n{check.stdout}{check.stderr}"
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    return subprocess.run([promtool(), "test", "rules", str(spec)], capture_output=True, text=True,
                          cwd=tmp_path)


def expected(rule: dict, name: str, labels: dict) -> list[dict]:
    annotations = alerts(rule)[name]["annotations"]
    return [{"exp_labels": labels, "exp_annotations": annotations}]


def test_the_rules_are_valid_and_every_alert_has_a_case():
    rule = rule_object()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(alerts(rule)) == set(FIRING), "every alert needs a firing case in FIRING"
    for name, r in alerts(rule).items():
        assert r["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(r["annotations"]), name
        assert "{{" not in yaml.safe_dump(r["annotations"]), f"{name}: unrendered template in annotations"


def test_each_alert_fires_on_its_problem(tmp_path):
    rule = rule_object()
    tests = [{"interval": "1m", "input_series": series,
              "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected(rule, name, labels)}]}
             for name, (series, at, labels) in FIRING.items()]
    out = run_promtool(tmp_path, rule, tests)
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}"


def test_no_alert_fires_on_healthy_series(tmp_path):
    rule = rule_object()
    checks = [{"eval_time": at, "alertname": name, "exp_alerts": []}
              for name in FIRING for at in ("10m", "44m")]
    out = run_promtool(tmp_path, rule, [{"interval": "1m", "input_series": HEALTHY, "alert_rule_test": checks}])
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}"


def test_a_gateway_with_a_long_name_is_known_by_its_pods_owners(tmp_path):
    """A ChatGateway of the longest name (63): its ReplicaSet's name is 74 characters and
    Kubernetes cuts its pods' generated names at 58 plus 5 random ones, so no pattern on
    the pod name finds the Deployment (or the HPA, of the same name)."""
    name = "a" * 55 + "-gateway"
    replicaset = f"{name}-6f7d9c8b5"
    pods = [replicaset[:58] + suffix for suffix in ("x2x7q", "k8v4w")]
    assert len(name) == 63 and not any(name in p for p in pods)
    long = f'{APPS},horizontalpodautoscaler="{name}"'
    series = [s for p in pods for s in owners(p, replicaset, name)]
    series += [{"series": f'kube_pod_container_status_ready{{{APPS},pod="{p}",container="gateway"}}', "values": "0x45"}
               for p in pods]
    series += [{"series": f'chatgateway_connections{{{APPS},pod="{p}"}}', "values": "100x45"} for p in pods]
    series += [{"series": f'kube_horizontalpodautoscaler_status_current_replicas{{{long}}}', "values": "20x45"},
               {"series": f'kube_horizontalpodautoscaler_spec_max_replicas{{{long}}}', "values": "20x45"},
               {"series": f'kube_horizontalpodautoscaler_spec_min_replicas{{{long}}}', "values": "3x45"}]
    rule = rule_object()
    checks = [{"eval_time": "40m", "alertname": "ChatGatewayNoReadyPods",
               "exp_alerts": expected(rule, "ChatGatewayNoReadyPods",
                                      {"severity": "critical", "namespace": "apps", "chatgateway": name})},
              {"eval_time": "40m", "alertname": "ChatGatewayHPAAtMax",
               "exp_alerts": expected(rule, "ChatGatewayHPAAtMax",
                                      {"severity": "warning", "namespace": "apps", "horizontalpodautoscaler": name})}]
    out = run_promtool(tmp_path, rule, [{"interval": "1m", "input_series": series, "alert_rule_test": checks}])
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}"


def test_thresholds_and_durations_are_values(tmp_path):
    """Raised thresholds silence the same problem series (so the cases above test the values,
    not constants), and a disabled alert is left out."""
    values = {"alerts": {"slowConsumerCloses": {"perSecond": 5}, "redisErrors": {"for": "30m"},
                         "deliveryLatency": {"p99Seconds": 3}, "upgradeRefusals": {"ratio": 0.6},
                         "hpaAtMax": {"enabled": False}},
              "runbookUrl": "https://wiki.example/chat"}
    rule = rule_object(values)
    assert "ChatGatewayHPAAtMax" not in alerts(rule)
    assert "> 5" in alerts(rule)["ChatGatewaySlowConsumerCloses"]["expr"]
    assert alerts(rule)["ChatGatewayRedisErrors"]["for"] == "30m"
    assert all(r["annotations"]["runbook_url"] == f"https://wiki.example/chat#{n.lower()}"
               for n, r in alerts(rule).items())
    quiet = ["ChatGatewaySlowConsumerCloses", "ChatGatewayRedisErrors", "ChatGatewayDeliveryLatencyHigh",
             "ChatGatewayUpgradeRefusals"]
    tests = [{"interval": "1m", "input_series": FIRING[name][0],
              "alert_rule_test": [{"eval_time": FIRING[name][1], "alertname": name, "exp_alerts": []}]}
             for name in quiet]
    out = run_promtool(tmp_path, rule, tests)
    assert out.returncode == 0, f"promtool test rules:\n{out.stdout}{out.stderr}"


def test_promtool_catches_a_broken_rule(tmp_path):
    """Guards against a checker that passes everything."""
    rule = rule_object()
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "sum by (namespace (chatgateway_connections)"
    rules = tmp_path / "bad.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert out.returncode != 0


def test_every_alert_has_a_runbook_section():
    text = (ROOT / "docs" / "operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#{2,4} (.+)$", text, re.M)}
    for name, r in alerts(rule_object()).items():
        anchor = r["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in headings, f"{name}: no section `### {name}` in docs/operations.md"
        section = text.split(f"### {name}\n", 1)[1].split("\n#", 1)[0]
        assert len(section.split()) > 40, f"{name}: runbook section too thin"
