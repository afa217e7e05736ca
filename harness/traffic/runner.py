"""Run locust headless in its own process and summarise what users saw.

Why a subprocess: importing locust monkey-patches the whole interpreter with
gevent, which would break the harness's threads, subprocesses and the
Kubernetes client. So the harness never imports locust; it starts
``python -m locust`` from its own interpreter (the venv's locust), points it at
``loadtests/hashicups.py`` and reads the records that locustfile's recorder
appends to ``<run dir>/requests.jsonl``.

Scaling out uses locust's own distributed mode (``--processes N`` forks a
master and N workers), never a home-grown fan-out, so counts and shapes stay
locust's.

The process is started in a new session: a Ctrl-C at the terminal reaches
only the harness, which then stops locust in order: SIGTERM, then SIGKILL for
the process group it leads, which holds only locust and its forked workers.
Locust handles SIGTERM in a greenlet of its own (`main.sig_term_handler`): it
stops the users within ``--stop-timeout``, so each records the request it has
in hand, and writes its stats. A SIGINT is raised as KeyboardInterrupt in
whichever greenlet runs when it lands: a user between its answer and its
record lost that record. With a load shape (every run here) locust's own
handler comes only after the shape's end: the locustfile's
(`shapes.stop_shape_on_sigterm`) ends the shape at its next tick, as ``-t``
would. Locust starts with SIGINT and SIGTERM at their defaults whatever the
caller inherited (`interrupt.with_default_stop_signals`).
Its output goes to
``<run dir>/locust.log``, never to the caller's stdout (a pipeline on the
harness's output must not hang on a child holding it open).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from harness.contract.rundir import PROBE_BUDGET_FILE, REQUESTS_FILE, USERS_FILE
from harness.contract.users import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, DEFAULT_WAIT, WAIT_ENV, parse_wait
from harness.errors import HarnessError, InputError
from harness.interrupt import with_default_stop_signals

if TYPE_CHECKING:
    from harness.traffic.launch import PrestartedLocust

# Package data: locust gets a file path, which an installed package has as much as a checkout
DEFAULT_LOCUSTFILE = Path(str(files("harness").joinpath("loadtests", "hashicups.py")))
SHAPES = ("steady", "ramp")

LOG_FILE = "locust.log"
STATS_FILE_PREFIX = "locust-stats"  # locust appends ".json"

DEFAULT_PROBE_PERIOD_S = 0.03
"""One probe request per zone every 30 ms (loadtests/hashicups.py `ZoneProbe`): failover and recovery
instants are then known to within the gap between records, <= 50 ms per zone pair."""

EXPECT_WORKERS_MAX_WAIT_S = 120.0
"""Distributed mode with workers elsewhere: how long the master waits for all of them to connect."""

START_GRACE_S = 30.0
"""Wall time allowed beyond `duration_s` (startup, workers connecting, summary) before we stop locust."""


class TrafficError(HarnessError):
    """Locust could not run (bad locustfile, bad arguments): names the log to read."""


def users_wait(env: Mapping[str, str]) -> tuple[float, float]:
    """The shoppers' (shortest, longest) think time that `env` gives the locustfile (`WAIT_ENV`, else its
    default); InputError naming the variable when the value is bad, before anything is started."""
    try:
        return parse_wait(env.get(WAIT_ENV, DEFAULT_WAIT))
    except ValueError as exc:
        raise InputError(WAIT_ENV, "", str(exc)) from None


def check_shoppers(users: int, zones: list[str], processes: int = 1, option: str = "--users") -> None:
    """InputError naming `option` when `users` shoppers cannot enter every one of `zones`, before anything starts.

    Why: the locustfile hands its shoppers out over the entry zones round robin (zone probes come on top and
    are no shoppers), and coverage fails every zone of the topology no shopper entered as unverified
    (`UserChecks._zones_without_shoppers`): `harness traffic -u 3` over six zones ran its whole duration to a
    verdict that could only fail. No option narrows the zones the verdict judges, so fewer shoppers than
    zones is bad input, refused in one line (`harness e2e` the same).

    Over `processes` local locust workers, worker k's shoppers take slots k, k + processes, ... (the
    locustfile's `_slot`), and the master gives each worker at least users // processes of them, but which
    workers get the rest depends on its order of the workers: every zone is sure of a shopper only when
    (users // processes) * processes reaches the zones.
    """
    need = len(zones) if processes <= 1 else -(-len(zones) // processes) * processes
    if users < need:
        over = f" over {processes} locust processes" if processes > 1 else ""
        per = f" (a multiple of --processes: each process takes every {processes}th zone)" if need > len(zones) else ""
        raise InputError(
            option,
            "",
            f"{users} shoppers{over} for {len(zones)} zones ({', '.join(zones)}): each zone needs one of its own "
            f"(the verdict fails a zone no shopper entered as unverified); give at least {need}{per}",
        )


class StopEvent(Protocol):
    """Anything with ``is_set()`` (threading.Event, multiprocessing.Event, ...)."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class ZoneCounts:
    """What the users entering at one zone saw."""

    requests: int
    failures: int


@dataclass(frozen=True)
class TrafficResult:
    """Summary of one locust run, counted from `requests.jsonl` (this run's lines only).

    `rps` is requests divided by the span from the first request's start to
    the last request's end, so startup and shutdown time do not dilute it.
    `returncode` is locust's (1 just means some requests failed);
    `stopped_early` is True when stop_event / stop() ended the run before its
    duration.
    """

    requests: int
    failures: int
    rps: float
    duration_s: float
    returncode: int | None
    stopped_early: bool
    requests_file: Path
    log_file: Path
    stats_file: Path
    per_zone: dict[str, ZoneCounts] = field(default_factory=dict)

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "rps": self.rps,
            "duration_s": self.duration_s,
            "returncode": self.returncode,
            "stopped_early": self.stopped_early,
            "requests_file": str(self.requests_file),
            "log_file": str(self.log_file),
            "per_zone": {z: {"requests": c.requests, "failures": c.failures} for z, c in self.per_zone.items()},
        }


