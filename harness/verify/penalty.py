"""Fallback latency penalty: what a zone's users pay while the zone is served from the Region.

The first question an edge product owner asks of a failover is not "did it
route correctly" (the invariants answer that) but "how much slower was the
shop for people in Los Angeles while it did". This module answers it per edge
zone from the records alone, as *information*: it never fails a verdict (an
SLO on it would need a budget the topology does not declare).

Windows, per edge zone Z:
- **fallback** (served from the Region): while at least one edge-placed
  service of Z is down by the inventory's readiness (`RunData.down`, the same
  "local upstream is down" the fallback invariant uses): its callers in Z are
  then sent to the Region. Readiness, not the chaos timeline, decides, so a
  pod that came back early ends the window where it came back.
- **in-zone**: while every edge-placed service of Z is up and no fault acts on
  Z or on the Region (a degraded service link or a lost AZ would inflate the
  baseline), from the first instant every one of them was up; never while
  one of them *spills* (`RunData.spill`: too few of its pods ready, Envoy
  sends a share of the zone's calls to the Region by design), which is
  neither side.
Requests count by their start time, successful ones only (a failed request's
latency is a timeout or a reset, not service; availability judges those), and
never while Z's entry point was down (entrypoints.jsonl). `region_hops` counts
the hops of Z's callers to edge-placed upstreams that the Region served inside
the fallback windows: the evidence that those windows really were served from
the Region.

Penalty = fallback percentile - in-zone percentile (ms); None when either side
has no request.
"""

from __future__ import annotations

from harness.topology import Placement
from harness.verify.rundata import RunData
from harness.verify.verdict import LatencyStats, ZonePenalty

INF = 1e300
PERCENTILES = (0.5, 0.95)


Span = tuple[float, float]


def _union(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        elif hi > lo:
            out.append((lo, hi))
    return out


def _subtract(spans: list[Span], cut: list[Span]) -> list[Span]:
    """`spans` minus the union of `cut` (both lists of [lo, hi) intervals)."""
    out: list[Span] = []
    cut = _union(cut)
    for lo, hi in _union(spans):
        cur = lo
        for clo, chi in cut:
            if chi <= cur or clo >= hi:
                continue
            if clo > cur:
                out.append((cur, clo))
            cur = max(cur, chi)
            if cur >= hi:
                break
        if cur < hi:
            out.append((cur, hi))
    return out


def _ts_in(spans: list[Span], column: str = "ts") -> str:
    """SQL: `column` in one of the spans (literals: a handful of windows, filtered during the scan)."""
    if not spans:
        return "false"
    return "(" + " OR ".join(f"({column} >= {lo!r} AND {column} < {hi!r})" for lo, hi in spans) + ")"


def _stats(run: RunData, zone: str, spans: list[Span]) -> LatencyStats:
    row = run.con.execute(
        f"""
        SELECT count(*), quantile_cont(latency_ms, {PERCENTILES[0]}), quantile_cont(latency_ms, {PERCENTILES[1]})
        FROM requests
        WHERE zone = ? AND coalesce(ok, false) AND latency_ms IS NOT NULL AND {_ts_in(spans)}
        """,
        [zone],
    ).fetchone()
    assert row is not None
    n = int(row[0])
    return LatencyStats(n, float(row[1]) if n else None, float(row[2]) if n else None)


def _entry_down(run: RunData, zone: str, end: float) -> list[Span]:
    rows = run.con.execute("SELECT ts, up FROM entrypoints WHERE zone = ? ORDER BY ts", [zone]).fetchall()
    spans: list[Span] = []
    opened: float | None = None
    for ts, up in rows:
        if up is False and opened is None:
            opened = float(ts)
        elif up is True and opened is not None:
            spans.append((opened, float(ts)))
            opened = None
    if opened is not None:
        spans.append((opened, max(end, opened) + 1.0))
    return spans


def fallback_penalty(run: RunData) -> list[ZonePenalty]:
    """Per edge zone with traffic: in-zone vs fallback latency of its users' successful requests."""
    t = run.topology
    if run.start is None or run.end is None:
        return []
    start, end = run.start, run.end + 1e-6
    edge_services = [s.name for s in t.services if s.placement is Placement.EDGE]
    region = {z.name for z in t.region_zones}
    zones_with_requests = {
        str(r[0]) for r in run.con.execute("SELECT DISTINCT zone FROM requests WHERE zone IS NOT NULL").fetchall()
    }
    out: list[ZonePenalty] = []
    for z in t.edge_zones:
        if z.name not in zones_with_requests:
            continue
        down: list[Span] = []
        spill: list[Span] = []
        first_up = start
        for s in edge_services:
            key = run.up_key(z.name, s)
            down += [(lo, end if hi is None else hi) for lo, hi in run.down.get(key, [])]
            spill += [(lo, end if hi is None else hi) for lo, hi in run.spill.get(key, [])]
            first_up = max(first_up, run.first_up.get(key, end))
        entry_down = _entry_down(run, z.name, end)
        fallback = _subtract(down, entry_down)
        faults = [
            (f.inject, end if f.restore is None else f.restore)
            for f in run.faults
            if f.zone == z.name or f.zone in region
        ]
        in_zone = _subtract([(first_up, end)], [*down, *spill, *entry_down, *faults])
        fb_stats = _stats(run, z.name, fallback)
        in_stats = _stats(run, z.name, in_zone)
        region_hops = int(
            run.con.execute(
                f"SELECT count(*) FROM hops WHERE caller_zone = ? AND serving_kind = 'region' "
                f"AND placement = 'edge' AND {_ts_in(fallback)}",
                [z.name],
            ).fetchone()[0]  # type: ignore[index]
        )
        out.append(
            ZonePenalty(
                zone=z.name,
                in_zone=in_stats,
                fallback=fb_stats,
                penalty_p50_ms=_diff(fb_stats.p50_ms, in_stats.p50_ms),
                penalty_p95_ms=_diff(fb_stats.p95_ms, in_stats.p95_ms),
                fallback_windows=len(fallback),
                fallback_s=sum(hi - lo for lo, hi in fallback),
                region_hops=region_hops,
            )
        )
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def penalty_text(p: ZonePenalty) -> str:
    """One line per zone for the terminal: `us-west-2-lax-1a: in-zone p50 15.2 ms p95 31.0 ms (n=812) | ...`."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    def signed(v: float | None) -> str:
        return "-" if v is None else f"{v:+.1f} ms"

    fb = p.fallback
    if not fb.requests:
        why = (
            "never served from the Region"
            if not p.fallback_windows
            else "no successful request while served from the Region"
        )
        tail = f"fallback: {why}"
    else:
        tail = (
            f"from the Region p50 {ms(fb.p50_ms)} p95 {ms(fb.p95_ms)} (n={fb.requests}, {p.fallback_s:.1f} s) "
            f"penalty p50 {signed(p.penalty_p50_ms)} p95 {signed(p.penalty_p95_ms)}"
        )
    return f"{p.zone}: in-zone p50 {ms(p.in_zone.p50_ms)} p95 {ms(p.in_zone.p95_ms)} (n={p.in_zone.requests}); {tail}"


__all__ = ["LatencyStats", "ZonePenalty", "fallback_penalty", "penalty_text"]
