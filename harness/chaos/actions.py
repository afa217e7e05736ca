"""chaostoolkit actions of the harness (`provider: python, module: harness.chaos.actions`).

Each action records the fault in the chaos timeline before it acts, holds it
for `duration_s` where that makes sense, records the restore *before* it
undoes the fault, waits until the zone is whole again, and takes upstream
counter snapshots at the boundaries (docs/CONTRACTS.md, chaos.jsonl and
upstream-stats.jsonl). Each has a matching restore action for the
experiment's `rollbacks` (run with `--rollback-strategy always`), which is
idempotent, so a game day interrupted half-way still puts things back.

Zones are given by name or by role ("a Local Zone", see `harness.chaos.roles`),
resolved from the cluster's own topology together with the experiment's
configuration, which chaostoolkit passes to every action.

The backend comes from EH_BACKEND / EH_CLUSTER / EH_CONTEXT (set by
`harness chaos`), or from the experiment's `configuration` block
(`eh_backend`, `eh_cluster`, `eh_context`). One backend per set of options is
shared by every action and probe of the process and closed when chaostoolkit's
process ends (`close_backends`, called by the `harness.chaos.control` control
and at exit), so no watcher thread outlives the experiment.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from harness.backends import BackendOptions, connect
from harness.backends.base import PRIMITIVES, Backend, control_plane_refusal, dispatch, node_to_stop
from harness.chaos import expected
from harness.chaos.roles import RoleError, parse_role, resolve_zone
from harness.chaos.timeline import FaultKind, record, records
from harness.errors import BackendError, HarnessError
from harness.interrupt import nap
from harness.topology import Topology

log = logging.getLogger("chaostoolkit")  # chaostoolkit writes this logger to chaos.log

READY_TIMEOUT_S = 90.0
POLL_S = 0.1
NO_READY_EVENT_GRACE_S = 5.0
_now = time.monotonic  # the clock every wait here measures by (a test reads it as a fake one)
T = TypeVar("T")

_backends: dict[tuple[Any, ...], Backend] = {}
_backends_lock = threading.Lock()
_topologies: dict[int, tuple[Backend, Topology]] = {}  # id(backend) -> (backend, its topology): `topology_of`
_atexit_registered = False


def _options(configuration: Mapping[str, Any] | None) -> BackendOptions:
    cfg = configuration or {}
    return BackendOptions.from_env(
        name=cfg.get("eh_backend"), cluster=cfg.get("eh_cluster"), context=cfg.get("eh_context")
    )


def _backend(configuration: Mapping[str, Any] | None = None) -> Backend:
    """The process's one backend for these options (created on first use)."""
    global _atexit_registered
    opts = _options(configuration)
    key = (opts.name, opts.cluster, opts.context, opts.kubeconfig, tuple(opts.allow_contexts))
    with _backends_lock:
        b = _backends.get(key)
        if b is None:
            b = connect(opts)
            _backends[key] = b
            if not _atexit_registered:
                atexit.register(close_backends)
                _atexit_registered = True
        return b


def topology_of(b: Backend) -> Topology:
    """The cluster's topology, read once per backend in this process.

    A chaos process lives for one experiment, and the cluster's topology is
    the one it was brought up with: read again for every zone an action or a
    probe resolved, it parsed the rendered manifests ~8 times per experiment
    (~0.05 s each, twice that beside the run's traffic), each time between a
    step and the next. Raises what `Backend.manifests` raises (not kept).
    """
    with _backends_lock:
        kept = _topologies.get(id(b))
    if kept is not None and kept[0] is b:
        return kept[1]
    topology = b.manifests().topology
    with _backends_lock:
        _topologies[id(b)] = (b, topology)
    return topology


def close_backends() -> None:
    """Close every backend this process opened (idempotent)."""
    with _backends_lock:
        backends = list(_backends.values())
        _backends.clear()
        _topologies.clear()
    for b in backends:
        try:
            b.close()
        except Exception as exc:  # closing is best effort: report, never mask the experiment's outcome
            print(f"closing backend {b.name}: {exc}", flush=True)


