"""Benchmark: a long run's verdict -- hops/s and peak RSS of `verify()` at 1M, 10M (and 50M) hops.

Goal (issue 12): a 10-hour nightly (~50M hops) verifies in <= 60 s within
2 GB, i.e. >= 833k hops/s at every size with a peak RSS that does not grow
past 2 GB. That holds only because the records are columnar as they are
collected (`harness.columnar`: the access-log collector turns the JSON lines
into Parquet segments every 30 s), so the verdict reads Parquet, not JSON.

How the runs are made: one synthetic run of 1M hops from the synthetic mesh
model (`harness.verify.synth`: default topology, three faults, raw access
logs, requests, inventory, counters, documents), compacted the way the
collector does it (its throughput is printed: what the collector pays during
the run, per hop). Bigger runs repeat that run back to back in time: every
record shifted by the run's span, fault names suffixed per copy, the Parquet
segments written one per copy with DuckDB. So a 10M run is ten 10-minute runs
in a row, with 30 faults, and must still pass.

Each verify runs in a fresh process (its peak RSS is its own).

    .venv/bin/python bench/bench_long.py [--hops 1000000 10000000] [--with-50m] [--dir /tmp/eh-bench-long]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOAL_HOPS = 50_000_000
GOAL_S = 60.0
GOAL_RSS_MB = 2048.0
BASE_HOPS = 1_000_000

_CHILD = """
import json, resource, sys, time
from harness.verify import verify
t0, c0 = time.perf_counter(), time.process_time()
v = verify(sys.argv[1])
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
failed = [i.name + ": " + i.message[:200] for i in v.invariants if not i.passed]
failed += [f.fault + ": fault failed" for f in v.faults if not f.passed][:5]
print(json.dumps({"wall": wall, "cpu": cpu, "hops": v.run.hops, "requests": v.run.requests, "passed": v.passed,
                  "failed": failed, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def base_run(root: Path) -> tuple[Path, float]:
    """The synthetic 1M-hop run, compacted as the collector would have done it; (dir, compaction hops/s)."""
    from bench_verify import scenario

    from harness.columnar import COLUMNAR_DIR, compact_all
    from harness.verify.synth import write_run

    run = root / f"base-{BASE_HOPS}"
    if not (run / "run.json").is_file():
        t0 = time.perf_counter()
        write_run(run, scenario(BASE_HOPS))
        print(f"generated {run} in {time.perf_counter() - t0:.1f}s", flush=True)
    shutil.rmtree(run / COLUMNAR_DIR, ignore_errors=True)
    t0 = time.perf_counter()
    rows = compact_all(run)
    secs = time.perf_counter() - t0
    return run, rows / secs


def _shift_jsonl(src: Path, dst: Path, copies: int, span: float, rename: dict[str, Any] | None = None) -> None:
    if not src.is_file():
        return
    lines = [json.loads(x) for x in src.read_text(encoding="utf-8").splitlines() if x.strip()]
    with dst.open("w", encoding="utf-8") as out:
        for k in range(copies):
            for rec in lines:
                r = dict(rec, ts=rec["ts"] + k * span)
                if k and "fault" in r:
                    r["fault"] = f"{r['fault']}-r{k}"
                if k and isinstance(r.get("label"), str) and " " in r["label"]:
                    r["label"] = f"{r['label']}-r{k}"
                out.write(json.dumps(r) + "\n")


def scaled_run(base: Path, root: Path, hops: int) -> Path:
    """`base` repeated back to back until it has `hops` hops (rounded up to whole copies)."""
    import duckdb

    from harness.columnar import ACCESSLOGS, COLUMNAR_DIR, REQUESTS, load_state
    from harness.contract.rundir import sql_str

    copies = max(1, math.ceil(hops / BASE_HOPS))
    run = root / f"run-{copies * BASE_HOPS}"
    if (run / "run.json").is_file():
        return run
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    keep = {"manifests", "chaos", "plan.json", "preflight.json"}
    run.mkdir(parents=True)
    for item in base.iterdir():
        if item.name in keep:
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, run / item.name)
    ts = [json.loads(x)["ts"] for f in ("inventory.jsonl", "chaos.jsonl", "requests.jsonl") for x in
          (base / f).read_text().splitlines()[:: 1000 if f == "requests.jsonl" else 1] if x.strip()]  # fmt: skip
    span = math.ceil(max(ts) - min(ts) + 30.0)
    for name in ("inventory.jsonl", "chaos.jsonl", "entrypoints.jsonl", "upstream-stats.jsonl"):
        _shift_jsonl(base / name, run / name, copies, span)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for kind in (ACCESSLOGS, REQUESTS):
        state = load_state(base, kind)
        segs = [str(base / COLUMNAR_DIR / kind.name / s) for s in state["segments"]]
        out_dir = run / COLUMNAR_DIR / kind.name
        out_dir.mkdir(parents=True)
        cols = [*kind.out_columns, "filename"]
        names = []
        for k in range(copies):
            # each copy's user requests keep ids of their own (the entry hops are found by them)
            exprs = {"ts": f"ts + {k * span} AS ts", "request_id": f"request_id + {k << 40} AS request_id"}
            if kind is ACCESSLOGS:
                exprs["start_time"] = (f"strftime(CAST(start_time AS TIMESTAMP) + to_seconds({k * span}), "
                                       "'%Y-%m-%dT%H:%M:%S.%gZ') AS start_time")  # fmt: skip
            sel = ", ".join(exprs.get(c, f'"{c}"') for c in cols)
            name = f"{k + 1:06d}.parquet"
            con.execute(f"COPY (SELECT {sel} FROM read_parquet([{', '.join(map(sql_str, segs))}])) "
                        f"TO {sql_str(out_dir / name)} (FORMAT PARQUET, COMPRESSION ZSTD)")  # fmt: skip
            names.append(name)
        (out_dir / "state.json").write_text(json.dumps({"segments": names, "files": {}, "skipped": [],
                                                        "rows": state["rows"] * copies}))  # fmt: skip
    con.close()
    doc = json.loads((base / "run.json").read_text())
    if doc.get("ended"):
        doc["ended"] = doc["ended"] + (copies - 1) * span
    (run / "run.json").write_text(json.dumps(doc))
    print(f"generated {run} ({copies} copies of {BASE_HOPS:,} hops, span {span} s) in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)  # fmt: skip
    return run


def measure(run: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(run)], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"verify of {run} failed:\n{out.stderr[-3000:]}")
    # the last JSON line (DuckDB may draw a progress bar on stdout during a long query)
    return dict(json.loads([x for x in out.stdout.splitlines() if x.startswith('{"wall"')][-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--hops", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--with-50m", action="store_true", help="also 50M hops (generation takes minutes, ~2 GB disk)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/eh-bench-long"))
    args = ap.parse_args()
    sizes = sorted(set(args.hops + ([GOAL_HOPS] if args.with_50m else [])))
    args.dir.mkdir(parents=True, exist_ok=True)
    base, compact_rate = base_run(args.dir)
    print(f"collector's compaction (JSON lines -> Parquet, one thread): {compact_rate:10,.0f} hops/s "
          f"(a 10 h run at 50M hops is {GOAL_HOPS / 36000:,.0f} hops/s: "
          f"{GOAL_HOPS / 36000 / compact_rate:.1%} of one core)")  # fmt: skip
    need = GOAL_HOPS / GOAL_S
    ok = True
    for n in sizes:
        run = scaled_run(base, args.dir, n)
        r = measure(run)
        rate = r["hops"] / r["wall"]
        good = rate >= need and r["rss_mb"] <= GOAL_RSS_MB and r["passed"]
        ok &= good
        print(f"verify {r['hops']:>12,} hops + {r['requests']:>11,} requests: {r['wall']:7.1f}s wall "
              f"(cpu {r['cpu']:6.1f}s) {rate:11,.0f} hops/s = {rate / need:5.2f}x the goal's {need:,.0f}/s; "
              f"peak RSS {r['rss_mb']:6.0f} MB = {r['rss_mb'] / GOAL_RSS_MB:4.2f}x of 2 GB; "
              f"verdict passed={r['passed']} {'OK' if good else 'MISSED'}", flush=True)  # fmt: skip
        for f in r["failed"]:
            print(f"    failed: {f}")
        if n == GOAL_HOPS:
            print(f"  50M goal: {r['wall']:.1f}s (goal {GOAL_S:.0f}s), {r['rss_mb']:.0f} MB (goal 2048 MB)")
        else:
            print(f"  projected to 50M at this rate: {GOAL_HOPS / rate:6.1f}s (goal {GOAL_S:.0f}s)")
    print(f"peak RSS of this (generating) process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
