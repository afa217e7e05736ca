"""The run report: one self-contained HTML page (inline CSS and SVG, no scripts).

It is what people open in a post-mortem, often from a CI artifact or a run
directory copied off the test machine, so it must render offline and contain
no reference to anything outside itself. Every time series is aggregated in
DuckDB into at most ~150 buckets, so the page stays small for million-hop runs.

Layout: the verdict (pass/fail, invariants, faults, failure messages) first,
because that is what a reader came for; then serving-zone share over time per
(caller zone, upstream), user latency percentiles, errors over time (every
time plot with the chaos inject/restore markers), and a zone-to-zone flow map
for the windows before, during and after each fault (LZ->LZ or Region->LZ
flows in red).
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from harness.report.svg import Marker, Series, flow_map, line_chart, stacked_share_chart
from harness.verify import Verdict, verify
from harness.verify.invariants import HUB_VIOLATION_SQL, IN_ZONE_SQL, REQUEST_OK_SQL
from harness.verify.model import iso, seconds
from harness.verify.records import RunData, load_run

MAX_BUCKETS = 150
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
ZONE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
NO_HOST = "(no upstream host)"
# Invariants judged from evidence other than hop streams: their checks are listed one by one.
EVIDENCE_INVARIANTS = ("hub-and-spoke", "call-graph", "experiment-ran", "coverage", "config")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.badge{display:inline-block;padding:.15em .6em;border-radius:4px;color:#fff;font-weight:700}
.pass{background:#2e7d32}.fail{background:#c62828}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f4f4f4}.msg{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap}
.grid-wrap{display:flex;flex-wrap:wrap;gap:10px}
.partial{background:#fff3e0;border:1px solid #ef6c00;padding:.4em .6em}
svg text{font-size:10px;fill:#333}svg .title{font-size:12px;font-weight:600}
svg .plot{fill:#fafafa;stroke:#ccc}svg .grid{stroke:#eee}svg .ytick{text-anchor:end}svg .xtick{text-anchor:middle}
svg .fault{fill:#d32f2f;opacity:.08}svg .inject{stroke:#d32f2f;stroke-dasharray:4 2}
svg .restore{stroke:#2e7d32;stroke-dasharray:4 2}svg .mlabel{fill:#b71c1c;font-size:9px}
svg .flow-ok{fill:none;stroke:#5b8def;opacity:.7}svg .flow-bad{fill:none;stroke:#d50000;opacity:.9}
svg .flow-bad-t{fill:#d50000;font-weight:700}svg .zl{text-anchor:end}svg .count{text-anchor:middle}
"""


def _bucket(duration: float) -> float:
    for s in NICE_STEPS:
        if duration / s <= MAX_BUCKETS:
            return float(s)
    return float(math.ceil(duration / MAX_BUCKETS))


def _badge(passed: bool) -> str:
    return f'<span class="badge {"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'


def _verdict_html(v: Verdict) -> str:
    r = v.run
    rows = "".join(
        f"<tr><td>{escape(i.name)}</td><td>{_badge(i.passed)}</td><td class='msg'>{escape(i.message)}</td></tr>"
        for i in v.invariants
    )
    frows = "".join(
        f"<tr><td>{escape(f.fault)}</td><td>{escape(f.kind)}</td><td>{escape(f.zone)}</td>"
        f"<td>{escape(', '.join(f.services))}</td><td>{iso(f.inject)}</td><td>{iso(f.restore)}</td>"
        f"<td>{seconds(f.failover_s, f.failover_resolution_s)}</td><td>{f.lost_requests}</td><td>{f.lost_hops}</td>"
        f"<td>{seconds(f.recovery_s, f.recovery_resolution_s)}</td>"
        f"<td>{_badge(f.passed)}</td><td class='msg'>{escape(chr(10).join(f.messages))}</td></tr>"
        for f in v.faults
    )
    failures = "".join(f"<li class='msg'>{escape(m)}</li>" for m in v.failure_messages)
    notes = "".join(f"<li>{escape(n)}</li>" for n in r.notes)
    slo = ", ".join(f"{k} {val:g}" for k, val in r.slo.items())
    partial = (
        f"<p class='partial'><b>Partial run</b>: it stopped at stage <code>{escape(r.stopped_at or '?')}</code> "
        f"(status {escape(r.run_status or '?')}); the verdict is judged on what was recorded.</p>"
        if r.partial
        else ""
    )
    skipped = "".join(
        f"<li class='msg'>{escape(str(s['file']))}:{s['line']}: {escape(str(s['reason']))}</li>"
        for s in r.skipped_records
    )
    more = r.skipped_records_total - len(r.skipped_records)
    skipped_html = (
        f"<h2>Skipped record lines ({r.skipped_records_total})</h2><ul>{skipped}</ul>"
        + (f"<p>... and {more} more</p>" if more > 0 else "")
        if r.skipped_records_total
        else ""
    )
    checks = "".join(
        f"<tr><td>{escape(i.name)}</td><td>{escape(c.subject)}</td><td>{escape(c.status)}</td>"
        f"<td class='msg'>{escape(c.message)}</td></tr>"
        for i in v.invariants
        if i.name in EVIDENCE_INVARIANTS
        for c in i.checks
    )
    checks_html = (
        "<h2>Evidence</h2><table><tr><th>invariant</th><th>subject</th><th>status</th><th>detail</th></tr>"
        f"{checks}</table>"
        if checks
        else ""
    )
    return f"""
<section id="verdict">
<h1>Verdict {_badge(v.passed)}{" (partial run)" if r.partial else ""}</h1>
{partial}
<p>Run <code>{escape(r.run_dir)}</code>
&middot; topology <b>{escape(r.topology)}</b> ({escape(r.region)}, {escape(r.edition)})
&middot; {iso(r.start)} &ndash; {iso(r.end)} &middot; {r.hops:,} hops (from {escape(r.hops_source)})
&middot; {r.requests:,} user requests
&middot; SLO: {escape(slo)}</p>
<table><tr><th>invariant</th><th>result</th><th>detail</th></tr>{rows}</table>
<h2>Faults</h2>
{"<p>No faults in this run.</p>" if not v.faults else ""}
<table {"hidden" if not v.faults else ""}><tr><th>fault</th><th>kind</th><th>zone</th><th>services</th><th>inject</th>
<th>restore</th><th>failover</th>
<th>lost requests</th><th>lost hops</th><th>recovery</th><th>result</th><th>messages</th></tr>
{frows}</table>
{f"<h2>Failures</h2><ul>{failures}</ul>" if failures else ""}
{checks_html}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
{skipped_html}
</section>"""