def _run_dir() -> Path | None:
    raw = os.environ.get("EH_RUN_DIR")
    return Path(raw) if raw else None


def _snapshot(b: Backend, label: str) -> None:
    """Upstream counters of every sidecar into the run directory; pods that did not answer go to chaos.log."""
    from harness.chaos.upstream_stats import snapshot_quietly

    snap = snapshot_quietly(b, _run_dir(), label)
    if snap is not None and snap.failed:
        pods = ", ".join(f"{pod} ({why})" for pod, why in sorted(snap.failed.items()))
        log.warning("upstream stats %r: %d of %d pods did not answer: %s", label, len(snap.failed),
                    len(snap.failed) + len(snap.pods), pods)  # fmt: skip


def _zone(b: Backend, value: Any, configuration: Mapping[str, Any] | None) -> str:
    """A zone name from a name or a role phrase, with the cluster's topology."""
    try:
        topology = topology_of(b)
    except HarnessError:
        if parse_role(value) is not None or not isinstance(value, str):
            raise
        return value  # a plain zone name on a cluster whose topology the harness does not know
    try:
        zone = resolve_zone(value, topology, configuration)
    except RoleError as exc:
        raise BackendError(str(exc)) from None
    if isinstance(zone, list):
        raise BackendError(f"{value!r} names {len(zone)} zones; this action acts on one zone")
    return zone


def _expected(declared: Mapping[str, Any] | None) -> dict[str, Any]:
    """Timeline fields of an `expected_errors` declaration (harness.chaos.expected); BackendError when malformed."""
    try:
        return expected.timeline_fields(declared)
    except ValueError as exc:
        raise BackendError(f"expected_errors: {exc}") from None


def _fault_id(action: str, zone: str, service: str | None = None) -> str:
    short = zone.split("-", 3)[-1]
    # 8 hex digits: a burst makes dozens of faults of one service in one zone, and 4 drew the same id 1 time in
    # 65536 per pair (the verifier tells faults apart by their records, not their ids, all the same)
    return "-".join(x for x in (action, service, short, uuid.uuid4().hex[:8]) if x)


def ready_services(backend: Backend, zone: str, stale: Mapping[str, int] | None = None) -> set[str]:
    """Logical services with at least one Ready pod in `zone`.

    `stale`: pod -> how often it had become ready (`Inventory.times_ready`)
    when its node went down; it counts only once it became ready again. On a real
    cluster only the kubelet (and, 40-50 s on, the node controller) writes a
    pod's Ready condition, so right after `docker start` (or an instance's
    start) the API still shows the dead pods Ready at their old IPs while
    the node boots: read as Ready, a node kill "recovered" while its pods were
    not running.
    """
    inv = backend.inventory()
    phases = backend.status().pods
    out = set()
    for p in inv.pods(alive_only=True):
        if p.zone != zone or phases.get(p.pod) != "Ready":
            continue
        if stale and p.pod in stale and inv.times_ready(p.pod) <= stale[p.pod]:
            continue  # Ready since before its node went down: what the API last heard, not a running pod
        out.add(p.service)
    return out


def poll_until(look: Callable[[], T | None], within_s: float, every_s: float = POLL_S) -> tuple[T | None, float]:
    """Ask `look` every `every_s` until it answers (anything but None) or `within_s` has passed.

    Returns the answer (None when the time ran out) and the seconds waited.
    It looks at least once, and once more at or after the bound, so a
    condition met just as time runs out is still seen. The one loop of every
    wait in the harness's chaos (readiness of services, of a replacement, of
    every pod): each had its own copy, with its own clock. Measured on
    `_now`, so a test counts looks on a fake clock rather than in seconds.
    """
    t0 = _now()
    while True:
        answer = look()
        waited = _now() - t0
        if answer is not None or waited >= within_s:
            return answer, waited
        time.sleep(every_s)


