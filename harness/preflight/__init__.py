"""Preflight: Consul's own view of the mesh, checked against the topology before any traffic.

The verdict judges the mesh from what its sidecars did under load; preflight
asks Consul first, through its HTTP API (PyPI ``py-consul`` 1.8.0, the only
release with the config-entry and discovery-chain calls), whether the
configuration can be right at all. A seeded resolver that fails over to
another Local Zone is caught here, naming the chain, before a single request
is sent. The same client code runs on every backend: `Backend.consul_api()`
is a port-forward to the Consul server on kind/EKS and the local backend's
emulation (backends/local/consul_api.py) here.

Checks (each a record of ``preflight.json``, docs/CONTRACTS.md §4):
- ``crd-synced``: every config-entry CRD of the manifests has ``Synced=True``
  (`Backend.config_entry_status`), and the entry is in Consul
  (``/v1/config/:kind``): the status says the write succeeded, Consul says it
  is there.
- ``discovery-chain``: for every caller zone and upstream, the compiled chain
  (``/v1/discovery-chain/:service``) starts at the in-zone target and fails
  over to the Region only, never to another edge zone; a Region-only upstream
  and any upstream of a Region caller resolve to the Region. Every resolver
  the chain can reach (each router route) is checked.
- ``instances-passing``: every Consul service has as many passing instances
  (``/v1/health/service/:s?passing``) as the manifests' replicas.
- ``intentions``: for every pair of the topology's Consul services, Consul's
  decision (``/v1/connect/intentions/check``) allows exactly the call graph
  the topology declares and denies everything else (one check per
  undeclared pair).
- ``refused-probe``: a real call on undeclared edges must be refused by the
  destination's sidecar, and one on a declared edge must not
  (`Backend.probe_edge`), looked at again within the settle bound while
  Consul's push of intentions reaches the sidecars (`settled_refused`);
  a backend that cannot make such a call gets no
  check and a line in ``notes`` (the verdict's `call-graph` takes the probe
  as optional evidence).

`gate` is what `harness e2e` and `harness traffic` call before traffic: mode
``gate`` stops on a failed check (the chain printed), ``record`` writes
``preflight.json`` and goes on (detection tests, where the verdict must fail
on its own evidence too).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from harness.backends.base import Backend, ConsulAccess, ProgressFn
from harness.contract import names
from harness.contract.rundir import PREFLIGHT_FILE
from harness.errors import BackendError, HarnessError
from harness.render import naming
from harness.render.naming import ConsulService
from harness.topology.model import Edition, Placement, Topology, Zone

MODES = ("gate", "record")
CONFIG_KINDS = names.CONSUL_KINDS


@dataclass
class Check:
    """One preflight record: ``{"check", "subject", "ok", "message", "detail"}``."""

    check: str
    subject: str
    ok: bool
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreflightResult:
    ts: float
    consul: str
    checks: list[Check]
    notes: list[str] = field(default_factory=list)  # what could not be checked here, and why
    # what about the cluster the result must carry (`Backend.cluster_warnings`: e.g. a Kubernetes outside the
    # chart's supported range); no check fails on it: the run goes on, and the report lists it among its notes
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def blocking(self) -> list[Check]:
        """Failures that mean a misconfigured mesh (not a check this backend could not perform)."""
        return [c for c in self.failures if c.detail.get("possible", True)]

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ts": self.ts, "consul": self.consul, "ok": self.ok}
        doc["checks"] = [asdict(c) for c in self.checks]
        doc["notes"] = list(self.notes)
        doc["warnings"] = list(self.warnings)
        return doc


class PreflightFailed(HarnessError):
    """A gating preflight failed: the run stops before traffic (a failed verdict, exit 1)."""

    def __init__(self, result: PreflightResult, path: Path | None) -> None:
        self.result = result
        self.path = path
        lines = [f"preflight failed ({len(result.blocking)} of {len(result.checks)} checks)"]
        lines += [describe(c) for c in result.blocking]
        if path is not None:
            lines.append(f"see {path}")
        super().__init__("\n".join(lines))


def describe(c: Check) -> str:
    """One failed check for a terminal: the line, then the chain when there is one."""
    text = f"{c.check}: {c.subject}: {c.message}"
    chain = c.detail.get("chain")
    if chain:
        text += "\n    chain: " + " | ".join(chain)
    return text


# --------------------------------------------------------------------------- the model of the topology


@dataclass(frozen=True)
class Expected:
    """What the topology says about Consul's services: where each runs and who calls whom."""

    topology: Topology
    edition: Edition
    services: list[ConsulService]

    @classmethod
    def of(cls, topology: Topology, edition: Edition) -> Expected:
        return cls(topology, edition, naming.consul_services(topology, edition))

    def key(self, name: str, namespace: str) -> tuple[str, str]:
        """Lookup key of a Consul service: CE has one Consul namespace."""
        return (namespace if self.edition is Edition.ENTERPRISE else "default", name)

    def cs_key(self, cs: ConsulService) -> tuple[str, str]:
        return self.key(cs.name, cs.namespace)

    def zones_of(self, name: str, namespace: str) -> tuple[Zone, ...] | None:
        for cs in self.services:
            if self.cs_key(cs) == self.key(name, namespace):
                return cs.zones
        return None

    def replicas(self, cs: ConsulService) -> int:
        return sum(
            w.replicas
            for w in naming.workloads(self.topology, self.edition)
            if (w.namespace, w.consul_name) == (cs.namespace, cs.name)
        )

    def api_name(self, name: str, namespace: str) -> str:
        """How the intentions API names a service: ``ns/name`` in Enterprise, the name in CE."""
        return f"{namespace}/{name}" if self.edition is Edition.ENTERPRISE else name


