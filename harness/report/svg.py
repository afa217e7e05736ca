"""Inline-SVG charts for the report: time charts on one clock axis, the zone timeline, flow maps.

Hand-written rather than a plotting library because the page must be fully
self-contained (no JS, CSS or fonts from anywhere) and viewable from a copied
run directory years later. The `<svg>` elements carry no `xmlns` (HTML5 inline
SVG does not need it), so the page contains no URL at all.

Readability is designed in, not hoped for:
- every label goes through `Canvas.text`, which estimates its box from a
  monospace font's advance (an over-estimate for every common monospace
  font) and refuses a label that would overlap another or leave the SVG. A
  refused optional label (a fault's name where there is no room) falls back to
  a shorter one (its number in the fault table) or to the tooltip only, so two
  labels are never drawn over each other whatever the run looks like;
- every time chart and the timeline use the same `TimeAxis` geometry (same
  width, same plot margins, UTC clock-time ticks), so one instant is at the
  same x everywhere and the inline script can draw one guide through all;
- faults are drawn in a strip above the plot (never as translucent shading
  over filled areas, where they vanish), with dark haloed lines through the
  plot at inject and restore.
The layout test (tests/test_report_layout.py) measures the result in Chromium.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

FONT = 10.0  # px, chart text (CSS: svg text)
TITLE_FONT = 12.0  # px, chart titles (CSS: svg .title)
ADVANCE = 0.62  # estimated advance of one character, in em; monospace fonts use 0.55-0.61
ASCENT, DESCENT = 0.95, 0.3  # conservative box above/below the baseline, in em

W = 660  # every time chart and the timeline: the same width and plot margins (one time axis)
ML, MR = 60, 20
PLOT_H = 96
LINE = 14.0  # text line pitch for 10 px text

KIND_COLORS = {
    "service-down": "#ef6c00",
    "zone-down": "#5d4037",
    "link-degraded": "#7b1fa2",
    "partition": "#ad1457",
}
KIND_LABELS = {
    "service-down": "service down",
    "zone-down": "zone down",
    "link-degraded": "link degraded",
    "partition": "partition",
}
FAILOVER_COLOR = "#0d47a1"
RECOVERY_COLOR = "#1b5e20"
PROBLEM_COLOR = "#d50000"
CLOCK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def text_width(s: str, size: float = FONT) -> float:
    return len(s) * ADVANCE * size


def clock(ts: float, ms: bool = False) -> str:
    """UTC clock time, the page's one time format (the date is stated once in the header)."""
    d = datetime.fromtimestamp(ts, tz=UTC)
    return d.strftime("%H:%M:%S.%f")[:-3] if ms else d.strftime("%H:%M:%S")


def fit(s: str, width: float, size: float = FONT) -> str:
    """`s` cut with an ellipsis to fit `width` (the full text goes into the element's tooltip)."""
    n = int(width / (ADVANCE * size))
    return s if len(s) <= n else s[: max(n - 1, 1)] + "…"


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


