"""Failover and recovery under a burst of edge pod kills: p50 / p95 / max and lost requests.

    python bench/failover.py                       # e2e with experiments/edge-pod-burst.json, local backend
    python bench/failover.py --topology fixtures/topology-wide.yaml
    python bench/failover.py --run-dir runs/<stamp>   # the figures of a run already judged

Runs `harness e2e` with the burst experiment (20 product-api kills, round
robin over every edge zone) on the local backend, holding the machine's
local-backend lock (/run/edge-harness-tests.lock), then reads the figures
from the run's verdict.json only (never recomputed here, so the bench and the
verdict cannot disagree): per fault `failover_s` (kill -> steady Region
service), `recovery_s` (replacement ready -> back in-zone), `lost_requests`
and their resolutions. Prints p50 / p95 / max (nearest rank) of each next to
the topology's SLO (`maxFailoverS`, `maxRecoveryS`), the total of lost user
requests, and how many faults were measured: a fault without a figure is
listed, never averaged away. Exit 0 when the verdict passed and every fault
has both figures, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.testing.machine import machine_lock  # noqa: E402

BURST = REPO / "experiments" / "edge-pod-burst.json"


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def summarise(verdict: dict[str, Any]) -> dict[str, Any]:
    """The bench's figures from a verdict: per measure p50/p95/max, lost requests, unmeasured faults."""
    faults = [f for f in verdict.get("faults") or [] if f.get("kind") == "service-down"]
    out: dict[str, Any] = {"faults": len(faults), "passed": bool(verdict.get("passed"))}
    for key in ("failover_s", "recovery_s", "failover_resolution_s", "recovery_resolution_s"):
        vals = [float(f[key]) for f in faults if f.get(key) is not None]
        out[key] = {"n": len(vals), "p50": percentile(vals, 50), "p95": percentile(vals, 95),
                    "max": max(vals) if vals else None}  # fmt: skip
    out["lost_requests"] = sum(int(f.get("lost_requests") or 0) for f in faults)
    out["lost_hops"] = sum(int(f.get("lost_hops") or 0) for f in faults)
    out["lost_per_fault"] = {"p50": percentile([float(f.get("lost_requests") or 0) for f in faults], 50),
                             "max": max((int(f.get("lost_requests") or 0) for f in faults), default=None)}  # fmt: skip
    out["unmeasured"] = [f["fault"] for f in faults if f.get("failover_s") is None or f.get("recovery_s") is None]
    out["slo"] = (verdict.get("run") or {}).get("slo") or {}
    return out


def print_summary(s: dict[str, Any], where: str) -> None:
    slo = s["slo"]
    print(f"burst: {s['faults']} pod kills  ({where})")
    print(f"{'':22} {'n':>3} {'p50':>9} {'p95':>9} {'max':>9}   goal")
    goals = {"failover_s": f"max <= maxFailoverS {slo.get('maxFailoverS', '?')} s",
             "recovery_s": f"max <= maxRecoveryS {slo.get('maxRecoveryS', '?')} s",
             "failover_resolution_s": "<= 50 ms", "recovery_resolution_s": "<= 50 ms"}  # fmt: skip
    for key, goal in goals.items():
        f = s[key]
        print(f"{key:22} {f['n']:3} {_ms(f['p50']):>9} {_ms(f['p95']):>9} {_ms(f['max']):>9}   {goal}")
    print(f"lost requests: {s['lost_requests']} in total, p50 {s['lost_per_fault']['p50']} / max "
          f"{s['lost_per_fault']['max']} per kill; lost hops: {s['lost_hops']}")  # fmt: skip
    if s["unmeasured"]:
        print(f"unmeasured ({len(s['unmeasured'])}): {', '.join(s['unmeasured'])}")
    print(f"verdict: {'PASS' if s['passed'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, help="read this run's verdict.json instead of running e2e")
    ap.add_argument("--experiment", type=Path, default=BURST)
    ap.add_argument("--topology", type=Path, default=REPO / "fixtures" / "topology.yaml")
    ap.add_argument("--cluster", default="failover")
    ap.add_argument("--users", type=int, default=12)
    a = ap.parse_args(argv)
    if a.run_dir is not None:
        run_dir = a.run_dir
    else:
        from harness.backends import BackendOptions
        from harness.e2e import E2EOptions, run_e2e
        from harness.run import new_run_dir

        root = new_run_dir(REPO / "runs", "failover")
        print(f"e2e {a.experiment} on {a.topology} (local backend, cluster {a.cluster})", flush=True)
        with machine_lock():
            opts = E2EOptions(topology=a.topology, experiments=[a.experiment], runs_root=root, users=a.users)
            run_dir = run_e2e(opts, BackendOptions(name="local", cluster=a.cluster), say=lambda _m: None).run_dir
    try:
        verdict = json.loads((run_dir / "verdict.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{run_dir / 'verdict.json'}: cannot read: {exc}", file=sys.stderr)
        return 2
    s = summarise(verdict)
    print_summary(s, str(run_dir))
    return 0 if s["passed"] and not s["unmeasured"] and s["faults"] else 1


if __name__ == "__main__":
    sys.exit(main())
