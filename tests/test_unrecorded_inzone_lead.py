"""Requests an in-zone locust worker had in hand when a fault took its node down are not "records lost".

s55a made coverage fail, as unverified, a request the entry sidecar logged by its id that no record of
requests.jsonl names (a user's records lost while its requests met 503s), excusing only the requests in flight
when the users were stopped at the end. With `--workers-in-zone` (kind/EKS), a zone's users run in a worker pod on
the zone's own nodes: a zone outage drains them and a node kill stops the node, so the worker dies with the
requests it had in flight, which its zone's entry sidecar had logged. A correct mesh then failed every zone
outage that way. Those requests are excused too: in-zone records only (the runner's users survive any fault of a
zone), in a zone whose nodes a fault took down (zone-down, or the node kill of the worker's own node), begun
within the request timeouts (and the zone's clock bound) before that fault and until its restore.
"""

from __future__ import annotations

from pathlib import Path

from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, Scenario
from tests.test_soundness_s51a import _start
from tests.test_soundness_s55a import _records_lost
from tests.test_verify_audit import why
from tests.test_verify_clock import BEHIND, _clock, _skew
from tests.test_verify_soundness import LAX, T
from tests.test_workerclock_w48f import N1, _worker_stamped
from tests.verdicts import SHARED, failed_messages, rows, verify

OUTAGE = FaultSpec("outage-lax", "zone-down", LAX, (), 30, 50, 1.0, 2.0, entry_down=True)


def _lost(tmp_path: Path, name: str, lo: float, hi: float, in_zone: bool) -> Path:
    """LAX's zone outage at 30-50 s; every LAX request begun in [lo, hi) s logged by the entry sidecar and on no
    record (its worker gone with it); `in_zone`: the requests as in-zone workers record them (LAX's on n1)."""
    d = SHARED.run(tmp_path / name, Scenario(T, duration_s=90, rate_per_zone=4, faults=[OUTAGE], accesslogs="kind"))
    start = _start(d)
    ids = {r["request_id"] for r in rows(d / "requests.jsonl") if r["zone"] == LAX and lo <= r["ts"] - start < hi}
    if in_zone:
        _worker_stamped(_skew(d, BEHIND), N1, 0.0)
        _clock(d, BEHIND, requests_in_zones=True)
    assert _records_lost(d, ids, None) >= len(ids) >= 3
    return d


def test_an_in_zone_workers_requests_in_flight_when_its_zone_went_down_pass(tmp_path: Path) -> None:
    """FINDING. LAX's worker pod drained by the zone outage at 30 s, with the requests it had begun in its last
    second logged by LAX's entry sidecar and never recorded: a correct mesh failed "the users' records are
    incomplete"."""
    v = verify(_lost(tmp_path, "drained", 29.0, 30.0, in_zone=True))
    assert v.passed, why(v)


def test_control_an_in_zone_workers_records_lost_away_from_any_fault_are_unverified(tmp_path: Path) -> None:
    """Control: the same worker's records lost at 15-16 s, no fault near: still unverified."""
    failed = failed_messages(verify(_lost(tmp_path, "quiet", 15.0, 16.0, in_zone=True)))
    assert COVERAGE in failed and "requests.jsonl" in failed[COVERAGE], failed


def test_control_the_runners_users_lose_nothing_to_a_zone_outage(tmp_path: Path) -> None:
    """Control: users driven from the runner (the local backend, kind/EKS without in-zone workers) outlive any
    zone's fault: their records lost just before the outage are still unverified."""
    failed = failed_messages(verify(_lost(tmp_path, "runner", 29.0, 30.0, in_zone=False)))
    assert COVERAGE in failed and "requests.jsonl" in failed[COVERAGE], failed
