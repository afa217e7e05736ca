"""Broken meshes a ninety-first audit found the verdict passing (false PASS), each next to its control.

Each "HOLE." says how the verdict went wrong before its fix; each control is the same run with the mesh behaving
as Envoy does, and passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import LOCALITY, Verdict
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import _with_replicas
from tests.test_verify_audit14 import _to_region_every
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import verify

# -- 1. a restore that brought back one of two replicas ready: the spill rule after the fault's own recovery --------
T2 = _with_replicas(T, "product-api", 2)
RESTORE = 50.0
UNREADY_FROM = 56.0  # one of the two replacements unready from here to the end (a crash loop, a failing probe)
RUN_S = 100.0  # the run ends 50 s after the restore: inside maxRecoveryS (60 s), where the spill was excused


def _half_restored(tmp_path: Path, all_to_region: bool) -> Verdict:
    """LAX's product-api (two replicas) killed at 30 s and restored at 50 s; LAX's public-api back in-zone a second
    later (the fault's recovery, measured); from 56 s one of the two replacements is unready to the end of the run
    while the other serves. Envoy's priority load keeps min(1, 1.4 x 1/2) = 70 % of the zone's calls on the ready
    one and spills 30 % to the Region (synth's `degraded`). `all_to_region`: the zone's sidecars instead send every
    call to the Region from then on, though a ready pod of their own zone is there."""
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30.0, RESTORE, 0.2, 1.0)
    degraded = [(LAX, "product-api", UNREADY_FROM, RUN_S)]
    sc = Scenario(T2, duration_s=RUN_S, rate_per_zone=4, faults=[f], degraded=degraded)
    d = write_run(tmp_path / "run", sc)
    if all_to_region:
        d = _to_region_every(d, T2, LAX, UNREADY_FROM, RUN_S, 1)
    return verify(d)


def test_a_zone_sending_everything_to_the_region_with_a_ready_pod_after_its_recovery_fails(tmp_path: Path) -> None:
    """HOLE. The spill rule (`RoutingChecks._spill_share`: while some of the zone's pods are ready, Envoy keeps
    70 % or more in the zone) excused every fault in the zone until maxRecoveryS past its restore, whatever the
    fault's own recovery measured. The fault's recovery was measured 1 s after the restore, locality left the
    hops out as a spill, and 176 of 176 hops on the Region with a ready pod in the zone passed: every restore
    was followed by a minute in which a zone could send all its calls elsewhere. The excuse now ends where the
    fault's excuse of the pair's locality ends (its measured recovery)."""
    v = _half_restored(tmp_path, all_to_region=True)
    said = " ".join(why(v))
    assert LOCALITY in failed(v), said
    assert f"{LAX} -> product-api: while 1 of its 2 pods there were ready" in said, said
    assert "Envoy keeps 70% in the zone, but 0 of" in said, said


def test_a_zone_that_spills_as_envoy_does_after_its_recovery_passes(tmp_path: Path) -> None:
    """Control: the same run with the zone keeping 70 % in-zone (Envoy's priority load) passes."""
    v = _half_restored(tmp_path, all_to_region=False)
    assert v.passed, why(v)


@pytest.mark.parametrize("replicas_back_s", [1.5, 3.0, 12.0])
def test_replacements_ready_one_after_the_other_after_a_restore_pass(tmp_path: Path, replicas_back_s: float) -> None:
    """Control (no timing in the verdict): the two replacements turn Ready `replicas_back_s` apart (kind/EKS: the
    dataplane's own readiness probe ticks every 10 s), the zone's sidecars learn of the first a second late (the
    fault's measured recovery), and spill 30 % until the second is ready. Before the fault's recovery its own rule
    judges the hops; after it, Envoy's 70 % is what the spill rule asks. (The unready replica is one of the
    replacements: synth's `degraded` marks the zone's first pod of the instant, so it starts just after the
    restore has replaced them.)"""
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30.0, RESTORE, 0.2, 1.0)
    sc = Scenario(T2, duration_s=RUN_S, rate_per_zone=20, faults=[f],
                  degraded=[(LAX, "product-api", RESTORE + 0.001, RESTORE + replicas_back_s)])  # fmt: skip
    v = verify(write_run(tmp_path / "run", sc))
    assert v.passed, why(v)
