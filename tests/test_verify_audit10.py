"""Wrong verdicts a tenth audit of the verifier found in availability (the verdict must be true).

Each case is a synthetic run (harness.verify.synth) with the behaviour planted the way Envoy, locust and the
harness's collectors would record it; each docstring's "HOLE." says how the verdict was wrong before. Next to
each, a control: the same run without the plant (or with the one difference that decides it) fails or passes as
it should, so each test shows what its plant changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.chaos import expected as declared_errors
from harness.verify import AVAILABILITY
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_expected import DB, DECLARATION, INJECT, RESTORE, START
from tests.test_verify_soundness import LAS, LAX, T0, T, failed
from tests.verdicts import added_pod, envoy_start, rebuilt, rows, verify, write_rows

AZ, AZ_B = T.region_zones[0].name, T.region_zones[1].name


def _run(tmp_path: Path, faults: list[FaultSpec], duration_s: float = 90) -> Path:
    return write_run(tmp_path / "run", Scenario(T, duration_s=duration_s, rate_per_zone=4, faults=faults))


def _fault_window(v: Any) -> Any:
    return next(w for w in v.invariant(AVAILABILITY).windows if w.window.startswith("fault "))


# -- 1. a partition's "entry point down" after the heal -------------------------------------------------------------
PARTITION = FaultSpec("partition-lax", "partition", LAX, (), 30, 50, 0.2, 1.0, entry_down=True)


def test_control_a_partition_that_heals_cleanly_passes_with_its_cut_off_users_excluded(tmp_path: Path) -> None:
    """Control: the same partition with a mesh that serves again after the heal passes; the users it cut off
    (inject to restore) are excluded, as the entry-down design asks."""
    v = verify(_run(tmp_path, [PARTITION], duration_s=130))
    assert v.passed, why(v)
    w = _fault_window(v)
    assert w.failed == 0 and w.excluded_failed > 0


def test_control_a_zone_down_excludes_its_users_while_the_entry_point_comes_back(tmp_path: Path) -> None:
    """Control: a zone-down whose entry point is down until after the restore (entrypoints.jsonl: the frontend
    Ready 3 s after the nodes came back) still has those users excluded, after the restore too."""
    f = FaultSpec("zone-las", "zone-down", LAS, (), 30, 45, 0, 3.0, entry_down=True)
    d = _run(tmp_path, [f])
    back = [r["ts"] for r in rows(d / "entrypoints.jsonl") if r["zone"] == LAS and r["up"]]
    assert max(back) == T0 + 48.0
    v = verify(d)
    assert v.passed, why(v)
    late = [r for r in rows(d / "requests.jsonl") if r["zone"] == LAS and T0 + 45.5 < r["ts"] < T0 + 47.5]
    assert late and not any(r["ok"] for r in late)  # failed after the restore, at a down entry point: excused


# -- 2. a Region user's failover loss, tied by its entry AZ ----------------------------------------------------------
KILL_AZ = FaultSpec("kill-product-api-2a", "service-down", AZ, ("product-api",), 30, 50, 2.0, 1.0)


def _entered_b_served_by_a(d: Path) -> tuple[Path, int]:
    """Users entering us-west-2b whose frontend-2b sent them (Consul CE spreads a Region service's calls over
    every AZ) to public-api-2a while 2a's product-api failover was under way: public-api-2a's call for each
    found no host yet (503 UH), as its own users' calls did; their requests failed with GraphQL errors."""
    fe_b, pa_a, pa_b = added_pod(d, AZ_B, "frontend"), added_pod(d, AZ, "public-api"), added_pod(d, AZ_B, "public-api")
    reqs = rows(d / "requests.jsonl")
    picked = [r for r in reqs if r["zone"] == AZ_B and T0 + 30.0 <= r["ts"] < T0 + 32.0]
    ids = {f"eh-{r['request_id']:016x}" for r in picked}
    for r in picked:
        r.update(ok=False, status=200, error="GraphQL error: product-api: no healthy upstream")
    write_rows(d / "requests.jsonl", reqs)
    fe_log = d / "accesslogs" / f"{fe_b['pod']}.jsonl"
    fe = rows(fe_log)
    starts = []
    for r in fe:
        if r.get("request_id") in ids:
            r["upstream_host"] = f"{pa_a['ip']}:8080"
            starts.append(envoy_start(r))
    assert len(starts) == len(picked) > 0
    write_rows(fe_log, fe)
    pa_log = d / "accesslogs" / f"{pa_a['pod']}.jsonl"
    pa = rows(pa_log)
    cluster = next(r["upstream_cluster"] for r in pa if r.get("direction") == "outbound")
    for st in starts:
        when = datetime.fromtimestamp(round(st * 1000 + 1) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        pa.append({"start_time": when, "method": "GET", "path": "/product-api", "response_code": 503,
                   "response_flags": "UH", "duration": 0, "upstream_host": None, "upstream_cluster": cluster,
                   "caller_pod": pa_a["pod"], "caller_service": "public-api", "direction": "outbound"})  # fmt: skip
    write_rows(pa_log, sorted(pa, key=envoy_start))
    # public-api-2b made no call for them
    moved = {round(st + 0.001, 3) for st in starts}
    pb_log = d / "accesslogs" / f"{pa_b['pod']}.jsonl"
    write_rows(pb_log, [r for r in rows(pb_log) if round(envoy_start(r), 3) not in moved])
    return rebuilt(d), len(picked)


def test_a_failover_loss_of_users_entering_another_az_is_reported_apart_as_well(tmp_path: Path) -> None:
    """HOLE. A failed user request was tied to a failover under way (or a retry overflow) only by a marked hop
    whose CALLER zone was the request's ENTRY zone. In the Region Consul CE spreads calls over every AZ: users
    entering us-west-2b served by public-api-2a, which met the dead product-api-2a in the same milliseconds
    as 2a's own users, were counted (8 of 481: 1.66 % > 1 %) while 2a's were reported apart, and availability
    failed a correct mesh by which AZ its users happened to enter. For a request entering an AZ a marked hop
    of any AZ's caller qualifies; an edge zone keeps its own."""
    d, n = _entered_b_served_by_a(_run(tmp_path, [KILL_AZ]))
    v = verify(d)
    assert v.passed, why(v)
    w = _fault_window(v)
    assert w.failed == 0 and w.failover_under_way >= 2 * n, (w.failed, w.failover_under_way, n)


def test_control_an_edge_users_loss_is_not_tied_to_a_failover_in_the_region(tmp_path: Path) -> None:
    """Control: the same losses planted on users entering LAS (an edge zone: its users are served by its own
    callers only) during the AZ's failover are not the Region's failover's: counted, availability fails."""
    d = _run(tmp_path, [KILL_AZ])
    assert verify(d).passed  # the AZ's own users' failover losses are reported apart
    reqs = rows(d / "requests.jsonl")
    picked = [r for r in reqs if r["zone"] == LAS and T0 + 30.0 <= r["ts"] < T0 + 32.0]
    for r in picked:
        r.update(ok=False, status=200, error="GraphQL error: product-api: no healthy upstream")
    write_rows(d / "requests.jsonl", reqs)
    v = verify(d)
    assert AVAILABILITY in failed(v), why(v)
    w = _fault_window(v)
    assert w.failed == len(picked) > 0 and f"{LAS}: {len(picked)}" in w.message


# -- 3. a declared single point of failure's budget in a zone long back ---------------------------------------------
def _spof_run(tmp_path: Path, lax_late: bool, las_broken: bool) -> Path:
    """tests/test_verify_expected.py's declared postgres kill (4 in 5 requests failing while the primary is down,
    90 % budget), long enough for the aftermath, with hops.jsonl as the record. `lax_late`: LAX's product-api
    Ready 40 s after the Region's, LAX failing over to the Region meanwhile (as the rules ask); `las_broken`:
    half of LAS's users fail from 42 to 78 s for a reason of their own (its frontend answering 500)."""
    sc = Scenario(T, duration_s=130, rate_per_zone=4, faults=[DB], replace_pods=False, accesslogs="none")
    d = write_run(tmp_path / "run", sc)
    reqs, seen = rows(d / "requests.jsonl"), 0
    for r in reqs:
        if START + INJECT <= r["ts"] <= START + RESTORE:
            seen += 1
            if seen % 5:
                r.update(ok=False, status=200, error="graphql: dial tcp 127.0.0.1:5432: connect: connection refused")
        elif las_broken and r["zone"] == LAS and START + RESTORE + 2 <= r["ts"] <= START + RESTORE + 38:
            seen += 1
            if seen % 2:
                r.update(ok=False, status=500, error="internal server error")
    write_rows(d / "requests.jsonl", reqs)
    fields = declared_errors.timeline_fields(DECLARATION)
    write_rows(d / "chaos.jsonl", [{**c, **fields} if c["phase"] == "inject" else c for c in rows(d / "chaos.jsonl")])
    if lax_late:
        inv = rows(d / "inventory.jsonl")
        pod = next(e for e in inv if e["event"] == "ready" and e["service"] == "product-api" and e["zone"] == LAX)
        inv += [{**pod, "event": "unready", "ts": START + INJECT + 1}, {**pod, "event": "ready", "ts": START + 80}]
        write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: float(e["ts"])))
        region = added_pod(d, AZ, "product-api")
        hops = rows(d / "hops.jsonl")
        for h in hops:
            late = START + RESTORE + 0.2 <= h["ts"] <= START + 80
            if late and h["caller_zone"] == LAX and h["upstream"] == "product-api":
                port = h["upstream_host"].rsplit(":", 1)[1]
                h.update(upstream_host=f"{region['ip']}:{port}", serving_pod=region["pod"], serving_zone=AZ)
        write_rows(d / "hops.jsonl", hops)
    return d