@dataclass
class Canvas:
    """An SVG under construction that knows where its labels are.

    `text()` places a label only if its estimated box lies inside the SVG and
    overlaps no label placed before it; it returns whether it did. Callers
    place what must be read first (titles, legends, axes), then optional
    labels in order of importance with their fallbacks.
    """

    width: float
    height: float
    parts: list[str] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    def add(self, s: str) -> None:
        self.parts.append(s)

    def box(self, x: float, y: float, s: str, size: float, anchor: str) -> tuple[float, float, float, float]:
        w = text_width(s, size)
        left = x if anchor == "start" else x - w / 2 if anchor == "middle" else x - w
        return (left, y - ASCENT * size, left + w, y + DESCENT * size)

    def text(
        self,
        x: float,
        y: float,
        s: str,
        cls: str = "",
        anchor: str = "start",
        size: float = FONT,
        title: str | None = None,
        attrs: str = "",
    ) -> bool:
        b = self.box(x, y, s, size, anchor)
        if not self._fits(b):
            return False
        self.boxes.append(b)
        a = f' text-anchor="{anchor}"' if anchor != "start" else ""
        c = f' class="{cls}"' if cls else ""
        t = f"<title>{escape(title)}</title>" if title else ""
        self.add(f'<text x="{_f(x)}" y="{_f(y)}"{c}{a}{attrs}>{t}{escape(s)}</text>')
        return True

    def _fits(self, b: tuple[float, float, float, float], pad: float = 1.5) -> bool:
        if b[0] < 0.5 or b[1] < 0.5 or b[2] > self.width - 0.5 or b[3] > self.height - 0.5:
            return False
        return all(not (b[0] < o[2] + pad and o[0] < b[2] + pad and b[1] < o[3] and o[1] < b[3]) for o in self.boxes)

    def svg(self, cls: str, label: str, attrs: str = "") -> str:
        head = (
            f'<svg class="{cls}" viewBox="0 0 {_f(self.width)} {_f(self.height)}" width="{_f(self.width)}" '
            f'height="{_f(self.height)}" role="img" aria-label="{escape(label)}"{attrs}>'
        )
        return "\n".join([head, *self.parts, "</svg>"])


@dataclass(frozen=True)
class TimeAxis:
    """The run's one time axis: [t0, t1] onto [x0, x1] of a `W`-wide SVG, ticks in UTC clock time."""

    t0: float
    t1: float
    x0: float = ML
    x1: float = W - MR

    def x(self, t: float) -> float:
        t = min(max(t, self.t0), self.t1)
        return self.x0 + (t - self.t0) / ((self.t1 - self.t0) or 1.0) * (self.x1 - self.x0)

    def ticks(self) -> list[tuple[float, str]]:
        """Clock ticks on round UTC instants, spaced so their labels never touch."""
        span = (self.t1 - self.t0) or 1.0
        width = self.x1 - self.x0
        for step in CLOCK_STEPS:
            label_w = text_width("00:00:00" if step < 60 else "00:00")
            if span / step * (label_w + 16) <= width:
                break
        fmt = "%H:%M:%S" if step < 60 else "%H:%M"
        first = math.ceil(self.t0 / step) * step
        out = []
        t = float(first)
        while t <= self.t1 + 1e-9:
            out.append((t, datetime.fromtimestamp(t, tz=UTC).strftime(fmt)))
            t += step
        if len(out) < 2:  # a run shorter than one step: label its two ends
            out = [(self.t0, clock(self.t0)), (self.t1, clock(self.t1))]
        return out

    def data_attrs(self) -> str:
        return f' data-t0="{self.t0!r}" data-t1="{self.t1!r}" data-x0="{_f(self.x0)}" data-x1="{_f(self.x1)}"'


@dataclass(frozen=True)
class FaultMark:
    """A fault as the charts draw it (see html.py for where each figure comes from)."""

    num: int  # its row in the fault table
    name: str
    kind: str
    zone: str
    start: float
    end: float | None  # None: never restored
    passed: bool
    title: str  # tooltip: name, kind, clock times, results
    failover: tuple[float, float | None, str] | None = None  # (instant, resolution, tooltip)
    recovery: tuple[float, float | None, str] | None = None


@dataclass(frozen=True)
class Series:
    """One series over the buckets: `values[k]` for bucket k (None: no data)."""

    label: str
    color: str
    values: Sequence[float | None]


def value_ticks(top: float, integer: bool, n: int = 4) -> list[float]:
    """Round ticks from 0 covering `top`: 1-2-5 steps, at least 1 apart for counts (never "1, 1, 0, 0")."""
    # counts: at least 0..1; an empty chart: 0..1; values (ms): no finer than 0.01
    top = max(top, 1.0) if integer or top <= 0 else max(top, 0.01)
    raw = top / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    k = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(k + 1)]


def _tick_label(v: float, step: float) -> str:
    """As many decimals as the step needs (2.5 -> one, 0.25 -> two), so labels are exact and distinct."""
    frac = f"{step:.6f}".rstrip("0").split(".")[1]
    return f"{v:,.{len(frac)}f}"


