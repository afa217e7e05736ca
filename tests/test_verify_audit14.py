"""Broken meshes a fourteenth audit found the verdict passing (false PASS): missing evidence read as good.

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way Envoy and the
harness's collectors would record it; each asserts the verdict FAILS (each docstring's "HOLE." says how it passed
before). Next to each, a control: the same run with the mesh behaving passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.contract.users import PROBE_ENDPOINT
from harness.topology import Topology
from harness.verify import AVAILABILITY, COVERAGE, FALLBACK, HUB_AND_SPOKE, LOCALITY, pending_recoveries
from harness.verify.synth import TRUST_DOMAIN, FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import CASCADE_END, EU, REGION_PRODUCT_API, T, postgres_cascade
from tests.test_verify_soundness import run
from tests.verdicts import added_pod, envoy_start, rebuilt, rows, verify, write_rows

LAX = "us-west-2-lax-1a"


def _to_region_every(d: Path, t: Topology, zone: str, since: float, until: float, every: int) -> Path:
    """From `since` to `until` (seconds into the run), every `every`-th call of `zone`'s public-api to product-api
    goes to the Region's product-api (in the first AZ), which then makes that call's postgres query itself: the
    zone's sidecars keep part of their calls on the Region (a stale endpoint view, an ejection never undone)."""
    t0 = min(r["ts"] for r in rows(d / "requests.jsonl")) - 0.01
    region = added_pod(d, t.region_zones[0].name, "product-api")
    region_log = d / "accesslogs" / f"{region['pod']}.jsonl"
    region_rows = rows(region_log)
    moved_at: set[int] = set()
    for p in sorted((d / "accesslogs").glob(f"public-api-{t.short(zone)}-*.jsonl")):
        recs = rows(p)
        k = 0
        for r in recs:
            if t0 + since <= envoy_start(r) < t0 + until and "product-api" in r["upstream_cluster"]:
                k += 1
                if k % every == 0:
                    r.update(upstream_host=f"{region['ip']}:9090", upstream_cluster=REGION_PRODUCT_API)
                    moved_at.add(round(envoy_start(r) * 1000) + 1)  # its product-api's own call: 1 ms later
        write_rows(p, recs)
    moved = []
    for p in sorted((d / "accesslogs").glob(f"product-api-{t.short(zone)}-*.jsonl")):
        recs = rows(p)
        mine = [r for r in recs if round(envoy_start(r) * 1000) in moved_at]
        moved += [{**r, "caller_pod": region["pod"], "caller_service": region_rows[0]["caller_service"]} for r in mine]
        write_rows(p, [r for r in recs if round(envoy_start(r) * 1000) not in moved_at])
    write_rows(region_log, sorted(region_rows + moved, key=envoy_start))
    return rebuilt(d)


# -- a. a declared single point of failure's cascade: a zone half in the Region after it ----------------------------
PG_CASES = [pytest.param(T, LAX, id="edge-lax"), pytest.param(EU, "eu-central-1-waw-1a", id="eu-2nd-lz")]
AFTER = CASCADE_END + 0.5  # the zone back in-zone half a second after the cascade (postgres_cascade's region_until)


@pytest.mark.parametrize("every", [2, 5])
@pytest.mark.parametrize(("t", "zone"), PG_CASES)
def test_a_zone_that_keeps_part_of_its_calls_on_the_region_after_a_cascade_fails(
    tmp_path: Path, t: Topology, zone: str, every: int
) -> None:
    """experiments/postgres-primary-kill.json: the database back at 35 s, every zone's product-api Ready at 36 s;
    `zone`'s public-api returns in-zone at 36.5 s, but for 1 call in `every` only until the run ends 44 s later
    (its Envoy keeps the Region's product-api for part of its calls; the last Region one a second before the end,
    so that a few in-zone hops follow it, as they do by chance). HOLE: the cascade's recovery
    (`_declared_recovery`) was the first in-zone hop after the last Region one, with no evidence rule: one
    in-zone hop after the last Region one "recovered" the zone a moment before the run ended, locality left the
    cascade out up to that instant (and judged the few hops after it), and the verdict passed. A fault's own
    recovery asks the hops after the instant to rule out a mesh still sending that share elsewhere
    ((1 - p)^n < 1e-3): the cascade's recovery now asks the same, in the same place (`FaultMeasurer._unshown`);
    with the run ended before maxRecoveryS after the cascade, unverified."""
    d = _to_region_every(postgres_cascade(tmp_path, t, zone, AFTER, duration=80.0), t, zone, AFTER, 79.0, every)
    v = verify(d)
    said = " ".join(why(v))
    assert not v.passed and not v.invariant(FALLBACK).passed, why(v)
    assert f"{zone} -> product-api: back in-zone after the cascade of fault kill-pod-postgres" in said, said
    assert "not shown" in said and "unverified" in said, said
    # e2e's cool-down waits for it as the verdict asks it: still pending at the end of these records
    left = pending_recoveries(d, t, min(r["ts"] for r in rows(d / "requests.jsonl")) + 80.0)
    assert (zone, "product-api") in [(p.zone, p.upstream) for p in left], left


