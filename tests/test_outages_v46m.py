"""Outages nobody injected that keep coming back (hunt v46m), next to their control.

Each case is a synthetic run (harness.verify.synth) with the defect planted as a real cluster records it; each
docstring's "HOLE." says how the verdict passed it before the fix.
"""

from __future__ import annotations

from pathlib import Path

from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import verify


# -- 2. outages nobody injected, each short, that add up -----------------------------------------------------------
def _crash_loop(
    tmp_path: Path, name: str, times: int, down_s: float, up_s: float = 2.0, rate: int = 4, lost_s: float = 0.2
) -> Path:
    """LAX's product-api down `times` times for `down_s` each, `up_s` apart, and no fault recorded (a crash
    loop: the pods die, come back, die again; the mesh fails their calls over to the Region each time)."""
    every = down_s + up_s
    faults = [FaultSpec(f"crash-{i}", "service-down", LAX, ("product-api",), 10 + every * i, 10 + every * i + down_s,
                        lost_s, 0.5, recorded=False) for i in range(times)]  # fmt: skip
    duration = max(120.0, 20 + every * times)
    return write_run(tmp_path / name, Scenario(T, duration_s=duration, rate_per_zone=rate, faults=faults))


def test_a_crash_loop_of_short_outages_nobody_injected_fails(tmp_path: Path) -> None:
    """HOLE. LAX's product-api crash-looped with no experiment: nine outages of 10 s, 2 s apart, its zone's calls
    in the Region for 90 s of a 120 s run. Each outage nobody injected was judged alone, a note while shorter than
    maxRecoveryS (60 s), with locality not judged during it: the verdict passed with nine notes. Their sum is
    bounded by the time the SLO gives one outage."""
    v = verify(_crash_loop(tmp_path, "run", 9, 10.0))
    assert not v.passed and "fallback" in failed(v), why(v)
    text = v.invariant("fallback").message
    assert f"product-api had no ready pod in {LAX} 5 times outside any recorded fault in the 60s" in text, text


def test_control_a_few_readiness_flaps_stay_notes(tmp_path: Path) -> None:
    """The control: three flaps of 2 s each (6 s in all, a readiness flap under load) stay notes, and the run
    passes."""
    v = verify(_crash_loop(tmp_path, "run", 3, 2.0))
    assert v.passed, why(v)
    assert sum(1 for n in v.run.notes if "outside any recorded fault" in n) == 3, v.run.notes


def test_control_occasional_flaps_in_a_long_run_stay_notes(tmp_path: Path) -> None:
    """The control for a long run: a flap of 4 s every 15 s adds up past maxRecoveryS over six minutes (88 s in
    all) while the zone's own instance served three quarters of every minute, each routed around at once: notes,
    as in a short run. (Summed over the run, the verdict would depend on how long the run was.)"""
    v = verify(_crash_loop(tmp_path, "run", 22, 4.0, up_s=11.0, rate=2, lost_s=0.0))
    assert v.passed, why(v)
