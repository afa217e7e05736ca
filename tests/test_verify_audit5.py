"""Wrong verdicts a fifth audit of the verifier found (issue 7: the verdict must be true).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way a real
Consul/Envoy mesh and the harness's collectors would record it; each asserts the verdict FAILS, so each fails on
the verifier as the audit found it (each docstring's "HOLE." says how it passed then). Next to each, a control:
the same run with the mesh (or the fault) behaving passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, Scenario, _write_plan, chaos_records, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import verify
from tests.verdicts import write_rows as _write

AZ_A, AZ_B = "us-west-2a", "us-west-2b"


def _scenario(faults: list[FaultSpec], **kw: Any) -> Scenario:
    return Scenario(T, duration_s=kw.pop("duration_s", 90), rate_per_zone=kw.pop("rate_per_zone", 4), faults=faults,
                    **kw)  # fmt: skip


# -- 1. a fault that never took effect -----------------------------------------------------------------------------
def _no_op(d: Path, fault: FaultSpec, node: str | None = None) -> Path:
    """The run of a mesh nothing happened to, with the records of `fault` having run: chaos.jsonl, plan.json and
    the journal say the action ran and succeeded (the action's primitive was a no-op: a kill whose pod stayed
    ready and kept serving, a node or zone stop that stopped nothing, a partition rule that matched nothing)."""
    write_run(d, _scenario([]))
    sc = _scenario([fault])
    records = list(chaos_records(sc))
    if node is not None:  # the node fault the experiment ran (synth records a kill_pod for a service-down)
        records = [{**r, "action": "kill_node", "node": node} for r in records]
    _write(d / "chaos.jsonl", records)
    _write_plan(d, sc)
    return d


NO_OPS = {
    # the zone's entry service: no mesh caller of it, so no failover pair to catch it
    "kill-frontend": (
        FaultSpec("kill-frontend-lax", "service-down", LAX, ("frontend",), 30, 50, entry_down=True),
        None,
    ),
    "zone-outage": (FaultSpec("zone-lax", "zone-down", LAX, (), 30, 50, entry_down=True), None),
    "partition": (FaultSpec("partition-lax", "partition", LAX, (), 30, 50, entry_down=True), None),
    # an AZ's pod: Region callers spread over every AZ, no failover pair either
    "kill-az-pod": (FaultSpec("kill-product-api-2a", "service-down", AZ_A, ("product-api",), 30, 50), None),
    "kill-az-node": (
        FaultSpec(
            "kill-node-2b-n1", "service-down", AZ_B, ("frontend", "product-api", "public-api"), 30, 50, entry_down=True
        ),
        "2b-n1",
    ),
}


@pytest.mark.parametrize("case", sorted(NO_OPS))
def test_a_fault_that_never_took_effect_is_unverified(tmp_path: Path, case: str) -> None:
    """HOLE. The experiment's action ran and succeeded, chaos.jsonl has its inject and restore, and nothing
    happened to the mesh: the pods it took down kept serving (and calling) through the fault, the partitioned
    zone kept reaching the Region. Where no failover pair is asked to fail over (an entry service, an AZ, a zone
    outage or partition, whose pairs are only asked to recover), every hop stayed in-zone, recovery was
    "immediate", and the verdict PASSED: the failover was never exercised. Now coverage fails the fault as
    unverified: a pod it took down that served or called later than maxFailoverS after the inject, a partition
    with no failed hop out of its zone."""
    fault, node = NO_OPS[case]
    v = verify(_no_op(tmp_path / "run", fault, node))
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = " ".join(why(v))
    assert "did not take effect" in text or "not shown to have cut" in text, text
    assert not v.faults[0].passed


@pytest.mark.parametrize("case", ["kill-frontend", "zone-outage", "partition"])
def test_control_a_fault_that_took_effect_passes(tmp_path: Path, case: str) -> None:
    """The same faults when they happen (the zone's frontends gone, its nodes down, its link to the Region cut):
    the records show it, and the verdict passes."""
    fault, _ = NO_OPS[case]
    v = verify(write_run(tmp_path / "run", _scenario([fault])))
    assert v.passed, why(v)
