"""The whole loop as one library call: render → up → traffic + chaos → observe → verify → report.

The CLI's `e2e`, `make e2e` and the pytest plugin all call `run_e2e`, so the
pipeline exists once. Whatever happens (a failed step, Ctrl-C), the cluster
it brought up is taken down and every record written so far stays in the run
directory.

Order of one run (each step's records are in the run directory, CONTRACTS §4):
check every experiment against the topology and the backend's capabilities
(bad input: nothing created) → run directory, manifests → up → plan.json →
[preflight: STANDINS] → upstream stats "start" → [clock probes "start"] →
traffic → experiments, each into chaos/<NN>-<stem>/ → cooldown → traffic stops →
[clock probes "end"] → upstream stats "end" → inventory, entrypoints, [the clock
probes found in the access logs], artifacts → down → hops → verdict, report.
(Clock probes only where the nodes keep their own clocks: `harness.traffic.clock`.)
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends import BackendOptions, choose, connect
from harness.backends.base import Backend, Observation, ProgressFn, RecordFollower
from harness.contract.clock import RUNNER_CLOCK_SEPARATE, RUNNER_CLOCK_SHARED
from harness.contract.rundir import (
    ACCESS_LOG_COLLECTOR,
    ACCESS_LOG_FLUSH,
    ACCESSLOG_DIR,
    ARTIFACTS_DIR,
    CHAOS_FILE,
    CLOCK_PROBES,
    COLLECTED_FILE,
    INVENTORY_FILE,
    LOG_ROTATION,
    RECORD_FILES,
    REQUESTS_FILE,
    record_problem,
)
from harness.contract.users import WAIT_ENV, users_quiet_bound
from harness.errors import DryRun, InputError
from harness.preflight import gate as preflight_gate
from harness.run import copy_manifests, mark_run, new_run_dir, write_inventory

if TYPE_CHECKING:
    from harness.chaos import ChaosResult, PlannedExperiment
    from harness.render.manifests import Manifests
    from harness.topology import Topology
    from harness.traffic import ProbeBudget, RequestWatch, TrafficRunner

TRAFFIC_BOUND_S = 6 * 3600.0
WARM_REQUESTS = 20  # successful user requests before the first fault, per zone a fault of the plan acts on
SHOWN_SERVED = 2  # ... per zone no fault acts on (`warm_need`): served, and again once its first answer was back
WARMUP_BOUND_S = 8.0  # how long a zone short of its warm-up may gain no request (the budget's wait included)
COOL_REQUESTS = 1  # ... and per zone after the last restore, before traffic stops: what coverage's "after" asks
RECOVERY_POLL_S = 0.5  # how often the cool-down asks the records whether the last recoveries are on them


def probe_periods(t: Topology, zones: list[str], base_s: float) -> dict[str, float]:
    """Per-zone probe periods: a probed availability zone gets `base_s` / the number of AZs.

    Its entry is a Region caller: Envoy spreads its calls over every AZ's
    pods, so only that share of its probes makes the zone's own hops (two
    AZs: every other probe, a 60 ms gap between a pair's records at 30 ms,
    where the resolution asked for is 50 ms). Edge zones keep `base_s`.
    """
    n = len(t.region_zones)
    return {z: base_s / n for z in zones if n > 1 and not t.zone(z).is_edge}


@dataclass
class E2EOptions:
    topology: Path | None = None
    manifests: Path | None = None  # a rendered (possibly edited) directory instead of --topology
    edition: str | None = None
    experiments: list[Path] = field(default_factory=list)
    users: int = 12
    spawn_rate: float = 12.0
    warmup_s: float = WARMUP_BOUND_S  # how long a zone short of its warm-up may gain no request (`warm_up`)
    cooldown_s: float = 8.0
    processes: int = 1
    keep: bool = False  # leave the cluster up afterwards
    runs_root: Path = Path("runs")
    label: str = ""
    preflight: str = "gate"  # harness.preflight: "gate" stops before traffic on failure, "record" goes on
    # kind/existing: locust workers as pods in each entry zone, the master here (harness.traffic.inzone)
    workers_in_zone: bool = False
    locust_master_host: str | None = None  # how pods reach this machine (kind: the Docker network's gateway)
    locust_master_port: int = 5557
    dry_run: bool = False  # existing: print the plan and stop, destructive or not (`--dry-run`)


@dataclass
class E2EResult:
    run_dir: Path
    backend: str
    passed: bool
    verdict: Any
    chaos_ok: bool
    messages: list[str]


def prepare_manifests(opts: E2EOptions, run_dir: Path, loaded: Topology | None = None) -> Path:
    """Render the topology (or take a rendered directory) into run_dir/manifests; InputError on bad input.

    `loaded`: `opts.topology` as its caller already loaded (and so checked) it, rendered as it is rather than read
    a second time (the pytest plugin checks its options at configure, before any test)."""
    from harness.render import render, write
    from harness.render.manifests import load
    from harness.topology import Edition, load_topology

    if opts.manifests is not None:
        if not opts.manifests.is_dir():
            raise InputError(str(opts.manifests), "", "not a directory written by `harness render`")
        load(opts.manifests)  # validate before copying
        return copy_manifests(opts.manifests, run_dir)
    topo = loaded if loaded is not None else load_topology(opts.topology)
    edition = Edition(opts.edition) if opts.edition else None
    out = run_dir / "manifests"
    write(render(topo, edition), out)
    return out


@contextlib.contextmanager
def recording(backend: Backend, run_dir: Path, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Record what the mesh says while the body runs: access logs, the inventory and entry points, artifacts.

    The inventory and entry-point history go into the run directory as they
    happen (`Backend.record_into`). Whatever ends the body (success, a failed
    step, Ctrl-C), what was recorded is on disk afterwards: the collector
    flushes as it goes and does a last poll, and the artifacts are saved
    before the caller may take the cluster down. A recording step that fails
    does not hide the body's outcome: it is written to `recording.jsonl`,
    which the verdict reports.
    """
    from harness.observe import AccessLogCollector
    from harness.observe.host import HostSampler

    # a test double that is not an `Observation` records nothing as it goes: its inventory is written at the end
    follower = backend.record_into(run_dir) if isinstance(backend, Observation) else RecordFollower({}, run_dir).start()
    # compact_run_dir: access logs and requests kept columnar as they come (harness.columnar)
    # collected_file: how far the copied records reach, for the cool-down (harness.verify.pending)
    collector = AccessLogCollector(backend.log_sources, run_dir / ACCESSLOG_DIR, compact_run_dir=run_dir,
                                   collected_file=run_dir / COLLECTED_FILE)  # fmt: skip
    collector.start()
    host = HostSampler(run_dir).start()  # the machine's own load, stated next to what the mesh did
    try:
        yield
    finally:

        def flush() -> None:
            # Envoy buffers access logs: wait until every sidecar has written its lines (no fixed cooldown)
            problems = backend.flush_access_logs()
            for line in problems:
                record_problem(run_dir, ACCESS_LOG_FLUSH, line)
            if problems:
                (run_dir / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
                (run_dir / ARTIFACTS_DIR / "access-log-flush.txt").write_text("\n".join(problems) + "\n")

        def records() -> None:
            follower.stop()
            for err in follower.errors:
                record_problem(run_dir, RECORD_FILES, err)
            for gap in backend.record_gaps() if isinstance(backend, Observation) else []:
                record_problem(run_dir, RECORD_FILES, gap)
            for note in backend.log_rotations() if isinstance(backend, Observation) else []:
                record_problem(run_dir, LOG_ROTATION, note)
            if INVENTORY_FILE not in follower.names:  # a backend with an in-memory inventory only
                write_inventory(backend.inventory(), run_dir / INVENTORY_FILE)

        from harness.traffic.clock import declared, find_probes

        # where the nodes keep their own clocks (clock.jsonl declared it): the probes' lines, once the access
        # logs are flushed and collected and the inventory (which places the pods that logged them) complete
        clock = [(CLOCK_PROBES, lambda: find_probes(run_dir))] if declared(run_dir) else []
        for what, step in (
            ("host load", host.stop),
            (ACCESS_LOG_FLUSH, flush),
            (ACCESS_LOG_COLLECTOR, collector.stop),
            (RECORD_FILES, records),
            *clock,
            ("artifacts", lambda: backend.save_artifacts(run_dir / ARTIFACTS_DIR)),  # before the cluster goes
        ):
            try:
                step()
                if say is not None:
                    say(f"records: {what} done")
            except Exception as exc:  # noted for the verdict; the body's own outcome stays the one raised
                with contextlib.suppress(OSError):
                    record_problem(run_dir, what, f"{exc.__class__.__name__}: {exc}")


def before_traffic(backend: Backend, run_dir: Path, say: ProgressFn, requests_in_zones: bool = False) -> None:
    """Everything that must be recorded before the first user request (e2e and `harness traffic`).

    Preflight (Consul's own view: preflight.json, stream STANDINS) belongs
    here, before the "start" snapshot: traffic must not start on a mesh whose
    configuration was never checked. `requests_in_zones`: the users' requests are stamped by locust
    workers in the zones' pods (`--workers-in-zone`), on their nodes' clocks (`_clock_probes`).
    """
    snap = _upstream_snapshot(backend, run_dir, "start")
    if snap is not None:
        missing = f", {len(snap.failed)} did not answer: {', '.join(sorted(snap.failed))}" if snap.failed else ""
        say(f"upstream stats: {snap.rows} host counters from {len(snap.pods)} sidecars{missing}")
    _clock_probes(backend, run_dir, "start", say, requests_in_zones)


def after_traffic(backend: Backend, run_dir: Path, say: ProgressFn) -> None:
    """The last records taken while the cluster is still up: the end clock probes, the "end" counter snapshot."""
    _clock_probes(backend, run_dir, "end", say)
    _upstream_snapshot(backend, run_dir, "end")


def runner_clock(backend: object) -> str:
    """run.json's `runner_clock` for this backend: `separate` where its nodes keep their own clocks (EKS).

    Written with the run's first mark, before anything is recorded: then a run whose clock.jsonl is lost
    still says its hops need a correction, and the verifier fails them as unverified instead of comparing two
    clocks as one. A test double that is not an `Observation` records no hops of its own: `shared`.
    """
    separate = isinstance(backend, Observation) and not backend.shares_runner_clock()
    return RUNNER_CLOCK_SEPARATE if separate else RUNNER_CLOCK_SHARED


def _clock_probes(
    backend: Backend, run_dir: Path, batch: str, say: ProgressFn, requests_in_zones: bool = False
) -> None:
    """Where the nodes keep their own clocks (EKS), a batch of clock probes through every zone's entry point.

    The declaration goes first (`harness.traffic.clock`): whatever happens to the probes, the run says its
    hops (and, from in-zone locust workers, its requests) are on other clocks. A backend sharing this
    machine's clock (local, kind) does nothing here. A probe that fails is recorded as such; the verdict
    judges what the probes bounded (coverage).
    """
    if runner_clock(backend) != RUNNER_CLOCK_SEPARATE:
        return
    from harness.traffic.clock import declare, send_probes

    declare(run_dir, f"{backend.name} backend: the nodes' clocks are not this machine's", requests_in_zones)
    try:
        answered = send_probes(backend.entrypoints(), run_dir, batch)
    except Exception as exc:  # recorded; the verdict fails the zones left unmeasured as unverified
        record_problem(run_dir, CLOCK_PROBES, f"{batch}: {exc.__class__.__name__}: {exc}")
        say(f"clock probes ({batch}): failed: {exc}")
        return
    said = ", ".join(f"{z} {n}" for z, n in sorted(answered.items()))
    say(f"clock probes ({batch}): answered per zone: {said}")


def _upstream_snapshot(backend: Backend, run_dir: Path, label: str) -> Any:
    """A snapshot of every sidecar's per-host counters (attempt evidence); a backend that cannot is noted, not fatal."""
    from harness.chaos.upstream_stats import snapshot_quietly

    return snapshot_quietly(backend, run_dir, label)


def take_down(backend: Backend, keep: bool, say: ProgressFn) -> None:
    """The cluster down (unless kept) and the backend's connections closed, whatever happens."""
    try:
        if not keep:
            say("down")
            backend.down()
    finally:
        backend.close()


def cooldown_since(run_dir: Path, ended: float) -> float:
    """Where the cool-down counts users' requests from: the last restore in chaos.jsonl, when every fault was restored.

    The cool-down is there to put the last recovery on record (every zone
    served again after it). The requests the last experiment's own pause and
    steady-state check carried after that restore are that record already;
    counting from the end of the experiments made every run wait for as many
    again. With a fault still active (its experiment stopped before restoring
    it) or no fault at all: from `ended`, the end of the experiments.
    """
    from harness.progress import read_run_dir

    snap = read_run_dir(run_dir)
    restores: list[float] = []
    for rec in snap.events:
        if rec.get("phase") == "restore":
            with contextlib.suppress(TypeError, ValueError):
                restores.append(float(rec.get("ts")))  # type: ignore[arg-type]
    if snap.active or not restores:
        return ended
    return min(max(restores), ended)


def cool_down(served: RequestWatch, since: float, now: float, cooldown_s: float, longest_think_s: float) -> bool:
    """The last fault's recovery on record: every zone's shoppers served again since `since` (its restore).

    COOL_REQUESTS each (the shoppers', as the verdict's coverage counts them, not the zone probes'): coverage's
    "after" window asks every affected zone for a shopper's request that began after the restore, and what
    else the verdict asks after it (each pair back where it belongs) `wait_recoveries` waits for. Twenty each,
    asked here before, held every run ~1.4 s past its last experiment for requests no rule reads (the last
    zone outage's own 4 s pause had carried 17 of LAX's). Waited for `cooldown_s`, and for a zone whose users
    think up to `longest_think_s` between two requests (EH_WAIT) until `users_quiet_bound` past the restore:
    a fixed `cooldown_s` stopped the users of a correct run before a slow-thinking zone's next request
    (EH_WAIT=20,30: "no user requests entering ... after the fault: recovery unverified"), and on a machine
    slow enough the same. A zone with no user at all holds it no longer than that. True when every zone had them.
    """
    left = users_quiet_bound(longest_think_s) - (now - since)
    return served.wait(since, COOL_REQUESTS, max(cooldown_s, left, 0.0), probes=False)


def wait_recoveries(run_dir: Path, topology: Topology, say: ProgressFn, poll_s: float = RECOVERY_POLL_S) -> None:
    """Keep the traffic on until the last faults' recoveries are on record (`harness.verify.pending`).

    The count of requests the cool-down waits for says every zone is served,
    not that a restored zone is served in-zone again: stopped before that,
    the verdict leaves the recovery unverified and fails a correct mesh by how
    fast this machine or cluster brought the pods back. Each pair is waited
    for until the hops show it back or maxRecoveryS has passed since its
    restore (from then on the verdict decides it, back or never back).
    """
    from harness.verify import pending_recoveries

    said: set[str] = set()
    while left := pending_recoveries(run_dir, topology, time.time()):
        new = [str(p) for p in left if str(p) not in said]
        if new:
            due = max(p.due for p in left) - time.time()
            say(f"cool-down: waiting for the recovery of {', '.join(new)} to be on record (at most {due:.0f} s)")
            said.update(new)
        time.sleep(max(0.0, min(poll_s, min(p.due for p in left) - time.time())))


def _degradations(p: PlannedExperiment, topology: Topology) -> tuple[list[str], list[str]]:
    """The zones whose link `p` degrades: (before any other of its actions reaches that link, after one did)
    (`harness.contract.settled.reaches_link`)."""
    from harness.contract.settled import reaches_link

    first: list[str] = []
    after: list[str] = []
    reached: set[str] = set()
    for func, zones in p.steps:
        if func == "degrade_link":
            first += [z for z in zones if z not in reached and z not in first]
            after += [z for z in zones if z in reached and z not in after]
        reached |= {z.name for z in topology.zones if any(reaches_link(topology, a, z.name) for a in zones)}
    return first, after


def degraded_first(p: PlannedExperiment, topology: Topology) -> list[str]:
    """The zones whose link experiment `p` degrades before any other of its actions reaches that link
    (`harness.contract.settled.reaches_link`): the zones whose baseline `wait_link_baseline` asks before it."""
    return _degradations(p, topology)[0]


def degraded_after_own(p: PlannedExperiment, topology: Topology) -> list[str]:
    """The zones whose link `p` degrades after one of its own earlier actions reached that link: e2e's hold
    before the experiment cannot cover them (that fault is not yet made), so its `degrade_link` asks this
    process while it runs (`link_watch`), as a game day's `harness chaos` answers it."""
    return _degradations(p, topology)[1]


def wait_link_baseline(
    run_dir: Path,
    topology: Topology,
    zones: list[str],
    say: ProgressFn,
    poll_s: float = RECOVERY_POLL_S,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Before an experiment that degrades the links of `zones`: each one's baseline on record, when an earlier
    fault reached the link (`harness.verify.link_baseline_owed`: its recovery on record, and
    LINK_EFFECT_MIN_HOPS hops of the zone that wait on the link outside it since the run settled).

    The link's first fault waits for its baseline itself (`harness.chaos.actions.degrade_link`); after a fault
    that reached the link the action cannot tell where that fault's window ends (the verdict ends it at the
    recovery the hops show, which the chaos process does not read), so it took the baseline to lie between the
    two. e2e's first experiment begins as the run settles, and the next one follows at once: a correct mesh
    whose kill of LAX's product-api took 5 s to recover had its link degraded 3.5 s after the restore with no
    baseline at all ("not shown", unverified), and passed on a machine that began the experiment later. Waited
    for until the records show it or its `due` passes (then the verdict decides without it).
    """
    from harness.verify import link_baseline_owed

    said: set[str] = set()
    for zone in zones:
        while (owed := link_baseline_owed(run_dir, topology, zone, clock())) is not None:
            if zone not in said:
                say(f"chaos: waiting for {owed} to be on record (at most {max(0.0, owed.due - clock()):.0f} s)")
                said.add(zone)
            sleep(max(0.0, min(poll_s, owed.due - clock())))


class LinkBaselineWatcher:
    """A game day's answers to `harness.chaos.actions.degrade_link`'s question: is the link's baseline on record?

    After a fault that reached a zone's link, the verdict reads a degradation's baseline between that fault's
    recovery, as the hops show it, and the degradation; the chaos process cannot read the hops, and did not wait:
    a game day's `harness chaos` of service-link begun 3.5 s after a kill of LAX's product-api was restored (its
    recovery took 5 s) degraded the link with no baseline on record, and a correct mesh was "not shown" (unverified)
    where the same experiment begun later passed. `harness chaos` runs this while its experiment runs: each question
    on file (`harness.contract.linkwatch`) is answered as e2e's hold asks it (`link_baseline_owed`: owed, and until
    when at most, or nothing owed), asked again every `poll_s` while owed, said once.
    """

    def __init__(
        self,
        run_dir: Path,
        topology: Topology,
        say: ProgressFn,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = RECOVERY_POLL_S,
    ) -> None:
        self.run_dir = run_dir
        self.topology = topology
        self.say = say
        self.clock = clock
        self.poll_s = poll_s
        self._answers: dict[str, dict[str, Any]] = {}
        self._asked_at: dict[str, float] = {}  # zone -> when its question was last asked of the records
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LinkBaselineWatcher:
        from harness.contract.linkwatch import write_watch

        write_watch(self.run_dir, self._answers)
        self._thread = threading.Thread(target=self._run, name="eh-link-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from harness.contract.linkwatch import end_watch

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end_watch(self.run_dir)

    def _run(self) -> None:
        while not self._stop.wait(LINK_WATCH_POLL_S):
            try:
                self.step()
            except Exception as exc:  # no answer: its file gone, the action gives up at once, and says so
                from harness.contract.linkwatch import end_watch

                self.say(f"chaos: the link baseline's answer failed: {exc}")
                end_watch(self.run_dir)
                return

    def step(self) -> None:
        """Answer the questions on file that have no final answer yet (each asked of the records every `poll_s`)."""
        from harness.contract.linkwatch import asked, write_watch
        from harness.verify import link_baseline_owed

        changed = False
        for zone, token in asked(self.run_dir).items():
            ans = self._answers.get(zone)
            if ans is not None and ans["token"] == token and ans["owed"] is None:
                continue  # answered
            now = self.clock()
            if ans is not None and ans["token"] == token and now - self._asked_at.get(zone, -math.inf) < self.poll_s:
                continue
            self._asked_at[zone] = now
            owed = link_baseline_owed(self.run_dir, self.topology, zone, now)
            if owed is not None and (ans is None or ans["token"] != token):
                self.say(f"chaos: waiting for {owed} to be on record (at most {max(0.0, owed.due - now):.0f} s)")
            self._answers[zone] = {"token": token, "owed": None if owed is None else str(owed),
                                   "due": None if owed is None else owed.due}  # fmt: skip
            changed = True
        if changed:
            write_watch(self.run_dir, self._answers)


LINK_WATCH_POLL_S = 0.1  # how often the watcher looks for a question (a small file)


def link_watch(
    run_dir: Path, topology: Topology, p: PlannedExperiment, say: ProgressFn, *, held: bool = False
) -> contextlib.AbstractContextManager[object]:
    """A `LinkBaselineWatcher` while `p` runs when one of its `degrade_link`s may ask it, else nothing.

    `harness chaos` (a game day): whenever `p` degrades a link. e2e (`held`): only when `p` degrades a link after
    its own earlier fault reached it (`degraded_after_own`). e2e holds an experiment whose first fault on a link
    degrades it (`wait_link_baseline`, asked ahead by `LinkLookahead`), but an operator's experiment that kills
    LAX's product-api and then slows LAX's link reached it itself, and its degradation began with no baseline
    when the kill's recovery was slow ("not shown", as a game day's was: t55a). The shipped experiments run
    without one: every `degrade_link` asks a watcher once an earlier fault of the run reached its link, a
    records read on e2e's critical path for a baseline the hold has just put on record.
    """
    if degraded_after_own(p, topology) if held else any(func == "degrade_link" for func, _zones in p.steps):
        return LinkBaselineWatcher(run_dir, topology, say)
    return contextlib.nullcontext()


LOOKAHEAD_SETTLE_S = 2.0
"""The look-ahead asks the next experiment's link hold no sooner than this after the newest restore: the restored
pods' first calls (their recovery, which the hold reads) are on record, and its records read stays out of them."""
LOOKAHEAD_RETRY_S = 2.0  # ... and again this long after a check that found a baseline owed (each is a records read)
LOOKAHEAD_POLL_S = 0.25  # how often it reads the timeline (a small file) for a restore, or a new inject


