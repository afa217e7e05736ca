"""Waits judged by one look, or by one bound counted twice: each now follows its own rule, on a fake clock.

- preflight's refused probe: Consul pushes intentions to the destination
  sidecar's RBAC filter asynchronously, so a correct mesh probed before the
  push arrived failed by timing; it now settles like CRD sync and health.
- e2e's warm-up: its waits (the probe budget's, its own, a link's baseline)
  each restarted the no-progress clock, so a zone never served held it for
  2 x --warmup; one `Stall` now carries the clock across them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from harness.backends.base import EdgeProbe
from harness.e2e import warm_up
from harness.preflight import run_preflight
from harness.testing import ManualClock
from harness.traffic import ProbeBudget
from tests.test_e2e_waits import Schedule, _api, _Decided
from tests.test_preflight import _failed, frontend_may_call_product_api, rendered, setup

__all__ = ["rendered", "setup"]  # the fixtures test_preflight defines, used here


class _Pushed:
    """A destination sidecar whose RBAC filter has the intentions only after `late` probes of an edge: until
    then an undeclared call is not refused (what an Envoy answers before Consul's xDS push has reached it)."""

    def __init__(self, backend: Any, late: int) -> None:
        self.backend = backend
        self.late = late
        self.calls: list[tuple[str, str]] = []
        self._real = backend.probe_edge
        backend.probe_edge = self.probe_edge

    def probe_edge(self, source: str, destination: str) -> EdgeProbe:
        self.calls.append((source, destination))
        real = self._real(source, destination)
        if real.refused and self.calls.count((source, destination)) <= self.late:
            return EdgeProbe(True, False, f"{source} -> {destination}: 200")
        return real


def _clocked(then: Callable[[float], None] | None = None) -> tuple[ManualClock, list[float], Any]:
    """A clock at 0 that only the returned `sleep` moves, the sleeps it was asked for, and that `sleep`;
    `then(now)` after each sleep is the cluster changing meanwhile (what the waiting is for)."""
    clock = ManualClock(0.0)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.advance(s)
        if then is not None:
            then(clock.now)

    return clock, slept, sleep


def test_a_refusal_that_reaches_the_sidecar_on_the_second_look_passes_preflight(setup: Any) -> None:
    """Reproducer: the intentions arrive at the sidecars one look late. Before, the probe was judged once and
    this correct mesh failed preflight (refused-probe: not refused); now it is looked at again, within the bound,
    and only the edges not yet right are called again."""
    b = setup()
    pushed = _Pushed(b, late=1)
    clock, slept, sleep = _clocked()
    res = run_preflight(b, settle_s=30.0, sleep=sleep, clock=clock)
    assert res.ok, [c for c in res.failures]
    assert slept == [1.0]
    first = len({c for c in pushed.calls})
    refused = [c for c in res.checks if c.check == "refused-probe" and not c.detail["declared"]]
    assert refused and all(c.message == "refused" for c in refused)
    assert len(pushed.calls) == first + len(refused)  # the second look called the undeclared edges only


def test_an_intention_that_never_refuses_still_fails_at_the_bound(setup: Any) -> None:
    """Control: an undeclared edge that is allowed (seeded) is never refused: preflight fails at the bound,
    judged on the fake clock (no real waiting), with the same message as a one-look failure."""
    b = setup(frontend_may_call_product_api)
    clock, slept, sleep = _clocked()
    failed = _failed(run_preflight(b, settle_s=5.0, sleep=sleep, clock=clock))
    probes = {c.subject: c for c in failed["refused-probe"]}
    assert list(probes) == ["frontend-lax-1a -> product-api-lax-1a"]
    assert "not refused (intentions do not enforce the call graph)" in probes[next(iter(probes))].message
    assert slept == [1.0] * 5 and clock.now == 5.0  # bounded: settle_s, then judged


def test_a_refused_probe_is_judged_at_once_without_settle_time(setup: Any) -> None:
    """Control: no settle time, no second look (what `harness preflight` callers with settle_s=0 rely on)."""
    b = setup()
    _Pushed(b, late=1)
    clock, slept, sleep = _clocked()
    failed = _failed(run_preflight(b, settle_s=0.0, sleep=sleep, clock=clock))
    assert failed["refused-probe"] and slept == []


def test_a_backend_that_cannot_probe_gets_its_note_once(setup: Any) -> None:
    """Control: 'not possible' is no failure to wait on, and its note is said once, not once per look."""
    b = setup()
    b.probe_possible = False
    clock, slept, sleep = _clocked()
    res = run_preflight(b, settle_s=30.0, sleep=sleep, clock=clock)
    assert [n for n in res.notes if n.startswith("refused-probe")] == [res.notes[0]]
    assert slept == []  # nothing that waiting could change
    assert not any(c.check == "refused-probe" for c in res.checks)


# --------------------------------------------------------------------------- the warm-up's one bound


def test_a_zone_never_served_ends_the_warm_up_after_one_bound_not_two(tmp_path: Path) -> None:
    """Reproducer: zone a has 1 request and gains none. --warmup (0.5 s here) is how long a zone still short may
    gain nothing; the budget's wait and the warm-up's each counted it afresh (1.0 s)."""
    dead = tmp_path / "dead.jsonl"
    dead.write_text(_api(1.0, "a"))
    said: list[str] = []
    sched = Schedule(dead)
    warm_up(cast(ProbeBudget, _Decided(0.0)), sched.watch(["a"]), 0.5, said.append, need={"a": 10})
    assert sched.clock.now == pytest.approx(0.5)
    assert said[0].startswith("warm-up: incomplete, a zone short of them gained none for 0.5 s (a 1 of 10")


def test_a_zone_served_slowly_across_the_waits_is_still_waited_for(tmp_path: Path) -> None:
    """Control: a zone gaining one request per 0.4 s (bound 0.5 s) is waited for through both waits, 4 s in all;
    a gain that came while the budget measured, between the waits, counts as one."""
    path = tmp_path / "slow.jsonl"
    path.write_text("")
    sched = Schedule(path, [(round(0.4 * (i + 1), 6), _api(1.0 + i, "a")) for i in range(10)])

    class _Measures(_Decided):
        """The budget's measuring takes 0.4 s of the clock, a request arriving meanwhile."""

        def settle(self) -> object:
            sched.sleep(0.4)
            return super().settle()

    said: list[str] = []
    warm_up(cast(ProbeBudget, _Measures(0.0)), sched.watch(["a"]), 0.5, said.append, need={"a": 10})
    assert sched.clock.now == pytest.approx(4.0)
    assert not any("incomplete" in m for m in said), said


def test_a_stall_counts_a_new_questions_first_look_as_no_gain() -> None:
    """The link baseline's wait asks another question (since the budget settled, /api only): its first count is
    noted, not taken for a gain, or every wait would again restart the clock."""
    from harness.traffic import Stall

    stall = Stall(0.0)
    stall.look((0.0, True, False), {"a": 3}, ["a"], 1.0)
    assert stall.gained_at == 0.0
    stall.look((5.0, True, True), {"a": 1}, ["a"], 2.0)
    assert stall.gained_at == 0.0
    stall.look((0.0, True, False), {"a": 4}, ["a"], 3.0)
    assert stall.gained_at == 3.0
    stall.look((0.0, True, False), {"a": 5}, [], 4.0)  # the request that completed a: a gain
    assert stall.gained_at == 4.0
    stall.look((0.0, True, False), {"a": 9}, [], 5.0)  # a zone no longer short: nothing to wait for
    assert stall.gained_at == 4.0