def _stale(backend: Backend, pods: Iterable[str]) -> dict[str, int]:
    """The pods of nodes about to go down: `ready_services` counts them only once they became ready again."""
    inv = backend.inventory()
    return {p: inv.times_ready(p) for p in pods}


def wait_ready(
    backend: Backend,
    zone: str,
    services: list[str],
    timeout_s: float = READY_TIMEOUT_S,
    stale: Mapping[str, int] | None = None,
) -> float:
    """Block until every service in `services` has a Ready pod in `zone`; returns seconds waited.

    `stale`: pods of nodes that were down (`ready_services`).
    """
    missing: set[str] = set()

    def look() -> bool | None:
        missing.clear()
        missing.update(set(services) - ready_services(backend, zone, stale))
        return True if not missing else None

    done, waited = poll_until(look, timeout_s)
    if done is None:
        raise BackendError(f"{zone}: {', '.join(sorted(missing))} not ready after {timeout_s:.0f} s")
    return waited


def wait_replacement_ready(
    backend: Backend, zone: str, service: str, gone: set[str], timeout_s: float = READY_TIMEOUT_S
) -> float:
    """When the first replacement of the killed pods `gone` became ready, from the inventory's `ready` event.

    That event is the instant the service was back as an endpoint (written
    before the sidecars were told), so the restore is recorded at it rather
    than at whenever this loop noticed: the pod's *first* `ready`, even if it
    is unready again by the time this loop looks (a burst looks at a zone
    only when its turn comes round; a replacement whose readiness flapped
    in between was restored at its second or third `ready`, 13.6 s late in
    one run, depending on when the loop happened to look). A backend that
    reports a Ready pod but writes no `ready` event breaks the contract: that
    is an error, not a guess.
    """
    seen_ready_without_event: dict[str, float] = {}

    def look() -> float | None:
        inv = backend.inventory()
        new = [p for p in inv.pods(alive_only=True) if p.zone == zone and p.service == service and p.pod not in gone]
        since = [t for t in (inv.first_ready(p.pod) for p in new) if t is not None]
        if since:
            return min(since)
        if new:
            phases = backend.status().pods
            now = _now()
            for p in new:
                if phases.get(p.pod) == "Ready":
                    first = seen_ready_without_event.setdefault(p.pod, now)
                    if now - first > NO_READY_EVENT_GRACE_S:
                        raise BackendError(
                            f"{p.pod} is Ready but the inventory has no `ready` event for it "
                            "(the backend must write one: docs/CONTRACTS.md inventory.jsonl)"
                        )
        return None

    ready_ts, _ = poll_until(look, timeout_s)
    if ready_ts is None:
        raise BackendError(f"{zone}: no replacement {service} pod ready after {timeout_s:.0f} s")
    return ready_ts


def _hold(started: float, duration_s: float) -> None:
    """Keep the fault for `duration_s` from when the primitive acted (snapshots taken meanwhile count)."""
    left = started + duration_s - time.time()
    if left > 0:
        nap(left)  # in short steps: a stop arriving meanwhile is handled at once (harness.interrupt.nap)


def _zone_services(backend: Backend, zone: str) -> list[str]:
    return sorted({p.service for p in backend.inventory().pods(alive_only=True) if p.zone == zone})


def _held_fault(
    b: Backend,
    primitive: str,
    args: dict[str, Any],
    fault: str,
    action: str,
    zone: str,
    kind: FaultKind,
    duration_s: float,
    services: list[str] | None = None,
    *,
    before: bool = False,
    inject_extra: dict[str, Any] | None = None,
    restore_extra: dict[str, Any] | None = None,
) -> Any:
    """Inject `primitive` (base.PRIMITIVES) with `args`, hold it `duration_s`, restore it: every held fault.

    Refused before anything is recorded when the cluster cannot do it; the
    inject is recorded before the primitive acts and the restore before it is
    undone (also when the inject or the hold failed), with counter snapshots
    at the inject (and before it, when `before`).
    """
    spec = PRIMITIVES[primitive]
    assert spec.restore is not None, primitive
    b.require_capability(primitive, zone)  # in this zone: EKS enforces NetworkPolicy (a partition) per node
    if before:
        _snapshot(b, f"before {fault}")
    record(fault, "inject", action, zone, kind, services, **(inject_extra or {}))
    try:
        result = dispatch(b, primitive, args)
        acted = time.time()
        _snapshot(b, f"inject {fault}")
        _hold(acted, duration_s)
    finally:
        record(fault, "restore", action, zone, kind, services, **(restore_extra or {}))
        dispatch(b, spec.restore, {k: args[k] for k in spec.restore_params})
    return result


