"""A node fault on kind/EKS: the API shows the dead node's pods Ready until long after the fault.

On a real cluster (kind: `docker stop` of the node's container for ~10 s) the
node controller marks a dead node's pods not Ready only after its grace period
(40-50 s), longer than the fault; the inventory, a watch of the API, so shows
them Ready through the whole fault, and after the restore the booting kubelet
sets them unready, they get a new IP (`ip`) and are `ready` again. The local
backend used to write them `removed` at the inject (the "local" shape below:
older runs); it now records them as kind does. The verifier takes the pods'
death from the chaos record (`rundata._node_fault_pods`): both shapes of the
same mesh get the same verdict.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from harness.verify import FALLBACK, HUB_AND_SPOKE
from harness.verify.invariants.faults import FaultMeasurer
from harness.verify.rundata import load_run
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import LAX, failed, run
from tests.verdicts import envoy_start, verify
from tests.verdicts import rows as _rows
from tests.verdicts import write_rows as _write

NODE = "lax-1a-n2"  # LAX's product-api runs alone on this node (the synthetic zone's other pods on lax-1a-n1)
INJECT, RESTORE = 30.0, 45.0


def node_kill(
    tmp_path: Path,
    shape: str,
    name: str = "run",
    zone: str = LAX,
    node: str = NODE,
    grace: float | None = None,
    service: str = "product-api",
    failover_s: float = 0.5,
    **kw: Any,
) -> Path:
    """A kill_node of the node running LAX's `service` (product-api), the inventory written as `shape` records it.

    local: the pod is `removed` at the inject and a replacement (new pod, new IP) is ready at the restore.
    kind: the pod stays Ready through the fault; after the restore it is unready, gets a new IP, is ready.
    The mesh is the same: hops to product-api fail for `failover_s` (0.5 s), then go to the Region until 1 s after
    the restore.
    `grace`: a fault longer than the node grace period: the API marks the pod not Ready this long after the
    inject (kind: then as above after the restore; local: the dead-node model writes it unready, and at the
    restore `removed` with its replacement, as the "local" shape).
    """
    f = FaultSpec("kill-node", "service-down", zone, (service,), INJECT, RESTORE, failover_s, 1.0)
    d = run(tmp_path, name, faults=[f], **{"rate_per_zone": 10, **kw})
    chaos = _rows(d / "chaos.jsonl")
    for c in chaos:
        c.update(action="kill_node", node=node)
    _write(d / "chaos.jsonl", chaos)
    inv = _rows(d / "inventory.jsonl")
    t0 = chaos[0]["ts"] - INJECT
    old = next(e for e in inv if e["zone"] == zone and e["service"] == service and e["event"] == "added")
    for e in inv:
        if e["pod"] == old["pod"]:
            e["node"] = node
    if shape == "kind":
        new = next(e for e in inv if e["zone"] == zone and e["service"] == service and e["ts"] > t0 + INJECT
                   and e["event"] == "added")  # fmt: skip
        restore = t0 + RESTORE
        keep = [
            e for e in inv
            if e["pod"] != new["pod"] and not (e["pod"] == old["pod"] and e["event"] == "removed")
            and not (e["service"] == "batch-job" and e["ip"] == old["ip"])  # the old IP is not handed on
        ]  # fmt: skip
        late = [
            {**old, "ts": restore + 0.1, "event": "unready"},
            {**old, "ts": restore + 0.2, "event": "ip", "ip": new["ip"]},
            {**old, "ts": restore + 0.3, "event": "ready", "ip": new["ip"]},
        ]
        inv = keep + late
        # the replacement's records are the old pod's (kind restarts the same pod)
        for path in [*(d / "accesslogs").glob("*.jsonl"), d / "upstream-stats.jsonl"]:
            path.write_text(path.read_text().replace(new["pod"], old["pod"]))
        moved = d / "accesslogs" / f"{old['pod']}.jsonl"
        src = d / "accesslogs" / f"{new['pod']}.jsonl"
        if src.exists():
            moved.write_text((moved.read_text() if moved.exists() else "") + src.read_text())
            src.unlink()
    elif grace is not None:  # the dead-node model: removed at the restore, not at the inject
        for e in inv:
            if e["pod"] == old["pod"] and e["event"] == "removed":
                e["ts"] = t0 + RESTORE
    if grace is not None:
        assert grace < RESTORE - INJECT
        inv.append({**old, "ts": t0 + INJECT + grace, "event": "unready"})
    _write(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d


def _pass_with_the_same_figures(a: Path, b: Path) -> None:
    """Both runs pass, with the same failover, recovery and losses per fault."""
    figures = []
    for d in (a, b):
        v = verify(d)
        assert v.passed, why(v)
        figures.append([(f.failover_s, f.recovery_s, f.lost_requests, f.lost_hops) for f in v.faults])
    assert figures[0] == figures[1]


def _move_ip(d: Path, old: str, new: str, after: float) -> None:
    """Envoy's records name the pod's new IP from `after` on (its sandbox was re-created on the restarted node)."""
    for path in (d / "accesslogs").glob("*.jsonl"):
        rows = _rows(path)
        for r in rows:
            at = datetime.fromisoformat(r["start_time"].replace("Z", "+00:00")).timestamp()
            if at >= after and (r.get("upstream_host") or "").startswith(old + ":"):
                r["upstream_host"] = new + r["upstream_host"][len(old) :]
        _write(path, rows)
    stats = _rows(d / "upstream-stats.jsonl")
    for r in stats:
        if r["ts"] >= after and r["host"].startswith(old + ":"):
            r["host"] = new + r["host"][len(old) :]
    _write(d / "upstream-stats.jsonl", stats)


def _on_killed_node(d: Path, service: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The run's fault becomes a kill_node of NODE, and LAX's first `service` pod runs on it: (inventory, pod)."""
    chaos = _rows(d / "chaos.jsonl")
    for c in chaos:
        c.update(action="kill_node", node=NODE)
    _write(d / "chaos.jsonl", chaos)
    inv = _rows(d / "inventory.jsonl")
    dead = next(e for e in inv if e["zone"] == LAX and e["service"] == service and e["event"] == "added")
    for e in inv:
        if e["pod"] == dead["pod"]:
            e["node"] = NODE
    return inv, dead


