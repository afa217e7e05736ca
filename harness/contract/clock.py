"""The runner's clock against the nodes' clocks: the record (`clock.jsonl`) and the one reading of it.

Why: every record the harness writes itself (the chaos timeline, the inventory's watch events, the user
requests) is stamped by the clock of the machine the harness runs on (the *runner*), while a hop's time is
Envoy's START_TIME, stamped by the clock of the node its sidecar runs on. The verifier sets the two against
each other to the millisecond (a hop in a fault window or not, failover = first Region hop - inject). Where
runner and nodes share one kernel clock (local, kind) that is sound as it stands; where they do not (a CI
runner or a laptop against EKS) an offset of tens of milliseconds silently moves hops across an inject.

So on such a backend the harness measures the offset, per zone, as NTP does with one exchange: a probe
request with a unique marker (`?eh-clock=<id>` on `/api`, which the frontend's nginx passes on unchanged to
its sidecar's public-api upstream) is sent through the zone's entry point at runner time `sent` and answered
at `received`; each sidecar that handled it logs it (its `path`) with its node's START_TIME `logged` and its
DURATION `d` (start to last byte out). The request reached the sidecar after it was sent, and the answer
left it before it was received, so ``offset = node clock - runner clock`` lies in
``[logged + d - received, logged + 1 ms - sent]`` (both fields are whole milliseconds, truncated): the
round trip between the runner and the sidecar, not what the mesh did meanwhile (public-api, product-api,
postgres over the service link), is what widens it. The probes of a batch narrow it to the intersection of
their intervals; a batch at the start and one at the end of the run
(after the traffic) bound the drift in between: the zone's offset during the run lies in the hull of the two.
Hops are corrected by the middle of that hull (`ZoneClock.offset`), and `ZoneClock.uncertainty`, half its
width, is the bound on what remains. A zone whose offset is not bounded within `CLOCK_TOLERANCE_S` (no probe
found in its sidecars' logs in a batch, probes that contradict each other, a hull too wide) leaves every
comparison of its hops with the runner's records unverified: the verdict fails it (coverage).

`clock.jsonl` lines (CONTRACTS §4):
- ``{"ts", "event": "clock", "runner_clock": "separate", "why"[, "requests_clock": "zones"]}``: written
  before the first probe by a backend whose nodes keep their own clocks; a run without this line (no file:
  local, kind, older runs) shares the runner's clock and nothing is corrected or required.
  ``requests_clock: zones``: the user requests were stamped by locust workers in each entry zone's pods
  (`--workers-in-zone`), on that zone's nodes' clocks: they are corrected by the zone's offset as hops are;
- ``{"ts", "event": "sent", "batch": "start"|"end", "zone", "probe", "sent", "received", "status", "error"}``:
  one per probe request (`received` null when no answer came: then it bounds nothing);
- ``{"ts", "event": "logged", "batch", "probe", "pod", "zone", "node", "logged", "start_time", "duration_ms"}``:
  one per access-log line found carrying the probe's marker (`zone`/`node`: the logging pod's, from the
  inventory; `start_time`: as Envoy wrote it, `logged` the same in epoch seconds; `duration_ms`: its
  `duration`, 0 when absent, which only widens the interval).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.contract.rundir import CLOCK_FILE

PROBE_PARAM = "eh-clock"  # the query parameter that marks a clock probe: /api?eh-clock=<id>
BATCHES = ("start", "end")
RUNNER_CLOCK_SHARED = "shared"  # run.json `runner_clock`: the nodes stamp with this machine's clock (local, kind)
RUNNER_CLOCK_SEPARATE = "separate"  # ... the nodes keep their own clocks (existing/EKS): clock.jsonl is required
RUNNER_CLOCKS = (RUNNER_CLOCK_SHARED, RUNNER_CLOCK_SEPARATE)
START_TIME_RESOLUTION_S = 0.001  # Envoy's START_TIME: whole milliseconds, truncated
CLOCK_TOLERANCE_S = 0.05
"""The widest offset uncertainty (half the bounding interval) a verdict accepts: 50 ms.

