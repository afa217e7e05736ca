"""The users' entry sidecar's access log with a stretch missing in the middle (issue 7: the verdict must be true).

The gap rule (`UserChecks._served_but_silent`) reads a pod's serving from its callers' logs; the entry's
(frontend's) callers are users, whose requests name a zone, not a pod, so an audit dropped 30 s of LAX's frontend
sidecar log in the middle of a run and the verdict PASSED: a stretch of the entry's calls crossing to another
Local Zone would hide there. Now every successful `/api` request of a zone must have a hop of the zone's entry
within its lifetime while the zone's entry logs go on (`UserChecks._entry_silent`). Next to each broken case,
the controls a correct mesh gives: the whole log, a log that simply ends early (unchanged), and a node kill
whose last unflushed second of the entry's log died with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.contract.rundir import ACCESS_LOG_FLUSH_S
from harness.verify import COVERAGE, Verdict
from harness.verify.invariants.users import SILENT_MIN_HOPS, UserChecks
from harness.verify.synth import write_run
from tests.test_verify_audit import why
from tests.test_verify_audit5 import _scenario
from tests.test_verify_audit7 import KILL, _lose
from tests.test_verify_node_fault import INJECT, node_kill
from tests.test_verify_soundness import LAX, T0, failed, pod_of
from tests.verdicts import rows, verify, write_rows

ENTRY_TEXT = "the entry sidecars (frontend)"


def _entry_pod(d: Path, zone: str = LAX) -> str:
    return str(pod_of(d, zone, "frontend")["pod"])


def _verdict_text(v: Verdict) -> str:
    return " ".join(why(v))


def _entry_node_kill(tmp_path: Path) -> Path:
    """A kill_node of the node running LAX's only frontend (kind's records), at 30 requests/s: the action records
    the zone's entry down (`entry_down`: frontend is among the services it left without a pod in the zone)."""
    d = node_kill(tmp_path, "kind", service="frontend", rate_per_zone=30)
    chaos = rows(d / "chaos.jsonl")
    for c in chaos:
        c["entry_down"] = True
    write_rows(d / "chaos.jsonl", chaos)
    return d


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
@pytest.mark.parametrize(("case", "faults"), [("steady", []), ("fault", [KILL])])
def test_an_entry_log_with_a_gap_is_unverified(tmp_path: Path, accesslogs: str, case: str, faults: list[Any]) -> None:
    """HOLE. 30 s of LAX's frontend sidecar log are lost in the middle of the run (a `kubectl logs -f` stream
    that reconnected, a lost chunk) while LAX's users were answered throughout: every call the entry made then
    was never judged, and the verdict PASSED (the gap rule asked only pods whose callers are sidecars). Now
    coverage fails as unverified, naming LAX and the first request without its hop."""
    d = write_run(tmp_path / "run", _scenario(faults, accesslogs=accesslogs))
    assert _lose(d, _entry_pod(d), 20, 50) >= 4 * 30
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = _verdict_text(v)
    assert ENTRY_TEXT in text and f"{LAX}: " in text and "requests, first at" in text and "first at" in text, text


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_control_a_whole_entry_log_passes(tmp_path: Path, accesslogs: str) -> None:
    """The same runs with the entry's log whole pass: each `/api` request's hop starts in its lifetime."""
    for case, faults in (("steady", []), ("fault", [KILL])):
        v = verify(write_run(tmp_path / case, _scenario(faults, accesslogs=accesslogs)))
        assert v.passed, why(v)


def test_a_short_gap_is_below_the_threshold(tmp_path: Path) -> None:
    """Fewer than SILENT_MIN_HOPS requests without their hop (a second's lines at 4 requests/s) say nothing."""
    d = write_run(tmp_path / "run", _scenario([]))
    assert 0 < _lose(d, _entry_pod(d), 40, 41) < SILENT_MIN_HOPS
    v = verify(d)
    assert v.passed, why(v)


def test_requests_the_entry_answered_itself_are_not_asked(tmp_path: Path) -> None:
    """`GET /` (the frontend's own page) and failed requests need no call of the entry: the same gap with only
    such requests in it passes."""
    d = write_run(tmp_path / "run", _scenario([]))
    pod = _entry_pod(d)
    assert _lose(d, pod, 40, 60) >= 4 * 20
    reqs = rows(d / "requests.jsonl")
    for i, r in enumerate(q for q in reqs if q["zone"] == LAX and 40 <= q["ts"] - T0 < 60):
        if i % 2:
            r.update(endpoint="shop", name="GET /")
        else:
            r.update(status=404, ok=False, error="HTTP 404")
    write_rows(d / "requests.jsonl", reqs)
    v = verify(d)
    assert ENTRY_TEXT not in _verdict_text(v), why(v)


