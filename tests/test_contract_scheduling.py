"""The one scheduling predicate (harness.contract.scheduling), held to Kubernetes' semantics by a table.

Both callers are checked against the same table: the renderer's checks read a
pod spec (`Placement.from_pod_spec`), the local scheduler parses the
Deployment strictly (`sched.parse_deployment`) and asks `fits`. Each row is
what kube-scheduler's NodeAffinity / TaintToleration filters answer
(k8s.io/component-helpers/scheduling/corev1).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from harness.backends.local.sched import Node, nodes_from_kind_config, parse_deployment
from harness.contract.scheduling import Placement, Taint, kind_nodes
from harness.render import checks

LABELS = {"topology.kubernetes.io/zone": "lax", "gen": "5", "tier": "edge"}


def _req(*exprs: dict[str, Any], fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    term: dict[str, Any] = {}
    if exprs:
        term["matchExpressions"] = list(exprs)
    if fields:
        term["matchFields"] = fields
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    }


def _e(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": op, **({"values": list(values)} if values else {})}


# (pod spec fragment, node taints, fits?)
AFFINITY_TABLE: list[tuple[str, dict[str, Any], bool]] = [
    ("In: value listed", _req(_e("tier", "In", "edge", "x")), True),
    ("In: value not listed", _req(_e("tier", "In", "core")), False),
    ("In: key absent", _req(_e("nope", "In", "edge")), False),
    ("NotIn: value listed", _req(_e("tier", "NotIn", "edge")), False),
    ("NotIn: value not listed", _req(_e("tier", "NotIn", "core")), True),
    ("NotIn: key absent", _req(_e("nope", "NotIn", "edge")), True),
    ("Exists: present", _req(_e("tier", "Exists")), True),
    ("Exists: absent", _req(_e("nope", "Exists")), False),
    ("DoesNotExist: absent", _req(_e("nope", "DoesNotExist")), True),
    ("DoesNotExist: present", _req(_e("tier", "DoesNotExist")), False),
    ("Gt: greater", _req(_e("gen", "Gt", "4")), True),
    ("Gt: equal", _req(_e("gen", "Gt", "5")), False),
    ("Gt: key absent", _req(_e("nope", "Gt", "1")), False),
    ("Gt: label not an integer", _req(_e("tier", "Gt", "1")), False),
    ("Lt: smaller", _req(_e("gen", "Lt", "6")), True),
    ("Lt: equal", _req(_e("gen", "Lt", "5")), False),
    ("expressions of a term are ANDed", _req(_e("tier", "In", "edge"), _e("gen", "Gt", "9")), False),
    ("matchFields metadata.name In", _req(fields=[_e("metadata.name", "In", "n1")]), True),
    ("matchFields metadata.name NotIn", _req(fields=[_e("metadata.name", "NotIn", "n1")]), False),
    ("nodeSelector matches", {"nodeSelector": {"tier": "edge"}}, True),
    ("nodeSelector differs", {"nodeSelector": {"tier": "core"}}, False),
    ("nodeSelector key absent", {"nodeSelector": {"nope": ""}}, False),
    ("no constraints", {}, True),
]

EDGE = Taint("edge-harness.io/edge-zone", "lax", "NoSchedule")
NOVALUE = Taint("dedicated", "", "NoSchedule")


def _tol(**kw: str) -> dict[str, Any]:
    return {"tolerations": [kw]}


TAINT_TABLE: list[tuple[str, tuple[Taint, ...], dict[str, Any], bool]] = [
    ("untolerated NoSchedule", (EDGE,), {}, False),
    ("untolerated NoExecute", (Taint("k", "v", "NoExecute"),), {}, False),
    ("PreferNoSchedule never blocks", (Taint("k", "v", "PreferNoSchedule"),), {}, True),
    (
        "Equal, same value and effect",
        (EDGE,),
        _tol(key=EDGE.key, operator="Equal", value="lax", effect="NoSchedule"),
        True,
    ),
    ("Equal, other value", (EDGE,), _tol(key=EDGE.key, operator="Equal", value="las", effect="NoSchedule"), False),
    ("Equal is the default operator", (EDGE,), _tol(key=EDGE.key, value="lax"), True),
    ("empty effect matches every effect", (EDGE,), _tol(key=EDGE.key, operator="Exists"), True),
    ("other effect", (EDGE,), _tol(key=EDGE.key, operator="Exists", effect="NoExecute"), False),
    ("Exists ignores the value", (EDGE,), _tol(key=EDGE.key, operator="Exists", effect="NoSchedule"), True),
    ("empty key + Exists tolerates all", (EDGE, Taint("k", "v", "NoExecute")), _tol(operator="Exists"), True),
    ("Equal without value = empty value", (NOVALUE,), _tol(key="dedicated", operator="Equal"), True),
    ("Equal without value vs a valued taint", (EDGE,), _tol(key=EDGE.key, operator="Equal"), False),
    ("other key", (EDGE,), _tol(key="other", operator="Exists"), False),
]


def _deployment(pod_spec: dict[str, Any]) -> dict[str, Any]:
    spec = {"containers": [{"name": "c", "image": "i"}], **pod_spec}
    return {
        "metadata": {"name": "d", "namespace": "n"},
        "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": spec},
        },
    }


def _both(pod_spec: dict[str, Any], node: Node) -> tuple[bool, bool]:
    """(renderer checks' answer, local scheduler's answer) for one pod spec on one node."""
    return Placement.from_pod_spec(pod_spec).fits(node), parse_deployment(_deployment(pod_spec), "f").fits(node)


@pytest.mark.parametrize(("case", "pod_spec", "fits"), AFFINITY_TABLE, ids=[r[0] for r in AFFINITY_TABLE])
def test_node_affinity_semantics(case: str, pod_spec: dict[str, Any], fits: bool) -> None:
    assert _both(pod_spec, Node("n1", "lax", dict(LABELS))) == (fits, fits)


@pytest.mark.parametrize(("case", "taints", "pod_spec", "fits"), TAINT_TABLE, ids=[r[0] for r in TAINT_TABLE])
def test_taint_toleration_semantics(case: str, taints: tuple[Taint, ...], pod_spec: dict[str, Any], fits: bool) -> None:
    assert _both(pod_spec, Node("n1", "lax", dict(LABELS), taints)) == (fits, fits)


def test_an_empty_term_matches_no_node() -> None:
    """A null or empty nodeSelectorTerm matches nothing; an empty term list likewise."""
    node = Node("n1", "lax", dict(LABELS))
    empty_term = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}
    }
    no_terms = {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    }
    assert _both(empty_term, node) == (False, False)
    assert _both(no_terms, node) == (False, False)
    # terms are ORed: one matching term is enough
    either = _req(_e("tier", "In", "core"))
    either["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].append(
        {"matchExpressions": [_e("gen", "Lt", "9")]}
    )
    assert _both(either, node) == (True, True)


KIND_CONFIG: dict[str, Any] = {
    "kind": "Cluster",
    "name": "edge",
    "nodes": [
        {"role": "control-plane"},
        {
            "role": "worker",
            "labels": {"topology.kubernetes.io/zone": "lax"},
            "kubeadmConfigPatches": [
                "kind: JoinConfiguration\nnodeRegistration:\n  kubeletExtraArgs:\n"
                "    register-with-taints: edge-harness.io/edge-zone=lax:NoSchedule,gpu:NoExecute\n"
            ],
        },
        {
            "role": "worker",
            "labels": {"topology.kubernetes.io/zone": "2a"},
            "kubeadmConfigPatches": [
                "kind: JoinConfiguration\nnodeRegistration:\n  taints:\n"
                "  - {key: dedicated, value: x, effect: NoSchedule}\n"
            ],
        },
    ],
}


def test_one_node_list_reads_both_taint_spellings() -> None:
    """register-with-taints and nodeRegistration.taints both count, for the checks and the local scheduler alike."""
    nodes = kind_nodes(KIND_CONFIG)
    assert [(n.name, n.role) for n in nodes] == [
        ("edge-control-plane", "control-plane"), ("edge-worker", "worker"), ("edge-worker2", "worker"),
    ]  # fmt: skip
    assert nodes[0].taints == (Taint("node-role.kubernetes.io/control-plane", "", "NoSchedule"),)
    assert nodes[1].taints == (Taint("edge-harness.io/edge-zone", "lax", "NoSchedule"), Taint("gpu", "", "NoExecute"))
    assert nodes[2].taints == (Taint("dedicated", "x", "NoSchedule"),)
    local = nodes_from_kind_config(KIND_CONFIG, "f", lambda z: z)
    assert [n.taints for n in local] == [nodes[1].taints, nodes[2].taints]


def test_check_scheduling_uses_registered_taints() -> None:
    """A pod without the edge toleration fits no edge node whose taint comes from register-with-taints."""

    bundle = SimpleNamespace(
        kind_config=KIND_CONFIG,
        objects=[
            {
                "kind": "Deployment",
                "metadata": {"name": "d", "namespace": "n"},
                "spec": {
                    "template": {
                        "metadata": {"labels": {"edge-harness.io/zone": "lax"}},
                        "spec": {"nodeSelector": {"topology.kubernetes.io/zone": "lax"}},
                    }
                },
            }
        ],
    )
    assert checks.check_scheduling(bundle) == ["Deployment n/d: fits no node"]  # type: ignore[arg-type]
