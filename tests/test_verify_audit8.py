"""Wrong verdicts an eighth audit of the verifier found (issue 7: the verdict must be true).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way a real
Consul/Envoy mesh and the harness's collectors would record it; each asserts the verdict FAILS, so each fails on
the verifier as the audit found it (each docstring's "HOLE." says how it passed then). Next to each, a control:
a correct mesh, timed adversarially but legally, passes.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.contract.clock import CLOCK_TOLERANCE_S
from harness.verify import COVERAGE, FALLBACK
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_audit7 import _edit_log
from tests.test_verify_clock import BEHIND, _clock, _skew
from tests.test_verify_soundness import LAX, T0, T, failed, pod_of
from tests.verdicts import rows, verify, write_rows

KILL = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


# -- 1. the zone's clock bound left out of the SLO judgement ---------------------------------------------------------
SLOW_RTT_S = 0.09  # LAX's probes answered 90 ms after they were sent: its offset is known to ± 45.5 ms (< 50 ms)


def _clock_logged_at(d: Path, offset_s: float, at: float) -> Path:
    """clock.jsonl as the harness writes it on EKS, three probes per zone and batch, LAX's round trips slow
    (`SLOW_RTT_S`) and logged by its frontend's sidecar at `at` of the way through them (0: the request reached
    it at once and the answer was slow; 1: the request was slow and the answer at once: both legal), the other
    zones' 4 ms round trips halfway. The hops are corrected by the middle of the bound, so LAX's sit
    (0.5 - at) x 90 ms later than they happened (`at` 1: 45 ms earlier)."""
    return _clock(d, offset_s, lax_rtt_s=SLOW_RTT_S, lax_at=at, spacing_s=0.2)


def _on_eks(tmp_path: Path, name: str, sc: Scenario, at: float) -> Path:
    """The run `sc` on nodes 300 ms behind the runner, with LAX's clock measured as `_clock_logged_at` says."""
    return _clock_logged_at(_skew(write_run(tmp_path / name, sc), BEHIND), BEHIND, at)


# a failover that took 5.018 s against maxFailoverS 5 s: the kill at 30.03 s, LAX's calls fail until 34.93 s and its
# first Region-served one starts at 35.048 s (6 requests/s per zone)
SLOW_FAILOVER = Scenario(T, duration_s=90, rate_per_zone=6,
                         faults=[replace(KILL, inject=30.03, failover_delay_s=4.9)])  # fmt: skip
# a recovery that took 5.02 s against maxRecoveryS 5 s (a game day's tight recovery SLO)
TIGHT = T.model_copy(update={"slo": T.slo.model_copy(update={"max_recovery_s": 5.0})})
SLOW_RECOVERY = Scenario(TIGHT, duration_s=90, rate_per_zone=6,
                         faults=[replace(KILL, restore=50.03, recovery_delay_s=4.95)])  # fmt: skip


@pytest.mark.parametrize(("figure", "sc"), [("failover", SLOW_FAILOVER), ("recovery", SLOW_RECOVERY)])
def test_a_figure_over_its_slo_is_not_passed_within_the_clock_bound(tmp_path: Path, figure: str, sc: Scenario) -> None:
    """HOLE. On EKS the hops are put on the runner's clock by the middle of their zone's measured offset, which
    is known to within its half-width (up to CLOCK_TOLERANCE_S, 50 ms, passes coverage). LAX's probes were logged
    at the end of their 90 ms round trips, so its hops sit 45 ms earlier than they happened: a failover (a
    recovery) that took 5.02 s against an SLO of 5 s was measured at 4.97 s and the verdict PASSED (the fault's
    figure was judged as exact). On one clock the same run fails. Now the figure is within its SLO only with
    the zone's clock bound added: unverified, and the message says the clock is why."""
    clean = verify(write_run(tmp_path / "clean", sc))
    assert not clean.passed and FALLBACK in failed(clean), why(clean)  # the truth, on one clock
    measured = getattr(clean.faults[0], f"{figure}_s")
    assert measured is not None and 5.0 < measured < 5.0 + SLOW_RTT_S / 2, clean.faults[0]
    v = verify(_on_eks(tmp_path, "eks", sc, at=1.0))
    got = getattr(v.faults[0], f"{figure}_s")
    assert got is not None and got < 5.0, v.faults[0]  # the figure as the records place it (the clock is stated)
    assert not v.passed and failed(v) == {FALLBACK}, why(v)
    text = " ".join(why(v))
    assert "not shown within" in text and "clock is known to within ± 45." in text, text


