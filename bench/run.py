"""`make bench`: every benchmark, one after the other, figures and ratios printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_verify.py", "bench_report.py", "bench_traffic.py", "bench_up.py"]


def main() -> int:
    rc = 0
    for name in BENCHES:
        print(f"== {name}", flush=True)
        rc |= subprocess.call([sys.executable, str(HERE / name)])
    return rc


if __name__ == "__main__":
    sys.exit(main())
