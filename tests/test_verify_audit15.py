"""Verdicts a fifteenth audit found decided by timing rather than the mesh ("same config, same verdict").

Each case is a pair of synthetic runs (harness.verify.synth) of one correct mesh that differ only in a timing a
correct mesh and the harness may legitimately have, and got different verdicts before their fix; each docstring's
"HOLE." says how. Next to each, a control: the broken mesh (or records) still fails at both timings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.contract.rundir import ACCESS_LOG_FLUSH_S
from harness.verify import COVERAGE, pending_recoveries
from harness.verify.pending import RECORDS_LAG_S
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import WIDE
from tests.test_verify_audit7 import _edit_log, _lose
from tests.test_verify_node_fault import INJECT, node_kill
from tests.test_verify_soundness import LAX, failed, inventory, pod_of
from tests.verdicts import rows, verify, write_rows

WIDE_LAX = "us-west-2-lax-1a"
STOPS = [pytest.param(0.05, id="stop-50ms"), pytest.param(2.0, id="stop-2s")]


def _slow_stop(tmp_path: Path, stop_s: float, **kw: Any) -> Path:
    """A kind node kill (`node_kill`, LAX's public-api on the node) whose `docker stop` took `stop_s`: the inject
    is recorded before the primitive runs (harness.chaos.actions._held_fault), the node's pods serve on until
    they die `stop_s` later, and the "inject" counter snapshot is taken once `docker stop` has returned."""
    d = node_kill(tmp_path, "kind", service="public-api", **{"rate_per_zone": 30, **kw})
    chaos = rows(d / "chaos.jsonl")
    for c in chaos:
        if c["phase"] == "inject":
            c["ts"] -= stop_s
    write_rows(d / "chaos.jsonl", chaos)
    return d


# -- 1. what a node's sidecar had not flushed when it died, after a `docker stop` that took a while ---------------
@pytest.mark.parametrize("stop_s", STOPS)
def test_a_killed_nodes_unflushed_second_is_no_gap_however_long_its_stop_took(tmp_path: Path, stop_s: float) -> None:
    """HOLE. kind's node kill is `docker stop` (systemd's shutdown of the node's units, then the container
    stops), recorded before it runs; the node's sidecars die with up to a flush interval (1 s) of lines in
    Envoy's buffer, and after the restore the same pod's log goes on. The gap rule (`_served_but_silent`)
    excused the flush interval before the *inject record*: with a stop of 50 ms the lost second fell in it and
    the mesh passed; with a stop of 2 s it fell after it, and the 30 hops LAX's frontend logged as served by
    public-api in that second made the same mesh unverified (coverage). The pod died between the inject and
    the stop's return (its inject snapshot), after the last hop it served: the flush interval before that is
    excused, whatever the stop took."""
    d = _slow_stop(tmp_path, stop_s)
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    assert _lose(d, pod, INJECT - ACCESS_LOG_FLUSH_S, INJECT) >= 10  # the last second before the node died
    v = verify(d)
    assert v.passed, why(v)


@pytest.mark.parametrize("stop_s", STOPS)
def test_a_gap_before_a_slow_stop_is_still_one(tmp_path: Path, stop_s: float) -> None:
    """The broken records at both timings: the same pod's log missing a stretch well before the kill."""
    d = _slow_stop(tmp_path, stop_s)
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    assert _lose(d, pod, INJECT - 8.0, INJECT - 6.0) >= 10
    v = verify(d)
    assert COVERAGE in failed(v) and "while its log had no line" in " ".join(why(v)), why(v)


def test_a_gap_while_the_stopping_node_still_served_is_still_one(tmp_path: Path) -> None:
    """The broken records during a slow stop: a `docker stop` of 3 s, and the pod's log missing [-2.9 s, -1.5 s]
    before its death, while it served on and flushed every second (its own lines resume after the gap). The
    flush interval its death cost is the one before its last served hop, not the whole stop."""
    d = _slow_stop(tmp_path, 3.0)
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    assert _lose(d, pod, INJECT - 2.9, INJECT - 1.5) >= 10
    v = verify(d)
    assert COVERAGE in failed(v) and "while its log had no line" in " ".join(why(v)), why(v)


# -- 2. the cool-down read one caller's records further than another's --------------------------------------------
def _two_callers(tmp_path: Path, end: float, second_back: float) -> tuple[Path, str]:
    """The wide topology (two public-apis per zone): LAX's product-apis killed 30-50; one public-api takes the
    restored ones back 1 s after the restore, the other (returned: its pod) at `second_back`, serving the
    Region's meanwhile (its own moment of Consul's endpoint update). The records stop at `end`."""
    f = FaultSpec("kill-product-api-lax", "service-down", WIDE_LAX, ("product-api",), 30, 50, 0.2, 1.0)
    d = write_run(tmp_path / "run", Scenario(WIDE, duration_s=end, rate_per_zone=20, faults=[f]))
    inv = inventory(d)
    second = sorted({str(e["pod"]) for e in inv if e["zone"] == WIDE_LAX and e["service"] == "public-api"})[1]
    region = next(e for e in inv if e["zone"] == "us-west-2a" and e["service"] == "product-api")
    late = {"upstream_host": f"{region['ip']}:9090"}
    n = _edit_log(d, second, lambda r, t: {**r, **late} if "product-api" in str(r["upstream_cluster"])
                  and 51 <= t < second_back else r)  # fmt: skip
    assert n >= (second_back - 51) * 5  # ~10 a second each, the synthetic mesh's own Region hops end at 51 s
    return d, second


