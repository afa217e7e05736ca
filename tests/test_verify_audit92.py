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