def kill_pod(
    zone: str,
    service: str,
    configuration: dict[str, Any] | None = None,
    expected_errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Kill every pod of `service` in `zone`; the fault lasts until the Deployment's replacement is ready.

    `expected_errors` declares a single point of failure and its error budget (harness.chaos.expected).
    """
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    declared = _expected(expected_errors)
    fault = _fault_id("kill-pod", zone, service)
    b.require_capability("kill_pod")  # refused before anything is recorded or injected
    _snapshot(b, f"before {fault}")
    inject = record(fault, "inject", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service], **declared)
    try:
        pods = dispatch(b, "kill_pod", {"zone": zone, "service": service})
    except BaseException:
        record(fault, "restore", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service])  # nothing was killed
        raise
    _snapshot(b, f"inject {fault}")
    ready_ts = wait_replacement_ready(b, zone, service, set(pods))
    record(fault, "restore", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service], ts=ready_ts)
    _snapshot(b, f"restore {fault}")
    return {"fault": fault, "zone": zone, "killed": pods, "replaced_after_s": round(ready_ts - inject["ts"], 3)}


def make_unready(
    zone: str, service: str, duration_s: float = 10.0, configuration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fail the readiness of `service` in `zone` for `duration_s` (pods keep running)."""
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    fault = _fault_id("unready", zone, service)
    pods = _held_fault(
        b, "set_pod_unready", {"zone": zone, "service": service}, fault, "make_unready", zone,
        FaultKind.SERVICE_DOWN, duration_s, [service],
    )  # fmt: skip
    wait_ready(b, zone, [service])
    _snapshot(b, f"restore {fault}")
    return {"fault": fault, "zone": zone, "pods": pods}


def make_ready(zone: str, service: str, configuration: dict[str, Any] | None = None) -> list[str]:
    """Rollback of `make_unready` (idempotent)."""
    b = _backend(configuration)
    return list(dispatch(b, "set_pod_ready", {"zone": _zone(b, zone, configuration), "service": service}) or [])


def kill_node(
    zone: str,
    node: str | None = None,
    duration_s: float = 10.0,
    configuration: dict[str, Any] | None = None,
    service: str | None = None,
    expected_errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Stop a node of `zone` for `duration_s`: `node` when given, else the first (by name) running
    `service`'s pod when given (e.g. the database primary's node), else the zone's first, in each case
    passing over a node that runs the mesh's control plane (the Consul server or injector), and refused
    when every such node does (`_without_control_plane`): a node loss, never the control plane's by chance.

    Its pods die; services left with no instance in the zone fall back to the Region.
    Node names differ per backend (kind-worker3, ip-10-0-...), so experiments name the zone
    (and the service whose node it is). `expected_errors`: see harness.chaos.expected.
    """
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    declared = _expected(expected_errors)
    nodes = sorted(n for n, z in b.nodes().items() if z == zone)
    if not nodes or (node is not None and node not in nodes):
        raise BackendError(f"no node {node or ''} in zone {zone}")
    candidates, what = ([node], f"node {node}") if node is not None else (nodes, f"every node of {zone}")
    if service is not None and node is None:
        alive_pods = b.inventory().pods(alive_only=True)
        holding = sorted({p.node for p in alive_pods if p.zone == zone and p.service == service} & set(nodes))
        if not holding:
            raise BackendError(f"no node of {zone} runs a {service} pod")
        candidates, what = holding, f"every node of {zone} that runs a {service} pod"
    node, passed_over = _without_control_plane(b, "kill_node", candidates, what)
    alive = b.inventory().pods(alive_only=True)
    on_node = {p.service for p in alive if p.node == node}
    elsewhere = {p.service for p in alive if p.zone == zone and p.node != node}
    lost = sorted(on_node - elsewhere)
    fault = _fault_id("kill-node", zone, node)
    stale = _stale(b, (p.pod for p in alive if p.node == node))
    _held_fault(
        b, "kill_node", {"node": node}, fault, "kill_node", zone, FaultKind.SERVICE_DOWN, duration_s, lost,
        before=True, inject_extra={"node": node, **declared},
        restore_extra={"node": node},
    )  # fmt: skip
    wait_ready(b, zone, sorted(on_node), stale=stale)
    _snapshot(b, f"restore {fault}")
    out: dict[str, Any] = {"fault": fault, "zone": zone, "node": node, "services_lost": lost}
    if passed_over:
        out["passed_over"] = passed_over  # said in the journal: why this node and not the zone's first
    return out


def _without_control_plane(
    b: Backend, action: str, candidates: list[str], what: str
) -> tuple[str, dict[str, list[str]]]:
    """The first of `candidates` (in order) that runs none of the mesh's control-plane pods, and the ones passed
    over for running some (`base.node_to_stop`); BackendError, before anything is recorded, when every
    candidate runs one.

    kube-scheduler places the Consul server and injector at random among equally scored nodes (selectHost), so
    "the zone's first node" took the control plane down with it on some nights and not on others: the catalog
    froze, failover rested on Envoy's passive checks and recovery waited for a server restart (and, on EKS, for
    its zonal volume). Same config, another fault, another verdict. A node loss that can only be had with the
    control plane is refused: judged as a node loss it would pass or fail by how fast the server came back, and
    the verdict fails the experiment with this message (experiment-ran), as for any refused fault.
    """
    node, passed_over = node_to_stop(candidates, _control_plane(b, action, what))
    if node is None:
        raise BackendError(control_plane_refusal(action, what, passed_over))
    return node, passed_over


def _control_plane(b: Backend, action: str, what: str) -> dict[str, list[str]]:
    """Node -> the control-plane pods on it; a backend that cannot tell refuses (`Backend.control_plane_nodes`)."""
    try:
        return b.control_plane_nodes()
    except BackendError as exc:
        raise BackendError(f"{action}: {exc}, so stopping {what} might stop it too: refused") from None


def restore_node(zone: str, node: str | None = None, configuration: dict[str, Any] | None = None) -> None:
    """Rollback of `kill_node` (idempotent): the named node, or every node of the zone."""
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    for n in [node] if node else sorted(n for n, z in b.nodes().items() if z == zone):
        dispatch(b, "restore_node", {"node": n})


def zone_outage(
    zone: str,
    duration_s: float = 10.0,
    configuration: dict[str, Any] | None = None,
    expected_errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every node of `zone` down for `duration_s`. `expected_errors`: see harness.chaos.expected."""
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    declared = _expected(expected_errors)
    # every node of the zone goes: one that runs the control plane makes it another fault (`kill_node`)
    control = _control_plane(b, "zone_outage", f"the nodes of {zone}")
    hit = {n: control[n] for n, z in sorted(b.nodes().items()) if z == zone and control.get(n)}
    if hit:
        raise BackendError(control_plane_refusal("zone_outage", f"zone {zone}", hit))
    services = _zone_services(b, zone)
    fault = _fault_id("zone-outage", zone)
    stale = _stale(b, (p.pod for p in b.inventory().pods(alive_only=True) if p.zone == zone))
    _held_fault(
        b, "zone_outage", {"zone": zone}, fault, "zone_outage", zone, FaultKind.ZONE_DOWN, duration_s, services,
        before=True, inject_extra=declared,
    )  # fmt: skip
    wait_ready(b, zone, services, stale=stale)
    _snapshot(b, f"restore {fault}")
    return {"fault": fault, "zone": zone, "services": services}


