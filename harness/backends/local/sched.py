"""Reading the rendered manifests the way Kubernetes would, for the local backend.

The local backend runs *exactly* the objects kind would get, so this module
parses Namespaces, ServiceAccounts, Services, ConfigMaps and Deployments into
small typed specs, and places pods on nodes by nodeSelector, required node
affinity and tolerations vs taints, then by topology spreading and preferred
pod anti-affinity scored as kube-scheduler scores them. Anything it does
not understand is an error naming the object and the field: silently ignoring
a field would make the local run test something other than what was rendered.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.contract import names
from harness.contract.scheduling import OPERATORS, Placement, Requirement, Taint, registration_taints
from harness.errors import InputError

ZONE_LABEL = names.LABEL_ZONE
REGION_LABEL = names.LABEL_REGION
ZONE_TYPE_LABEL = names.LABEL_ZONE_TYPE
HOSTNAME_LABEL = names.LABEL_HOSTNAME  # kubelet sets it on every node
CONSUL_KINDS = set(names.CONFIG_ENTRY_KINDS)
INJECT = names.ANN_INJECT
SERVICE_PORT = names.ANN_SERVICE_PORT
CONNECT_SERVICE = names.ANN_SERVICE
UPSTREAMS = names.ANN_UPSTREAMS
MAX_NODE_SCORE = 100  # framework.MaxNodeScore: what each score plugin normalises to
PLUGIN_WEIGHT = 2  # PodTopologySpread's and InterPodAffinity's weight in kube-scheduler's default profile


@dataclass(frozen=True)
class Node:
    name: str
    zone: str
    labels: dict[str, str]
    taints: tuple[Taint, ...] = ()


@dataclass(frozen=True)
class Probe:
    kind: str  # http | tcp
    port: int
    path: str = "/"
    period_s: float = 1.0
    initial_delay_s: float = 0.0
    timeout_s: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    ports: tuple[int, ...]
    named_ports: dict[str, int]
    env: dict[str, str]
    mounts: dict[str, str]  # mountPath -> volume name
    readiness: Probe | None
    liveness: Probe | None
    # kubelet: liveness and readiness do not run until the startup probe succeeded once;
    # `failureThreshold` startup failures restart the container.
    startup: Probe | None = None
    # command + args, as the container runtime joins them; only for stand-ins that implement
    # the command (harness.backends.local.apps.COMMAND_APPS), handed over in EH_COMMAND.
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpreadConstraint:
    """One `topologySpreadConstraints` entry, as kube-scheduler's PodTopologySpread reads it.

    Pods counted: those of the pod's namespace matching `match_labels`. Domains:
    the values of `topology_key` on the nodes that pass the pod's nodeSelector
    and node affinity (nodeAffinityPolicy Honor), taints ignored
    (nodeTaintsPolicy Ignore) -- the defaults of both policies.
    """

    max_skew: int
    topology_key: str
    when_unsatisfiable: str  # DoNotSchedule | ScheduleAnyway
    match_labels: tuple[tuple[str, str], ...]

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels)


LABEL_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")  # metav1.LabelSelectorRequirement's


@dataclass(frozen=True)
class PodTerm:
    """One `podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution` entry (a WeightedPodAffinityTerm).

    Which pods it selects, as kube-scheduler reads a PodAffinityTerm (framework.AffinityTerm.Matches): the label
    selector (matchLabels and matchExpressions, ANDed) over pods of `namespaces`, or of every namespace with
    `namespaceSelector: {}`, or, with neither, of the namespace of the pod that carries the term.
    """

    weight: int
    topology_key: str
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False

    def selects(self, owner_namespace: str, namespace: str, labels: dict[str, str]) -> bool:
        """Does the term of a pod in `owner_namespace` select a pod in `namespace` with `labels`?"""
        if not self.all_namespaces and namespace not in (self.namespaces or (owner_namespace,)):
            return False
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )


@dataclass(frozen=True)
class Placed:
    """A pod that exists (or is being created) on a node, as the scheduler counts it: with its own preferred
    anti-affinity terms, which InterPodAffinity also scores against the pod being placed."""

    node: str
    namespace: str
    labels: dict[str, str]
    anti_affinity: tuple[PodTerm, ...] = ()


@dataclass(frozen=True)
class DeploymentSpec:
    namespace: str
    name: str
    replicas: int
    labels: dict[str, str]
    annotations: dict[str, str]
    service_account: str | None
    containers: tuple[Container, ...]
    volumes: dict[str, str]  # volume name -> ConfigMap name
    placement: Placement  # nodeSelector, required node affinity, tolerations (the contract's predicate)
    grace_s: float
    where: str  # "Deployment ns/name" for messages
    spread: tuple[SpreadConstraint, ...] = ()
    anti_affinity: tuple[PodTerm, ...] = ()  # podAntiAffinity's preferred terms

    def placed_on(self, node: str) -> Placed:
        """A pod of this Deployment on `node`, as the scheduler counts it for the next pods."""
        return Placed(node, self.namespace, self.labels, self.anti_affinity)

    @property
    def meshed(self) -> bool:
        return self.annotations.get(INJECT) == "true"

    @property
    def consul_service(self) -> str:
        return self.annotations.get(CONNECT_SERVICE) or self.labels.get("app", self.name)

    @property
    def app(self) -> str:
        return self.labels.get("app", self.name)

    def port(self, ref: int | str) -> int | None:
        """A container port by number or by name, as a Service targetPort refers to it."""
        if isinstance(ref, int) or str(ref).isdigit():
            return int(ref)
        for c in self.containers:
            if ref in c.named_ports:
                return c.named_ports[str(ref)]
        return None

    def fits(self, node: Node) -> bool:
        """Would kube-scheduler place this pod on `node` (ignoring resources)?"""
        return self.placement.fits(node)

    def matches_affinity(self, node: Node) -> bool:
        """nodeSelector and required node affinity only (what spreading counts domains over)."""
        return self.placement.matches_affinity(node)


@dataclass(frozen=True)
class ServiceSpec:
    namespace: str
    name: str
    selector: dict[str, str]
    ports: tuple[tuple[int, int | str], ...]  # (port, targetPort by number or name)


@dataclass
class ClusterSpec:
    nodes: list[Node]
    deployments: list[DeploymentSpec]
    services: list[ServiceSpec]
    config_maps: dict[tuple[str, str], dict[str, str]]
    namespaces: list[str]
    consul_objects: list[dict[str, Any]] = field(default_factory=list)

    def place(
        self, dep: DeploymentSpec, down: set[str] | None = None, placed: list[Placed] | None = None
    ) -> Node | None:
        """The node a new pod of `dep` goes to, None if none fits (the pod stays Pending).

        As kube-scheduler: filter (fits, node up, DoNotSchedule spread
        constraints), then score what its default profile would for what the
        rendered manifests use, each plugin normalised to 0-100 over the
        fitting nodes and weighted 2 (PodTopologySpread: the ScheduleAnyway
        constraints, `_spread_scores`; InterPodAffinity: preferred pod
        anti-affinity, `_pod_affinity_scores`), highest sum first; then the
        least loaded node (the stand-in for the resource scores and the
        default spreading), then the name (kube-scheduler breaks ties at
        random, pkg/scheduler/schedule_one.go selectHost; here it is
        deterministic). `placed` must include pods still being created, or
        replicas created together all see empty nodes and pile onto one.
        """
        down = down or set()
        placed = placed or []
        fitting = [n for n in self.nodes if n.name not in down and dep.fits(n)]
        load: dict[str, int] = {}
        for p in placed:
            load[p.node] = load.get(p.node, 0) + 1
        labels_of = {n.name: n.labels for n in self.nodes}
        for c in dep.spread:
            if c.when_unsatisfiable != "DoNotSchedule":
                continue
            counts, floor = self._domain_counts(dep, c, placed, labels_of)
            fitting = [
                n
                for n in fitting
                # a node without the key is not a candidate for a hard constraint
                if c.topology_key in n.labels and counts[n.labels[c.topology_key]] + 1 - floor <= c.max_skew
            ]
        if not fitting:
            return None
        spread = self._spread_scores(dep, fitting, placed, labels_of)
        pods = self._pod_affinity_scores(dep, fitting, placed, labels_of)
        total = {n.name: PLUGIN_WEIGHT * (spread[n.name] + pods[n.name]) for n in fitting}
        return min(fitting, key=lambda n: (-total[n.name], load.get(n.name, 0), n.name))

    def _domain_counts(
        self, dep: DeploymentSpec, c: SpreadConstraint, placed: list[Placed], labels_of: dict[str, dict[str, str]]
    ) -> tuple[dict[str, int], int]:
        """The constraint's domains (values of its key on nodes passing the pod's node affinity, taints ignored)
        -> the matching pods of the pod's namespace in each; and the smallest count."""
        domains = {
            n.labels[c.topology_key] for n in self.nodes if c.topology_key in n.labels and dep.matches_affinity(n)
        }
        counts = dict.fromkeys(domains, 0)
        for p in placed:
            value = labels_of.get(p.node, {}).get(c.topology_key)
            if value in counts and p.namespace == dep.namespace and c.matches(p.labels):
                counts[value] += 1
        return counts, min(counts.values(), default=0)

    def _spread_scores(
        self, dep: DeploymentSpec, fitting: list[Node], placed: list[Placed], labels_of: dict[str, dict[str, str]]
    ) -> dict[str, int]:
        """PodTopologySpread's normalised score (pkg/scheduler/framework/plugins/podtopologyspread/scoring.go).

        Only ScheduleAnyway constraints score. A node's raw score: per constraint, the matching pods in its
        domain times log(domains + 2) (for the hostname key, domains = the fitting nodes), plus maxSkew - 1,
        summed and rounded. A node lacking a key scores 0; the rest MaxNodeScore * (max + min - s) / max
        (integers), or MaxNodeScore each when max is 0. Without soft constraints every node scores 0 here.
        """
        soft = [c for c in dep.spread if c.when_unsatisfiable == "ScheduleAnyway"]
        if not soft:
            return {n.name: 0 for n in fitting}
        scored = [n for n in fitting if all(c.topology_key in n.labels for c in soft)]
        raw: dict[str, int] = {}
        for n in scored:
            score = 0.0
            for c in soft:
                if c.topology_key == HOSTNAME_LABEL:
                    size = len(scored)
                else:
                    size = len({m.labels[c.topology_key] for m in scored})
                counts, _floor = self._domain_counts(dep, c, placed, labels_of)
                score += counts.get(n.labels[c.topology_key], 0) * math.log(size + 2) + (c.max_skew - 1)
            raw[n.name] = round(score)
        out = {n.name: 0 for n in fitting}
        if raw:
            high, low = max(raw.values()), min(raw.values())
            for name, s in raw.items():
                out[name] = MAX_NODE_SCORE if high == 0 else MAX_NODE_SCORE * (high + low - s) // high
        return out

    def _pod_affinity_scores(
        self, dep: DeploymentSpec, fitting: list[Node], placed: list[Placed], labels_of: dict[str, dict[str, str]]
    ) -> dict[str, int]:
        """InterPodAffinity's normalised score for preferred pod anti-affinity
        (pkg/scheduler/framework/plugins/interpodaffinity/scoring.go).

        Existing pods only (`placed`, on any node): each term of the incoming pod that selects an existing pod,
        and each term of an existing pod that selects the incoming one, takes its weight off every node sharing
        the existing pod's node's value of the term's key. A node's raw score is the sum over the keys; the
        fitting nodes' scores are then mapped to 0-100 by (s - min) / (max - min), truncated, and all score 0
        when nothing counted or max == min: a term no node can escape changes nothing (one node in the zone).
        """
        topo: dict[str, dict[str, int]] = {}
        for p in placed:
            node_labels = labels_of.get(p.node, {})
            terms = [(t, dep.namespace, p.namespace, p.labels) for t in dep.anti_affinity]
            terms += [(t, p.namespace, dep.namespace, dep.labels) for t in p.anti_affinity]
            for term, owner_ns, ns, labels in terms:
                value = node_labels.get(term.topology_key)
                if value is not None and term.selects(owner_ns, ns, labels):
                    by_value = topo.setdefault(term.topology_key, {})
                    by_value[value] = by_value.get(value, 0) - term.weight
        out = {n.name: 0 for n in fitting}
        if not topo:
            return out
        raw = {
            n.name: sum(by_value.get(n.labels[key], 0) for key, by_value in topo.items() if key in n.labels)
            for n in fitting
        }
        high, low = max(raw.values()), min(raw.values())
        if high > low:
            out = {name: int(MAX_NODE_SCORE * (s - low) / (high - low)) for name, s in raw.items()}
        return out


