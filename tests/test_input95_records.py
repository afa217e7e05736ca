"""A recorded fault that cannot be read fails the verdict as unverified (nothing recorded is lost).

chaos.jsonl is the timeline every fault check judges from. A line of it the loader had to skip held an inject
or a restore nobody judged: before this, such a line was only named in the notes, and the verdict could pass a
run whose fault was never looked at.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.contract.rundir import CHAOS_FILE
from harness.verify import EXPERIMENT_RAN
from tests.test_verify_soundness import KILL, failed, run
from tests.verdicts import verify


def _insert(d: Path, at: int, line: bytes) -> None:
    path = d / CHAOS_FILE
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(at, line)
    path.write_bytes(b"".join(lines))


def test_a_garbled_inject_record_fails_the_verdict_as_unverified(tmp_path: Path) -> None:
    """HOLE: a complete line of chaos.jsonl that is not JSON (an inject of a second kill, garbled) was skipped
    with a note, and the run passed: the fault it recorded was never judged."""
    d = run(tmp_path, faults=[KILL])
    assert verify(d).passed  # control: the clean run passes
    inject = json.loads((d / CHAOS_FILE).read_bytes().splitlines()[0])
    garbled = json.dumps({**inject, "fault": "kill-2"}).encode()[:-9] + b"\n"  # cut, but the line is complete
    _insert(d, 1, garbled)
    v = verify(d)
    assert not v.passed
    assert failed(v) == {EXPERIMENT_RAN}, v.failure_messages
    msg = v.invariant(EXPERIMENT_RAN).message
    assert f"{CHAOS_FILE}: 1 line(s) could not be read (line 2) - not JSON (corrupt or truncated)" in msg, msg
    assert "the faults they held are unverified" in msg
    assert {"file": CHAOS_FILE, "line": 2, "reason": "not JSON (corrupt or truncated)"} in v.run.skipped_records


def test_a_chaos_record_without_a_time_fails_too(tmp_path: Path) -> None:
    """Valid JSON but no usable `ts`: the loader skips it just the same, so it is just as unjudged."""
    d = run(tmp_path, faults=[KILL])
    _insert(d, 1, b'{"fault": "kill-2", "phase": "inject", "ts": "soon"}\n')
    v = verify(d)
    assert failed(v) == {EXPERIMENT_RAN}, v.failure_messages
    assert f"{CHAOS_FILE}: 1 line(s) could not be read (line 2) - no valid ts" in v.invariant(EXPERIMENT_RAN).message


def test_a_torn_last_chaos_line_fails_as_well(tmp_path: Path) -> None:
    """A torn LAST line is no harmless artefact here: `timeline.record` writes each line in one append, so a torn
    one is a short write (a full disk) or a copy cut short, and what it recorded (an inject or a restore) is
    lost all the same."""
    d = run(tmp_path, faults=[KILL])
    path = d / CHAOS_FILE
    raw = path.read_bytes()
    path.write_bytes(raw + raw.splitlines()[0][:30])
    v = verify(d)
    assert failed(v) == {EXPERIMENT_RAN}, v.failure_messages
    n = raw.count(b"\n") + 1
    assert f"{CHAOS_FILE}: 1 line(s) could not be read (line {n}) - truncated last line" in (
        v.invariant(EXPERIMENT_RAN).message
    )


def test_a_short_write_of_a_chaos_record_fails_the_action_that_recorded_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk leaves the write short: the torn line fails the verdict (above), and the action recording
    it fails too, rather than running its fault as if it were on record. A whole write is recorded as before."""
    from harness.chaos import timeline
    from harness.contract.rundir import FaultKind

    path = tmp_path / CHAOS_FILE
    timeline.record("f1", "inject", "kill", "z", FaultKind.SERVICE_DOWN, ["product-api"], path=path)
    assert json.loads(path.read_text())["fault"] == "f1"
    real = timeline.os.write
    monkeypatch.setattr(timeline.os, "write", lambda fd, data: real(fd, data[:10]))
    with pytest.raises(OSError, match=r"wrote 10 of \d+ bytes of the restore line of f1"):
        timeline.record("f1", "restore", "kill", "z", FaultKind.SERVICE_DOWN, ["product-api"], path=path)
