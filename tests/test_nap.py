"""`harness.interrupt.nap`: waits that a stop signal cuts short within a step, and the chaos holds that use it.

A fault held for its duration in one `time.sleep` handled a stop signal
landing just before the sleep began only when the fault's time was over
(CPython looks for signals only when the sleep returns early).
"""

from __future__ import annotations

import pytest

from harness import interrupt
from harness.chaos import actions


class Clock:
    """A fake monotonic/wall clock that sleeping advances; records every single sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(interrupt.time, "sleep", c.sleep)
    monkeypatch.setattr(interrupt.time, "monotonic", c)
    monkeypatch.setattr(interrupt.time, "time", c)
    return c


def test_nap_waits_the_whole_time_in_steps_no_longer_than_a_stop_may_wait(clock: Clock) -> None:
    interrupt.nap(8.0)
    assert sum(clock.sleeps) == pytest.approx(8.0)
    assert max(clock.sleeps) <= interrupt.NAP_S
    clock.sleeps.clear()
    interrupt.nap(0.0)
    interrupt.nap(-1.0)
    assert clock.sleeps == []


def test_a_held_fault_and_a_bursts_pauses_wait_in_naps(clock: Clock) -> None:
    """The chaos actions' holds (`_hold`: a fault's duration, up to minutes) sleep only through `nap`."""
    actions._hold(clock.now, 8.0)
    assert sum(clock.sleeps) == pytest.approx(8.0)
    assert max(clock.sleeps) <= interrupt.NAP_S
    clock.sleeps.clear()
    actions._hold(clock.now - 9.0, 8.0)  # already over: no wait at all
    assert clock.sleeps == []


def test_no_chaos_action_sleeps_in_one_piece() -> None:
    """Every wait in the chaos actions goes through `nap` or `poll_until`'s short steps: no bare long sleep."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(actions))
    bare = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sleep"
        and not (isinstance(node.args[0], ast.Name) and node.args[0].id == "every_s")
    ]
    assert bare == [], f"time.sleep outside nap/poll_until at lines {bare}"
