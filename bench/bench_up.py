"""Time to bring up (and take down) the default topology on the local backend.

Goal: up <= 15 s on 2 cores. Prints the measured figures and the ratio to the
goal, for a few runs side by side; needs root (network namespaces).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from keepalive import LOAD_SCRIPT

from harness.backends.local import LocalBackend, requirements
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology

GOAL_UP_S = 15.0
LAX = "us-west-2-lax-1a"


def _rate(ns: str, ip: str, port: int, seconds: float = 3.0) -> float:
    # keep-alive GET /health for a fixed time from inside a pod's namespace; prints requests/s
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", LOAD_SCRIPT, ip, str(port), str(seconds), "/health"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return float(out.stdout)


def relay_overhead(b: LocalBackend) -> None:
    """Service-link relay vs a direct same-zone path, both to a public-api pod, link latency set to 0."""
    pods = b.inventory().pods(alive_only=True)
    client = next(p for p in pods if p.zone == LAX and p.service == "frontend")
    local = next(p for p in pods if p.zone == LAX and p.service == "public-api")
    region = next(p for p in pods if p.zone == "us-west-2a" and p.service == "public-api")
    ns = b.raw_status()["netns"][client.pod]
    b.set_link(LAX, 0.0)
    try:
        direct = _rate(ns, local.ip, 8080)
        relayed = _rate(ns, region.ip, 8080)
    finally:
        b.clear_link(LAX)
    ratio = relayed / direct
    print(f"service-link relay (latency 0): {relayed:7.0f} req/s vs direct same-zone {direct:7.0f} req/s, "
          f"ratio {ratio:4.2f}x (goal >= 0.8x: {'OK' if ratio >= 0.8 else 'MISSED'})")  # fmt: skip


def main(runs: int = int(os.environ.get("BENCH_RUNS", "2"))) -> int:
    ok, why = requirements()
    if not ok:
        print(f"bench_up: skipped ({why})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write(render(load_topology()), Path(tmp))
        m = load(Path(tmp))
        pods = sum(1 for o in m.objects if o.get("kind") == "Deployment")
        ups, downs = [], []
        for _ in range(runs):
            b = LocalBackend(cluster="ehbench")
            t0 = time.perf_counter()
            try:
                b.up(m)
                ups.append(time.perf_counter() - t0)
                if len(ups) == 1:
                    relay_overhead(b)
            finally:
                t1 = time.perf_counter()
                b.down()
                downs.append(time.perf_counter() - t1)
    up = statistics.median(ups)
    print(f"local up, default topology ({pods} pods), {runs} runs: " + ", ".join(f"{u:.2f}s" for u in ups))
    print(
        f"  median up   {up:6.2f} s   goal {GOAL_UP_S:.0f} s   "
        f"ratio goal/measured {GOAL_UP_S / up:5.2f}x  {'OK' if up <= GOAL_UP_S else 'MISSED'}"
    )
    print(f"  median down {statistics.median(downs):6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
