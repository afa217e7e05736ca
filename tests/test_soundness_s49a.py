"""A zone of the topology whose shoppers are on no record (s49a).

Availability is judged on the shoppers' requests only (the zone probes, a coffees query every few tens of ms into
a zone, are measurement, not users), and coverage's quiet-spell rule (`_users_gaps`) runs from a zone's first
shopper on. So a zone no shopper ever entered was judged by nothing but its pairs' "no traffic": with zone probes
into it (`harness traffic` probes every zone by default, on top of the `-u` shoppers, which locust spreads
round robin over the zones: `-u 3` over six zones leaves three with probes alone), its hops were there, every pair
had traffic, and the verdict passed a run in which nobody's experience of that zone was ever judged. The same
with a zone whose shoppers' records were lost (an in-zone worker's forwarded records never arrived).
Each case is a correct synthetic run (harness.verify.synth) whose requests are edited to what such a run records.
"""

from __future__ import annotations

from pathlib import Path

from harness.contract.users import PROBE_ENDPOINT
from harness.topology import load_topology
from harness.verify import COVERAGE, Verdict
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.verdicts import rows, verify, write_rows

T = load_topology()
WLZ, LAX = "us-west-2-wl1-sfo-wlz-1", "us-west-2-lax-1a"
KILL_LAX = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


def _failed(v: Verdict) -> set[str]:
    return {i.name for i in v.invariants if not i.passed}


def _message(v: Verdict, name: str) -> str:
    return next(i.message for i in v.invariants if i.name == name)


def _run(tmp_path: Path, name: str, faults: list[FaultSpec] | None = None) -> Path:
    sc = Scenario(T, duration_s=110, rate_per_zone=4, faults=list(faults or []), accesslogs="kind")
    return write_run(tmp_path / name, sc)


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


def test_a_zone_probes_alone_entered_is_unverified(tmp_path: Path) -> None:
    """The Wavelength Zone's requests are all zone probes: no shopper entered it in 110 s while every other
    zone's shoppers went on. Its pairs had traffic (the probes' hops) and availability judged no one there:
    the verdict passed."""
    d = _run(tmp_path, "probes-only")
    assert _probes_only(d, WLZ) > 300
    v = verify(d)
    assert _failed(v) == {COVERAGE}
    msg = _message(v, COVERAGE)
    assert f"{WLZ}: no shopper's request entered it" in msg and "unverified" in msg


def test_a_zone_whose_requests_were_lost_is_unverified_during_a_fault_elsewhere(tmp_path: Path) -> None:
    """A kill of LAX's product-api, and the Wavelength Zone's requests missing from requests.jsonl altogether
    (its records never arrived) while its sidecars logged its users' calls: the zone was in no fault's scope,
    its pairs had hops, and nothing asked for its users."""
    d = _run(tmp_path, "lost", [KILL_LAX])
    write_rows(d / "requests.jsonl", [r for r in rows(d / "requests.jsonl") if r["zone"] != WLZ])
    v = verify(d)
    assert _failed(v) == {COVERAGE}
    assert f"{WLZ}: no shopper's request entered it" in _message(v, COVERAGE)


def test_every_zone_with_shoppers_passes(tmp_path: Path) -> None:
    """Control: the same runs as recorded, every zone's shoppers there."""
    v = verify(_run(tmp_path, "all"))
    assert v.passed, [i.message for i in v.invariants if not i.passed]
    v = verify(_run(tmp_path, "fault", [KILL_LAX]))
    assert v.passed, [i.message for i in v.invariants if not i.passed]