class _Fields:
    """Walks an object, popping known fields; what is left at the end is unsupported."""

    def __init__(self, where: str, source: str) -> None:
        self.where = where
        self.source = source

    def fail(self, path: str, message: str) -> InputError:
        return InputError(self.source, f"{self.where}: {path}", message)

    def check_only(self, obj: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise self.fail(path, f"expected a mapping, got {type(obj).__name__}")
        for key in obj:
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else key, "not supported by the local backend")
        return obj


def nodes_from_kind_config(cfg: dict[str, Any], source: str, short: Callable[[str], str]) -> list[Node]:
    """Nodes as kind would create them: one per worker, labels and JoinConfiguration taints."""
    f = _Fields("kind Cluster", source)
    workers = [n for n in cfg.get("nodes", []) if isinstance(n, dict) and n.get("role") == "worker"]
    if not workers:
        raise f.fail("nodes", "no worker nodes")
    counters: dict[str, itertools.count[int]] = {}
    nodes: list[Node] = []
    for i, n in enumerate(workers):
        labels = {str(k): str(v) for k, v in (n.get("labels") or {}).items()}
        zone = labels.get(ZONE_LABEL)
        if not zone:
            raise f.fail(f"nodes[{i}].labels", f"worker without {ZONE_LABEL}")
        taints = registration_taints(n)
        c = counters.setdefault(zone, itertools.count(1))
        name = f"{short(zone)}-n{next(c)}"
        labels.setdefault(HOSTNAME_LABEL, name)
        nodes.append(Node(name, zone, labels, tuple(taints)))
    return nodes


