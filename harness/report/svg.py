"""Tiny inline-SVG chart builders for the report.

Hand-written rather than a plotting library because the page must be fully
self-contained (no JS, CSS or fonts from anywhere) and viewable from a copied
run directory years later; a few line/area charts and a flow map do not
justify a dependency. The `<svg>` elements carry no `xmlns` (HTML5 inline SVG
does not need it), so the page contains no URL at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

W, H = 640, 200
ML, MR, MT, MB = 48, 12, 34, 26


@dataclass(frozen=True)
class Marker:
    """A chaos marker: inject at `start`, restore at `end` (None: never restored)."""

    label: str
    start: float
    end: float | None


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    points: Sequence[tuple[float, float | None]]  # (t, y); None = gap


def _x(t: float, t0: float, t1: float) -> float:
    return ML + (t - t0) / (t1 - t0 or 1.0) * (W - ML - MR)


def _y(v: float, y0: float, y1: float) -> float:
    return H - MB - (v - y0) / (y1 - y0 or 1.0) * (H - MT - MB)


def _fmt_t(t: float, t0: float) -> str:
    d = t - t0
    return f"{d:.0f}s" if abs(d) < 600 else f"{d / 60:.0f}m"


def _frame(title: str, t0: float, t1: float, y0: float, y1: float, y_fmt: str, markers: Sequence[Marker]) -> list[str]:
    out = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(title)}">',
        f'<text x="{ML}" y="12" class="title">{escape(title)}</text>',
        f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" class="plot"/>',
    ]
    for i in range(5):
        v = y0 + (y1 - y0) * i / 4
        y = _y(v, y0, y1)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ML - 4}" y="{y + 3:.1f}" class="ytick">{escape(y_fmt.format(v))}</text>')
    for i in range(6):
        t = t0 + (t1 - t0) * i / 5
        x = _x(t, t0, t1)
        out.append(f'<text x="{x:.1f}" y="{H - 8}" class="xtick">{escape(_fmt_t(t, t0))}</text>')
    for m in markers:
        xs = _x(max(m.start, t0), t0, t1)
        xe = _x(min(m.end if m.end is not None else t1, t1), t0, t1)
        out.append(
            f'<rect x="{xs:.1f}" y="{MT}" width="{max(xe - xs, 1):.1f}" height="{H - MT - MB}" class="fault">'
            f"<title>{escape(m.label)}</title></rect>"
        )
        out.append(f'<line x1="{xs:.1f}" x2="{xs:.1f}" y1="{MT}" y2="{H - MB}" class="inject"/>')
        if m.end is not None:
            out.append(f'<line x1="{xe:.1f}" x2="{xe:.1f}" y1="{MT}" y2="{H - MB}" class="restore"/>')
        out.append(f'<text x="{xs + 2:.1f}" y="{MT + 9}" class="mlabel">{escape(m.label)}</text>')
    return out


def _legend(series: Sequence[Series]) -> list[str]:
    out = []
    x = W - MR
    for s in reversed(series):
        w = 12 + 6 * len(s.label)
        x -= w
        out.append(f'<rect x="{x}" y="18" width="8" height="8" fill="{s.color}"/>')
        out.append(f'<text x="{x + 10}" y="26" class="legend">{escape(s.label)}</text>')
    return out


def line_chart(
    title: str,
    series: Sequence[Series],
    t0: float,
    t1: float,
    markers: Sequence[Marker],
    y_fmt: str = "{:.0f}",
    y_max: float | None = None,
) -> str:
    ys = [y for s in series for _, y in s.points if y is not None]
    top = y_max if y_max is not None else (max(ys) if ys else 1.0)
    top = top * 1.05 if y_max is None and top > 0 else (top or 1.0)
    out = _frame(title, t0, t1, 0.0, top, y_fmt, markers)
    for s in series:
        segs: list[list[str]] = [[]]
        for t, y in s.points:
            if y is None:
                segs.append([])
                continue
            segs[-1].append(f"{_x(t, t0, t1):.1f},{_y(y, 0.0, top):.1f}")
        for seg in segs:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="1.5" fill="{s.color}"/>')
            elif seg:
                out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{s.color}" stroke-width="1.5"/>')
    out += _legend(series)
    out.append("</svg>")
    return "\n".join(out)


def stacked_share_chart(title: str, series: Sequence[Series], t0: float, t1: float, markers: Sequence[Marker]) -> str:
    """Shares (0..1) per time bucket, stacked in series order; all series share the same time points."""
    out = _frame(title, t0, t1, 0.0, 1.0, "{:.0%}", markers)
    if series and series[0].points:
        times = [t for t, _ in series[0].points]
        base = [0.0] * len(times)
        for s in series:
            top = [b + (y or 0.0) for b, (_, y) in zip(base, s.points, strict=True)]
            if any(y for _, y in s.points):
                upper = [f"{_x(t, t0, t1):.1f},{_y(v, 0, 1):.1f}" for t, v in zip(times, top, strict=True)]
                lower = [
                    f"{_x(t, t0, t1):.1f},{_y(v, 0, 1):.1f}"
                    for t, v in zip(reversed(times), reversed(base), strict=True)
                ]
                out.append(f'<polygon points="{" ".join(upper + lower)}" fill="{s.color}" opacity="0.85"/>')
            base = top
    out += _legend(series)
    out.append("</svg>")
    return "\n".join(out)


def flow_map(title: str, flows: Sequence[tuple[str, str, int, bool]], left: Sequence[str], right: Sequence[str]) -> str:
    """Caller zone (left) -> serving zone (right) with counts; `bad` flows are drawn red."""
    row_h = 22
    height = MT + 16 + row_h * max(len(left), len(right), 1)
    width = 520
    lx, rx = 170, width - 170
    out = [
        f'<svg class="flow" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="4" y="14" class="title">{escape(title)}</text>',
    ]
    ly = {z: MT + 12 + i * row_h for i, z in enumerate(left)}
    ry = {z: MT + 12 + i * row_h for i, z in enumerate(right)}
    biggest = max((n for *_, n, _ in flows), default=1)
    for src, dst, n, bad in flows:
        if src not in ly or dst not in ry:
            continue
        w = 1.0 + 5.0 * math.log1p(n) / math.log1p(biggest or 1)
        cls = "bad" if bad else "ok"
        y1, y2 = ly[src], ry[dst]
        out.append(
            f'<path d="M{lx},{y1} C{(lx + rx) / 2},{y1} {(lx + rx) / 2},{y2} {rx},{y2}" class="flow-{cls}" '
            f'stroke-width="{w:.1f}"><title>{escape(src)} -&gt; {escape(dst)}: {n}</title></path>'
        )
        out.append(f'<text x="{(lx + rx) / 2:.0f}" y="{(y1 + y2) / 2 - 2:.0f}" class="count flow-{cls}-t">{n}</text>')
    for z, y in ly.items():
        out.append(f'<text x="{lx - 6}" y="{y + 4}" class="zl">{escape(z)}</text>')
    for z, y in ry.items():
        out.append(f'<text x="{rx + 6}" y="{y + 4}" class="zr">{escape(z)}</text>')
    out.append("</svg>")
    return "\n".join(out)
