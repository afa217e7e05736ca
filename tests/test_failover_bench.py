"""bench/failover.py: the burst's figures are the verdict's, percentiles by nearest rank, gaps listed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("failover_bench", REPO / "bench" / "failover.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fault(i: int, failover: float | None, recovery: float | None, lost: int) -> dict[str, object]:
    return {"fault": f"kill-{i}", "kind": "service-down", "failover_s": failover, "recovery_s": recovery,
            "failover_resolution_s": 0.03, "recovery_resolution_s": 0.04, "lost_requests": lost,
            "lost_hops": lost}  # fmt: skip


def test_percentiles_and_losses_come_from_the_verdict() -> None:
    b = _bench()
    faults = [_fault(i, 0.1 * (i + 1), 1.0 + i, i % 3) for i in range(20)]
    s = b.summarise({"passed": True, "faults": faults, "run": {"slo": {"maxFailoverS": 5, "maxRecoveryS": 60}}})
    assert s["faults"] == 20 and s["unmeasured"] == []
    assert s["failover_s"]["p50"] == 1.0 and abs(s["failover_s"]["p95"] - 1.9) < 1e-9  # nearest rank: 10th, 19th
    assert abs(s["failover_s"]["max"] - 2.0) < 1e-9 and s["recovery_s"]["max"] == 20.0
    assert s["lost_requests"] == sum(i % 3 for i in range(20)) and s["lost_per_fault"]["max"] == 2
    assert b.percentile([], 50) is None and b.percentile([3.0], 95) == 3.0


def test_a_fault_without_figures_is_listed_and_fails_the_bench(tmp_path: Path) -> None:
    verdict = {"passed": True, "faults": [_fault(0, 0.2, 1.0, 0), _fault(1, None, 1.0, 4)], "run": {"slo": {}}}
    (tmp_path / "verdict.json").write_text(json.dumps(verdict))
    r = subprocess.run([sys.executable, str(REPO / "bench" / "failover.py"), "--run-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "unmeasured (1): kill-1" in r.stdout and "lost requests: 4 in total" in r.stdout
    assert "failover_s" in r.stdout and "p95" in r.stdout
