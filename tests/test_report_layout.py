"""The report is readable, measured in a real browser: no two labels overlap, nothing is clipped.

Issue 12 item 4: a report that only "renders" can still be unreadable (fault
labels drawn over each other, flow-map counts on top of each other, titles cut
off). So this test builds pages from synthetic runs of several sizes and
shapes (many faults, a burst of short pod kills, the 8-zone wide topology, a
three-hour run, a partial run without faults), opens each in headless
Chromium at 1400 px and 800 px wide, and measures with the browser's own
layout (tests/report_measure.js): the bounding box of every SVG <text> and of
every HTML text line. It fails when two texts of one chart overlap, when a
text sticks out of its SVG or the viewport, when chart text is scaled down
below 9 px, or when the page scrolls sideways. It also moves the pointer over
a chart and checks that the tooltip shows the clock time under it and that
every time chart draws its guide at once (one time axis).

The structural checks (per chart only its zone's faults, integer count axes,
one flow map per window, timeline marks, a page size bounded by buckets and
not by hops) read the page's markup and need no browser.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.report import write_report
from harness.report.svg import Canvas, TimeAxis, _tick_label, text_width, value_ticks
from harness.topology import load_topology
from harness.verify import Verdict, verify
from harness.verify.synth import FaultSpec, Scenario, write_run

REPO = Path(__file__).resolve().parents[1]
WIDE = REPO / "fixtures" / "topology-wide.yaml"
MEASURE_JS = Path(__file__).with_name("report_measure.js")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WIDTHS = (1400, 800)
LAX, LAS, PHX = "us-west-2-lax-1a", "us-west-2-las-1a", "us-west-2-phx-2a"
LONG_NAME = "kill-product-api-in-the-wavelength-zone-during-the-evening-peak-hour"


def _scenarios() -> dict[str, Scenario]:
    default = load_topology()
    wide = load_topology(WIDE)
    lzs = [z.name for z in wide.edge_zones]
    many = [
        FaultSpec(f"kill-product-api-{wide.short(z)}", "service-down", z, ("product-api",), 20 + 14 * i, 30 + 14 * i)
        for i, z in enumerate(lzs[:5])
    ]
    # a burst of short pod kills in one zone, 2 s apart: the labels cannot sit side by side
    many += [
        FaultSpec(f"burst-{k:02d}", "service-down", lzs[0], ("public-api",), 110 + 2 * k, 111 + 2 * k, 0.2, 0.2)
        for k in range(8)
    ]
    many += [
        FaultSpec(LONG_NAME, "service-down", lzs[5], ("product-api",), 140, 160, 1.0, 1.0),
        FaultSpec("zone-outage-den", "zone-down", lzs[4], (), 170, 190, 1.0, 2.0, entry_down=True),
        FaultSpec("slow-link-phx", "link-degraded", lzs[3], (), 172, 200, 0.0, 0.0),
        FaultSpec("partition-las", "partition", lzs[2], (), 205, 215, 0.0, 0.0),
        # overlapping faults in one zone
        FaultSpec("overlap-public-api-lax-1b", "service-down", lzs[1], ("public-api",), 220, 240, 1.0, 1.0),
        FaultSpec("overlap-product-api-lax-1b", "service-down", lzs[1], ("product-api",), 225, 235, 1.0, 1.0),
    ]
    return {
        "broken": Scenario(
            default,
            duration_s=90,
            rate_per_zone=3,
            misconfig="failover-to-lz",
            faults=[
                FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 15, 30, 1.0, 1.0),
                FaultSpec("zone-las", "zone-down", LAS, (), 40, 55, 0.0, 3.0, entry_down=True),
                FaultSpec("slow-link-phx", "link-degraded", PHX, (), 60, 75, 0.0, 0.0),
            ],
        ),
        "wide-many": Scenario(wide, duration_s=260, rate_per_zone=1.5, faults=many, seed=3),
        "long": Scenario(
            default,
            duration_s=3 * 3600,
            rate_per_zone=0.05,
            faults=[
                FaultSpec("kill-lax-morning", "service-down", LAX, ("product-api",), 1800, 1860, 1.0, 1.0),
                FaultSpec("kill-lax-again", "service-down", LAX, ("product-api",), 1900, 1960, 1.0, 1.0),
                FaultSpec("zone-las-noon", "zone-down", LAS, (), 5400, 5520, 0.0, 3.0, entry_down=True),
                FaultSpec("kill-phx-late", "service-down", PHX, ("product-api",), 9000, None, 1.0, 1.0),
            ],
        ),
        "partial-clean": Scenario(default, duration_s=25, rate_per_zone=2, run_status="interrupted", preflight=False),
    }


SCENARIOS = _scenarios()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Verdict]]:
    root = tmp_path_factory.mktemp("layout")
    out = {}
    for name, sc in SCENARIOS.items():
        d = write_run(root / name, sc)
        v = verify(d)
        write_report(d, v)
        out[name] = (d, v)
    return out


def _measure(page: Path, width: int, work: Path) -> dict[str, Any]:
    html = page.read_text(encoding="utf-8")
    probe = work / f"{page.parent.name}-{width}.html"
    probe.write_text(html.replace("</body>", f"<script>{MEASURE_JS.read_text()}</script></body>"), encoding="utf-8")
    dom = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={work / f'profile-{page.parent.name}-{width}'}",
            f"--window-size={width},1000",
            "--dump-dom",
            probe.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        text=True,
    ).stdout
    m = re.search(r'<pre id="eh-measure">(.*?)</pre>', dom, re.S)
    assert m, f"the measuring script did not run on {page} at {width} px"
    return dict(json.loads(unescape(m.group(1))))


@pytest.fixture(scope="module")
def measured(pages: dict[str, tuple[Path, Verdict]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (make deps installs it)")
    work = tmp_path_factory.mktemp("chromium")
    jobs = [(name, w) for name in pages for w in WIDTHS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda j: _measure(pages[j[0]][0] / "report.html", j[1], work), jobs)
        return {f"{name}@{w}": r for (name, w), r in zip(jobs, results, strict=True)}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_label_overlaps_or_clipping_in_chromium(measured: dict[str, Any], name: str, width: int) -> None:
    m = measured[f"{name}@{width}"]
    assert m["width"] == width, "chromium did not lay the page out at the asked width"
    assert m["svgs"] >= 4 and m["texts"] >= 50 and m["htmlTexts"] >= 50, m  # it measured a real page
    assert m["overlaps"] == [], f"labels overlap in one chart: {m['overlaps'][:5]}"
    assert m["clipped"] == [], f"texts stick out of their chart or the viewport: {m['clipped'][:5]}"
    assert m["small"] == [], f"chart text scaled below 9 px: {m['small'][:5]}"
    assert m["htmlOverlaps"] == [], f"HTML texts overlap: {m['htmlOverlaps'][:5]}"
    assert m["htmlClipped"] == [], f"HTML texts outside the viewport: {m['htmlClipped'][:5]}"
    assert m["scrollWidth"] <= width, f"the page scrolls sideways ({m['scrollWidth']} > {width})"


def _clock(text: str, day: float) -> float:
    hh, mm, ss = re.search(r"(\d\d):(\d\d):(\d\d(?:\.\d+)?)", text).groups()  # type: ignore[union-attr]
    return day + int(hh) * 3600 + int(mm) * 60 + float(ss)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", ["broken", "long"])
def test_hover_shows_clock_time_on_one_time_axis(measured: dict[str, Any], name: str, width: int) -> None:
    h = measured[f"{name}@{width}"]["hover"]
    assert h is not None, "no time chart with data-t0 or no #eh-tip tooltip"
    assert h["visible"] and h["inViewport"], h
    assert "UTC" in h["text"]
    t_mid = (h["t0"] + h["t1"]) / 2
    day = datetime.fromtimestamp(h["t0"], UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    assert abs(_clock(h["text"], day) - t_mid) <= max(2 * h["secondsPerPx"], 0.002), (h["text"], t_mid)
    assert h["guides"] == h["charts"] >= 5, "every time chart shows the guide at the pointer's time"


# -- structure of the page (no browser) ------------------------------------------------


class _Svgs(HTMLParser):
    """Each <svg>: its attributes, the attributes of elements inside, and its texts by class."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: list[dict[str, Any]] = []
        self._cur: dict[str, Any] | None = None
        self._text_cls: str | None = None
        self._in_title = False
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
        if tag == "svg":
            self._cur = {"attrs": a, "elems": [], "texts": []}
            self.svgs.append(self._cur)
        elif self._cur is not None:
            self._cur["elems"].append((tag, a))
            self._in_title = self._in_title or tag == "title"
            if tag == "text":
                self._text_cls = a.get("class") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._cur = None
        if tag == "text":
            self._text_cls = None
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cur is not None and self._text_cls is not None and not self._in_title:
            self._cur["texts"].append((self._text_cls, data))


