"""Benchmark: the HTML report's size and time against the number of hops (goal: size flat in hops).

Why: a 10-hour nightly records tens of millions of hops, and the report is
opened from a CI artifact in a browser. Every series is aggregated in DuckDB
into at most 150 buckets and the flow maps into one row per (window, caller
zone, serving zone), so the page must weigh the same for 10k and 1M hops of
the same topology and faults; only the time to load the run grows. This
generates (and caches) synthetic runs of each size with the synthetic mesh
model (harness.verify.synth: default topology, three faults, raw access
logs), verifies each once, then times `render_html` (which loads the run
itself) and prints the page size side by side, with the ratio to the
smallest run.

    .venv/bin/python bench/bench_report.py [--hops 10000 100000 1000000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness.report import render_html
from harness.topology import load_topology
from harness.verify import verify
from harness.verify.synth import FaultSpec, Scenario, write_run

SIZE_GOAL = 1.10  # the largest run's page at most 10% above the smallest run's
LAX = "us-west-2-lax-1a"


def scenario(hops: int) -> Scenario:
    t = load_topology()
    duration = 600.0
    # three hops per request (frontend -> public-api -> product-api -> postgres), +2% for the zone-down
    rate = hops / 3 / len(t.zones) / duration * 1.02
    return Scenario(
        t,
        duration_s=duration,
        rate_per_zone=rate,
        faults=[
            FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 100, 160, 1.0, 2.0),
            FaultSpec("zone-las", "zone-down", "us-west-2-las-1a", (), 250, 300, 0, 3.0, entry_down=True),
            FaultSpec("link-phx", "link-degraded", "us-west-2-phx-2a", (), 400, 450, 0, 0),
        ],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where the runs are cached")
    args = ap.parse_args()
    rows = []
    for hops in sorted(args.hops):
        run_dir = args.dir / f"edge-harness-bench-report-{hops}"
        if not (run_dir / "run.json").is_file():
            t0 = time.perf_counter()
            write_run(run_dir, scenario(hops))
            print(f"generated {run_dir} in {time.perf_counter() - t0:.1f}s", flush=True)
        verdict = verify(run_dir)
        best, page = float("inf"), ""
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            page = render_html(run_dir, verdict)
            best = min(best, time.perf_counter() - t0)
        (run_dir / "report.html").write_text(page, encoding="utf-8")
        rows.append((verdict.run.hops, len(page.encode()), best))
    base = rows[0][1]
    for hops, size, secs in rows:
        print(
            f"report of {hops:>10,} hops: {size / 1024:7.1f} KiB ({size / base:4.2f}x the smallest run's page)  "
            f"render {secs:6.2f}s ({hops / secs:12,.0f} hops/s, loading the run included)"
        )
    worst = max(size for _, size, _ in rows) / base
    print(f"page size goal: <= {SIZE_GOAL:.2f}x from {rows[0][0]:,} to {rows[-1][0]:,} hops: {worst:.2f}x "
          f"({'OK' if worst <= SIZE_GOAL else 'OVER'})")  # fmt: skip


if __name__ == "__main__":
    main()