def restore_zone(zone: str, configuration: dict[str, Any] | None = None) -> None:
    """Rollback of `zone_outage` (idempotent)."""
    b = _backend(configuration)
    dispatch(b, "restore_zone", {"zone": _zone(b, zone, configuration)})


def degrade_link(
    zone: str,
    latency_ms: float,
    loss_percent: float = 0.0,
    duration_s: float = 10.0,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add latency / loss on the zone's service link for `duration_s`: traffic must stay in-zone.

    The zone's first such fault waits for its settled baseline first (`_settled_baseline`)."""
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    fault = _fault_id("link", zone)
    b.require_capability("set_link", zone)  # refused before it waits (and again, before anything is recorded)
    gave_up = _settled_baseline(b, zone)
    # refused (nothing recorded) where the cluster cannot shape links: EKS, kind without sch_netem
    _held_fault(
        b, "set_link", {"zone": zone, "latency_ms": latency_ms, "loss_percent": loss_percent}, fault,
        "degrade_link", zone, FaultKind.LINK_DEGRADED, duration_s,
        inject_extra={"latency_ms": latency_ms, "loss_percent": loss_percent},
    )  # fmt: skip
    _snapshot(b, f"restore {fault}")
    return {"fault": fault, "zone": zone, **({"baseline": gave_up} if gave_up else {})}


def _settled_baseline(b: Backend, zone: str) -> str | None:
    """Before the first fault of the run to reach `zone`'s link degrades it: LINK_BASELINE_HOPS successful requests
    through the zone's /api since the run settled (harness.contract.settled), each a hop that waits on the link.

    A degraded link is judged against those hops (the verdict's `_link_not_slowed`), from the settled instant on
    and outside the faults that reach the link. Before the first of those faults only the warm-up lies, whose
    own requests mostly came before the probe budget decided: a degradation begun at once had too few to be
    judged by (unverified). e2e's warm-up waited for them, for the plan's first such degradation, before the first
    fault of any kind (~0.75 s of every e2e: the zone's /api requests are its slowest); asked here, where they are
    needed, the earlier faults of the plan have carried them already. After a fault that reached the link, the
    baseline lies between that fault's recovery (the verdict ends its window there) and this one: the action
    cannot see where that is (the hops show it, which this process does not read), so it asks the process that
    started it where one answers (`harness chaos`: `_answered_baseline`), and else does not wait; e2e waits
    before an experiment that degrades a link first (`harness.e2e.wait_link_baseline`). No run directory,
    no settled instant (the probe budget has not decided, or locust runs in the zones and reads no budget): the
    verdict then reads the stretch whole, and nothing is waited for. A zone that gains no such request for
    BASELINE_STALL_S is degraded anyway; the verdict says what that leaves unverified. Returns what the journal
    is to say when a wait was given up (the action's output), else None.
    """
    from harness.contract.requestwatch import RequestWatch, answered_before
    from harness.contract.rundir import CHAOS_FILE, PROBE_BUDGET_FILE, REQUESTS_FILE
    from harness.contract.settled import BASELINE_STALL_S, LINK_BASELINE_HOPS, reaches_link, settled_at

    run_dir = _run_dir()
    if run_dir is None:
        return None
    try:
        decision = json.loads((run_dir / PROBE_BUDGET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    settled = settled_at(decision) if isinstance(decision, dict) else None
    if settled is None:
        return None
    t = topology_of(b)
    for rec in records(run_dir / CHAOS_FILE):
        if rec.get("phase") == "inject" and reaches_link(t, str(rec.get("zone")), zone):
            return _answered_baseline(run_dir, zone, t.slo.max_recovery_s)
    path = run_dir / REQUESTS_FILE
    watch = RequestWatch(path, [zone], start=answered_before(path, settled))
    t0 = _now()
    if watch.wait(settled, LINK_BASELINE_HOPS, BASELINE_STALL_S, api=True, stalled=True):
        if _now() - t0 > POLL_S:
            log.info("link baseline: %s's settled requests through /api on record after %.1f s", zone, _now() - t0)
        return None
    had = watch.served(settled, api=True).get(zone, 0)
    log.warning(
        "link baseline: %s had %d of %d requests through /api since the run settled and gained none for %g s: "
        "degraded anyway (the verdict says what that leaves unverified)", zone, had, LINK_BASELINE_HOPS,
        BASELINE_STALL_S,
    )  # fmt: skip
    return None


def _answered_baseline(run_dir: Path, zone: str, bound_s: float) -> str | None:
    """After a fault that reached `zone`'s link: wait until the process that started this one, which reads the
    records, answers that the baseline the verdict reads is on record (`harness.contract.linkwatch`; it asks
    `harness.verify.link_baseline_owed`, as e2e's hold does). No such process: nothing to wait for (None).

    Bounded: the answer holds at most maxRecoveryS past the newest restore (`bound_s`, from the question on),
    and a watcher that stops answers nothing more. Given up, the degradation goes on and what is returned says
    so in the journal (and chaos.log): the verdict says what that leaves unverified.
    """
    from harness.contract import linkwatch

    pid = linkwatch.watching(run_dir)
    if pid is None:
        return None
    token = linkwatch.ask(run_dir, zone)
    last: list[dict[str, Any]] = []

    def look() -> bool | None:
        ans = linkwatch.answer_of(run_dir, zone, token)
        if ans is not None:
            last[:] = [ans]
            if ans.get("owed") is None:
                return True
        return False if linkwatch.watching(run_dir) is None else None

    done, waited = poll_until(look, bound_s)
    if done:
        if waited > POLL_S:
            log.info("link baseline: %s's on record after %.1f s (as `harness chaos` read the records)", zone, waited)
        return None
    owed = f": {last[0].get('owed')}" if last and last[0].get("owed") else ""
    why = "the process answering stopped" if done is False else ("still owed" if last else "no answer")
    note = (f"gave up waiting for {zone}'s link baseline ({why} after {waited:.1f} s{owed}): degraded anyway, "
            "the verdict says what that leaves unverified")  # fmt: skip
    log.warning("link baseline: %s", note)
    return note


def clear_link(zone: str, configuration: dict[str, Any] | None = None) -> None:
    """Rollback of `degrade_link` (idempotent)."""
    b = _backend(configuration)
    dispatch(b, "clear_link", {"zone": _zone(b, zone, configuration)})


def partition_zone(zone: str, duration_s: float = 10.0, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cut the zone's service link for `duration_s`.

    The zone's shop needs postgres, which lives only in the Region, so its users
    cannot be served while the link is cut: the fault is recorded with
    `entry_down`, and the verdict reports those requests apart from the budget
    while it checks that the other zones are untouched and this one recovers.

    The restore is recorded just before the heal (recovery is measured from
    there); the action then waits until the zone's pods are Ready again: their
    readiness depends on postgres, and Envoy keeps an ejected postgres host out
    for a growing time after repeated ejections, so "healed" and "whole" differ.
    """
    b = _backend(configuration)
    zone = _zone(b, zone, configuration)
    services = _zone_services(b, zone)
    fault = _fault_id("partition", zone)
    _held_fault(
        b, "partition_zone", {"zone": zone}, fault, "partition_zone", zone, FaultKind.PARTITION, duration_s,
    )  # fmt: skip
    healed = time.time()
    _snapshot(b, f"restore {fault}")
    wait_ready(b, zone, services)
    return {"fault": fault, "zone": zone, "whole_after_heal_s": round(time.time() - healed, 3)}


def heal_zone(zone: str, configuration: dict[str, Any] | None = None) -> None:
    """Rollback of `partition_zone` (idempotent)."""
    b = _backend(configuration)
    dispatch(b, "heal_zone", {"zone": _zone(b, zone, configuration)})


def kill_pod_burst(
    zones: str | list[str],
    service: str,
    count: int = 20,
    interval_s: float = 1.0,
    settle_s: float = 2.0,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A burst of `count` pod kills of `service`, round robin over `zones`, one every `interval_s`.

    Each kill is its own fault (its own failover and recovery in the verdict).
    Kills in different zones overlap; a zone is killed again only after its
    previous replacement was ready and `settle_s` more passed (the recovery
    and the coverage after it are measured up to the next fault in the zone,
    so back-to-back faults in one zone would leave nothing to measure). Each
    restore is recorded at the replacement's `ready` inventory event, as in
    `kill_pod`, so its time does not depend on when this loop looked.
    """
    b = _backend(configuration)
    if count < 1 or interval_s < 0 or settle_s < 0:
        raise BackendError("kill_pod_burst: count >= 1, interval_s >= 0 and settle_s >= 0")
    items = zones if isinstance(zones, list) else [zones]
    names: list[str] = []
    for item in items:
        try:
            z = resolve_zone(item, topology_of(b), configuration)
        except RoleError as exc:
            raise BackendError(str(exc)) from None
        names += [x for x in (z if isinstance(z, list) else [z]) if x not in names]
    if not names:
        raise BackendError("kill_pod_burst: no zone")
    b.require_capability("kill_pod")
    pending: dict[str, tuple[str, dict[str, Any], set[str]]] = {}
    free_at: dict[str, float] = {}
    done: list[dict[str, Any]] = []

    def finish(zone: str) -> None:
        fault, inject, gone = pending.pop(zone)
        ready_ts = wait_replacement_ready(b, zone, service, gone)
        record(fault, "restore", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service], ts=ready_ts)
        _snapshot(b, f"restore {fault}")
        free_at[zone] = max(ready_ts, time.time()) + settle_s
        done.append({"fault": fault, "zone": zone, "killed": sorted(gone),
                     "replaced_after_s": round(ready_ts - inject["ts"], 3)})  # fmt: skip

    try:
        for i in range(count):
            zone = names[i % len(names)]
            if zone in pending:
                finish(zone)
            wait = free_at.get(zone, 0.0) - time.time()
            if wait > 0:
                nap(wait)
            fault = _fault_id("kill-pod", zone, service)
            _snapshot(b, f"before {fault}")
            inject = record(fault, "inject", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service])
            try:
                gone = set(dispatch(b, "kill_pod", {"zone": zone, "service": service}))
            except BaseException:
                record(fault, "restore", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service])
                raise
            pending[zone] = (fault, inject, gone)
            _snapshot(b, f"inject {fault}")
            if i < count - 1:
                nap(interval_s)
    finally:
        for zone in list(pending):
            finish(zone)
    return {"kills": len(done), "zones": names, "faults": done}


PRIMITIVE_OF: dict[str, str] = {
    "kill_pod": "kill_pod",
    "kill_pod_burst": "kill_pod",
    "make_unready": "set_pod_unready",
    "make_ready": "set_pod_unready",
    "kill_node": "kill_node",
    "restore_node": "kill_node",
    "zone_outage": "zone_outage",
    "restore_zone": "zone_outage",
    "degrade_link": "set_link",
    "clear_link": "set_link",
    "partition_zone": "partition_zone",
    "heal_zone": "partition_zone",
}
"""The backend primitive (`Backend.capabilities()` names) each action needs, restores included."""
RESTORES = frozenset({"make_ready", "restore_node", "restore_zone", "clear_link", "heal_zone"})
"""The actions that undo a fault (rollbacks, idempotent): they begin none."""

# The extension's public face: what an experiment's `provider.func` may name, and the helpers the CLI and the
# probes share. Everything else (underscored) is internal.
__all__ = [
    "PRIMITIVE_OF",
    "RESTORES",
    "clear_link",
    "close_backends",
    "degrade_link",
    "heal_zone",
    "kill_node",
    "kill_pod",
    "kill_pod_burst",
    "make_ready",
    "make_unready",
    "partition_zone",
    "poll_until",
    "ready_services",
    "restore_node",
    "restore_zone",
    "wait_ready",
    "wait_replacement_ready",
    "zone_outage",
]
