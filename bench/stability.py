"""Same config, same verdict: run one e2e N times and print the pass count and the spread of the figures.

    python bench/stability.py --runs 10 --experiment experiments/node-kill.json --topology fixtures/topology-wide.yaml

Runs `harness e2e` on the local backend N times, one after the other, holding
the machine's local-backend lock (/run/edge-harness-tests.lock) for the whole
series, and prints per run PASS/FAIL with the first failure, then the pass
count and, per fault of the experiment (by action, zone and services), the
min / median / max of the failover and recovery times and of their
*resolution*: the gap between the record that fixes the instant (the first
Region-served hop for a failover, the first in-zone hop for a recovery) and
the hop of the same (caller zone, upstream) pair just before it. A time is
known no better than that gap. The goal is printed next to the result:
N/N passes, every resolution <= 50 ms.

Not part of `make bench` by default: ten e2e runs take about ten minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.testing.machine import machine_lock  # noqa: E402

RESOLUTION_GOAL_S = 0.050


@dataclass
class Figure:
    """One measured instant of one run: a failover or recovery time and its resolution."""

    value_s: float
    resolution_s: float | None


@dataclass
class RunResult:
    passed: bool
    run_dir: Path
    first_failure: str
    figures: dict[tuple[str, str], list[Figure]] = field(default_factory=dict)  # (fault key, kind) -> figures


def _hop_times(run_dir: Path) -> dict[tuple[str, str], list[float]]:
    """Sorted hop start times per (caller zone, upstream), from hops.jsonl."""
    import duckdb

    path = run_dir / "hops.jsonl"
    if not path.exists():
        return {}
    rows = (
        duckdb.connect()
        .execute(
            "SELECT caller_zone, upstream, list(ts ORDER BY ts) FROM read_json(?, format='newline_delimited', "
            "columns={'ts': 'DOUBLE', 'caller_zone': 'VARCHAR', 'upstream': 'VARCHAR'}) GROUP BY ALL",
            [str(path)],
        )
        .fetchall()
    )
    return {(str(z), str(u)): list(ts) for z, u, ts in rows}


def resolution(times: list[float], instant: float) -> float | None:
    """Gap between the hop at `instant` and the pair's previous hop (None when there is none before it)."""
    import bisect

    i = bisect.bisect_left(times, instant - 1e-6)
    return instant - times[i - 1] if i > 0 else None


def figures_of(
    verdict: dict[str, Any], hops: dict[tuple[str, str], list[float]]
) -> dict[tuple[str, str], list[Figure]]:
    """Failover and recovery figures per pair of every fault, with their resolution.

    A verdict that reports a resolution itself (`failover_resolution_s` /
    `recovery_resolution_s` in the pair's counts) is taken as is.
    """
    faults = {f["fault"]: f for f in verdict.get("faults") or []}
    out: dict[tuple[str, str], list[Figure]] = {}
    for inv in verdict.get("invariants") or []:
        if inv.get("name") != "fallback":
            continue
        for pair in inv.get("pairs") or []:
            f = faults.get(pair.get("fault"))
            if f is None:
                continue
            key = f"{f['kind']} {f['zone']} {','.join(f.get('services') or [])}".strip()
            counts = pair.get("counts") or {}
            for kind, base in (("failover", f.get("inject")), ("recovery", f.get("restore"))):
                value = counts.get(f"{kind}_s")
                if value is None or base is None:
                    continue
                res = counts.get(f"{kind}_resolution_s")
                if res is None:
                    res = resolution(hops.get((pair["caller_zone"], pair["upstream"]), []), base + value)
                out.setdefault((key, f"{kind} {pair['caller_zone']}->{pair['upstream']}"), []).append(
                    Figure(float(value), None if res is None else float(res))
                )
    return out


def one_run(experiment: Path, topology: Path, cluster: str, runs_root: Path, users: int) -> RunResult:
    from harness.backends import BackendOptions
    from harness.e2e import E2EOptions, run_e2e

    opts = E2EOptions(topology=topology, experiments=[experiment], runs_root=runs_root, users=users)
    res = run_e2e(opts, BackendOptions(name="local", cluster=cluster), say=lambda _m: None)
    verdict = json.loads((res.run_dir / "verdict.json").read_text())
    failures = [m for inv in verdict.get("invariants") or [] if not inv.get("passed") for m in [inv.get("message")]]
    first = (res.messages or failures or [""])[0]
    return RunResult(res.passed, res.run_dir, str(first), figures_of(verdict, _hop_times(res.run_dir)))


