"""One reading of readiness (d49c): each pod's ready spans and each zone's outages come from one pass.

`FaultMeasurer._pods_left_out` (s48a) read the pods' ready spans with a query of its own beside
`rundata._readiness`, which reads the zones' down and spill intervals: two readings of the same inventory
that differed at the edges (an older inventory's node fault: the one counted its pods ready throughout, the
other never ready again). Now `_readiness` records each pod's spans (`RunData.pod_ready`) in the pass that
reads the zones' outages, and `_pods_left_out` reads those.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from harness.topology import Topology, load_topology
from harness.verify import FALLBACK
from harness.verify.rundata import PodReady, RunData, load_run
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_soundness_s48a import _left_out
from tests.verdicts import rows, verify

T = load_topology()
AZ, LAX = "us-west-2a", "us-west-2-lax-1a"


def _two_product_apis() -> Topology:
    services = tuple(s.model_copy(update={"replicas": 2}) if s.name == "product-api" else s for s in T.services)
    return T.model_copy(update={"services": services})


def _down_from_pods(pods: list[PodReady]) -> list[tuple[float, float | None]]:
    """Where none of `pods` was ready, after the first of them was: the gaps of their spans' union."""
    merged: list[list[float]] = []
    for lo, hi in sorted(s for p in pods for s in p.spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    gaps: list[tuple[float, float | None]] = [(a[1], b[0]) for a, b in pairwise(merged)]
    if merged and merged[-1][1] != float("inf"):
        gaps.append((merged[-1][1], None))
    return gaps


def _keys(run: RunData) -> dict[tuple[str, str], list[PodReady]]:
    """Each (zone, service) and (Region, service) with the pods `_readiness` counts for it."""
    out: dict[tuple[str, str], list[PodReady]] = {}
    for p in run.pod_ready.values():
        out.setdefault((p.zone, p.service), []).append(p)
        if p.zone in {z.name for z in run.topology.region_zones}:
            out.setdefault((run.topology.region, p.service), []).append(p)
    return out


SCENARIOS = {
    "az-kill": Scenario(T, duration_s=120, rate_per_zone=2, faults=[
        FaultSpec("kill-product-api-2a", "service-down", AZ, ("product-api",), 30, 50, 0.2, 1.0)]),
    "lax-zone-down": Scenario(T, duration_s=120, rate_per_zone=2, faults=[
        FaultSpec("lax-down", "zone-down", LAX, (), 30, 60)]),
    "az-zone-down-two-replicas": Scenario(_two_product_apis(), duration_s=120, rate_per_zone=2, faults=[
        FaultSpec("az-down", "zone-down", AZ, (), 30, 60)], degraded=[(LAX, "product-api", 70, 90)]),
    "older-inventory-zone-down": Scenario(T, duration_s=120, rate_per_zone=2, readiness=False, faults=[
        FaultSpec("az-down", "zone-down", AZ, (), 30, 60)]),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_pods_ready_spans_make_its_zones_outages(tmp_path: Path, name: str) -> None:
    """Every zone's (and the Region's) down intervals are exactly where none of its pods' ready spans is: the
    pods' spans and the zones' outages are one reading. Each scenario takes some pool down and back."""
    run = load_run(write_run(tmp_path / name, SCENARIOS[name]))
    try:
        keys = _keys(run)
        # an older inventory's node fault takes nothing down (no `ready` would end it): its zone stays up
        assert keys and bool(any(run.down.values())) == SCENARIOS[name].readiness
        assert set(run.down) <= set(keys)
        for key, pods in keys.items():
            assert run.down.get(key, []) == _down_from_pods(pods), key
    finally:
        run.con.close()


def test_an_older_inventorys_node_fault_claims_no_pod_ready_after_it(tmp_path: Path) -> None:
    """An inventory without readiness events does not say when a stopped node's pods came back: the one reading
    counts them ready throughout (as the zones' outages need), but `_pods_left_out` claims nothing of them. Here
    us-west-2a's product-api, its nodes stopped 30-50 s, serves none of the Region's hops after the restore (its
    peer in us-west-2b serves them all): no claim that it was "ready from the restore" and never came back."""
    sc = Scenario(T, duration_s=140, rate_per_zone=4, readiness=False, accesslogs="kind",
                  faults=[FaultSpec("az-down", "zone-down", AZ, (), 30, 50, 0.2, 1.0)])  # fmt: skip
    d = write_run(tmp_path / "older", sc)
    inv = rows(d / "inventory.jsonl")
    gone = next(e for e in inv if e["zone"] == AZ and e["service"] == "product-api")
    peer = next(e for e in inv if e["zone"] == "us-west-2b" and e["service"] == "product-api")
    assert _left_out(d, gone, peer, "public-api-2a", 9090) > 100
    v = verify(d)
    assert all("never came back into service" not in i.message for i in v.invariants)
    assert FALLBACK in {i.name for i in v.invariants}
