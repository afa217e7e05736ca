"""From when a fault is judged to be on: one rule (`CheckBase._applied_at`) for coverage's pods and partitions
(`_effect_due`) and for a degraded link (`_link_not_slowed`).

Each rule fell back from the inject counter snapshot to the inject record in its own two lines, and only the pods'
message said which one it ran from: a degraded link judged without its snapshot ("did not take effect") gave no
hint that its window began at the record because the records do not say when the rules were on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit5 import _no_op
from tests.test_verify_audit17 import _drop_inject_snapshot, _effect_text
from tests.test_verify_soundness import KILL, LAX, T, failed
from tests.verdicts import verify

NONE = "no inject counter snapshot: when its primitive returned is unknown"
SNAPSHOT = "(the inject counter snapshot; inject "


def _inert_link(tmp_path: Path, snapshot: bool) -> str:
    """The coverage message of an inert degradation of LAX's link (+200 ms, 6 s from 30 s, a 3.5 s primitive),
    with or without its inject counter snapshot."""
    f = FaultSpec("slow-link-lax", "link-degraded", LAX, (), 30.0, 36.0, apply_s=3.5, link_inert=True)
    d = write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[f]))
    if not snapshot:
        _drop_inject_snapshot(d)
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    text = " ".join(m for m in why(v) if "slow-link-lax" in m and "did not take effect" in m)
    assert text, why(v)
    return text


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "no-snapshot"])
def test_a_degraded_links_message_says_from_when_it_was_judged(tmp_path: Path, snapshot: bool) -> None:
    """An inert degradation fails coverage either way; its message names what the window ran from, as the
    pods' rule does: the primitive's return (its snapshot), or the inject record and why (no snapshot). Before,
    the link's message named the snapshot only when one was later than the record, and never said why a window
    began at the record."""
    text = _inert_link(tmp_path, snapshot)
    assert (NONE in text) == (not snapshot), text
    assert (SNAPSHOT in text) == snapshot, text


def test_pods_and_links_name_the_missing_snapshot_in_the_same_words(tmp_path: Path) -> None:
    """Control: the pods' rule (a kill_pod whose pod served to its restore, no snapshot) says it in the same
    words as the link's, the one phrase `_applied_at` gives both."""
    v = verify(_no_op(tmp_path / "pods", KILL))
    assert COVERAGE in failed(v), why(v)
    pods = _effect_text(v)
    link = _inert_link(tmp_path, snapshot=False)
    assert NONE in pods and NONE in link, (pods, link)
