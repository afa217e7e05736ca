"""Verdicts a sixteenth audit found decided by timing rather than the mesh ("same config, same verdict").

Each case is a pair of synthetic runs (harness.verify.synth) of one correct mesh that differ only in a timing a
correct mesh and the harness may legitimately have, and got different verdicts before their fix; each docstring's
"HOLE." says how. Next to each, a control: the broken mesh (or records) still fails at both timings.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.report.html import _fault_marks
from harness.verify import FALLBACK
from tests.test_verify_audit import why
from tests.test_verify_node_fault import node_kill
from tests.test_verify_soundness import KILL, failed, run
from tests.verdicts import slow_primitive, verify

STOPS = [pytest.param(0.05, id="stop-50ms"), pytest.param(4.6, id="stop-4.6s")]


def _slow_stop(
    tmp_path: Path,
    stop_s: float,
    snapshot_s: float | None = None,
    shape: str = "kind",
    service: str = "public-api",
    **kw: Any,
) -> Path:
    """A kind node kill (`node_kill`, LAX's public-api on the node) whose `docker stop` took `stop_s`: the inject
    is recorded before the primitive runs (harness.chaos.actions._held_fault), the node's pods serve on until
    they die `stop_s` later (at INJECT), and the "inject" counter snapshot is taken once `docker stop` has
    returned (at INJECT; `snapshot_s` after the inject record instead: a primitive that returned before the
    pods died). `shape` / `service`: `node_kill`'s ("local": the pod is removed when it dies, for good)."""
    return slow_primitive(node_kill(tmp_path, shape, service=service, **{"rate_per_zone": 30, **kw}), stop_s,
                          snapshot_s)  # fmt: skip


def _fault(d: Path) -> Any:
    v = verify(d)
    assert len(v.faults) == 1, v.faults
    return v, v.faults[0]


# -- 1. a node kill's failover, after a `docker stop` that took a while -------------------------------------------
@pytest.mark.parametrize("stop_s", STOPS)
def test_a_node_kills_failover_is_measured_from_when_its_pods_died(tmp_path: Path, stop_s: float) -> None:
    """HOLE. kind's node kill is `docker stop`, recorded before it runs (harness.chaos.actions._held_fault): the
    node image's STOPSIGNAL is SIGRTMIN+3, a systemd shutdown, and containerd.service's KillMode=process leaves
    the pod containers running until the node's PID 1 exits at its end. Meanwhile the node's pods serve, and
    the users see no outage. The failover was measured from the inject record: the same mesh (the Region
    serving 0.5 s after the pods died) measured 0.55 s with a 50 ms stop and passed, and 5.1 s with a 4.6 s
    stop, failing maxFailoverS (5 s). Measured from when the fault took effect (the last hop its pods served,
    up to the stop's return: its inject counter snapshot), both are 0.5 s."""
    d = _slow_stop(tmp_path, stop_s)
    v, f = _fault(d)
    assert v.passed, why(v)
    assert f.failover_s is not None and 0.45 <= f.failover_s <= 0.6, f
    assert f.effective_at is not None and f.inject + stop_s - 0.1 <= f.effective_at <= f.inject + stop_s, f


@pytest.mark.parametrize("stop_s", [pytest.param(0.0, id="stop-0"), *STOPS])
def test_a_node_kill_that_fails_over_late_still_fails(tmp_path: Path, stop_s: float) -> None:
    """The broken mesh at every stop: the node's pods dead when the stop returned, the Region serving only 6 s
    later. Measured from the pods' death, it is 6 s whatever the stop took: maxFailoverS (5 s) fails."""
    d = _slow_stop(tmp_path, stop_s, failover_s=6.0)
    v, f = _fault(d)
    assert FALLBACK in failed(v), why(v)
    assert f.failover_s is not None and f.failover_s >= 5.9, f
    assert "maxFailoverS" in " ".join(why(v)), why(v)


def test_pods_serving_past_the_primitives_return_do_not_move_the_start_past_it(tmp_path: Path) -> None:
    """The start is never later than the primitive had acted (its inject counter snapshot): records whose pods
    served 4.55 s after a `docker stop` had returned (50 ms after the inject) show a kill that did not take
    effect when it said it had; measured from the stop's return, the failover is 5.05 s and fails."""
    d = _slow_stop(tmp_path, 4.6, snapshot_s=0.05)
    v, f = _fault(d)
    assert f.effective_at is not None and f.inject <= f.effective_at <= f.inject + 0.05, f
    assert f.failover_s is not None and f.failover_s > 5.0, f
    assert FALLBACK in failed(v), why(v)


def test_a_pod_kill_whose_pod_dies_at_once_measures_as_before(tmp_path: Path) -> None:
    """A kill_pod whose pod is dead at the inject (no hop served after it): measured from the inject, as ever."""
    d = run(tmp_path, faults=[KILL])
    v, f = _fault(d)
    assert v.passed, why(v)
    assert f.effective_at == f.inject, f
    assert f.failover_s is not None and abs(f.failover_s - KILL.failover_delay_s) < 0.3, f


# -- 2. the report's failover mark ---------------------------------------------------------------------------------
def test_the_reports_failover_mark_is_drawn_from_when_the_fault_took_effect(tmp_path: Path) -> None:
    """The report draws the failover instant at the fault's effect plus failover_s (`effective_at`), and at the
    inject plus failover_s for a verdict written before the field (absent: None)."""
    v = verify(_slow_stop(tmp_path, 4.6))
    f = v.faults[0]
    assert f.effective_at is not None and f.failover_s is not None
    (mark,) = _fault_marks(v)
    assert mark.failover is not None and mark.failover[0] == f.effective_at + f.failover_s, mark
    assert "after the fault took effect at" in mark.failover[2], mark
    old = replace(v, faults=[replace(f, effective_at=None)])
    (mark,) = _fault_marks(old)
    assert mark.failover is not None and mark.failover[0] == f.inject + f.failover_s, mark
    assert "after the inject" in mark.failover[2], mark