@pytest.mark.parametrize(("t", "zone"), PG_CASES)
def test_a_zone_that_keeps_part_of_its_calls_on_the_region_after_a_cascade_control(
    tmp_path: Path, t: Topology, zone: str
) -> None:
    """The control: the same run, the zone wholly back in-zone at 36.5 s, passes (and is not waited for)."""
    d = postgres_cascade(tmp_path, t, zone, AFTER, duration=80.0)
    v = verify(d)
    assert v.passed, why(v)
    assert pending_recoveries(d, t, min(r["ts"] for r in rows(d / "requests.jsonl")) + 80.0) == []


# -- b. a zone whose shoppers fail beyond the budget all run, its windows each too short to show it --------------
def _fail_share(d: Path, zone: str, per_10_000: int) -> Path:
    """`zone`'s shoppers see `per_10_000` in 10 000 of their requests fail (an HTTP 500 of its own frontend),
    spread over the run without a period a fault schedule could line up with (request k of the zone fails when
    k x 7919 mod 10 000 falls below the share)."""
    reqs = rows(d / "requests.jsonl")
    k = 0
    for r in reqs:
        if r["zone"] == zone:
            k += 1
            if (k * 7919) % 10_000 < per_10_000:
                r.update(ok=False, status=500, error="internal server error")
    write_rows(d / "requests.jsonl", reqs)
    return d


def _other_zones_burst(t: Topology, zone: str, n: int) -> list[FaultSpec]:
    """experiments/edge-pod-burst.json over every Local Zone but `zone`: `n` product-api kills, one every 5 s,
    each restored 2.5 s after its inject: most of the run is some fault's window, little of it steady state."""
    others = [z.name for z in t.edge_zones if z.name != zone]
    out = []
    for i in range(n):
        inject = 10.0 + 5.0 * i
        out.append(FaultSpec(f"kill-product-api-{i:02d}", "service-down", others[i % len(others)], ("product-api",),
                             inject, inject + 2.5, 0.2, 0.5))  # fmt: skip
    return out


BUDGET_CASES = [pytest.param(0, id="no-fault"), pytest.param(16, id="burst-in-other-zones")]


@pytest.mark.parametrize("n_faults", BUDGET_CASES)
def test_a_zone_failing_four_times_the_budget_all_run_fails(tmp_path: Path, n_faults: int) -> None:
    """LAX's shoppers fail 4 % of their requests all run, against the 1 % budget; the zone probes are left out of
    every window (6073780). Each fault window holds a few dozen of LAX's requests, where 4 % is within what the
    budget leaves to chance; the steady state (every request outside every fault's window) holds hundreds of
    them, and there it is not: the verdict fails availability, naming LAX. No hole: the audit's check that the
    windows left after the burst still judge a zone failing all run."""
    sc = Scenario(T, duration_s=100.0, rate_per_zone=10, faults=_other_zones_burst(T, LAX, n_faults))
    v = verify(_fail_share(write_run(tmp_path / "run", sc), LAX, 400))
    a = v.invariant(AVAILABILITY)
    assert not v.passed and not a.passed, why(v)
    steady = next(w for w in a.windows if w.window == "steady state")
    assert [z["zone"] for z in steady.by_zone if z["status"] == "fail"] == [LAX], steady.by_zone


@pytest.mark.parametrize("n_faults", BUDGET_CASES)
def test_a_zone_failing_within_the_budget_all_run_passes(tmp_path: Path, n_faults: int) -> None:
    """The control: LAX's shoppers failing 0.3 % of their requests, within the 1 % budget, pass every window."""
    sc = Scenario(T, duration_s=100.0, rate_per_zone=10, faults=_other_zones_burst(T, LAX, n_faults))
    d = _fail_share(write_run(tmp_path / "run", sc), LAX, 30)
    assert sum(1 for r in rows(d / "requests.jsonl") if r["zone"] == LAX and not r["ok"]) >= 2
    v = verify(d)
    assert v.passed, why(v)