@pytest.mark.parametrize("at", [0.0, 1.0])
@pytest.mark.parametrize("figure", ["failover", "recovery"])
def test_control_a_figure_within_its_slo_by_more_than_the_clock_bound_passes(
    tmp_path: Path, figure: str, at: float
) -> None:
    """A correct mesh: the failover (recovery) takes 4.82 s (4.85 s) against 5 s, the clock bound ± 45.5 ms, and
    LAX's probes logged at either end of their round trips (its hops 45 ms late or 45 ms early): it passes."""
    fault = replace(KILL, failover_delay_s=4.8) if figure == "failover" else replace(KILL, recovery_delay_s=4.8)
    v = verify(_on_eks(tmp_path, "eks", Scenario(TIGHT, duration_s=90, rate_per_zone=4, faults=[fault]), at))
    assert v.passed, why(v)
    clock = next(c for i in v.invariants for c in i.checks if c.subject == f"clock {LAX}")
    assert abs(clock.detail["uncertainty_s"] - (SLOW_RTT_S + 0.001) / 2) < 0.001 < CLOCK_TOLERANCE_S, clock.detail
    assert 4.7 < getattr(v.faults[0], f"{figure}_s") < 4.95, v.faults[0]


# -- 2. an outage that began during a fault and never ended ----------------------------------------------------------
T_REPLICAS = {1: T, 2: _with_replicas("product-api", 2)}
KILL_PUBLIC_API = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 30, 50, 0.2, 1.0)


def _outage_during_a_fault(tmp_path: Path, back: float | None, replicas: int = 1) -> Path:
    """A kill of LAX's public-api (30-50 s); at 40 s one of LAX's product-api pods turns unready (a crash, a
    readiness probe failing on) and is ready again at `back` s (None: never, to the end of the run at 150 s).
    The mesh does what it should: with no ready product-api in LAX (or too few) its calls go to the Region."""
    until = back if back is not None else 1000.0
    sc = Scenario(T_REPLICAS[replicas], duration_s=150, rate_per_zone=4, faults=[KILL_PUBLIC_API],
                  degraded=[(LAX, "product-api", 40.0, until)])  # fmt: skip
    d = write_run(tmp_path / "run", sc)
    if back is None:  # the model writes the ready when it comes: past the end of the run, it never came
        write_rows(d / "inventory.jsonl", [e for e in rows(d / "inventory.jsonl") if e["ts"] < T0 + 500])
    return d


@pytest.mark.parametrize("replicas", [1, 2])
def test_an_outage_that_began_in_a_fault_and_never_ended_fails(tmp_path: Path, replicas: int) -> None:
    """HOLE. LAX's product-api went unready during a kill of LAX's public-api and stayed so for the 100 s to the
    end of the run (with two replicas: one of them, so LAX spilled 30 % of its calls to the Region to the end).
    An outage outside every fault that lasts longer than maxRecoveryS fails fallback ("an outage nobody injected
    that did not recover"), but one that began *during* a fault was skipped, for as long as it lasted: the
    public-api kill recovered, product-api's locality was excluded to the end, and the verdict PASSED without
    even a note. Now the faults an outage met explain it until maxRecoveryS after their restore."""
    v = verify(_outage_during_a_fault(tmp_path, None, replicas))
    assert not v.passed and failed(v) == {FALLBACK}, why(v)
    text = v.invariant(FALLBACK).message
    assert f"product-api had {'no' if replicas == 1 else 'too few'} ready pod" in text, text
    assert f"in {LAX}" in text and "during fault kill-public-api-lax" in text and "not back after the fault" in text


@pytest.mark.parametrize("replicas", [1, 2])
def test_control_an_outage_that_began_in_a_fault_and_ended_within_max_recovery_passes(
    tmp_path: Path, replicas: int
) -> None:
    """The same outage over 59 s after the restore (within maxRecoveryS 60 s): the fault explains it, it passes."""
    v = verify(_outage_during_a_fault(tmp_path, 50 + 59.0, replicas))
    assert v.passed, why(v)


# -- 3. a partition that held for a moment ---------------------------------------------------------------------------
PARTITION = FaultSpec("partition-lax", "partition", LAX, (), 30, 50, entry_down=True)


def test_a_partition_that_did_not_hold_is_unverified(tmp_path: Path) -> None:
    """HOLE. partition_zone ran and succeeded, chaos.jsonl has the inject (30 s) and the restore (50 s), but the
    cut held for one second (a NetworkPolicy its enforcer stopped applying, a rule flushed): from 31 s on LAX's
    users were served as ever, their coffee queries reaching postgres in the Region across the link the fault
    was to cut. The partition's effect was shown by a failed hop out of the zone, and the failures of that one
    second were one: the verdict PASSED a 20 s partition survived and recovered. Now a successful `/api` request
    entering the zone more than maxFailoverS after the inject and answered before the restore shows it did not
    hold: coverage fails the fault as unverified."""
    d = write_run(
        tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[replace(PARTITION, restore=31)])
    )
    write_rows(d / "chaos.jsonl", [{**c, "ts": T0 + 50} if c["phase"] == "restore" else c
                                   for c in rows(d / "chaos.jsonl")])  # fmt: skip
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = " ".join(why(v))
    assert f"the partition of {LAX} did not take effect throughout: " in text and "needs postgres across" in text, text