_REQUIRED = "spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
_POD_SPEC_FIELDS = {
    "containers",
    "volumes",
    "serviceAccountName",
    "affinity",
    "nodeSelector",
    "tolerations",
    "terminationGracePeriodSeconds",
    "topologySpreadConstraints",
}
_CONTAINER_FIELDS = {
    "name",
    "image",
    "ports",
    "env",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "resources",
    "volumeMounts",
    "imagePullPolicy",
    "command",
    "args",
}


def _probe(f: _Fields, p: Any, path: str, ports: dict[str, int]) -> Probe | None:
    if p is None:
        return None
    p = f.check_only(
        p,
        path,
        {
            "httpGet",
            "tcpSocket",
            "periodSeconds",
            "initialDelaySeconds",
            "timeoutSeconds",
            "failureThreshold",
            "successThreshold",
        },
    )
    if path.endswith(("livenessProbe", "startupProbe")) and int(p.get("successThreshold", 1)) != 1:
        # the API server rejects it: "must be 1" for liveness and startup probes
        raise f.fail(f"{path}.successThreshold", "must be 1")
    common = dict(
        period_s=float(p.get("periodSeconds", 10)),
        initial_delay_s=float(p.get("initialDelaySeconds", 0)),
        timeout_s=float(p.get("timeoutSeconds", 1)),
        failure_threshold=int(p.get("failureThreshold", 3)),
        success_threshold=int(p.get("successThreshold", 1)),
    )

    def port_of(v: Any, where: str) -> int:
        if isinstance(v, int):
            return v
        if isinstance(v, str) and v in ports:
            return ports[v]
        raise f.fail(where, f"unknown port {v!r}")

    if "httpGet" in p:
        h = f.check_only(p["httpGet"], f"{path}.httpGet", {"path", "port", "scheme"})
        if h.get("scheme", "HTTP") != "HTTP":
            raise f.fail(f"{path}.httpGet.scheme", "only HTTP is supported by the local backend")
        return Probe("http", port_of(h.get("port"), f"{path}.httpGet.port"), str(h.get("path", "/")), **common)  # type: ignore[arg-type]
    if "tcpSocket" in p:
        t = f.check_only(p["tcpSocket"], f"{path}.tcpSocket", {"port"})
        return Probe("tcp", port_of(t.get("port"), f"{path}.tcpSocket.port"), **common)  # type: ignore[arg-type]
    raise f.fail(path, "needs httpGet or tcpSocket (others are not supported by the local backend)")


