"""Benchmark: how soon `harness up` stops after a signal (goal: within 2 s, issue 10).

The small topology of tests/test_local_startup.py (two zones, one replica)
is brought up by the real command, which gets a signal at seeded random
points of its bring-up (SIGINT to its process group, as a terminal's Ctrl-C,
or SIGTERM to it alone); printed: the seconds from the signal to its exit
(cleanup included: the daemon's abort and the state file's leftovers), the
median and the worst against the goal. A point where the cluster came up
first is not an interrupt and is started again. That the stop does not wait
for the bring-up at all is a test (tests/test_interrupt_points.py); how long
the stop takes depends on the machine's load, so it is measured here.

Needs root and the local lock:

    flock -o /run/edge-harness-tests.lock .venv/bin/python bench/bench_interrupt.py [--points 10]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.backends.local import requirements
from harness.render import render, write
from harness.topology import load_topology
from tests.test_interrupt_points import _down, _harness  # the test's own ways to start and stop
from tests.test_local_startup import small_topology

GOAL_S = 2.0
CLUSTER = "ehbint"
SEED = 20261203


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--points", type=int, default=10)
    args = ap.parse_args()
    ok, why = requirements()
    if not ok:
        print(f"bench_interrupt: skipped ({why})")
        return 0
    rnd = random.Random(SEED)
    stops: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-interrupt-") as tmp:
        cwd = Path(tmp)
        out = cwd / "manifests"
        write(render(load_topology(small_topology(cwd / "topology.yaml", 1))), out)
        _down(CLUSTER, cwd)
        tries = 0
        while len(stops) < args.points and tries < 4 * args.points:
            tries += 1
            sig, group = rnd.choice([(signal.SIGINT, True), (signal.SIGTERM, False)])
            delay = rnd.uniform(0.8, 3.0)
            proc = _harness("up", "--backend", "local", "--cluster", CLUSTER, "--manifests", str(out), cwd=cwd)
            time.sleep(delay)
            if proc.poll() is not None:  # up first: not an interrupt point
                _down(CLUSTER, cwd)
                continue
            t0 = time.monotonic()
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
            proc.communicate(timeout=120)
            stops.append(time.monotonic() - t0)
            print(f"  {signal.Signals(sig).name:7s} at {delay:4.2f} s: stopped in {stops[-1]:5.2f} s", flush=True)
            _down(CLUSTER, cwd)
    if not stops:
        print("bench_interrupt: the cluster came up before every point: nothing measured")
        return 1
    worst, median = max(stops), statistics.median(stops)
    print(f"harness up, stop after a signal ({len(stops)} points): median {median:4.2f} s, worst {worst:4.2f} s; "
          f"goal <= {GOAL_S:.0f} s: {worst / GOAL_S:4.2f}x ({'OK' if worst <= GOAL_S else 'MISSED'})")  # fmt: skip
    return 0 if worst <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
