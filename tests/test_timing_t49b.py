"""A correct mesh the verdict judged by how far apart its clocks were measured (t49b): reproducer next to control.

Rule: same config, same verdict. The slack under test is an assumption about which clock stamped a record; the
fix reads it from what the run recorded (each zone's measured clock bound).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import AVAILABILITY, COVERAGE, FALLBACK
from harness.verify.synth import FaultSpec, Scenario
from tests.test_verify_audit import why
from tests.test_verify_audit8 import _lose_every_other
from tests.test_verify_clock import BEHIND, _clock, _skew
from tests.test_verify_soundness import AZ, LAX, T, failed, pod_of
from tests.verdicts import Pristine, verify

AZ_B = "us-west-2b"
FAR_RTT_S = 0.09  # a probe's round trip from the runner to us-west-2a's entry (within the 50 ms tolerance: ±45.5 ms)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """Each scenario here written once: the tests judge copies of the same few runs on different clocks."""
    return Pristine(tmp_path_factory.mktemp("t49b"))


def _az_run(runs: Pristine, tmp_path: Path, name: str) -> Path:
    """us-west-2b's public-api killed 30-60 (its users fail over to public-api in us-west-2a), then us-west-2a's
    product-api killed 40-50, failing over after 2 s: us-west-2b's users lose requests whose failed hop is
    public-api-2a's, logged on a us-west-2a node."""
    faults = [
        FaultSpec("kill-public-api-2b", "service-down", AZ_B, ("public-api",), 30, 60, 0.2, 1.0),
        FaultSpec("kill-product-api-2a", "service-down", AZ, ("product-api",), 40, 50, 2.0, 1.0),
    ]
    return runs.run(tmp_path / name, Scenario(T, duration_s=90, rate_per_zone=4, faults=faults))


def _clocks(d: Path, far_zone: str | None) -> Path:
    """clock.jsonl as on EKS, every node BEHIND the runner: three probes per zone and batch, each logged halfway
    through a 4 ms round trip; `far_zone`'s probes took FAR_RTT_S and were logged at its very end (its
    frontend's sidecar saw each request only as the answer was about to leave): its offset is bounded to
    ±45.5 ms with the middle 45 ms off the truth, within the tolerance."""
    if far_zone is None:
        return _clock(d, BEHIND)
    return _clock(d, BEHIND, lax_rtt_s=FAR_RTT_S, lax_at=1.0, far_zone=far_zone)


def test_an_az_users_loss_is_tied_to_a_hop_on_another_azs_node_within_that_nodes_clock_bound(
    runs: Pristine, tmp_path: Path
) -> None:
    """HOLE. A request entering an AZ is tied to a failed hop of any AZ's callers (Consul CE spreads Region calls
    over every AZ's pods), but the tie allowed only the entry AZ's clock bound. us-west-2b's users, failed over
    to public-api-2a, lost requests during us-west-2a's product-api failover; their failed hops were logged on a
    us-west-2a node, put on the runner's clock 45 ms off (its bound ±45.5 ms, within the tolerance), and
    us-west-2b's ±2.5 ms left them outside their requests' lifetimes: the losses counted against the budget the
    same mesh on one clock passes."""
    assert verify(_az_run(runs, tmp_path, "one-clock")).passed
    d = _clocks(_skew(_az_run(runs, tmp_path, "far-2a"), BEHIND), AZ)
    v = verify(d)
    assert v.passed, why(v)


def test_control_az_clocks_measured_alike_tie_as_before(runs: Pristine, tmp_path: Path) -> None:
    """Control: every AZ's clock measured to within a few ms: the same run passes with its hops tied as before."""
    v = verify(_clocks(_skew(_az_run(runs, tmp_path, "near"), BEHIND), None))
    assert v.passed, why(v)


def test_control_an_az_failover_past_its_slo_still_fails_with_the_wider_tie(runs: Pristine, tmp_path: Path) -> None:
    """Control: the wider tie excuses no failover past maxFailoverS: us-west-2a's product-api failing over after
    7 s, with us-west-2a's clock measured far, still fails."""
    faults = [
        FaultSpec("kill-public-api-2b", "service-down", AZ_B, ("public-api",), 30, 60, 0.2, 1.0),
        FaultSpec("kill-product-api-2a", "service-down", AZ, ("product-api",), 40, 50, 7.0, 1.0),
    ]
    d = runs.run(tmp_path / "slow", Scenario(T, duration_s=90, rate_per_zone=4, faults=faults))
    v = verify(_clocks(_skew(d, BEHIND), AZ))
    assert {FALLBACK, AVAILABILITY} <= failed(v), why(v)


# -- the gap rule on separate clocks: the tolerance, not the clocks' measured bounds ----------------------------------
def _separate(d: Path) -> Path:
    """The run as EKS records it: every node BEHIND the runner, each zone measured to ±2.5 ms (4 ms probes)."""
    return _clocks(_skew(d, BEHIND), None)


def test_half_a_busy_sidecars_lines_lost_on_separate_clocks_is_unverified(runs: Pristine, tmp_path: Path) -> None:
    """HOLE. LAX's public-api serves 30 requests/s; every other line of its own log is lost for 40 s (600 calls
    never judged). The gap rule asks each hop it served for a call of its own within the served hop's lifetime,
    widened by both clocks' error; where the nodes keep their own clocks it took the tolerance for that (± 102 ms)
    though each zone was measured to ± 2.5 ms: a neighbouring line always fell in it, and the verdict PASSED the
    run that fails on one clock (test_verify_audit8). The slack is the two zones' measured bounds."""
    d = runs.run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=30))
    pod = str(pod_of(d, LAX, "public-api")["pod"])
    assert _lose_every_other(d, pod, 20, 60) >= 600
    v = verify(_separate(d))
    assert not v.passed and failed(v) == {COVERAGE}, why(v)
    assert f"{pod} (" in " ".join(why(v)) and "while its log had no line" in " ".join(why(v)), why(v)


def test_control_a_busy_sidecars_whole_log_on_separate_clocks_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same busy run with every line kept passes on separate clocks, steady and with a kill; and with
    one zone measured far (± 45.5 ms, its middle 45 ms off), each served hop's own call still lies within the
    widened lifetime."""
    kill = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)
    for name, faults, far in (("steady", [], None), ("kill", [kill], None), ("far", [kill], LAX)):
        d = runs.run(tmp_path / name, Scenario(T, duration_s=90, rate_per_zone=30, faults=faults))
        v = verify(_clocks(_skew(d, BEHIND), far))
        assert v.passed, (name, why(v))


def test_an_az_entrys_lost_lines_are_not_hidden_by_another_azs_clock_bound(runs: Pristine, tmp_path: Path) -> None:
    """The AZ tie's wider slack (any AZ's hops: the widest AZ bound) is for failed requests, tied to hops of any
    AZ's callers. A successful request is asked for its own entry's hop, logged in its entry zone: with
    us-west-2a's clock measured far (± 45.5 ms), us-west-2b's users at 30 requests/s, every other line of
    us-west-2b's frontend lost for 40 s and no request ids (the time rule), a neighbouring line 33 ms away hid each
    lost one within us-west-2a's bound; within us-west-2b's own ± 2.5 ms the log is incomplete, as on one clock."""
    d = runs.run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=30, request_ids=False))
    pod = str(pod_of(d, AZ_B, "frontend")["pod"])
    assert _lose_every_other(d, pod, 20, 60) >= 600
    v = verify(_clocks(_skew(d, BEHIND), AZ))
    assert not v.passed and COVERAGE in failed(v), why(v)
    assert AZ_B in " ".join(why(v)), why(v)