def locust_command(
    locustfile: Path,
    host: str,
    users: int,
    spawn_rate: float,
    duration_s: float,
    processes: int,
    stats_prefix: Path,
    master: tuple[str, int, int] | None = None,
    processes_port: int | None = None,
) -> list[str]:
    """The locust command line (pure; exposed for tests and for `--dry-run` style printing).

    `processes_port`: where `--processes` workers meet their master. Locust's
    default, 5557 for every run, let two runs on one machine (a game day's
    traffic next to an e2e, parallel tests) take each other's workers or fail
    to bind; the runner passes a port free at the time.
    """
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        f"{spawn_rate:g}",
        "-t",
        f"{max(1, math.ceil(duration_s))}s",
        "--stop-timeout",
        "2",
        "--only-summary",
        "--json-file",
        str(stats_prefix),
    ]
    if master is not None:
        # locust's distributed mode with workers elsewhere (harness.traffic.inzone): wait for all of them
        host, port, workers = master
        cmd += ["--master", "--master-bind-host", host, "--master-bind-port", str(port),
                "--expect-workers", str(workers),
                # workers that cannot reach the master end the run with locust's own message, never a silent wait
                "--expect-workers-max-wait", f"{EXPECT_WORKERS_MAX_WAIT_S:g}"]  # fmt: skip
    elif processes > 1:
        cmd += ["--processes", str(processes)]
        if processes_port is not None:
            cmd += ["--master-bind-port", str(processes_port), "--master-port", str(processes_port)]
    return cmd


def free_port() -> int:
    """A TCP port free on this machine now (the kernel's pick for an ephemeral bind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prestart_locust(out: Path) -> PrestartedLocust:
    """A locust for a `TrafficRunner` in `out`, started now and waiting for it (`prestarted=`): it imports while
    the caller brings the cluster up (harness.traffic.launch). `close()` it if no runner took it."""
    from harness.traffic.launch import PrestartedLocust  # not at import: its module is the child's `__main__`

    out = Path(out).resolve()
    return PrestartedLocust(out, out / LOG_FILE, wrap=_dies_with_parent)


def _dies_with_parent(cmd: list[str]) -> list[str]:
    """`cmd` run so that it gets SIGTERM when the harness dies without stopping it (kill -9, OOM).

    Locust runs in its own session (a terminal's Ctrl-C reaches only the
    harness, which stops it in order), so nothing else would ever stop it: an
    e2e's traffic is bounded at hours. `setpriv --pdeathsig` (util-linux) sets
    the parent-death signal and execs locust; without setpriv the command is
    run as it is.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