def _svgs(page: str) -> _Svgs:
    p = _Svgs()
    p.feed(page)
    return p


def _classes(svg: dict[str, Any]) -> set[str]:
    return set((svg["attrs"].get("class") or "").split())


def _faults_drawn(svg: dict[str, Any]) -> set[str]:
    return {str(a["data-fault"]) for _, a in svg["elems"] if a.get("data-fault")}


@pytest.mark.parametrize("name", ["broken", "wide-many", "long"])
def test_each_chart_draws_only_the_faults_of_its_zone(pages: dict[str, tuple[Path, Verdict]], name: str) -> None:
    d, v = pages[name]
    p = _svgs((d / "report.html").read_text())
    charts = [s for s in p.svgs if "tchart" in _classes(s)]
    zones = {z.name for z in load_topology(d / "manifests" / "topology.yaml").zones}
    assert charts and {s["attrs"].get("data-zone") for s in charts} == zones, "time charts per zone, every zone"
    for s in charts:
        zone = s["attrs"]["data-zone"]
        mine = {f.fault for f in v.faults if f.zone == zone}
        assert _faults_drawn(s) == mine, (s["attrs"].get("aria-label"), _faults_drawn(s), mine)
    timeline = [s for s in p.svgs if "timeline" in _classes(s)]
    assert len(timeline) == 1 and _faults_drawn(timeline[0]) == {f.fault for f in v.faults}


