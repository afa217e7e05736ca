"""Broken evidence the verdict passed (audit a44v), each next to its control.

Each case is a synthetic run (harness.verify.synth) with the defect planted as it happens on a real cluster; each
docstring's "HOLE." says how the verdict passed it before the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.verify import COVERAGE, HUB_AND_SPOKE, SHARED_SERVICES
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import KILL, LAS, LAX, T, failed
from tests.verdicts import rebuilt, rows, verify, write_rows

# the synthetic run reads a pod its fault killed in that fault's "inject" snapshot; a dead pod's admin cannot answer
DEAD_AT_ITS_INJECT = f"inject {KILL.fault}"
KILL_LAS = FaultSpec("kill-product-api-las", "service-down", LAS, ("product-api",), 10, 20, 0.2, 1.0)


def _run(tmp_path: Path, faults: list[FaultSpec], name: str = "run") -> Path:
    return write_run(tmp_path / name, Scenario(T, duration_s=90, rate_per_zone=4, faults=faults))


def _pods(run_dir: Path, zone: str, service: str) -> list[str]:
    """The pods of `service` in `zone`, in the order the inventory added them."""
    inv = rows(run_dir / "inventory.jsonl")
    return [e["pod"] for e in inv if e["event"] == "added" and e["zone"] == zone and e["service"] == service]


def _silence(run_dir: Path, pod: str, labels: set[str]) -> None:
    """`pod`'s sidecar wrote no access-log line (its pooled postgres connection never closed: Envoy logs a TCP
    connection when it closes) and its admin did not answer the counter snapshots `labels`."""
    (run_dir / "accesslogs" / f"{pod}.jsonl").unlink()
    stats = rows(run_dir / "upstream-stats.jsonl")
    write_rows(run_dir / "upstream-stats.jsonl", [s for s in stats if not (s["pod"] == pod and s["label"] in labels)])
    rebuilt(run_dir)


def _snapshot_pods(run_dir: Path, label: str) -> set[str]:
    return {s["pod"] for s in rows(run_dir / "upstream-stats.jsonl") if s["label"] == label}


def _messages(v: Any) -> str:
    return " ".join(why(v))


# -- 1. a live sidecar known only from its callers' logs, never read at the end -------------------------------------
def test_a_serving_sidecar_with_no_line_of_its_own_and_no_end_snapshot_is_unverified(tmp_path: Path) -> None:
    """HOLE. LAX's replacement product-api (ready at the restore) served public-api's calls to the end, wrote no
    access-log line of its own (its postgres connection is pooled TCP: Envoy logs it when it closes, maybe never,
    so `_served_but_silent` rightly does not ask product-api) and its admin did not answer the 'end' counter
    snapshot. Its counters are then the only witness of where its calls went, and none were read after its
    'restore' snapshot (zeros, taken as it became ready). The check of a live sidecar missing from the 'end'
    snapshot (`_unread_at_end`) asked only pods that had access-log lines of their own, and the run passed with
    every call that pod made unjudged. A pod its callers' logs show serving is a sidecar that ran; one of a
    service with upstreams must be read at the end like any caller."""
    d = _run(tmp_path, [KILL])
    replacement = _pods(d, LAX, "product-api")[-1]
    _silence(d, replacement, {"end"})
    v = verify(d)
    assert HUB_AND_SPOKE in failed(v), why(v)
    text = v.invariant(HUB_AND_SPOKE).message
    assert "no 'end' counter snapshot" in text and replacement in text, text


def test_a_served_pod_the_end_snapshot_did_not_ask_for_is_not_blamed(tmp_path: Path) -> None:
    """The control: the same mesh with every live sidecar read at the end passes; the pods it has no 'end' lines
    of are the product-api LAX's kill took down (dead: nothing to read) and postgres, which calls nobody (no
    upstream clusters of its own in the counters), though both served hops."""
    d = _run(tmp_path, [KILL])
    v = verify(d)
    assert v.passed, why(v)
    killed = _pods(d, LAX, "product-api")[0]
    end = _snapshot_pods(d, "end")
    postgres = {e["pod"] for e in rows(d / "inventory.jsonl") if e["service"] == "postgres"}
    assert postgres and killed not in end and not postgres & end


# -- 2. the same sidecar missed by a snapshot taken while it was up, then killed ------------------------------------
def test_a_serving_sidecar_missed_by_a_snapshot_while_up_then_killed_is_unverified(tmp_path: Path) -> None:
    """HOLE. LAX's product-api wrote no access-log line (pooled postgres connection), its admin did not answer
    the snapshots of an earlier fault in LAS (10 s and 20 s) although it served public-api's calls all through
    them, and LAX's kill took it down at 30 s: its counters were read only at the start (zeros). What it tried
    in those 30 s is on no record, and `_unread_before_death` asked only pods with lines of their own: PASS.
    Its callers' lines prove its sidecar ran through those snapshots as its own would."""
    d = _run(tmp_path, [KILL_LAS, KILL])
    original = _pods(d, LAX, "product-api")[0]
    labels = {"inject kill-product-api-las", "restore kill-product-api-las"}
    assert original in _snapshot_pods(d, "inject kill-product-api-las")
    _silence(d, original, labels | {DEAD_AT_ITS_INJECT})
    v = verify(d)
    assert HUB_AND_SPOKE in failed(v), why(v)
    text = v.invariant(HUB_AND_SPOKE).message
    assert "missed by a counter snapshot" in text and original in text, text