def test_control_a_partition_that_held_passes_with_users_served_at_its_edges(tmp_path: Path) -> None:
    """A partition that held, timed adversarially: LAX's users are still served for 4.9 s after the inject (the
    cut takes a while after its record) and one request, begun 100 ms before the restore, is answered 100 ms
    after it (the restore is written before the heal): it passes."""
    d = write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[PARTITION]))
    reqs = rows(d / "requests.jsonl")
    for r in reqs:
        rel = r["ts"] - T0
        if r["zone"] == LAX and 30 <= rel < 34.9:
            r.update(ok=True, status=200, error=None)
        elif r["zone"] == LAX and 49.9 <= rel < 50:
            r.update(ok=True, status=200, error=None, latency_ms=(50.1 - rel) * 1000)
    write_rows(d / "requests.jsonl", reqs)
    v = verify(d)
    assert v.passed, why(v)


# -- 5. lines lost all along a busy sidecar's log ---------------------------------------------------------------------
def _lose_every_other(d: Path, pod: str, lo: float, hi: float) -> int:
    """Drop every other line of `pod`'s own calls from `lo` to `hi` s (a collector dropping lines under back
    pressure, a stream that loses chunks; kind's inbound lines, of the hops it served, are left); returns how
    many."""
    n = [0]

    def drop(r: dict[str, Any], t: float) -> dict[str, Any] | None:
        if lo <= t < hi and r.get("upstream_cluster") != "local_app":
            n[0] += 1
            return None if n[0] % 2 else r
        return r

    return _edit_log(d, pod, drop)


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_half_a_busy_sidecars_lines_lost_is_unverified(tmp_path: Path, accesslogs: str) -> None:
    """HOLE. LAX's public-api serves 30 requests/s; every other line of its own log is lost for 40 s (600 calls
    never judged). The gap rule asks each hop it served for a call of its own in the served hop's lifetime, widened
    by the clocks' tolerance (± 102 ms) even where runner and nodes share one clock (no clock.jsonl: local, kind):
    a neighbouring line always fell in it, and the verdict PASSED. On one clock only Envoy's millisecond stamps
    separate them: each served hop without its own call is a gap."""
    d = write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=30, accesslogs=accesslogs))
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    assert _lose_every_other(d, pod, 20, 60) >= 600
    v = verify(d)
    assert not v.passed and failed(v) == {COVERAGE}, why(v)
    assert f"{pod} (" in " ".join(why(v)) and "while its log had no line" in " ".join(why(v)), why(v)


@pytest.mark.parametrize("accesslogs", ["local", "kind"])
def test_control_a_busy_sidecars_whole_log_passes(tmp_path: Path, accesslogs: str) -> None:
    """The same busy runs with every line kept pass, with a kill too (each served hop's own call lies inside its
    lifetime to the millisecond); so does a node kill losing its last unflushed second (test_verify_audit7)."""
    for name, faults in (("steady", []), ("kill", [KILL])):
        sc = Scenario(T, duration_s=90, rate_per_zone=30, faults=faults, accesslogs=accesslogs)
        v = verify(write_run(tmp_path / name, sc))
        assert v.passed, why(v)


@pytest.mark.parametrize(("answered_before_restore_s", "leaked"), [(0.1, True), (0.02, False)])
def test_a_partition_judged_on_zone_stamped_requests_allows_the_zones_clock_bound(
    tmp_path: Path, answered_before_restore_s: float, leaked: bool
) -> None:
    """Requests stamped in the zones' pods (in-zone workers) carry LAX's node clock, known to the runner's within
    its bound (here ±40 ms: an 80 ms probe round trip). One answered 20 ms before the restore may have been
    answered after the heal on the runner's clock: no leak. One answered 100 ms before it crossed the cut link
    whatever the clocks: the partition did not hold."""
    from tests.test_verify_clock import _clock

    d = write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[PARTITION]))
    reqs = rows(d / "requests.jsonl")
    late = next(r for r in reqs if r["zone"] == LAX and 45 <= r["ts"] - T0 < 49 and "/api" in r.get("name", ""))
    late.update(ok=True, status=200, error=None, latency_ms=(50 - answered_before_restore_s - (late["ts"] - T0)) * 1e3)
    for r in reqs:  # each zone's worker on its probed node (the record names it)
        r["node"] = f"{T.short(r['zone'])}-n1"
    write_rows(d / "requests.jsonl", reqs)
    _clock(d, 0.0, lax_rtt_s=0.08, requests_in_zones=True)
    v = verify(d)
    text = " ".join(why(v))
    assert (f"the partition of {LAX} did not take effect throughout: 1 user requests" in text) is leaked, text
