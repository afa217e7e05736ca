"""Load shapes for the HashiCups locustfile: `steady` and `ramp`.

Both set ``use_common_options = True`` so they take their numbers from the
usual ``-u/--users``, ``-r/--spawn-rate`` and ``-t/--run-time`` flags: the
harness and a person at a terminal drive them the same way, and ``locust``
does not warn that those flags are ignored.

Selection:
- by env: ``EH_SHAPE=steady|ramp`` makes ``loadtests/hashicups.py`` import that
  one class (locust uses the first shape class it finds in a locustfile, so
  the locustfile exposes at most one);
- by the web UI: ``locust -f loadtests/hashicups.py,loadtests/shapes.py
  --class-picker`` lists both classes here to choose from.

Ramp tuning by env (read when the test starts): ``EH_RAMP_START`` users at
t=0 (default 1) and ``EH_RAMP_S`` seconds to reach ``--users`` (default: the
whole run time, or 60 s without ``-t``); the peak is then held until the end.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from typing import Any

import gevent
from locust import LoadTestShape
from locust.runners import STATE_RUNNING, LocalRunner, WorkerRunner

_STOPPED: list[bool] = []
"""Set once by a SIGTERM (`stop_shape_on_sigterm`): every shape's next tick ends the test."""


def _opts(shape: LoadTestShape) -> tuple[int, float, float | None]:
    """(users, spawn_rate, run_time_s or None) from locust's parsed command line."""
    runner: Any = shape.runner
    parsed = getattr(getattr(runner, "environment", None), "parsed_options", None)
    users = int(getattr(parsed, "num_users", None) or 1)
    rate = float(getattr(parsed, "spawn_rate", None) or users)
    run_time = getattr(parsed, "run_time", None)
    return users, rate, float(run_time) if run_time else None


def _over(shape: LoadTestShape, run_time: float | None) -> bool:
    """The test is over: its run time has passed, or a SIGTERM asked for the end."""
    return bool(_STOPPED) or (run_time is not None and shape.get_run_time() >= run_time)


def stop_shape_on_sigterm(environment: Any) -> None:
    """SIGTERM ends a headless shape run the way ``-t`` ends it, at once.

    Locust installs its SIGTERM handler only once `start_automatic_run`
    returns, and with a shape class that call waits on the shape greenlet for
    the whole run: until then a SIGTERM killed locust outright (the signal's
    default, exit -15), so the requests users had in hand went unrecorded and
    no stats were written. SIGTERM is the harness's stop
    (harness/traffic/runner.py: a SIGINT lands as KeyboardInterrupt in
    whichever greenlet runs, and lost a user's record). Here it makes the
    shape's next tick its last, and where the shape is asleep between two
    ticks (a local runner, its users all spawned: a tick never yields, and a
    local runner's `start` spawns and returns) it ends that sleep: the shape
    greenlet ends, and locust's own path follows as after a last tick ("Shape
    test completed"): the users stopped within ``--stop-timeout`` (each
    records what it has in hand), then the shutdown with its stats. Waiting
    for the tick (locust ticks once a second) held every e2e ~0.5 s. Never
    while the shape is in a stop itself: a stop cut in half and begun again
    asked a stopping user to stop ("unexpected state", exit code 1); then,
    and with a master (its `start` may wait on its workers), the next tick
    ends the run. Only where the shape runs: the master or a local runner.
    """
    runner = environment.runner
    if environment.shape_class is None or runner is None or isinstance(runner, WorkerRunner):
        return

    def on_sigterm() -> None:
        logging.getLogger(__name__).info("Got SIGTERM signal: ending the shape test")
        _STOPPED.append(True)
        shape = runner.shape_greenlet
        if isinstance(runner, LocalRunner) and runner.state == STATE_RUNNING and shape is not None and not shape.dead:
            shape.kill(block=True)  # asleep between ticks: its join in locust's main returns, and the run ends

    gevent.signal_handler(signal.SIGTERM, on_sigterm)


class SteadyShape(LoadTestShape):
    """Constant ``-u`` users (spawned at ``-r``/s) until ``-t`` has passed.

    The same as plain locust without a shape, but explicit, so that a run
    picked with ``--class-picker`` or ``EH_SHAPE=steady`` behaves like one
    driven by the harness.
    """

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        users, rate, run_time = _opts(self)
        if _over(self, run_time):
            return None
        return users, rate


class RampShape(LoadTestShape):
    """Users grow linearly from ``EH_RAMP_START`` to ``-u`` over ``EH_RAMP_S``, then hold.

    Used to find where latency or errors start to climb (e.g. how much load
    the Region absorbs when a Local Zone fails over to it).
    """

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        peak, rate, run_time = _opts(self)
        if _over(self, run_time):
            return None
        t = self.get_run_time()
        start = min(peak, max(0, int(os.environ.get("EH_RAMP_START", "1"))))
        ramp_s = float(os.environ.get("EH_RAMP_S", "0") or 0) or (run_time or 60.0)
        frac = min(1.0, t / ramp_s) if ramp_s > 0 else 1.0
        target = start + math.floor((peak - start) * frac)
        # Ticks come once a second: spawn fast enough to reach each step within it.
        step = max(1.0, (peak - start) / ramp_s) if ramp_s > 0 else float(peak)
        return target, max(rate, step)


SHAPES: dict[str, type[LoadTestShape]] = {"steady": SteadyShape, "ramp": RampShape}


def select_shape(name: str | None) -> type[LoadTestShape] | None:
    """The shape class for `name` ('' / None = no shape: plain ``-u -r -t``).

    Raises ValueError naming the valid choices, so a typo in ``EH_SHAPE``
    stops the run instead of silently running another load profile.
    """
    if not name:
        return None
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"EH_SHAPE: unknown shape {name!r}; choose one of {sorted(SHAPES)}") from None