def test_a_declared_budget_does_not_cover_a_zone_after_its_own_cascade(tmp_path: Path) -> None:
    """HOLE. A declared single point of failure's budget (90 %) applied to EVERY zone until the LAST zone's
    cascade and recovery ended: LAX's product-api back 40 s after the Region's kept the window open to 80 s
    for LAS too, whose cascade ended with the Region's at 40 s, and half of LAS's users failing from 42 to 78 s
    for a reason of their own passed inside the declared budget. Per zone, the window ends with the zone's own
    cascade and recovery; LAS's users after that are the steady state's."""
    v = verify(_spof_run(tmp_path, lax_late=True, las_broken=True))
    assert AVAILABILITY in failed(v), why(v)
    steady = v.invariant(AVAILABILITY).windows[-1]
    assert steady.window == "steady state" and steady.status == "fail", steady
    assert f"{LAS}: {steady.failed}" in steady.message and steady.failed > 50
    # the declared window itself still runs to LAX's recovery, for LAX's users
    assert _fault_window(v).end is not None and _fault_window(v).end >= START + 80


def test_control_a_zone_late_after_a_declared_fault_passes_and_the_same_failures_fail_without_it(
    tmp_path: Path,
) -> None:
    """Control: LAX late and LAS fine passes (the declared design); LAS's failures with LAX back with the Region
    fail the steady state, as they now do with LAX late."""
    v = verify(_spof_run(tmp_path / "late", lax_late=True, las_broken=False))
    assert v.passed, why(v)
    v = verify(_spof_run(tmp_path / "broken", lax_late=False, las_broken=True))
    assert AVAILABILITY in failed(v), why(v)
    assert v.invariant(AVAILABILITY).windows[-1].status == "fail"
