"""Broken meshes a nineteenth audit found the verdict passing (false PASS).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way Envoy and the
harness's collectors would record it; each asserts the verdict FAILS (each docstring's "HOLE." says how it passed
before). Next to each, a control: the same run with the mesh behaving passes.
"""

from __future__ import annotations

from pathlib import Path

from harness.chaos import expected as declared_errors
from harness.verify import AVAILABILITY, CALL_GRAPH, FALLBACK, LOCALITY
from harness.verify.synth import Scenario
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import T, postgres_cascade
from tests.test_verify_audit14 import AFTER
from tests.test_verify_soundness import KILL, failed, run
from tests.verdicts import added_pod, rebuilt, rows, verify, write_rows

LAX = "us-west-2-lax-1a"
T0 = Scenario(T).start


def _unready(d: Path, zone: str, service: str, lo: float, hi: float | None) -> Path:
    """`zone`'s first `service` pod unready from `lo` to `hi` (seconds into the run; None: to the end)."""
    pod = added_pod(d, zone, service)
    inv = [*rows(d / "inventory.jsonl"), {**pod, "event": "unready", "ts": T0 + lo}]
    if hi is not None:
        inv.append({**pod, "event": "ready", "ts": T0 + hi})
    write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))
    return rebuilt(d)


def _shoppers_fail(d: Path, zone: str, lo: float, hi: float, every: int) -> int:
    """Every `every`-th of `zone`'s user requests from `lo` to `hi` fails (its frontend's own 500); how many."""
    reqs = rows(d / "requests.jsonl")
    k = n = 0
    for r in reqs:
        if r["zone"] == zone and T0 + lo <= r["ts"] < T0 + hi:
            k += 1
            if k % every == 0:
                r.update(ok=False, status=500, error="internal server error")
                n += 1
    write_rows(d / "requests.jsonl", reqs)
    return n


# -- 1. a declared single point of failure's cascade held open by a service no user request reaches ---------------
def test_a_declared_window_is_not_held_open_by_a_service_no_user_reaches(tmp_path: Path) -> None:
    """HOLE. experiments/postgres-primary-kill.json (declared, budget 99 %): the database is back at 35 s and
    every zone's product-api at 36 s; postgres-replica (which streams from the primary and which nobody calls)
    goes unready at 34 s and is Ready again at 90 s. LAX's shoppers then fail 1 in 4 of their requests from 40 s
    to 90 s, 50 s after the database was back, for no reason the fault declares. `expected.impact_end` took
    every down interval that began during the fault as its cascade, of any service: the replica's held LAX's
    declared window open to 90 s, its failures were judged at the declared 99 %, and the run passed. The cascade
    is the declared services and the dependants user requests reach (`expected.cascade_services`)."""
    d = postgres_cascade(tmp_path, T, LAX, AFTER, duration=120.0)
    _unready(d, T.region_zones[0].name, "postgres-replica", 34.0, 90.0)
    assert _shoppers_fail(d, LAX, 40.0, 90.0, 4) >= 40
    v = verify(d)
    assert AVAILABILITY in failed(v), why(v)
    steady = next(w for w in v.invariant(AVAILABILITY).windows if w.window == "steady state")
    assert [z["zone"] for z in steady.by_zone if z["status"] == "fail"] == [LAX], steady.by_zone


def test_a_cascades_recovery_deadline_is_not_moved_by_a_service_no_user_reaches(tmp_path: Path) -> None:
    """HOLE. The same fault and replica outage (34 s to 90 s); LAX's public-api stays on the Region's product-api
    until 110 s, 74 s after the cascade ended at 36 s (maxRecoveryS 60 s). The cascade's end (`cascade_window`,
    the same `impact_end`) was the replica's return at 90 s, so "back in-zone within maxRecoveryS" ran to 150 s,
    locality left LAX's pair out until its recovery, and the run passed."""
    d = postgres_cascade(tmp_path, T, LAX, 110.0, duration=170.0)
    _unready(d, T.region_zones[0].name, "postgres-replica", 34.0, 90.0)
    v = verify(d)
    assert {FALLBACK, LOCALITY} <= failed(v), why(v)
    assert "not back in-zone within maxRecoveryS after the cascade" in " ".join(why(v)), why(v)


def test_a_replica_outage_during_the_cascade_fails_no_correct_mesh(tmp_path: Path) -> None:
    """The control: the same replica outage with every zone back in-zone half a second after the cascade and no
    failures past it passes."""
    d = postgres_cascade(tmp_path, T, LAX, AFTER, duration=120.0)
    v = verify(_unready(d, T.region_zones[0].name, "postgres-replica", 34.0, 90.0))
    assert v.passed, why(v)