def _legend(c: Canvas, items: Sequence[tuple[str, str, str]], y: float, x0: float = ML) -> float:
    """Swatches + labels from x0, wrapping; returns the baseline of the last row. items: (label, color, shape)."""
    x = x0
    for label, color, shape in items:
        w = 12 + text_width(label) + 12
        if x + w > c.width - 4 and x > x0:
            x, y = x0, y + LINE
        c.add(_swatch(x, y - 8, color, shape))
        c.text(x + 12, y, label, "legend")
        x += w
    return y


def _swatch(x: float, y: float, color: str, shape: str) -> str:
    if shape == "line":
        return (
            f'<line x1="{_f(x)}" x2="{_f(x + 9)}" y1="{_f(y + 4)}" y2="{_f(y + 4)}" stroke="{color}" stroke-width="2"/>'
        )
    if shape == "down":
        return f'<path d="M{_f(x)},{_f(y)}h9l-4.5,8z" fill="{color}"/>'
    if shape == "up":
        return f'<path d="M{_f(x)},{_f(y + 8)}h9l-4.5,-8z" fill="{color}"/>'
    if shape == "diamond":
        return f'<path d="M{_f(x + 4.5)},{_f(y)}l4.5,4l-4.5,4l-4.5,-4z" fill="{color}"/>'
    return f'<rect x="{_f(x)}" y="{_f(y)}" width="9" height="8" fill="{color}"/>'


def _x_axis(c: Canvas, axis: TimeAxis, y_top: float, y_bottom: float, y_label: float) -> None:
    for t, label in axis.ticks():
        x = axis.x(t)
        c.add(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(y_top)}" y2="{_f(y_bottom)}" class="grid"/>')
        c.text(x, y_label, label, "xtick", anchor="middle", title=f"{clock(t)} UTC")


def _fault_strip(c: Canvas, axis: TimeAxis, faults: Sequence[FaultMark], y: float, h: float) -> None:
    """Faults as bars in a strip (labels: name inside or beside the bar if there is room, else its number)."""
    for f in faults:
        xs = axis.x(f.start)
        xe = axis.x(f.end if f.end is not None else axis.t1)
        w = max(xe - xs, 2.0)
        stroke = ' stroke="#b71c1c" stroke-width="1.5"' if not f.passed else ""
        c.add(
            f'<rect x="{_f(xs)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" fill="{KIND_COLORS.get(f.kind, "#777")}"'
            f'{stroke} data-fault="{escape(f.name)}"><title>{escape(f.title)}</title></rect>'
        )
    base = y + h / 2 + 3.5
    bars = [(f.num, axis.x(f.start), max(axis.x(f.end if f.end is not None else axis.t1), axis.x(f.start) + 2.0))
            for f in faults]  # fmt: skip

    def clear(num: int, a: float, b: float) -> bool:
        """No other fault's bar under [a, b]: a label is never drawn across another bar."""
        return all(n == num or e <= a or s >= b for n, s, e in bars)

    for f in sorted(faults, key=lambda f: f.start):
        xs = axis.x(f.start)
        xe = max(axis.x(f.end if f.end is not None else axis.t1), xs + 2.0)
        for label in (f"#{f.num} {f.name}", f"#{f.num}"):
            w = text_width(label)
            if (
                w + 4 <= xe - xs
                and clear(f.num, xs, xs + w + 4)
                and c.text(xs + 2, base, label, "flabel", title=f.title)
            ):
                break
            if clear(f.num, xe, xe + w + 5) and c.text(xe + 3, base, label, "flabel-out", title=f.title):
                break


