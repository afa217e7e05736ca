"""A correct mesh failed by timing (t52a): reproducers next to their controls.

Rule: same config, same verdict. A correct mesh must pass however slow the machine, the collector or the users
are; what the verdict asks of the records must be what e2e's cool-down waits for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.topology import Topology
from harness.verify import FALLBACK, pending_recoveries
from harness.verify.synth import Scenario
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import LAX, RESTORE, T, _with_replicas
from tests.test_verify_soundness import failed
from tests.verdicts import verify

# -- a recovery back within maxRecoveryS, shown by too few hops when maxRecoveryS has passed --------------------------
MAX_RECOVERY_S = 10.0
SLOW_RATE = 1.0  # a zone's requests a second: users four times slower than the synthetic runs' usual 4/s
T2 = _with_replicas(T.model_copy(update={"slo": T.slo.model_copy(update={"max_recovery_s": MAX_RECOVERY_S})}),
                    "product-api", 2)  # fmt: skip
T0 = Scenario(T2).start
DUE = RESTORE + MAX_RECOVERY_S


def _spill_run(tmp_path: Path, spill_until: float, duration: float, rate: float = SLOW_RATE) -> Path:
    """test_verify_audit4_faults.node_fault_spill at `rate`: LAX's second node killed 30-60 s, one of its two
    product-api replicas unready meanwhile, ~30 % of the zone's product-api calls spilled to the Region (as
    designed: overprovisioning 1.4) until `spill_until` (the restore: a correct mesh)."""
    import tests.test_verify_audit4_faults as a4

    class _Rated(Scenario):
        def __init__(self, *a: object, **kw: object) -> None:
            kw["rate_per_zone"] = rate
            super().__init__(*a, **kw)  # type: ignore[arg-type]

    mp = pytest.MonkeyPatch()
    mp.setattr(a4, "Scenario", _Rated)
    try:
        return a4.node_fault_spill(tmp_path, T2, LAX, spill_until=spill_until, duration=duration)
    finally:
        mp.undo()


def _pairs(d: Path, t: Topology, now_rel: float) -> list[tuple[str, str]]:
    return [(p.zone, p.upstream) for p in pending_recoveries(d, t, T0 + now_rel)]


def test_a_recovery_back_in_time_but_shown_by_too_few_hops_is_waited_for_past_max_recovery(tmp_path: Path) -> None:
    """The reproducer. LAX's product-api pair is back 0.3 s after the restore; the verdict's evidence rule asks
    ~20 good hops in a row after it against the fault's 30 % spill. At one request a second, maxRecoveryS (10 s)
    after the restore the records hold 10: the cool-down stopped waiting there ("the verdict decides it from
    then on"), and the verdict failed the correct mesh ("not shown ... a run that goes on longer shows it"); the
    same mesh at four requests a second, or on a run that went on, passes. The cool-down now waits on for them."""
    stopped = _spill_run(tmp_path / "stopped", spill_until=RESTORE, duration=DUE + 0.5)
    v = verify(stopped)
    assert not v.passed and "not shown" in " ".join(why(v)), why(v)  # what stopping at maxRecoveryS judged
    assert _pairs(stopped, T2, DUE + 0.5) == [(LAX, "product-api")]
    left = pending_recoveries(stopped, T2, T0 + DUE + 0.5)
    assert left[0].evidence and "too few hops" in str(left[0]), left
    assert left[0].due > T0 + DUE + 0.5


def test_control_the_same_mesh_run_on_shows_it_and_is_waited_for_no_longer(tmp_path: Path) -> None:
    """Control: the same mesh with the users kept on 30 s past the restore: the good hops show the recovery, the
    cool-down waits for nothing and the verdict passes."""
    d = _spill_run(tmp_path / "on", spill_until=RESTORE, duration=RESTORE + 30)
    assert _pairs(d, T2, RESTORE + 30) == []
    v = verify(d)
    assert v.passed, why(v)


def test_control_a_zone_that_keeps_spilling_is_not_waited_for_past_max_recovery(tmp_path: Path) -> None:
    """Control (the broken twin): LAX's sidecars never take the returned replica back, 30 % still to the Region
    after the restore: each Region-served hop moves the instant on, past maxRecoveryS; nothing is waited for
    then, and the verdict fails it."""
    d = _spill_run(tmp_path / "spill", spill_until=RESTORE + 40, duration=RESTORE + 40)
    assert _pairs(d, T2, RESTORE + 40) == []
    v = verify(d)
    assert FALLBACK in failed(v), why(v)


def test_control_a_pair_whose_calls_stopped_is_left_to_the_verdict(tmp_path: Path) -> None:
    """Control: the records of the stopped run, read maxRecoveryS after the pair's last hop (its users made no
    call since): not waited for, however few hops showed it."""
    d = _spill_run(tmp_path / "stopped", spill_until=RESTORE, duration=DUE + 0.5)
    assert _pairs(d, T2, DUE + 0.5 + MAX_RECOVERY_S) == []


def test_control_a_fast_zone_shows_it_before_max_recovery(tmp_path: Path) -> None:
    """Control: at four requests a second the evidence is on record before maxRecoveryS: waited for until then
    only, and the verdict passes the run stopped at maxRecoveryS."""
    d = _spill_run(tmp_path / "fast", spill_until=RESTORE, duration=DUE + 0.5, rate=4.0)
    assert _pairs(d, T2, DUE + 0.5) == []
    assert _pairs(d, T2, RESTORE + 8) == []
    v = verify(d)
    assert v.passed, why(v)