class LinkLookahead:
    """The next experiment's link hold (`wait_link_baseline`) asked while the experiment before it runs.

    Why: the hold reads the records (a DuckDB build of the run's hops, ~0.3 s on a quiet machine, ~0.9 s at the
    probe budget's 60 % busy), and asked between two experiments that read was an idle gap on e2e's clock every
    run (1.1 s before service-link in a bench run), though nothing was owed. So once every fault of the experiment
    running is restored (and `LOOKAHEAD_SETTLE_S` past), the hold is asked here; an answer of nothing owed, from a
    check begun after the newest inject, stands at the gate (`cleared`) for as long as it lasts. Any other
    answer, one that no longer lasts, or a fault injected after the check began, leaves the gate to ask itself.

    It stands only as long as it lasts (`harness.verify.link_baseline_lasts`): the newest fault's window ends at a
    recovery instant that one call failed over after the check moves later (a correct mesh's), and the baseline's
    stretch slides on. Asked as `link_baseline_owed` asks the gate, a check 39 s into a run found the hops after
    a kill's recovery (34.5 s) enough; a call sent to the Region at 40 s moved that recovery past it, the gate
    (41 s) would have held, and the answer stood: the degradation began with no baseline ("not shown").
    `lasts(run_dir, topology, zone, now)`: until when a check's answer of nothing owed stands (-inf: owed).
    """

    def __init__(
        self,
        run_dir: Path,
        topology: Topology,
        zones: list[str],
        *,
        clock: Callable[[], float] = time.time,
        lasts: Callable[[Path, Topology, str, float], float] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.topology = topology
        self.zones = zones
        self.clock = clock
        self._lasts = lasts
        self._cleared_at: float | None = None  # when a check that found nothing owed began
        self._until = -math.inf  # ... and until when its answer lasts
        self._last_check: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LinkLookahead:
        self._thread = threading.Thread(target=self._run, name="eh-link-lookahead", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more checks; a check under way is finished (its answer kept)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def cleared(self) -> bool:
        """True when a check begun after the newest inject found no zone's baseline owed, and its answer lasts."""
        return self._stands([_ts(r) for r in self._timeline() if r.get("phase") == "inject"], self.clock())

    def _stands(self, injects: list[float], now: float) -> bool:
        """The last answer of nothing owed still stands at `now`, given the timeline's `injects`."""
        cleared = self._cleared_at
        return cleared is not None and now < self._until and all(t < cleared for t in injects)

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # a look-ahead that fails leaves the gate to ask: nothing is lost
            while not self._stop.wait(LOOKAHEAD_POLL_S):
                self.step()

    def step(self) -> None:
        """One look: check when every fault so far is restored, `LOOKAHEAD_SETTLE_S` past the newest restore, and
        not cleared yet (or an inject came after the clearing check), at most every `LOOKAHEAD_RETRY_S`."""
        now = self.clock()
        recs = self._timeline()
        injects = [_ts(r) for r in recs if r.get("phase") == "inject"]
        restores = [_ts(r) for r in recs if r.get("phase") == "restore"]
        if not restores or len(restores) < len(injects) or now - max(restores) < LOOKAHEAD_SETTLE_S:
            return  # a fault on, or just restored: its recovery is not on record yet
        if self._stands(injects, now):
            return
        if self._last_check is not None and now - self._last_check < LOOKAHEAD_RETRY_S:
            return
        self._last_check = now
        lasts = self._lasts
        if lasts is None:
            from harness.verify import link_baseline_lasts

            lasts = link_baseline_lasts
        until = min((lasts(self.run_dir, self.topology, z, now) for z in self.zones), default=math.inf)
        if until > now:
            self._cleared_at, self._until = now, until

    def _timeline(self) -> list[dict[str, Any]]:
        from harness.chaos.timeline import records

        return records(self.run_dir / CHAOS_FILE)


def _ts(rec: Mapping[str, Any]) -> float:
    try:
        return float(rec.get("ts"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.inf  # unreadable: as if just now (no answer stands against it)


def warm_need(zones: list[str], planned: list[PlannedExperiment], topology: Topology) -> dict[str, int]:
    """Successful requests each zone's users need before the first fault (`warm_up`).

    A zone a fault of the plan acts on needs WARM_REQUESTS: its "before" is
    what that fault's failover is read against. A fault in the Region
    reaches every zone (each Local Zone falls back to it; postgres lives
    there), so then every zone needs them. A zone no fault acts on needs
    only to be shown served (SHOWN_SERVED, as the probe budget asks):
    what the verdict reads there (stayed in-zone, availability)
    accumulates over the whole run, not before its first fault, and waiting
    for 20 answers at its users' pace held every run ~1.2 s for nothing.
    """
    region = {z.name for z in topology.region_zones}
    acted = {z for p in planned for z in p.zones}
    if acted & region:
        acted = set(zones)
    return {z: WARM_REQUESTS if z in acted else SHOWN_SERVED for z in zones}


def probes_from_below(traffic: TrafficRunner, served: RequestWatch) -> ProbeBudget:
    """The run's probe budget, with its probes set to start at their slowest: call before the traffic starts.

    Probes that began at their set rates drove a small machine to 100 % busy
    before the budget could slow them, and that broke the shop being
    measured (harness.traffic.budget says how); from below, the budget only
    ever speeds them up to what it measured the machine carries.
    """
    from harness.traffic import ProbeBudget

    budget = ProbeBudget(traffic.budget_file, traffic.periods, served.rates)
    budget.start_low()
    return budget


def warm_up(budget: ProbeBudget | None, served: RequestWatch, bound_s: float, say: Callable[[str], None],
            need: Mapping[str, int] | None = None) -> None:  # fmt: skip
    """Every zone's users served `need` (default: WARM_REQUESTS each) before the first fault, the probe budget
    measured meanwhile. (A link's settled baseline is its first degradation's to wait for:
    `harness.chaos.actions.degrade_link`.)

    The probe budget (harness.traffic.budget: probes no faster than this
    machine carries) measures the running shop, not its start, so it starts
    once every zone served a request that began after its first answer was
    back: a zone's first answers pay its cold path (each sidecar's first
    mTLS connections, product-api's first database connections; an edge
    zone's first coffees took 400-580 ms, its next ones 100-450 ms), and a
    request begun after one of them went down the path it had opened. (A
    fixed five answers per zone, asked before, held every run ~0.9 s longer
    for the zone whose users are slowest, a Wavelength Zone without probes,
    and asked nothing of its users' cold starts the warm path does not.)
    The requests its window carries count towards the warm-up's. Its line is said when the warm-up is complete: a
    game day's chaos waits for it. `budget` None: locust workers
    in the zones' pods, which do not read the budget's file: no decision, so
    the verdict reads a link's baseline from the whole warm-up. `bound_s` is how long a zone still short may gain no
    request (`RequestWatch.wait`'s `stalled`; one `Stall` for all its waits, so
    once, not once per wait), not the warm-up's length, so the
    line always means the warm-up is complete on a mesh that serves every
    zone; what is still missing when a zone gained none for that long is said,
    and the verdict says it too (unverified). Bounded by time, a machine busy
    enough to keep the probes at their slowest said it with 19 of LAX's 20
    requests, and the same game day's chaos began before its warm-up on one run
    and after it on the next; e2e's first fault alike.
    """
    from harness.traffic import Stall

    summary = None
    stall = Stall(served.clock())  # one no-progress clock for the waits below: the bound is the warm-up's, once
    if budget is not None:
        served.wait(0.0, 1, bound_s, stalled=stall)  # every zone served ...
        served.wait(served.first_answers(), 1, bound_s, stalled=stall)  # ... and again on the path it opened
        summary = budget.settle().summary()
    warm = WARM_REQUESTS if need is None else need
    short: list[str] = []
    if not served.wait(0.0, warm, bound_s, stalled=stall):
        short += [f"{z} {had} of {k} requests" for z, (had, k) in served.short_of(0.0, warm).items()]
    if short:
        say(f"warm-up: incomplete, a zone short of them gained none for {bound_s:g} s ({', '.join(short)}): "
            "the verdict says what that leaves unverified")  # fmt: skip
    if summary is not None:
        say(summary)


def record_traffic(
    backend: Backend,
    run_dir: Path,
    users: int,
    duration_s: float,
    shape: str = "steady",
    processes: int = 1,
    probe_period_s: float | None = None,
    probe_zones: list[str] | None = None,
    preflight: str = "gate",
) -> Any:
    """`harness traffic` for game days: a complete run directory that `harness verify` can judge.

    Chaos run meanwhile from another terminal with `harness chaos --run-dir` the
    same directory adds the timeline. Ctrl-C (any stop signal) while users are
    served is how an operator ends a game day's traffic (`duration_s` is only a
    bound): the traffic stops, every record is collected and the run is marked
    complete as at its natural end, then the interruption is raised (the command
    exits 130). One during the collection leaves the run incomplete: its verdict
    fails (experiment-ran), since what was not collected is unverified.
    """
    from harness.observe import build_hops
    from harness.traffic import RequestWatch, TrafficRunner
    from harness.traffic.runner import DEFAULT_PROBE_PERIOD_S, START_GRACE_S

    run_dir.mkdir(parents=True, exist_ok=True)
    mark_run(run_dir, "traffic", runner_clock=runner_clock(backend))
    if not (run_dir / "manifests").exists():
        copy_manifests(backend.manifests().root, run_dir)
    # --- preflight (STANDINS, harness.preflight): Consul's own view before any traffic ---
    preflight_gate(backend, run_dir, preflight, print)
    stopped: KeyboardInterrupt | None = None
    with recording(backend, run_dir):
        before_traffic(backend, run_dir, lambda _m: None)
        entry = backend.entrypoints()
        try:
            runner = TrafficRunner(entry, run_dir, users=users, spawn_rate=users, duration_s=duration_s, shape=shape,
                                   processes=processes,
                                   probe_period_s=DEFAULT_PROBE_PERIOD_S if probe_period_s is None else probe_period_s,
                                   probe_zones=probe_zones)  # fmt: skip
            served = RequestWatch(run_dir / REQUESTS_FILE, list(entry))
            budget = probes_from_below(runner, served)
            with runner as traffic:
                try:
                    # the game day's chaos waits for the budget's line: probes sized to the machine before any fault
                    # (the `harness` process writes stdout a line at a time, also into a pipe: harness.__main__)
                    # (a link's first degradation waits for its settled baseline itself: actions.degrade_link)
                    warm_up(budget, served, WARMUP_BOUND_S, print)
                    traffic.wait(timeout=duration_s + START_GRACE_S)
                except KeyboardInterrupt as exc:  # the operator ended the traffic: collect, then say so
                    stopped = exc
            result = traffic.result
        finally:
            after_traffic(backend, run_dir, lambda _m: None)
    build_hops(run_dir, jsonl=False)  # Parquet: a long run's hops are no JSON to wait for
    mark_run(run_dir, "done", "complete")  # a run that never gets here stays "running": its verdict fails
    if stopped is not None:
        raise stopped
    return result


def check_inputs(opts: E2EOptions, backend: Backend, topology: Topology) -> list[PlannedExperiment]:
    """Every experiment checked against the topology and what the backend can do, before anything starts.

    InputError on the first problem. `run_e2e` asks the backend again after
    `up`: some clusters only show what they can do once they exist (kind
    learns there whether the kernel has sch_netem).
    """
    from harness.chaos import plan_run
    from harness.traffic.runner import check_shoppers, users_wait

    check_workers_in_zone(opts, backend)
    users_wait(os.environ)  # the users' think time (EH_WAIT): a bad value refused before anything is created
    # workers in the zones: one zone each, the master hands the shoppers out over them in turn
    check_shoppers(opts.users, [z.name for z in topology.zones], 1 if opts.workers_in_zone else opts.processes)
    return plan_run(list(opts.experiments), topology, None, require=backend.require_capability)


def check_workers_in_zone(opts: E2EOptions, backend: Backend) -> None:
    """`--workers-in-zone` needs pods of our own in the cluster and an address of this machine they can reach."""
    if not opts.workers_in_zone:
        return
    if backend.name not in ("kind", "existing"):
        raise InputError(
            "--workers-in-zone", "", "kind and existing only (the local backend puts users behind each zone's "
            "access link: zones[].userLatencyMs)"
        )  # fmt: skip
    if not opts.locust_master_host and backend.name != "kind":
        raise InputError(
            "--locust-master-host", "", "required with --workers-in-zone on an existing cluster: an address of "
            "this machine that the cluster's pods can connect to (e.g. a runner inside the VPC)"
        )  # fmt: skip


def in_zone_workers(opts: E2EOptions, backend: Backend, topology: Topology) -> Any:
    """The `InZoneWorkers` of this run, or None without `--workers-in-zone` (call after `up`)."""
    if not opts.workers_in_zone:
        return None
    from harness.traffic.inzone import InZoneWorkers

    host = opts.locust_master_host or kind_host_address()
    # the workers run the users: they get the think time the master records for the verifier (users.json)
    env = {WAIT_ENV: os.environ[WAIT_ENV]} if WAIT_ENV in os.environ else None
    return InZoneWorkers(backend.cluster, topology, host, opts.locust_master_port, env=env)  # type: ignore[attr-defined]


def kind_host_address() -> str:
    """This machine as kind's nodes reach it: the IPv4 gateway of kind's Docker network."""
    import subprocess

    from harness.errors import BackendError

    fmt = "{{range .IPAM.Config}}{{.Gateway}} {{end}}"
    try:
        r = subprocess.run(["docker", "network", "inspect", "kind", "--format", fmt],
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"docker network inspect kind: {exc}") from None
    v4 = [a for a in r.stdout.split() if a.count(".") == 3]
    if r.returncode != 0 or not v4:
        raise BackendError(
            f"cannot find the host address of kind's network (docker network inspect kind: "
            f"{(r.stderr or r.stdout).strip() or 'no IPv4 gateway'}); give --locust-master-host"
        )
    return v4[0]


def source_topology(opts: E2EOptions) -> Topology:
    """The topology `--topology` or `--manifests` names, read without writing anything (InputError on bad input)."""
    from harness.render.manifests import load
    from harness.topology import load_topology

    if opts.manifests is not None:
        if not opts.manifests.is_dir():
            raise InputError(str(opts.manifests), "", "not a directory written by `harness render`")
        return load(opts.manifests).topology
    return load_topology(opts.topology)


AFTER_TRAFFIC_MODULES = ("harness.verify", "harness.observe", "harness.report")
"""What reading the records needs (DuckDB, the verdict's rules, the report), and the cool-down's recovery check
first: imported while the experiments run (`_imported_meanwhile`), not before the bring-up."""


def _imported_meanwhile(modules: tuple[str, ...]) -> threading.Thread:
    """`modules` imported on a thread, now: while the experiments run, this process only waits on them.

    Why: imported at the start of `run_e2e`, they were on the bring-up's critical path (~0.2 s quiet, twice
    that under load: the local daemon is prestarted after them), needed only once the traffic stops. A
    failed import is left to the import where they are used, which raises it there.
    """

    def imports() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=imports, name="eh-imports", daemon=True)
    thread.start()
    return thread


def run_e2e(
    opts: E2EOptions,
    bopts: BackendOptions,
    say: ProgressFn = print,
    on_start: Callable[[Path, list[PlannedExperiment]], None] | None = None,
) -> E2EResult:
    """The whole loop; `on_start(run_dir, planned)` is called once the run directory exists (progress display)."""
    from harness.chaos import Launcher, chaos_env, plan_run, run_planned, write_plan
    from harness.gameday import check_dry_run, dry_run_e2e
    from harness.render.manifests import load
    from harness.traffic import RequestWatch, TrafficRunner
    from harness.traffic.runner import DEFAULT_PROBE_PERIOD_S, prestart_locust

    name, why = choose(bopts.name)
    bopts.name = name
    check_dry_run(opts.dry_run, bopts.execute, name)
    topology = source_topology(opts)
    backend = connect(bopts)
    scratch = contextlib.ExitStack()  # the manifests checked before the run directory exists, until copied there
    checked: Manifests | None = None
    try:
        backend.prestart()  # local: the daemon imports while the inputs are checked (ended by `close` on a refusal)
        # bad input, or a fault the cluster cannot do where the backend can tell now (EKS): no run dir, no cluster
        planned = check_inputs(opts, backend, topology)
        if name == "existing":  # destructive chaos on someone else's cluster: the plan only, unless --execute
            lines = dry_run_e2e(planned, opts, bopts, load)
            if lines is not None:
                raise DryRun("\n".join(lines))
            # what `up` refuses first (a zone with no entry point) refused before the run directory exists; the
            # rendering it checks (writing it takes a second or two) is the run's, copied into the run directory
            tmp = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="eh-check-")))
            checked = load(prepare_manifests(opts, tmp))
            backend.check_manifests(checked)
        backend.check_tools()  # a missing tool: refused here, not by `up` in a run directory marked failed
    except BaseException:
        scratch.close()
        backend.close()
        raise
    say(f"backend: {name} ({why})")
    run_dir = new_run_dir(opts.runs_root, opts.label)
    say(f"run directory: {run_dir}")
    if on_start is not None:
        on_start(run_dir, planned)  # harness.progress watches the run directory from here
    try:
        mark_run(run_dir, "render", runner_clock=runner_clock(backend))
        if checked is not None:  # rendered and read once, for the check: the same files, in the run directory
            manifests = replace(checked, root=copy_manifests(checked.root, run_dir))
        else:
            manifests = load(prepare_manifests(opts, run_dir))
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing was started: leave nothing behind
        backend.close()
        raise
    finally:
        scratch.close()
    messages: list[str] = []
    chaos_ok = True
    launcher = Launcher(chaos_env(run_dir, bopts))  # each experiment's `chaos run` started ahead of it
    # locust, too: it imports while the pods start (harness.traffic.launch); closed below if no runner took it
    locust = prestart_locust(run_dir)
    try:
        mark_run(run_dir, "up")
        backend.up(manifests, progress=lambda m: say(f"up: {m}"))
        # again, now that up has probed the cluster (kind: sch_netem); still before any traffic or fault
        planned = plan_run(list(opts.experiments), topology, None, require=backend.require_capability)
        write_plan(run_dir, planned)
        if planned:  # the first experiment's chaos imports during the preflight, before the traffic's budget measures
            launcher.prestart()
        # --- preflight (STANDINS, harness.preflight): Consul's own view before any traffic; "gate" stops here ---
        mark_run(run_dir, "preflight")
        preflight_gate(backend, run_dir, opts.preflight, say)
        with recording(backend, run_dir, say):
            workers = in_zone_workers(opts, backend, topology)
            entry = workers.entrypoints if workers is not None else backend.entrypoints()
            probe_zones = sorted({z for p in planned for z in p.zones if z in entry})
            if workers is not None:
                probe_zones = sorted(entry)  # one probe per worker: every zone (TrafficRunner explains)
                say(f"traffic: locust workers in {len(entry)} zones, master on port {opts.locust_master_port}")
                workers.start()
            before_traffic(backend, run_dir, say, requests_in_zones=workers is not None)
            say(f"traffic: {opts.users} users over {len(entry)} zones, probes into {', '.join(probe_zones) or 'none'}")
            # in-zone workers get one probe each at the base period (TrafficRunner explains)
            periods = probe_periods(topology, probe_zones, DEFAULT_PROBE_PERIOD_S) if workers is None else None
            try:
                # duration is only a bound: the runner is stopped when the context exits
                runner = TrafficRunner(
                    entry,
                    run_dir,
                    users=opts.users,
                    spawn_rate=opts.spawn_rate,
                    duration_s=TRAFFIC_BOUND_S,
                    processes=opts.processes,
                    probe_zones=probe_zones,
                    master=workers.master() if workers is not None else None,
                    probe_periods=periods,
                    prestarted=locust,
                )
                served = RequestWatch(run_dir / REQUESTS_FILE, list(entry))
                budget = probes_from_below(runner, served) if workers is None else None
                with runner:
                    mark_run(run_dir, "traffic")
                    # every zone's users served before the first fault, not a fixed pause (warmup_s: none gained)
                    warm_up(budget, served, opts.warmup_s, say, need=warm_need(list(entry), planned, topology))
                    after_reads = _imported_meanwhile(AFTER_TRAFFIC_MODULES)
                    res: ChaosResult | None = None  # the experiment just run: its steady state after may be the next
                    ahead: LinkLookahead | None = None  # the next one's link hold, asked while this one runs
                    for i, p in enumerate(planned):  # one's before (run_planned: no question asked twice in a row)
                        mark_run(run_dir, "chaos")
                        # the first experiment's faults come after none: its degradations wait themselves
                        if i and (zones := degraded_first(p, topology)) and not (ahead and ahead.cleared()):
                            wait_link_baseline(run_dir, topology, zones, say)
                        say(f"chaos: {p.id} ({p.file})")
                        started = launcher.take()
                        if i + 1 < len(planned):
                            launcher.prestart()  # the next one's, while this one runs: no gap between them
                        nxt = degraded_first(planned[i + 1], topology) if i + 1 < len(planned) else []
                        ahead = LinkLookahead(run_dir, topology, nxt).start() if nxt else None
                        try:
                            with link_watch(run_dir, topology, p, say, held=True):
                                res = run_planned(p, run_dir, bopts, started=started, previous=res)
                        finally:
                            if ahead is not None:
                                ahead.stop()
                        if not res.ok:
                            chaos_ok = False
                            messages.append(f"chaos experiment {p.id}: {res.reason}")
                        say(f"chaos: {p.id} {'ran as planned' if res.ok else 'FAILED: ' + str(res.reason)}")
                    mark_run(run_dir, "cooldown")
                    now = time.time()
                    cool_down(served, cooldown_since(run_dir, now), now, opts.cooldown_s, runner.think_s[1])
                    wait_recoveries(run_dir, topology, say)
                    say("traffic: stopping")
            finally:
                say("traffic: stopped")
                after_traffic(backend, run_dir, say)
                if workers is not None:
                    workers.stop()
        launcher.close()  # within the try: a Ctrl-C while they close still marks the run and takes the cluster down
        locust.close()
    except BaseException as exc:
        launcher.close()
        locust.close()
        mark_run(run_dir, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        try:
            take_down(backend, opts.keep, say)
        except Exception as down_exc:  # said, and the run's own error raised: it is why the run stopped
            say(f"down failed too, the cluster may still be up (`harness down` retries): {down_exc}")
        raise
    after_reads.join()  # long done: its error, if any, is the import's own below
    from harness.observe import build_hops
    from harness.report import write_junit, write_report
    from harness.verify import judged, write_verdict

    # Every record is in the run directory now: the cluster comes down while they are read (its second or so
    # hidden behind observe and verify); its error is raised after them, and Ctrl-C still waits for it.
    with ThreadPoolExecutor(1, thread_name_prefix="eh-down") as pool:
        downed = pool.submit(take_down, backend, opts.keep, say)
        try:
            say("observe: hop records from the sidecars' access logs")
            build_hops(run_dir, jsonl=False)  # Parquet: a long run's hops are no JSON to wait for
        except BaseException as exc:  # Ctrl-C or a failure before every record is in: not a run left "running"
            mark_run(run_dir, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
        mark_run(run_dir, "verify", "complete")  # every record is in; what follows only reads them
        with judged(run_dir) as (run, verdict):  # loaded once: the report draws from the run the verdict judged
            write_verdict(run_dir, verdict)
            write_report(run_dir, verdict, run)
            write_junit(run_dir, verdict)
        downed.result()
    passed = bool(verdict.passed) and chaos_ok
    return E2EResult(run_dir, name, passed, verdict, chaos_ok, messages)