# -- c. a Local Zone's calls to another Local Zone: rare, in a fault, from probes, or on a route with no host --------
KILL = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)
LAS = "us-west-2-las-1a"
# a ServiceResolver redirecting LAX's product-api to LAS's (CE names each zone's instances: product-api-las-1a);
# Envoy names the cluster after the service it routes to
LAS_REDIRECT = f"product-api-las-1a.default.dc1.internal.{TRUST_DOMAIN}"


def _lax_calls_las(d: Path, at: float, how: str, route: str = LAS_REDIRECT) -> Path:
    """The first of LAX public-api's calls to product-api at or after `at` s into the run goes to LAS instead:
    served by LAS's product-api (`served`, `probe`: the call of a zone probe, the harness's own request into the
    zone), or (`no-host`) routed to LAS's instances (the cluster `route`), which Envoy found none healthy of:
    `503 UH`, no upstream host (the zone the call went to is named only by the cluster of the route)."""
    t0 = min(r["ts"] for r in rows(d / "requests.jsonl")) - 0.01
    las = added_pod(d, LAS, "product-api")
    caller = added_pod(d, LAX, "public-api")
    log = d / "accesslogs" / f"{caller['pod']}.jsonl"
    recs = rows(log)
    hop = next(r for r in recs if envoy_start(r) >= t0 + at and "product-api" in r["upstream_cluster"])
    if how == "no-host":
        hop.update(upstream_host=None, upstream_cluster=route, response_code=503, response_flags="UH")
    else:
        hop.update(upstream_host=f"{las['ip']}:9090")
    write_rows(log, recs)
    reqs = rows(d / "requests.jsonl")
    # the user request the call served: its entry hop began 1 ms before it
    req = min((r for r in reqs if r["zone"] == LAX), key=lambda r: abs(r["ts"] + 0.001 - envoy_start(hop)))
    if how == "probe":  # the zone probe's request, left out of availability (it is the harness's, not a shopper's)
        req.update(endpoint=PROBE_ENDPOINT, name="POST /api probe")
    if how == "no-host":
        req.update(ok=False, status=200, error="graphql: no healthy upstream")
    write_rows(d / "requests.jsonl", reqs)
    return rebuilt(d)


@pytest.mark.parametrize(
    ("at", "how"),
    [pytest.param(15.0, "served", id="rare"), pytest.param(35.0, "served", id="in-a-fault"),
     pytest.param(15.0, "probe", id="from-a-zone-probe"), pytest.param(15.0, "no-host", id="no-host")],
)  # fmt: skip
def test_a_call_from_one_local_zone_to_another_fails_hub_and_spoke(tmp_path: Path, at: float, how: str) -> None:
    """One call of LAX's public-api in 1 000 (12 users a second per zone for 120 s) goes to LAS's product-api:
    in the steady state, during LAX's product-api kill (when its calls go to the Region), from a zone probe,
    or on a route to LAS's instances that found no host. Hub-and-spoke has zero tolerance: each fails it
    (locality's 99.9 % passes the first). No hole on HEAD for a call LAS served, however rare or wherever it
    fell. HOLE for the route with no host: the zone a hop went to was read off its upstream host only, or, for a
    host no pod held, its cluster; a hop with no host (UH) and a flag saying why was neither placed nor
    unverified, and the counters show no attempt (no host, no connection): a ServiceResolver that routes LAX's
    product-api to LAS's instances passed while Envoy found none of them healthy. The cluster of the route names
    LAS's instances: a route across the hub, whatever Envoy found there (`_routed_to_forbidden_zone`)."""
    d = _lax_calls_las(run(tmp_path, faults=[KILL], duration_s=120, rate_per_zone=12), at, how)
    v = verify(d)
    hub = v.invariant(HUB_AND_SPOKE)
    assert not v.passed and not hub.passed, why(v)
    assert f"hub-and-spoke: {LAX} -> {LAS}: 1 hops to product-api" in hub.message, hub.message
    if how == "served" and at < KILL.inject:
        assert v.invariant(LOCALITY).passed, why(v)  # 1 in 1 000 is within locality's SLO: only the ban sees it


def test_a_call_from_one_local_zone_to_another_control(tmp_path: Path) -> None:
    """The control: the same run, every LAX call served in LAX or (during the kill) the Region, passes."""
    v = verify(run(tmp_path, faults=[KILL], duration_s=120, rate_per_zone=12))
    assert v.passed, why(v)


