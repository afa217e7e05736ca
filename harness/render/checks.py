"""Contract checks on rendered manifests, derived from the objects themselves.

These re-derive the mesh (who calls whom, where each copy runs, where
failover goes) from the manifests rather than from the renderer's naming
rules, so they catch a renderer bug and a hand-edited directory alike. Each
check returns a list of problems (empty = fine), one readable line each.
They work on a freshly rendered `Rendered` and on a loaded `Manifests`.

The scheduling predicate (nodeSelector, required node affinity, taints vs
tolerations) is `harness.contract.scheduling`, the one the local backend's
scheduler uses too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from harness.contract import names, upstreams
from harness.contract.scheduling import Placement, SchedNode, kind_nodes
from harness.render import naming
from harness.topology.model import Edition, Topology

CE_NAMESPACE = "default"  # CE has one Consul namespace


class Bundle(Protocol):
    """What the checks read: a `Rendered` or a loaded `Manifests`."""

    @property
    def topology(self) -> Topology: ...
    @property
    def kind_config(self) -> dict[str, Any]: ...
    @property
    def helm_values(self) -> dict[str, Any]: ...
    @property
    def objects(self) -> list[dict[str, Any]]: ...


# -- scheduling --------------------------------------------------------------
# The predicate and the kind node list are the contract layer's (harness.contract.scheduling),
# shared with the local backend's scheduler.


# -- the mesh, as the manifests describe it ------------------------------------
Key = tuple[str, str]  # (Consul namespace, Consul service name)


@dataclass
class MeshWorkload:
    """A meshed Deployment as the manifests describe it."""

    name: str
    namespace: str
    consul: Key
    app: str  # logical service (pod label `app`)
    zone: str
    upstreams: list[Key]
    pod_spec: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def consul_ns(edition: Edition, k8s_ns: str | None) -> str:
    """Consul namespace a k8s namespace maps to (Enterprise mirrors; CE has one)."""
    return (k8s_ns or "default") if edition is Edition.ENTERPRISE else CE_NAMESPACE


def _parse_upstreams(value: str, own_ns: str, edition: Edition) -> tuple[list[Key], list[str]]:
    """The annotation's upstreams as (Consul namespace, name) keys; namespaced ones only in Enterprise."""
    ups, problems = upstreams.parse(value)
    keys: list[Key] = []
    for u in ups:
        if u.namespace is None:
            keys.append((own_ns, u.name))
        elif edition is Edition.ENTERPRISE:
            keys.append((u.namespace, u.name))
        else:
            ref = f"{u.name}.{u.namespace}:{u.local_port}"
            problems.append(f"upstream {ref!r}: namespaced upstreams are Enterprise-only")
    return keys, problems


def mesh_workloads(b: Bundle) -> list[MeshWorkload]:
    edition = b.topology.edition
    out = []
    for d in b.objects:
        if d.get("kind") != "Deployment":
            continue
        tmpl = (d.get("spec") or {}).get("template") or {}
        meta = tmpl.get("metadata") or {}
        ann = meta.get("annotations") or {}
        if ann.get(names.ANN_INJECT) != "true":
            continue
        ns = consul_ns(edition, d["metadata"].get("namespace"))
        ups, problems = _parse_upstreams(ann.get(names.ANN_UPSTREAMS, ""), ns, edition)
        out.append(
            MeshWorkload(
                name=d["metadata"]["name"],
                namespace=d["metadata"].get("namespace", "default"),
                consul=(ns, ann.get(names.ANN_SERVICE, d["metadata"]["name"])),
                app=(meta.get("labels") or {}).get(names.LABEL_APP, ""),
                zone=(meta.get("labels") or {}).get(names.LABEL_POD_ZONE, ""),
                upstreams=ups,
                pod_spec=tmpl.get("spec") or {},
                problems=problems,
            )
        )
    return out


def _entries(b: Bundle, kind: str) -> dict[Key, dict[str, Any]]:
    edition = b.topology.edition
    out = {}
    for o in b.objects:
        if o.get("kind") == kind:
            ns = o["metadata"].get("namespace")
            name = o["metadata"]["name"]
            if kind == "ServiceIntentions":  # keyed by destination, not by object name
                dest = (o.get("spec") or {}).get("destination") or {}
                ns, name = dest.get("namespace") or ns, dest.get("name", "")
            out[(consul_ns(edition, ns), name)] = o
    return out


