"""Correct meshes judged FAIL or unverified by legal timing (audit 8), each next to the broken mesh that must fail.

Product rule: same config, same verdict. Each case is a synthetic run timed as a real Envoy/Consul mesh and the
harness may time it (faults back to back, a run ending shortly after a restore, nodes on their own clocks), and
failed before its fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import FALLBACK
from harness.verify.synth import FaultSpec
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, failed, run
from tests.verdicts import verify


# -- 1. a recovery whose callers the zone's next fault took down, shown after that fault's restore -----------------
def _callers_cut(tmp_path: Path, gap: float, rate: float, recovery_s: float = 1.0) -> Path:
    """LAX's product-api killed at 30 and back at 50 (the Region keeps serving `recovery_s` after it: Consul's
    endpoint change reaches Envoy in about a second); LAX's public-api, its only caller, killed `gap` s after the
    restore and back at 70."""
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, recovery_s)
    g = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 50 + gap, 70, 0.2, 1.0)
    return run(tmp_path, faults=[f, g], duration_s=100, rate_per_zone=rate)


@pytest.mark.parametrize("rate", [2, 5, 20])
@pytest.mark.parametrize("gap", [0.05, 0.3, 0.9])
def test_a_recovery_whose_callers_the_next_fault_took_down_is_shown_after_its_restore(
    tmp_path: Path, gap: float, rate: float
) -> None:
    """The next experiment killed the pair's callers before Envoy used the restored product-api: no hop could
    show the pair back before that inject, and the verdict failed the mesh as unverified, while a machine one
    second slower to start the next experiment passed it. The pair's next hops, the replacement callers' after
    the second restore, show it back in-zone (or not): that is its recovery, measured there."""
    v = verify(_callers_cut(tmp_path, gap, rate))
    assert v.passed, why(v)
    f = next(r for r in v.faults if r.fault == "kill-product-api-lax")
    assert any("kill-public-api-lax" in m and "back" in m for m in f.messages), f.messages


@pytest.mark.parametrize("rate", [2, 20])
def test_a_pair_that_never_recovers_fails_after_the_next_faults_restore_too(tmp_path: Path, rate: float) -> None:
    """The broken mesh: LAX's public-api keeps calling the Region's product-api after both restores."""
    v = verify(_callers_cut(tmp_path, 0.3, rate, recovery_s=1000))
    assert FALLBACK in failed(v), why(v)
    said = " ".join(why(v))
    assert "never recovers" in said and "after the restore of fault kill-public-api-lax" in said, said
