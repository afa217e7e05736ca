"""The run report: one self-contained HTML page an SRE reads in ten seconds.

It is what people open in a post-mortem, often from a CI artifact or a run
directory copied off the test machine, so it renders offline and contains no
reference to anything outside itself (inline CSS and SVG; one small inline
script for the hover read-out, the page reads fine without it).

Ordered by what an SRE asks first:
1. Did it pass; which invariant failed, in which zone, when (the "what
   failed" table: each failed invariant's pairs, windows and checks with the
   zone and the clock time of the first offending record).
2. A timeline, one row per zone: faults as bars, failover and recovery as
   marks with their resolution (the verdict's `*_resolution_s`), failed user
   requests, first offending records. Then the fault table (same numbers).
3. Per zone: where each upstream's hops were served (share of in-zone, Region
   fallback, other edge zone), Region-only TCP services as connections
   closed (pooled postgres connections are logged once, when they close:
   plotted as shares they are spikes that look like failovers), user latency
   percentiles and failed requests. Each chart draws only its zone's faults.
4. One zone-to-zone flow map per window: the run cut at every inject and
   restore, so "after X, before Y" is one panel, not two.
5. Evidence, notes, skipped record lines.

Times: every axis and table is UTC clock time (the date once in the header);
hovering a chart shows the clock time to the millisecond and a guide at that
instant in every chart (they share one time axis, `svg.TimeAxis`).

Figures the verdict does not carry (the series over time, flows per window)
are computed here from the loaded run, aggregated in DuckDB into at most
`MAX_BUCKETS` buckets per series and one row per (window, caller zone,
serving zone), so the page size depends on the topology and the faults, not
on the number of hops.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from harness.contract.rundir import REPORT_FILE
from harness.report.penalty import penalty_for
from harness.report.svg import (
    FaultMark,
    Series,
    TimeAxis,
    TimelineRow,
    clock,
    flow_map,
    time_chart,
    timeline,
)
from harness.topology import Placement, Topology
from harness.verify import (
    HUB_VIOLATION_SQL,
    IN_ZONE_SQL,
    REQUEST_OK_SQL,
    RunData,
    Verdict,
    iso,
    judged,
    load_run,
    pairs,
    seconds,
)

MAX_BUCKETS = 150
MAX_FLOW_WINDOWS = 80
MAX_PROBLEMS_LISTED = 15
MAX_PROBLEM_MARKS = 40
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
NO_HOST = "(no upstream host)"
UNATTRIBUTED = "unattributed"
# Invariants judged from evidence other than hop streams: their checks are listed one by one.
EVIDENCE_INVARIANTS = ("hub-and-spoke", "call-graph", "experiment-ran", "coverage", "config")
ZONE_TYPES = {"availability-zone": "AZ, Region", "local-zone": "Local Zone", "wavelength-zone": "Wavelength Zone"}

# Serving categories. Colours are distinct by meaning across the page: green is
# where a hop should go, blue the Region standing in for an edge zone (fallback),
# teal a Region-only service served where it lives, red a violation.
IN_ZONE = "#2e7d32"
REGION_FALLBACK = "#1565c0"
REGION_SHARED = "#00838f"
OTHER_EDGE = "#d50000"
UNKNOWN = "#f9a825"
NO_HOST_COLOR = "#9e9e9e"
FAILED = "#c62828"

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;
padding:12px 16px 40px;color:#222;max-width:1400px}
h1{font-size:22px;margin:.2em 0 .3em;line-height:1.5}
h2{font-size:18px;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:1.1em 0 .4em;line-height:1.6}
p,li,summary,h1,h2,h3{overflow-wrap:anywhere}
.badge{display:inline-block;padding:0 .5em;border-radius:4px;color:#fff;font-weight:700;font-size:.9em;
white-space:nowrap}
.pass{background:#2e7d32}
.fail{background:#c62828}
.na{background:#757575}
.lead{font-size:16px;margin:.3em 0}
.meta{color:#444;margin:.3em 0}
table{border-collapse:collapse;margin:.5em 0;font-size:13px;max-width:100%}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word;
line-height:1.4}
th{background:#f4f4f4}
td.num{text-align:right}
table.penalty caption{text-align:left;font-size:12.5px;color:#555;caption-side:top}
.msg{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap;
overflow-wrap:anywhere}
.partial{background:#fff3e0;border:1px solid #ef6c00;padding:.4em .6em}
.charts{display:flex;flex-wrap:wrap;gap:14px 18px;align-items:flex-start}
.caption{color:#555;font-size:12.5px;max-width:1320px;margin:.3em 0 .8em}
.overview{display:flex;flex-wrap:wrap;gap:8px 24px;align-items:flex-start}
.overview>div{min-width:0}
.overview .tl{flex:0 1 660px}
.overview .side{flex:1 1 360px}
.overview table{margin-top:0}
details>summary{cursor:pointer;margin:.4em 0}
.chip{display:inline-block;border:1px solid #bbb;border-radius:3px;padding:0 .35em;margin:0 .2em;font-size:12px;
font-weight:400;line-height:1.5}
.chip.bad{border-color:#c62828;color:#c62828}
svg{display:block;max-width:100%;height:auto}
svg text{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,"Liberation Mono",monospace;font-size:10px;
fill:#333}
svg .title{font-size:12px;font-weight:700;fill:#222}
svg.flow .title{font-size:11px}
svg .plot{fill:#fafafa;stroke:#ccc}
svg .strip{fill:#f1f1f1}
svg .grid{stroke:#e6e6e6}
svg .flabel{fill:#fff;font-weight:700}
svg .flabel-out{fill:#222}
svg .zname{font-weight:700;fill:#222}
svg .znote{fill:#555}
svg .halo{stroke:#fff;stroke-width:3;opacity:.85}
svg .inject{stroke:#212121;stroke-width:1.2;stroke-dasharray:4 2}
svg .restore{stroke:#212121;stroke-width:1.2;stroke-dasharray:1 2}
svg .empty{fill:#888}
svg .guide{stroke:#000;stroke-width:1;opacity:.55;pointer-events:none}
svg .flow-ok{fill:none;stroke:#7a9cc6;opacity:.75}
svg .flow-in{fill:none;stroke:#66bb6a;opacity:.75}
svg .flow-bad{fill:none;stroke:#d50000;opacity:.9}
svg .flow-bad-t{fill:#d50000;font-weight:700}
svg .sub{fill:#555}
#eh-tip{position:absolute;z-index:10;background:#212121;color:#fff;
font:12px/1.4 ui-monospace,"DejaVu Sans Mono",monospace;padding:3px 6px;border-radius:3px;pointer-events:none;
max-width:420px}
"""