def test_a_dependant_on_the_users_path_still_holds_its_zones_window_open(tmp_path: Path) -> None:
    """The rule's other side, unchanged by the fix: LAX's own product-api (its readiness follows its database) Ready
    again only at 70 s, its public-api on the Region's meanwhile, LAX's shoppers failing 1 in 4 until then: a
    dependant on the users' path is the declared fault's cascade in LAX, and its window is judged at the declared
    budget (as `UserChecks._impact_end_for_users` documents), so the run passes."""
    d = postgres_cascade(tmp_path, T, LAX, 70.5, duration=140.0, zone_ready=70.0)
    assert _shoppers_fail(d, LAX, 40.0, 70.0, 4) >= 20
    v = verify(d)
    assert v.passed, why(v)


# -- 2. a declared single point of failure the fault never took down ----------------------------------------------
def _declared_kill(tmp_path: Path, spof: str, fail_every: int | None) -> Path:
    """A kill of LAX's product-api (30-50 s, the Region serving 0.2 s after it) whose inject line declares `spof`
    a single point of failure with a 99 % budget; LAX's shoppers fail every `fail_every`-th request from 32 s
    to the restore (None: none fail), through a working failover."""
    d = run(tmp_path, faults=[KILL], rate_per_zone=10)
    fields = declared_errors.timeline_fields({"singlePointOfFailure": spof, "errorBudget": 0.99, "why": "one of it"})
    write_rows(d / "chaos.jsonl", [{**c, **fields} if c["phase"] == "inject" else c for c in rows(d / "chaos.jsonl")])
    if fail_every is not None:
        assert _shoppers_fail(d, LAX, KILL.inject + 2.0, float(KILL.restore or 0.0), fail_every) >= 30
    return d


def test_a_declaration_naming_a_service_the_fault_did_not_take_down_excuses_nothing(tmp_path: Path) -> None:
    """HOLE. The kill of LAX's product-api declares postgres its single point of failure (an experiment's copy and
    paste, or a wrong service argument): the fault took down no postgres pod. A quarter of LAX's shoppers fail
    through a working failover, 3.6 % of the fault's window against the SLO's 1 %. The verdict took the
    declaration as given and judged the window at the declared 99 %: PASS. A declaration now holds only for a
    fault that took down a pod of its single point of failure (`rundata._declarations_hit`); the note says so."""
    v = verify(_declared_kill(tmp_path, "postgres", 4))
    assert AVAILABILITY in failed(v), why(v)
    assert not v.faults[0].expected, v.faults[0]
    assert any("took down no pod of it" in n for n in v.run.notes), v.run.notes


def test_a_declaration_the_fault_did_not_hit_fails_no_correct_mesh(tmp_path: Path) -> None:
    """The control: the same bogus declaration on a correct mesh (no shopper failing past the failover) passes,
    with the note."""
    v = verify(_declared_kill(tmp_path, "postgres", None))
    assert v.passed, why(v)
    assert any("took down no pod of it" in n for n in v.run.notes), v.run.notes


def test_a_declaration_the_fault_did_hit_still_holds(tmp_path: Path) -> None:
    """The control of the rule's other side: the kill of LAX's product-api declaring product-api itself (which
    it took down) keeps its 99 % budget: the quarter of LAX's shoppers failing is within it, stated in the
    fault's `expected` block."""
    v = verify(_declared_kill(tmp_path, "product-api", 4))
    assert AVAILABILITY not in failed(v), why(v)
    assert v.faults[0].expected and v.faults[0].expected["singlePointOfFailure"] == ["product-api"], v.faults[0]


# -- 3. checked and not a hole (kept as a control) -------------------------------------------------------------------
def test_an_edge_product_api_querying_the_read_replica_fails_call_graph(tmp_path: Path) -> None:
    """Not a hole: LAX's product-api sends every postgres query to the Region's read replica (a ServiceResolver
    redirecting postgres to postgres-replica; its cluster is still named postgres). Attributed by address to
    postgres-replica, the hops are an edge the topology does not declare: call-graph fails, naming it."""
    d = run(tmp_path)
    replica = added_pod(d, T.region_zones[0].name, "postgres-replica")
    for p in (d / "accesslogs").glob(f"product-api-{T.short(LAX)}-*.jsonl"):
        recs = rows(p)
        for r in recs:
            if "postgres" in r["upstream_cluster"]:
                r["upstream_host"] = f"{replica['ip']}:5432"
        write_rows(p, recs)
    v = verify(rebuilt(d))
    assert CALL_GRAPH in failed(v), why(v)
    assert "product-api -> postgres-replica" in " ".join(why(v)), why(v)
