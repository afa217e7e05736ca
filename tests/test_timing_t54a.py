"""t54a: correct meshes failed by timing, fourth pass: e2e's link look-ahead (`harness.e2e.LinkLookahead`).

The look-ahead's answer of "nothing owed" stood at the gate on the claim that a baseline on record stays on record
while no fault is injected. It does not: the window of the newest fault that reaches the link ends at its pairs'
recovery instant (the first good hop after their last bad one), and a hop sent elsewhere after the check (a correct
mesh's failover of one call: a replica briefly unready) moves that instant past it, and the baseline hops before it
into the window; and the baseline's stretch (since = max(now - LINK_BASELINE_S, settled)) slides on, past hops it
held at the check.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from harness.e2e import LOOKAHEAD_SETTLE_S, LinkLookahead
from harness.testing import ManualClock
from harness.topology import load_topology
from harness.verify import link_baseline_owed
from harness.verify.rundata import find_topology
from harness.verify.synth import Scenario, write_run
from tests.test_timing_t53a import _as_of
from tests.test_verify_soundness import KILL, LAX, T0, T

KILLED = replace(KILL, fault="kill-product-api-lax-1", inject=30, restore=34, recovery_delay_s=0.5)
SPILL = (LAX, "product-api", 40.0, 40.4)  # one call of LAX's public-api failed over to the Region, recovered at once
CHECK = 34.0 + LOOKAHEAD_SETTLE_S + 3.0  # the look-ahead's check, the kill restored and settled: 39 s
GATE = 41.0  # the next experiment's gate, no fault injected in between


def _run(tmp_path: Path, spill: bool, settled: float = 29.5) -> Path:
    sc = Scenario(T, duration_s=120, rate_per_zone=4, faults=[KILLED], budget_end_s=settled,
                  degraded=[SPILL] if spill else [], degraded_recorded=False)  # fmt: skip
    return write_run(tmp_path / "src", sc)


def _gate(tmp_path: Path, spill: bool, settled: float = 29.5) -> tuple[bool, object]:
    """The look-ahead's standing answer at the gate (its check at CHECK on the run as it stood then) and what the
    gate would have found asking itself."""
    src = _run(tmp_path, spill, settled)
    t = load_topology(find_topology(src))
    live = tmp_path / "live"
    clock = ManualClock(T0 + CHECK)
    ahead = LinkLookahead(_as_of(src, live, CHECK), t, [LAX], clock=clock)
    ahead.step()
    clock.advance(GATE - CHECK)
    at_gate = _as_of(src, live, GATE)
    return ahead.cleared(), link_baseline_owed(at_gate, t, LAX, T0 + GATE)


def test_a_hop_sent_elsewhere_after_the_check_takes_the_lookaheads_answer_back(tmp_path: Path) -> None:
    """FINDING: at 39 s the kill's recovery is on record (34.5 s) and the hops after it are the baseline: nothing
    owed, cleared. At 40 s one call fails over to the Region (a correct mesh); the kill's recovery instant, as the
    verdict measures it up to the next fault, moves past it, and with it the baseline: at the gate (41 s) it is
    owed, but the look-ahead's answer stood, and the degradation began with too few hops before it ("not shown")."""
    cleared, owed = _gate(tmp_path, spill=True)
    assert owed is not None  # the gate asking itself would hold
    assert not cleared


def test_control_a_baseline_before_the_newest_fault_stands_through_the_spill(tmp_path: Path) -> None:
    """Control: settled at 20 s, the hops before the kill are a baseline no later hop takes away: cleared at the
    check, and the gate would have found nothing owed either."""
    cleared, owed = _gate(tmp_path, spill=True, settled=20.0)
    assert owed is None
    assert cleared


def test_control_without_the_spill_nothing_is_owed_at_the_gate(tmp_path: Path) -> None:
    """Without the spill the gate finds nothing owed; the look-ahead, which cannot know no call will fail over before
    the gate, leaves it to ask (its records read, not a hold)."""
    cleared, owed = _gate(tmp_path, spill=False)
    assert owed is None
    assert not cleared


