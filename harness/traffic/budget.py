"""The probe budget: zone probes no faster than this machine can carry with room to spare.

Why: the zone probes (loadtests/hashicups.py `ZoneProbe`, 33 requests/s per
probed zone) exist to pin failover and recovery instants to <= 50 ms. On the
local backend every request of them runs through real Envoys and apps on this
same machine. Measured on a 2-core machine: four probed zones alone kept the
CPUs >= 95 % busy for 80 % of an edge-pod-burst run, user latency p50 went
from milliseconds to 156 ms, and each pod kill caught so many requests in
flight that more of them failed than Envoy's 3 concurrent retries (its
default circuit breaker, which Consul does not change) could save: the
availability budget failed in 2 runs of 2. With the probes at 10/s per zone
the same configuration passed 2 of 2 at a 55 % median, and the resolution
was no worse, because saturated probes miss their own ticks. The verdict
then measured the machine, so the same mesh passed on a fast machine and
failed on a slow one. The budget makes the verdict the mesh's again: the
harness fits its own load to the machine and says what that cost in
resolution, which the verdict prints per figure anyway.

How (`ProbeBudget.settle`, once, during e2e's warm-up, before the first fault):
measure the host's busy share (`harness.contract.hostcpu`, the same figure as
`host.jsonl`) and the requests answered over a short window at the probes'
set periods. Within `target` (60 %): done, nothing changes. Otherwise slow
every probe by one factor, chosen so that the requests answered scale with
busy in proportion to the target (the shoppers' share stays), and measure
again; at most `MAX_WINDOWS` windows. (A line through two windows instead
overshot here: a saturated window's busy is cut at 100 %, and with 1.5 s
windows varying by +-5 % the line's slope was noise.) The factor never
speeds probes up and never slows a zone's below one per `max_period_s`.
It is fixed for the rest of the run: faults then meet one probe rate, and a
fault's own CPU (pods starting) is what the headroom is for.

The factor reaches the probes through `probe-budget.json` in the run
directory, which is also the record (docs/CONTRACTS.md §4): locust's probes
re-read its `scale` when the file changes (`ScaleFile`, checked every 0.2 s).
Probes that run elsewhere (locust workers in the zones' own pods) do not see
it; e2e does not apply a budget to them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.contract.files import write_atomic
from harness.contract.hostcpu import busy_share, cpu_times

TARGET_BUSY = 0.6
"""The busy share the budget keeps the host under; the rest is for faults (a pod starting costs CPU) and queues."""
WINDOW_S = 1.5  # one measurement: three of host.jsonl's samples, ~100-200 requests at the set probe rate
SWITCH_S = 0.5  # after a new factor: every probe has re-read the file (CHECK_S) and ticked at its new period
CHECK_S = 0.2  # how often a probe looks at the file's modification time
MAX_PERIOD_S = 0.5  # the slowest a probe gets: two requests/s per zone, still more than its shoppers make
MAX_WINDOWS = 3  # at most 3 windows (4.5 s, only on a machine that is over the target)

CpuReader = Callable[[], "tuple[int, int] | None"]
RateReader = Callable[[float, float], "tuple[float, float]"]


@dataclass(frozen=True)
class BudgetWindow:
    """One measurement: the host's busy share and the requests answered per second, at one probe factor."""

    start: float
    end: float
    scale: float
    busy: float
    requests_per_s: float
    probes_per_s: float