def test_the_cool_down_waits_until_every_callers_records_show_the_recovery(tmp_path: Path) -> None:
    """HOLE. The cool-down (`pending_recoveries`) read the run's records as they were: 2 s after the restore the
    first public-api's lines were on record up to then, in-zone again since 1 s after the restore, and the
    second's only up to that second (its sidecar flushes every second, in its own phase), still Region-served.
    Three good hops after the last bad one on record: "shown", and e2e stopped the users. The second took the
    zone's product-api back half a second later, and its Region-served hops then came after the first's good
    ones: a run stopped then was unverified ("the run ended"), where a cool-down polling one flush later
    waited and the same mesh passed. A pair's hops count up to where every caller's records reach."""
    t0 = Scenario(WIDE).start
    d, second = _two_callers(tmp_path / "seen", 52.0, 52.5)
    assert _edit_log(d, second, lambda r, t: None if t >= 51.0 else r) > 0  # its last second not collected yet
    assert [(p.zone, p.upstream) for p in pending_recoveries(d, WIDE, t0 + 52.0)] == [(WIDE_LAX, "product-api")]
    stopped, _ = _two_callers(tmp_path / "stopped", 52.3, 52.5)  # what stopping the users then gave
    v = verify(stopped)
    assert not v.passed and "the run ended" in " ".join(why(v)), why(v)
    waited, _ = _two_callers(tmp_path / "waited", 56.0, 52.5)
    assert pending_recoveries(waited, WIDE, t0 + 56.0) == []
    v = verify(waited)
    assert v.passed, why(v)


def test_a_recovery_every_callers_records_show_is_not_waited_for(tmp_path: Path) -> None:
    """The control: both public-apis back 1 s after the restore and both logs on record to 52 s: not waited
    for (the one caller's log a second behind the other's delays the answer by that second, no more)."""
    t0 = Scenario(WIDE).start
    d, second = _two_callers(tmp_path, 52.0, 51.0)
    assert pending_recoveries(d, WIDE, t0 + 52.0) == []
    assert _edit_log(d, second, lambda r, t: None if t >= 51.5 else r) > 0
    assert pending_recoveries(d, WIDE, t0 + 52.0) == []


def test_a_caller_that_makes_no_call_holds_no_recovery_off_the_record(tmp_path: Path) -> None:
    """HOLE. The cool-down counted a pair's hops only up to the oldest newest line of its callers alive, so a
    caller that made no call after the restore (the wide corpus: the entry sent every user of LAX to one of its
    two new frontends after the zone outage) read as on record only up to its last line: the other caller's good
    hops never counted, and e2e waited its whole maxRecoveryS (80 s) for a recovery on record long before (the
    verdict then passed). Here the second public-api gets no call from 50 s on (the frontends call the first);
    with the records reaching 56 s the recovery is on record, and the verdict passes the same records."""
    t0 = Scenario(WIDE).start
    d, second = _two_callers(tmp_path, 56.0, 51.0)
    first = next(str(e["pod"]) for e in inventory(d) if e["zone"] == WIDE_LAX and e["service"] == "public-api"
                 and e["event"] == "added" and str(e["pod"]) != second)  # fmt: skip
    ips = {str(e["pod"]): str(e["ip"]) for e in inventory(d) if e["event"] == "added"}
    moved = 0
    for fe in sorted({str(e["pod"]) for e in inventory(d) if e["zone"] == WIDE_LAX and e["service"] == "frontend"}):
        moved += _edit_log(d, fe, lambda r, t: {**r, "upstream_host": str(r["upstream_host"]).replace(
            ips[second] + ":", ips[first] + ":")} if t >= 50.0 else r)  # fmt: skip
    taken: list[dict[str, Any]] = []  # the second's calls from 50 s on are the first's now: its sidecar logs them

    def take(r: dict[str, Any], t: float) -> dict[str, Any] | None:
        if t < 50.0:
            return r
        taken.append(r)
        return None

    assert moved >= 50 and _edit_log(d, second, take) >= 50
    path = d / "accesslogs" / f"{first}.jsonl"
    write_rows(path, sorted(rows(path) + [{**r, "caller_pod": first} for r in taken], key=lambda r: r["start_time"]))
    assert pending_recoveries(d, WIDE, t0 + 56.0) == []
    v = verify(d)
    assert v.passed, why(v)


def test_a_callers_records_a_flush_behind_still_hold_the_recovery_off(tmp_path: Path) -> None:
    """The control: the idle caller's records reach `RECORDS_LAG_S` before now, not now. A second public-api
    whose last second of Region-served hops is not collected yet (its newest line within that lag) still holds
    the pair until they are."""
    t0 = Scenario(WIDE).start
    d, second = _two_callers(tmp_path, 52.0, 52.5)
    assert _edit_log(d, second, lambda r, t: None if t >= 51.0 else r) > 0
    assert [(p.zone, p.upstream) for p in pending_recoveries(d, WIDE, t0 + 51.0 + RECORDS_LAG_S)] == [
        (WIDE_LAX, "product-api")
    ]