def replica_node_kill(tmp_path: Path, shape: str, name: str = "run") -> Path:
    """A kill_node of the node running one of LAX's two product-api replicas; the other carries on.

    No service is lost (the chaos record lists none), but with one of two replicas healthy Envoy spills
    30 % of LAX's product-api hops to the Region (`rundata.spills`) until the dead replica is ready again.
    local: the replica is unready from the inject to just after the restore. kind: the inventory shows it
    Ready through the fault; after the restore it is unready, gets a new IP, is ready again.
    """
    f = FaultSpec("kill-node-lax", "service-down", LAX, (), INJECT, RESTORE, 0.0, 0.0)
    sc = Scenario(
        _with_replicas("product-api", 2), duration_s=90, rate_per_zone=10, faults=[f],
        degraded=[(LAX, "product-api", INJECT, RESTORE + 0.3)], degraded_recorded=shape == "local",
    )  # fmt: skip
    d = write_run(tmp_path / name, sc)
    inv, dead = _on_killed_node(d, "product-api")
    if shape == "kind":
        restore, new_ip = sc.start + RESTORE, "10.213.9.250"
        inv += [
            {**dead, "ts": restore + 0.1, "event": "unready"},
            {**dead, "ts": restore + 0.2, "event": "ip", "ip": new_ip},
            {**dead, "ts": restore + 0.3, "event": "ready", "ip": new_ip},
        ]
        inv.sort(key=lambda e: e["ts"])
        _move_ip(d, dead["ip"], new_ip, restore + 0.2)
    _write(d / "inventory.jsonl", inv)
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d