def _fault_lines(c: Canvas, axis: TimeAxis, faults: Sequence[FaultMark], y0: float, y1: float) -> None:
    """Inject (dashed) and restore (dotted) lines through the plot, dark on a white halo: visible on any fill."""
    for f in faults:
        for t, cls in ((f.start, "inject"), (f.end, "restore")):
            if t is None:
                continue
            x = _f(axis.x(t))
            c.add(f'<line x1="{x}" x2="{x}" y1="{_f(y0)}" y2="{_f(y1)}" class="halo"/>')
            c.add(
                f'<line x1="{x}" x2="{x}" y1="{_f(y0)}" y2="{_f(y1)}" class="{cls}" data-fault="{escape(f.name)}">'
                f"<title>{escape(f.title)}</title></line>"
            )


def _step_path(xs: Sequence[float], upper: Sequence[float | None], lower: Sequence[float]) -> str:
    """An area between `lower` and `upper`, constant over each bucket [xs[k], xs[k+1]]; gaps where upper is None.

    Written with H/V commands: about 16 bytes per bucket, whatever the number of records.
    """
    out: list[str] = []
    n = len(upper)
    k = 0
    while k < n:
        if upper[k] is None or upper[k] == lower[k]:
            k += 1
            continue
        j = k
        while j < n and upper[j] is not None and upper[j] != lower[j]:
            j += 1
        seg = [f"M{_f(xs[k])},{_f(lower[k])}V{_f(upper[k])}H{_f(xs[k + 1])}"]  # type: ignore[arg-type]
        for i in range(k + 1, j):
            seg.append(f"V{_f(upper[i])}H{_f(xs[i + 1])}")  # type: ignore[arg-type]
        seg.append(f"V{_f(lower[j - 1])}")
        for i in range(j - 1, k, -1):
            seg.append(f"H{_f(xs[i])}V{_f(lower[i - 1])}")
        seg.append("Z")
        out.append("".join(seg))
        k = j
    return "".join(out)


