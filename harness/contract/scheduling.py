"""The scheduling predicate: may a pod go on a node? One implementation, Kubernetes' semantics.

The renderer's checks (`render.checks.check_scheduling`: does every
Deployment fit a node of its own zone, and only there?) and the local
backend's scheduler (`backends.local.sched`: where does this replica go?)
both ask it, so they can never disagree about a manifest: the local run
places pods where kube-scheduler would, and a manifest the checks accept is
one the local backend can place.

Semantics, from k8s.io/component-helpers/scheduling/corev1 (nodeaffinity,
helpers) and the API reference:

- `nodeSelector`: every key present with exactly that value.
- required node affinity: the terms are ORed; a term's expressions and
  fields are ANDed; a term with neither matches nothing, and so does an
  empty term list. Operators: `In` (key present, value listed), `NotIn` (key
  absent or value not listed), `Exists`, `DoesNotExist`, `Gt` / `Lt` (key
  present, exactly one value, both integers, compared as integers;
  anything unparsable does not match). `matchFields` knows only
  `metadata.name`, with `In` / `NotIn`.
- taints with effect `NoSchedule` or `NoExecute` keep a pod off unless one
  of its tolerations tolerates them (`PreferNoSchedule` never does). A
  toleration: an empty effect matches every effect; an empty key with
  `Exists` tolerates every taint; operator `Equal` (the default) needs the
  same key and value (a missing value is ""); `Exists` needs the key only.
- node lists from a kind config carry the taints of `nodeRegistration.taints`
  *and* of kubelet's `register-with-taints`, and control-plane nodes kubeadm's
  `node-role.kubernetes.io/control-plane:NoSchedule`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.topology.yamlload import safe_load

BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")
CONTROL_PLANE_TAINT_KEY = "node-role.kubernetes.io/control-plane"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
FIELD_OPERATORS = ("In", "NotIn")
NODE_NAME_FIELD = "metadata.name"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Toleration:
        return cls(
            str(d.get("key") or ""), str(d.get("operator") or "Equal"), str(d.get("value") or ""),
            str(d.get("effect") or ""),
        )  # fmt: skip

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if not self.key:
            return self.operator == "Exists"  # an empty key is valid only with Exists: it tolerates everything
        if self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator == "Equal" and self.value == taint.value


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions / matchFields entry."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Requirement:
        return cls(str(d.get("key", "")), str(d.get("operator", "")), tuple(str(v) for v in d.get("values") or []))

    def matches(self, values: Mapping[str, str]) -> bool:
        present = self.key in values
        op = self.operator
        if op == "In":
            return present and values[self.key] in self.values
        if op == "NotIn":
            return not present or values[self.key] not in self.values
        if op == "Exists":
            return present
        if op == "DoesNotExist":
            return not present
        if op in ("Gt", "Lt"):
            if not present or len(self.values) != 1:
                return False
            try:
                have, bound = int(values[self.key]), int(self.values[0])
            except ValueError:
                return False
            return have > bound if op == "Gt" else have < bound
        return False  # an unknown operator matches nothing (the API server would have refused it)


@dataclass(frozen=True)
class Term:
    """One nodeSelectorTerm: every expression (on labels) and field (on the node name) must match."""

    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Term:
        return cls(
            tuple(Requirement.from_dict(e) for e in d.get("matchExpressions") or []),
            tuple(Requirement.from_dict(e) for e in d.get("matchFields") or []),
        )

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if not self.expressions and not self.fields:
            return False  # "a null or empty node selector term matches no objects"
        fields = {NODE_NAME_FIELD: name}
        return all(r.matches(labels) for r in self.expressions) and all(
            r.operator in FIELD_OPERATORS and r.matches(fields) for r in self.fields
        )


class SchedNode(Protocol):
    """What the predicate reads of a node (render.checks and local.sched have their own node records)."""

    @property
    def name(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def taints(self) -> Sequence[Taint]: ...


@dataclass(frozen=True)
class Placement:
    """A pod's hard placement constraints: nodeSelector, required node affinity, tolerations."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    required: tuple[Term, ...] | None = None  # None: no required node affinity at all
    tolerations: tuple[Toleration, ...] = ()

    @classmethod
    def from_pod_spec(cls, pod_spec: Mapping[str, Any]) -> Placement:
        required = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        )
        return cls(
            node_selector={str(k): str(v) for k, v in (pod_spec.get("nodeSelector") or {}).items()},
            required=None
            if required is None
            else tuple(Term.from_dict(t) for t in (required.get("nodeSelectorTerms") or [])),
            tolerations=tuple(Toleration.from_dict(t) for t in pod_spec.get("tolerations") or []),
        )

    def matches_affinity(self, node: SchedNode) -> bool:
        """nodeSelector and required node affinity only (what topology spreading counts domains over)."""
        if any(node.labels.get(k) != v for k, v in self.node_selector.items()):
            return False
        return self.required is None or any(t.matches(node.name, node.labels) for t in self.required)

    def tolerates(self, taints: Iterable[Taint]) -> bool:
        return all(
            taint.effect not in BLOCKING_EFFECTS or any(tol.tolerates(taint) for tol in self.tolerations)
            for taint in taints
        )

    def fits(self, node: SchedNode) -> bool:
        """Would kube-scheduler's filters let the pod on `node` (resources aside)?"""
        return self.tolerates(node.taints) and self.matches_affinity(node)


@dataclass(frozen=True)
class KindNode:
    """A node a kind config declares: kind's own name, its role, labels and taints."""

    name: str
    role: str  # control-plane | worker
    labels: Mapping[str, str]
    taints: tuple[Taint, ...]


def registration_taints(node: Mapping[str, Any]) -> list[Taint]:
    """The taints a kind node registers with: kubeadm `nodeRegistration.taints` and kubelet `register-with-taints`."""
    taints: list[Taint] = []
    for patch in node.get("kubeadmConfigPatches") or []:
        doc = safe_load(patch) if isinstance(patch, str) else patch
        if not isinstance(doc, Mapping):
            continue
        reg = doc.get("nodeRegistration") or {}
        for t in reg.get("taints") or []:
            taints.append(Taint(str(t["key"]), str(t.get("value") or ""), str(t.get("effect") or "NoSchedule")))
        for item in str((reg.get("kubeletExtraArgs") or {}).get("register-with-taints") or "").split(","):
            if item.strip():
                kv, _, effect = item.strip().partition(":")
                k, _, v = kv.partition("=")
                taints.append(Taint(k, v, effect or "NoSchedule"))
    return taints


def kind_nodes(kind_config: Mapping[str, Any]) -> list[KindNode]:
    """The nodes of a kind config in order, named as kind names them (`<cluster>-worker`, `-worker2`, ...)."""
    cluster = str(kind_config.get("name") or "kind")
    out: list[KindNode] = []
    workers = 0
    for node in kind_config.get("nodes") or []:
        if not isinstance(node, Mapping):
            continue
        role = str(node.get("role") or "control-plane")
        taints = registration_taints(node)
        if role == "control-plane":
            name = f"{cluster}-control-plane"
            if not any(t.key == CONTROL_PLANE_TAINT_KEY for t in taints):
                taints.append(Taint(CONTROL_PLANE_TAINT_KEY, "", "NoSchedule"))
        else:
            workers += 1
            name = f"{cluster}-worker" + ("" if workers == 1 else str(workers))
        labels = {str(k): str(v) for k, v in (node.get("labels") or {}).items()}
        out.append(KindNode(name, role, labels, tuple(taints)))
    return out
