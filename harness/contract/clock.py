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
their intervals (per node: each keeps its own clock); a batch at the start and one at the end of the run
(after the traffic) bound the drift in between: the node's offset during the run lies in the hull of the two.
Hops are corrected by the middle of their caller's node's hull (`RunClock.nodes`; the zone's hull of its
nodes, `ZoneClock.offset`, for a pod whose node is not known), and half its width is the bound on what
remains. A zone whose offset is not bounded (no probe found in its sidecars' logs in a batch, probes that
contradict each other, batches that show the clock moved more than `CLOCK_TOLERANCE_S`, a hull wider than
`CLOCK_CARRY_LIMIT_S`) leaves every comparison of its hops with the runner's records unverified: the verdict
fails it (coverage). A bound between the two (a runner far from the zones) is carried by the rules.

`clock.jsonl` lines (CONTRACTS §4):
- ``{"ts", "event": "clock", "runner_clock": "separate", "why"[, "requests_clock": "zones"]}``: written
  before the first probe by a backend whose nodes keep their own clocks; a run without this line (no file:
  local, kind, older runs) shares the runner's clock and nothing is corrected or required.
  ``requests_clock: zones``: the user requests were stamped by locust workers in each entry zone's pods
  (`--workers-in-zone`), each on its worker's node's clock (requests.jsonl's `node`): each is corrected by
  that node's offset as a hop is by its caller's (the zone's for a node not measured, which coverage holds
  unverified);
- ``{"ts", "event": "sent", "batch": "start"|"end", "zone", "probe", "sent", "received", "status", "error"}``:
  one per probe request (`received` null when no answer came: then it bounds nothing);
- ``{"ts", "event": "logged", "batch", "probe", "pod", "zone", "node", "logged", "start_time", "duration_ms"}``:
  one per access-log line found carrying the probe's marker (`zone`/`node`: the logging pod's, from the
  inventory; `start_time`: as Envoy wrote it, `logged` the same in epoch seconds; `duration_ms`: its
  `duration`, 0 when absent, which only widens the interval).
