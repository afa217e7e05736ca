"""A correct mesh the harness judged by how fast this machine is (t48b): each reproducer next to its control.

Rule: same config, same verdict. The bound under test was an assumption about this machine's speed; each fix
reads it from what the run recorded instead.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from harness.contract.rundir import ACCESS_LOG_FLUSH_S, COLLECTED_FILE, collected_until, write_collected
from harness.observe.collector import AccessLogCollector
from harness.testing.fake import MemoryLogSource
from harness.verify import pending_recoveries
from harness.verify.pending import RECORDS_LAG_S
from harness.verify.synth import Scenario
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import WIDE
from tests.test_verify_audit7 import _edit_log
from tests.test_verify_audit15 import WIDE_LAX, _two_callers
from tests.verdicts import verify

T0 = Scenario(WIDE).start
BEHIND_S = 3.0  # a compaction of the run's records into Parquet between two polls, on a long run or a busy machine


# -- 1. the cool-down assumed the collector copies every line within its poll interval ------------------------------
def test_a_collector_behind_its_poll_holds_the_recovery_off_until_it_caught_up(tmp_path: Path) -> None:
    """HOLE. The cool-down (`pending_recoveries`) took every caller's records as reaching `RECORDS_LAG_S` (Envoy's
    flush plus the collector's 0.2 s poll) before now. The collector's polls are that far apart only on an idle
    machine: it compacts the records between two of them, seconds on a long run or a busy one. With its last
    poll begun at 52 s and now 55 s, the second public-api's Region-served second after 51 s was not copied yet,
    was read as no call, the first public-api's good hops counted as the recovery, and e2e stopped the users:
    the records then showed the second's Region hops after them, "the run ended" (unverified), where an idle
    collector kept the users on. How far the records reach is the collector's own record (collected.json)."""
    d, second = _two_callers(tmp_path / "behind", 52.0, 52.5)
    assert _edit_log(d, second, lambda r, t: None if t >= 51.0 else r) > 0  # its last second not copied yet
    write_collected(d / COLLECTED_FILE, T0 + 52.0)
    assert [(p.zone, p.upstream) for p in pending_recoveries(d, WIDE, T0 + 52.0 + BEHIND_S)] == [
        (WIDE_LAX, "product-api")
    ]
    stopped, _ = _two_callers(tmp_path / "stopped", 52.3, 52.5)  # what stopping the users on the old rule gave
    v = verify(stopped)
    assert not v.passed and "the run ended" in " ".join(why(v)), why(v)


def test_a_collector_that_caught_up_lets_the_recovery_on_record_end_the_cool_down(tmp_path: Path) -> None:
    """The control: the same mesh with the collector's last poll begun just now, every line copied: the recovery
    on record is not waited for; and no collector record (a run recorded before it) keeps the assumed lag."""
    d, _ = _two_callers(tmp_path / "caught-up", 56.0, 52.5)
    write_collected(d / COLLECTED_FILE, T0 + 56.0)
    assert pending_recoveries(d, WIDE, T0 + 56.0 + 0.1) == []
    v = verify(d)
    assert v.passed, why(v)
    (d / COLLECTED_FILE).unlink()
    assert pending_recoveries(d, WIDE, T0 + 56.0 + 0.1) == []


def test_the_collector_records_the_start_of_its_last_completed_poll(tmp_path: Path) -> None:
    """The record's writer: after each poll the collector says when it began (each line its sources had then is
    in the run directory), so a compaction between two polls leaves it where the last poll began."""
    lines: list[str] = []
    src = MemoryLogSource("web-1", lines)
    out = tmp_path / "accesslogs"
    marker = tmp_path / COLLECTED_FILE
    col = AccessLogCollector(lambda: [src], out, collected_file=marker)
    assert collected_until(tmp_path) is None
    before = time.time()
    lines.append('{"start_time": "2026-01-01T00:00:00.000Z"}')
    assert col.poll_once() == 1
    polled = collected_until(tmp_path)
    assert polled is not None and before - ACCESS_LOG_FLUSH_S <= polled <= time.time() - ACCESS_LOG_FLUSH_S


def test_a_compaction_between_polls_keeps_the_record_at_the_poll_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The collector's thread held in a compaction: its record stays at the poll before, however long it takes,
    and moves on with the next poll once it is done."""
    src = MemoryLogSource("web-1", [])
    held, release = threading.Event(), threading.Event()

    def slow_compact(_run_dir: Path) -> None:
        held.set()
        release.wait(10)

    monkeypatch.setattr("harness.observe.collector.compact_all", slow_compact)
    col = AccessLogCollector(lambda: [src], tmp_path / "accesslogs", interval_s=0.01, compact_run_dir=tmp_path,
                             compact_every_s=0.0, collected_file=tmp_path / COLLECTED_FILE)  # fmt: skip
    col.start()
    try:
        assert held.wait(10)
        during = collected_until(tmp_path)
        assert during is not None
        time.sleep(0.3)
        assert collected_until(tmp_path) == during  # no poll while the compaction runs
        release.set()
        deadline = time.monotonic() + 10
        while (now := collected_until(tmp_path)) == during and time.monotonic() < deadline:
            time.sleep(0.01)
        assert now is not None and now > during
    finally:
        release.set()
        col.stop()


def test_an_unreadable_collector_record_is_no_record(tmp_path: Path) -> None:
    """A torn or foreign collected.json says nothing: the assumed lag applies (`RECORDS_LAG_S`)."""
    for text in ("", "{", "[1]", '{"polled": "x"}', "{}"):
        (tmp_path / COLLECTED_FILE).write_text(text)
        assert collected_until(tmp_path) is None, text
    assert RECORDS_LAG_S >= ACCESS_LOG_FLUSH_S