What the verdict resolves in time is a failover or recovery instant, fixed by the zone probes' records to
within their gap (30-45 ms, `bench/stability.py` holds every resolution to 50 ms); a clock known to within
the same 50 ms keeps those figures of the order of their own resolution and two orders below the SLOs they
are judged by (`maxFailoverS`, seconds), and far inside the inventory's 1 s IP slack. Hops are corrected by
the middle of the interval, so a symmetric path leaves much less than the bound. Wider than this (a runner
far from the zones, a congested path), which hops fell before or after an inject is no longer known to the
precision the verdict states it with: unverified."""


@dataclass(frozen=True)
class ZoneClock:
    """One zone's nodes' clock against the runner's: ``offset = node - runner`` lies in [lo, hi]."""

    zone: str
    lo: float | None = None
    hi: float | None = None
    lines: int = 0  # access-log lines that bounded it
    nodes: tuple[str, ...] = ()
    drift: float | None = None  # middle of the end batch's interval minus the start batch's
    problem: str | None = None  # why the offset is not bounded (then lo/hi may be None)

    @property
    def offset(self) -> float | None:
        """The correction applied to the zone's hops (the middle of [lo, hi])."""
        return None if self.lo is None or self.hi is None or self.hi < self.lo else (self.lo + self.hi) / 2

    @property
    def uncertainty(self) -> float | None:
        """How far the true offset may be from `offset` (half the interval's width)."""
        return None if self.offset is None else (self.hi - self.lo) / 2  # type: ignore[operator]

    @property
    def bounded(self) -> bool:
        """Known well enough for the verdict: measured, consistent, within `CLOCK_TOLERANCE_S`."""
        u = self.uncertainty
        return self.problem is None and u is not None and u <= CLOCK_TOLERANCE_S

    def text(self) -> str:
        if self.offset is None or self.uncertainty is None:
            return f"{self.zone}: {self.problem or 'not measured'}"
        drift = f", drift {self.drift * 1000:+.1f} ms over the run" if self.drift is not None else ""
        nodes = f" (nodes {', '.join(self.nodes)})" if self.nodes else ""
        head = (f"{self.zone}: nodes {self.offset * 1000:+.1f} ms ± {self.uncertainty * 1000:.1f} ms from the runner"
                f"{nodes}, {self.lines} probe lines{drift}")  # fmt: skip
        return f"{head}: {self.problem}" if self.problem else head


@dataclass(frozen=True)
class RunClock:
    """What `clock.jsonl` says: whether the nodes keep their own clocks, and each measured zone's offset."""

    separate: bool
    why: str = ""
    zones: Mapping[str, ZoneClock] | None = None
    probes_sent: int = 0
    probes_answered: int = 0
    corrupt_lines: tuple[int, ...] = ()  # 1-based numbers of clock.jsonl lines that are not JSON objects
    requests_in_zones: bool = False  # requests.jsonl stamped in the entry zones' pods (their nodes' clocks)
    # run.json said the nodes keep their own clocks but clock.jsonl is missing or records nothing: no zone was
    # measured, and which clock the requests were stamped by is not known either (`record_lost`)
    record_missing: bool = False

    def zone(self, zone: str) -> ZoneClock:
        """The zone's clock, or an unmeasured one saying why."""
        found = (self.zones or {}).get(zone)
        if found is not None:
            return found
        return ZoneClock(zone, problem="no probe through any entry point was found in the access log of a sidecar "
                                       "in this zone")  # fmt: skip

    def offsets(self) -> dict[str, float]:
        """zone -> correction (seconds to subtract from its hops' START_TIME) for every zone with an offset."""
        return {z: c.offset for z, c in (self.zones or {}).items() if c.offset is not None}


def record_lost(why: str) -> RunClock:
    """The clock of a run whose run.json says its nodes keep their own clocks but whose `clock.jsonl` is lost.

    Why: clock.jsonl is the only other record of separate clocks, so without run.json's word a run whose file
    was lost (not copied with the artifacts, deleted, never written because the probes' step died) read as one
    clock: its hops were judged against the runner's faults uncorrected, and it could pass. A separate clock
    with no zone measured makes every comparison of its hops unverified (coverage), as a zone without probes is.
    """
    return RunClock(True, why, {}, record_missing=True)


