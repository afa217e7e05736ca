"""The error budget holds for every zone's users, not only for all users pooled.

A window's failed-request rate pools every zone. A city that is a small share
of the users (one edge zone of six, or of twelve) could fail at several times
the budget while the pooled rate stayed within it: the verdict passed a mesh
whose users in that city saw one request in twenty fail. Each zone's users
are now judged on their own, against what the budget leaves to chance at
their traffic (`ZONE_BUDGET_ALPHA`), so a few failures in a zone's few
requests do not fail a correct mesh. The runs come from the synthetic mesh
(`Scenario.flaky`: a zone's frontend answers every n-th request with a 500),
so the failure counts below are computed from the scenario, not copied.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from harness.topology import load_topology
from harness.verify import AVAILABILITY, Verdict
from harness.verify.invariants.sql import ZONE_BUDGET_ALPHA, binomial_sf
from harness.verify.synth import Scenario, write_run
from harness.verify.verdict import FAIL, PASS, WindowResult
from tests.verdicts import verify

T = load_topology()
WIDE = load_topology(Path(__file__).resolve().parents[1] / "harness" / "fixtures" / "topology-wide.yaml")
LAS = "us-west-2-las-1a"
DURATION_S, RATE = 120, 4
PER_ZONE = DURATION_S * RATE  # users' requests per zone (the synthetic mesh sends at a fixed rate)


def _steady(v: Verdict) -> WindowResult:
    inv = v.invariant(AVAILABILITY)
    return next(w for w in inv.windows if w.window == "steady state")


def test_a_zone_failing_beyond_the_budget_fails_though_every_zone_pooled_is_within(tmp_path: Path) -> None:
    every = 20  # 5 % of LAS's users' requests: five times the 1 % budget
    v = verify(write_run(tmp_path / "r", Scenario(T, duration_s=DURATION_S, rate_per_zone=RATE, flaky=[(LAS, every)])))
    w = _steady(v)
    failed = PER_ZONE // every
    assert w.failed == failed and w.requests == PER_ZONE * len(T.zones)
    assert w.error_rate is not None and w.error_rate < T.slo.error_budget  # the pooled rule alone passed this run
    assert not v.passed and AVAILABILITY in {i.name for i in v.invariants if not i.passed}
    assert w.status == FAIL
    by_zone = {z["zone"]: z for z in w.by_zone}
    assert by_zone[LAS]["failed"] == failed and by_zone[LAS]["requests"] == PER_ZONE
    assert by_zone[LAS]["status"] == FAIL
    assert all(z["status"] == PASS for name, z in by_zone.items() if name != LAS)
    assert sum(z["requests"] for z in w.by_zone) == w.requests and sum(z["failed"] for z in w.by_zone) == w.failed
    msg = v.invariant(AVAILABILITY).message
    assert f"{LAS}: {failed}/{PER_ZONE}" in msg and "within the 1% budget over every zone" in msg
    assert w.first_offenders and all(r["zone"] == LAS for r in w.first_offenders)


def test_a_small_city_of_a_wide_topology_is_judged_on_its_own(tmp_path: Path) -> None:
    zone = WIDE.edge_zones[-1].name
    every = 8  # 12.5 % of one zone's users, against a 2 % budget, hidden among the wide topology's zones
    v = verify(write_run(tmp_path / "r", Scenario(WIDE, duration_s=60, rate_per_zone=RATE, flaky=[(zone, every)])))
    w = _steady(v)
    assert w.error_rate is not None and w.error_rate < WIDE.slo.error_budget
    assert not v.passed and w.status == FAIL
    assert [z["zone"] for z in w.by_zone if z["status"] == FAIL] == [zone]


def test_a_few_failures_a_zone_could_see_by_chance_pass(tmp_path: Path) -> None:
    """2.5 % of one zone's 480 requests is above the 1 % budget, but 12 of 480 is what a mesh at the budget
    shows about once in a few hundred runs: failing it would fail a correct mesh by chance, not by its defect."""
    every = 40
    failed = PER_ZONE // every
    assert binomial_sf(failed, PER_ZONE, T.slo.error_budget) >= ZONE_BUDGET_ALPHA  # the scenario is what it says
    v = verify(write_run(tmp_path / "r", Scenario(T, duration_s=DURATION_S, rate_per_zone=RATE, flaky=[(LAS, every)])))
    w = _steady(v)
    assert v.passed, v.failure_messages
    by_zone = {z["zone"]: z for z in w.by_zone}
    assert by_zone[LAS]["failed"] == failed and by_zone[LAS]["status"] == PASS


def _exact_sf(k: int, n: int, p: Fraction) -> float:
    return float(sum(comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(1, 10, "1/10"), (5, 80, "1/100"), (12, 480, "1/100"), (30, 480, "1/100"), (3, 3, "1/2"), (7, 1000, "1/1000")],
)
def test_binomial_sf_is_the_binomial_upper_tail(k: int, n: int, p: str) -> None:
    """Against exact rational arithmetic: the tails judged (1e-3 and below) are where 1 - cdf keeps no digits."""
    assert binomial_sf(k, n, float(Fraction(p))) == pytest.approx(_exact_sf(k, n, Fraction(p)), rel=1e-9)


def test_binomial_sf_edges_and_a_long_runs_counts() -> None:
    assert binomial_sf(0, 10, 0.3) == 1.0 and binomial_sf(11, 10, 0.3) == 0.0
    assert binomial_sf(1, 10, 0.0) == 0.0 and binomial_sf(10, 10, 1.0) == 1.0
    # a nightly's steady state: millions of requests; summed from the tail, a handful of terms
    assert binomial_sf(11_000, 1_000_000, 0.01) < 1e-20 < binomial_sf(10_100, 1_000_000, 0.01) < 0.2
