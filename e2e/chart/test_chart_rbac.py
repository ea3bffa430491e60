"""The chart's RBAC, rendered with the real Helm engine: exactly what docs/operator.md
documents, no wildcards, bound to the operator's service account, writes kept to its
namespace."""
from __future__ import annotations

import re

from conftest import ROOT, by_kind


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
    # Leases only in the operator's namespace; Secrets read one by one (and watched, by
    # metadata, for rotations), never written cluster-wide (the custom metrics Secret only,
    # in the operator's namespace, below).
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
    assert {v for g, r, v in cluster if r == "secrets"} == {"get", "list", "watch"}
    assert not any(r == "leases" for _, r, _ in cluster)
