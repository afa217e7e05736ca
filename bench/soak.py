"""Soak: traffic and faults on the local backend for a set time; does the harness itself stay flat?

    python bench/soak.py                       # 30 minutes, 500 requests/s
    python bench/soak.py --minutes 10 --rate 500 --fault-every 60

A game day or a nightly runs for hours; a harness whose own memory or open
files grow with the run dies (or slows its record-keeping) before the
cluster does. This brings up the default topology on the local backend
(holding the machine's local-backend lock), drives locust at `--rate`
requests/s through every zone's entry point, runs a chaos experiment every
`--fault-every` seconds (a pod kill, a node kill, a zone outage, in turn),
and samples every `--sample-s` seconds:

- the resident memory (RSS) of every *harness* process: this driver (access-
  log collector, inventory), locust, the chaos processes, the local backend's
  daemon and its service-link relay (strictly counted: they are this
  project's code); the emulated cluster (Envoy sidecars, the HashiCups apps,
  postgres) is shown apart: it is the system under test, not the harness;
- their open files (`/proc/PID/fd`);
- records written per second (user requests + sidecar access-log lines) and
  the collector's backlog (bytes the sidecars wrote that are not yet in the
  run directory): the records it kept up with.

It prints start, after warm-up, peak and end side by side, and the goals:
harness memory flat (the long-lived processes at the end within 10% of their
level after warm-up; a chaos process lives for one experiment), at most
300 MB in total at the peak (chaos included), open files of the recording
side (driver, locust) flat; exit 1 when one is missed. Needs root (network namespaces).
Not part of `make bench` (it takes its duration); `make soak MINUTES=10`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.testing.machine import machine_lock  # noqa: E402

GOAL_FLAT = 0.10  # end within 10% of the level after warm-up
GOAL_TOTAL_MB = 300.0
FAULTS = ["kill-product-api-lax.json", "node-kill.json", "zone-outage.json"]
CLUSTER_ROLES = ("envoy", "app", "postgres")
TRANSIENT = "chaos"


# -- processes -------------------------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p.name))
    return kids


def descendants(root: int) -> list[int]:
    kids = _children()
    out, todo = [root], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def role(pid: int, driver: int) -> str:
    """Which part of the run a process is: harness (driver, locust, chaos, daemon, helper) or cluster."""
    if pid == driver:
        return "driver"
    try:
        cmd = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode(errors="replace")
    except OSError:
        return "gone"
    if "envoy" in cmd.split(" ", 1)[0] or " envoy " in f" {cmd} " or "/envoy " in cmd:
        return "envoy"
    if "postgres" in cmd:
        return "postgres"
    if "harness.backends.local.apps" in cmd:
        return "app"
    if "locust" in cmd:
        return "locust"
    if "chaos" in cmd:
        return "chaos"
    if "harness.backends.local.daemon" in cmd:
        return "daemon"
    if "linkrelay" in cmd:
        return "linkrelay"  # the local backend's service-link emulation: counted as harness, strictly
    return "other"


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_files(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Sample:
    t: float  # seconds since traffic started
    rss_mb: dict[str, float]  # role -> MB
    fds: dict[str, int]  # role -> open files
    requests: int
    accesslog_lines: int
    backlog_bytes: int

    @property
    def harness_mb(self) -> float:
        return sum(v for k, v in self.rss_mb.items() if k not in CLUSTER_ROLES)

    @property
    def cluster_mb(self) -> float:
        return sum(v for k, v in self.rss_mb.items() if k in CLUSTER_ROLES)

    @property
    def harness_fds(self) -> int:
        return sum(v for k, v in self.fds.items() if k not in CLUSTER_ROLES)

    @property
    def resident_mb(self) -> float:
        """The long-lived harness processes only: a chaos process lives for one experiment, so a sample that
        happens to catch one says nothing about growth."""
        return sum(v for k, v in self.rss_mb.items() if k not in CLUSTER_ROLES and k != TRANSIENT)


class LineCounter:
    """Lines of growing files, counted incrementally (a soak writes gigabytes: never re-read a file)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, int]] = {}  # path -> (bytes read, lines)

    def count(self, paths: list[Path]) -> int:
        total = 0
        for p in paths:
            done, lines = self._seen.get(p, (0, 0))
            with contextlib.suppress(OSError), p.open("rb") as fh:
                fh.seek(done)
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):  # type: ignore[misc]
                    lines += chunk.count(b"\n")
                    done += len(chunk)
            self._seen[p] = (done, lines)
            total += lines
        return total