# The hover read-out: the clock time under the pointer (and the faults active
# then), and a guide at that instant in every time chart. No URL, no network.
SCRIPT = """
(function(){
var tip=document.getElementById("eh-tip"),T0=+document.body.dataset.t0;
var F=JSON.parse(document.getElementById("eh-faults").textContent);
var charts=[].slice.call(document.querySelectorAll("svg[data-t0]"));
function p(n,w){n=String(n);while(n.length<w)n="0"+n;return n}
function clock(t){var d=new Date(Math.round(t*1000));return p(d.getUTCHours(),2)+":"+p(d.getUTCMinutes(),2)+":"+
p(d.getUTCSeconds(),2)+"."+p(d.getUTCMilliseconds(),3)}
function guide(t,on){charts.forEach(function(s){var g=s.querySelector(".guide");if(!g)return;var d=s.dataset,
x=+d.x0+(t-d.t0)/(d.t1-d.t0)*(d.x1-d.x0);g.setAttribute("x1",x);g.setAttribute("x2",x);
g.setAttribute("visibility",on?"visible":"hidden")})}
function hide(){tip.hidden=true;guide(0,false)}
charts.forEach(function(s){
s.addEventListener("mousemove",function(e){
var r=s.getBoundingClientRect(),d=s.dataset,x=(e.clientX-r.left)*s.viewBox.baseVal.width/r.width;
if(x<+d.x0||x>+d.x1){hide();return}
var t=+d.t0+(x-d.x0)/(d.x1-d.x0)*(d.t1-d.t0);
var on=F.filter(function(f){return f[1]<=t&&(f[2]===null||t<f[2])}).map(function(f){return f[0]});
tip.textContent=clock(t)+" UTC \\u00b7 t+"+(t-T0).toFixed(1)+" s"+(on.length?" \\u00b7 during "+on.join(", "):"");
tip.hidden=false;guide(t,true);
var vw=document.documentElement.clientWidth,w=tip.offsetWidth;
tip.style.left=Math.max(window.scrollX,Math.min(e.clientX+window.scrollX+12,window.scrollX+vw-w-4))+"px";
tip.style.top=(e.clientY+window.scrollY+16)+"px"});
s.addEventListener("mouseleave",hide)});
})();
"""


def _bucket(duration: float) -> float:
    for s in NICE_STEPS:
        if duration / s <= MAX_BUCKETS:
            return float(s)
    return float(math.ceil(duration / MAX_BUCKETS))


