"""Flow `helm install`: the chart installed with Helm's install action; the operator pod
Running and Ready and holding its leader Lease."""
from __future__ import annotations

import kube

FLOW = "helm install"


def test_operator_runs_ready_and_holds_its_lease(operator):
    ns = operator["namespace"]
    dep = kube.get("deployment", f"{operator['release']}-chat-gateway", ns)
    if dep is None:
        kube.fail(FLOW, "the chart's operator Deployment is missing", ns)
    selector = ",".join(f"{k}={v}" for k, v in dep["spec"]["selector"]["matchLabels"].items())
    pods = kube.eventually(FLOW, "the operator pod Running and Ready",
                           lambda: [p for p in kube.items("pods", ns, selector) if kube.pod_ready(p)],
                           180, ns, selector)
    names = {p["metadata"]["name"] for p in pods}
    lease = kube.eventually(FLOW, "the leader Lease held by an operator pod",
                            lambda: (kube.get("lease", "chatgateway-operator", ns) or {}).get("spec", {})
                            .get("holderIdentity") in names and kube.get("lease", "chatgateway-operator", ns),
                            60, ns, selector)
    assert lease["spec"]["holderIdentity"] in names
    # The holder renews it: renewTime moves.
    first = lease["spec"]["renewTime"]
    kube.eventually(FLOW, "the Lease renewed", lambda: kube.get("lease", "chatgateway-operator", ns)["spec"]
                    ["renewTime"] != first, 60, ns, selector)
    # The CRD the chart installed is served.
    kube.kubectl("get", "chatgateways", "--all-namespaces")
