"""A second mutation pass (s55b) over the verdict's rules changed since the first (tests/test_mutations_s50d.py).

Each rule below was mutated by hand (a clause dropped, a key widened, an edge moved) and the verify tests run: the
mutant survived, and it would pass a broken mesh or fail a correct one. Each test here is the synthetic run that
tells the rule from its mutant, with its twin beside it where the twin is not already on record. Section 4 is a
defect the pass found in a rule itself (the link look-ahead's answer outlasting its baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.verify import COVERAGE
from tests.test_soundness_s54a import COUNTERS, CUT_2, LAX, _held_through_the_cut, _label_ts
from tests.verdicts import Pristine, failed_messages, rows, verify, write_rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("s55b"))


# -- 1. a partition shown by the counters alone: another Envoy is another inventory interval ------------------------


def _back_under_its_name(d: Path, pod: str, stats: list[dict[str, Any]], new: dict[str, int]) -> None:
    """The pod re-created under its name 10 s into the second partition (the inventory's removed, then added and
    ready again): its restore and end reads are the new Envoy's, `new` its postgres counters, every one of them."""
    for s in stats:
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] in (f"restore {CUT_2.fault}", "end"):
            s.update(new)
    write_rows(d / "upstream-stats.jsonl", stats)
    inv = rows(d / "inventory.jsonl")
    added = next(e for e in inv if e["event"] == "added" and e["pod"] == pod)
    at = _label_ts(d, f"inject {CUT_2.fault}") + 10
    inv += [
        {**added, "ts": at, "event": "removed"},
        {**added, "ts": at + 0.2},
        {**added, "ts": at + 1, "event": "ready"},
    ]
    write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))


def _at_inject(pod: str, stats: list[dict[str, Any]]) -> dict[str, int]:
    return next(
        {c: int(s[c]) for c in COUNTERS}
        for s in stats
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] == f"inject {CUT_2.fault}"
    )


def test_a_new_envoy_reading_no_less_than_the_old_one_counts_from_zero(runs: Pristine, tmp_path: Path) -> None:
    """The pod back under its name during the cut, its new Envoy reading at the restore exactly what the old one
    read at the inject, every counter (none went down): all of it is the new Envoy's, its connect failures the
    cut's. Keyed by pod name alone (the inventory interval dropped from the rule), the old Envoy's reads were
    subtracted, the growth was 0 and the correct mesh "not shown to have cut anything". s54a's test of the same
    case read a restore with rq_total and rq_error from zero, so a counter went down and the rule's other clause
    decided it: the interval's clause was not needed by any test."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    old = _at_inject(pod, stats)
    assert old["cx_connect_fail"] > 0 and old["rq_total"] > 0
    _back_under_its_name(d, pod, stats, old)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_control_a_new_envoy_with_no_failure_of_its_own_is_not_shown(runs: Pristine, tmp_path: Path) -> None:
    """Control (the broken twin): the new Envoy counted traffic but no failure towards another zone: not shown."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    old = _at_inject(pod, stats)
    _back_under_its_name(d, pod, stats, {**old, "cx_connect_fail": 0, "rq_error": 0, "rq_timeout": 0})
    failed = failed_messages(verify(d))
    assert COVERAGE in failed and f"partition of {LAX} is not shown to have cut anything" in failed[COVERAGE], failed


@pytest.mark.parametrize("gone_down", ["cx_connect_fail", "cx_total"])
def test_a_crash_in_place_is_shown_by_any_counter_gone_down(runs: Pristine, tmp_path: Path, gone_down: str) -> None:
    """Envoy crashed in place during the cut (same pod and address, no inventory record): its new process's reads
    are its own from zero, and one counter gone down is enough to tell it. cx_connect_fail: it opened more
    connections than the old one had (cx_total up), 10 connect failures against the old one's 60; cx_total: 60
    connections, every one a connect failure, against the old one's 61 and 60. The rest of its counters read what
    the old one's did. A reset read off one counter alone subtracted the old Envoy's failures from the new one's
    and the correct mesh was "not shown to have cut anything"."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    old = _at_inject(pod, stats)
    assert old["cx_total"] == 61 and old["cx_connect_fail"] == 60, old
    if gone_down == "cx_connect_fail":
        new = {**old, "cx_total": old["cx_total"] + 50, "cx_connect_fail": 10}
    else:
        new = {**old, "cx_total": 60, "cx_connect_fail": 60}
    for s in stats:
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] in (f"restore {CUT_2.fault}", "end"):
            s.update(new)
    write_rows(d / "upstream-stats.jsonl", stats)
    v = verify(d)
    assert v.passed, failed_messages(v)