class TrafficRunner:
    """Locust in the background while something else (chaos) runs.

    ::

        with TrafficRunner(backend.entrypoints(), run_dir, users=20, spawn_rate=10, duration_s=600) as tr:
            run_chaos(...)
        result = tr.result   # stopped and counted on exit

    `start()` returns once the process is launched; `wait()` blocks until it
    ends by itself; `stop()` ends it early (idempotent) and returns the
    :class:`TrafficResult`.
    """

    def __init__(
        self,
        entrypoints: dict[str, str],
        out: Path,
        users: int,
        spawn_rate: float,
        duration_s: float,
        shape: str = "steady",
        processes: int = 1,
        locustfile: Path | None = None,
        extra_env: dict[str, str] | None = None,
        probe_period_s: float | None = DEFAULT_PROBE_PERIOD_S,
        probe_zones: list[str] | None = None,
        master: tuple[str, int, int] | None = None,
        probe_periods: Mapping[str, float] | None = None,
        prestarted: PrestartedLocust | None = None,
    ) -> None:
        if not entrypoints:
            raise TrafficError("traffic: no entrypoints (zone -> base URL) to send users to")
        if shape not in SHAPES:
            raise TrafficError(f"traffic: unknown shape {shape!r}; choose one of {list(SHAPES)}")
        if users < 1 or spawn_rate <= 0 or duration_s <= 0 or processes < 1:
            raise TrafficError("traffic: users, spawn_rate, duration_s and processes must be positive")
        self.entrypoints = dict(entrypoints)
        self.out = Path(out).resolve()  # locust runs with cwd=out: every path handed over is absolute
        self.users = users
        self.spawn_rate = spawn_rate
        self.duration_s = duration_s
        self.shape = shape
        self.processes = processes
        self.locustfile = Path(locustfile).resolve() if locustfile is not None else DEFAULT_LOCUSTFILE
        self.extra_env = dict(extra_env or {})
        self.think_s = users_wait({**os.environ, **self.extra_env})  # bad EH_WAIT: refused before locust starts
        # zone probes exist in the default locustfile only; they come on top of `users` shoppers
        self.probe_period_s = probe_period_s if self.locustfile == DEFAULT_LOCUSTFILE and probe_period_s else 0.0
        self.probe_zones = list(self.entrypoints if probe_zones is None else probe_zones)
        unknown = sorted(set(self.probe_zones) - set(self.entrypoints))
        if unknown:
            raise TrafficError(f"traffic: probe zones without an entry point: {', '.join(unknown)}")
        self.probe_periods = {z: float(v) for z, v in (probe_periods or {}).items()}
        odd = sorted(z for z, v in self.probe_periods.items() if z not in self.probe_zones or not v > 0)
        if odd:
            raise TrafficError(f"traffic: probe periods need a probed zone and a positive period: {', '.join(odd)}")
        self.master = master
        if master is not None and self.probe_period_s > 0 and sorted(self.probe_zones) != sorted(self.entrypoints):
            # one probe per worker, and each worker serves one zone: locust hands fixed-count users out
            # over the workers in turn, so a subset would put a probe on a worker of another zone
            raise TrafficError("traffic: with workers in the zones every zone is probed (give no probe zones)")
        self.probes = len(self.probe_zones) if self.probe_period_s > 0 else 0
        self.requests_file = self.out / REQUESTS_FILE
        self.users_file = self.out / USERS_FILE
        self.budget_file = self.out / PROBE_BUDGET_FILE  # the probes follow its factor (harness.traffic.budget)
        self.log_file = self.out / LOG_FILE
        self.stats_file = self.out / f"{STATS_FILE_PREFIX}.json"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_wall = 0.0
        self._started_mono = 0.0
        self._ended_mono: float | None = None
        self._stopped_early = False
        self._lock = threading.Lock()
        self.result: TrafficResult | None = None
        if prestarted is not None and (prestarted.cwd.resolve(), prestarted.log_file.resolve()) != (
            self.out,
            self.log_file,
        ):
            raise TrafficError(f"traffic: a locust prestarted for {prestarted.cwd} given to a run in {self.out}")
        self._prestarted = prestarted  # harness.traffic.launch: locust imported ahead, waiting for `start`

    @property
    def periods(self) -> dict[str, float]:
        """Each probed zone's probe period as the locustfile sets it (before any probe budget)."""
        if self.probe_period_s <= 0:
            return {}
        return {z: self.probe_periods.get(z, self.probe_period_s) for z in self.probe_zones}

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> TrafficRunner:
        """Launch locust; raises TrafficError if it cannot even be started."""
        if self._proc is not None:
            raise TrafficError("traffic: runner already started")
        if not self.locustfile.is_file():
            raise TrafficError(f"{self.locustfile}: locustfile not found")
        self.out.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "EH_REQUESTS_FILE": str(self.requests_file),
            "EH_ENTRYPOINTS": json.dumps(self.entrypoints),
            "EH_SHAPE": self.shape,
            "EH_PROBE_PERIOD": f"{self.probe_period_s:g}",
            "EH_PROBE_ZONES": json.dumps(self.probe_zones),
            "EH_PROBE_PERIODS": json.dumps(self.probe_periods),
            "EH_PROBE_BUDGET": str(self.budget_file),
            # the locustfile's round robin over every local worker's users (workers in the zones: one zone each)
            "EH_LOCUST_PROCESSES": str(self.processes if self.master is None else 1),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        cmd = locust_command(
            self.locustfile,
            next(iter(self.entrypoints.values())),
            self.users + self.probes,
            self.spawn_rate + self.probes,
            self.duration_s,
            self.processes,
            self.out / STATS_FILE_PREFIX,
            self.master,
            free_port() if self.master is None and self.processes > 1 else None,
        )
        self._started_wall = time.time()
        self._started_mono = time.monotonic()
        # the users' record exists from the traffic's start, empty until the first answer: a run stopped before it
        # is one with no traffic (availability fails it as such), not one whose record went missing
        self.requests_file.touch()
        self._write_users_file()
        with self.log_file.open("ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(cmd)}\n".encode())
            log.flush()
            if self._prestarted is not None:
                pre, self._prestarted = self._prestarted, None
                assert cmd[:3] == [sys.executable, "-m", "locust"], cmd
                self._proc = pre.go(cmd[3:], env)
                return self
            self._proc = subprocess.Popen(
                _dies_with_parent(with_default_stop_signals(cmd)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.out),
                env=env,
                start_new_session=True,
            )
        return self

    def _write_users_file(self) -> None:
        """`users.json`: what the users were configured with, for the verifier's bound on a zone's quiet spells
        (`harness.verify` `_users_gaps`): their think time and a request's timeouts. A locustfile other than the
        harness's own has a think time of its own, unknown here: `wait_s` null. Written atomically."""
        own = self.locustfile == DEFAULT_LOCUSTFILE
        doc = {
            "wait_s": list(self.think_s) if own else None,
            "wait_env": {**os.environ, **self.extra_env}.get(WAIT_ENV) if own else None,
            "connect_timeout_s": CONNECT_TIMEOUT_S,
            "answer_timeout_s": ANSWER_TIMEOUT_S,
            "locustfile": str(self.locustfile),
        }
        tmp = self.users_file.with_name(f".{USERS_FILE}.tmp")
        tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        tmp.replace(self.users_file)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None, stop_event: StopEvent | None = None) -> bool:
        """Block until locust exits (True), `timeout` passes or `stop_event` is set (False)."""
        proc = self._require()
        deadline = None if timeout is None else time.monotonic() + timeout
        while proc.poll() is None:
            if stop_event is not None and stop_event.is_set():
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        self._mark_ended()
        return True

    def stop(self, timeout: float = 15.0) -> TrafficResult:
        """Stop locust if still running (SIGTERM, then SIGKILL) and count the records."""
        with self._lock:
            if self.result is not None:
                return self.result
            proc = self._require()
            if proc.poll() is None:
                self._stopped_early = True
                self._terminate(proc, timeout)
            self._reap_group(proc.pid)
            self._mark_ended()
            self.result = self._summarise(proc.returncode)
            return self.result

    def _terminate(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """SIGTERM lets locust stop its users and write its stats (module docstring); SIGKILL only if it hangs."""
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _reap_group(pgid: int, grace_s: float = 3.0) -> None:
        """Kill workers left behind by a master that died (the group is ours alone: new session)."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def _mark_ended(self) -> None:
        if self._ended_mono is None:
            self._ended_mono = time.monotonic()

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise TrafficError("traffic: runner not started")
        return self._proc

    def _summarise(self, returncode: int | None) -> TrafficResult:
        ended = self._ended_mono if self._ended_mono is not None else time.monotonic()
        total, failures, rps, per_zone = summarise_requests(self.requests_file, since=self._started_wall)
        if total == 0 and not self._stopped_early:
            # A full run with not even a failed request means locust never ran users (bad
            # locustfile or arguments); an unreachable shop would still record failures.
            raise TrafficError(
                f"traffic: locust exited with code {returncode}; see {self.log_file}:\n{_tail(self.log_file)}"
            )
        return TrafficResult(
            requests=total,
            failures=failures,
            rps=rps,
            duration_s=ended - self._started_mono,
            returncode=returncode,
            stopped_early=self._stopped_early,
            requests_file=self.requests_file,
            log_file=self.log_file,
            stats_file=self.stats_file,
            per_zone=per_zone,
        )

    # -- context manager ----------------------------------------------------------
    def __enter__(self) -> TrafficRunner:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None:
            self.stop()


def run_traffic(
    entrypoints: dict[str, str],
    out: Path,
    users: int,
    spawn_rate: float,
    duration_s: float,
    shape: str = "steady",
    processes: int = 1,
    locustfile: Path | None = None,
    stop_event: StopEvent | None = None,
    extra_env: dict[str, str] | None = None,
    probe_period_s: float | None = DEFAULT_PROBE_PERIOD_S,
    probe_zones: list[str] | None = None,
    probe_periods: Mapping[str, float] | None = None,
) -> TrafficResult:
    """Drive users at `entrypoints` ({zone: base_url}) for `duration_s`; records go to `out`/requests.jsonl.

    `out` is the run directory. Returns when locust finishes on its own, when
    `stop_event` is set (result has ``stopped_early``), or after
    ``duration_s + START_GRACE_S`` at the latest (a hung locust never hangs the
    harness). On KeyboardInterrupt locust is stopped cleanly and the interrupt
    re-raised.
    """
    runner = TrafficRunner(
        entrypoints,
        out,
        users,
        spawn_rate,
        duration_s,
        shape,
        processes,
        locustfile,
        extra_env,
        probe_period_s,
        probe_zones,
        probe_periods=probe_periods,
    )
    runner.start()
    try:
        runner.wait(timeout=duration_s + START_GRACE_S, stop_event=stop_event)
    finally:
        result = runner.stop()
    return result


def summarise_requests(path: Path, since: float = 0.0) -> tuple[int, int, float, dict[str, ZoneCounts]]:
    """(requests, failures, rps, per-zone counts) of the records in `path` with ts >= `since`.

    DuckDB reads the file because a long run holds millions of lines; a torn
    last line (locust killed mid-write) is skipped rather than failing the run.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return 0, 0, 0.0, {}
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(
            """
            SELECT zone, count(*), count(*) FILTER (WHERE NOT coalesce(ok, false)),
                   min(ts), max(ts + coalesce(latency_ms, 0) / 1000.0)
            FROM read_json(?, format='newline_delimited', ignore_errors=true,
                columns={'ts': 'DOUBLE', 'zone': 'VARCHAR', 'ok': 'BOOLEAN', 'latency_ms': 'DOUBLE'})
            WHERE ts IS NOT NULL AND ts >= ?
            GROUP BY zone ORDER BY zone
            """,
            [str(path), since],
        ).fetchall()
    finally:
        con.close()
    per_zone = {str(z): ZoneCounts(int(n), int(f)) for z, n, f, _, _ in rows}
    total = sum(c.requests for c in per_zone.values())
    failures = sum(c.failures for c in per_zone.values())
    rps = 0.0
    if rows:
        first, last = min(r[3] for r in rows), max(r[4] for r in rows)
        if last > first:
            rps = total / (last - first)
    return total, failures, rps, per_zone


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