@dataclass
class Chain:
    """Where a caller's upstream reference ends up: the primary, then failover targets."""

    via: list[Key]  # names passed through (the reference, redirects)
    targets: list[Key]  # primary first


def resolve(b: Bundle, ref: Key) -> Chain:
    resolvers = _entries(b, "ServiceResolver")
    via: list[Key] = []
    key = ref
    while key not in via:
        via.append(key)
        spec = (resolvers.get(key) or {}).get("spec") or {}
        redirect = spec.get("redirect")
        if redirect:
            key = (redirect.get("namespace") or key[0], redirect.get("service") or key[1])
            continue
        targets = [key]
        failover = (spec.get("failover") or {}).get("*") or {}
        for t in failover.get("targets") or ([failover] if failover.get("service") else []):
            tk = (t.get("namespace") or key[0], t.get("service") or key[1])
            if tk not in targets:
                targets.append(tk)
        return Chain(via, targets)
    return Chain(via, [])  # redirect loop: nothing reachable


def _zone_types(t: Topology) -> dict[str, bool]:
    return {z.name: z.is_edge for z in t.zones}


def _service_zones(wls: Iterable[MeshWorkload]) -> dict[Key, set[str]]:
    out: dict[Key, set[str]] = {}
    for w in wls:
        out.setdefault(w.consul, set()).add(w.zone)
    return out


# -- checks ---------------------------------------------------------------------
def check_scheduling(b: Bundle, nodes: Sequence[SchedNode] | None = None) -> list[str]:
    """Every Deployment fits a node, and only nodes of its own zone."""
    nodes = kind_nodes(b.kind_config) if nodes is None else nodes
    problems = []
    for d in (o for o in b.objects if o.get("kind") == "Deployment"):
        tmpl = d["spec"]["template"]
        zone = (tmpl["metadata"].get("labels") or {}).get(names.LABEL_POD_ZONE)
        placement = Placement.from_pod_spec(tmpl["spec"])
        fits = [n for n in nodes if placement.fits(n)]
        where = f"Deployment {d['metadata'].get('namespace')}/{d['metadata']['name']}"
        if not fits:
            problems.append(f"{where}: fits no node")
        for n in fits:
            if n.labels.get(names.LABEL_ZONE) != zone:
                problems.append(f"{where} (zone {zone}) can be placed on {n.name} in {n.labels.get(names.LABEL_ZONE)}")
    return problems


def check_upstreams(b: Bundle) -> list[str]:
    """Every upstream resolves to rendered Services with pods, and to ServiceDefaults."""
    wls = mesh_workloads(b)
    edition = b.topology.edition
    defaults = _entries(b, "ServiceDefaults")
    services = {
        (consul_ns(edition, o["metadata"].get("namespace")), o["metadata"]["name"])
        for o in b.objects
        if o.get("kind") == "Service"
    }
    with_pods = set(_service_zones(wls))
    problems = [f"{w.namespace}/{w.name}: {p}" for w in wls for p in w.problems]
    for w in wls:
        for ref in w.upstreams:
            chain = resolve(b, ref)
            if not chain.targets:
                problems.append(f"{w.namespace}/{w.name}: upstream {ref} has a redirect loop")
            for key in [*chain.via, *chain.targets]:
                if key not in defaults:
                    problems.append(f"{w.namespace}/{w.name}: upstream {ref}: no ServiceDefaults for {key}")
            for key in chain.targets:
                if key not in services or key not in with_pods:
                    problems.append(f"{w.namespace}/{w.name}: upstream {ref}: no Service with pods for {key}")
    return problems


