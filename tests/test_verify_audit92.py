"""Verdicts audit 92 found decided by timing rather than the mesh ("same config, same verdict").

Each case is a pair of synthetic runs (harness.verify.synth) of one mesh that differ only in a timing the harness
may legitimately have (here: when e2e's cool-down stopped the users), and got different verdicts before the fix;
each docstring's "HOLE." says how. Next to each, a control.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import FALLBACK, pending_recoveries
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import verify

LIMIT_S = T.slo.max_recovery_s
KILL_AT, RESTORE_AT = 100.0, 110.0


def _kill_public_api(crash_back: float | None) -> list[FaultSpec]:
    """A recorded kill of LAX's public-api (100-110 s), and LAX's product-api crashing during it, 5 s in (an
    outage nobody injected, met by the fault: `FaultScoping.faults_meeting`), back at `crash_back` (None:
    never)."""
    return [
        FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), KILL_AT, RESTORE_AT, 0.2, 1.0),
        FaultSpec("crash", "service-down", LAX, ("product-api",), KILL_AT + 5, crash_back, 0.2, 1.0, recorded=False),
    ]


# -- 1. an outage a fault explains, still on when the cool-down asked ---------------------------------------------
def test_the_cool_down_waits_for_an_outage_a_fault_explains_until_it_is_back_or_due(tmp_path: Path) -> None:
    """HOLE. LAX's product-api crashed during the kill of LAX's public-api and never came back. The verdict fails
    such an outage once it outlasts the fault's restore by maxRecoveryS (`FaultMeasurer._outlasting`), and says
    nothing of one still on at the end before then. The cool-down (`pending_recoveries`) watched only the
    fault's own pairs (LAX -> public-api, back 1 s after the restore) and skipped every outage a fault explains
    (`_open_outages`), so it stopped the users 6 s after the restore: PASS. A cool-down kept on past
    maxRecoveryS (a slower pair elsewhere, a later poll) gave the same mesh FAIL. It now waits for such an
    outage from the verdict's own instant (`FaultScoping.outage_explained_until`) until it is over or due."""
    stop = RESTORE_AT + 6.0
    sc = Scenario(T, duration_s=stop, rate_per_zone=4, faults=_kill_public_api(None))
    run = write_run(tmp_path / "stopped", sc)
    left = pending_recoveries(run, T, sc.start + stop)
    assert [(p.zone, p.upstream, p.outage) for p in left] == [(LAX, "product-api", True)], left
    assert left[0].due == pytest.approx(sc.start + RESTORE_AT + LIMIT_S, abs=0.01)
    assert "not back after kill-public-api-lax" in str(left[0])
    assert verify(run).passed  # what stopping the users then gave: the outage not yet due
    end = RESTORE_AT + LIMIT_S + 5
    long = Scenario(T, duration_s=end, rate_per_zone=4, faults=_kill_public_api(None))
    run = write_run(tmp_path / "waited", long)
    assert pending_recoveries(run, T, long.start + end) == []  # due: the verdict decides, and fails it
    v = verify(run)
    assert not v.passed and FALLBACK in failed(v), why(v)
    assert "during fault kill-public-api-lax" in v.invariant(FALLBACK).message


def test_an_outage_a_fault_explains_that_is_over_is_not_waited_for(tmp_path: Path) -> None:
    """The control: the same crash back 3 s after the restore (a correct mesh whose product-api restarted) is not
    waited for once it is over, and the run passes; nor is a fault never restored (it fails as such)."""
    stop = RESTORE_AT + 6.0
    sc = Scenario(T, duration_s=stop, rate_per_zone=4, faults=_kill_public_api(RESTORE_AT + 3))
    run = write_run(tmp_path / "back", sc)
    assert pending_recoveries(run, T, sc.start + stop) == []
    v = verify(run)
    assert v.passed, why(v)
    never = [FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), KILL_AT, None, 0.2, 1.0)]
    sc = Scenario(T, duration_s=stop, rate_per_zone=4, faults=never)
    run = write_run(tmp_path / "never", sc)
    assert [p for p in pending_recoveries(run, T, sc.start + stop) if p.outage] == []


