"""e2e's hold before a link's degradation (`harness.verify.link_baseline_owed`) on a run with two faults on the same
pair before it: the shipped e2e's shape (edge-outage kills LAX's product-api, node-kill takes LAX's node, then
service-link degrades LAX's link).

Each earlier fault's window runs to the recovery the hops show. The first kill's recovery was read over every hop
since its restore up to now, the second fault's among them: two calls the new public-api made to the Region just
before its product-api was Ready made the first kill's recovery "not shown", its window open to now, and no
baseline was left (0 hops). Found replaying a correct, quiet e2e run cut where its service-link experiment began:
e2e would have held it until maxRecoveryS past the node kill's restore (~54 s). A fault's recovery is read up to the
next fault that reaches the link, as the verdict measures a recovery up to the next fault on the pair.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from harness.topology import load_topology
from harness.verify import link_baseline_owed
from harness.verify.rundata import find_topology
from harness.verify.synth import Scenario, write_run
from tests.test_timing_t53a import _as_of
from tests.test_verify_soundness import KILL, LAX, T0, T

FIRST = replace(KILL, fault="kill-product-api-lax-1", inject=30, restore=34, recovery_delay_s=0.5)
# a node of LAX lost: its public-api and product-api both gone (the pair makes no call meanwhile)
SECOND = replace(
    KILL, fault="kill-node-lax", services=("public-api", "product-api"), inject=45, restore=53, recovery_delay_s=1.0
)
# two calls sent to the Region right after the second restore (as the node kill's new public-api, Ready before its
# product-api, made in the replayed run)
SPILL = (LAX, "product-api", 54.2, 54.6)


def _run(tmp_path: Path, spill: bool) -> Path:
    sc = Scenario(T, duration_s=120, rate_per_zone=4, faults=[FIRST, SECOND], budget_end_s=29.5,
                  degraded=[SPILL] if spill else [], degraded_recorded=False)  # fmt: skip
    return write_run(tmp_path / "src", sc)


def test_a_later_faults_calls_do_not_hide_an_earlier_faults_recovery_from_the_links_baseline(tmp_path: Path) -> None:
    """FINDING: 8 s after the second restore, the stretch between the two faults (34.5-45 s, LAX's hops through the
    link in-zone) is the baseline; the spill after the second one is no reason to read the first one's window on."""
    src = _run(tmp_path, spill=True)
    t = load_topology(find_topology(src))
    assert link_baseline_owed(_as_of(src, tmp_path / "live", 61.0), t, LAX, T0 + 61.0) is None


def test_control_without_the_spill_no_hold_either(tmp_path: Path) -> None:
    src = _run(tmp_path, spill=False)
    t = load_topology(find_topology(src))
    assert link_baseline_owed(_as_of(src, tmp_path / "live", 61.0), t, LAX, T0 + 61.0) is None


def test_control_a_first_fault_whose_recovery_is_not_on_record_before_the_next_holds(tmp_path: Path) -> None:
    """Control: the first kill never comes back before the second fault (its restore recorded, its pod still down
    until the second restore): its window runs into the second's, and 0.5 s after the second restore, before any
    recovery is on record, nothing settled is left outside them: held."""
    never = replace(FIRST, recovery_delay_s=20.0)
    sc = Scenario(T, duration_s=120, rate_per_zone=4, faults=[never, SECOND], budget_end_s=29.5)
    src = write_run(tmp_path / "src", sc)
    t = load_topology(find_topology(src))
    owed = link_baseline_owed(_as_of(src, tmp_path / "live", 53.5), t, LAX, T0 + 53.5)
    assert owed is not None and owed.hops < 5, owed
