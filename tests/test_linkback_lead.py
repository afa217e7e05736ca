"""A degraded link shown cleared when no hop can be faster than its latency, healthy or not (verdict and cool-down).

Found by the default corpus on a loaded 2-core machine once the product-api stand-in made the image's 1 + N
queries per /coffees: PHX's hops that wait on its link took a median of 485 ms before a 60 ms degradation, 1282 ms
during it and 502 ms after its restore, not one under 60 ms before or after, and "did not end at its restore"
failed a rollback that worked (the same mesh passed on a quiet machine). Modelled here by an added latency smaller
than a hop's own time: no hop can be faster than it, with the link healthy or not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import COVERAGE, pending_recoveries
from harness.verify.invariants.users import LINK_EFFECT_SHARE, link_back_mark, link_shown_back
from harness.verify.pending import RECORDS_LAG_S
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T0, T, failed
from tests.verdicts import verify

SMALL_MS = 3.0  # under every hop's own time in the synthetic mesh (~14 ms): no hop is ever faster than it


def _run(tmp_path: Path, latency_ms: float, lingers: bool, duration_s: float = 120.0) -> Path:
    f = FaultSpec("degrade-link-lax", "link-degraded", LAX, (), 30, 50, 0.0, 0.0, latency_ms=latency_ms,
                  link_lingers=lingers)  # fmt: skip
    sc = Scenario(T, duration_s=duration_s, rate_per_zone=4, faults=[f])
    return write_run(tmp_path / f"run-{latency_ms}-{lingers}-{duration_s}", sc)


def test_a_cleared_link_whose_hops_never_beat_the_latency_passes(tmp_path: Path) -> None:
    """Reproducer: back at the baseline after the restore, yet none under the added latency (none before it either)."""
    v = verify(_run(tmp_path, SMALL_MS, lingers=False))
    assert v.passed, why(v)


@pytest.mark.parametrize("latency_ms", [SMALL_MS, 200.0])
def test_a_rollback_that_left_the_latency_on_still_fails(tmp_path: Path, latency_ms: float) -> None:
    """Control: the latency stays on after the restore, small or large: the hops stay at the fault's level."""
    v = verify(_run(tmp_path, latency_ms, lingers=True))
    assert COVERAGE in failed(v) and any("did not end at its restore" in m for m in why(v)), why(v)


def test_the_cool_down_stops_on_a_cleared_link_whose_hops_never_beat_the_latency(tmp_path: Path) -> None:
    """The cool-down reads the link as the verdict does: it stops once the hops after the restore are back under
    the mark (it waited to maxRecoveryS for a hop faster than 3 ms, which none could be)."""
    d = _run(tmp_path, SMALL_MS, lingers=False, duration_s=50 + 8)
    assert pending_recoveries(d, T, T0 + 50 + 8 + RECORDS_LAG_S) == []
    d = _run(tmp_path, SMALL_MS, lingers=True, duration_s=50 + 8)  # control: still slow, still waited for
    assert [p.link for p in pending_recoveries(d, T, T0 + 50 + 8 + RECORDS_LAG_S)] == [True]


def test_the_mark_is_half_the_measured_effect_or_half_the_latency_whichever_is_more() -> None:
    """The marks are excesses over each hop's kind's baseline (`link_excess_ctes`)."""
    assert link_back_mark(1282.0 - 485.0, 60.0) == pytest.approx((1282.0 - 485.0) / 2)
    assert link_back_mark(201.0, 200.0) == pytest.approx(LINK_EFFECT_SHARE * 200.0 + 0.5)
    assert link_back_mark(6.0, 60.0) == pytest.approx(LINK_EFFECT_SHARE * 60.0)
    # one fast hop proves it; a median needs enough hops and a mark; neither: not shown
    assert link_shown_back(1, None, 1, None)
    assert link_shown_back(20, 15.0, 0, 398.5) and not link_shown_back(20, 415.0, 0, 398.5)
    assert not link_shown_back(2, 15.0, 0, 398.5) and not link_shown_back(20, 15.0, 0, None)
