"""What enforces NetworkPolicy on a partitioned zone's node, read where the probe ran, recorded and said.

The existing (EKS) backend probes a zone's nodes before planning a partition of it; it now also reads the
`aws-node` pod on the probed node (kube-system, container `aws-eks-nodeagent`: the VPC CNI's network policy
agent) through the same client and role, records it per zone with the probe's result (`netpol_zones` in the
backend's state), and says it once. A WARNING line (at planning, in preflight.json's warnings, in the report's
notes) names the zone, the node and what was found when the harness cannot tell what a partition does to the
connections already open there: another CNI, the agent missing or off, a release the image does not say.

The agent's release itself is recorded, not warned about: read in aws-network-policy-agent's source, both
v1.1.x and v1.2.0+ cut the open cross-zone flows of pods no other policy selected (v1.1.x never tracked them,
v1.2.0 re-evaluates them), see harness.backends.kube.netpolagent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import NETPOL_STATE, ExistingBackend
from harness.backends.kube import KubeCluster
from harness.backends.kube.api import KubeApiError
from harness.backends.kube.netpolagent import PolicyAgent, policy_agent_of, read_policy_agent, release_of
from harness.backends.kube.permissions import Mode, Permission, needed
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubefake import nothing_refused as nothing_refused
from tests.kuberbac import nightly_rules, without
from tests.test_backend_existing import CONTEXT, EKS_NODES, LAX, NODE, _backend
from tests.test_backend_existing import eks as eks

ECR = "602401143452.dkr.ecr.us-west-2.amazonaws.com/amazon"
REGION = "us-west-2a"
ALL_NODES = {str(n["metadata"]["name"]) for n in EKS_NODES}


# -- reading a node's pods (no server) ----------------------------------------------------------------------------


def _aws_node(node: str, agent_image: str | None, *, mode: str | None = None, enabled: bool = True) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [
        {"name": "aws-node", "image": f"{ECR}/amazon-k8s-cni:v1.19.2-eksbuild.1",
         "env": [{"name": "NETWORK_POLICY_ENFORCING_MODE", "value": mode}] if mode else []},
    ]  # fmt: skip
    if agent_image is not None:
        containers.append({"name": "aws-eks-nodeagent", "image": agent_image,
                           "args": [f"--enable-network-policy={str(enabled).lower()}"]})  # fmt: skip
    return {
        "metadata": {"name": "aws-node-x7k2p", "namespace": "kube-system", "labels": {"k8s-app": "aws-node"},
                     "ownerReferences": [{"kind": "DaemonSet", "name": "aws-node"}]},
        "spec": {"nodeName": node, "containers": containers},
    }  # fmt: skip


def test_release_of_an_agent_image() -> None:
    assert release_of(f"{ECR}/aws-network-policy-agent:v1.2.0-eksbuild.1") == "v1.2.0"
    assert release_of(f"{ECR}/aws-network-policy-agent:v1.1.5-eksbuild.1@sha256:ab12") == "v1.1.5"
    assert release_of("registry.local:5000/np-agent:1.3.4") == "v1.3.4"
    assert release_of(f"{ECR}/aws-network-policy-agent@sha256:ab12") == ""  # a digest says no release
    assert release_of("registry.local:5000/np-agent:latest") == ""


def test_old_and_new_agents_are_recorded_and_neither_is_warned_about() -> None:
    """Both releases cut a newly selected pod's open flows (v1.1.x never tracked them, v1.2.0 re-evaluates them):
    the release is evidence, recorded and said, not a warning."""
    old = policy_agent_of("n1", [_aws_node("n1", f"{ECR}/aws-network-policy-agent:v1.1.5-eksbuild.1")])
    new = policy_agent_of("n1", [_aws_node("n1", f"{ECR}/aws-network-policy-agent:v1.2.0-eksbuild.1")])
    assert (old.cni, old.release, old.version) == ("vpc-cni", "v1.1.5", (1, 1, 5))
    assert new.version == (1, 2, 0)
    assert old.warning(LAX) is None and new.warning(LAX) is None
    assert "never tracked before it" in old.describe(LAX) and "re-evaluated" in new.describe(LAX)
    assert "aws-eks-nodeagent v1.1.5 in kube-system/aws-node-x7k2p" in old.describe(LAX)
    assert PolicyAgent.from_dict(json.loads(json.dumps(old.as_dict()))) == old


@pytest.mark.parametrize(
    ("pods", "said"),
    [
        ([_aws_node("n1", f"{ECR}/aws-network-policy-agent@sha256:ab12")], "its release cannot be read from the tag"),
        ([_aws_node("n1", None)], "the VPC CNI (kube-system/aws-node-x7k2p) without its network policy agent"),
        ([_aws_node("n1", f"{ECR}/aws-network-policy-agent:v1.2.0", enabled=False)], "--enable-network-policy=false"),
        ([_aws_node("n1", f"{ECR}/aws-network-policy-agent:v1.2.0", mode="strict")],
         "NETWORK_POLICY_ENFORCING_MODE=strict"),
        ([{"metadata": {"name": "calico-node-4xq9z", "namespace": "calico-system",
                        "labels": {"k8s-app": "calico-node"}},
           "spec": {"containers": [{"name": "calico-node", "image": "docker.io/calico/node:v3.29.1"}]}}],
         "not the VPC CNI: Calico (calico-system/calico-node-4xq9z, docker.io/calico/node:v3.29.1)"),
        ([{"metadata": {"name": "cilium-8kq2d", "namespace": "kube-system", "labels": {"k8s-app": "cilium"}},
           "spec": {"containers": [{"name": "cilium-agent", "image": "quay.io/cilium/cilium:v1.16.5"}]}}],
         "not the VPC CNI: Cilium"),
        ([{"metadata": {"name": "kube-proxy-abcde", "namespace": "kube-system",
                        "ownerReferences": [{"kind": "DaemonSet", "name": "kube-proxy"}]}, "spec": {}}],
         "no aws-node pod on the node, nor a CNI the harness knows (DaemonSet pods there: kube-system/kube-proxy-"),
    ],
    ids=["digest-only", "no-agent-container", "policy-off", "strict-mode", "calico", "cilium", "unknown-cni"],
)  # fmt: skip
def test_what_the_harness_cannot_judge_is_warned_about_saying_what_was_found(
    pods: list[dict[str, Any]], said: str
) -> None:
    agent = policy_agent_of("ip-10-0-3-10", pods)
    line = agent.warning(LAX)
    assert line is not None and "\n" not in line
    assert line.startswith(f"network policy in {LAX} (node ip-10-0-3-10): ")
    assert said in line
    assert "pooled connections may carry on through it" in line


def test_a_refused_read_is_said_not_raised() -> None:
    class Refusing:
        def request(self, method: str, path: str, **_kw: Any) -> Any:
            raise KubeApiError(403, method, path, 'pods is forbidden: cannot list resource "pods"')

    agent = read_policy_agent(Refusing(), "ip-10-0-3-10")  # type: ignore[arg-type]
    assert agent.cni == "unknown" and "the pods on it could not be read" in agent.found
    assert agent.warning(LAX) is not None


# -- on the simulated EKS cluster, under the nightly's role --------------------------------------------------------


def _agents_on(api: FakeApiServer) -> dict[str, str]:
    """Node -> the agent image of its aws-node pod, as the simulated cluster runs them."""

    def read() -> dict[str, str]:
        out = {}
        for p in api.sim.items("v1", "pods", "kube-system"):
            if p["metadata"].get("labels", {}).get("k8s-app") == "aws-node" and not p["metadata"].get(
                "deletionTimestamp"
            ):
                agent = [c for c in p["spec"]["containers"] if c["name"] == "aws-eks-nodeagent"]
                out[p["spec"]["nodeName"]] = agent[0]["image"] if agent else ""
        return out

    return dict(api.sim.call(read))


def _vpc_cni(api: FakeApiServer, agent: str, **kw: Any) -> None:
    api.sim.call(lambda: api.sim.vpc_cni(agent, **kw))
    assert wait_until(lambda: set(_agents_on(api)) == ALL_NODES, 30)


def _said(b: ExistingBackend) -> list[str]:
    lines: list[str] = []
    b.progress = lines.append
    return lines


@pytest.mark.slow
@pytest.mark.usefixtures("nothing_refused")
@pytest.mark.parametrize("release", ["v1.1.5-eksbuild.1", "v1.2.0-eksbuild.1"], ids=["old-agent", "new-agent"])
def test_the_zone_agent_is_recorded_with_the_probe_and_said_once(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path, release: str
) -> None:
    _vpc_cni(api, release)
    b = _backend(api, tmp_path, (CONTEXT,), manifests=rendered(tmp_path))
    said = _said(b)
    assert b.network_policy_enforced(LAX)[0]
    rec = json.loads((b.workdir / "state.json").read_text())[NETPOL_STATE][LAX]  # the capability record
    assert rec["node"] == NODE[LAX]
    assert rec["agent"]["node"] == NODE[LAX] and rec["agent"]["cni"] == "vpc-cni"
    assert rec["agent"]["image"] == f"{ECR}/aws-network-policy-agent:{release}"
    assert rec["agent"]["release"] == release.split("-")[0]
    lines = [x for x in said if x.startswith(f"network policy in {LAX}")]
    assert len(lines) == 1 and f"aws-eks-nodeagent {release.split('-')[0]}" in lines[0]
    assert not any(x.startswith("WARNING") for x in said)
    b.network_policy_enforced(LAX)  # from the cache: said once per process
    assert len([x for x in said if x.startswith(f"network policy in {LAX}")]) == 1
    assert b.cluster_warnings() == []
    b.close()


@pytest.mark.slow
@pytest.mark.usefixtures("nothing_refused")
def test_each_zone_is_judged_by_its_own_node_agent(api: FakeApiServer, eks: KubeCluster, tmp_path: Path) -> None:
    """An add-on update held back on the Local Zone (OnDelete, or a rollout that has not reached its node group):
    the Region's nodes run v1.2.0, the Local Zone's node still an image whose release its tag does not say (a
    private mirror's `latest`). Each zone's record is its own node's; only the Local Zone is warned about."""
    _vpc_cni(api, "latest")
    api.sim.call(lambda: api.sim.vpc_cni("v1.2.0-eksbuild.1"))
    for p in api.sim.call(lambda: api.sim.items("v1", "pods", "kube-system")):
        if p["spec"].get("nodeName") != NODE[LAX]:
            api.sim.call(lambda p=p: api.sim.delete("v1", "pods", "kube-system", p["metadata"]["name"], grace=0))
    assert wait_until(
        lambda: (
            _agents_on(api).get(NODE[REGION], "").endswith(":v1.2.0-eksbuild.1")
            and _agents_on(api).get(NODE[LAX], "").endswith(":latest")
            and set(_agents_on(api)) == ALL_NODES
        ),
        30,
    )
    b = _backend(api, tmp_path, (CONTEXT,), manifests=rendered(tmp_path))
    said = _said(b)
    assert b.network_policy_enforced(LAX)[0] and b.network_policy_enforced(REGION)[0]
    agents = b.policy_agents()
    assert agents[REGION].release == "v1.2.0" and agents[REGION].node == NODE[REGION]
    assert agents[LAX].release == "" and agents[LAX].node == NODE[LAX]
    warnings = [x for x in said if x.startswith("WARNING: ")]
    assert warnings == [
        f"WARNING: network policy in {LAX} (node {NODE[LAX]}): aws-eks-nodeagent in kube-system/"
        f"{_pod_of(api, NODE[LAX])}, image {ECR}/aws-network-policy-agent:latest: its release cannot be read from "
        "the tag; what a partition does to connections already open there is not known to the harness, so a "
        "partition shows only by the connections it stops (new ones); pooled connections may carry on through it"
    ]
    assert b.cluster_warnings() == [warnings[0].removeprefix("WARNING: ")]
    b.close()


def _pod_of(api: FakeApiServer, node: str) -> str:
    for p in api.sim.call(lambda: api.sim.items("v1", "pods", "kube-system")):
        if p["spec"].get("nodeName") == node and not p["metadata"].get("deletionTimestamp"):
            return str(p["metadata"]["name"])
    raise AssertionError(f"no aws-node pod on {node}")


@pytest.mark.slow
@pytest.mark.usefixtures("nothing_refused")
def test_another_cni_is_named_and_the_warning_reaches_preflight_and_the_report(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    """Calico enforces (the probe passes) but is not the VPC CNI: the warning says what runs there, is said once
    at planning, not again at up, and is what preflight.json's warnings and the report's notes carry."""
    from harness.preflight import PreflightResult, write_preflight
    from harness.report import write_report
    from harness.topology import load_topology
    from harness.verify import verify
    from harness.verify.synth import Scenario, write_run

    api.seed(eks, {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "calico-node", "namespace": "calico-system"},
        "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}},
                 "template": {"metadata": {"labels": {"k8s-app": "calico-node"}},
                              "spec": {"hostNetwork": True, "containers": [
                                  {"name": "calico-node", "image": "docker.io/calico/node:v3.29.1"}]}}},
    })  # fmt: skip
    b = _backend(api, tmp_path, (CONTEXT,), manifests=rendered(tmp_path))
    said = _said(b)
    assert wait_until(lambda: bool(b.policy_agent(NODE[LAX]).cni == "Calico"), 30)
    assert b.network_policy_enforced(LAX)[0]
    (line,) = b.cluster_warnings()
    assert line.startswith(f"network policy in {LAX} (node {NODE[LAX]}): not the VPC CNI: Calico (calico-system/")
    assert "docker.io/calico/node:v3.29.1" in line
    b._warn_version()  # what up says first: the line planning said is not said again
    assert said.count(f"WARNING: {line}") == 1

    run = write_run(tmp_path / "run", Scenario(load_topology(), duration_s=20, rate_per_zone=2))
    write_preflight(run, PreflightResult(0.0, "http://consul", [], [], b.cluster_warnings()))
    assert json.loads((run / "preflight.json").read_text())["warnings"] == [line]
    v = verify(run)
    assert f"preflight.json: {line}" in v.run.notes
    assert f"preflight.json: {line}" in write_report(run, v).read_text()
    b.close()


