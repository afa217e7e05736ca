"""e2e asks the next experiment's link hold while the experiment before it runs (`harness.e2e.LinkLookahead`).

The hold reads the records (a DuckDB build of the run's hops): asked between two experiments it was an idle gap on
every run (1.1 s before service-link), though nothing was owed. The look-ahead's answer stands at the gate only
when it found nothing owed in a check begun after every fault so far was restored (and settled) and no fault was
injected since; anything else leaves the gate to ask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from harness.e2e import LOOKAHEAD_RETRY_S, LOOKAHEAD_SETTLE_S, LinkLookahead
from harness.testing import ManualClock
from tests.test_verify_soundness import LAX, T


def _write(run_dir: Path, *recs: tuple[float, str, str]) -> None:
    with (run_dir / "chaos.jsonl").open("a") as fh:
        for ts, fault, phase in recs:
            fh.write(json.dumps({"ts": ts, "fault": fault, "phase": phase, "action": "kill_node", "zone": LAX}) + "\n")


class _Owed:
    """A stand-in for `link_baseline_lasts`: owed (-inf) while `owing`, else lasting; notes when it was asked."""

    def __init__(self) -> None:
        self.owing = False
        self.asked: list[float] = []

    def __call__(self, run_dir: Path, topology: object, zone: str, now: float) -> float:
        self.asked.append(now)
        return -math.inf if self.owing else math.inf


def _ahead(tmp_path: Path, owed: _Owed, clock: ManualClock) -> LinkLookahead:
    return LinkLookahead(tmp_path, T, [LAX], clock=clock, lasts=owed)


def test_nothing_owed_after_the_last_restore_settled_stands_at_the_gate(tmp_path: Path) -> None:
    clock, owed = ManualClock(100.0), _Owed()
    ahead = _ahead(tmp_path, owed, clock)
    _write(tmp_path, (100.0, "kill-node", "inject"))
    ahead.step()
    assert owed.asked == [] and not ahead.cleared()  # a fault on: nothing asked
    _write(tmp_path, (108.0, "kill-node", "restore"))
    clock.advance(8.0 + LOOKAHEAD_SETTLE_S / 2)
    ahead.step()
    assert owed.asked == [] and not ahead.cleared()  # just restored: its recovery is not on record yet
    clock.advance(LOOKAHEAD_SETTLE_S)
    ahead.step()
    assert len(owed.asked) == 1 and ahead.cleared()
    ahead.step()
    assert len(owed.asked) == 1  # asked once: the answer stands while no fault comes


def test_an_inject_after_the_check_takes_the_answer_back(tmp_path: Path) -> None:
    """An experiment of several steps: cleared between two of them, then a fault of its own on the link."""
    clock, owed = ManualClock(100.0), _Owed()
    ahead = _ahead(tmp_path, owed, clock)
    _write(tmp_path, (95.0, "kill-pod", "inject"), (97.0, "kill-pod", "restore"))
    ahead.step()
    assert ahead.cleared()
    clock.advance(1.0)
    _write(tmp_path, (101.0, "slow-link", "inject"))
    assert not ahead.cleared()  # the gate asks itself
    _write(tmp_path, (106.0, "slow-link", "restore"))
    clock.advance(5.0 + LOOKAHEAD_SETTLE_S)
    ahead.step()
    assert len(owed.asked) == 2 and ahead.cleared()


def test_a_baseline_owed_is_asked_again_later_and_never_stands(tmp_path: Path) -> None:
    clock, owed = ManualClock(100.0), _Owed()
    owed.owing = True
    ahead = _ahead(tmp_path, owed, clock)
    _write(tmp_path, (90.0, "kill-node", "inject"), (95.0, "kill-node", "restore"))
    ahead.step()
    assert len(owed.asked) == 1 and not ahead.cleared()
    clock.advance(LOOKAHEAD_RETRY_S / 2)
    ahead.step()
    assert len(owed.asked) == 1  # not again at once: each ask is a records read
    clock.advance(LOOKAHEAD_RETRY_S)
    owed.owing = False
    ahead.step()
    assert len(owed.asked) == 2 and ahead.cleared()


def test_the_thread_asks_and_stops(tmp_path: Path) -> None:
    """Started as e2e starts it: it asks on its own, and `stop` returns with the answer kept."""
    import time

    owed = _Owed()
    _write(tmp_path, (time.time() - 10, "kill-node", "inject"), (time.time() - 5, "kill-node", "restore"))
    ahead = LinkLookahead(tmp_path, T, [LAX], lasts=owed).start()
    deadline = time.monotonic() + 10
    while not owed.asked and time.monotonic() < deadline:
        time.sleep(0.05)
    ahead.stop()
    assert owed.asked and ahead.cleared()
