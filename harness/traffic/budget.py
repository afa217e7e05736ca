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
`host.jsonl`) and the requests answered over a short window at the factor the
probes run at. Above `target` (60 %): slow every probe by one factor, chosen
so that the requests answered scale with busy in proportion to the target
(the shoppers' share stays), and measure again. Below it: speed them up by the
same rule, never past their set periods, and measure again; a step of less
than `MIN_STEP` is taken without another window (from below, the rule
overrates busy per request, so such a step lands at or under the target),
and so is the step from a reading within `READING_NOISE` of the target,
either way (a window cannot tell the step's effect from its own noise).
At most `MAX_WINDOWS` windows; after the last, a step that slows the probes
is taken unmeasured, a bigger speed-up is not. A window is `WINDOW_S` long,
or ends at `EARLY_S` when its outcome would be the same with its busy share
`NOISE` lower or higher (`_clear`): the slowest probes clearly fit the set
rates, or the set rates are clearly within the target. A step to a factor in
between, or a reading near the target, is measured whole: precision only
where the outcome depends on it. (A line through two windows instead
overshot here: a saturated window's busy is cut at 100 %, and with 1.5 s
windows varying by +-5 % the line's slope was noise.) The factor never slows
a zone's probes below one per `max_period_s`. It is fixed for the rest of the run: faults
then meet one probe rate, and a fault's own CPU (pods starting) is what the
headroom is for.

From below (`ProbeBudget.start_low`, before the traffic starts): the probes
begin at their slowest and the budget steps them up. Measuring from the set
rates first drove a small machine to 100 % busy for the first window (six
probed zones at 33/s or more each, 200 and more requests/s on 2 cores), and
that window can break the shop it measures. Shown with the product-api
stand-in given the image's own pool (no cap on open connections): the
saturated requests piled up, each concurrent query opened a postgres
connection, and the product-apis together opened more than postgres' 100
("sorry, too many clients already"): every experiment's steady state failed
before its first fault, in 3 of 5 runs of the same configuration. The real
image has that pool, so a small kind cluster can meet the same. From below
the proportional rule picks too low a rate (load that does not go with requests
makes busy per request look higher at a low rate), so the first step up
lands under the target and the next closes on it.

The factor reaches the probes through `probe-budget.json` in the run
directory, which is also the record (docs/CONTRACTS.md §4): locust's probes
re-read its `scale` when the file changes (`ScaleFile`, checked every 0.1 s,
also while a probe sleeps towards its next tick).
Probes that run elsewhere (locust workers in the zones' own pods) do not see
it; e2e does not apply a budget to them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.contract.files import write_atomic
from harness.contract.hostcpu import busy_share, cpu_times
from harness.contract.settled import MEASURING, SWITCH_S

TARGET_BUSY = 0.6
"""The busy share the budget keeps the host under; the rest is for faults (a pod starting costs CPU) and queues."""
WINDOW_S = 1.5  # one measurement: three of host.jsonl's samples, ~100-200 requests at the set probe rate
EARLY_S = 1.0  # ... ended here when its decision is clear (`ProbeBudget._clear`)
NOISE = 0.25  # how far off (relative) a reading over EARLY_S is taken to be: the decision must hold either way
CHECK_S = 0.1  # how often a probe looks at the file's modification time, also while it sleeps to its next tick
MAX_PERIOD_S = 0.5  # the slowest a probe gets: two requests/s per zone, still more than its shoppers make
MAX_WINDOWS = 3  # at most 3 windows (4.5 s, plus SWITCH_S for each new factor to reach the probes)
MIN_STEP = 0.1  # a speed-up of less than 10 % of the rate is taken without another window
READING_NOISE = 0.05
"""How far (in busy share) one whole window's reading strays on a steady machine: a reading this close to the
target is final, its step to the target taken unmeasured, either way. Measured here with the probes and shoppers
unchanged: host.jsonl's 0.5 s samples ranged 0.38-0.62 over ten seconds, and two windows 10 % of the probes
apart read 62.6 % and 48.1 % (the one with fewer probes higher): a window after a step whose effect is smaller
than that reads the noise again, and costs every run WINDOW_S + SWITCH_S (most e2e runs took three windows)."""


class Outcome(StrEnum):
    """What a window decides (`ProbeBudget._next`)."""

    STEP = "step"  # measure again at the new factor
    WITHIN = "within"  # within the target (or its reading's noise): this factor, or a small step taken unmeasured
    FLOOR = "floor"  # over the target at the slowest probes: stays there
    SLOWED_AGAIN = "slowed again"  # over the target after the last window: the step down taken unmeasured
    HELD = "held"  # under the target after the last window: the last measured factor kept


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
    (`harness.contract.requestwatch.RequestWatch.rates`). `cpu`, `clock` and `sleep`
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

    @property
    def start_scale(self) -> float:
        """The factor the probes begin at under `start_low`: their slowest (one per `max_period_s`)."""
        return self.max_scale

    def start_low(self) -> BudgetDecision:
        """Before the traffic starts: the probes' first factor is their slowest, and `settle` steps up from it.

        Written as the record too (reason `MEASURING`), so a run stopped
        before `settle` shows the factor its probes ran at.
        """
        return self._decide(self.start_scale, MEASURING, [])

    def settle(self) -> BudgetDecision:
        """Measure at the factor the probes run at (1, or `start_low`'s), step towards the target, decide."""
        windows: list[BudgetWindow] = []
        if not self.periods:
            return self._decide(1.0, "no zone is probed", windows)
        scale = ScaleFile(self.path, check_s=0.0).scale()
        while True:
            measured = self._window(scale if not windows else self._apply(scale, windows), len(windows) + 1)
            if measured is None:
                if not windows:  # nothing known of this machine: the set rates, as without a budget
                    return self._decide(1.0, "no CPU reading on this machine (/proc/stat): not measured", windows)
                return self._decide(scale, "the CPU reading vanished while measuring", windows)
            windows.append(measured)
            outcome, step = self._next(measured, scale, len(windows))
            if outcome is Outcome.STEP:
                scale = step
                continue
            return self._decide(step, self._reason(outcome, windows, step), windows)

    def _next(self, w: BudgetWindow, scale: float, n: int) -> tuple[Outcome, float]:
        """What window `n`, measured at `scale`, decides: an outcome and the factor it leads to."""
        step = self._proportional(w)
        over = w.busy > self.target
        if over and scale >= self.max_scale:
            return Outcome.FLOOR, scale
        if not over and step > scale / (1 + MIN_STEP):  # within the target, the rest not worth a window
            return Outcome.WITHIN, step
        if abs(w.busy - self.target) <= READING_NOISE:  # another window would read its own noise
            return Outcome.WITHIN, step
        if n >= MAX_WINDOWS:
            if over:  # the last step is taken unmeasured: the verdict's host note measures it
                return Outcome.SLOWED_AGAIN, step
            return Outcome.HELD, scale  # a bigger speed-up only measured
        return Outcome.STEP, step

    def _reason(self, outcome: Outcome, windows: list[BudgetWindow], scale: float) -> str:
        if outcome is Outcome.WITHIN:
            return self._within(windows[-1], scale)
        if outcome is Outcome.HELD:
            return self._held(windows)
        return self._slowed(windows, measured=outcome is Outcome.FLOOR)

    # --- the arithmetic -------------------------------------------------------------------------

    def _proportional(self, w: BudgetWindow) -> float:
        """The factor at which busy would meet the target if it went with the requests answered, in proportion.

        Measured on this 2-core machine, busy per request answered stayed the
        same from 50 to 115 requests/s (0.71 % per request/s), so a line
        through zero fits; a saturated window answers fewer requests than it
        was sent and still counts what it answered. The shoppers' share stays
        as measured, the probes take the rest. Load that does not go with
        requests (idle sidecars, health checks) makes a step down land above
        the target and a step up land below it; the next window measures by
        how much and steps again.
        """
        allowed = w.requests_per_s * self.target / w.busy if w.busy > 0 else w.requests_per_s
        probes = allowed - (w.requests_per_s - w.probes_per_s)
        scale = self.max_scale if probes <= 0 else self.offered / probes
        return min(self.max_scale, max(1.0, scale))

    # --- measuring ------------------------------------------------------------------------------

    def _window(self, scale: float, n: int) -> BudgetWindow | None:
        """Window `n` at `scale`: `window_s` long, or `EARLY_S` when what it decides is clear by then."""
        before, start = self.cpu(), self.clock()
        early = min(EARLY_S, self.window_s)
        self.sleep(early)
        w = self._reading(scale, before, start)
        if w is None or early >= self.window_s or self._clear(w, scale, n):
            return w
        self.sleep(self.window_s - early)
        return self._reading(scale, before, start)

    def _reading(self, scale: float, before: tuple[int, int] | None, start: float) -> BudgetWindow | None:
        after, end = self.cpu(), self.clock()
        busy = busy_share(before, after)
        if busy is None:
            return None
        requests, probes = self.rates(start, end)
        return BudgetWindow(round(start, 3), round(end, 3), round(scale, 3), round(busy, 3),
                            round(requests, 1), round(probes, 1))  # fmt: skip

    def _clear(self, w: BudgetWindow, scale: float, n: int) -> bool:
        """A reading decides the same with its busy share `NOISE` lower or higher: a longer window would not
        change the outcome, only its precision where the outcome does not depend on it (a step to the set
        rates or to the slowest probes, a factor kept). Near the target, or for a step in between, the window
        runs its whole `window_s`."""
        lo, hi = (replace(w, busy=w.busy * f) for f in (1 - NOISE, 1 + NOISE))
        return self._next(lo, scale, n) == self._next(hi, scale, n)

    def _apply(self, scale: float, windows: list[BudgetWindow]) -> float:
        """Hand the factor to the probes and give them `switch_s` to take it."""
        self._write(self._decision(scale, MEASURING, windows))
        self.sleep(self.switch_s)
        return scale

    # --- the record -----------------------------------------------------------------------------

    def _within(self, w: BudgetWindow, scale: float) -> str:
        """Within the target at `w`; `scale` is `w`'s, a step of less than MIN_STEP from it, or the step from a
        reading within READING_NOISE of the target, taken unmeasured."""
        if w.scale == 1.0 and scale == 1.0:
            return f"this machine was {w.busy * 100:.0f}% busy with them, within {self.target * 100:.0f}%"
        if abs(w.busy - self.target) <= READING_NOISE and scale != w.scale:
            last = (
                f", and the last step taken unmeasured (the reading within {READING_NOISE * 100:.0f} points of the "
                "target: another window reads its own noise)"
            )
        else:
            last = "" if scale == w.scale else f", and the last step (under {MIN_STEP:.0%}) taken unmeasured"
        if w.busy > self.target:
            return (
                f"this machine was {w.busy * 100:.0f}% busy {self._at(w)}, near {self.target * 100:.0f}%, measured "
                f"from the slowest probes up{last}; failover and recovery times are resolved more coarsely"
            )
        coarse = "" if scale == 1.0 else "; failover and recovery times are resolved more coarsely"
        return (
            f"this machine was {w.busy * 100:.0f}% busy at x{w.scale:g}, within {self.target * 100:.0f}%, measured "
            f"from the slowest probes up{last}{coarse}"
        )

    @staticmethod
    def _at(w: BudgetWindow) -> str:
        return "at the set rates" if w.scale == 1.0 else f"at x{w.scale:g}"

    def _measured(self, windows: list[BudgetWindow]) -> str:
        first, last = windows[0], windows[-1]
        if len(windows) == 1:
            return f"this machine was {first.busy * 100:.0f}% busy {self._at(first)}"
        return (
            f"this machine was {first.busy * 100:.0f}% busy {self._at(first)}, {last.busy * 100:.0f}% {self._at(last)}"
        )

    def _held(self, windows: list[BudgetWindow]) -> str:
        """Stepped up from below and stopped short of the set rates: faster would pass the target."""
        return (
            f"{self._measured(windows)} (target {self.target * 100:.0f}%), measured from the slowest probes up; "
            "failover and recovery times are resolved more coarsely"
        )

    def _slowed(self, windows: list[BudgetWindow], measured: bool = True) -> str:
        last = windows[-1]
        floor = " (the slowest allowed)" if last.scale >= self.max_scale else ""
        said = self._measured(windows)
        if not measured:
            said += ", slowed again"
        return (
            f"{said} (target {self.target * 100:.0f}%){floor}; failover and recovery times are resolved more coarsely"
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