def time_chart(
    *,
    title: str,
    zone: str,
    axis: TimeAxis,
    bucket_s: float,
    kind: str,
    series: Sequence[Series],
    faults: Sequence[FaultMark],
    integer: bool = False,
    unit: str = "",
    empty: str = "no traffic",
) -> str:
    """One chart on the shared time axis.

    kind: `share` (stacked shares 0..1 per bucket), `bars` (stacked counts per
    bucket, integer axis), `lines` (one line per series through bucket centres).
    Only `faults` (those of the chart's zone) are drawn: strip above, lines through.
    """
    c = Canvas(W, 10_000)  # the height is set once the legend's rows are known
    c.text(4, 15, fit(title, W - 8, TITLE_FONT), "title", size=TITLE_FONT, title=title)
    legend_items = [(s.label, s.color, "line" if kind == "lines" else "box") for s in series]
    y = _legend(c, legend_items, 31)
    strip_y = y + 7
    strip_h = 14.0
    plot_top = strip_y + strip_h + 5 if faults else y + 8
    plot_bottom = plot_top + PLOT_H
    c.height = plot_bottom + 20
    n = max((len(s.values) for s in series), default=0)
    xs = [axis.x(axis.t0 + k * bucket_s) for k in range(n + 1)]
    # y scale
    if kind == "share":
        ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
        labels = ["0%", "25%", "50%", "75%", "100%"]
    else:
        if kind == "bars":
            tops = [sum(s.values[k] or 0.0 for s in series) for k in range(n)]
        else:
            tops = [v for s in series for v in s.values if v is not None]
        ticks = value_ticks(max(tops, default=0.0), integer)
        step = ticks[1] - ticks[0]
        labels = [_tick_label(v, step) for v in ticks]
    top = ticks[-1] or 1.0

    def ypos(v: float) -> float:
        return plot_bottom - v / top * (plot_bottom - plot_top)

    c.add(
        f'<rect x="{_f(axis.x0)}" y="{_f(plot_top)}" width="{_f(axis.x1 - axis.x0)}" height="{_f(PLOT_H)}" '
        f'class="plot"/>'
    )
    for v, label in zip(ticks, labels, strict=True):
        yy = ypos(v)
        c.add(f'<line x1="{_f(axis.x0)}" x2="{_f(axis.x1)}" y1="{_f(yy)}" y2="{_f(yy)}" class="grid"/>')
        c.text(axis.x0 - 5, yy + 3.5, label + (unit if v == ticks[-1] and unit else ""), "ytick", anchor="end")
    _x_axis(c, axis, plot_top, plot_bottom, plot_bottom + 14)
    has_data = any(v is not None for s in series for v in s.values)
    if kind in ("share", "bars"):
        base = [0.0] * n
        for s in series:
            upper_v = [None if s.values[k] is None else base[k] + (s.values[k] or 0.0) for k in range(n)]
            upper = [None if u is None else ypos(u) for u in upper_v]
            lower = [ypos(b) for b in base]
            d = _step_path(xs, upper, lower)
            if d:
                c.add(f'<path d="{d}" fill="{s.color}"><title>{escape(s.label)}</title></path>')
            base = [u if u is not None else b for u, b in zip(upper_v, base, strict=True)]
    else:
        for s in series:
            segs: list[list[str]] = [[]]
            for k, val in enumerate(s.values):
                if val is None:
                    segs.append([])
                    continue
                segs[-1].append(f"{_f((xs[k] + xs[k + 1]) / 2)},{_f(ypos(val))}")
            for seg in segs:
                if len(seg) == 1:
                    cx, cy = seg[0].split(",")
                    c.add(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{s.color}"/>')
                elif seg:
                    c.add(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{s.color}" stroke-width="1.6"/>')
    if not has_data:
        c.text((axis.x0 + axis.x1) / 2, (plot_top + plot_bottom) / 2 + 4, empty, "empty", anchor="middle")
    if faults:
        c.add(
            f'<rect x="{_f(axis.x0)}" y="{_f(strip_y)}" width="{_f(axis.x1 - axis.x0)}" height="{_f(strip_h)}" '
            f'class="strip"/>'
        )
        _fault_strip(c, axis, faults, strip_y, strip_h)
        _fault_lines(c, axis, faults, plot_top, plot_bottom)
    c.add(f'<line class="guide" x1="0" x2="0" y1="{_f(plot_top)}" y2="{_f(plot_bottom)}" visibility="hidden"/>')
    cls = "tchart counts" if integer else "tchart"
    return c.svg(cls, title, axis.data_attrs() + f' data-zone="{escape(zone)}"')


@dataclass(frozen=True)
class TimelineRow:
    zone: str
    label: str  # e.g. "us-west-2-lax-1a (local zone)"
    note: str  # e.g. "2 faults, 1 failed"
    faults: Sequence[FaultMark]
    errors: Sequence[tuple[int, float, str]] = ()  # (bucket, failed share 0..1, tooltip)
    problems: Sequence[tuple[float, str]] = ()  # (ts, tooltip): first offending records


MAX_LANES = 3


def _pack_labels(axis: TimeAxis, faults: Sequence[FaultMark]) -> list[tuple[FaultMark, str, float, int]]:
    """Fault labels in lanes above a timeline row: (fault, text, x, lane); a label that fits nowhere is left out.

    The full name if some lane has room for it, else `#n`; the bar keeps its tooltip either way.
    """
    lanes: list[list[tuple[float, float]]] = [[] for _ in range(MAX_LANES)]
    out = []
    for f in sorted(faults, key=lambda f: (f.start, f.num)):
        x = axis.x(f.start)
        for text in (f"#{f.num} {f.name}", f"#{f.num}"):
            w = text_width(text)
            left = min(x, axis.x1 - w)
            if left < axis.x0 - ML + 2:
                continue
            placed = False
            for i, lane in enumerate(lanes):
                if all(left >= b + 8 or left + w + 8 <= a for a, b in lane):
                    lane.append((left, left + w))
                    out.append((f, text, left, i))
                    placed = True
                    break
            if placed:
                break
    return out


def timeline(axis: TimeAxis, rows: Sequence[TimelineRow], bucket_s: float) -> str:
    """One row per zone: faults as bars (labels packed in lanes), failover and recovery marks, failed requests."""
    c = Canvas(W, 10_000)
    c.text(4, 15, "Timeline per zone (UTC)", "title", size=TITLE_FONT)
    kinds = sorted({f.kind for r in rows for f in r.faults}, key=list(KIND_COLORS).index)
    items = [(KIND_LABELS[k], KIND_COLORS[k], "box") for k in kinds]
    items += [
        ("failover", FAILOVER_COLOR, "down"),
        ("recovery", RECOVERY_COLOR, "up"),
        ("failed requests", "#c62828", "box"),
        ("violation", PROBLEM_COLOR, "diamond"),
    ]
    y = _legend(c, items, 31) + 8
    top = y
    for r in rows:
        labels = _pack_labels(axis, r.faults)
        lanes = max((lane for *_, lane in labels), default=-1) + 1
        c.add(f'<g data-row="{escape(r.zone)}">')
        name_y = y + 11
        c.text(axis.x0, name_y, r.label, "zname", title=r.label)
        c.text(axis.x1, name_y, r.note, "znote", anchor="end")
        lane_y0 = name_y + LINE
        for f, text, x, lane in labels:
            c.text(x, lane_y0 + lane * LINE, text, "flabel-out", title=f.title)
        band_y = name_y + 5 + lanes * LINE
        band_h = 14.0
        c.add(
            f'<rect x="{_f(axis.x0)}" y="{_f(band_y)}" width="{_f(axis.x1 - axis.x0)}" height="{_f(band_h)}" '
            f'class="strip"/>'
        )
        for f in r.faults:
            xs = axis.x(f.start)
            xe = axis.x(f.end if f.end is not None else axis.t1)
            stroke = ' stroke="#b71c1c" stroke-width="1.5"' if not f.passed else ""
            c.add(
                f'<rect x="{_f(xs)}" y="{_f(band_y)}" width="{_f(max(xe - xs, 2.0))}" height="{_f(band_h)}" '
                f'fill="{KIND_COLORS.get(f.kind, "#777")}"{stroke} data-fault="{escape(f.name)}">'
                f"<title>{escape(f.title)}</title></rect>"
            )
        for f in r.faults:
            for mark, cls, color in (
                (f.failover, "failover", FAILOVER_COLOR),
                (f.recovery, "recovery", RECOVERY_COLOR),
            ):
                if mark is None:
                    continue
                t, res, tip = mark
                x = axis.x(t)
                if res:
                    xr = axis.x(t - res)
                    yy = band_y + band_h / 2
                    c.add(
                        f'<line x1="{_f(xr)}" x2="{_f(x)}" y1="{_f(yy)}" y2="{_f(yy)}" stroke="{color}" '
                        f'stroke-width="2"/>'
                    )
                if cls == "failover":
                    shape = f"M{_f(x - 4.5)},{_f(band_y - 1)}h9l-4.5,8z"
                else:
                    shape = f"M{_f(x - 4.5)},{_f(band_y + band_h + 1)}h9l-4.5,-8z"
                c.add(
                    f'<path d="{shape}" fill="{color}" stroke="#fff" stroke-width="0.8" class="{cls}" '
                    f'data-fault="{escape(f.name)}"><title>{escape(tip)}</title></path>'
                )
        err_y = band_y + band_h + 3
        for k, share, tip in r.errors:
            x = axis.x(axis.t0 + k * bucket_s)
            x2 = axis.x(axis.t0 + (k + 1) * bucket_s)
            c.add(
                f'<rect x="{_f(x)}" y="{_f(err_y)}" width="{_f(max(x2 - x, 1.0))}" height="6" fill="#c62828" '
                f'fill-opacity="{0.25 + 0.75 * min(share, 1.0):.2f}"><title>{escape(tip)}</title></rect>'
            )
        for ts, tip in r.problems:
            x = axis.x(ts)
            c.add(
                f'<path d="M{_f(x)},{_f(band_y + 2)}l5,5l-5,5l-5,-5z" fill="{PROBLEM_COLOR}" stroke="#fff" '
                f'stroke-width="0.8" class="problem"><title>{escape(tip)}</title></path>'
            )
        c.add("</g>")
        y = err_y + 6 + 8
    c.height = y + 20
    _x_axis(c, axis, top, y, y + 12)
    c.add(f'<line class="guide" x1="0" x2="0" y1="{_f(top)}" y2="{_f(y)}" visibility="hidden"/>')
    return c.svg("timeline", "Timeline per zone", axis.data_attrs())


def flow_map(
    *,
    title: str,
    subtitle: str,
    lo: float,
    hi: float,
    flows: Sequence[tuple[str, str, int, bool]],
    left: Sequence[str],
    right: Sequence[str],
) -> str:
    """Caller zone (left) -> serving zone (right) for one time window; `bad` flows red.

    Each caller zone gets one line per destination, with the count written at
    the start of its own curve, so counts never share a position; curves may
    cross, text never does.
    """
    outs: dict[str, list[tuple[str, int, bool]]] = {z: [] for z in left}
    rorder = {z: i for i, z in enumerate(right)}
    for src, dst, n, bad in flows:
        if src in outs and dst in rorder:
            outs[src].append((dst, n, bad))
    for z in outs:
        outs[z].sort(key=lambda o: rorder[o[0]])
    lw = max((text_width(z) for z in left), default=40.0)
    rw = max((text_width(z) for z in right), default=40.0)
    cw = max((text_width(f"{n:,}") for *_, n, _ in flows), default=10.0)
    lx = 6 + lw  # right edge of the caller labels
    cx = lx + 8  # counts
    sx = cx + cw + 6  # curves start
    ex = sx + 120  # curves end
    rx = ex + 6  # serving labels
    width = max(rx + rw + 6, text_width(subtitle) + 12, 300.0)
    top = 44.0
    y = top
    ly: dict[str, float] = {}
    lanes: list[tuple[float, str, int, bool, str]] = []
    for z in left:
        ly[z] = y + 10
        for i, (dst, n, bad) in enumerate(outs[z] or [("", 0, False)]):
            if dst:
                lanes.append((y + 10 + i * LINE, dst, n, bad, z))
        y += max(len(outs[z]), 1) * LINE + 6
    height_left = y
    pitch = max(LINE + 4, (height_left - top) / max(len(right), 1))
    ry = {z: top + 10 + i * pitch for i, z in enumerate(right)}
    height = max(height_left, top + 10 + len(right) * pitch) + 8
    c = Canvas(width, height)
    c.text(4, 15, fit(title, width - 8, 11.0), "title", size=11.0, title=title)
    c.text(4, 31, fit(subtitle, width - 8), "sub", title=subtitle)
    if not flows:
        c.text(4, top + 12, "no hops in this window", "empty")
    biggest = max((n for *_, n, _ in flows), default=1)
    for yy, dst, n, bad, src in lanes:
        y2 = ry[dst]
        w = 1.0 + 4.0 * math.log1p(n) / math.log1p(biggest or 1)
        cls = "bad" if bad else "in" if src == dst else "ok"
        mid = (sx + ex) / 2
        y1 = yy - 3.5
        c.add(
            f'<path d="M{_f(sx)},{_f(y1)} C{_f(mid)},{_f(y1)} {_f(mid)},{_f(y2 - 3.5)} {_f(ex)},{_f(y2 - 3.5)}" '
            f'class="flow-{cls}" stroke-width="{w:.1f}"><title>{escape(src)} -&gt; {escape(dst)}: {n:,}</title></path>'
        )
        c.text(cx, yy, f"{n:,}", f"count flow-{cls}-t", title=f"{src} -> {dst}: {n:,} hops")
    for z, yy in ly.items():
        c.text(lx, yy, z, "zl", anchor="end")
    for z, yy in ry.items():
        c.text(rx, yy, z, "zr")
    return c.svg("flow", title, f' data-lo="{lo!r}" data-hi="{hi!r}"')