def _dur(s: float) -> str:
    """A duration as a person says it: `15 s`, `2 min 5 s`, `3 h 02 min`."""
    if s < 60:
        return f"{s:.1f} s" if s < 10 and s != int(s) else f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(round(s), 60)
        return f"{m} min {r} s" if r else f"{m} min"
    h, r = divmod(round(s) // 60, 60)
    return f"{h} h {r:02d} min"


def _badge(passed: bool | None, text: str | None = None) -> str:
    cls = "na" if passed is None else "pass" if passed else "fail"
    return f'<span class="badge {cls}">{text or ("PASS" if passed else "FAIL")}</span>'


def _when(ts: float | None) -> str:
    """A table cell's clock time (ms), with the full ISO instant as its tooltip."""
    if ts is None:
        return "-"
    return f'<span title="{iso(ts)}">{clock(ts, ms=True)}</span>'


@dataclass(frozen=True)
class Problem:
    """One thing that failed, where and when: the rows of "what failed" and the red marks of the timeline."""

    invariant: str
    zone: str | None
    ts: float | None
    message: str


def _problems(v: Verdict) -> list[Problem]:
    out: list[Problem] = []
    injected = {f.fault: f.inject for f in v.faults}
    for inv in v.invariants:
        if inv.passed:
            continue
        found: list[Problem] = []
        for p in inv.pairs:
            if p.status in ("fail", "unverified"):
                ts = p.first_offenders[0].get("ts") if p.first_offenders else injected.get(p.fault or "")
                found.append(Problem(inv.name, p.caller_zone, ts, p.message))
        for w in inv.windows:
            if w.status in ("fail", "unverified"):
                first = w.first_offenders[0] if w.first_offenders else {}
                found.append(Problem(inv.name, first.get("zone"), first.get("ts", w.start), w.message))
        for c in inv.checks:
            if c.status in ("fail", "unverified"):
                d = c.detail
                zone = d.get("zone") or d.get("caller_zone")
                ts = d.get("ts", d.get("start"))
                found.append(Problem(inv.name, zone if isinstance(zone, str) else None,
                                     ts if isinstance(ts, int | float) else None, c.message))  # fmt: skip
        out += found or [Problem(inv.name, None, None, inv.message)]
    return out


@dataclass
class _Ctx:
    run: RunData
    v: Verdict
    t0: float
    t1: float
    b: float
    n: int
    axis: TimeAxis
    marks: list[FaultMark]
    problems: list[Problem]
    zones: list[str] = field(default_factory=list)

    @property
    def topology(self) -> Topology:
        return self.run.topology

    def zone_faults(self, zone: str) -> list[FaultMark]:
        return [m for m in self.marks if m.zone == zone]

    def bucket_text(self) -> str:
        return _dur(self.b)

    def zone_chart(self, zone: str, title: str, kind: str, series: list[Series], **style: Any) -> str:
        """A chart of `zone` on the run's shared time axis and buckets, with the zone's faults marked
        (`time_chart`; `style`: its integer / unit / empty)."""
        return time_chart(title=title, zone=zone, axis=self.axis, bucket_s=self.b, kind=kind, series=series,
                          faults=self.zone_faults(zone), **style)  # fmt: skip


def _fault_marks(v: Verdict) -> list[FaultMark]:
    out = []
    for num, f in enumerate(sorted(v.faults, key=lambda f: (f.inject, f.fault)), start=1):
        restored = f"restored {clock(f.restore, ms=True)}" if f.restore is not None else "never restored"
        fo = seconds(f.failover_s, f.failover_resolution_s)
        rec = seconds(f.recovery_s, f.recovery_resolution_s)
        services = f", {', '.join(f.services)}" if f.services and f.kind == "service-down" else ""
        title = (
            f"#{num} {f.fault} ({f.kind}{services}) in {f.zone}: injected {clock(f.inject, ms=True)}, {restored} UTC; "
            f"failover {fo}, recovery {rec}, lost {f.lost_requests} requests / {f.lost_hops} hops: "
            f"{'PASS' if f.passed else 'FAIL'}"
        )
        failover = recovery = None
        if f.failover_s is not None:
            # counted from when the fault took effect (its pods dead), the inject in verdicts written before it
            start = f.effective_at if f.effective_at is not None else f.inject
            after = "the inject" if start == f.inject else f"the fault took effect at {clock(start, ms=True)}"
            t = start + f.failover_s
            failover = (t, f.failover_resolution_s,
                        f"#{num} {f.fault}: failover {fo} after {after}, at {clock(t, ms=True)} UTC"
                        + (f" (the true instant lies in the {f.failover_resolution_s:.3f} s before)"
                           if f.failover_resolution_s else ""))  # fmt: skip
        if f.recovery_s is not None and f.restore is not None:
            t = f.restore + f.recovery_s
            recovery = (t, f.recovery_resolution_s,
                        f"#{num} {f.fault}: recovery {rec} after the restore, at {clock(t, ms=True)} UTC"
                        + (f" (the true instant lies in the {f.recovery_resolution_s:.3f} s before)"
                           if f.recovery_resolution_s else ""))  # fmt: skip
        out.append(FaultMark(num, f.fault, f.kind, f.zone, f.inject, f.restore, f.passed, title, failover, recovery))
    return out


# -- aggregates (DuckDB, bounded) ------------------------------------------------------------


def _k(ctx: _Ctx) -> str:
    """Bucket index of `ts`, clamped to the axis (records at the very end fall in the last bucket)."""
    return f"least(greatest(floor((ts - {ctx.t0!r}) / {ctx.b!r}), 0), {ctx.n - 1})::BIGINT"


def _hop_buckets(ctx: _Ctx) -> dict[tuple[str, str], dict[int, tuple[int, ...]]]:
    """(caller zone, upstream) -> bucket -> counts.

    Counts: total, in-zone, Region (not in-zone), edge (not in-zone), unknown zone, no host, Region (all).
    """
    in_zone = f"coalesce({IN_ZONE_SQL}, false)"
    rows = ctx.run.con.execute(
        f"""
        SELECT caller_zone, upstream, {_k(ctx)} AS k, count(*),
               count(*) FILTER (WHERE {in_zone}),
               count(*) FILTER (WHERE serving_kind = 'region' AND NOT {in_zone}),
               count(*) FILTER (WHERE serving_kind = 'edge' AND NOT {in_zone}),
               count(*) FILTER (WHERE serving_kind NOT IN ('region', 'edge') AND NOT {in_zone}),
               count(*) FILTER (WHERE serving_kind IS NULL),
               count(*) FILTER (WHERE serving_kind = 'region')
        FROM hops WHERE caller_zone IS NOT NULL AND upstream IS NOT NULL AND ts IS NOT NULL
        GROUP BY ALL
        """
    ).fetchall()
    out: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
    for z, u, k, *counts in rows:
        out.setdefault((str(z), str(u)), {})[int(k)] = tuple(int(c) for c in counts)
    return out


@dataclass(frozen=True)
class _ReqBucket:
    total: int
    failed: int
    p50: float | None
    p95: float | None
    p99: float | None


def _request_buckets(ctx: _Ctx) -> dict[str, dict[int, _ReqBucket]]:
    rows = ctx.run.con.execute(
        f"""
        SELECT zone, {_k(ctx)} AS k, count(*), count(*) FILTER (WHERE NOT {REQUEST_OK_SQL}),
               quantile_cont(latency_ms, [0.5, 0.95, 0.99]) FILTER (WHERE {REQUEST_OK_SQL} AND latency_ms IS NOT NULL)
        FROM requests WHERE zone IS NOT NULL AND ts IS NOT NULL GROUP BY ALL
        """
    ).fetchall()
    out: dict[str, dict[int, _ReqBucket]] = {}
    for z, k, total, failed, q in rows:
        p50, p95, p99 = q if q else [None, None, None]
        out.setdefault(str(z), {})[int(k)] = _ReqBucket(int(total), int(failed), p50, p95, p99)
    return out


@dataclass(frozen=True)
class _Window:
    label: str
    lo: float
    hi: float


def _flow_windows(ctx: _Ctx) -> list[_Window]:
    """The run cut at every inject and restore: each window is one panel ("after X, before Y" once)."""
    t0, t1 = ctx.t0, ctx.t1
    bounds = sorted({t for m in ctx.marks for t in (m.start, m.end) if t is not None and t0 < t < t1})
    edges = [t0, *bounds, t1]
    out = []
    seen: set[str] = set()
    for lo, hi in itertools.pairwise(edges):
        active = [m.name for m in ctx.marks if m.start <= lo and (m.end is None or m.end >= hi)]
        ended = [m.name for m in ctx.marks if m.end == lo and m.name not in active]
        starts = [m.name for m in ctx.marks if m.start == hi and m.name not in active]
        if active:
            # overlapping faults cut one fault into several windows: say which part
            label = "during " + " + ".join(active)
            label += f", after {' + '.join(ended)}" if ended else ""
            label += f", before {' + '.join(starts)}" if starts else ""
        else:
            before = [m.name for m in ctx.marks if m.end is not None and m.end <= lo]
            after = [m.name for m in ctx.marks if m.start >= hi]
            prev = ended or before[-1:]
            nxt = starts or after[:1]
            if prev and nxt:
                label = f"after {' + '.join(prev)}, before {' + '.join(nxt)}"
            elif nxt:
                label = f"before {' + '.join(nxt)}"
            elif prev:
                label = f"after {' + '.join(prev)}"
            else:
                label = "whole run"
        if label in seen:
            label += f" (from {clock(lo)})"
        seen.add(label)
        out.append(_Window(label, lo, hi))
    return out


def _flows(ctx: _Ctx, windows: Sequence[_Window]) -> dict[int, list[tuple[str, str, int, bool]]]:
    """Per window: (caller zone, serving zone, hops, any hub-and-spoke violation), in one range join."""
    con = ctx.run.con
    con.execute("CREATE OR REPLACE TEMP TABLE report_windows(i INTEGER, lo DOUBLE, hi DOUBLE, last BOOLEAN)")
    if windows:
        con.executemany(
            "INSERT INTO report_windows VALUES (?, ?, ?, ?)",
            [(i, w.lo, w.hi, i == len(windows) - 1) for i, w in enumerate(windows)],
        )
    rows = con.execute(
        f"""
        SELECT w.i, h.caller_zone,
               coalesce(h.serving_zone, CASE WHEN coalesce(h.upstream_host, '') = '' THEN '{NO_HOST}'
                                        ELSE '{UNATTRIBUTED}' END),
               count(*), bool_or({HUB_VIOLATION_SQL})
        FROM hops h JOIN report_windows w ON h.ts >= w.lo AND (h.ts < w.hi OR (w.last AND h.ts <= w.hi))
        WHERE h.caller_zone IS NOT NULL GROUP BY ALL
        """
    ).fetchall()
    out: dict[int, list[tuple[str, str, int, bool]]] = {}
    for i, a, b, n, bad in rows:
        out.setdefault(int(i), []).append((str(a), str(b), int(n), bool(bad)))
    return out


# -- page sections ---------------------------------------------------------------------------


def _header(ctx: _Ctx) -> str:
    v, r = ctx.v, ctx.v.run
    failed_inv = [i.name for i in v.invariants if not i.passed]
    failed_faults = [f.fault for f in v.faults if not f.passed]
    zones = sorted({p.zone for p in ctx.problems if p.zone} | {f.zone for f in v.faults if not f.passed})
    if v.passed:
        lead = f"All {len(v.invariants)} invariants held" + (
            f" and all {len(v.faults)} faults passed." if v.faults else "; the run had no faults."
        )
    else:
        parts = []
        if failed_inv:
            parts.append(
                f"{len(failed_inv)} of {len(v.invariants)} invariants failed: <b>{escape(', '.join(failed_inv))}</b>"
            )
        if failed_faults:
            parts.append(f"{len(failed_faults)} of {len(v.faults)} faults failed")
        if zones:
            parts.append("zones: " + ", ".join(f"<b>{escape(z)}</b>" for z in zones))
        lead = " &middot; ".join(parts) + "."
    day = datetime.fromtimestamp(ctx.t0, tz=UTC).strftime("%Y-%m-%d")
    slo = ", ".join(f"{k} {val:g}" for k, val in r.slo.items())
    partial = (
        f"<p class='partial'><b>Partial run</b>: it stopped at stage <code>{escape(r.stopped_at or '?')}</code> "
        f"(status {escape(r.run_status or '?')}); the verdict is judged on what was recorded.</p>"
        if r.partial
        else ""
    )
    what = ""
    if ctx.problems:
        rows = "".join(
            f"<tr><td>{escape(p.invariant)}</td><td>{escape(p.zone or '-')}</td><td class='num'>{_when(p.ts)}</td>"
            f"<td class='msg'>{escape(p.message)}</td></tr>"
            for p in ctx.problems[:MAX_PROBLEMS_LISTED]
        )
        more = len(ctx.problems) - MAX_PROBLEMS_LISTED
        what = (
            "<h2>What failed</h2><table><tr><th>invariant</th><th>zone</th><th>first at (UTC)</th>"
            f"<th>detail</th></tr>{rows}</table>"
            + (f"<p>... and {more} more (see Evidence and the invariants table).</p>" if more > 0 else "")
        )
    return f"""
<section id="verdict">
<h1>Verdict {_badge(v.passed)}{" (partial run)" if r.partial else ""}</h1>
<p class="lead">{lead}</p>
{partial}
<p class="meta">Run <code>{escape(r.run_dir)}</code> &middot; topology <b>{escape(r.topology)}</b>
({escape(r.region)}, {escape(r.edition)}) &middot; {day} {clock(ctx.t0)} &ndash; {clock(ctx.t1)} UTC
({_dur(ctx.t1 - ctx.t0)}) &middot; {r.hops:,} hops (from {escape(r.hops_source)}) &middot; {r.requests:,} user requests
&middot; SLO: {escape(slo)}. All times are UTC on this date; hover a chart for the exact time.</p>
{what}
</section>"""


def _timeline_section(ctx: _Ctx, reqs: dict[str, dict[int, _ReqBucket]]) -> str:
    rows = []
    marks_left = MAX_PROBLEM_MARKS
    for z in ctx.zones:
        faults = ctx.zone_faults(z)
        failed = sum(not f.passed for f in faults)
        zprob = [p for p in ctx.problems if p.zone == z and p.ts is not None]
        note = (f"{len(faults)} fault{'s' if len(faults) != 1 else ''}" if faults else "no fault") + (
            f", {failed} failed" if failed else ""
        )
        if zprob:
            note += f", {len(zprob)} violation{'s' if len(zprob) != 1 else ''}"
        errors = []
        for k, rb in sorted(reqs.get(z, {}).items()):
            if rb.failed:
                lo = ctx.t0 + k * ctx.b
                errors.append(
                    (k, rb.failed / rb.total, f"{clock(lo)}-{clock(lo + ctx.b)} UTC: {rb.failed} of {rb.total} "
                     f"user requests entering {z} failed")
                )  # fmt: skip
        probs = [(float(p.ts), f"{p.invariant}: {p.message}") for p in zprob[:marks_left] if p.ts is not None]
        marks_left -= len(probs)
        try:
            ztype = ZONE_TYPES.get(ctx.topology.zone(z).type.value, "")
        except KeyError:
            ztype = "not in the topology"
        rows.append(TimelineRow(z, f"{z} ({ztype})" if ztype else z, note, faults, errors, probs))
    svg = timeline(ctx.axis, rows, ctx.b)
    caption = (
        "<p class='caption'>One row per zone. Bars: faults from inject to restore (outlined red: the fault failed; "
        "#n: the fault table's numbers). &#9660; failover: the instant the zone was steadily served from the "
        "Region; &#9650; recovery: back in-zone after the restore; the line before a mark is its resolution (the "
        "true instant lies on it). Red cells: failed user requests entering the zone (darker: a larger share). "
        "&#9670;: first offending record of a failed invariant.</p>"
    )
    return (
        "<h2 id='timeline'>Timeline and invariants</h2>"
        f'<div class="overview"><div class="tl">{svg}{caption}</div>'
        f'<div class="side">{_invariants_table(ctx.v)}</div></div>'
    )


def _faults_table(ctx: _Ctx) -> str:
    if not ctx.v.faults:
        return "<h2>Faults</h2><p>No faults in this run.</p>"
    by_name = {f.fault: f for f in ctx.v.faults}
    rows = []
    for m in ctx.marks:
        f = by_name[m.name]
        what = f.kind + (f": {', '.join(f.services)}" if f.services and f.kind == "service-down" else "")
        restore = (
            f"{_when(f.restore)} <small>(+{_dur(f.restore - f.inject)})</small>" if f.restore is not None
            else "never restored"
        )  # fmt: skip
        rows.append(
            f"<tr><td class='num'>{m.num}</td><td>{escape(f.fault)}<br><small>{escape(what)}</small></td>"
            f"<td>{escape(f.zone)}</td><td>{_when(f.inject)} &rarr;<br>{restore}</td>"
            f"<td>{seconds(f.failover_s, f.failover_resolution_s)}</td>"
            f"<td>{seconds(f.recovery_s, f.recovery_resolution_s)}</td>"
            f"<td class='num'>{f.lost_requests} / {f.lost_hops}</td><td>{_badge(f.passed)}</td>"
            f"<td class='msg'>{escape(chr(10).join(f.messages))}</td></tr>"
        )
    return (
        "<h2>Faults</h2><table><tr><th>#</th><th>fault</th><th>zone</th><th>inject &rarr; restore (UTC)</th>"
        "<th>failover</th><th>recovery</th><th>lost req / hops</th><th>result</th><th>messages</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _invariants_table(v: Verdict) -> str:
    rows = "".join(
        f"<tr><td>{escape(i.name)}</td><td>{_badge(i.passed)}</td><td class='msg'>{escape(i.message)}</td></tr>"
        for i in v.invariants
    )
    return f"<table><tr><th>invariant</th><th>result</th><th>detail</th></tr>{rows}</table>"


def _upstreams(ctx: _Ctx, zone: str, hops: dict[tuple[str, str], dict[int, tuple[int, ...]]]) -> list[str]:
    declared = [u for z, u, _ in pairs(ctx.topology) if z == zone]
    seen = sorted(u for z, u in hops if z == zone and u not in declared)
    order = {s.name: i for i, s in enumerate(ctx.topology.services)}
    return sorted(declared, key=lambda u: order.get(u, 99)) + seen


def _region_only(t: Topology, service: str) -> bool:
    try:
        return t.service(service).placement is Placement.REGION
    except KeyError:
        return False


def _share_chart(ctx: _Ctx, zone: str, u: str, buckets: dict[int, tuple[int, ...]]) -> str:
    try:
        edge_caller = ctx.topology.zone(zone).is_edge
    except KeyError:
        edge_caller = True
    cols: list[list[float | None]] = [[] for _ in range(5)]
    for k in range(ctx.n):
        tot, inz, reg, edge, unk, nohost, _ = buckets.get(k, (0, 0, 0, 0, 0, 0, 0))
        for i, c in enumerate((inz, reg, edge, unk, nohost)):
            cols[i].append(c / tot if tot else None)
    if edge_caller:
        names = [("in-zone", IN_ZONE), ("Region (fallback)", REGION_FALLBACK), ("other edge zone", OTHER_EDGE),
                 (UNATTRIBUTED, UNKNOWN), ("no upstream host", NO_HOST_COLOR)]  # fmt: skip
    else:
        names = [("in the Region", IN_ZONE), ("Region", REGION_FALLBACK), ("edge zone", OTHER_EDGE),
                 (UNATTRIBUTED, UNKNOWN), ("no upstream host", NO_HOST_COLOR)]  # fmt: skip
    always = {0, 1, 4} if edge_caller else {0, 4}
    series = [
        Series(name, color, col)
        for i, ((name, color), col) in enumerate(zip(names, cols, strict=True))
        if i in always or any(x for x in col)
    ]
    return ctx.zone_chart(zone, f"{zone} -> {u}: where hops were served", "share", series)


def _connections_chart(ctx: _Ctx, zone: str, u: str, buckets: dict[int, tuple[int, ...]]) -> str:
    cols: list[list[float | None]] = [[] for _ in range(4)]
    for k in range(ctx.n):
        tot, _inz, _reg, edge, unk, nohost, region = buckets.get(k, (0, 0, 0, 0, 0, 0, 0))
        for i, c in enumerate((region, edge, unk, nohost)):
            cols[i].append(float(c) if tot else None)
    names = [("Region", REGION_SHARED), ("outside the Region", OTHER_EDGE), (UNATTRIBUTED, UNKNOWN),
             ("no upstream host", NO_HOST_COLOR)]  # fmt: skip
    series = [
        Series(name, color, col)
        for i, ((name, color), col) in enumerate(zip(names, cols, strict=True))
        if i in (0, 3) or any(x for x in col)
    ]
    return ctx.zone_chart(
        zone,
        f"{zone} -> {u} (Region-only, TCP): connections closed per {ctx.bucket_text()}",
        "bars",
        series,
        integer=True,
    )


def _latency_chart(ctx: _Ctx, zone: str, reqs: dict[int, _ReqBucket]) -> str:
    names = (("p50", "#455a64", "p50"), ("p95", "#ef8f00", "p95"), ("p99", "#8e24aa", "p99"))
    series = [
        Series(label, color, [getattr(reqs[k], attr) if k in reqs else None for k in range(ctx.n)])
        for label, color, attr in names
    ]
    return ctx.zone_chart(
        zone,
        f"Users entering {zone}: latency of successful requests",
        "lines",
        series,
        unit=" ms",
        empty="no successful request",
    )


def _errors_chart(ctx: _Ctx, zone: str, reqs: dict[int, _ReqBucket]) -> str:
    total = sum(r.total for r in reqs.values())
    failed = sum(r.failed for r in reqs.values())
    series = [Series("failed requests", FAILED, [float(reqs[k].failed) if k in reqs else None for k in range(ctx.n)])]
    return ctx.zone_chart(
        zone,
        f"Users entering {zone}: failed requests per {ctx.bucket_text()} ({failed:,} of {total:,})",
        "bars",
        series,
        integer=True,
        empty="no user request",
    )


def _zone_sections(
    ctx: _Ctx, hops: dict[tuple[str, str], dict[int, tuple[int, ...]]], reqs: dict[str, dict[int, _ReqBucket]]
) -> str:
    out = [
        "<h2 id='zones'>Per zone</h2>",
        "<p class='caption'>Each zone's charts show only that zone's faults (strip above the plot; dashed line: "
        "inject, dotted: restore). <b>Where hops were served</b>: share of each bucket's hops from callers in the "
        "zone: green in-zone, <span style='color:#1565c0'>blue the Region standing in (fallback)</span>, red another "
        "edge zone (a violation), grey no upstream host (failed). <b>Region-only TCP services</b> (postgres) are "
        "drawn as connections closed per bucket, in teal: the sidecar logs a pooled TCP connection once, when it "
        "closes, so a bucket holds few records and a gap means no connection closed, not an outage. Zones with "
        "nothing to report are folded.</p>",
    ]
    for z in ctx.zones:
        faults = ctx.zone_faults(z)
        zprob = [p for p in ctx.problems if p.zone == z]
        charts = []
        for u in _upstreams(ctx, z, hops):
            b = hops.get((z, u), {})
            charts.append(
                _connections_chart(ctx, z, u, b) if _region_only(ctx.topology, u) else _share_chart(ctx, z, u, b)
            )
        zr = reqs.get(z, {})
        charts.append(_latency_chart(ctx, z, zr))
        charts.append(_errors_chart(ctx, z, zr))
        chips = "".join(
            f"<span class='chip{'' if f.passed else ' bad'}'>#{f.num} {escape(f.name)} "
            f"{'passed' if f.passed else 'FAILED'}</span>"
            for f in faults
        )
        if zprob:
            chips += f"<span class='chip bad'>{len(zprob)} violation{'s' if len(zprob) != 1 else ''}</span>"
        try:
            ztype = ZONE_TYPES.get(ctx.topology.zone(z).type.value, "")
        except KeyError:
            ztype = "not in the topology"
        head = f"{escape(z)} <small>({escape(ztype)})</small> {chips}"
        body = penalty_for(ctx.v, z) + f'<div class="charts">{"".join(charts)}</div>'
        if faults or zprob:
            out.append(f'<section id="zone-{escape(z)}"><h3>{head}</h3>{body}</section>')
        else:
            out.append(
                f'<details id="zone-{escape(z)}"><summary><b>{escape(z)}</b> <small>({escape(ztype)})</small>: '
                f"no fault, nothing failed &mdash; charts</summary>{body}</details>"
            )
    return "\n".join(out)


def _flow_section(ctx: _Ctx) -> str:
    windows = _flow_windows(ctx)
    flows = _flows(ctx, windows[:MAX_FLOW_WINDOWS])
    zone_order = {z: i for i, z in enumerate(ctx.zones)}
    maps = []
    for i, w in enumerate(windows[:MAX_FLOW_WINDOWS]):
        fl = sorted(flows.get(i, []))
        left = sorted({f[0] for f in fl}, key=lambda z: (zone_order.get(z, 99), z))
        right = sorted({f[1] for f in fl}, key=lambda z: (zone_order.get(z, 99), z))
        total = sum(f[2] for f in fl)
        sub = f"{clock(w.lo)} - {clock(w.hi)} UTC ({_dur(w.hi - w.lo)}), {total:,} hops"
        maps.append(flow_map(title=w.label, subtitle=sub, lo=w.lo, hi=w.hi, flows=fl, left=left, right=right))
    more = len(windows) - MAX_FLOW_WINDOWS
    return (
        "<h2 id='flows'>Zone-to-zone flows, one map per window (caller zone &rarr; serving zone)</h2>"
        "<p class='caption'>The run is cut at every inject and restore, so each window appears once. Counts are hops "
        "(HTTP requests; for TCP services, connections), written at the start of their own line. Green: served in the "
        "caller's zone; blue-grey: served elsewhere in the Region (fallback, Region-only services); red: a hop between "
        "two edge zones, or from the Region to an edge zone (hub-and-spoke violation).</p>"
        f'<div class="charts">{"".join(maps)}</div>'
        + (f"<p>... {more} more windows not drawn (the page stays bounded).</p>" if more > 0 else "")
    )


def _evidence(v: Verdict) -> str:
    bad: list[str] = []
    good: list[str] = []
    for i in v.invariants:
        if i.name not in EVIDENCE_INVARIANTS:
            continue
        for c in i.checks:
            row = (
                f"<tr><td>{escape(i.name)}</td><td>{escape(c.subject)}</td><td>{escape(c.status)}</td>"
                f"<td class='msg'>{escape(c.message)}</td></tr>"
            )
            (good if c.status in ("pass", "n/a") else bad).append(row)
    if not bad and not good:
        return ""
    head = "<tr><th>invariant</th><th>subject</th><th>status</th><th>detail</th></tr>"
    out = "<h2>Evidence</h2>"
    if bad:
        out += f"<table>{head}{''.join(bad)}</table>"
    if good:
        out += (
            f"<details><summary>{len(good)} passing or not applicable checks</summary>"
            f"<table>{head}{''.join(good)}</table></details>"
        )
    return out


def _notes(v: Verdict) -> str:
    r = v.run
    notes = "".join(f"<li>{escape(n)}</li>" for n in r.notes)
    skipped = "".join(
        f"<li class='msg'>{escape(str(s['file']))}:{s['line']}: {escape(str(s['reason']))}</li>"
        for s in r.skipped_records
    )
    more = r.skipped_records_total - len(r.skipped_records)
    out = f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""
    if r.skipped_records_total:
        out += f"<h2>Skipped record lines ({r.skipped_records_total})</h2><ul>{skipped}</ul>"
        out += f"<p>... and {more} more</p>" if more > 0 else ""
    return out


def _context(run: RunData, verdict: Verdict) -> _Ctx:
    t0 = run.start if run.start is not None else (verdict.run.start or 0.0)
    t1 = run.end if run.end is not None and run.end > t0 else t0 + 1.0
    b = _bucket(t1 - t0)
    n = max(1, math.ceil((t1 - t0) / b - 1e-9))
    axis = TimeAxis(t0, t0 + n * b)
    marks = _fault_marks(verdict)
    zones = [z.name for z in run.topology.zones]
    extra = sorted({m.zone for m in marks} - set(zones))
    return _Ctx(run, verdict, t0, t1, b, n, axis, marks, _problems(verdict), zones + extra)


def render_html(run_dir: Path, verdict: Verdict, run: RunData | None = None) -> str:
    """The page as a string (what `write_report` writes); `run`: the run as the verifier loaded it (not reloaded)."""
    own = run is None
    run = load_run(run_dir) if run is None else run
    try:
        ctx = _context(run, verdict)
        hops = _hop_buckets(ctx)
        reqs = _request_buckets(ctx)
        body = [
            _header(ctx),
            _timeline_section(ctx, reqs),
            _faults_table(ctx),
            _zone_sections(ctx, hops, reqs),
            _flow_section(ctx),
            _evidence(verdict),
            _notes(verdict),
        ]
    finally:
        if own:
            run.con.close()
    faults_json = json.dumps([[m.name, m.start, m.end] for m in ctx.marks]).replace("<", "\\u003c")
    title = f"edge-harness report: {'PASS' if verdict.passed else 'FAIL'} - {run_dir.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f'<body data-t0="{ctx.t0!r}">\n' + "\n".join(body) + '\n<div id="eh-tip" hidden></div>\n'
        f'<script type="application/json" id="eh-faults">{faults_json}</script>\n'
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )


def write_report(run_dir: Path | str, verdict: Verdict | None = None, run: RunData | None = None) -> Path:
    """Write `run_dir/report.html`.

    Without `verdict` the run is loaded once and verified (`harness.verify.judged`), and the page is drawn
    from that same load; with `verdict` and the `run` it was judged on, nothing is loaded again.
    """
    path = Path(run_dir)
    out = path / REPORT_FILE
    if verdict is None:
        with judged(path) as (loaded, v):
            out.write_text(render_html(path, v, loaded), encoding="utf-8")
        return out
    out.write_text(render_html(path, verdict, run), encoding="utf-8")
    return out
