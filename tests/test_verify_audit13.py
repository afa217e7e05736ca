"""Verdicts a thirteenth audit found decided by the harness rather than the mesh: the cool-down's length.

e2e's cool-down (`harness.verify.pending`) keeps the users on until every recovery the verdict will ask for is
on record, or maxRecoveryS has passed: stopped sooner, the verdict calls the recovery unverified, and whether a
correct mesh passes depends on how fast the machine or cluster brought it back. Each case is a synthetic run
(harness.verify.synth) whose records stop shortly after the last restore, as a cool-down that asked for nothing
would have stopped them, next to the same mesh on longer records; each docstring's "HOLE." says how the
cool-down as the audit found it judged it. Next to each, a control: a zone already back is not waited for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.topology import Topology
from harness.verify import pending_recoveries
from harness.verify.synth import Scenario
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import CASCADE_END, EU, RESTORE, WIDE, node_fault_spill, postgres_cascade
from tests.test_verify_audit4_faults import T as DEFAULT
from tests.verdicts import rows as _rows
from tests.verdicts import verify
from tests.verdicts import write_rows as _write

LAX = "us-west-2-lax-1a"


def _t0(t: Topology) -> float:
    return Scenario(t).start


# -- 1. a node kill in a zone with more nodes: its record lists no service -----------------------------------------
NODE_CASES = [
    pytest.param(DEFAULT, LAX, "local", id="edge-lax"),
    pytest.param(WIDE, "us-west-2-den-1a", "kind", id="wide-den-kind"),  # den-1a: the wide topology's 2-node LZ
]


@pytest.mark.parametrize(("t", "zone", "logs"), NODE_CASES)
def test_the_cool_down_waits_for_a_node_faults_recovery(tmp_path: Path, t: Topology, zone: str, logs: str) -> None:
    """experiments/node-kill.json last: the zone's second node stopped 30-60 s; one of its two product-api
    replicas lost, the zone spilling ~30 % of its product-api hops to the Region meanwhile, and until 62 s (the
    returned replica back in Envoy's view 2 s after the restore). HOLE: the chaos record lists the services the
    node kill left with no pod in the zone (none here), and the cool-down watched only those: 3 s after the
    restore it asked for nothing, and the verdict failed the mesh as unverified (too few in-zone hops after the
    spill to show it stopped: "the run ended 3.000s after the restore"), while a longer cool-down passed it. The
    verdict asks the recovery of every service that lost a pod on the node (`_node_fault_services`): so does the
    cool-down, with the same evidence rule (`recovery_chance` against the spill's share)."""
    t0 = _t0(t)
    short = node_fault_spill(tmp_path / "short", t, zone, RESTORE + 2, duration=RESTORE + 3, accesslogs=logs)
    left = pending_recoveries(short, t, t0 + RESTORE + 3)
    assert [(p.zone, p.upstream) for p in left] == [(zone, "product-api")], left
    v = verify(short)
    assert not v.passed and "unverified" in " ".join(why(v)), why(v)
    long = node_fault_spill(tmp_path / "long", t, zone, RESTORE + 2, duration=RESTORE + 30, accesslogs=logs)
    assert pending_recoveries(long, t, t0 + RESTORE + 30) == []
    v = verify(long)
    assert v.passed, why(v)


@pytest.mark.parametrize(("t", "zone", "logs"), NODE_CASES)
def test_a_node_faults_recovery_on_record_is_not_waited_for(tmp_path: Path, t: Topology, zone: str, logs: str) -> None:
    """The control: the zone whole again at the restore is not waited for 15 s after it."""
    d = node_fault_spill(tmp_path, t, zone, spill_until=RESTORE, duration=RESTORE + 15, accesslogs=logs)
    assert pending_recoveries(d, t, _t0(t) + RESTORE + 15) == []
    v = verify(d)
    assert v.passed, why(v)


# -- 2. a declared single point of failure's cascade: the cool-down watched only Local Zone faults -----------------
PG_CASES = [pytest.param(DEFAULT, LAX, id="edge-lax"), pytest.param(EU, "eu-central-1-waw-1a", id="eu-2nd-lz")]


@pytest.mark.parametrize(("t", "zone"), PG_CASES)
def test_the_cool_down_waits_for_a_declared_cascades_recovery(tmp_path: Path, t: Topology, zone: str) -> None:
    """experiments/postgres-primary-kill.json last: the primary killed at 30 s and replaced at 35 s, product-api
    unready in every zone from 31 s to 36 s (its readiness follows its database), and `zone`'s public-api still
    calling the Region's product-api until 38.5 s (its view of its own product-api stale). HOLE: the cool-down
    (`pending_recoveries`) watched only a Local Zone's faults, and this one is in an AZ: 1.5 s after the cascade it
    asked for nothing, e2e stopped the users, and the verdict failed the mesh as unverified ("back in-zone after
    the cascade ... unverified: the run ended"), while a machine whose cool-down ran 14 s passed the same mesh.
    The verdict asks every dependant pair of every Local Zone to be back in-zone after the cascade: so does the
    cool-down, until the records show it or maxRecoveryS has passed since the cascade's end."""
    t0 = _t0(t)
    short = postgres_cascade(tmp_path / "short", t, zone, region_until=38.5, duration=37.5)
    left = pending_recoveries(short, t, t0 + 37.5)
    assert [(p.zone, p.upstream) for p in left] == [(zone, "product-api")], left
    assert left[0].due == pytest.approx(t0 + CASCADE_END + t.slo.max_recovery_s)
    v = verify(short)  # what stopping then would have given: unverified
    assert not v.passed and "unverified" in " ".join(why(v)), why(v)
    long = postgres_cascade(tmp_path / "long", t, zone, region_until=38.5, duration=50.0)
    assert pending_recoveries(long, t, t0 + 50.0) == []
    v = verify(long)
    assert v.passed, why(v)


@pytest.mark.parametrize(("t", "zone"), PG_CASES)
def test_a_cascade_already_recovered_is_not_waited_for(tmp_path: Path, t: Topology, zone: str) -> None:
    """The control: every zone back in-zone half a second after the cascade is not waited for 3 s after it."""
    d = postgres_cascade(tmp_path, t, zone, region_until=CASCADE_END + 0.5, duration=39.0)
    assert pending_recoveries(d, t, _t0(t) + 39.0) == []
    v = verify(d)
    assert v.passed, why(v)


def test_a_cascade_not_over_yet_is_waited_for(tmp_path: Path) -> None:
    """The records as they are half a second after the primary's restore (35 s): product-api not Ready again in
    any zone yet, so the cascade is not over and no pair can show its return. Every Local Zone's pairs depending
    on postgres are waited for, at most maxRecoveryS past postgres' return (the verdict fails a zone's service
    still down then, however long the run goes on). So are the AZs' and the Region's product-api outages the
    cascade explains, until the same instant (`pending._open_outages`: the verdict fails one still down then,
    `FaultMeasurer._outlasting`)."""
    t0 = _t0(DEFAULT)
    d = postgres_cascade(tmp_path, DEFAULT, LAX, region_until=38.5, duration=37.5)
    _write(d / "inventory.jsonl", [e for e in _rows(d / "inventory.jsonl") if e["ts"] <= t0 + 35.5])
    left = pending_recoveries(d, DEFAULT, t0 + 35.5)
    edge = [z.name for z in DEFAULT.edge_zones]
    assert sorted((p.zone, p.upstream) for p in left if not p.outage) == sorted(
        (z, u) for z in edge for u in ("product-api", "public-api")
    )
    others = [z.name for z in DEFAULT.zones if z.name not in edge] + [DEFAULT.region]
    assert sorted((p.zone, p.upstream) for p in left if p.outage) == sorted((z, "product-api") for z in others)
    assert all(p.due == pytest.approx(t0 + 35.0 + DEFAULT.slo.max_recovery_s) for p in left), left