def test_the_answer_lasts_until_the_baseline_stretch_slides_past_it(tmp_path: Path) -> None:
    """The stretch of a later gate begins at max(gate - LINK_BASELINE_S, settled): an answer whose baseline is
    older lapses (`link_baseline_lasts`'s time), and is asked again."""
    import json

    (tmp_path / "chaos.jsonl").write_text(
        "".join(
            json.dumps({"ts": ts, "fault": "k", "phase": ph, "action": "kill_pod", "zone": LAX}) + "\n"
            for ts, ph in ((90.0, "inject"), (95.0, "restore"))
        )
    )
    clock, asked = ManualClock(100.0), []

    def lasts(run_dir: Path, topology: object, zone: str, now: float) -> float:
        asked.append(now)
        return 700.0

    ahead = LinkLookahead(tmp_path, T, [LAX], clock=clock, lasts=lasts)
    ahead.step()
    assert ahead.cleared()
    clock.advance(599.0)
    assert ahead.cleared()
    clock.advance(1.0)
    assert not ahead.cleared()
    ahead.step()
    assert len(asked) == 2


def test_lasts_on_the_synthetic_run_is_the_nth_newest_baseline_hop_plus_the_stretch(tmp_path: Path) -> None:
    """Settled at 20 s: the baseline is LAX's hops before the kill (30 s); the answer lasts while the fifth newest
    of a kind is in a later gate's stretch, not past LINK_BASELINE_S after the kill's inject."""
    from harness.verify import link_baseline_lasts
    from harness.verify.invariants.users import LINK_BASELINE_S

    src = _run(tmp_path, spill=False, settled=20.0)
    t = load_topology(find_topology(src))
    until = link_baseline_lasts(_as_of(src, tmp_path / "live", CHECK), t, LAX, T0 + CHECK)
    assert T0 + 20.0 + LINK_BASELINE_S < until <= T0 + 30.0 + LINK_BASELINE_S
    assert not math.isinf(until)


def test_the_hold_carries_the_zones_clock_bound_on_separate_clocks(tmp_path: Path) -> None:
    """FINDING (noted by t53a): where the nodes keep their own clocks (EKS, clock.jsonl), the verdict's window of a
    fault that reached the link ends at its recovery instant plus the zone's measured clock bound (`_impact_end`),
    and the baseline lies outside it; the hold ended it at the instant, so it counted hops the verdict does not and
    let a degradation begin before its baseline was on record. A far runner (1 s round trip to the Local Zones:
    LAX known to +-0.5 s), nodes 300 ms behind: somewhere after the kill's recovery the one-clock twin has its
    baseline and the EKS run, held to the bound, still owes it; never the other way round."""
    from tests.test_farrunner_t50e import _far_clock
    from tests.test_verify_clock import BEHIND, _skew

    one = _run(tmp_path / "one", spill=False)
    eks = _far_clock(_skew(_run(tmp_path / "eks", spill=False), BEHIND), 1.0)
    t = load_topology(find_topology(one))
    differ = []
    for i in range(24):
        now = 35.0 + i * 0.25
        a = link_baseline_owed(_as_of(one, tmp_path / "l1", now), t, LAX, T0 + now)
        b = link_baseline_owed(_as_of(eks, tmp_path / "l2", now), t, LAX, T0 + now)
        assert not (b is None and a is not None), now
        differ += [now] if a is None and b is not None else []
    assert differ


def test_control_on_one_clock_the_twin_runs_agree(tmp_path: Path) -> None:
    """Control: with no clock record the same run skewed by nothing is the same run: the hold agrees at every time."""
    one = _run(tmp_path / "one", spill=False)
    two = _run(tmp_path / "two", spill=False)
    t = load_topology(find_topology(one))
    for i in range(0, 24, 3):
        now = 35.0 + i * 0.25
        a = link_baseline_owed(_as_of(one, tmp_path / "l1", now), t, LAX, T0 + now)
        b = link_baseline_owed(_as_of(two, tmp_path / "l2", now), t, LAX, T0 + now)
        assert (a is None) == (b is None), now