def check_locality(b: Bundle) -> list[str]:
    """Callers name an in-zone primary; failover and redirects only lead to the Region.

    An edge copy of a service that also runs in the Region must fail over to
    it; nothing may ever fail over or redirect to an edge zone (hub and spoke).
    """
    wls = mesh_workloads(b)
    is_edge = _zone_types(b.topology)
    zones = _service_zones(wls)
    app_of = {w.consul: w.app for w in wls}
    problems = []
    for w in wls:
        for ref in w.upstreams:
            chain = resolve(b, ref)
            if not chain.targets:
                continue
            primary = chain.targets[0]
            primary_zones = zones.get(primary, set())
            where = f"{w.namespace}/{w.name} ({w.zone}): upstream {ref}"
            if primary_zones != {w.zone} and any(is_edge.get(z, True) for z in primary_zones):
                problems.append(f"{where} goes to {sorted(primary_zones)}")
            local = [k for k, zs in zones.items() if zs == {w.zone} and app_of[k] == app_of.get(primary)]
            if is_edge.get(w.zone) and local and primary not in local:
                problems.append(f"{where} skips its own zone's copy {local[0]}")
            for t in chain.targets[1:]:
                if any(is_edge.get(z, True) for z in zones.get(t, {"?"})):
                    problems.append(f"{where} fails over to {t} outside the Region")
    resolvers = _entries(b, "ServiceResolver")
    for key, zs in zones.items():
        if not any(is_edge.get(z, False) for z in zs):
            continue
        chain = resolve(b, key)
        region_targets = [t for t in chain.targets[1:] if zones.get(t) and not any(is_edge.get(z) for z in zones[t])]
        if not region_targets:
            problems.append(f"edge service {key}: no failover to the Region (resolver: {key in resolvers})")
    return problems


def check_intentions(b: Bundle) -> list[str]:
    """Intentions allow exactly the call graph (incl. failover targets) and deny `*`."""
    wls = mesh_workloads(b)
    edition = b.topology.edition
    needed: set[tuple[Key, Key]] = set()
    for w in wls:
        for ref in w.upstreams:
            for target in resolve(b, ref).targets:
                needed.add((target, w.consul))
    allowed: set[tuple[Key, Key]] = set()
    problems = []
    intentions = _entries(b, "ServiceIntentions")
    for dest, obj in intentions.items():
        denies_all = False
        for src in obj["spec"].get("sources") or []:
            src_ns = (src.get("namespace") or dest[0]) if edition is Edition.ENTERPRISE else CE_NAMESPACE
            if src.get("name") == "*":
                denies_all = denies_all or (src.get("action") == "deny" and src_ns in ("*", dest[0]))
            elif src.get("action") == "allow":
                allowed.add((dest, (src_ns, src.get("name", ""))))
        if not denies_all:
            problems.append(f"intentions for {dest}: no `*` deny source")
    for w in wls:
        if w.consul not in intentions:
            problems.append(f"no ServiceIntentions for {w.consul}")
    problems += [f"intention missing: {src} -> {dest}" for dest, src in sorted(needed - allowed)]
    problems += [f"intention beyond the call graph: {src} -> {dest}" for dest, src in sorted(allowed - needed)]
    return problems


_ENTERPRISE_ONLY_SPEC_KEYS = ("samenessGroup", "prioritizeByLocality", "failoverPolicy", "partition", "peer")