def _markers(v: Verdict) -> list[Marker]:
    return [Marker(f.fault, f.inject, f.restore) for f in v.faults]


def _share_charts(run: RunData, t0: float, t1: float, b: float, markers: list[Marker]) -> str:
    rows = run.con.execute(
        f"""
        SELECT caller_zone, upstream, floor((ts - ?) / ?)::BIGINT AS k, count(*),
               count(*) FILTER (WHERE coalesce({IN_ZONE_SQL}, false)),
               count(*) FILTER (WHERE serving_kind = 'region' AND NOT coalesce({IN_ZONE_SQL}, false)),
               count(*) FILTER (WHERE serving_kind IS NOT NULL AND serving_kind <> 'region'
                                      AND NOT coalesce({IN_ZONE_SQL}, false)),
               count(*) FILTER (WHERE serving_kind IS NULL)
        FROM hops WHERE caller_zone IS NOT NULL AND upstream IS NOT NULL GROUP BY ALL ORDER BY 1, 2, 3
        """,
        [t0, b],
    ).fetchall()
    by_pair: dict[tuple[str, str], dict[int, tuple[int, ...]]] = {}
    for z, u, k, *counts in rows:
        by_pair.setdefault((z, u), {})[int(k)] = tuple(int(c) for c in counts)
    zone_order = {z.name: i for i, z in enumerate(run.topology.zones)}
    charts = []
    n_buckets = int((t1 - t0) // b) + 1
    for (z, u), buckets in sorted(by_pair.items(), key=lambda kv: (zone_order.get(kv[0][0], 99), kv[0][1])):
        cols: list[list[tuple[float, float | None]]] = [[], [], [], []]
        for k in range(n_buckets):
            tot, *parts = buckets.get(k, (0, 0, 0, 0, 0))
            t = t0 + (k + 0.5) * b
            for i in range(4):
                cols[i].append((t, parts[i] / tot if tot else 0.0))
        series = [
            Series(
                "in-zone" if z not in zone_order or run.topology.zone(z).is_edge else "Region (local)",
                "#2e7d32",
                cols[0],
            ),
            Series("Region", "#1565c0", cols[1]),
            Series("other edge zone", "#d50000", cols[2]),
            Series("no host", "#9e9e9e", cols[3]),
        ]
        charts.append(stacked_share_chart(f"{z} -> {u}: serving zone share", series, t0, t1, markers))
    return "\n".join(charts) or "<p>No hops recorded.</p>"


def _latency_chart(run: RunData, t0: float, t1: float, b: float, markers: list[Marker]) -> str:
    rows = run.con.execute(
        f"""
        SELECT floor((ts - ?) / ?)::BIGINT AS k,
               quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95), quantile_cont(latency_ms, 0.99)
        FROM requests WHERE latency_ms IS NOT NULL AND {REQUEST_OK_SQL} GROUP BY k ORDER BY k
        """,
        [t0, b],
    ).fetchall()
    pts = {int(r[0]): r[1:] for r in rows}
    n = int((t1 - t0) // b) + 1
    series = [
        Series(name, color, [(t0 + (k + 0.5) * b, pts[k][i] if k in pts else None) for k in range(n)])
        for i, (name, color) in enumerate((("p50", "#2e7d32"), ("p95", "#f9a825"), ("p99", "#c62828")))
    ]
    return line_chart("User request latency of successful requests (ms)", series, t0, t1, markers)


def _error_chart(run: RunData, t0: float, t1: float, b: float, markers: list[Marker]) -> str:
    rows = run.con.execute(
        f"""
        SELECT zone, floor((ts - ?) / ?)::BIGINT AS k, count(*) FILTER (WHERE NOT {REQUEST_OK_SQL})
        FROM requests GROUP BY ALL ORDER BY 1, 2
        """,
        [t0, b],
    ).fetchall()
    by_zone: dict[str, dict[int, int]] = {}
    for z, k, c in rows:
        by_zone.setdefault(z or "?", {})[int(k)] = int(c)
    n = int((t1 - t0) // b) + 1
    series = [
        Series(z, ZONE_COLORS[i % len(ZONE_COLORS)], [(t0 + (k + 0.5) * b, float(d.get(k, 0))) for k in range(n)])
        for i, (z, d) in enumerate(sorted(by_zone.items()))
    ]
    return line_chart(f"Failed user requests per {b:g}s, by entry zone", series, t0, t1, markers)


def _flow_windows(v: Verdict, t0: float, t1: float) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    faults = sorted(v.faults, key=lambda f: f.inject)
    for i, f in enumerate(faults):
        prev_restore = faults[i - 1].restore if i else None
        prev = prev_restore if prev_restore is not None else t0
        end = f.restore if f.restore is not None else t1
        nxt = faults[i + 1].inject if i + 1 < len(faults) else t1
        out.append((f"before {f.fault}", min(prev, f.inject), f.inject))
        out.append((f"during {f.fault}", f.inject, end))
        if f.restore is not None:
            out.append((f"after {f.fault}", f.restore, max(nxt, f.restore)))
    if not faults:
        out.append(("whole run", t0, t1))
    return out


def _flow_maps(run: RunData, v: Verdict, t0: float, t1: float) -> str:
    zones = [z.name for z in run.topology.zones]
    maps = []
    for name, lo, hi in _flow_windows(v, t0, t1):
        rows = run.con.execute(
            f"""
            SELECT caller_zone, coalesce(serving_zone, CASE WHEN coalesce(upstream_host, '') = '' THEN '{NO_HOST}'
                   ELSE 'unattributed' END), count(*), bool_or({HUB_VIOLATION_SQL})
            FROM hops WHERE ts >= ? AND ts < ? GROUP BY 1, 2 ORDER BY 1, 2
            """,
            [lo, hi],
        ).fetchall()
        flows = [(str(a), str(b_), int(n), bool(bad)) for a, b_, n, bad in rows]
        left = [z for z in zones if any(f[0] == z for f in flows)] + sorted({f[0] for f in flows} - set(zones))
        right = zones + sorted({f[1] for f in flows} - set(zones))
        title = f"{name}: {iso(lo)} - {iso(hi)}" + ("" if flows else " (no traffic)")
        maps.append(flow_map(title, flows, left, right))
    return "\n".join(maps)


def render_html(run_dir: Path, verdict: Verdict) -> str:
    """The page as a string (what `write_report` writes)."""
    run = load_run(run_dir)
    try:
        t0 = run.start if run.start is not None else 0.0
        t1 = run.end if run.end is not None and run.end > t0 else t0 + 1.0
        b = _bucket(t1 - t0)
        markers = _markers(verdict)
        body = [
            _verdict_html(verdict),
            "<h2>Serving zone over time, per caller zone and upstream</h2>",
            f'<div class="grid-wrap">{_share_charts(run, t0, t1, b, markers)}</div>',
            "<h2>User requests</h2>",
            f'<div class="grid-wrap">{_latency_chart(run, t0, t1, b, markers)}\n'
            f"{_error_chart(run, t0, t1, b, markers)}</div>",
            "<h2>Zone-to-zone flows (caller zone &rarr; serving zone)</h2>",
            "<p>Red: a hop between two edge zones, or from the Region to an edge zone (hub-and-spoke violation).</p>",
            f'<div class="grid-wrap">{_flow_maps(run, verdict, t0, t1)}</div>',
        ]
    finally:
        run.con.close()
    title = f"edge-harness report: {'PASS' if verdict.passed else 'FAIL'} - {run_dir.name}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(run_dir: Path | str, verdict: Verdict | None = None) -> Path:
    """Write `run_dir/report.html`; verifies the run first unless `verdict` is given."""
    path = Path(run_dir)
    v = verdict if verdict is not None else verify(path)
    out = path / "report.html"
    out.write_text(render_html(path, v), encoding="utf-8")
    return out