# --------------------------------------------------------------------------- checks


def _acl_denied() -> type[Exception]:
    """py-consul's 403 (consul/callback.py): an ACL refusal is the operator's setting, never a finding.

    Imported when asked, as `_consul_client` imports py-consul: the CLI imports this module at start.
    """
    from consul import ACLPermissionDenied

    return ACLPermissionDenied


def _consul_client(url: str, access: ConsulAccess) -> Any:
    """py-consul at `url`, trusting `access`'s CA (an HTTPS-only Consul) and sending its ACL token."""
    import consul  # py-consul (never python-consul2: both install the `consul` module)

    parts = urlsplit(url)
    return consul.Consul(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (443 if parts.scheme == "https" else 80),
        scheme=parts.scheme or "http",
        token=access.token,
        verify=access.requests_verify,
    )


def check_crds(
    backend: Backend, manifests_objects: Iterable[dict[str, Any]], client: Any, exp: Expected
) -> list[Check]:
    """Every config-entry CRD Synced=True (backend) and present in Consul (``/v1/config/:kind``)."""
    crds = [o for o in manifests_objects if str(o.get("apiVersion", "")).startswith("consul.hashicorp.com/")]
    try:
        statuses = {(s.kind, s.namespace, s.name): s for s in backend.config_entry_status()}
    except BackendError as exc:
        return [Check("crd-synced", "*", False, str(exc), {"possible": False})]
    in_consul: dict[tuple[str, str], set[str]] = {}
    out = []
    for obj in crds:
        kind = str(obj.get("kind"))
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        name, ns = str(meta.get("name")), str(meta.get("namespace", "default"))
        subject = f"{kind} {ns}/{name}"
        st = statuses.get((kind, ns, name))
        if st is None or st.synced is not True:
            why = "no Synced condition yet" if st is None else st.text()
            out.append(Check("crd-synced", subject, False, why, {"reason": st.reason if st else ""}))
            continue
        consul_kind = CONFIG_KINDS.get(kind)
        if consul_kind is None:
            out.append(Check("crd-synced", subject, False, f"unknown config-entry kind {kind}"))
            continue
        consul_name, consul_ns = name, ns
        if kind == "ServiceIntentions":  # the Consul entry is named after its destination
            dest = spec.get("destination") or {}
            consul_name, consul_ns = str(dest.get("name") or name), str(dest.get("namespace") or ns)
        if exp.edition is not Edition.ENTERPRISE or kind == "ProxyDefaults":
            consul_ns = "default"
        if (consul_kind, consul_ns) not in in_consul:
            entries = _list_entries(client, consul_kind, consul_ns)
            in_consul[(consul_kind, consul_ns)] = {str(e.get("Name")) for e in entries}
        if consul_name not in in_consul[(consul_kind, consul_ns)]:
            out.append(Check("crd-synced", subject, False, f"Synced, but Consul has no {consul_kind} {consul_name!r}"))
            continue
        out.append(Check("crd-synced", subject, True, "Synced and in Consul"))
    return out