def _spill(d: Path) -> list[tuple[float, float | None]]:
    return load_run(d).spill.get((LAX, "product-api"), [])


def test_a_replica_on_a_killed_node_spills_from_the_inject_also_when_the_api_shows_it_ready(tmp_path: Path) -> None:
    """kind shape: without the node fault's implied unready the zone's product-api read whole through the
    fault, so the Region-served 30 % Envoy spills by design failed locality (41 of 897 hops "served
    elsewhere while the zone's product-api was healthy"). The local shape of the same mesh passes."""
    local, kind = (replica_node_kill(tmp_path, shape, shape) for shape in ("local", "kind"))
    for d in (local, kind):
        v = verify(d)
        assert v.passed, why(v)
    t0 = _rows(local / "chaos.jsonl")[0]["ts"] - INJECT
    assert _spill(kind) == _spill(local) == [(t0 + INJECT, t0 + RESTORE + 0.3)]


def test_a_local_node_kill_is_judged_from_its_own_inventory(tmp_path: Path) -> None:
    """Older local runs record the dead pods themselves at the inject (`removed`, or `unready`): the unready
    the fault implies at the inject is a no-op, and the verdict is the inventory's own."""
    for shape, build in (("removed", node_kill), ("unready", replica_node_kill)):
        d = build(tmp_path, "local", shape)
        r = load_run(d)
        pods = r.con.execute("SELECT pod FROM node_fault_pods").fetchall()
        assert pods and all(p.startswith("product-api-lax") for (p,) in pods), pods
        v = verify(d)
        assert v.passed, why(v)


def test_a_kind_node_kill_is_measured_like_the_local_one(tmp_path: Path) -> None:
    """LAX's only product-api on the killed node: the same failover and recovery from either inventory; the
    zone's product-api is down from the inject until the restarted pod is ready (kind: restore + 0.3 s)."""
    local, kind = (node_kill(tmp_path, shape, shape) for shape in ("local", "kind"))
    _pass_with_the_same_figures(local, kind)
    t0 = _rows(kind / "chaos.jsonl")[0]["ts"] - INJECT
    assert load_run(kind).down[(LAX, "product-api")] == [(t0 + INJECT, t0 + RESTORE + 0.3)]


@pytest.mark.parametrize(
    ("misconfig", "invariant"), [("failover-to-lz", HUB_AND_SPOKE), ("missing-failover", FALLBACK)]
)
@pytest.mark.parametrize("shape", ["local", "kind"])
def test_a_broken_mesh_still_fails_a_node_kill(tmp_path: Path, shape: str, misconfig: str, invariant: str) -> None:
    """The implied readiness excuses nothing the mesh did wrong: a failover to another Local Zone, or none."""
    v = verify(node_kill(tmp_path, shape, misconfig=misconfig))
    assert not v.passed
    assert invariant in failed(v), why(v)


def _hang_on_the_dead_pod(d: Path, caller_zone: str, dead_ip: str, lo: float, hi: float) -> int:
    """Region callers in `caller_zone` still send product-api calls to the killed AZ pod in [lo, hi): they fail
    (`503 UF`, the dead node answers nothing) and so do their users' requests. Returns how many."""
    n = 0
    for path in (d / "accesslogs").glob(f"public-api-{caller_zone.removeprefix('us-west-')}-*.jsonl"):
        rows = _rows(path)
        for r in rows:
            at = datetime.fromisoformat(r["start_time"].replace("Z", "+00:00")).timestamp()
            if lo <= at < hi and r["path"] == "/product-api":
                r.update(upstream_host=f"{dead_ip}:9090", response_code=503, response_flags="UF", duration=1000)
                n += 1
        _write(path, rows)
    reqs = _rows(d / "requests.jsonl")
    for r in reqs:
        if r["zone"] == caller_zone and lo <= r["ts"] < hi:
            r.update(status=503, ok=False)
    _write(d / "requests.jsonl", reqs)
    return n