@dataclass(frozen=True)
class BudgetDecision:
    """The factor every probe period was multiplied by, and the windows that chose it."""

    scale: float
    target_busy: float
    cpus: int
    periods: dict[str, float]  # each probed zone's period after the factor
    reason: str
    windows: list[BudgetWindow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the terminal: what the probes run at and why."""
        if not self.periods:
            return f"probe budget: {self.reason}"
        per_s = ", ".join(f"{z} {1 / p:.0f}/s" for z, p in sorted(self.periods.items()))
        if self.scale == 1.0:
            return f"probe budget: probes at their set rates ({per_s}): {self.reason}"
        return f"probe budget: probes slowed x{self.scale:.2f} ({per_s}): {self.reason}"


class ScaleFile:
    """The locust side: the factor in `probe-budget.json`, re-read whenever the file changes.

    A missing, torn or odd file leaves the last good factor (1 at first): the
    budget writes it atomically, so a torn read can only be someone else's.
    """

    def __init__(self, path: str | os.PathLike[str] | None, check_s: float = CHECK_S) -> None:
        self.path = os.fspath(path) if path else None
        self.check_s = check_s
        self._scale = 1.0
        self._mtime: int | None = None
        self._next_check = 0.0

    def scale(self, now: float | None = None) -> float:
        if self.path is None:
            return 1.0
        now = time.monotonic() if now is None else now
        if now < self._next_check:
            return self._scale
        self._next_check = now + self.check_s
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime == self._mtime:
                return self._scale
            with open(self.path, encoding="utf-8") as fh:
                value = float(json.load(fh)["scale"])
        except (OSError, ValueError, KeyError, TypeError):
            return self._scale
        self._mtime = mtime
        if value >= 1.0:
            self._scale = value
        return self._scale


class ProbeBudget:
    """Sizes the probes once, from measured windows (module docstring); writes and returns the decision.

    `periods` are the probed zones' set periods. `rates(start, end)` gives
    (all requests, probes) answered per second in a window
    (`harness.traffic.watch.RequestWatch.rates`). `cpu`, `clock` and `sleep`
    are injectable so a test can stand in for a machine.
    """

    def __init__(
        self,
        path: Path,
        periods: Mapping[str, float],
        rates: RateReader,
        *,
        target: float = TARGET_BUSY,
        window_s: float = WINDOW_S,
        switch_s: float = SWITCH_S,
        max_period_s: float = MAX_PERIOD_S,
        cpu: CpuReader = cpu_times,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        cpus: int | None = None,
    ) -> None:
        self.path = path
        self.periods = {z: float(p) for z, p in periods.items() if p > 0}
        self.rates = rates
        self.target = target
        self.window_s = window_s
        self.switch_s = switch_s
        self.cpu = cpu
        self.clock = clock
        self.sleep = sleep
        self.cpus = cpus or os.cpu_count() or 1
        slowest = max(self.periods.values(), default=max_period_s)
        self.max_scale = max(1.0, max_period_s / slowest)
        self.offered = sum(1 / p for p in self.periods.values())  # probes/s at factor 1

    def settle(self) -> BudgetDecision:
        windows: list[BudgetWindow] = []
        if not self.periods:
            return self._decide(1.0, "no zone is probed", windows)
        w = self._window(1.0)
        if w is None:
            return self._decide(1.0, "no CPU reading on this machine (/proc/stat): not measured", windows)
        windows.append(w)
        if w.busy <= self.target:
            return self._decide(1.0, self._within(w), windows)
        first = w
        while True:
            scale = self._proportional(w)
            if len(windows) >= MAX_WINDOWS:  # the last step is taken unmeasured: the verdict's host note measures it
                return self._decide(scale, self._slowed(first, w, measured=False), windows)
            measured = self._window(self._apply(scale, windows))
            if measured is None:
                return self._decide(scale, "the CPU reading vanished while measuring", windows)
            windows.append(measured)
            w = measured
            if w.busy <= self.target or scale >= self.max_scale:
                return self._decide(scale, self._slowed(first, w), windows)

    # --- the arithmetic -------------------------------------------------------------------------

    def _proportional(self, w: BudgetWindow) -> float:
        """The factor at which busy would meet the target if it went with the requests answered, in proportion.

        Measured on this 2-core machine, busy per request answered stayed the
        same from 50 to 115 requests/s (0.71 % per request/s), so a line
        through zero fits; a saturated window answers fewer requests than it
        was sent and still counts what it answered. The shoppers' share stays
        as measured, the probes take the rest. Load that does not go with
        requests (idle sidecars, health checks) makes the guess land above
        the target; the next window measures by how much and steps again.
        """
        allowed = w.requests_per_s * self.target / w.busy if w.busy > 0 else w.requests_per_s
        probes = allowed - (w.requests_per_s - w.probes_per_s)
        scale = self.max_scale if probes <= 0 else self.offered / probes
        return min(self.max_scale, max(1.0, scale))

    # --- measuring ------------------------------------------------------------------------------

    def _window(self, scale: float) -> BudgetWindow | None:
        before, start = self.cpu(), self.clock()
        self.sleep(self.window_s)
        after, end = self.cpu(), self.clock()
        busy = busy_share(before, after)
        if busy is None:
            return None
        requests, probes = self.rates(start, end)
        return BudgetWindow(round(start, 3), round(end, 3), round(scale, 3), round(busy, 3),
                            round(requests, 1), round(probes, 1))  # fmt: skip

    def _apply(self, scale: float, windows: list[BudgetWindow]) -> float:
        """Hand the factor to the probes and give them `switch_s` to take it."""
        self._write(self._decision(scale, "measuring", windows))
        self.sleep(self.switch_s)
        return scale

    # --- the record -----------------------------------------------------------------------------

    def _within(self, w: BudgetWindow) -> str:
        return f"this machine was {w.busy * 100:.0f}% busy with them, within {self.target * 100:.0f}%"

    def _slowed(self, first: BudgetWindow, last: BudgetWindow, measured: bool = True) -> str:
        floor = " (the slowest allowed)" if last.scale >= self.max_scale else ""
        now = f"now {last.busy * 100:.0f}%"
        if not measured:
            now = f"{last.busy * 100:.0f}% at x{last.scale:.2f}, slowed again"
        return (
            f"at the set rates this machine was {first.busy * 100:.0f}% busy, {now} "
            f"(target {self.target * 100:.0f}%){floor}; failover and recovery times are resolved more coarsely"
        )

    def _decision(self, scale: float, reason: str, windows: list[BudgetWindow]) -> BudgetDecision:
        scale = round(scale, 3)
        periods = {z: round(p * scale, 4) for z, p in self.periods.items()}
        return BudgetDecision(scale, self.target, self.cpus, periods, reason, list(windows))

    def _decide(self, scale: float, reason: str, windows: list[BudgetWindow]) -> BudgetDecision:
        decision = self._decision(scale, reason, windows)
        self._write(decision)
        return decision

    def _write(self, decision: BudgetDecision) -> None:
        """Atomically (a probe may read it at any moment): the record and the probes' control in one file."""
        write_atomic(self.path, json.dumps(decision.as_dict(), indent=1) + "\n")
