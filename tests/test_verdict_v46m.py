"""Broken meshes the verdict passed (hunt v46m), each next to its control.

Each case is a synthetic run (harness.verify.synth) with the defect planted as a real cluster records it; each
docstring's "HOLE." says how the verdict passed it before the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import envoy_start, rebuilt, rows, verify, write_rows

# a failover over maxFailoverS (5 s): the kill's hops fail for 5.1 s, the last failed one 72 ms past it
SLOW = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 5.1, 1.0)
# within it
QUICK = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)
BEHIND = -1.0  # a node clock a second behind the runner's (an EKS node whose chrony lost its source)
LAX_N2 = f"{T.short(LAX)}-n2"


def _node(zone: str) -> str:
    """The node synth places every pod of `zone` on."""
    return f"{T.short(zone)}-n1"


def _move_to_second_node(d: Path, zone: str, service: str) -> list[str]:
    """`service`'s pods in `zone` run on a second node of the zone (the inventory says so); their names."""
    inv = rows(d / "inventory.jsonl")
    moved = sorted({e["pod"] for e in inv if e["zone"] == zone and e["service"] == service})
    write_rows(d / "inventory.jsonl", [{**e, "node": LAX_N2} if e["pod"] in moved else e for e in inv])
    return moved


def _skew_pods(d: Path, pods: list[str], offset_s: float) -> None:
    """The access-log lines of `pods` stamped by their node's clock, `offset_s` off the runner's."""
    from datetime import UTC, datetime

    for pod in pods:
        f = d / "accesslogs" / f"{pod}.jsonl"
        if not f.is_file():
            continue
        recs = rows(f)
        for r in recs:
            at = datetime.fromtimestamp(envoy_start(r) + offset_s, UTC)
            r["start_time"] = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        write_rows(f, recs)
    rebuilt(d)


def _clock(d: Path, logged_on: dict[str, list[tuple[str, str, float]]]) -> None:
    """clock.jsonl as the harness writes it on EKS: three probes per zone and batch, each logged halfway through
    its 4 ms round trip by the sidecars `logged_on[zone]` names ((pod, node, that node's offset)); a zone not
    named is logged by its frontend on its one node, on the runner's clock."""
    ts = [r["ts"] for r in rows(d / "requests.jsonl")]
    start, end = min(ts), max(ts)
    recs: list[dict[str, Any]] = [{"ts": start - 2, "event": "clock", "runner_clock": "separate", "why": "test"}]
    for zone in [z.name for z in T.zones]:
        loggers = logged_on.get(zone, [(f"frontend-{zone}", _node(zone), 0.0)])
        for batch, at in (("start", start - 1.0), ("end", end + 1.0)):
            for i in range(3):
                t0 = at + i * 0.05
                probe = f"{zone}-{batch}-{i}"
                recs.append({"ts": t0, "event": "sent", "batch": batch, "zone": zone, "probe": probe, "sent": t0,
                             "received": t0 + 0.004, "status": 200, "error": None})  # fmt: skip
                for pod, node, offset in loggers:
                    logged = int((t0 + 0.002 + offset) * 1000) / 1000  # START_TIME: whole ms, truncated
                    recs.append({"ts": t0 + 0.004, "event": "logged", "batch": batch, "probe": probe, "pod": pod,
                                 "zone": zone, "node": node, "logged": logged, "start_time": ""})  # fmt: skip
    write_rows(d / "clock.jsonl", recs)
    rebuilt(d)


def _lax_public_api_on_its_own_node(tmp_path: Path, name: str, fault: FaultSpec, offset_s: float) -> Path:
    """LAX's public-api on a second node of the zone whose clock is `offset_s` off the runner's; the clock probes
    measured LAX on its frontend's node only (they go one after the other on one connection: one frontend)."""
    d = write_run(tmp_path / name, Scenario(T, duration_s=90, rate_per_zone=4, faults=[fault]))
    moved = _move_to_second_node(d, LAX, "public-api")
    _skew_pods(d, moved, offset_s)
    _clock(d, {})
    return d


# -- 1. a node whose clock no probe measured, corrected by another node's offset -----------------------------------
def test_hops_stamped_by_a_node_no_clock_probe_measured_are_unverified(tmp_path: Path) -> None:
    """HOLE. On EKS a hop's time is Envoy's START_TIME on its caller's node, and the verifier puts it on the
    runner's clock by its zone's measured offset. The probes measure the nodes whose sidecars logged them (the
    zone's frontend, one after the other on one connection); LAX's public-api ran on a second node whose clock
    ran a second behind, never measured, and its hops were "corrected" by the frontend node's offset (0) and
    judged a second early: a failover 72 ms over maxFailoverS, and the 21 user requests it lost, looked within
    it (availability took them for the failover's), and the verdict passed with the clock check saying LAX was
    bounded. Each node whose sidecars made hops must be one the probes measured;
    hops of another are unverified."""
    assert not verify(_lax_public_api_on_its_own_node(tmp_path, "truth", SLOW, 0.0)).passed  # on one clock: fails
    v = verify(_lax_public_api_on_its_own_node(tmp_path, "skewed", SLOW, BEHIND))
    assert not v.passed, why(v)
    assert COVERAGE in failed(v), why(v)
    cov = v.invariant(COVERAGE)
    check = next(c for c in cov.checks if c.subject == f"clock {LAX}")
    assert check.status == "unverified" and LAX_N2 in check.message, check.message


def test_control_every_node_that_made_hops_measured_passes(tmp_path: Path) -> None:
    """The control: the same zone of two nodes, the probes logged on both (the frontend's and the public-api's
    sidecars: a probe's /api call reaches both), each node's offset measured: the correct mesh passes, and the
    clock check names both nodes."""
    d = write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[QUICK]))
    _move_to_second_node(d, LAX, "public-api")
    _clock(d, {LAX: [(f"frontend-{LAX}", _node(LAX), 0.0), (f"public-api-{LAX}", LAX_N2, 0.0)]})
    v = verify(d)
    assert v.passed, why(v)
    check = next(c for c in v.invariant(COVERAGE).checks if c.subject == f"clock {LAX}")
    assert check.status == "pass" and set(check.detail["nodes"]) == {_node(LAX), LAX_N2}, check