def test_calls_to_a_killed_az_pod_are_the_detection_delay_also_while_the_api_shows_it_ready(tmp_path: Path) -> None:
    """az-node-loss: the node running us-west-2a's product-api is stopped; us-west-2b's callers spread over
    the Region's pods and keep sending to the dead one for 0.6 s. Those losses are the mesh's detection delay
    (`FaultMeasurer._detection`: reported apart from availability's budget, not charged to it). It found the
    killed pods by the IPs whose holding ended in the fault: on kind the old IP is let go only after the
    restore, so it found none (no span) and every such loss was charged. Both shapes now give the same span."""
    az, other = "us-west-2a", "us-west-2b"
    spans = {}
    for shape in ("local", "kind"):
        d = node_kill(tmp_path, shape, shape, zone=az, node="2a-n2")
        t0 = _rows(d / "chaos.jsonl")[0]["ts"] - INJECT
        dead = next(e for e in _rows(d / "inventory.jsonl") if e["zone"] == az and e["service"] == "product-api")
        assert _hang_on_the_dead_pod(d, other, dead["ip"], t0 + INJECT, t0 + INJECT + 0.6) > 3
        r = load_run(d)
        found = [s for s in FaultMeasurer(r)._detection(r.faults[0]) if s.zone == other]
        assert [(s.upstream, s.killed_ips) for s in found] == [("product-api", (dead["ip"],))], (shape, found)
        spans[shape] = found[0].until - found[0].start
    assert spans["local"] == spans["kind"]
    assert 0.5 < spans["kind"] < 0.6


def test_calls_to_a_killed_pod_of_a_service_the_zone_kept_are_the_detection_delay(tmp_path: Path) -> None:
    """A two-node AZ loses one node: its services keep an instance on the other, so kill_node's record lists
    no lost service, yet the calls Envoy still sends the dead node's pods fail all the same. `_detection` took
    only the services the fault left with no instance: those losses were charged to availability's budget
    (a wide-topology az-node-loss on the local backend's dead-node model: 36 of 541 requests, a correct mesh
    failed). Every service the fault killed a pod of (`node_fault_pods`) is now detected."""
    az, other = "us-west-2a", "us-west-2b"
    d = node_kill(tmp_path, "kind", zone=az, node="2a-n2")
    chaos = _rows(d / "chaos.jsonl")
    for c in chaos:
        c["services"] = []  # the zone kept an instance of every service elsewhere
    _write(d / "chaos.jsonl", chaos)
    t0 = chaos[0]["ts"] - INJECT
    dead = next(e for e in _rows(d / "inventory.jsonl") if e["zone"] == az and e["service"] == "product-api")
    lost = _hang_on_the_dead_pod(d, other, dead["ip"], t0 + INJECT, t0 + INJECT + 0.6)
    assert lost > 3
    r = load_run(d)
    found = [s for s in FaultMeasurer(r)._detection(r.faults[0]) if s.zone == other]
    assert [(s.upstream, s.killed_ips) for s in found] == [("product-api", (dead["ip"],))], found
    v = verify(d)
    (window,) = [w for i in v.invariants for w in i.windows if w.window.startswith("fault ")]
    # reported apart, not charged (the synthetic mesh's own losses in the killed AZ are another matter)
    (zone,) = [z for z in window.by_zone if z["zone"] == other]
    assert window.failover_under_way >= lost and zone["failed"] == 0, (window, why(v))


