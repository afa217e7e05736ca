"""`make bench`: every benchmark, one after the other, figures and ratios printed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_verify.py", "bench_long.py", "bench_report.py", "bench_traffic.py", "bench_up.py", "bench_relay.py",
           "bench_up_scale.py", "bench_e2e.py", "bench_interrupt.py"]  # fmt: skip
# namespaces, nftables, local clusters: one at a time per machine (tests/conftest.py takes the same lock)
LOCKED = {"bench_up.py", "bench_relay.py", "bench_up_scale.py", "bench_e2e.py", "bench_interrupt.py"}
LOCK = "/run/edge-harness-tests.lock"


def main() -> int:
    rc = 0
    for name in BENCHES:
        print(f"== {name}", flush=True)
        argv = [sys.executable, str(HERE / name)]
        if name in LOCKED and shutil.which("flock") and os.geteuid() == 0:
            argv = ["flock", "-o", LOCK, *argv]
        rc |= subprocess.call(argv)
    return rc


if __name__ == "__main__":
    sys.exit(main())
