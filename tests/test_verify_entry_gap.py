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

import itertools
from pathlib import Path
from typing import Any

import pytest

from harness.contract.rundir import ACCESS_LOG_FLUSH_S
from harness.verify import COVERAGE, Verdict
from harness.verify.invariants.users import SILENT_MIN_HOPS, UserChecks
from harness.verify.synth import Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit5 import _scenario
from tests.test_verify_audit6 import with_replicas
from tests.test_verify_audit7 import KILL, _edit_log, _lose
from tests.test_verify_node_fault import INJECT, node_kill
from tests.test_verify_soundness import LAX, T0, failed, pod_of
from tests.verdicts import rows, verify, write_rows

ENTRY_TEXT = "the entry sidecars (frontend)"
USER_MS = 500.0


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


@pytest.mark.parametrize("ids", [True, False], ids=["by-id", "by-time"])
@pytest.mark.parametrize("accesslogs", ["local", "kind"])
@pytest.mark.parametrize(("case", "faults"), [("steady", []), ("fault", [KILL])])
def test_an_entry_log_with_a_gap_is_unverified(
    tmp_path: Path, accesslogs: str, case: str, faults: list[Any], ids: bool
) -> None:
    """HOLE. 30 s of LAX's frontend sidecar log are lost in the middle of the run (a `kubectl logs -f` stream
    that reconnected, a lost chunk) while LAX's users were answered throughout: every call the entry made then
    was never judged, and the verdict PASSED (the gap rule asked only pods whose callers are sidecars). Now
    coverage fails as unverified, naming LAX and the first request without its hop: by the requests' ids, and
    by time alone in a run recorded without them (kind's logs: public-api's inbound lines of the same requests
    carry the ids too, and show nothing of what the entry logged)."""
    d = write_run(tmp_path / "run", _scenario(faults, accesslogs=accesslogs, request_ids=ids))
    assert _lose(d, _entry_pod(d), 20, 50) >= 4 * 30
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = _verdict_text(v)
    assert ENTRY_TEXT in text and f"{LAX}: " in text and "requests, first at" in text and "first at" in text, text


@pytest.mark.parametrize("ids", [True, False], ids=["by-id", "by-time"])
@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_control_a_whole_entry_log_passes(tmp_path: Path, accesslogs: str, ids: bool) -> None:
    """The same runs with the entry's log whole pass: each `/api` request's hop is logged with its id (and,
    without ids, starts in its lifetime)."""
    for case, faults in (("steady", []), ("fault", [KILL])):
        v = verify(write_run(tmp_path / case, _scenario(faults, accesslogs=accesslogs, request_ids=ids)))
        assert v.passed, why(v)


def _two_entry_pods(tmp_path: Path, faults: list[Any] | None = None, **kw: Any) -> Path:
    """A run of the default topology with two frontend pods per zone: each user request enters one of them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    t = with_replicas(tmp_path, "frontend")
    d = write_run(tmp_path / "run", Scenario(t, duration_s=90, faults=list(faults or []), **kw))
    assert len(_lax_entry_pods(d)) == 2
    # the users are 500 ms away (a city's access link, `userLatencyMs`): each request's lifetime holds several
    # of the zone's entry hops, as a real run's (33 probes/s and the shoppers) do
    reqs = rows(d / "requests.jsonl")
    for r in reqs:
        r["latency_ms"] += USER_MS
    write_rows(d / "requests.jsonl", reqs)
    return d


def _lax_entry_pods(d: Path) -> list[str]:
    inv = rows(d / "inventory.jsonl")
    return sorted({str(p["pod"]) for p in inv if p.get("zone") == LAX and p.get("service") == "frontend"})


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
@pytest.mark.parametrize(("case", "faults"), [("steady", []), ("fault", [KILL])])
def test_a_gap_in_one_of_two_entry_pods_logs_is_unverified(
    tmp_path: Path, accesslogs: str, case: str, faults: list[Any]
) -> None:
    """HOLE (the time rule's blind spot). Two frontend pods in LAX, each entering half its users' requests; 30 s
    of one pod's log are lost. The other pod logged a call within the lifetime of every request of the zone,
    so the time rule found no request without a hop and the verdict PASSED (it still does for the same run
    recorded without ids). Each request's id names its own line: the requests the first pod served then have
    none, while the zone's entry logs go on."""
    for ids in (False, True):
        d = _two_entry_pods(tmp_path / str(ids), faults, accesslogs=accesslogs, rate_per_zone=8, request_ids=ids)
        assert _lose(d, _lax_entry_pods(d)[0], 20, 50) >= 8 * 30 / 2 * 0.7
        v = verify(d)
        if not ids:
            assert ENTRY_TEXT not in _verdict_text(v), why(v)  # the blind spot the ids close
            continue
        assert not v.passed and COVERAGE in failed(v), why(v)
        text = _verdict_text(v)
        assert ENTRY_TEXT in text and f"{LAX}: " in text and "requests, first at" in text, text


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_control_two_entry_pods_with_whole_logs_pass(tmp_path: Path, accesslogs: str) -> None:
    """The same runs with both entry pods' logs whole pass; so do they recorded without ids (an older run is
    judged by time, as it was)."""
    for faults, ids in itertools.product(([], [KILL]), (True, False)):
        d = _two_entry_pods(tmp_path / f"{len(faults)}-{ids}", faults, accesslogs=accesslogs, rate_per_zone=8,
                            request_ids=ids)  # fmt: skip
        v = verify(d)
        assert v.passed, why(v)


def _strip_ids(d: Path, pods: list[str]) -> int:
    """The request ids gone from `pods`' access-log lines (a proxy on the way replaced the header): the users'
    requests still name theirs."""
    return sum(_edit_log(d, p, lambda r, _t: {k: v for k, v in r.items() if k != "request_id"}) for p in pods)


def test_ids_that_never_reach_two_entry_pods_logs_are_unverified(tmp_path: Path) -> None:
    """The users' requests carry ids, but none reaches LAX's entry logs: LAX falls back to the time rule, which
    cannot see a gap in one of its two entry pods' logs behind the other's. Unverified, with the header named,
    though both logs are whole; the other zones, whose lines carry their ids, are judged by them."""
    d = _two_entry_pods(tmp_path, rate_per_zone=8)
    assert _strip_ids(d, _lax_entry_pods(d)) >= 8 * 60
    v = verify(d)
    assert not v.passed and failed(v) == {COVERAGE}, why(v)
    text = _verdict_text(v)
    assert "logged none of their users' request ids (X-Request-Id" in text and f"{LAX}: " in text, text
    assert ENTRY_TEXT not in text, text


def test_ids_that_never_reach_one_entry_pods_log_leave_the_time_rule(tmp_path: Path) -> None:
    """With one entry pod in the zone the time rule is whole: the same ids lost pass with a whole log, and a
    gap in it is still found."""
    d = write_run(tmp_path / "run", _scenario([]))
    pod = _entry_pod(d)
    assert _strip_ids(d, [pod]) >= 4 * 60
    v = verify(d)
    assert v.passed, why(v)
    assert _lose(d, pod, 20, 50) >= 4 * 30
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    assert ENTRY_TEXT in _verdict_text(v), why(v)


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