def _ticks(svg: dict[str, Any], cls: str) -> list[str]:
    return [t for c, t in svg["texts"] if cls in c.split()]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_count_axes_are_integers_and_every_axis_is_clock_time(
    pages: dict[str, tuple[Path, Verdict]], name: str
) -> None:
    d, _ = pages[name]
    p = _svgs((d / "report.html").read_text())
    counts = [s for s in p.svgs if "counts" in _classes(s)]
    assert counts, "count charts (failed requests, connections) are marked class=counts"
    for s in counts:
        ys = _ticks(s, "ytick")
        vals = [int(y.replace(",", "")) for y in ys]  # raises on "0.5" or "1.2k"
        assert len(vals) >= 2 and vals == sorted(set(vals)), ys  # distinct and increasing: never "1, 1, 0, 0, 0"
    for s in p.svgs:
        if "tchart" in _classes(s) or "timeline" in _classes(s):
            xs = _ticks(s, "xtick")
            assert len(xs) >= 2 and all(re.fullmatch(r"\d\d:\d\d(:\d\d)?", x) for x in xs), xs


def test_flow_maps_one_per_window(pages: dict[str, tuple[Path, Verdict]]) -> None:
    for name, (d, v) in pages.items():
        p = _svgs((d / "report.html").read_text())
        maps = [s for s in p.svgs if "flow" in _classes(s)]
        spans = [(float(s["attrs"]["data-lo"]), float(s["attrs"]["data-hi"])) for s in maps]
        titles = [s["attrs"]["aria-label"] for s in maps]
        assert len(set(titles)) == len(titles), titles
        assert spans == sorted(spans) and all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans
        bounds = {t for f in v.faults for t in (f.inject, f.restore) if t is not None}
        start, end = v.run.start, v.run.end
        assert start is not None and end is not None
        inner = {t for t in bounds if start < t < end}
        assert len(maps) == len(inner) + 1, (name, titles)
        assert spans[0][0] == start and spans[-1][1] == end
        for s, (lo, hi) in zip(maps, spans, strict=True):
            label = s["attrs"]["aria-label"]
            active = [f.fault for f in v.faults if f.inject <= lo and (f.restore is None or f.restore >= hi)]
            assert all(f in label for f in active), (label, active)
            assert label.startswith("during") == bool(active), label