def _list_entries(client: Any, kind: str, namespace: str) -> list[dict[str, Any]]:
    """``/v1/config/:kind`` (``?ns=`` outside CE's single namespace; py-consul's call has no ns)."""
    if namespace == "default":
        return list(client.config.list(kind) or [])
    from consul.callback import CB

    return list(client.http.get(CB.json(), f"/v1/config/{kind}", params=[("ns", namespace)]) or [])


def chain_targets(chain: dict[str, Any], exp: Expected) -> list[dict[str, str]]:
    """The chain's targets in order: each reachable resolver's target, then its failover targets."""
    targets = chain.get("Targets") or {}
    out: list[dict[str, str]] = []
    for node_id in _resolver_nodes(chain):
        res = (chain.get("Nodes") or {}).get(node_id, {}).get("Resolver") or {}
        for tid in [res.get("Target"), *((res.get("Failover") or {}).get("Targets") or [])]:
            t = targets.get(tid) or {}
            svc, ns = str(t.get("Service") or tid), str(t.get("Namespace") or "default")
            zones = exp.zones_of(svc, ns)
            entry = {"service": svc, "id": str(tid), "zone": "?" if zones is None else _zones(zones)}
            if entry not in out:
                out.append(entry)
    return out


def chain_summary(chain: dict[str, Any]) -> list[str]:
    """Each resolver the chain reaches, as ``node: target -> failover [a, b]``."""
    out = []
    for node_id in _resolver_nodes(chain):
        res = (chain.get("Nodes") or {}).get(node_id, {}).get("Resolver") or {}
        fo = (res.get("Failover") or {}).get("Targets") or []
        out.append(f"{node_id}: {res.get('Target')} -> failover [{', '.join(fo)}]")
    return out or [f"start {chain.get('StartNode')}: no resolver"]


def _resolver_nodes(chain: dict[str, Any]) -> list[str]:
    """Resolver node ids reachable from StartNode through routers and splitters, in order."""
    nodes = chain.get("Nodes") or {}
    seen: list[str] = []
    todo = [chain.get("StartNode")]
    while todo:
        nid = todo.pop(0)
        if not isinstance(nid, str) or nid in seen:
            continue
        node = nodes.get(nid) or {}
        seen.append(nid)
        if node.get("Type") == "router":
            todo += [r.get("NextNode") for r in node.get("Routes") or []]
        elif node.get("Type") == "splitter":
            todo += [s.get("NextNode") for s in node.get("Splits") or []]
    return [n for n in seen if (nodes.get(n) or {}).get("Type") == "resolver"]