def _bytes(paths: list[Path]) -> dict[str, int]:
    out = {}
    for p in paths:
        with contextlib.suppress(OSError):
            out[p.name] = p.stat().st_size
    return out


@dataclass
class Sampler:
    driver: int
    run_dir: Path
    source_dir: Path  # where the sidecars write their access logs
    every_s: float
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lines: LineCounter = field(default_factory=LineCounter)

    def take(self) -> Sample:
        rss: dict[str, float] = {}
        fds: dict[str, int] = {}
        for pid in descendants(self.driver):
            r = role(pid, self.driver)
            if r == "gone":
                continue
            rss[r] = rss.get(r, 0.0) + rss_kb(pid) / 1024.0
            fds[r] = fds.get(r, 0) + open_files(pid)
        written = _bytes(sorted(self.source_dir.glob("*.jsonl")))
        kept = _bytes(sorted((self.run_dir / "accesslogs").glob("*.jsonl")))
        backlog = sum(max(0, n - kept.get(name, 0)) for name, n in written.items())
        acc = self._lines.count(sorted((self.run_dir / "accesslogs").glob("*.jsonl")))
        requests = self._lines.count([self.run_dir / "requests.jsonl"])
        s = Sample(time.monotonic() - self.t0, rss, fds, requests, acc, backlog)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            s = self.take()
            print(
                f"  t={s.t:6.0f}s  harness {s.harness_mb:6.1f} MB, {s.harness_fds:4d} files  "
                f"cluster {s.cluster_mb:6.1f} MB  requests {s.requests}  access-log lines {s.accesslog_lines}  "
                f"backlog {s.backlog_bytes / 1024:.0f} KiB",
                flush=True,
            )

    def start(self) -> None:
        self.take()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.take()


