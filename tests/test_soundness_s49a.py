"""A zone of the topology whose shoppers are on no record (s49a).

Availability is judged on the shoppers' requests only (the zone probes, a coffees query every few tens of ms into
a zone, are measurement, not users), and coverage's quiet-spell rule (`_users_gaps`) runs from a zone's first
shopper on. So a zone no shopper ever entered was judged by nothing but its pairs' "no traffic": with zone probes
into it (`harness traffic` probes every zone by default, on top of the `-u` shoppers, which locust spreads
round robin over the zones: `-u 3` over six zones leaves three with probes alone), its hops were there, every pair
had traffic, and the verdict passed a run in which nobody's experience of that zone was ever judged. The same
with a zone whose shoppers' records were lost (an in-zone worker's forwarded records never arrived).
Each case is a correct synthetic run (harness.verify.synth) whose requests are edited to what such a run records.

And a Region-only TCP upstream's calls that only the sidecars' upstream counters record: product-api's pooled
postgres connections leave no access-log line while they stay open, and call-graph read the hops alone, so pools
redialled to the read replica after the primary's kill passed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.chaos import expected as declared_errors
from harness.contract.users import PROBE_ENDPOINT
from harness.topology import load_topology
from harness.verify import CALL_GRAPH, COVERAGE, Verdict
from harness.verify.synth import FaultSpec, Scenario
from tests.verdicts import Pristine, rows, verify, write_rows

T = load_topology()
WLZ, LAX = "us-west-2-wl1-sfo-wlz-1", "us-west-2-lax-1a"
KILL_LAX = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


def _failed(v: Verdict) -> set[str]:
    return {i.name for i in v.invariants if not i.passed}


def _message(v: Verdict, name: str) -> str:
    return next(i.message for i in v.invariants if i.name == name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """Each of the three scenarios written once: a reproducer and its control edit or judge copies of the same run."""
    return Pristine(tmp_path_factory.mktemp("s49a"))


def _run(runs: Pristine, tmp_path: Path, name: str, faults: list[FaultSpec] | None = None) -> Path:
    sc = Scenario(T, duration_s=110, rate_per_zone=4, faults=list(faults or []), accesslogs="kind")
    return runs.run(tmp_path / name, sc)


def _probes_only(d: Path, zone: str) -> int:
    """Every request entering `zone` becomes a zone probe's (as locust records one: endpoint `probe`, a
    GraphQL coffees query): the zone's hops stay, its shoppers are gone. Returns how many were changed."""
    reqs = rows(d / "requests.jsonl")
    n = 0
    for r in reqs:
        if r["zone"] == zone:
            r.update(endpoint=PROBE_ENDPOINT, name="POST /api probe")
            n += 1
    write_rows(d / "requests.jsonl", reqs)
    return n


def test_a_zone_probes_alone_entered_is_unverified(runs: Pristine, tmp_path: Path) -> None:
    """The Wavelength Zone's requests are all zone probes: no shopper entered it in 110 s while every other
    zone's shoppers went on. Its pairs had traffic (the probes' hops) and availability judged no one there:
    the verdict passed."""
    d = _run(runs, tmp_path, "probes-only")
    assert _probes_only(d, WLZ) > 300
    v = verify(d)
    assert _failed(v) == {COVERAGE}
    msg = _message(v, COVERAGE)
    assert f"{WLZ}: no shopper's request entered it" in msg and "unverified" in msg


def test_a_zone_whose_requests_were_lost_is_unverified_during_a_fault_elsewhere(runs: Pristine, tmp_path: Path) -> None:
    """A kill of LAX's product-api, and the Wavelength Zone's requests missing from requests.jsonl altogether
    (its records never arrived) while its sidecars logged its users' calls: the zone was in no fault's scope,
    its pairs had hops, and nothing asked for its users."""
    d = _run(runs, tmp_path, "lost", [KILL_LAX])
    write_rows(d / "requests.jsonl", [r for r in rows(d / "requests.jsonl") if r["zone"] != WLZ])
    v = verify(d)
    assert _failed(v) == {COVERAGE}
    assert f"{WLZ}: no shopper's request entered it" in _message(v, COVERAGE)


def test_every_zone_with_shoppers_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same runs as recorded, every zone's shoppers there."""
    v = verify(_run(runs, tmp_path, "all"))
    assert v.passed, [i.message for i in v.invariants if not i.passed]
    v = verify(_run(runs, tmp_path, "fault", [KILL_LAX]))
    assert v.passed, [i.message for i in v.invariants if not i.passed]


# -- a Region-only TCP upstream's calls that only the counters record -----------------------------------------------
AZ = "us-west-2a"
DB_KILL = FaultSpec("kill-pod-postgres-2a", "service-down", AZ, ("postgres",), 30, 40, 10, 0.5)
DB_DECLARATION = {"singlePointOfFailure": "postgres", "errorBudget": 0.99, "why": "one primary, no promotion"}


def _db_run(runs: Pristine, tmp_path: Path, name: str) -> Path:
    """The postgres primary killed (30-40 s) and replaced, declared the single point of failure, with the real
    product-api's pooled connections (harness.verify.synth `pooled_tcp`): opened when a pod starts, redialled
    when their host is gone, held for its life, so they leave no access-log line while open."""
    sc = Scenario(T, duration_s=110, rate_per_zone=4, faults=[DB_KILL], accesslogs="kind", pooled_tcp=True)
    d = runs.run(tmp_path / name, sc)
    fields = declared_errors.timeline_fields(DB_DECLARATION)
    write_rows(d / "chaos.jsonl", [{**c, **fields} if c["phase"] == "inject" else c for c in rows(d / "chaos.jsonl")])
    return d


def test_pools_redialled_to_the_read_replica_fail_call_graph(runs: Pristine, tmp_path: Path) -> None:
    """After the primary's kill every product-api redials its pool to the streaming read replica (a resolver
    failing postgres over to postgres-replica): the replica is written to. The connections stay open to the end,
    so no access-log line shows them: only the sidecars' upstream counters do, and call-graph read the hops
    alone; shared-services found a connection to postgres in each zone (the ones before the kill) and passed."""
    d = _db_run(runs, tmp_path, "replica")
    inv = rows(d / "inventory.jsonl")
    new = [e for e in inv if e["service"] == "postgres" and e["event"] == "added"][-1]
    replica = next(e for e in inv if e["service"] == "postgres-replica")
    stats = rows(d / "upstream-stats.jsonl")
    moved = 0
    for r in stats:
        if r["pod"].startswith("product-api") and r["host"] == f"{new['ip']}:5432":
            r["host"] = f"{replica['ip']}:5432"
            moved += 1
    write_rows(d / "upstream-stats.jsonl", stats)
    assert moved >= 12  # each of the six zones' product-api, in the restore and end snapshots
    lines = [r for f in (d / "accesslogs").glob("product-api*") for r in rows(f)]
    assert not any(str(r.get("upstream_host") or "").startswith(f"{replica['ip']}:") for r in lines)
    v = verify(d)
    assert _failed(v) == {CALL_GRAPH}
    msg = _message(v, CALL_GRAPH)
    assert "product-api -> postgres-replica" in msg and replica["pod"] in msg and "upstream counters" in msg


def test_pools_redialled_to_the_new_primary_pass(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same run as the mesh records it, the pools redialled to the primary's replacement (their
    counters grown on an edge the topology declares, postgres-replica's own WAL stream to the primary too)."""
    v = verify(_db_run(runs, tmp_path, "primary"))
    assert v.passed, [i.message for i in v.invariants if not i.passed]