# -- e. a zone only its probes entered during a fault: what its users met was never judged -------------------------
def _lax_only_probes(d: Path, lo: float, hi: float, fail: bool) -> Path:
    """Every request entering LAX from `lo` to `hi` s into the run is a zone probe (no shopper entered the zone
    then: a game day with few users, a zone they happened not to enter); `fail`: each of them fails (a GraphQL
    error: public-api's answers outlasted the users' patience), the hops all fine."""
    t0 = min(r["ts"] for r in rows(d / "requests.jsonl")) - 0.01
    reqs = rows(d / "requests.jsonl")
    for r in reqs:
        if r["zone"] == LAX and t0 + lo <= r["ts"] <= t0 + hi:
            r.update(endpoint=PROBE_ENDPOINT, name="POST /api probe")
            if fail:
                r.update(ok=False, status=200, error="graphql: context deadline exceeded")
    write_rows(d / "requests.jsonl", reqs)
    return d


@pytest.mark.parametrize("fail", [True, False], ids=["probes-failed", "probes-served"])
def test_a_fault_only_zone_probes_entered_the_zone_of_is_unverified(tmp_path: Path, fail: bool) -> None:
    """A product-api kill in LAX (30-50 s); only the zone probes enter LAX from 29 s to 53 s. HOLE: availability
    judges the shoppers only (6073780: the probes weighed a zone's failures by the machine's probe rate), but
    coverage counted every request: LAX "had users" during and after the fault, and the window was judged on the
    other zones' shoppers. With every one of those 96 probes failing, the verdict passed ("96 zone-probe requests
    not counted (95 failed)"). Coverage now asks for the users availability judges: a window only probes entered
    is unverified, whatever they met (the same verdict at any probe rate), and says so."""
    d = _lax_only_probes(run(tmp_path, faults=[KILL], duration_s=90), 29.0, 53.0, fail)
    v = verify(d)
    cov = v.invariant(COVERAGE)
    assert not v.passed and not cov.passed, why(v)
    assert f"no user requests entering {LAX} during the fault" in cov.message, cov.message
    assert "zone-probe requests" in cov.message, cov.message


def test_a_fault_only_zone_probes_entered_the_zone_of_control(tmp_path: Path) -> None:
    """The control: the shoppers keep entering LAX during the kill (the probes with them) and the run passes."""
    d = _lax_only_probes(run(tmp_path, faults=[KILL], duration_s=90), 0.0, 0.0, fail=False)
    v = verify(d)
    assert v.passed, why(v)


# -- d. no failover in a fault too short for the budget to see it; no return after a restore the run ends soon after
@pytest.mark.parametrize("restore", [30.3, 31.0, 33.0])
def test_a_zone_that_never_fails_over_fails_however_short_the_fault(tmp_path: Path, restore: float) -> None:
    """LAX's product-api killed at 30 s and back at `restore`; its callers never fail over (no failover target:
    every call finds no host, 503 UH) and its users fail meanwhile. However few they are, fallback asks for the
    Region serving the zone's calls during the fault, and fails without it. No hole: the audit's check."""
    fault = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30.0, restore, 0.2, 0.5)
    v = verify(write_run(tmp_path / "run", Scenario(T, duration_s=60, rate_per_zone=4, faults=[fault],
                                                    misconfig="missing-failover")))  # fmt: skip
    assert not v.passed and not v.invariant(FALLBACK).passed, why(v)
    assert f"fallback: {LAX} -> product-api: no failover to the Region during fault" in v.invariant(FALLBACK).message


@pytest.mark.parametrize("end", [50.5, 55.0, 70.0])
def test_a_zone_that_never_returns_after_a_restore_the_run_ends_soon_after_is_unverified(
    tmp_path: Path, end: float
) -> None:
    """LAX's product-api killed at 30 s and back at 50 s; its callers fail over to the Region and never come back
    in-zone; the run ends `end` s in, less than maxRecoveryS after the restore: unverified, a failure, never a
    pass. No hole: the audit's check."""
    fault = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30.0, 50.0, 0.2, 1000.0)
    v = verify(write_run(tmp_path / "run", Scenario(T, duration_s=end, rate_per_zone=4, faults=[fault])))
    said = v.invariant(FALLBACK).message
    assert not v.passed and f"{LAX} -> product-api: recovery after fault" in said and "unverified" in said, said


def test_a_zone_that_fails_over_and_returns_control(tmp_path: Path) -> None:
    """The control: the same kill, the zone served by the Region within a second and back 1 s after the restore."""
    fault = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30.0, 50.0, 0.2, 1.0)
    v = verify(write_run(tmp_path / "run", Scenario(T, duration_s=70, rate_per_zone=4, faults=[fault])))
    assert v.passed, why(v)