# -- the report --------------------------------------------------------------------------------------------------
def report(samples: list[Sample], warmup_s: float, minutes: float, rate: float) -> bool:
    start, end = samples[0], samples[-1]
    after = next((s for s in samples if s.t >= warmup_s), end)
    peak = max(samples, key=lambda s: s.harness_mb)
    roles = sorted({r for s in samples for r in s.rss_mb})
    print(f"\nsoak: {minutes:g} min at {rate:g} requests/s asked; {len(samples)} samples\n")
    cols = [("start", start), (f"after warm-up ({after.t:.0f} s)", after), (f"peak ({peak.t:.0f} s)", peak),
            (f"end ({end.t:.0f} s)", end)]  # fmt: skip
    print(f"{'RSS MB':22}" + "".join(f"{c:>24}" for c, _ in cols))
    for r in roles:
        kind = "cluster" if r in CLUSTER_ROLES else "harness"
        print(f"  {r + ' (' + kind + ')':20}" + "".join(f"{s.rss_mb.get(r, 0.0):24.1f}" for _, s in cols))
    print(f"  {'harness total':20}" + "".join(f"{s.harness_mb:24.1f}" for _, s in cols))
    print(f"  {'  long-lived':20}" + "".join(f"{s.resident_mb:24.1f}" for _, s in cols))
    print(f"  {'cluster total':20}" + "".join(f"{s.cluster_mb:24.1f}" for _, s in cols))
    print(f"{'open files':22}" + "".join(f"{c:>24}" for c, _ in cols))
    for r in roles:
        if r not in CLUSTER_ROLES:
            print(f"  {r:20}" + "".join(f"{s.fds.get(r, 0):24d}" for _, s in cols))
    print(f"  {'harness total':20}" + "".join(f"{s.harness_fds:24d}" for _, s in cols))
    peak_fds = max(s.harness_fds for s in samples)
    print(f"{'':22}peak open files {peak_fds}")
    span = max(end.t - start.t, 1e-9)
    req_rate = (end.requests - start.requests) / span
    acc_rate = (end.accesslog_lines - start.accesslog_lines) / span
    max_backlog = max(s.backlog_bytes for s in samples)
    print(
        f"\nrecords kept: {req_rate:.0f} requests/s + {acc_rate:.0f} access-log lines/s = {req_rate + acc_rate:.0f}/s; "
        f"collector backlog at the end {end.backlog_bytes / 1024:.0f} KiB (max {max_backlog / 1024:.0f} KiB)"
    )
    flat = end.resident_mb <= (1 + GOAL_FLAT) * after.resident_mb
    small = peak.harness_mb <= GOAL_TOTAL_MB
    # The recording side (driver: collector, inventory; locust): one descriptor per pod ever seen would end a
    # long game day. The local daemon's and relay's sockets follow the mesh's connection pools: printed above.
    rec, rec0 = (s.fds.get("driver", 0) + s.fds.get("locust", 0) for s in (end, after))
    fds_flat = rec <= (1 + GOAL_FLAT) * rec0 + 10
    print("\ngoal                                          measured                       ratio    result")
    print(
        f"harness memory flat (long-lived, end/warm-up) {end.resident_mb:6.1f} vs {after.resident_mb:6.1f} MB"
        f"          {end.resident_mb / max(after.resident_mb, 1e-9):6.2f}    {'PASS' if flat else 'FAIL'} (<= 1.10)"
    )
    print(
        f"harness memory <= {GOAL_TOTAL_MB:.0f} MB (all, peak)        {peak.harness_mb:6.1f} MB"
        f"                    {peak.harness_mb / GOAL_TOTAL_MB:6.2f}    {'PASS' if small else 'FAIL'} (<= 1.00)"
    )
    print(
        f"open files of driver+locust flat              {rec:6d} vs {rec0:6d}"
        f"             {rec / max(rec0, 1):6.2f}    {'PASS' if fds_flat else 'FAIL'} (<= 1.10, +10)"
    )
    print(
        f"request rate                                  {req_rate:6.0f}/s of {rate:g}/s asked"
        f"         {req_rate / rate:6.2f}"
    )
    return flat and small and fds_flat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long traffic and faults run (default 30)")
    ap.add_argument("--rate", type=float, default=500.0, help="requests/s asked of locust (default 500)")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--processes", type=int, default=1, help="locust processes (>1: a master and N workers)")
    ap.add_argument("--fault-every", type=float, default=60.0, help="seconds between chaos experiments (0: none)")
    ap.add_argument("--warmup-minutes", type=float, default=None, help="default: a tenth of the run, at most 3")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--cluster", default="soak")
    ap.add_argument("--topology", type=Path, default=REPO / "fixtures" / "topology.yaml")
    a = ap.parse_args(argv)
    if a.minutes <= 0 or a.rate <= 0 or a.users < 1 or a.processes < 1 or a.sample_s <= 0:
        ap.error("--minutes, --rate, --users, --processes and --sample-s must be positive")

    from harness.backends import BackendOptions
    from harness.backends.local import LocalBackend, requirements
    from harness.chaos import run_experiment
    from harness.e2e import recording
    from harness.render import render, write
    from harness.render.manifests import load
    from harness.run import new_run_dir
    from harness.topology import load_topology
    from harness.traffic import TrafficRunner

    ok, why = requirements()
    if not ok:
        print(f"soak: the local backend cannot run here: {why}", file=sys.stderr)
        return 2
    warmup_s = 60 * (a.warmup_minutes if a.warmup_minutes is not None else min(3.0, a.minutes / 10))
    run_dir = new_run_dir(REPO / "runs", "soak").resolve()
    write(render(load_topology(a.topology)), run_dir / "manifests")
    manifests = load(run_dir / "manifests")
    bopts = BackendOptions(name="local", cluster=a.cluster)
    print(f"soak: run directory {run_dir}", flush=True)
    with machine_lock():
        backend = LocalBackend(cluster=a.cluster)
        t_up = time.monotonic()
        backend.up(manifests)
        print(f"soak: cluster up in {time.monotonic() - t_up:.0f} s", flush=True)
        sampler = Sampler(os.getpid(), run_dir, backend.state_dir / "accesslogs", a.sample_s)
        faults = 0
        try:
            with recording(backend, run_dir):
                wait = max(0.0, a.users / a.rate)
                with TrafficRunner(backend.entrypoints(), run_dir, users=a.users, spawn_rate=a.users,
                                   duration_s=a.minutes * 60 + 120, processes=a.processes,
                                   extra_env={"EH_WAIT": f"{wait:g}"}):  # fmt: skip
                    sampler.t0 = time.monotonic()
                    sampler.start()
                    end = sampler.t0 + a.minutes * 60
                    next_fault = sampler.t0 + (a.fault_every if a.fault_every > 0 else float("inf"))
                    while time.monotonic() < end:
                        if time.monotonic() >= next_fault:
                            exp = REPO / "experiments" / FAULTS[faults % len(FAULTS)]
                            res = run_experiment(exp, run_dir, bopts, topology=manifests.topology)
                            faults += 1
                            print(f"  fault {faults}: {exp.name} {res.status}", flush=True)
                            next_fault = time.monotonic() + a.fault_every
                        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
                    sampler.stop()
        finally:
            backend.down()
    print(f"soak: {faults} fault(s) injected and rolled back")
    return 0 if report(sampler.samples, warmup_s, a.minutes, a.rate) else 1


if __name__ == "__main__":
    sys.exit(main())