- ``{"ts", "event": "pair", "batch", "from_node", "from_zone", "to_node", "to_zone", "lo", "hi", "pairs"}``:
  the clock of node `to_node` against `from_node`'s, from the requests one's sidecars sent the other's
  (`node_offsets`): ``offset(to) - offset(from)`` lies in [lo, hi], the intersection of `pairs` pairs' bounds
  at that end (`batch`: the requests of the run's first or last minute, `harness.traffic.clock.find_pairs`);
  ``lo > hi`` when they contradict each other.

Nodes. The probes measure the nodes whose sidecars logged them (`ZoneClock.nodes`); a hop's START_TIME is its
caller's *node* clock, and a zone's other nodes may be any distance off. Those are measured against a probed
node by the requests between them: the caller's sidecar logs the outbound request at its node time
[Sa, Sa + da], the serving sidecar the inbound one at its node time [Sb, Sb + db], matched by X-Request-Id
(Envoy makes one on the outbound listener and keeps it on the inbound one: Consul's listeners set no
`use_remote_address`, so no request is an edge request whose id is replaced). The served interval lies
within the caller's on the true time line, so ``offset(B) - offset(A)`` lies in
``[Sb + db - Sa - da - 2 ms, Sb - Sa + 1 ms]`` (whole ms, truncated, on both sides). A node's interval is
its neighbour's plus the pair's, intersected over every measured neighbour (`RunClock.nodes`); a node with
no chain of pairs to a probed node stays unmeasured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.contract.inventory import SLACK_S as INVENTORY_SLACK_S
from harness.contract.rundir import CLOCK_FILE

PROBE_PARAM = "eh-clock"  # the query parameter that marks a clock probe: /api?eh-clock=<id>
BATCHES = ("start", "end")
RUNNER_CLOCK_SHARED = "shared"  # run.json `runner_clock`: the nodes stamp with this machine's clock (local, kind)
RUNNER_CLOCK_SEPARATE = "separate"  # ... the nodes keep their own clocks (existing/EKS): clock.jsonl is required
RUNNER_CLOCKS = (RUNNER_CLOCK_SHARED, RUNNER_CLOCK_SEPARATE)
START_TIME_RESOLUTION_S = 0.001  # Envoy's START_TIME: whole milliseconds, truncated
CLOCK_TOLERANCE_S = 0.05
"""The offset uncertainty (half the bounding interval) below which the verdict says nothing of it: 50 ms.

What the verdict resolves in time is a failover or recovery instant, fixed by the zone probes' records to
within their gap (30-45 ms, `bench/stability.py` holds every resolution to 50 ms); a clock known to within
the same 50 ms keeps those figures of the order of their own resolution and two orders below the SLOs they
are judged by (`maxFailoverS`, seconds). Hops are corrected by the middle of the interval, so a symmetric
path leaves much less than the bound. A wider bound (a CI runner 100+ ms round trip from a Local Zone) is
no longer a fixed verdict of its own: every rule that sets the zone's hops against the runner's records
carries the zone's measured bound (`RunClock.bound`: failover and recovery +- it against their SLOs, the
locality and failover windows, the gap and tie slacks widened by it), and a rule it stops from deciding (a
failover whose +- reaches past maxFailoverS) says unverified itself (docs/CONTRACTS.md, clock.jsonl). Still
the tolerance of a clock that *moved*: batches that exclude each other by more than it (a step, a drift)."""

CLOCK_CARRY_LIMIT_S = INVENTORY_SLACK_S
"""The widest bound the rules carry: the inventory's IP slack (`harness.contract.inventory.SLACK_S`). A hop's
`upstream_host` is attributed to the pod that held the address at the hop's time, or one within that slack;
beyond it, which pod served a hop is no longer known on the runner's clock, and every rule reads that: the
zone's clock is unverified (coverage)."""


class _Interval:
    """A clock offset known to lie in [lo, hi] (a zone's or a node's): its middle and half-width."""

    lo: float | None
    hi: float | None

    @property
    def offset(self) -> float | None:
        """The correction applied to the hops stamped by this clock (the middle of [lo, hi])."""
        return None if self.lo is None or self.hi is None or self.hi < self.lo else (self.lo + self.hi) / 2

    @property
    def uncertainty(self) -> float | None:
        """How far the true offset may be from `offset` (half the interval's width)."""
        return None if self.offset is None or self.lo is None or self.hi is None else (self.hi - self.lo) / 2


@dataclass(frozen=True)
class ZoneClock(_Interval):
    """One zone's nodes' clock against the runner's: ``offset = node - runner`` lies in [lo, hi]."""

    zone: str
    lo: float | None = None
    hi: float | None = None
    lines: int = 0  # access-log lines that bounded it
    nodes: tuple[str, ...] = ()
    drift: float | None = None  # middle of the end batch's interval minus the start batch's
    problem: str | None = None  # why the offset is not bounded (then lo/hi may be None)
    # each probed node's interval width: [lo, hi] is their hull, and each node's hops are corrected by its own
    # (`RunClock.nodes`); empty: one interval (the hull's width is the bound)
    widths: tuple[float, ...] = ()

    @property
    def bounded(self) -> bool:
        """Known well enough for the verdict: measured, consistent, within `CLOCK_CARRY_LIMIT_S` (the rules carry
        a bound wider than `CLOCK_TOLERANCE_S`: `within_tolerance` says whether they must)."""
        u = self.bound
        return self.problem is None and u is not None and u <= CLOCK_CARRY_LIMIT_S

    @property
    def bound(self) -> float | None:
        """How far a corrected hop of this zone may lie from the truth: the widest of its probed nodes' half-widths
        (each node's hops are corrected by its own interval), or the interval's half-width."""
        u = self.uncertainty
        if self.widths and u is not None:
            u = max(self.widths) / 2
        return u

    @property
    def within_tolerance(self) -> bool:
        """Bounded within `CLOCK_TOLERANCE_S`: nothing the rules carry is worth a word."""
        return self.bounded and self.bound is not None and self.bound <= CLOCK_TOLERANCE_S

    def text(self) -> str:
        if self.offset is None or self.uncertainty is None:
            return f"{self.zone}: {self.problem or 'not measured'}"
        if len(self.widths) > 1:
            head = (f"{self.zone}: nodes {self.lo * 1000:+.1f} ms to {self.hi * 1000:+.1f} ms from the runner "  # type: ignore[operator]
                    f"(nodes {', '.join(self.nodes)}, each measured to ± {max(self.widths) / 2 * 1000:.1f} ms or "
                    f"better), {self.lines} probe lines")  # fmt: skip
            return f"{head}: {self.problem}" if self.problem else head
        drift = f", drift {self.drift * 1000:+.1f} ms over the run" if self.drift is not None else ""
        nodes = f" (nodes {', '.join(self.nodes)})" if self.nodes else ""
        head = (f"{self.zone}: nodes {self.offset * 1000:+.1f} ms ± {self.uncertainty * 1000:.1f} ms from the runner"
                f"{nodes}, {self.lines} probe lines{drift}")  # fmt: skip
        return f"{head}: {self.problem}" if self.problem else head


@dataclass(frozen=True)
class NodeClock(_Interval):
    """One node's clock against the runner's, measured through pairs of requests from a measured node."""

    node: str
    zone: str | None
    lo: float | None = None
    hi: float | None = None
    via: tuple[str, ...] = ()  # the measured nodes it was bounded against
    pairs: int = 0
    problem: str | None = None
    lines: int = 0  # probe lines that bounded it (a probed node: no `via`)

    @property
    def bounded(self) -> bool:
        """Measured, consistent, within `CLOCK_CARRY_LIMIT_S` (as `ZoneClock.bounded`)."""
        u = self.uncertainty
        return self.problem is None and u is not None and u <= CLOCK_CARRY_LIMIT_S

    def text(self) -> str:
        if self.offset is None or self.uncertainty is None:
            return f"node {self.node}: {self.problem or 'not measured'}"
        how = (f"through {self.pairs} request pairs with node(s) {', '.join(self.via)}" if self.via
               else f"by {self.lines} probe lines")  # fmt: skip
        head = (
            f"node {self.node}: {self.offset * 1000:+.1f} ms ± {self.uncertainty * 1000:.1f} ms from the runner {how}"
        )
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
    # nodes no probe line came from, measured (or not: `problem`) through request pairs with measured nodes
    nodes: Mapping[str, NodeClock] | None = None

    def node_offsets(self) -> dict[str, float]:
        """node -> correction for every node measured, by the probes or through request pairs."""
        return {n: c.offset for n, c in (self.nodes or {}).items() if c.offset is not None and c.problem is None}

    def measured_nodes(self, zone: str) -> set[str]:
        """The nodes of `zone` whose clock is bounded: probed (zone bounded) or bounded through pairs."""
        return {n for n, c in (self.nodes or {}).items() if c.zone == zone and c.bounded}

    def bound(self, zone: str) -> float | None:
        """The widest uncertainty of the zone's measured clocks (its probed nodes' and its paired nodes')."""
        known = [c.uncertainty for c in (self.nodes or {}).values()
                 if c.zone == zone and c.problem is None and c.uncertainty is not None]  # fmt: skip
        return max(known) if known else self.zone(zone).uncertainty

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
    # per zone, node and batch: the intersection of the probe lines' intervals (each node keeps its own clock:
    # intersecting two nodes' lines would make two healthy clocks a few ms apart contradict each other)
    per: dict[tuple[str, str], dict[str, list[float]]] = {}  # (zone, node) -> batch -> [lo, hi]
    lines: dict[tuple[str, str], int] = {}
    for r in recs:
        if r.get("event") != "logged":
            continue
        probe, zone, batch, at = r.get("probe"), r.get("zone"), r.get("batch"), _num(r.get("logged"))
        if not isinstance(zone, str) or batch not in BATCHES or at is None or str(probe) not in sent:
            continue
        node = str(r["node"]) if isinstance(r.get("node"), str) and r.get("node") else "?"
        t0, t1 = sent[str(probe)]
        took = max(0.0, _num(r.get("duration_ms")) or 0.0) / 1000.0
        lo, hi = at + took - t1, at + START_TIME_RESOLUTION_S - t0
        cur = per.setdefault((zone, node), {}).setdefault(str(batch), [-math.inf, math.inf])
        cur[0], cur[1] = max(cur[0], lo), min(cur[1], hi)
        lines[(zone, node)] = lines.get((zone, node), 0) + 1
    probed: dict[str, NodeClock] = {}
    zones: dict[str, ZoneClock] = {}
    for zone in sorted({z for z, _n in per}):
        units = sorted(n for z, n in per if z == zone)
        found = [(n, _batch_bound(per[(zone, n)])) for n in units]
        for n, (nlo, nhi, _drift, nproblem) in found:
            if n != "?":
                probed[n] = NodeClock(n, zone, nlo, nhi, (), 0, nproblem, lines[(zone, n)])
        named = tuple(n for n in units if n != "?")
        count = sum(lines[(zone, n)] for n in units)
        problem = next((f"node {n}: {p}" if len(units) > 1 else p for n, (_l, _h, _d, p) in found if p), None)
        los = [lo for _n, (lo, _h, _d, _p) in found if lo is not None]
        his = [hi for _n, (_l, hi, _d, _p) in found if hi is not None]
        if not los or not his:
            zones[zone] = ZoneClock(zone, lines=count, nodes=named, problem=problem)
            continue
        drifts = [d for _n, (_l, _h, d, _p) in found if d is not None]
        drift = max(drifts, key=abs) if drifts else None
        widths = tuple(hi - lo for _n, (lo, hi, _d, _p) in found if lo is not None and hi is not None)
        zones[zone] = ZoneClock(zone, min(los), max(his), count, named, drift, problem, widths)
    paired = node_clocks(recs, probed)
    return RunClock(True, why, zones, n_sent, len(sent), corrupt, requests_in_zones, nodes={**probed, **paired})


def _batch_bound(batches: Mapping[str, list[float]]) -> tuple[float | None, float | None, float | None, str | None]:
    """(lo, hi, drift, problem) of one clock from its batches' intersections: their hull over the run."""
    contradicting = [b for b in BATCHES if b in batches and batches[b][0] > batches[b][1]]
    if contradicting:
        b = contradicting[0]
        lo, hi = batches[b]
        return (
            None,
            None,
            None,
            (
                f"its {b} probes contradict each other (the latest lower bound {lo * 1000:+.1f} ms is above the "
                f"earliest upper bound {hi * 1000:+.1f} ms): its clock stepped"
            ),
        )
    problem = None
    missing = [b for b in BATCHES if b not in batches]
    if missing:
        problem = (f"no probe of the {' and '.join(missing)} batch was found in its sidecars' access logs: "
                   "the drift over the run is not bounded")  # fmt: skip
    lo = min(v[0] for v in batches.values())
    hi = max(v[1] for v in batches.values())
    drift = sum(batches["end"]) / 2 - sum(batches["start"]) / 2 if len(batches) == 2 else None
    problem = problem or _moved(batches) or _too_wide(lo, hi)
    return lo, hi, drift, problem


def _moved(batches: Mapping[str, list[float]]) -> str | None:
    """Why a clock whose batches exclude each other by more than `CLOCK_TOLERANCE_S` is not carried, or None.

    Why: a wide hull is two things. Wide batches (a runner far from the zones: each probe's round trip is long)
    bound an offset that held still: every hop's truth lies within the half-width, which the rules carry. Tight
    batches far apart (chrony stepped the node, or it drifted) say the offset moved during the run, by at least
    their distance: the hops around the move are out of order against each other, which no bound on the
    runner's records puts right. Before the rules carried the bound, both were "too wide"; only the second
    still is unverified.
    """
    if any(b not in batches for b in BATCHES):
        return None
    (slo, shi), (elo, ehi) = batches["start"], batches["end"]
    moved = max(0.0, elo - shi, slo - ehi)
    if moved <= CLOCK_TOLERANCE_S:
        return None
    return (f"its start and end probes exclude each other: its offset moved at least {moved * 1000:.1f} ms during "
            f"the run (a step or a drift), more than the {CLOCK_TOLERANCE_S * 1000:g} ms the verdict lets a clock "
            "move")  # fmt: skip


def _too_wide(lo: float, hi: float) -> str | None:
    """Why an interval wider than the rules carry (`CLOCK_CARRY_LIMIT_S`) is not, or None."""
    if (hi - lo) / 2 <= CLOCK_CARRY_LIMIT_S:
        return None
    return (f"bounded only to ± {(hi - lo) / 2 * 1000:.1f} ms, wider than the {CLOCK_CARRY_LIMIT_S * 1000:g} ms "
            "within which a served address is attributed to its pod (the inventory's IP slack)")  # fmt: skip


def node_clocks(records: Iterable[Mapping[str, Any]], probed: Mapping[str, NodeClock]) -> dict[str, NodeClock]:
    """Each node no probe line came from, against the probed nodes, through the `pair` records (docstring).

    A pair's batch intervals are intersected (their bounds hold for the same offset difference within a half of
    the run), the two halves' hull is the difference over the run (drift, as for a zone's batches). A probed
    node (`probed`, bounded) has its own probes' interval; a node reached from measured ones has the intersection of
    what each says (neighbours measured earlier, breadth-first: a chain adds each link's width). Probed nodes
    keep their probes' interval. Contradicting pairs, or derivations that exclude each other, leave the node
    with a problem: unmeasured.
    """
    per: dict[tuple[str, str], dict[str, list[float]]] = {}  # (from, to) -> batch -> [lo, hi]
    count: dict[tuple[str, str], int] = {}
    zone_of: dict[str, str] = {}
    for r in records:
        if r.get("event") != "pair":
            continue
        a, b, lo, hi = r.get("from_node"), r.get("to_node"), _num(r.get("lo")), _num(r.get("hi"))
        if not isinstance(a, str) or not isinstance(b, str) or a == b or lo is None or hi is None:
            continue
        for node, zk in ((a, "from_zone"), (b, "to_zone")):
            if isinstance(r.get(zk), str):
                zone_of.setdefault(node, str(r[zk]))
        cur = per.setdefault((a, b), {}).setdefault(str(r.get("batch")), [-math.inf, math.inf])
        cur[0], cur[1] = max(cur[0], lo), min(cur[1], hi)
        count[(a, b)] = count.get((a, b), 0) + int(_num(r.get("pairs")) or 0)
    # node -> neighbour -> (difference neighbour - node interval, pairs, problem)
    edges: dict[str, dict[str, tuple[float, float, int, str | None]]] = {}
    for (a, b), batches in per.items():
        problem = None
        bad = [k for k, (lo, hi) in batches.items() if lo > hi]
        if bad:
            lo, hi = batches[bad[0]]
            problem = (f"the requests between nodes {a} and {b} contradict each other ({bad[0]} batch: "
                       f"{lo * 1000:+.1f} ms above {hi * 1000:+.1f} ms): a clock stepped")  # fmt: skip
        lo, hi = min(v[0] for v in batches.values()), max(v[1] for v in batches.values())
        if problem is None and (moved := _moved(batches)):
            problem = f"the requests between nodes {a} and {b}: {moved}"
        edges.setdefault(a, {})[b] = (lo, hi, count[(a, b)], problem)
        edges.setdefault(b, {})[a] = (-hi, -lo, count[(a, b)], problem)
    known: dict[str, tuple[float, float]] = {}
    for n, c in probed.items():
        if c.bounded and c.lo is not None and c.hi is not None:
            known[n] = (c.lo, c.hi)
    out: dict[str, NodeClock] = {}
    frontier = sorted(known)
    while frontier:
        reached: dict[str, list[tuple[str, float, float, int, str | None]]] = {}
        for m in frontier:
            for n, (dlo, dhi, k, problem) in sorted(edges.get(m, {}).items()):
                if n in known or n in out or n in probed:
                    continue
                reached.setdefault(n, []).append((m, known[m][0] + dlo, known[m][1] + dhi, k, problem))
        frontier = []
        for n, ways in sorted(reached.items()):
            via = tuple(sorted({w[0] for w in ways}))
            pairs = sum(w[3] for w in ways)
            problems = [w[4] for w in ways if w[4]]
            lo, hi = max(w[1] for w in ways), min(w[2] for w in ways)
            problem = problems[0] if problems else None
            if problem is None and lo > hi:
                problem = (f"the measured nodes {', '.join(via)} say different things of its clock "
                           f"({lo * 1000:+.1f} ms above {hi * 1000:+.1f} ms)")  # fmt: skip
            nc = NodeClock(n, zone_of.get(n), lo, hi, via, pairs, problem or _too_wide(lo, hi))
            out[n] = nc
            if nc.bounded:
                known[n] = (lo, hi)
                frontier.append(n)
    for n in sorted(set(edges) - set(known) - set(out) - set(probed)):
        out[n] = NodeClock(n, zone_of.get(n), problem="no chain of request pairs reaches a node a probe measured")
    return out
