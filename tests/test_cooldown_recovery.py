"""e2e's cool-down keeps the traffic on until the last recoveries are on record (harness.verify.pending).

A cool-down of 20 requests per zone after the last restore stopped the users a second after it at 20
requests a second, before a restored endpoint reached Envoy on a slower machine or cluster: the verdict then
left the recovery unverified, and a correct mesh passed or failed by the rate and the machine. The records
of the run so far decide now: each restored Local Zone's pairs need `GOOD_HOPS` in-zone successes after their
last bad hop, or maxRecoveryS past the restore.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.topology import load_topology
from harness.verify import Pending, pending_recoveries
from harness.verify.pending import GOOD_HOPS
from harness.verify.rundata import find_topology
from harness.verify.synth import write_run
from tests.test_verify_audit5 import _scenario
from tests.test_verify_audit7 import KILL, _edit_log, _lose
from tests.test_verify_soundness import LAX, T0, pod_of

RESTORE = T0 + float(KILL.restore or 0)


def _run(tmp_path: Path, accesslogs: str = "local", **kw: Any) -> tuple[Path, Any]:
    d = write_run(tmp_path / "run", _scenario([replace(KILL, **kw)], accesslogs=accesslogs))
    return d, load_topology(find_topology(d))


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_a_recovery_on_record_is_not_waited_for(tmp_path: Path, accesslogs: str) -> None:
    """The synthetic mesh is back in LAX a second after the restore and the run goes on 40 s: nothing pending."""
    d, t = _run(tmp_path, accesslogs)
    assert pending_recoveries(d, t, RESTORE + 5) == []


def test_records_that_stop_at_the_restore_are_waited_for_until_max_recovery(tmp_path: Path) -> None:
    """LAX's public-api sidecar has no line after the restore yet (the users stopped, or the lines are still in
    Envoy's buffer): LAX -> product-api is pending, and no longer once maxRecoveryS has passed since the restore
    (the verdict decides it then). Pairs of zones no fault took down are never asked."""
    d, t = _run(tmp_path)
    assert _lose(d, str(pod_of(d, LAX, "public-api")["pod"]), float(KILL.restore or 0), 1e9) > 0
    left = pending_recoveries(d, t, RESTORE + 5)
    assert [(p.zone, p.upstream, p.fault) for p in left] == [(LAX, "product-api", KILL.fault)]
    assert left[0].due == pytest.approx(RESTORE + t.slo.max_recovery_s)
    assert str(left[0]) == f"{LAX} -> product-api (after {KILL.fault})"
    assert pending_recoveries(d, t, RESTORE + t.slo.max_recovery_s) == []


def test_a_zone_still_served_from_the_region_is_waited_for(tmp_path: Path) -> None:
    """Every hop after the restore still served from the Region (the restored endpoint not in Envoy yet): the
    recovery is not on record, however many successes there are."""
    d, t = _run(tmp_path, recovery_delay_s=1e6)
    assert [p.upstream for p in pending_recoveries(d, t, RESTORE + 5)] == ["product-api"]


def test_the_good_hops_must_come_after_the_last_bad_one(tmp_path: Path) -> None:
    """Back in-zone, then one more hop served from the Region at the end of the records (an Envoy worker that
    had not learnt of it yet): pending again until GOOD_HOPS in-zone successes follow it."""
    d, t = _run(tmp_path)
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    region = pod_of(d, "us-west-2a", "product-api")
    # the last line of the records is served elsewhere; the ones after it are lost
    end = float(KILL.restore or 0) + 5.0
    assert _lose(d, pod, end + 0.5, 1e9) > 0
    kept: list[float] = []

    def last_elsewhere(r: dict[str, Any], at: float) -> dict[str, Any]:
        if "product-api" in str(r["upstream_cluster"]) and end - 0.5 <= at < end + 0.5:
            kept.append(at)
            return dict(r, upstream_host=f"{region['ip']}:{str(r['upstream_host']).rsplit(':', 1)[1]}")
        return r

    _edit_log(d, pod, last_elsewhere)
    assert kept
    assert [p.upstream for p in pending_recoveries(d, t, RESTORE + 10)] == ["product-api"]
    assert GOOD_HOPS > 1


def test_wait_recoveries_says_what_it_waits_for_once_and_ends_when_nothing_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import harness.verify
    from harness.e2e import wait_recoveries

    p = Pending("f1", LAX, "product-api", ("public-api",), time.time(), time.time() + 30)
    answers = [[p], [p], []]
    monkeypatch.setattr(harness.verify, "pending_recoveries", lambda *a: answers.pop(0))
    said: list[str] = []
    t0 = time.monotonic()
    wait_recoveries(Path("."), None, said.append, poll_s=0.01)  # type: ignore[arg-type]
    assert answers == [] and time.monotonic() - t0 < 5
    assert len(said) == 1 and f"{LAX} -> product-api (after f1)" in said[0] and "at most 30 s" in said[0]


def test_a_restore_that_came_back_in_part_is_waited_for_until_the_verdict_would_take_it(tmp_path: Path) -> None:
    """After the restore every other LAX product-api call still went to the Region (a mesh that took the zone's
    instance back in part), then three in-zone ones: the verdict does not take three as shown against a half
    share (`recovery_chance`), so the cool-down waits on; twelve are enough for both."""
    from tests.test_verify_audit9 import _half_back

    d, t = _run(tmp_path)
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    end = float(KILL.restore or 0) + 6.0
    assert _lose(d, pod, end, 1e9) > 0  # the records so far: six seconds after the restore
    _half_back(d, GOOD_HOPS)
    assert [p.upstream for p in pending_recoveries(d, t, RESTORE + 7)] == ["product-api"]
    _half_back(d, 12)
    assert pending_recoveries(d, t, RESTORE + 7) == []