def _paths(value: Any, path: str = "") -> Iterable[str]:
    """Dotted paths of every map key under `value` (list items as `[i]`)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            p = f"{path}.{k}" if path else str(k)
            yield p
            yield from _paths(v, p)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, f"{path}[{i}]")


def check_ce_fields(b: Bundle) -> list[str]:
    """CE output uses no Enterprise-only field (Consul CE and the webhook reject them)."""
    if b.topology.edition is not Edition.CE:
        return []
    problems = []
    for o in b.objects:
        if not o.get("apiVersion", "").startswith("consul.hashicorp.com/"):
            continue
        where = f"{o['kind']} {o['metadata'].get('namespace')}/{o['metadata']['name']}"
        for path in _paths(o.get("spec") or {}):
            leaf = path.rsplit(".", 1)[-1]
            if leaf in _ENTERPRISE_ONLY_SPEC_KEYS or leaf == "namespace":
                problems.append(f"{where}: spec.{path} is Enterprise-only")
            elif leaf == "policy" and ".failover." in f".{path}":
                problems.append(f"{where}: spec.{path} (failover policy) is Enterprise-only")
    for w in mesh_workloads(b):
        problems += [f"{w.namespace}/{w.name}: {p}" for p in w.problems]
    g = b.helm_values.get("global") or {}
    if g.get("enableConsulNamespaces") or g.get("enterpriseLicense"):
        problems.append("helm values: global.enableConsulNamespaces/enterpriseLicense are Enterprise-only")
    if "consul-enterprise" in str(g.get("image", "")):
        problems.append("helm values: global.image is an Enterprise image")
    return problems


def check_unique_names(b: Bundle) -> list[str]:
    """Config-entry CRD names are unique per Consul namespace (CE: cluster-wide)."""
    edition = b.topology.edition
    seen: dict[tuple[str, str, str], str] = {}
    problems = []
    for o in b.objects:
        if o.get("kind") not in names.CONFIG_ENTRY_KINDS:
            continue
        ns = o["metadata"].get("namespace", "default")
        key = (o["kind"], consul_ns(edition, ns), o["metadata"]["name"])
        if key in seen:
            problems.append(f"{o['kind']} {o['metadata']['name']!r} in {ns} clashes with the one in {seen[key]}")
        seen[key] = ns
    return problems


def check_enterprise_namespaces(b: Bundle) -> list[str]:
    """Enterprise uses Consul namespaces as designed: mirroring, one namespace per zone,
    plain service names, Region-only services redirected from every edge namespace."""
    t = b.topology
    if t.edition is not Edition.ENTERPRISE:
        return []
    problems = []
    g = b.helm_values.get("global") or {}
    if g.get("enableConsulNamespaces") is not True:
        problems.append("helm values: global.enableConsulNamespaces is not true")
    ci = b.helm_values.get("connectInject") or {}
    if (ci.get("consulNamespaces") or {}).get("mirroringK8S") is not True:
        problems.append("helm values: connectInject.consulNamespaces.mirroringK8S is not true")
    wls = mesh_workloads(b)
    names_by_ns: dict[str, set[str]] = {}
    for w in wls:
        names_by_ns.setdefault(w.consul[0], set()).add(w.consul[1])
        if w.consul[1] != w.app:
            problems.append(f"{w.namespace}/{w.name}: Consul name {w.consul[1]!r} is not the plain service name")
    for zone in t.zones:
        if naming.namespace(t, zone) not in names_by_ns:
            problems.append(f"zone {zone.name}: no workloads in namespace {naming.namespace(t, zone)}")
    for zone in t.edge_zones:
        ns = naming.namespace(t, zone)
        for svc in t.services:
            if svc.placement.value == "region":
                chain = resolve(b, (ns, svc.name))
                if chain.targets[:1] != [(names.REGION_NAMESPACE, svc.name)]:
                    problems.append(f"{ns}: {svc.name} is not redirected to namespace {names.REGION_NAMESPACE}")
    return problems


def unknown_helm_keys(values: Any, reference: Any, path: str = "") -> list[str]:
    """Keys of `values` that the chart's values.yaml does not have.

    Where the reference holds an empty map or null (extraLabels: {},
    annotations: null ...), the chart treats the value as free-form.
    """
    if not isinstance(values, Mapping):
        return []
    if reference is None or (isinstance(reference, Mapping) and not reference):
        return []
    if not isinstance(reference, Mapping):
        return [f"{path}: a map where the chart has a {type(reference).__name__}"]
    out = []
    for k, v in values.items():
        p = f"{path}.{k}" if path else str(k)
        if k not in reference:
            out.append(f"{p}: not a key of the chart's values.yaml")
        else:
            out += unknown_helm_keys(v, reference[k], p)
    return out


ALL_CHECKS = (
    check_scheduling,
    check_upstreams,
    check_locality,
    check_intentions,
    check_ce_fields,
    check_unique_names,
    check_enterprise_namespaces,
)


def check_all(b: Bundle) -> list[str]:
    """Every pure contract check (schema checks need the reference data; see tests)."""
    return [p for check in ALL_CHECKS for p in check(b)]