def read_records(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON objects of `clock.jsonl`, and the numbers of the lines that are not one.

    A corrupt line bounds nothing (it is left out, which can only widen a zone's interval or leave it
    unmeasured, never narrow it); its number is handed on so the verdict names it.
    """
    out: list[dict[str, Any]] = []
    bad: list[int] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out, bad
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad.append(i)
    return out, bad


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def read_clock(run_dir: Path) -> RunClock | None:
    """The run's clock record; None without one (the nodes share the runner's clock: nothing to correct)."""
    path = Path(run_dir) / CLOCK_FILE
    if not path.is_file():
        return None
    records, bad = read_records(path)
    return evaluate(records, bad)


def evaluate(records: Iterable[Mapping[str, Any]], corrupt_lines: Iterable[int] = ()) -> RunClock | None:
    """Each zone's offset interval from the `sent` and `logged` records (module docstring).

    None when nothing was recorded (one clock). Only a backend whose nodes keep their own clocks writes the
    file, so records without a readable declaration (its line torn) still are such a run's: its hops are
    never taken as on the runner's clock because a line was lost.
    """
    recs = list(records)
    corrupt = tuple(corrupt_lines)
    decl = [r for r in recs if r.get("event") == "clock"]
    if (not recs and not corrupt) or (decl and not any(r.get("runner_clock") == "separate" for r in decl)):
        return None
    why = str(next((r.get("why") for r in decl if r.get("why")), "") or "")
    requests_in_zones = any(r.get("requests_clock") == "zones" for r in decl)
    sent: dict[str, tuple[float, float]] = {}
    n_sent = 0
    for r in recs:
        if r.get("event") != "sent":
            continue
        n_sent += 1
        t0, t1 = _num(r.get("sent")), _num(r.get("received"))
        if t0 is not None and t1 is not None and t1 >= t0 and isinstance(r.get("probe"), str):
            sent[str(r["probe"])] = (t0, t1)
    # per zone and batch: the intersection of the probe lines' intervals
    per: dict[tuple[str, str], list[float]] = {}  # (zone, batch) -> [lo, hi]
    lines: dict[str, int] = {}
    nodes: dict[str, set[str]] = {}
    for r in recs:
        if r.get("event") != "logged":
            continue
        probe, zone, batch, at = r.get("probe"), r.get("zone"), r.get("batch"), _num(r.get("logged"))
        if not isinstance(zone, str) or batch not in BATCHES or at is None or str(probe) not in sent:
            continue
        t0, t1 = sent[str(probe)]
        took = max(0.0, _num(r.get("duration_ms")) or 0.0) / 1000.0
        lo, hi = at + took - t1, at + START_TIME_RESOLUTION_S - t0
        cur = per.setdefault((zone, str(batch)), [-math.inf, math.inf])
        cur[0], cur[1] = max(cur[0], lo), min(cur[1], hi)
        lines[zone] = lines.get(zone, 0) + 1
        if isinstance(r.get("node"), str):
            nodes.setdefault(zone, set()).add(str(r["node"]))
    zones: dict[str, ZoneClock] = {}
    for zone in sorted({z for z, _b in per}):
        batches = {b: per[(zone, b)] for b in BATCHES if (zone, b) in per}
        problem = None
        contradicting = [b for b, (lo, hi) in batches.items() if lo > hi]
        if contradicting:
            b = contradicting[0]
            lo, hi = batches[b]
            problem = (
                f"its {b} probes contradict each other (the latest lower bound {lo * 1000:+.1f} ms is above the "
                f"earliest upper bound {hi * 1000:+.1f} ms): its nodes' clocks differ or stepped"
            )
            zones[zone] = ZoneClock(zone, lines=lines[zone], nodes=tuple(sorted(nodes.get(zone, ()))), problem=problem)
            continue
        missing = [b for b in BATCHES if b not in batches]
        if missing:
            problem = (f"no probe of the {' and '.join(missing)} batch was found in its sidecars' access logs: "
                       "the drift over the run is not bounded")  # fmt: skip
        lo = min(v[0] for v in batches.values())
        hi = max(v[1] for v in batches.values())
        drift = None
        if len(batches) == 2:
            drift = sum(batches["end"]) / 2 - sum(batches["start"]) / 2
        zc = ZoneClock(zone, lo, hi, lines[zone], tuple(sorted(nodes.get(zone, ()))), drift, problem)
        if problem is None and not zc.bounded:
            zc = ZoneClock(zone, lo, hi, lines[zone], zc.nodes, drift,
                           f"bounded only to ± {(hi - lo) / 2 * 1000:.1f} ms, wider than the "
                           f"{CLOCK_TOLERANCE_S * 1000:g} ms the verdict resolves")  # fmt: skip
        zones[zone] = zc
    return RunClock(True, why, zones, n_sent, len(sent), corrupt, requests_in_zones)