def judge_chain(exp: Expected, caller_zone: Zone, upstream_placement: Placement, chain: dict[str, Any]) -> str | None:
    """None when the chain is what the topology needs, else why not (one line)."""
    targets = chain.get("Targets") or {}
    want_primary = "in-zone" if caller_zone.is_edge and upstream_placement is Placement.EDGE else "Region"
    resolvers = _resolver_nodes(chain)
    if not resolvers:
        return f"no resolver reachable from {chain.get('StartNode')}"

    def where(tid: str) -> tuple[str, tuple[Zone, ...] | None]:
        t = targets.get(tid) or {}
        svc, ns = str(t.get("Service") or tid), str(t.get("Namespace") or "default")
        return svc, exp.zones_of(svc, ns)

    for nid in resolvers:
        res = (chain["Nodes"][nid].get("Resolver")) or {}
        svc, zones = where(str(res.get("Target")))
        if zones is None:
            return f"{nid}: target {svc} is not a service of the topology"
        region = all(not z.is_edge for z in zones)
        if want_primary == "in-zone" and tuple(zones) != (caller_zone,):
            return f"{nid}: starts at {svc} ({_zones(zones)}), not in {caller_zone.name}"
        if want_primary == "Region" and not region:
            return f"{nid}: starts at {svc} ({_zones(zones)}), not in the Region"
        failover = list((res.get("Failover") or {}).get("Targets") or [])
        for tid in failover:
            fsvc, fzones = where(tid)
            if fzones is None:
                return f"{nid}: fails over to {fsvc}, not a service of the topology"
            if any(z.is_edge for z in fzones):
                return f"{nid}: fails over to {fsvc} ({_zones(fzones)}), another edge zone, not the Region"
        if want_primary == "in-zone" and not failover:
            return f"{nid}: {svc} has no failover to the Region"
    return None


def _zones(zones: Iterable[Zone]) -> str:
    zs = list(zones)
    return "Region" if all(not z.is_edge for z in zs) else ",".join(z.name for z in zs)


def _get_chain(client: Any, name: str, namespace: str, exp: Expected) -> dict[str, Any]:
    if exp.edition is Edition.ENTERPRISE:
        from consul.callback import CB

        got = client.http.get(CB.json(), f"/v1/discovery-chain/{name}", params=[("ns", namespace)])
    else:
        got = client.discovery_chain.get(name)
    return dict((got or {}).get("Chain") or {})


def check_chains(client: Any, exp: Expected) -> list[Check]:
    """For every (caller zone, upstream): in-zone first, then the Region only."""
    t = exp.topology
    out: list[Check] = []
    seen: set[tuple[str, str, str]] = set()
    for svc in t.services:
        for zone in t.zones:
            if not naming.serving_zone(svc, zone):
                continue
            for up_name in svc.upstreams:
                up = t.service(up_name)
                name, ns = naming.upstream_target(t, up, zone, exp.edition)
                if (zone.name, name, ns) in seen:
                    continue
                seen.add((zone.name, name, ns))
                subject = f"{zone.name} -> {name}"
                try:
                    chain = _get_chain(client, name, ns, exp)
                except _acl_denied():
                    raise  # the token's rights, not the chain: run_preflight says what to set
                except Exception as exc:
                    out.append(Check("discovery-chain", subject, False, f"cannot read the chain: {exc}"))
                    continue
                why = judge_chain(exp, zone, up.placement, chain)
                detail = {
                    "targets": chain_targets(chain, exp),
                    "chain": chain_summary(chain),
                    "start": chain.get("StartNode"),
                    "caller_zone": zone.name,
                }
                if why is None:
                    out.append(Check("discovery-chain", subject, True, "in-zone, then the Region only", detail))
                else:
                    out.append(Check("discovery-chain", subject, False, f"discovery chain {name}: {why}", detail))
    return out


def check_instances(client: Any, exp: Expected) -> list[Check]:
    out = []
    for cs in exp.services:
        want = exp.replicas(cs)
        try:
            if exp.edition is Edition.ENTERPRISE:
                from consul.callback import CB

                params = [("passing", "1"), ("ns", cs.namespace)]
                passing = client.http.get(CB.json(), f"/v1/health/service/{cs.name}", params=params)
            else:
                _index, passing = client.health.service(cs.name, passing=True)
        except _acl_denied():
            raise
        except Exception as exc:
            out.append(Check("instances-passing", cs.name, False, f"cannot read health: {exc}"))
            continue
        pods = sorted(str((e.get("Service") or {}).get("Meta", {}).get("pod-name", "?")) for e in passing or [])
        ok = len(pods) >= want
        msg = f"{len(pods)} of {want} instances passing"
        out.append(Check("instances-passing", cs.name, ok, msg, {"passing": pods, "expected": want}))
    return out


_T = TypeVar("_T")
_R = TypeVar("_R")
_E = TypeVar("_E", bound=Exception)