# -- RBAC ------------------------------------------------------------------------------------------------------------


def test_the_shipped_role_is_asked_for_what_is_read() -> None:
    """The read is a cluster-wide list of pods (by node): a permission `up` already asks for and the shipped
    role grants, so no rule is added for it (tests/test_rbac.py holds the file equal to the list)."""
    asked = needed(Mode(destructive=True), {}, {"hashicups"}, "consul", "consul-ca-cert")
    assert Permission("list", "pods", "", "") in asked


@pytest.mark.slow
def test_the_role_allows_the_read_and_a_role_without_it_is_said(
    api: FakeApiServer, eks: KubeCluster, tmp_path: Path
) -> None:
    _vpc_cni(api, "v1.2.0-eksbuild.1")
    b = _backend(api, tmp_path, (CONTEXT,), manifests=rendered(tmp_path))  # grants exactly the shipped role
    agent = b.policy_agent(NODE[LAX])
    assert agent.release == "v1.2.0" and api.sim.rbac_denials == []
    listed = [q for m, p, q, _d in api.requests() if m == "GET" and p == "/api/v1/pods" and "fieldSelector" in q]
    assert listed and listed[-1]["fieldSelector"] == f"spec.nodeName={NODE[LAX]}"

    api.grant(CONTEXT, without(nightly_rules(), "", "pods", "list"))  # a role lacking the line
    refused = b.policy_agent(NODE[LAX])
    assert refused.cni == "unknown" and "could not be read" in refused.found and "forbidden" in refused.found
    assert refused.warning(LAX) is not None
    assert api.sim.rbac_denials  # the fake's RBAC refused it, as the API server would
    b.close()