def _entry_replica_node_kill(tmp_path: Path) -> tuple[Path, float]:
    """kind shape: the node running one of LAX's two frontends is stopped; the other carries the zone's entry.
    The API (so the entry point's endpoints) lists the dead one Ready until after the restore."""
    f = FaultSpec("kill-node-lax", "service-down", LAX, (), INJECT, RESTORE, 0.0, 0.0)
    sc = Scenario(_with_replicas("frontend", 2), duration_s=90, rate_per_zone=10, faults=[f])
    d = write_run(tmp_path / "run", sc)
    inv, dead = _on_killed_node(d, "frontend")
    inv.append({**dead, "ts": sc.start + RESTORE + 0.1, "event": "unready"})
    _write(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))
    # a dead frontend calls nobody: the model, which does not know of the node, had it carry on
    log = d / "accesslogs" / f"{dead['pod']}.jsonl"
    _write(log, [r for r in _rows(log) if not sc.start + INJECT <= envoy_start(r) < sc.start + RESTORE])
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d, sc.start


@pytest.mark.parametrize("answer", ["none", "http-503"])
def test_users_the_entry_still_sends_to_a_killed_frontend_are_reported_apart_only_when_nothing_answered(
    tmp_path: Path, answer: str
) -> None:
    """One of LAX's two frontends dies with its node; the zone's entry point stays up (the other serves it) and
    keeps sending some users to the dead one until the API lets it go (kube-proxy, an ALB, the local entry):
    they get no answer at all. Before, they were charged to the budget (one in five of an AZ's requests on the
    local backend's dead-node model, a correct mesh failed). A user who got an HTTP error got it from a live
    frontend: the mesh's, still counted."""
    d, t0 = _entry_replica_node_kill(tmp_path)
    reqs = _rows(d / "requests.jsonl")
    hit = [r for r in reqs if r["zone"] == LAX and t0 + INJECT <= r["ts"] < t0 + RESTORE][::3]
    for r in hit:
        if answer == "none":
            r.update(status=0, ok=False, error="no response: connection closed.", latency_ms=1000.0)
        else:
            r.update(status=503, ok=False, error="HTTP 503")
    _write(d / "requests.jsonl", reqs)
    v = verify(d)
    (window,) = [w for i in v.invariants for w in i.windows if w.window.startswith("fault ")]
    (zone,) = [z for z in window.by_zone if z["zone"] == LAX]
    assert len(hit) > 20
    if answer == "none":
        assert v.passed, why(v)
        assert window.excluded_requests >= len(hit) and zone["failed"] == 0
    else:
        assert not v.passed and zone["failed"] == len(hit) and window.excluded_requests == 0, why(v)


@pytest.mark.parametrize("shape", ["local", "kind"])
def test_a_node_fault_longer_than_the_grace_period_is_judged_as_a_short_one(tmp_path: Path, shape: str) -> None:
    """A fault that outlasts the node grace period (`local.nodeGracePeriodS` 3 s here; 40-50 s on a cluster):
    the API marks the dead pod not Ready mid-fault. That record used to stand (`_node_fault_pods` implied an
    unready at the inject only when the inventory had none in the fault), so the zone's product-api read up
    for the first 3 s of the fault. It was dead from the inject: it is down from the inject, and the verdict
    and its figures are those of the same mesh when the API said nothing until the restore."""
    short, long = node_kill(tmp_path, shape, "short"), node_kill(tmp_path, shape, "long", grace=3.0)
    _pass_with_the_same_figures(short, long)
    r = load_run(long)
    t0 = _rows(long / "chaos.jsonl")[0]["ts"] - INJECT
    assert load_run(short).down[(LAX, "product-api")] == r.down[(LAX, "product-api")]
    assert r.down[(LAX, "product-api")][0][0] == t0 + INJECT


@pytest.mark.parametrize("misconfig", ["failover-to-lz", "missing-failover"])
def test_a_broken_mesh_fails_a_node_fault_longer_than_the_grace_period(tmp_path: Path, misconfig: str) -> None:
    """The API's own unready mid-fault excuses nothing: no failover, or one to another Local Zone, still fails."""
    v = verify(node_kill(tmp_path, "kind", grace=3.0, misconfig=misconfig))
    assert not v.passed, why(v)