def _at_once(fn: Callable[[_T], _R], items: Sequence[_T], catch: type[_E], workers: int) -> list[_R | _E]:
    """`fn` of every item, `workers` at a time, answers in item order; an exception of type `catch` is its item's
    answer (one question that fails is a failed check, not a failed preflight)."""

    def one(item: _T) -> _R | _E:
        try:
            return fn(item)
        except catch as exc:
            return exc

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, items))


def check_intentions(client: Any, exp: Expected) -> list[Check]:
    """Consul's decision for every pair of the topology's services.

    One check per undeclared pair (Consul must deny it); a declared pair gets
    a (failed) check only when Consul denies it, so the count of `intentions`
    checks is the count of undeclared calls Consul was asked about. The
    pairs are asked eight at a time (`ASK_AT_ONCE`), answers kept in pair
    order: one at a time, the 272 questions of the default topology took
    half a second before every run's traffic.
    """
    pairs: list[tuple[str, str, bool]] = []  # (source, destination, declared)
    for dest in exp.services:
        declared = {exp.key(n, ns) for n, ns in naming.callers(exp.topology, dest, exp.edition)}
        for src in exp.services:
            if exp.cs_key(src) == exp.cs_key(dest):
                continue
            pairs.append((exp.api_name(src.name, src.namespace), exp.api_name(dest.name, dest.namespace),
                          exp.cs_key(src) in declared))  # fmt: skip

    def ask(pair: tuple[str, str, bool]) -> bool:
        answer = client.connect.intentions.check(pair[0], pair[1])
        if answer is None:  # py-consul turns a 404 into None: no decision is not a denial
            raise LookupError("/v1/connect/intentions/check answered 404")
        return bool(answer)

    answers = _at_once(ask, pairs, Exception, ASK_AT_ONCE)
    denied = next((a for a in answers if isinstance(a, _acl_denied())), None)
    if denied is not None:
        raise denied
    out = []
    for (src_name, dst_name, want), got in zip(pairs, answers, strict=True):
        subject = f"{src_name} -> {dst_name}"
        if isinstance(got, Exception):
            out.append(Check("intentions", subject, False, f"cannot ask Consul: {got}", {"declared": want}))
        elif want and got:
            continue
        elif want:
            out.append(Check("intentions", subject, False, "declared call denied by Consul", {"declared": True}))
        elif got:
            msg = "undeclared call allowed by Consul (intentions do not enforce the call graph)"
            out.append(Check("intentions", subject, False, msg, {"declared": False, "allowed": True}))
        else:
            out.append(Check("intentions", subject, True, "denied", {"declared": False, "allowed": False}))
    return out


