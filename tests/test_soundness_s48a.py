"""A pod a fault took down that came back Ready but that the mesh never took back into service (s48a).

Recovery is judged by where a pair's hops went: an edge zone's in the zone, an availability zone's anywhere in
the Region (Consul CE spreads a Region caller's calls over every AZ's pods). So an AZ's product-api that came back
Ready after its kill, and that no caller ever called again (its endpoint never back in their Envoys), passed at
once: the other AZ's pod served every hop, in the Region. So did a Local Zone of two product-api replicas whose
one replacement was never used beside the other. Each case is a correct synthetic run (harness.verify.synth)
whose access logs are edited the way such a mesh logs: every call the returning pod should have had went to its
peer instead, and its peer's upstream counters with them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.topology import Topology, load_topology
from harness.verify import FALLBACK, Verdict
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.verdicts import rebuilt, rows, verify, write_rows

T = load_topology()
LAX, AZ = "us-west-2-lax-1a", "us-west-2a"
KILL_AZ = FaultSpec("kill-product-api-2a", "service-down", AZ, ("product-api",), 30, 50, 0.2, 1.0)
KILL_LAX = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


def _with_replicas(service: str, n: int) -> Topology:
    services = tuple(s.model_copy(update={"replicas": n}) if s.name == service else s for s in T.services)
    return T.model_copy(update={"services": services})


def _failed(v: Verdict) -> set[str]:
    return {i.name for i in v.invariants if not i.passed}


def _message(v: Verdict, name: str) -> str:
    return next(i.message for i in v.invariants if i.name == name)


def _replacements(d: Path, zone: str, service: str, after: float) -> list[dict[str, Any]]:
    """The `added` records of `service`'s pods in `zone` the restore brought (added at or after `after`)."""
    return [
        e
        for e in rows(d / "inventory.jsonl")
        if e["event"] == "added" and e["zone"] == zone and e["service"] == service and e["ts"] >= after
    ]


def _left_out(d: Path, gone: dict[str, Any], peer: dict[str, Any], callers: str, port: int) -> int:
    """Every call `callers`' sidecars (files named `<callers>*`) sent to `gone` goes to `peer` instead, in their
    access logs and their upstream counters: the mesh never took `gone` back. Returns the lines moved."""
    old, new = f"{gone['ip']}:{port}", f"{peer['ip']}:{port}"
    moved = 0
    for f in (d / "accesslogs").glob(f"{callers}*.jsonl"):
        lines = rows(f)
        for r in lines:
            if r.get("upstream_host") == old:
                r["upstream_host"] = new
                moved += 1
        write_rows(f, lines)
    stats = rows(d / "upstream-stats.jsonl")
    for r in stats:
        if r["host"] == old and r["pod"].startswith(callers):
            for k in ("cx_total", "rq_total", "cx_active", "rq_active"):
                r[k] = 0
    write_rows(d / "upstream-stats.jsonl", stats)
    rebuilt(d)
    return moved


def _az_run(tmp_path: Path, name: str) -> Path:
    return write_run(tmp_path / name, Scenario(T, duration_s=140, rate_per_zone=4, faults=[KILL_AZ], accesslogs="kind"))


def _az_left_out(d: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """us-west-2a's one product-api replacement (the restore's) and the us-west-2b pod to move its calls to."""
    gone = _replacements(d, AZ, "product-api", Scenario(T).start + KILL_AZ.restore)  # type: ignore[operator]
    peer = next(e for e in rows(d / "inventory.jsonl") if e["zone"] == "us-west-2b" and e["service"] == "product-api")
    assert len(gone) == 1
    return gone[0], peer


def _edge_run(tmp_path: Path, name: str) -> Path:
    sc = Scenario(_with_replicas("product-api", 2), duration_s=140, rate_per_zone=4, faults=[KILL_LAX],
                  accesslogs="kind")  # fmt: skip
    return write_run(tmp_path / name, sc)


def _az_case(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    d = _az_run(tmp_path, "left-out")
    return (d, *_az_left_out(d))


def _edge_case(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    d = _edge_run(tmp_path, "left-out")
    gone, peer = _replacements(d, LAX, "product-api", Scenario(T).start + KILL_LAX.restore)  # type: ignore[operator]
    return d, gone, peer


@pytest.mark.parametrize(
    ("case", "zone", "callers", "moved"),
    [
        pytest.param(_az_case, AZ, "public-api-2a", 100, id="an-az-instance-never-taken-back-after-its-kill"),
        pytest.param(_edge_case, LAX, "public-api-lax-1a", 50, id="an-edge-replacement-never-used-beside-its-peer"),
    ],
)
def test_a_pod_never_taken_back_after_its_kill_fails(
    tmp_path: Path, case: Callable[[Path], tuple[Path, dict[str, Any], dict[str, Any]]], zone: str, callers: str,
    moved: int,
) -> None:  # fmt: skip
    """A killed product-api's replacement is Ready at the restore (30-50 s), but its zone's public-api never calls
    it again: every call it should have had goes to its peer.
    - an AZ: us-west-2a's replacement; for the 90 s to the end of the run no Region caller calls it, us-west-2b's
      pod serves every one of their hops. Every hop was served in the Region, so recovery ("back where it
      belongs": the Region) passed at once. Real Envoy spreads the Region callers' calls over both AZs' pods:
      none of 440 for one of two is a chance of 2^-440.
    - an edge zone: LAX runs two product-api replicas; both are killed and both replacements are Ready at the
      restore, but LAX's public-api only ever calls one of them again. Every hop is in the zone, both pods are
      Ready (no spill to expect), so recovery and locality passed with the zone one instance short."""
    d, gone, peer = case(tmp_path)
    assert _left_out(d, gone, peer, callers, 9090) > moved
    v = verify(d)
    assert _failed(v) == {FALLBACK}
    msg = _message(v, FALLBACK)
    assert f"{gone['pod']} in {zone}" in msg and "never came back into service" in msg


def test_an_az_instance_taken_back_after_its_kill_passes(tmp_path: Path) -> None:
    """Control: the same run as the mesh logs it, the replacement called again after the restore."""
    v = verify(_az_run(tmp_path, "taken-back"))
    assert v.passed, [i.message for i in v.invariants if not i.passed]


def test_edge_replacements_both_used_pass(tmp_path: Path) -> None:
    """Control: the same run as the mesh logs it, each replacement serving about half of LAX's calls."""
    v = verify(_edge_run(tmp_path, "both-used"))
    assert v.passed, [i.message for i in v.invariants if not i.passed]


def test_a_pod_left_out_until_the_run_ends_before_max_recovery_makes_no_claim(tmp_path: Path) -> None:
    """Control: the same left-out replacement in a run that ends 20 s after the restore, before maxRecoveryS
    (60 s) had passed: a mesh slow to take it back would still be within the SLO, so nothing is claimed (the
    recovery of the pair, in the Region at once, passes as before)."""
    sc = Scenario(T, duration_s=70, rate_per_zone=4, faults=[KILL_AZ], accesslogs="kind")
    d = write_run(tmp_path / "short", sc)
    gone, peer = _az_left_out(d)
    assert _left_out(d, gone, peer, "public-api-2a", 9090) > 50
    v = verify(d)
    assert v.passed, [i.message for i in v.invariants if not i.passed]
