"""Ctrl-C in the middle of `harness e2e`: everything started is cleaned up, records so far are kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow, pytest.mark.chaos]

CLUSTER = "ehint"


def test_ctrl_c_during_traffic_cleans_up_and_keeps_records(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
         "e2e", "--backend", "local", "--cluster", CLUSTER, "--warmup", "60", "--users", "6",
         "--experiment", str(REPO / "experiments" / "kill-product-api-lax.json")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.time() + 120
    try:
        for line in proc.stdout:
            seen.append(line)
            if "traffic:" in line:
                break
            assert time.time() < deadline, "".join(seen)
        time.sleep(4)  # some traffic is recorded
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    assert leftovers(CLUSTER) == [], out
    run_dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(run_dirs) == 1
    run = run_dirs[0]
    assert (run / "manifests" / "topology.yaml").exists()
    assert len((run / "requests.jsonl").read_text().splitlines()) > 5
    assert any(p.stat().st_size > 0 for p in (run / "accesslogs").glob("*.jsonl"))
    assert (run / "inventory.jsonl").stat().st_size > 0