_SPREAD = "spec.template.spec.topologySpreadConstraints"


def _spread(f: _Fields, raw: Any) -> tuple[SpreadConstraint, ...]:
    """Parse topologySpreadConstraints: maxSkew, topologyKey, whenUnsatisfiable, labelSelector.matchLabels.

    minDomains, matchLabelKeys, nodeAffinityPolicy, nodeTaintsPolicy and
    matchExpressions change which pods or domains count; the local scheduler
    does not implement them, so they are refused rather than ignored.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise f.fail(_SPREAD, "expected a list")
    out: list[SpreadConstraint] = []
    for i, c in enumerate(raw):
        path = f"{_SPREAD}[{i}]"
        c = f.check_only(c, path, {"maxSkew", "topologyKey", "whenUnsatisfiable", "labelSelector"})
        skew = c.get("maxSkew")
        if not isinstance(skew, int) or isinstance(skew, bool) or skew < 1:
            raise f.fail(f"{path}.maxSkew", f"must be an integer >= 1, got {skew!r}")
        key = c.get("topologyKey")
        if not isinstance(key, str) or not key:
            raise f.fail(f"{path}.topologyKey", "required")
        when = c.get("whenUnsatisfiable")
        if when not in ("DoNotSchedule", "ScheduleAnyway"):
            raise f.fail(f"{path}.whenUnsatisfiable", f"must be DoNotSchedule or ScheduleAnyway, got {when!r}")
        sel = f.check_only(c.get("labelSelector"), f"{path}.labelSelector", {"matchLabels"})
        match = {str(k): str(v) for k, v in (sel.get("matchLabels") or {}).items()}
        if not match:
            # an empty selector matches no pod: the constraint would spread nothing
            raise f.fail(f"{path}.labelSelector.matchLabels", "required (the pods to spread)")
        out.append(SpreadConstraint(skew, key, when, tuple(sorted(match.items()))))
    return tuple(out)


_ANTI = "spec.template.spec.affinity.podAntiAffinity"


def _anti_affinity(f: _Fields, raw: Any) -> tuple[PodTerm, ...]:
    """Parse podAntiAffinity: its preferred terms, as the renderer writes them (render.hashicups).

    Required terms (a filter), and a namespaceSelector other than {} (it needs the namespaces' labels) are
    not implemented by the local scheduler, so they are refused rather than ignored.
    """
    anti = f.check_only(raw, _ANTI, {"preferredDuringSchedulingIgnoredDuringExecution"})
    preferred = anti.get("preferredDuringSchedulingIgnoredDuringExecution")
    if preferred is None:
        return ()
    base = f"{_ANTI}.preferredDuringSchedulingIgnoredDuringExecution"
    if not isinstance(preferred, list):
        raise f.fail(base, "expected a list")
    out: list[PodTerm] = []
    for i, item in enumerate(preferred):
        path = f"{base}[{i}]"
        item = f.check_only(item, path, {"weight", "podAffinityTerm"})
        weight = item.get("weight")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 1 <= weight <= 100:
            raise f.fail(f"{path}.weight", f"must be an integer in 1-100, got {weight!r}")
        tp = f"{path}.podAffinityTerm"
        term = f.check_only(
            item.get("podAffinityTerm"), tp, {"labelSelector", "namespaceSelector", "namespaces", "topologyKey"}
        )
        key = term.get("topologyKey")
        if not isinstance(key, str) or not key:
            raise f.fail(f"{tp}.topologyKey", "required")
        sel = f.check_only(term.get("labelSelector"), f"{tp}.labelSelector", {"matchLabels", "matchExpressions"})
        match = {str(k): str(v) for k, v in (sel.get("matchLabels") or {}).items()}
        expressions: list[Requirement] = []
        for m, e in enumerate(sel.get("matchExpressions") or []):
            ep = f"{tp}.labelSelector.matchExpressions[{m}]"
            e = f.check_only(e, ep, {"key", "operator", "values"})
            if e.get("operator") not in LABEL_SELECTOR_OPERATORS:
                raise f.fail(f"{ep}.operator", f"{e.get('operator')!r} is not a label selector operator")
            expressions.append(Requirement.from_dict(e))
        if not match and not expressions:
            # a null selector matches no pod: the term would steer nothing
            raise f.fail(f"{tp}.labelSelector", "required (the pods to keep away from)")
        ns_selector = term.get("namespaceSelector")
        if ns_selector is not None and ns_selector != {}:
            raise f.fail(f"{tp}.namespaceSelector", "only {} (every namespace) is supported by the local backend")
        namespaces = term.get("namespaces") or []
        if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
            raise f.fail(f"{tp}.namespaces", "expected a list of strings")
        out.append(
            PodTerm(
                weight=weight,
                topology_key=key,
                match_labels=tuple(sorted(match.items())),
                match_expressions=tuple(expressions),
                namespaces=tuple(namespaces),
                all_namespaces=ns_selector == {},
            )
        )
    return tuple(out)


def _command(f: _Fields, c: dict[str, Any], cp: str) -> tuple[str, ...]:
    """A container's command + args, refused where the image's stand-in would not run it.

    A stand-in is a program of its own, not the image: it can honour a
    command only when it implements that command's contract (e.g. postgres'
    streaming standby, harness/render/database.py). Anything else would run
    the image's default behaviour under a manifest that asked for another.
    """
    from harness.backends.local.apps import accepts_command

    parts: list[str] = []
    for key in ("command", "args"):
        v = c.get(key)
        if v is None:
            continue
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise f.fail(f"{cp}.{key}", "expected a list of strings")
        parts += v
    if parts and not accepts_command(str(c["image"])):
        raise f.fail(
            f"{cp}.command" if "command" in c else f"{cp}.args",
            f"not supported by the local backend for image {c['image']!r} (its stand-in runs no other command)",
        )
    return tuple(parts)


def parse_deployment(obj: dict[str, Any], source: str) -> DeploymentSpec:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace", "default")
    where = f"Deployment {ns}/{meta.get('name')}"
    f = _Fields(where, source)
    spec = f.check_only(
        obj.get("spec"), "spec", {"replicas", "selector", "template", "strategy", "revisionHistoryLimit"}
    )
    tmpl = f.check_only(spec.get("template"), "spec.template", {"metadata", "spec"})
    tmeta = f.check_only(tmpl.get("metadata"), "spec.template.metadata", {"labels", "annotations"})
    pspec = f.check_only(tmpl.get("spec"), "spec.template.spec", _POD_SPEC_FIELDS)
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = {str(k): str(v) for k, v in (tmeta.get("labels") or {}).items()}
    for k, v in sel.items():
        if labels.get(k) != v:
            raise f.fail("spec.selector.matchLabels", f"{k}={v} does not match the pod template labels")
    containers: list[Container] = []
    for i, c in enumerate(pspec.get("containers") or []):
        cp = f"spec.template.spec.containers[{i}]"
        c = f.check_only(c, cp, _CONTAINER_FIELDS)
        if not c.get("image"):
            raise f.fail(f"{cp}.image", "required")
        named: dict[str, int] = {}
        ports: list[int] = []
        for j, p in enumerate(c.get("ports") or []):
            p = f.check_only(p, f"{cp}.ports[{j}]", {"containerPort", "name", "protocol"})
            if p.get("protocol", "TCP") != "TCP":
                raise f.fail(f"{cp}.ports[{j}].protocol", "only TCP is supported by the local backend")
            ports.append(int(p["containerPort"]))
            if "name" in p:
                named[str(p["name"])] = int(p["containerPort"])
        env: dict[str, str] = {}
        for j, e in enumerate(c.get("env") or []):
            e = f.check_only(e, f"{cp}.env[{j}]", {"name", "value"})
            env[str(e["name"])] = str(e.get("value", ""))
        mounts: dict[str, str] = {}
        for j, m in enumerate(c.get("volumeMounts") or []):
            m = f.check_only(m, f"{cp}.volumeMounts[{j}]", {"name", "mountPath", "readOnly"})
            mounts[str(m["mountPath"])] = str(m["name"])
        command = _command(f, c, cp)
        containers.append(
            Container(
                name=str(c.get("name")),
                image=str(c["image"]),
                ports=tuple(ports),
                named_ports=named,
                env=env,
                mounts=mounts,
                readiness=_probe(f, c.get("readinessProbe"), f"{cp}.readinessProbe", named),
                liveness=_probe(f, c.get("livenessProbe"), f"{cp}.livenessProbe", named),
                startup=_probe(f, c.get("startupProbe"), f"{cp}.startupProbe", named),
                command=command,
            )
        )
    if not containers:
        raise f.fail("spec.template.spec.containers", "at least one container is required")
    volumes: dict[str, str] = {}
    for j, v in enumerate(pspec.get("volumes") or []):
        v = f.check_only(v, f"spec.template.spec.volumes[{j}]", {"name", "configMap"})
        cm = f.check_only(
            v.get("configMap"), f"spec.template.spec.volumes[{j}].configMap", {"name", "items", "defaultMode"}
        )
        if not cm:
            raise f.fail(
                f"spec.template.spec.volumes[{j}]", "only configMap volumes are supported by the local backend"
            )
        if cm.get("items"):
            raise f.fail(f"spec.template.spec.volumes[{j}].configMap.items", "not supported by the local backend")
        volumes[str(v["name"])] = str(cm["name"])
    for c in containers:
        for mp, vol in c.mounts.items():
            if vol not in volumes:
                raise f.fail("spec.template.spec", f"container {c.name!r} mounts unknown volume {vol!r} at {mp}")
    affinity = f.check_only(pspec.get("affinity"), "spec.template.spec.affinity", {"nodeAffinity", "podAntiAffinity"})
    na = f.check_only(
        affinity.get("nodeAffinity"),
        "spec.template.spec.affinity.nodeAffinity",
        {"requiredDuringSchedulingIgnoredDuringExecution"},
    )
    required_raw = na.get("requiredDuringSchedulingIgnoredDuringExecution")
    req = f.check_only(required_raw, _REQUIRED, {"nodeSelectorTerms"})
    for k, term in enumerate(req.get("nodeSelectorTerms") or []):
        tp = f"{_REQUIRED}.nodeSelectorTerms[{k}]"
        term = f.check_only(term, tp, {"matchExpressions", "matchFields"})
        for group, ops in (("matchExpressions", OPERATORS), ("matchFields", ("In", "NotIn"))):
            for m, e in enumerate(term.get(group) or []):
                e = f.check_only(e, f"{tp}.{group}[{m}]", {"key", "operator", "values"})
                if e.get("operator") not in ops:
                    raise f.fail(f"{tp}.{group}[{m}].operator", f"{e.get('operator')!r} is not supported")
                if group == "matchFields" and e.get("key") != "metadata.name":
                    raise f.fail(f"{tp}.{group}[{m}].key", f"{e.get('key')!r}: only metadata.name is a node field")
    spread = _spread(f, pspec.get("topologySpreadConstraints"))
    anti_affinity = _anti_affinity(f, affinity.get("podAntiAffinity"))
    for j, t in enumerate(pspec.get("tolerations") or []):
        f.check_only(t, f"spec.template.spec.tolerations[{j}]", {"key", "operator", "value", "effect"})
    annotations = {str(k): str(v) for k, v in (tmeta.get("annotations") or {}).items()}
    # what every rendered meshed pod pins (names.PINNED_MESH_ANNOTATIONS) is all the local sidecars do: explicit
    # upstreams (transparent proxy "true" would send all of the pod's traffic through Envoy), Envoy as a regular
    # container, its access logs flushed at least as often as the verdict reads them; another value is refused
    for key, pinned in names.PINNED_MESH_ANNOTATIONS.items():
        value = annotations.get(key)
        if value is not None and value != pinned:
            raise f.fail(
                f"spec.template.metadata.annotations.{key}",
                f"{value!r} not supported by the local backend (only {pinned!r})",
            )
    return DeploymentSpec(
        namespace=ns,
        name=str(meta.get("name")),
        replicas=int(spec.get("replicas", 1)),
        labels=labels,
        annotations=annotations,
        service_account=pspec.get("serviceAccountName"),
        containers=tuple(containers),
        volumes=volumes,
        placement=Placement.from_pod_spec(pspec),
        grace_s=float(pspec.get("terminationGracePeriodSeconds", 30)),
        where=where,
        spread=spread,
        anti_affinity=anti_affinity,
    )


def parse_service(obj: dict[str, Any], source: str) -> ServiceSpec:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace", "default")
    f = _Fields(f"Service {ns}/{meta.get('name')}", source)
    spec = f.check_only(obj.get("spec"), "spec", {"selector", "ports", "type"})
    if spec.get("type", "ClusterIP") != "ClusterIP":
        raise f.fail("spec.type", f"{spec.get('type')!r} is not supported by the local backend (ClusterIP only)")
    ports = []
    for i, p in enumerate(spec.get("ports") or []):
        p = f.check_only(p, f"spec.ports[{i}]", {"port", "targetPort", "name", "protocol"})
        tp = p.get("targetPort", p["port"])
        ports.append((int(p["port"]), int(tp) if isinstance(tp, int) or str(tp).isdigit() else str(tp)))
    return ServiceSpec(
        ns, str(meta.get("name")), {str(k): str(v) for k, v in (spec.get("selector") or {}).items()}, tuple(ports)
    )


def cluster_spec(
    kind_config: dict[str, Any], objects: list[dict[str, Any]], source: str, short: Callable[[str], str]
) -> ClusterSpec:
    """Everything the local backend will run, checked; raises InputError on the first problem."""
    nodes = nodes_from_kind_config(kind_config, f"{source}/kind-config.yaml", short)
    spec = ClusterSpec(nodes=nodes, deployments=[], services=[], config_maps={}, namespaces=[])
    for obj in objects:
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        src = str(obj.get("__source__", source))
        if kind == "Namespace":
            spec.namespaces.append(str(meta.get("name")))
        elif kind == "ServiceAccount":
            continue  # identity comes from the Consul service name, as with ACLs off
        elif kind == "ConfigMap":
            data = obj.get("data") or {}
            spec.config_maps[(meta.get("namespace", "default"), str(meta.get("name")))] = {
                str(k): str(v) for k, v in data.items()
            }
        elif kind == "Service":
            spec.services.append(parse_service(obj, src))
        elif kind == "Deployment":
            spec.deployments.append(parse_deployment(obj, src))
        elif kind in CONSUL_KINDS and str(obj.get("apiVersion", "")).startswith("consul.hashicorp.com/"):
            spec.consul_objects.append(obj)
        else:
            raise InputError(
                src, f"{kind} {meta.get('namespace', '')}/{meta.get('name')}", "kind not supported by the local backend"
            )
    for dep in spec.deployments:
        for c in dep.containers:
            for vol in c.mounts.values():
                if (dep.namespace, dep.volumes[vol]) not in spec.config_maps:
                    raise InputError(
                        source, dep.where, f"ConfigMap {dep.volumes[vol]!r} not found in namespace {dep.namespace}"
                    )
        if not any(dep.fits(n) for n in nodes):
            raise InputError(source, dep.where, "fits no node (nodeSelector / node affinity / tolerations vs taints)")
    return spec