# -- 2. the zone's next fault, of another service, began before the pair could show its recovery ------------------
def _back_to_back(tmp_path: Path, gap: float, rate: float, recovery_s: float = 1.0, duration_s: float = 100) -> Path:
    """LAX's public-api killed at 30 and back at 50 (LAX's frontend keeps calling the Region's `recovery_s` after
    it: Consul hands Envoy the restored endpoint in about a second); `gap` s after that restore the zone's next
    experiment kills LAX's product-api (public-api's upstream, not on the way to it), back at 70."""
    f = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 30, 50, 0.2, recovery_s)
    g = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 50 + gap, 70, 0.2, 1.0)
    return write_run(tmp_path / "run", Scenario(T, duration_s=duration_s, rate_per_zone=rate, faults=[f, g]))


@pytest.mark.parametrize("rate", [2, 20])
@pytest.mark.parametrize("gap", [0.3, 0.9, 3.0])
def test_a_recovery_the_zones_next_fault_of_another_service_cut_short_is_shown_after_its_restore(
    tmp_path: Path, gap: float, rate: float
) -> None:
    """HOLE. The zone's next experiment began `gap` s after the restore of LAX's public-api, before Envoy used the
    restored pod: the window to its inject held the frontend's Region-served hops and no in-zone one. A next
    fault that took the pair's callers down, or the pair's upstream, or the zone, was handled
    (`_cut_short_by`, `_superseded_by`); one that took down anything else (here LAX's product-api, which
    public-api calls) cut the window at its inject, and "fault kill-public-api-lax never recovers" failed the
    mesh at a gap of 0.3 or 0.9 s, while a machine starting the next experiment 3 s after the restore passed
    it. The pair's hops after the next fault's restore are its next record: its recovery is measured there."""
    v = verify(_back_to_back(tmp_path, gap, rate))
    assert v.passed, why(v)
    f = next(r for r in v.faults if r.fault == "kill-public-api-lax")
    if gap < 1.0:  # the in-zone hops came after the next inject: measured after that fault's restore, and said
        assert any("kill-product-api-lax began" in m and "back where it belongs" in m for m in f.messages), f.messages


@pytest.mark.parametrize("rate", [2, 20])
def test_a_pair_never_back_after_a_fault_of_another_service_still_fails(tmp_path: Path, rate: float) -> None:
    """The broken mesh: LAX's frontend keeps calling the Region's public-api after both restores (the run goes on
    for maxRecoveryS after the second): "never recovers" (now measured after the second restore)."""
    v = verify(_back_to_back(tmp_path, 0.3, rate, recovery_s=1000, duration_s=135))
    assert FALLBACK in failed(v), why(v)
    assert "kill-public-api-lax never recovers" in " ".join(why(v)), why(v)


def test_the_cool_down_waits_for_the_pair_the_verdict_measures_after_the_next_restore(tmp_path: Path) -> None:
    """HOLE (its cool-down side). The cool-down watched only the zone's last fault's pairs (LAX -> product-api);
    the verdict now measures LAX -> public-api after that fault's restore too, so the cool-down waits for it
    there (`pending._deferred`). Stopped 0.3 s after the restore at 2 requests a second, neither pair was on
    record: both are waited for, from the last restore."""
    d = _back_to_back(tmp_path / "stopped", 0.3, 2, duration_s=70.3)
    t0 = Scenario(T).start
    left = pending_recoveries(d, T, t0 + 70.3)
    assert sorted((p.upstream, p.fault, p.restore) for p in left) == [
        ("product-api", "kill-product-api-lax", t0 + 70),
        ("public-api", "kill-public-api-lax", t0 + 70),
    ], left
    waited = _back_to_back(tmp_path / "waited", 0.3, 2, duration_s=76)
    assert pending_recoveries(waited, T, t0 + 76) == []
    v = verify(waited)
    assert v.passed, why(v)
