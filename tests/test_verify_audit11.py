"""Wrong verdicts an eleventh audit of the verifier found: degraded links, the probe budget's resolution.

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way the mesh
and the harness's collectors would record it; each asserts the verdict the records warrant, and each docstring's
"HOLE." says how the verifier as the audit found it judged it. Next to each, a control that keeps its verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit5 import _scenario
from tests.test_verify_audit6 import _slower
from tests.test_verify_soundness import LAX, failed
from tests.verdicts import verify

AZ_B = "us-west-2b"
TRAFFIC_S = 20.0  # synth's run.json starts 20 s before the first request (the fault times count from that)


def _slow(inject: float = 30.0, restore: float = 50.0, **kw: Any) -> FaultSpec:
    return FaultSpec("slow-link-lax", "link-degraded", LAX, (), inject, restore, **kw)


def _waits_on_link(h: dict[str, Any]) -> bool:
    """A hop of LAX's that waits on LAX's service link (`LINK_BOUND_SQL`): product-api's (it queries postgres in
    the Region), or one served outside the zone."""
    if h.get("caller_zone") != LAX:
        return False
    return h.get("upstream") == "product-api" or h.get("serving_zone") not in (LAX, None)


# -- 1. a degraded link with no baseline -------------------------------------------------------------------------
@pytest.mark.parametrize("inject", [0.0, 30.0])
def test_a_degraded_link_with_no_baseline_is_not_shown_slowed(tmp_path: Path, inject: float) -> None:
    """HOLE. The link's effect is judged against the median of the zone's hops that wait on it in the ten minutes
    before the fault; with none there (the degradation began with the zone's traffic: a game day's chaos started
    with the traffic, or every hop before lay in the windows of the zone's or the Region's faults) the median was
    NULL, read as 0 ms, and "took effect" needed only a median over half the declared latency. On this machine
    the stored runs' hops that wait on a link take 23-46 ms with no fault at all, so a +60 ms degradation that
    never reached the link PASSED. Here LAX's hops take 44 ms (a busy machine), the degradation declares +60 ms
    and never reaches the link (`link_inert`). Now an empty baseline (fewer than LINK_EFFECT_MIN_HOPS hops) leaves
    the fault unverified. The control: the same inert degradation with a baseline (injected 30 s into the
    traffic) is failed as "did not take effect", as it was."""
    sc = _scenario([_slow(inject, inject + 20, latency_ms=60.0, link_inert=True)], accesslogs="none")
    d = _slower(write_run(tmp_path / "run", sc), 30.0, lambda h, t: h.get("caller_zone") == LAX)
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = " ".join(why(v))
    if inject == 0.0:
        assert "nothing to measure the added 60 ms against" in text, text
    else:
        assert "did not take effect" in text, text


def test_control_a_degraded_link_with_a_baseline_passes(tmp_path: Path) -> None:
    """The same +60 ms degradation reaching the link, 30 s into the traffic, on the same busy machine: passes."""
    sc = _scenario([_slow(latency_ms=60.0)], accesslogs="none")
    v = verify(_slower(write_run(tmp_path / "run", sc), 30.0, lambda h, t: h.get("caller_zone") == LAX))
    assert v.passed, why(v)


# -- 2. another fault overlapping the degradation ------------------------------------------------------------------
@pytest.mark.parametrize("inert", [True, False])
@pytest.mark.parametrize("overlap", [False, True])
def test_a_degraded_link_is_not_shown_slowed_by_another_faults_slowness(
    tmp_path: Path, inert: bool, overlap: bool
) -> None:
    """HOLE. The verifier leaves the windows of the faults that reach a zone's link (the zone's own, the
    Region's: `_reaches_link`) out of the degradation's baseline and out of the stretch after its restore, as
    they change how long the hops that wait on the link take; not out of the degradation itself. An AZ lost in
    the Region for 14 of the degradation's 20 s (its hops to the Region waiting 400 ms meanwhile: Region
    connections re-established, retries) made the zone's median slow, and a degradation that never reached the
    link (`link_inert`) PASSED as "took effect". Now the hops in flight in such a fault's window are left out
    of the degradation's too: the inert one is "did not take effect" on the hops outside it. The controls: the
    degradation that reached the link passes with the overlap or without, and the inert one fails without it."""
    faults = [_slow(latency_ms=100.0, link_inert=inert)]
    if overlap:
        faults.append(FaultSpec("zone-down-2b", "zone-down", AZ_B, (), 32, 46, entry_down=True))
    d = write_run(tmp_path / "run", _scenario(faults, accesslogs="none"))
    if overlap:
        _slower(d, 400.0, lambda h, t: _waits_on_link(h) and TRAFFIC_S + 32 <= t < TRAFFIC_S + 46)
    v = verify(d)
    if inert:
        assert not v.passed and COVERAGE in failed(v), why(v)
        text = " ".join(why(v))
        assert "did not take effect" in text, text
        assert ("zone-down-2b" in text) == overlap, text
    else:
        assert v.passed, why(v)


# -- 3. a rollback that left the latency on, the zone's next fault a moment later --------------------------------
@pytest.mark.parametrize("lingers", [True, False])
@pytest.mark.parametrize(("rate", "gap_s"), [(4.0, 1.0), (2.0, 2.0), (4.0, 10.0)])
def test_a_rollback_that_left_the_latency_on_is_judged_past_the_zones_next_fault(
    tmp_path: Path, rate: float, gap_s: float, lingers: bool
) -> None:
    """HOLE. "No longer after its restore" was judged up to the zone's next fault, per pod, on pods with 5 or
    more hops there; with fewer in the zone nothing was judged. The service-link experiment cuts the link 3 s
    after the degradation's restore, and with the probes at the budget's floor (one per 0.5 s) a zone's pods
    have 3 or 4 hops each in between: a rollback that left the latency on (`link_lingers`: every hop after the
    restore pays it) PASSED with every one of those hops slower than the latency. Here LAX's product-api is
    killed `gap_s` after the restore (4 requests a second: 1 s; 2 a second: 2 s). Now when not one hop up to
    the next fault is faster than the declared latency (which none can be while it is on), the rest of
    maxRecoveryS after the restore, outside the windows of the faults that reach the link, decides: slow
    throughout fails. The controls: the rollback that worked passes at every gap, and the latency left on with
    the next fault 10 s later fails as it did."""
    faults = [
        _slow(latency_ms=100.0, link_lingers=lingers),
        FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 50 + gap_s, 60 + gap_s, 0.2, 1.0),
    ]
    v = verify(write_run(tmp_path / "run", _scenario(faults, duration_s=140, rate_per_zone=rate, accesslogs="none")))
    if lingers:
        assert not v.passed and COVERAGE in failed(v), why(v)
        text = " ".join(why(v))
        assert "did not end at its restore" in text and "took less than the added 100 ms" in text, text
    else:
        assert v.passed, why(v)


# -- 4. a degradation that is the run's first fault, measured against the warm-up ------------------------------------
COLD_UNTIL_S = 22.0  # LAX's hops are cold (+120 ms) for the traffic's first 22 s; the degradation comes at 30 s


@pytest.mark.parametrize("inert", [False, True])
@pytest.mark.parametrize("budget_end", [21.0, None])
def test_a_first_degradation_is_measured_against_the_settled_run_not_the_warm_up(
    tmp_path: Path, inert: bool, budget_end: float | None
) -> None:
    """HOLE. A degraded link's baseline was every hop that waits on it in the ten minutes before the fault outside
    the faults that reach the link; for the run's first fault that is the e2e warm-up: a cold shop, the probes
    stepped by the probe budget, the machine busy (measured: 104 ms against 49 ms in the steady state). Here
    LAX's hops take 120 ms more until 22 s into the traffic and the budget decided at 21 s: a +100 ms degradation
    that reached the link was "did not take effect" (its mark was the cold median plus 50 ms). Now the baseline
    begins when the run settled (probe-budget.json's last window's end + SWITCH_S): it passes, and an inert one
    (no added latency against the settled hops, though as slow as the cold ones) still fails. The controls: with
    no budget record (in-zone workers) the baseline is the whole stretch as before: both fail."""
    sc = _scenario([_slow(latency_ms=100.0, link_inert=inert)], accesslogs="none", budget_end_s=budget_end)
    d = _slower(write_run(tmp_path / "run", sc), 120.0, lambda h, t: _waits_on_link(h) and t < TRAFFIC_S + COLD_UNTIL_S)
    v = verify(d)
    if budget_end is not None and not inert:
        assert v.passed, why(v)
    else:
        assert not v.passed and COVERAGE in failed(v), why(v)
        assert "did not take effect" in " ".join(why(v)), why(v)


def test_a_degradation_with_no_hop_after_the_run_settled_is_unverified(tmp_path: Path) -> None:
    """The budget decided 1 s before the degradation: fewer than LINK_EFFECT_MIN_HOPS hops wait on the link in
    between (4 requests a second), and the cold warm-up before it is no baseline: unverified, not judged."""
    sc = _scenario([_slow(latency_ms=100.0)], accesslogs="none", budget_end_s=29.0)
    v = verify(_slower(write_run(tmp_path / "run", sc), 120.0, lambda h, t: _waits_on_link(h) and t < TRAFFIC_S + 29))
    assert not v.passed and COVERAGE in failed(v), why(v)
    assert "nothing to measure the added 100 ms against" in " ".join(why(v)), why(v)
    assert "since the run settled at" in " ".join(why(v)), why(v)