def test_timeline_marks_failover_and_recovery_with_resolution(pages: dict[str, tuple[Path, Verdict]]) -> None:
    d, v = pages["wide-many"]
    page = (d / "report.html").read_text()
    (tl,) = [s for s in _svgs(page).svgs if "timeline" in _classes(s)]
    rows = [a["data-row"] for _, a in tl["elems"] if a.get("data-row")]
    assert rows == [z.name for z in load_topology(WIDE).zones]
    marks = {
        (a.get("class"), a.get("data-fault")) for _, a in tl["elems"] if a.get("class") in ("failover", "recovery")
    }
    assert {f for c, f in marks if c == "failover"} == {f.fault for f in v.faults if f.failover_s is not None}
    assert {f for c, f in marks if c == "recovery"} == {f.fault for f in v.faults if f.recovery_s is not None}
    f = next(f for f in v.faults if f.failover_s is not None and f.failover_resolution_s)
    assert f"failover {f.failover_s:.3f} s ±{f.failover_resolution_s:.3f}" in page


def test_page_is_self_contained_with_one_inline_script(pages: dict[str, tuple[Path, Verdict]]) -> None:
    for d, _ in pages.values():
        page = (d / "report.html").read_text()
        p = _svgs(page)
        assert all("src" not in s for s in p.scripts) and len(p.scripts) <= 2
        assert "://" not in page and "url(" not in page and "@import" not in page


def _pathpoints(page: str) -> Iterator[int]:
    for m in re.finditer(r' (?:points|d)="([^"]*)"', page):
        yield len(re.findall(r"-?\d+(?:\.\d+)?[ ,]-?\d+(?:\.\d+)?|[HV]-?\d", m.group(1)))


def test_page_size_is_bounded_by_buckets_not_hops(tmp_path: Path) -> None:
    """Ten times the hops, the same page size (within a few %): every series is bucketed in DuckDB."""
    sizes = []
    for rate in (1.0, 10.0):
        sc = Scenario(
            load_topology(),
            duration_s=600,
            rate_per_zone=rate,
            accesslogs="none",
            faults=[FaultSpec("kill-lax", "service-down", LAX, ("product-api",), 200, 260, 1.0, 2.0)],
        )
        d = write_run(tmp_path / f"r{rate:g}", sc)
        page = write_report(d).read_text()
        sizes.append(len(page.encode()))
        # a step area: a horizontal and a vertical move per bucket on each of its two edges
        assert max(_pathpoints(page)) <= 4 * 150 + 4
    assert sizes[1] <= sizes[0] * 1.10, sizes


# -- the placement rules themselves (no browser) -------------------------------------------


@given(st.floats(min_value=0, max_value=5e6, allow_nan=False), st.booleans())
def test_value_ticks_cover_the_data_with_round_distinct_steps(top: float, integer: bool) -> None:
    ticks = value_ticks(top, integer)
    assert ticks[0] == 0 and ticks[-1] >= top and 2 <= len(ticks) <= 6
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1 and min(steps) > 0
    if integer:
        assert all(t == int(t) for t in ticks) and min(steps) >= 1
    labels = [_tick_label(t, ticks[1] - ticks[0]) for t in ticks]
    assert len(set(labels)) == len(labels) and all(
        abs(float(x.replace(",", "")) - t) <= 1e-9 * max(t, 1) for x, t in zip(labels, ticks, strict=True)
    )


@given(st.floats(min_value=1.0, max_value=4 * 86400.0), st.floats(min_value=1.7e9, max_value=1.8e9))
def test_clock_ticks_never_touch(span: float, t0: float) -> None:
    axis = TimeAxis(t0, t0 + span)
    ticks = axis.ticks()
    assert len(ticks) >= 2
    xs = [axis.x(t) for t, _ in ticks]
    widest = max(text_width(label) for _, label in ticks)
    assert all(b - a >= widest + 4 for a, b in itertools.pairwise(xs)), (span, ticks)


def test_canvas_refuses_overlapping_or_clipped_labels() -> None:
    c = Canvas(200, 50)
    assert c.text(10, 20, "kill-product-api")
    assert not c.text(20, 22, "burst-01")  # would overlap the first
    assert c.text(20, 40, "burst-01")  # one line lower is free
    assert not c.text(190, 20, "x-long-label")  # would leave the SVG
    assert not c.text(10, 5, "top")  # its ascent would be cut off
    assert c.parts and all("<text" in p for p in c.parts) and len(c.parts) == 2
