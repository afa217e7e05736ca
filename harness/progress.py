"""`harness e2e` progress: the phase, the experiment and fault running now, and about how long is left.

A run takes minutes and most of it is waiting (warm-up, pauses, the faults'
own durations), so a terminal that stays silent for a minute looks hung.
Everything shown is read from the run directory the run is writing anyway
(docs/CONTRACTS.md §4): `run.json` (the stage, written at every change),
`chaos.jsonl` (each fault's inject and restore, written by the chaostoolkit
process) and `chaos/<id>/` (an experiment has started when its directory
exists, finished when its journal exists); the plan is handed over when the
run directory is created. So the display needs no hook inside the chaos
process and shows exactly what the records say, which is also what a
post-mortem will read.

On a terminal it is a rich live panel under the log lines; when stdout is not
a terminal (CI logs) it degrades to plain lines: one per change (stage,
experiment started/finished, fault injected/restored) and a heartbeat every
`HEARTBEAT_S` with the time left, with no cursor movement or colour codes.

The time left is an estimate, marked "≈": each experiment's own pauses and
fault durations (read from the experiment as it will run) plus a fixed cost
per activity, corrected with the real elapsed time as experiments finish.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.chaos.timeline import records
from harness.contract.rundir import CHAOS_DIR, CHAOS_FILE, JOURNAL_FILE, RUN_FILE

POLL_S = 0.5
HEARTBEAT_S = 30.0
# Measured on the local backend (2 cores, shared), e2e with kill-product-api-lax + node-kill: chaostoolkit's
# start and the control's close ~0.6 s outside the journal; probes 0.05-1.1 s; kill_pod's wait for the
# replacement 3.9 s; journals 7.4 s and 18.6 s against estimates of 11 s and 19 s.
ACTIVITY_OVERHEAD_S = 1.0  # a probe or action's own work (snapshots, pod lookups)
EXPERIMENT_OVERHEAD_S = 1.0  # chaostoolkit's start (imports, validation) and the control's close
REPLACEMENT_S = 4.0  # kill_pod holds until the replacement is ready: podRestartDelayS (2) + readiness

STAGE_TEXT = {
    "render": "rendering manifests",
    "up": "bringing the cluster up",
    "preflight": "preflight: Consul's own view",
    "traffic": "traffic: warm-up",
    "chaos": "chaos",
    "cooldown": "cooldown",
    "verify": "verifying",
    "done": "done",
}


def _default_duration(module: str, func: str) -> float | None:
    """The `duration_s` default of a harness action (the fault's hold time when the experiment does not set it)."""
    if module != "harness.chaos.actions":
        return None
    from harness.chaos import actions

    fn = getattr(actions, func, None)
    if fn is None:
        return None
    p = inspect.signature(fn).parameters.get("duration_s")
    return float(p.default) if p is not None and isinstance(p.default, int | float) else None


def estimate_experiment_s(data: dict[str, Any]) -> float:
    """About how long chaostoolkit takes for one experiment: pauses, fault holds, a cost per activity."""
    from harness.chaos.experiment import seconds

    total = EXPERIMENT_OVERHEAD_S
    cfg = data.get("configuration") or {}
    ssh = data.get("steady-state-hypothesis") or {}
    activities = list(ssh.get("probes") or []) * 2  # before and after the method
    activities += list(data.get("method") or []) + list(data.get("rollbacks") or [])
    for act in activities:
        if not isinstance(act, dict):
            continue
        total += ACTIVITY_OVERHEAD_S
        pauses = act.get("pauses") or {}
        total += sum(seconds(pauses.get(k), cfg) or 0.0 for k in ("before", "after"))
        prov = act.get("provider") or {}
        args = prov.get("arguments") or {}
        held = seconds(args.get("duration_s"), cfg) if isinstance(args, dict) else None
        if held is None:
            held = _default_duration(str(prov.get("module", "")), str(prov.get("func", "")))
        total += float(held or 0)
        if prov.get("func") == "kill_pod":
            total += REPLACEMENT_S
    return total


def _fmt_s(s: float) -> str:
    s = max(0.0, s)
    return f"{s:.0f} s" if s < 90 else f"{int(s // 60)} min {int(s % 60):02d} s"


@dataclass
class Snapshot:
    """What the run directory says now (one poll)."""

    stage: str | None = None
    status: str | None = None
    started: list[str] = field(default_factory=list)  # experiment ids whose directory exists
    finished: list[str] = field(default_factory=list)  # ... whose journal exists
    active: dict[str, dict[str, Any]] = field(default_factory=dict)  # fault -> its inject record
    events: list[dict[str, Any]] = field(default_factory=list)  # every inject/restore record, in file order


def read_run_dir(run_dir: Path) -> Snapshot:
    """One poll of the run directory; files half-written or absent are skipped (the next poll sees them)."""
    snap = Snapshot()
    try:
        run = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        snap.stage, snap.status = run.get("stage"), run.get("status")
    except (OSError, ValueError, AttributeError):
        pass
    chaos_dir = run_dir / CHAOS_DIR
    if chaos_dir.is_dir():
        for d in sorted(p for p in chaos_dir.iterdir() if p.is_dir()):
            snap.started.append(d.name)
            if (d / JOURNAL_FILE).exists():
                snap.finished.append(d.name)
    for rec in records(run_dir / CHAOS_FILE):
        if rec.get("phase") == "inject":
            snap.active[str(rec["fault"])] = rec
            snap.events.append(rec)
        elif rec.get("phase") == "restore":
            snap.active.pop(str(rec["fault"]), None)
            snap.events.append(rec)
    return snap


class E2EProgress:
    """Watches one e2e run directory and shows where the run is; `say` prints the run's own log lines."""

    def __init__(self, console: Console, live: bool | None = None, clock: Callable[[], float] = time.time) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.clock = clock
        self.run_dir: Path | None = None
        self.estimates: dict[str, float] = {}  # experiment id -> estimated seconds
        self.order: list[str] = []
        self.warmup_s = self.cooldown_s = 0.0
        self._seen = Snapshot()
        self._stage_since = clock()
        self._exp_since: dict[str, float] = {}
        self._exp_took: dict[str, float] = {}
        self._last_beat = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._lock = threading.Lock()
        self._stopped = False

    # -- the run's log lines -------------------------------------------------------------
    def say(self, msg: str) -> None:
        """One log line of the run (printed above the live panel on a terminal)."""
        stamp = time.strftime("%H:%M:%S")
        if self.live:
            self.console.print(Text(stamp, style="dim") + Text(f" {msg}"))
        else:
            self.console.print(f"{stamp} {msg}", markup=False, highlight=False)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, run_dir: Path, planned: list[Any], warmup_s: float, cooldown_s: float, watch: bool = True) -> None:
        """Begin watching `run_dir`; `planned` are the run's PlannedExperiment (id and data).

        `watch` False: no polling thread, the caller calls `poll()` (tests drive it step by step).
        """
        self.run_dir = run_dir
        self.order = [p.id for p in planned]
        self.estimates = {p.id: estimate_experiment_s(p.data) for p in planned}
        self.warmup_s, self.cooldown_s = warmup_s, cooldown_s
        self._stage_since = self._last_beat = self.clock()
        if self.live:
            self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=True)
            self._live.start()
        if watch:
            self._thread = threading.Thread(target=self._loop, name="e2e-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching (idempotent); the live panel goes away, the log lines stay.

        One last poll first, so a change between the last tick and the end
        (the cooldown starting, a fault restored) is still printed.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.run_dir is not None and not self._stopped:
            self._stopped = True
            with contextlib.suppress(Exception):  # never mask how the run ended
                self.poll()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
            except Exception:  # the display must never break the run
                continue

    # -- one poll: changes become lines (plain mode) and the panel (live mode) -------------
    def poll(self) -> list[str]:
        """Read the run directory once; return (and, in plain mode, print) the lines for what changed."""
        if self.run_dir is None:
            return []
        snap = read_run_dir(self.run_dir)
        now = self.clock()
        lines: list[str] = []
        with self._lock:
            old = self._seen
            if snap.stage != old.stage and snap.stage is not None:
                self._stage_since = now
                lines.append(f"phase: {STAGE_TEXT.get(snap.stage, snap.stage)}")
            # in the order they happened when one poll sees several: experiments run one after the other
            for exp in snap.started:
                if exp not in old.started:
                    self._exp_since[exp] = now
                    lines.append(f"experiment {exp} started")
                if exp in snap.finished and exp not in old.finished:
                    self._exp_took[exp] = now - self._exp_since.get(exp, now)
                    lines.append(f"experiment {exp} finished")
            for rec in snap.events[len(old.events) :]:  # a fault injected and restored between two polls shows both
                if rec.get("phase") == "inject":
                    lines.append(f"fault {rec['fault']} injected in {rec.get('zone', '?')} ({rec.get('kind', '?')})")
                else:
                    lines.append(f"fault {rec['fault']} restored")
            self._seen = snap
            heartbeat = not self.live and now - self._last_beat >= HEARTBEAT_S
            if lines or heartbeat:
                self._last_beat = now
        if lines or heartbeat:
            left = self.time_left()
            tail = f" (≈{_fmt_s(left)} left)" if left is not None else ""
            if heartbeat and not lines:
                lines.append(f"progress: {self.headline()}")
            lines[-1] += tail
        if self.live:
            if self._live is not None:
                self._live.update(self.render())
        else:
            for line in lines:
                self.console.print(f"{time.strftime('%H:%M:%S')} {line}", markup=False, highlight=False)
        return lines

    # -- what is shown ----------------------------------------------------------------------
    def current_experiment(self) -> str | None:
        return next((e for e in self._seen.started if e not in self._seen.finished), None)

    def headline(self, faults: bool = True) -> str:
        """Where the run is in one line; `faults` False leaves the active faults out (the panel lists them)."""
        stage = self._seen.stage
        text = STAGE_TEXT.get(stage or "", stage or "starting")
        exp = self.current_experiment()
        if stage == "chaos" and exp:
            text = f"chaos: experiment {exp} ({self.order.index(exp) + 1}/{len(self.order)})" if exp in self.order \
                else f"chaos: experiment {exp}"  # fmt: skip
        active = ", ".join(f"{f} in {r.get('zone', '?')}" for f, r in self._seen.active.items())
        return f"{text}; active fault: {active}" if active and faults else text

    def time_left(self) -> float | None:
        """Seconds left until traffic stops (≈), or None before traffic or after it (unknowable / nothing left)."""
        stage = self._seen.stage
        now = self.clock()
        if stage in (None, "render", "up", "preflight"):
            return None
        if stage in ("verify", "done"):
            return None
        pending = [e for e in self.order if e not in self._seen.finished]
        left = self.cooldown_s
        for exp in pending:
            est = self.estimates.get(exp, 0.0)
            if exp in self._exp_since:
                est = max(0.0, est - (now - self._exp_since[exp]))
            left += est
        if stage == "traffic":
            left += max(0.0, self.warmup_s - (now - self._stage_since))
        elif stage == "cooldown":
            left = max(0.0, self.cooldown_s - (now - self._stage_since))
        return left

    def render(self) -> Group:
        """The live panel: phase, experiments (done / running / to come), active faults, time left."""
        left = self.time_left()
        head = Text("e2e ", style="bold") + Text(self.headline(faults=False))
        if left is not None:
            head += Text(f"   ≈{_fmt_s(left)} left", style="cyan")
        rows = Table.grid(padding=(0, 2))
        for exp in self.order:
            if exp in self._seen.finished:
                mark, style = "done", "green"
                detail = f"{_fmt_s(self._exp_took.get(exp, 0.0))}"
            elif exp in self._seen.started:
                mark, style = "running", "yellow"
                ran = self.clock() - self._exp_since.get(exp, self.clock())
                detail = f"{_fmt_s(ran)} of ≈{_fmt_s(self.estimates.get(exp, 0.0))}"
            else:
                mark, style = "to come", "dim"
                detail = f"≈{_fmt_s(self.estimates.get(exp, 0.0))}"
            rows.add_row(Text(mark, style=style), Text(exp), Text(detail, style="dim"))
        parts: list[Any] = [head, rows]
        for fault, rec in self._seen.active.items():
            since = self.clock() - float(rec.get("ts") or self.clock())
            parts.append(Text(f"  fault {fault}: {rec.get('kind', '?')} in {rec.get('zone', '?')}, {_fmt_s(since)}",
                              style="red"))  # fmt: skip
        return Group(*parts)
