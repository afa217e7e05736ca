"""Benchmark: verify() over a synthetic run of 1M hops (goal: <= 5 s).

Why: a long chaos game day produces millions of hop records; CI gates on the
verdict, so verification must stay seconds, not minutes. This generates (and
caches) a complete run directory with the synthetic mesh model
(harness.verify.synth): the default topology, a few faults, ~1M hops as raw
sidecar access-log lines (and the hops.jsonl observe derives from them), the
matching user requests, inventory, counters and documents. It times
`verify()` as it runs on every real run -- rebuilding the hops from the
access logs, the goal's figure -- and, side by side, on the same run without
its access logs (hops.jsonl read directly) and a naive pure-Python pass over
hops.jsonl that computes only the locality and hub-and-spoke counts.

    .venv/bin/python bench/bench_verify.py [--hops 1000000] [--dir /tmp/...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from harness.topology import load_topology
from harness.verify import verify
from harness.verify.synth import FaultSpec, Scenario, write_run

GOAL_S = 5.0
LZ = "us-west-2-lax-1a"


def scenario(hops: int) -> Scenario:
    t = load_topology()
    zones = len(t.zones)
    duration = 600.0
    # each request makes one hop per edge of the call chain (3 for HashiCups); +2% for
    # the requests the zone-down fault turns away before any hop
    rate = hops / 3 / zones / duration * 1.02
    return Scenario(
        t,
        duration_s=duration,
        rate_per_zone=rate,
        drop_serving_zone=0.01,
        faults=[
            FaultSpec("kill-product-api-lax", "service-down", LZ, ("product-api",), 100, 160, 1.0, 2.0),
            FaultSpec("zone-las", "zone-down", "us-west-2-las-1a", (), 250, 300, 0, 3.0, entry_down=True),
            FaultSpec("link-phx", "link-degraded", "us-west-2-phx-2a", (), 400, 450, 0, 0),
        ],
    )


def naive(run_dir: Path, sc: Scenario) -> dict[tuple[str, str], list[int]]:
    """Per-record Python: what the verifier would cost without a columnar engine."""
    edge = {z.name: z.is_edge for z in sc.topology.zones}
    windows = [(f.zone, set(f.services), sc.start + f.inject, sc.start + (f.restore or 1e12) + 60) for f in sc.faults]
    counts: dict[tuple[str, str], list[int]] = {}
    with (run_dir / "hops.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            h = json.loads(line)
            key = (h["caller_zone"], h["upstream"])
            c = counts.setdefault(key, [0, 0, 0])
            excluded = any(
                h["caller_zone"] == z and h["upstream"] in s and lo <= h["ts"] <= hi for z, s, lo, hi in windows
            )
            sz = h.get("serving_zone")
            if not excluded and sz:
                c[0] += 1
                c[1] += sz == h["caller_zone"] or (not edge[h["caller_zone"]] and not edge.get(sz, True))
            if sz and edge.get(sz, True) and sz != h["caller_zone"]:
                c[2] += 1
    return counts


@contextlib.contextmanager
def without_accesslogs(run_dir: Path) -> Iterator[None]:
    """The same run as if copied without its access logs: verify reads hops.jsonl."""
    logs, hidden = run_dir / "accesslogs", run_dir / "accesslogs.hidden"
    logs.rename(hidden)
    try:
        yield
    finally:
        hidden.rename(logs)


def timed(run_dir: Path, repeat: int) -> tuple[float, float, object]:
    times, cpu, verdict = [], [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        verdict = verify(run_dir)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), min(cpu), verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hops", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="run directory (cached between runs)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    run_dir = args.dir or Path(f"/tmp/edge-harness-bench-verify-v2-{args.hops}")
    sc = scenario(args.hops)
    if not (run_dir / "run.json").is_file():
        t0 = time.perf_counter()
        write_run(run_dir, sc)
        print(f"generated {run_dir} in {time.perf_counter() - t0:.1f}s")
    n_hops = sum(1 for _ in (run_dir / "hops.jsonl").open("rb"))
    n_req = sum(1 for _ in (run_dir / "requests.jsonl").open("rb"))
    best, cpu, verdict = timed(run_dir, args.repeat)
    with without_accesslogs(run_dir):
        best_file, cpu_file, verdict_file = timed(run_dir, args.repeat)
    t0 = time.perf_counter()
    naive(run_dir, sc)
    naive_s = time.perf_counter() - t0
    passed = getattr(verdict, "passed", None), getattr(verdict_file, "passed", None)
    print(f"records: {n_hops:,} hops + {n_req:,} requests; verdict passed={passed[0]} (from hops.jsonl: {passed[1]})")
    print(
        f"verify() from access logs: best {best:6.2f}s of {args.repeat} (cpu {cpu:.2f}s)  "
        f"{n_hops / best:12,.0f} hops/s  goal {GOAL_S:g}s: {best / GOAL_S:5.2f}x of budget "
        f"({'OK' if best <= GOAL_S else 'OVER'})"
    )
    print(
        f"verify() from hops.jsonl:  best {best_file:6.2f}s of {args.repeat} (cpu {cpu_file:.2f}s)  "
        f"{n_hops / best_file:12,.0f} hops/s  (the rebuild costs {best - best_file:.2f}s)"
    )
    print(
        f"naive Python:                   {naive_s:6.2f}s                 {n_hops / naive_s:12,.0f} hops/s  "
        f"(locality + hub counts only) -> verify is {naive_s / best:.1f}x faster"
    )


if __name__ == "__main__":
    main()