def probe_pairs(exp: Expected) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(undeclared, declared) HTTP edges to call for real: per destination service, one of each.

    Names as the intentions API writes them (``ns/name`` in Enterprise).

    Undeclared: a same-zone service that does not call it (e.g. frontend ->
    product-api), and a caller from another edge zone (LZ -> LZ). Declared: its
    own zone's caller, the positive control that the probe itself works.
    """
    t = exp.topology
    undeclared: list[tuple[str, str]] = []
    declared: list[tuple[str, str]] = []
    edge_zones = t.edge_zones or t.region_zones
    zone = edge_zones[0]
    by_zone = {z.name: {cs.service.name: cs for cs in exp.services if z in cs.zones} for z in t.zones}
    for dest in by_zone[zone.name].values():
        if dest.service.protocol != "http":
            continue
        callers = {exp.key(n, ns) for n, ns in naming.callers(t, dest, exp.edition)}
        local = by_zone[zone.name]
        stranger = next((s for s in local.values() if exp.cs_key(s) not in callers and s is not dest), None)
        name = exp.api_name(dest.name, dest.namespace)
        if stranger is not None:
            undeclared.append((exp.api_name(stranger.name, stranger.namespace), name))
        caller = next((s for s in local.values() if exp.cs_key(s) in callers), None)
        if caller is not None:
            declared.append((exp.api_name(caller.name, caller.namespace), name))
        if caller is not None and len(t.edge_zones) > 1:
            other = by_zone[t.edge_zones[1].name].get(caller.service.name)
            if other is not None and exp.cs_key(other) not in callers:
                undeclared.append((exp.api_name(other.name, other.namespace), name))
    return undeclared, declared


def check_refused(
    backend: Backend, exp: Expected, notes: list[str], only: Collection[str] | None = None
) -> list[Check]:
    """Real calls on undeclared edges (refused) and declared ones (not refused, the control).

    A backend that cannot make such a call gets no check, only a line in
    `notes`: the verdict treats the probe as optional evidence, and Consul's
    decision is still checked for every pair by `check_intentions`. `only`
    (subjects, ``src -> dst``) limits the calls to those edges: a look again
    asks only what was not yet as it must be (`settled_refused`).
    """
    undeclared, declared = probe_pairs(exp)
    calls = [(s, d, True) for s, d in undeclared] + [(s, d, False) for s, d in declared]
    if only is not None:
        calls = [c for c in calls if f"{c[0]} -> {c[1]}" in only]

    # every edge called at once (a refused call waits for its answer: in turn, 0.45 s before every run's traffic)
    results = _at_once(lambda edge: backend.probe_edge(edge[0], edge[1]), calls, BackendError, len(calls))
    out = []
    for (src, dst, must_refuse), res in zip(calls, results, strict=True):
        subject = f"{src} -> {dst}"
        if isinstance(res, BackendError):
            out.append(Check("refused-probe", subject, False, f"probe failed: {res}", {"declared": not must_refuse}))
            continue
        if not res.possible:
            notes.append(f"refused-probe: not possible on this backend: {res.detail}")
            return []
        detail = {"refused": res.refused, "declared": not must_refuse, "detail": res.detail}
        if res.refused != must_refuse:
            what = "refused on a declared edge"
            if must_refuse:
                what = "not refused (intentions do not enforce the call graph)"
            out.append(Check("refused-probe", subject, False, f"{what}: {res.detail}", detail))
        else:
            out.append(Check("refused-probe", subject, True, "refused" if must_refuse else "allowed (control)", detail))
    if not undeclared:
        notes.append("refused-probe: the topology has no undeclared HTTP edge to call")
    return out


# --------------------------------------------------------------------------- running it


SETTLE_S = 30.0
ASK_AT_ONCE = 8  # Consul questions in flight at once (check_intentions)


def _settled(
    check: Callable[[], list[Check]],
    deadline: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float] = time.monotonic,
) -> list[Check]:
    """Run `check` until it passes or `deadline` (on `clock`) has come: the last answer counts.

    Sync status and instance health converge after `up` returns (a consul-k8s
    sync, a readiness probe period), and so does what a sidecar enforces
    (`settled_refused`); judging the first answer would make the result
    depend on when preflight happened to run. A mesh that does not converge
    by the deadline fails; a check reached after it is looked at once. The
    deadline is the caller's, shared by every check of one question ("has the
    control plane settled?", `run_preflight`). `clock` and `sleep` go
    together: a test passes both and the bound is kept without real waiting.
    """
    while True:
        checks = check()
        waiting_helps = any(not c.ok and c.detail.get("possible", True) for c in checks)
        left = deadline - clock()
        if not waiting_helps or left <= 0:
            return checks
        sleep(min(1.0, left))


def settled_refused(
    backend: Backend,
    exp: Expected,
    notes: list[str],
    deadline: float,
    sleep: Callable[[float], None],
    clock: Callable[[], float] = time.monotonic,
) -> list[Check]:
    """`check_refused` looked at again until every edge answers as it must, by `deadline` (on `clock`).

    Consul's decision (`check_intentions`) is its state store, right once the
    CRD is synced; the destination sidecar's RBAC filter is not: Consul pushes
    intentions to it asynchronously (a proxycfg watch, a snapshot coalesced
    for 200 ms, then an xDS push paced by the server's
    ``xds.update_max_per_second``, 250 updates a second across every stream by
    default; no documented upper bound). A correct mesh probed before the push
    arrived would fail by timing, so the probe waits on the same deadline as
    CRD sync and instance health. Each look calls only the edges not yet as they must
    be (a call on kind/EKS is a one-shot pod); an edge that answered right
    keeps its answer (intentions are not changed while preflight runs). An
    edge that still answers wrong at the bound fails.
    """
    latest: dict[str, Check] = {}
    said: list[str] = []

    def look() -> list[Check]:
        pending = {s for s, c in latest.items() if not c.ok} if latest else None
        said.clear()
        for c in check_refused(backend, exp, said, pending):
            latest[c.subject] = c
        return list(latest.values())

    out = _settled(look, deadline, sleep, clock)
    notes += said
    return out


def run_preflight(
    backend: Backend,
    client_factory: Callable[[str, ConsulAccess], Any] = _consul_client,
    settle_s: float = SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> PreflightResult:
    """Every check against the running cluster of `backend` (its manifests say what is expected).

    CRD sync, instance health and what the sidecars enforce (the refused
    probe) are one question, has the control plane settled?, given one
    deadline `settle_s` after preflight began: each is looked at until it
    passes or that deadline has come, then judged by its last answer (each
    with its own message). Each once had its own `settle_s`, one after the
    other, so a cluster that never settled was told so after up to three
    bounds, and how long depended on which checks the cluster failed.
    Consul's configuration answers (chains, intention decisions) are judged
    at once: once the CRDs are synced they do not change by waiting.
    """
    deadline = clock() + settle_s
    manifests = backend.manifests()
    exp = Expected.of(manifests.topology, manifests.edition)
    with backend.consul_api() as url:
        access = backend.consul_access()
        client = client_factory(url, access)
        checks: list[Check] = []
        try:
            leader = client.status.leader()
        except _acl_denied() as exc:
            raise access.denied(url, str(exc)) from None
        except Exception as exc:
            hint = f" (its CA: {access.ca_source or 'the system roots'})" if url.startswith("https:") else ""
            raise BackendError(f"Consul API at {url} does not answer{hint}: {exc}") from exc
        if not leader:
            raise BackendError(f"Consul API at {url}: no cluster leader")
        try:  # an ACL refusal is the operator's setting, not a finding: one line naming what to set
            checks += _settled(lambda: check_crds(backend, manifests.objects, client, exp), deadline, sleep, clock)
            checks += check_chains(client, exp)
            checks += _settled(lambda: check_instances(client, exp), deadline, sleep, clock)
            checks += check_intentions(client, exp)
        except _acl_denied() as exc:
            raise access.denied(url, str(exc)) from None
    notes: list[str] = []
    checks += settled_refused(backend, exp, notes, deadline, sleep, clock)
    return PreflightResult(time.time(), url, checks, notes, backend.cluster_warnings())


def write_preflight(run_dir: Path, result: PreflightResult) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / PREFLIGHT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def gate(
    backend: Backend,
    run_dir: Path,
    mode: str = "gate",
    say: ProgressFn = print,
    settle_s: float = SETTLE_S,
) -> PreflightResult:
    """Run preflight before traffic, write ``preflight.json``; mode ``gate`` raises PreflightFailed on failure."""
    if mode not in MODES:
        raise ValueError(f"preflight mode {mode!r}: expected one of {MODES}")
    result = run_preflight(backend, settle_s=settle_s)
    path = write_preflight(run_dir, result)
    failed = result.failures
    say(f"preflight: {len(result.checks) - len(failed)} of {len(result.checks)} checks passed -> {path}")
    for c in failed:
        say(describe(c))
    for note in result.notes:
        say(f"note: {note}")
    for warning in result.warnings:
        say(f"WARNING: {warning}")
    if mode == "gate" and result.blocking:
        raise PreflightFailed(result, path)
    return result


__all__ = [
    "PREFLIGHT_FILE",
    "Check",
    "Expected",
    "PreflightFailed",
    "PreflightResult",
    "chain_summary",
    "describe",
    "gate",
    "judge_chain",
    "run_preflight",
    "write_preflight",
]
