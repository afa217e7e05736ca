"""Wrong verdicts a seventh audit of the verifier found (issue 7: the verdict must be true).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way a real
Consul/Envoy mesh and the harness's collectors would record it; each asserts the verdict FAILS, so each fails on
the verifier as the audit found it (each docstring's "HOLE." says how it passed then). Next to each, a control:
the same run with the mesh (or the records) behaving passes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.verify import COVERAGE, LOCALITY
from harness.verify.synth import FaultSpec, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit5 import _scenario
from tests.test_verify_soundness import AZ, LAX, T0, failed, inventory, pod_of
from tests.verdicts import envoy_start, rows, verify, write_rows

KILL = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


def _edit_log(d: Path, pod: str, keep: Callable[[dict[str, Any], float], dict[str, Any] | None]) -> int:
    """Rewrite one sidecar's access log line by line (`keep` gets the line and its time from the run's start and
    returns the line to write, or None to drop it); returns how many lines it changed or dropped."""
    path = d / "accesslogs" / f"{pod}.jsonl"
    out, changed = [], 0
    for r in rows(path):
        new = keep(r, envoy_start(r) - T0)
        changed += new != r
        if new is not None:
            out.append(new)
    write_rows(path, out)
    return changed


def _region_host(d: Path, service: str, port: int) -> str:
    p = next(e for e in inventory(d) if e["zone"] == AZ and e["service"] == service and e["event"] == "added")
    return f"{p['ip']}:{port}"


# -- 1. a sidecar's access log with a stretch missing in the middle ------------------------------------------------
@pytest.mark.parametrize(("case", "faults", "gap"), [("steady", [], (40, 70)), ("fault", [KILL], (32, 48))])
def test_a_sidecar_log_with_a_gap_is_unverified(tmp_path: Path, case: str, faults: list[FaultSpec], gap: Any) -> None:
    """HOLE. LAX's public-api sidecar log lost a stretch (a `kubectl logs -f` stream that reconnected after a
    while, a lost chunk) while frontend's log shows it serving throughout: every call it made then was never
    judged, and its lines before and after the gap filled the pair, so the verdict PASSED. Only a log that
    stopped for good (no line after) was asked for. Here the calls in the gap went to the Region while LAX's
    product-api was healthy (a locality violation the sidecar did log, and the log lost); in a fault, a gap
    hides the failover's own hops. Now coverage fails the pod's log as incomplete."""
    d = write_run(tmp_path / "run", _scenario(faults))
    caller = pod_of(d, LAX, "public-api")["pod"]
    host = _region_host(d, "product-api", 9090)
    lo, hi = gap
    if not faults:  # the broken mesh, as its sidecar logged it (in the fault, the Region is where it belongs)
        assert _edit_log(d, caller, lambda r, t: {**r, "upstream_host": host} if lo <= t < hi else r) > 10
        shown = verify(d)
        assert not shown.passed and LOCALITY in failed(shown), why(shown)
    assert _edit_log(d, caller, lambda r, t: None if lo <= t < hi else r) > 10  # ... and as the collector lost it
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    assert f"{caller} (" in " ".join(why(v)) and "while its log had no line" in " ".join(why(v)), why(v)


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_control_complete_sidecar_logs_pass(tmp_path: Path, accesslogs: str) -> None:
    """The same runs with every line kept pass (a served hop's own call lies inside its lifetime)."""
    v = verify(write_run(tmp_path / "run", _scenario([KILL], accesslogs=accesslogs)))
    assert v.passed, why(v)
