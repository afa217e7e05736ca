"""A degraded link's effect is measured kind against kind: a hop against the same kind of hop before it.

Found by a default e2e run on a quiet machine: PHX's product-api went unready for moments while its link was
slow (its readiness query crosses the link), so part of PHX's hops were served by the Region during the fault.
The in-zone ones went from a 529 to a 2193 ms median (1 + N queries, each paying the link), the Region-served ones
took 74 ms (they cross it once), and the median of the mix, 189 ms against 546 before, "did not take effect":
a correct mesh failed. A shift the other way (the zone served by the Region before an inert degradation, in-zone
during it) showed an effect that never was, and the verdict blamed the rollback ("did not end at its restore")
for a degradation that had never reached the link.
"""

from __future__ import annotations

from pathlib import Path

from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import verify

QUERIES = 19  # the product-api image's 1 + N with the seed


def _run(tmp_path: Path, name: str, *faults: FaultSpec) -> Path:
    sc = Scenario(T, duration_s=120.0, rate_per_zone=4, faults=list(faults), db_round_trips=QUERIES)
    return write_run(tmp_path / name, sc)


def _link(inert: bool = False) -> FaultSpec:
    return FaultSpec("degrade-link-lax", "link-degraded", LAX, (), 40, 60, 0.0, 0.0, latency_ms=60.0,
                     link_inert=inert)  # fmt: skip


def _unready(lo: float, hi: float) -> FaultSpec:
    """product-api in LAX without a ready pod, nobody's fault (a readiness probe timing out): the Region serves."""
    return FaultSpec(f"unready-product-api-lax-{lo:g}", "service-down", LAX, ("product-api",), lo, hi, 0.0, 0.5,
                     recorded=False)  # fmt: skip


def test_a_zone_served_by_the_region_for_part_of_a_degradation_shows_its_effect(tmp_path: Path) -> None:
    """Reproducer: the Region serves LAX for most of the fault; the in-zone hops around it are slowed 19 times."""
    v = verify(_run(tmp_path, "shift", _link(), _unready(42, 58)))
    assert COVERAGE not in failed(v), why(v)


def test_an_inert_degradation_fails_though_the_zone_was_served_by_the_region_before_it(tmp_path: Path) -> None:
    """Reproducer (broken mesh, failed for the wrong reason): the Region served LAX's fast hops just before the
    fault and after it; the in-zone hops during the inert degradation are the slow kind as ever, so the mix's
    median rose by more than half the latency and "took effect"; only one pod's slow hops after it failed the
    run, as a rollback that left the latency on."""
    v = verify(_run(tmp_path, "inert-shift", _unready(12, 39), _link(inert=True), _unready(61, 100)))
    assert COVERAGE in failed(v) and any("did not take effect" in m for m in why(v)), why(v)


def test_controls(tmp_path: Path) -> None:
    """Without a shift: an applied degradation passes, an inert one fails."""
    v = verify(_run(tmp_path, "plain", _link()))
    assert COVERAGE not in failed(v), why(v)
    v = verify(_run(tmp_path, "inert", _link(inert=True)))
    assert COVERAGE in failed(v) and any("did not take effect" in m for m in why(v)), why(v)