def test_a_killed_serving_sidecar_read_before_its_death_passes(tmp_path: Path) -> None:
    """The control: the same two faults with that pod read by every snapshot while it was up pass, and so does a
    pod with no line of its own that no snapshot missed (its last read, the LAS fault's restore, came before
    its death: what it did after is lost with it by nature)."""
    d = _run(tmp_path, [KILL_LAS, KILL], "read")
    v = verify(d)
    assert v.passed, why(v)
    d = _run(tmp_path, [KILL_LAS, KILL], "silent")
    original = _pods(d, LAX, "product-api")[0]
    _silence(d, original, {DEAD_AT_ITS_INJECT})
    v = verify(d)
    assert HUB_AND_SPOKE not in failed(v), why(v)


# -- 3. one replica of a zone reaching postgres around its sidecar ---------------------------------------------------
TWO_PRODUCT_APIS = _with_replicas("product-api", 2)


def _two_replicas(tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    d = write_run(tmp_path / name, Scenario(TWO_PRODUCT_APIS, duration_s=90, rate_per_zone=4))
    return d, _pods(d, LAX, "product-api")


def _around_the_mesh(run_dir: Path, pod: str) -> None:
    """`pod`'s app reaches postgres around its sidecar: its Envoy logs no call and counts no connection (it lists
    postgres's hosts all the same, with zero counters, as every sidecar of a caller does)."""
    (run_dir / "accesslogs" / f"{pod}.jsonl").unlink()
    stats = rows(run_dir / "upstream-stats.jsonl")
    for s in stats:
        if s["pod"] == pod:
            s.update(cx_total=0, cx_connect_fail=0, rq_total=0, rq_error=0)
    write_rows(run_dir / "upstream-stats.jsonl", stats)
    rebuilt(run_dir)


def test_one_replica_reaching_postgres_around_its_sidecar_fails_shared_services(tmp_path: Path) -> None:
    """HOLE. LAX runs two product-api replicas; one of them (a pod whose outbound port to postgres was excluded
    from the redirect, or whose database address is no mesh upstream) served public-api's calls all run while
    its sidecar logged no call to postgres and counted no connection to it in any snapshot. The only check of
    calls that leave no line (`_connected`: some sidecar of the zone has a connection to postgres) asked the zone
    as a whole, and the other replica answered for it: PASS, with half of LAX's database calls outside the mesh.
    Now each pod that served is asked, once a snapshot read it after a hop it served (each reads the products)."""
    d, pods = _two_replicas(tmp_path, "run")
    _around_the_mesh(d, pods[1])
    v = verify(d)
    assert failed(v) == {SHARED_SERVICES}, why(v)
    text = v.invariant(SHARED_SERVICES).message
    assert f"{LAX} -> postgres: {pods[1]} served" in text and "went around the mesh" in text, text
    assert pods[0] not in text


def test_replicas_whose_pooled_connection_is_counted_pass_shared_services(tmp_path: Path) -> None:
    """The control: the same two replicas both connected through their sidecars pass; and one whose only
    connection is a pooled one never logged (no line, counters kept) is not said to go around the mesh."""
    d, pods = _two_replicas(tmp_path, "run")
    v = verify(d)
    assert v.passed, why(v)
    d, pods = _two_replicas(tmp_path, "pooled")
    (d / "accesslogs" / f"{pods[1]}.jsonl").unlink()
    rebuilt(d)
    v = verify(d)
    assert SHARED_SERVICES not in failed(v), why(v)


# -- 4. a zone whose users went away outside every fault --------------------------------------------------------------
PHX = "us-west-2-phx-2a"


def test_a_zone_whose_users_stopped_before_the_first_fault_is_unverified(tmp_path: Path) -> None:
    """HOLE. PHX's users stopped 20 s into a 90 s run (a locust worker gone, an entry point that stopped answering
    without a request in flight); the run's one fault, in LAX, began at 30 s. Coverage asks each fault's zones
    during and after it, and nothing else: PHX's routing for the last 70 s was on no record, and the run passed.
    Users' requests are the traffic the verdict is about; a zone with none in flight for longer than
    `USERS_GAP_S` while the run's users went on is unverified."""
    v = verify(write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[KILL],
                                                    silent=[(PHX, 20.0, None)])))  # fmt: skip
    assert failed(v) == {COVERAGE}, why(v)
    text = v.invariant(COVERAGE).message
    assert f"coverage: {PHX}: no user request entering it in flight from " in text, text
    assert "(70s" in text and "unverified" in text, text


def test_a_zone_whose_users_went_away_mid_run_is_unverified(tmp_path: Path) -> None:
    """HOLE. The same for a stretch in the middle: LAS's users gone from 15 s to 75 s, no fault in LAS: PASS."""
    v = verify(write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[KILL],
                                                    silent=[(LAS, 15.0, 75.0)])))  # fmt: skip
    assert failed(v) == {COVERAGE}, why(v)
    text = v.invariant(COVERAGE).message
    assert f"coverage: {LAS}: no user request entering it in flight from " in text and "(60s" in text, text


def test_a_zone_whose_users_paused_briefly_passes(tmp_path: Path) -> None:
    """The control: LAS's users paused for 12 s (locust's own 10 s timeout and a think time shorter than the
    bound) and every zone's users went on to the end: PASS."""
    v = verify(write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[KILL],
                                                    silent=[(LAS, 60.0, 72.0)])))  # fmt: skip
    assert v.passed, why(v)
