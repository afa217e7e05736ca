"""e2e's cool-down waited for a recovery the verdict already read as shown (harness.verify.pending).

Found in the corpus run of the default topology: a Wavelength Zone's outage, restored, then five kills of the
zone's product-api, each within maxRecoveryS of the restore before it (`FaultScoping.cut_chain`). The cool-down
watches the outage's pair WL1 -> public-api from the last kill's restore (`pending._deferred`) and read the
pair's evidence over every hop since the outage's inject: the frontend's ten Region-served calls on its return
(public-api not ready yet) among the zone's 640 in-zone ones through the kills made a share of 1.5 %, which asks
444 good hops more, and the cool-down waited 29 s (to its bound) for a recovery the final verdict showed 2.7 s
after the outage's restore. The verdict reads its shares over the intervals the pair's upstream was not whole and
after the restore up to the instant (`FaultScoping.recovery_unshown`); the cool-down now asks that same rule.

The synthetic runs here: LAX's public-api killed for a second, the frontend's calls on the Region meanwhile and
for a second after the restore, then a kill of LAX's product-api within maxRecoveryS of that restore, and the
users stopped `STOP_S` after the last restore.
"""

from __future__ import annotations

from pathlib import Path

from harness.verify import FALLBACK, pending_recoveries
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit7 import _lose
from tests.test_verify_soundness import LAX, T, failed, pod_of
from tests.verdicts import verify

PUBLIC = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 30, 31, 0.2, 1.0)
# the zone's next fault begins 49 s after that restore (within maxRecoveryS: the pair is measured after its restore
# by the cool-down, `FaultScoping.cut_chain`), restored at 85
PRODUCT = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 80, 85, 0.2, 1.0)
STOP_S = 10.0
RATE = 4


def _run(d: Path, public: FaultSpec = PUBLIC, duration_s: float = PRODUCT.restore + STOP_S) -> tuple[Path, float]:
    """The chain's run, stopped at `duration_s`, and the instant its records end (the cool-down's "now")."""
    sc = Scenario(T, duration_s=duration_s, rate_per_zone=RATE, faults=[public, PRODUCT])
    return write_run(d, sc), sc.start + duration_s


def test_a_recovery_the_verdict_shows_is_not_waited_for_after_the_zones_later_faults(tmp_path: Path) -> None:
    """The reproducer. The frontend's ~7 Region-served calls during the kill and the second after it, among the
    ~200 in-zone ones up to the product-api kill's restore, made the cool-down's share about 3 %: 40 good hops
    after that restore were not enough for it, so it waited (to maxRecoveryS past the restore, with no more
    traffic). The verdict reads a clean switch (every call on the Region while public-api was down, then every
    one in-zone after the first good one) as shown by that first good hop, and passes the run stopped here."""
    d, now = _run(tmp_path / "run")
    assert pending_recoveries(d, T, now) == []
    v = verify(d)
    assert v.passed, why(v)
    f = next(r for r in v.faults if r.fault == PUBLIC.fault)
    assert f.recovery_s is not None and f.recovery_s < 2.0, f


def test_a_pair_whose_records_stop_at_the_last_restore_is_still_waited_for(tmp_path: Path) -> None:
    """Control: LAX's frontend has no line after the product-api kill's restore yet (lines still in Envoy's
    buffer): public-api's pair is not on record after that restore, and is waited for from it, as before."""
    d, now = _run(tmp_path / "run")
    frontend = str(pod_of(d, LAX, "frontend")["pod"])
    assert _lose(d, frontend, float(PRODUCT.restore or 0), 1e9) > 0
    left = pending_recoveries(d, T, now)
    assert (LAX, "public-api", PUBLIC.fault) in [(p.zone, p.upstream, p.fault) for p in left], left


def test_a_pair_never_back_is_still_waited_for_until_due_and_fails(tmp_path: Path) -> None:
    """Control: the broken mesh, LAX's frontend calling the Region's public-api to the end: waited for until
    maxRecoveryS past the last restore, and the verdict then fails it ("never recovers")."""
    broken = FaultSpec(PUBLIC.fault, PUBLIC.kind, LAX, PUBLIC.services, PUBLIC.inject, PUBLIC.restore, 0.2, 1e6)
    d, now = _run(tmp_path / "stopped", broken)
    # (LAX's public-api then makes no call: the product-api kill's pair has no hop after its restore either)
    assert ("public-api", PUBLIC.fault) in [(p.upstream, p.fault) for p in pending_recoveries(d, T, now)]
    end = float(PRODUCT.restore or 0) + T.slo.max_recovery_s + 1
    d, now = _run(tmp_path / "due", broken, duration_s=end)
    assert pending_recoveries(d, T, now) == []
    v = verify(d)
    assert FALLBACK in failed(v), why(v)
    assert f"{PUBLIC.fault} never recovers" in " ".join(why(v)), why(v)