def host_load(run_dir: Path) -> str:
    """This machine's CPU over the run (host.jsonl): a saturated box measures itself, not the mesh."""
    from harness.contract.rundir import HOST_FILE, PROBE_BUDGET_FILE
    from harness.observe.host import SATURATED

    try:
        busy = [json.loads(x)["busy"] for x in (run_dir / HOST_FILE).read_text().splitlines() if x.strip()]
    except (OSError, ValueError, KeyError):
        return "host load not recorded"
    if not busy:
        return "host load not recorded"
    saturated = sum(b >= SATURATED for b in busy) / len(busy)
    line = f"host CPU median {statistics.median(busy) * 100:.0f}%, saturated {saturated * 100:.0f}% of the run"
    try:  # the probe budget's factor (harness.traffic.budget): slower probes, coarser resolution
        scale = float(json.loads((run_dir / PROBE_BUDGET_FILE).read_text())["scale"])
    except (OSError, ValueError, KeyError, TypeError):
        return line
    return f"{line}, probes x{scale:g}"


# the availability windows' counts reported apart from the budget, and how each is said per run
APART = (
    ("retry_overflow", "cut off at kills over Envoy's 3 concurrent retries"),
    ("failover_under_way", "lost while a failover was under way"),
)


def reported_apart(run_dir: Path) -> str:
    """Failed requests the verdict reports apart from the budget (verdict windows), each kind with its count."""
    try:
        verdict = json.loads((run_dir / "verdict.json").read_text())
    except (OSError, ValueError):
        return ""
    windows = [w for i in verdict.get("invariants") or [] for w in i.get("windows") or []]
    out = ""
    for key, what in APART:
        n = sum(int(w.get(key, 0)) for w in windows)
        out += f"; {n} {what}" if n else ""
    return out


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values) * 1000:7.0f} {statistics.median(values) * 1000:7.0f} {max(values) * 1000:7.0f} ms"


def report(results: list[RunResult], runs: int) -> bool:
    passes = sum(r.passed for r in results)
    print(f"\npasses: {passes}/{runs}   (goal: {runs}/{runs})")
    merged: dict[tuple[str, str], list[Figure]] = {}
    for r in results:
        for k, figs in r.figures.items():
            merged.setdefault(k, []).extend(figs)
    worst_res = 0.0
    print(f"{'fault':44} {'figure':44} {'n':>3}  {'value min/median/max':>26}  {'resolution min/median/max':>26}")
    for (fault, what), figs in sorted(merged.items()):
        res = [f.resolution_s for f in figs if f.resolution_s is not None]
        worst_res = max([worst_res, *res])
        print(f"{fault:44} {what:44} {len(figs):3}  {spread([f.value_s for f in figs]):>26}  {spread(res):>26}")
    ok_res = worst_res <= RESOLUTION_GOAL_S
    print(f"worst resolution: {worst_res * 1000:.0f} ms   (goal: <= {RESOLUTION_GOAL_S * 1000:.0f} ms)")
    return passes == runs and ok_res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--experiment", type=Path, required=True)
    ap.add_argument("--topology", type=Path, default=REPO / "fixtures" / "topology.yaml")
    ap.add_argument("--cluster", default="stab")
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--runs-root", type=Path, help="where the run directories go (default runs/stability-<stamp>)")
    a = ap.parse_args(argv)
    from harness.errors import HarnessError
    from harness.run import new_run_dir

    root = a.runs_root or new_run_dir(REPO / "runs", "stability")  # kept: a failed run is a post-mortem
    results: list[RunResult] = []
    print(f"{a.runs} x e2e {a.experiment} on {a.topology} (local backend, cluster {a.cluster})", flush=True)
    with machine_lock():
        for i in range(a.runs):
            try:
                r = one_run(a.experiment, a.topology, a.cluster, root, a.users)
            except HarnessError as exc:
                print(f"run {i + 1}: ERROR {exc}", flush=True)
                results.append(RunResult(False, root, str(exc)))
                continue
            results.append(r)
            status = "PASS" if r.passed else f"FAIL {r.first_failure}"
            where = f"{r.run_dir}; {host_load(r.run_dir)}{reported_apart(r.run_dir)}"
            print(f"run {i + 1}: {status}  ({where})", flush=True)
    return 0 if report(results, a.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