def test_an_entry_log_that_ends_early_is_unverified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (audit 8). LAX's entry log stops for good at 60 s of 90 (a `kubectl logs -f` stream that did not
    follow a rotation) while LAX's users are served to the end: no line after the missing requests, so no gap,
    and the verdict PASSED, the entry's calls of the last 30 s never judged (`_served_but_silent` asks the same
    of every other sidecar). Now the requests begun more than SILENT_LAG_S after the zone's entry logs' last
    line are unverified too; with the rule switched off the verdict is the one it gave before."""
    d = write_run(tmp_path / "run", _scenario([KILL]))
    assert _lose(d, _entry_pod(d), 60, 1e9) >= 4 * 25
    v = verify(d)
    assert not v.passed and failed(v) == {COVERAGE}, why(v)
    assert ENTRY_TEXT in _verdict_text(v) and "after its entry logs' last line at" in _verdict_text(v), why(v)
    monkeypatch.setattr(UserChecks, "_entry_silent", lambda self: [])
    assert verify(d).passed


@pytest.mark.parametrize("lost_s", [0.2, ACCESS_LOG_FLUSH_S])
def test_an_entry_node_kill_losing_its_last_unflushed_second_passes(tmp_path: Path, lost_s: float) -> None:
    """FALSE FAIL guarded against. On kind a node kill (`docker stop`) of LAX's frontend's node kills its sidecar
    with up to one flush interval of lines in Envoy's buffer, and after the restore the kubelet restarts the same
    pod, whose log goes on: the requests it answered in that last second have no hop, and a line after them.
    At 30 requests/s that is >= 10 requests: excused, as the node fault's own."""
    d = _entry_node_kill(tmp_path)
    pod = _entry_pod(d)
    assert _lose(d, pod, INJECT - lost_s, INJECT) >= (SILENT_MIN_HOPS if lost_s >= 1 else 1)
    v = verify(d)
    assert v.passed, why(v)


def test_an_entry_gap_well_before_a_node_kill_is_still_one(tmp_path: Path) -> None:
    """The broken counterpart: the same pod's log missing two seconds well before the kill is a gap."""
    d = _entry_node_kill(tmp_path)
    assert _lose(d, _entry_pod(d), INJECT - 6.0, INJECT - 4.0) >= SILENT_MIN_HOPS
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    assert ENTRY_TEXT in _verdict_text(v), why(v)


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_a_zone_without_any_entry_line_is_unverified(tmp_path: Path, accesslogs: str) -> None:
    """LAX's entry sidecar log missing from start to end, its users answered throughout: no entry hop of the
    zone at all, so the join by zone finds nothing for any of its requests. Unverified, named, with no last line
    (the zone travels through the join as the hops' name ENUM: a zone no hop names must still be itself)."""
    d = write_run(tmp_path / "run", _scenario([], accesslogs=accesslogs))
    assert _lose(d, _entry_pod(d), -1e9, 1e9) >= 4 * 60
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = _verdict_text(v)
    assert ENTRY_TEXT in text and f"{LAX}: " in text and "after its entry logs' last line)" in text, text


def test_every_request_zone_keeps_its_name_as_a_hop_key(tmp_path: Path) -> None:
    """`RunData.hop_key` turns requests.zone into the hops' ENUM for join keys: a zone no hop names (requests
    from a city whose sidecars logged nothing) is in it too, so it is never merged into NULL with another."""
    from harness.verify.rundata import load_run

    d = write_run(tmp_path / "run", _scenario([]))
    reqs = rows(d / "requests.jsonl")
    extra = [dict(r, zone="us-west-2-nowhere-1a") for r in reqs[:3]]
    write_rows(d / "requests.jsonl", reqs + extra)
    run = load_run(d)
    assert run.hop_names
    got = run.con.execute(
        f"SELECT count(*) FILTER (WHERE {run.hop_key('zone')} IS NULL), "
        f"count(*) FILTER (WHERE CAST({run.hop_key('zone')} AS VARCHAR) <> zone), "
        "count(*) FILTER (WHERE zone = 'us-west-2-nowhere-1a') FROM requests WHERE zone IS NOT NULL"
    ).fetchone()
    assert got == (0, 0, 3)
    nowhere = run.con.execute("SELECT count(*) FROM hops WHERE caller_zone = 'us-west-2-nowhere-1a'").fetchone()
    assert nowhere == (0,)
