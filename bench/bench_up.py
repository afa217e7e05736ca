"""Time to bring up (and take down) the default topology on the local backend.

Goal: up <= 15 s on 2 cores. Prints the measured figures and the ratio to the
goal, for a few runs side by side; needs root (network namespaces).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backends.local import LocalBackend, requirements
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology

GOAL_UP_S = 15.0


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
