"""Broken meshes the verdict passed / correct ones it failed, a fifth pass (s55a).

Each case is a correct synthetic run (harness.verify.synth, kind-style access logs) edited the way the mesh in
question records it, with its twin beside it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.topology import load_topology
from harness.verify import COVERAGE, FALLBACK, HUB_AND_SPOKE
from harness.verify.synth import FaultSpec, Scenario
from tests.test_soundness_s51a import INJECT, _added, _addresses, _inbound, _run, _start, last_second_to_las
from tests.verdicts import Pristine, envoy_start, failed_messages, rebuilt, rows, verify, write_rows

T = load_topology()
LAX, LAS = "us-west-2-lax-1a", "us-west-2-las-1a"
STRAY_IP = "10.244.9.77"  # an address no pod of the inventory ever held


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("s55a"))


# -- 1. an access-log file of a pod the inventory never had -------------------------------------------------------


def _to_a_stray_pod(d: Path, caller_ip: str, lo: float, hi: float, stray: str, *, move: bool = True) -> int:
    """The inbound lines LAS's product-api logged of calls from `caller_ip` in [lo, hi) (seconds into the run) as
    a pod the inventory never had logged them (`stray`: its own file, its own address; a pod re-created under a
    name the inventory's watch missed). `move`: taken out of LAS's product-api's file. Returns how many."""
    las = next(p for p in _added(d) if p["service"] == "product-api" and p["zone"] == LAS)
    start = _start(d)
    acc = d / "accesslogs"
    recs = rows(acc / f"{las['pod']}.jsonl")
    mine = [r for r in recs if _inbound(r) and str(r.get("downstream_remote_address", "")).startswith(f"{caller_ip}:")
            and lo <= envoy_start(r) - start < hi]  # fmt: skip
    if move:
        write_rows(acc / f"{las['pod']}.jsonl", [r for r in recs if r not in mine])
    write_rows(acc / f"{stray}.jsonl", [{**r, "downstream_local_address": f"{STRAY_IP}:20000"} for r in mine])
    rebuilt(d)
    return len(mine)


def _lax_public_api(d: Path) -> dict[str, str]:
    return next(p for p in _added(d) if p["service"] == "public-api" and p["zone"] == LAX)


def test_calls_into_another_lz_at_a_pod_the_inventory_never_had_are_unverified(runs: Pristine, tmp_path: Path) -> None:
    """s51a's killed LAX public-api whose last second went to LAS's product-api, served by a LAS product-api the
    inventory never had (re-created under a name its watch missed): its own lines died in its buffer, and the
    serving side's inbound lines are in a file of a pod the verdict cannot place. Their serving zone unknown,
    they were left out and the broken mesh passed."""
    d = _run(runs, tmp_path)
    _addresses(d)
    caller = _lax_public_api(d)
    assert last_second_to_las(d) >= 3
    assert _to_a_stray_pod(d, caller["ip"], INJECT - 1.0, INJECT, "product-api-las-1a-6f9d8-x2k4q") >= 3
    failed = failed_messages(verify(d))
    assert HUB_AND_SPOKE in failed, failed
    msg = failed[HUB_AND_SPOKE]
    assert caller["pod"] in msg and "product-api-las-1a-6f9d8-x2k4q" in msg and "unverified" in msg, msg


def test_control_a_pod_the_inventory_never_had_served_by_a_live_caller_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: inbound lines at a pod the inventory never had from a caller that lived on (its own lines say
    where its calls went, and are judged) leave nothing unchecked: passes."""
    d = _run(runs, tmp_path)
    _addresses(d)
    las_caller = next(p for p in _added(d) if p["service"] == "public-api" and p["zone"] == LAS)
    assert _to_a_stray_pod(d, las_caller["ip"], 10.0, 20.0, "product-api-las-1a-6f9d8-x2k4q", move=False) >= 3
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_unplaced_calls_at_a_pod_the_inventory_never_had_after_a_death_are_unverified(
    runs: Pristine, tmp_path: Path
) -> None:
    """s54a's killed LAX frontend whose last second went to LAS's public-api, in Consul's default format (the
    inbound lines behind the ALB name no caller), served by a LAS public-api the inventory never had: the lines
    at a pod of no known zone or service were left out, and the broken mesh passed."""
    from tests.test_soundness_s53a import _frontend_last_second_to_las, _frontend_run, _inbound_via_alb
    from tests.test_soundness_s54a import _default_format

    d = _frontend_run(runs, tmp_path)
    _inbound_via_alb(d)
    frontend = next(p for p in _added(d) if p["service"] == "frontend" and p["zone"] == LAX)
    assert _frontend_last_second_to_las(d) >= 3
    stray = "public-api-las-1a-5c7b9-q8w2e"
    las = next(p for p in _added(d) if p["service"] == "public-api" and p["zone"] == LAS)
    recs = rows(d / "accesslogs" / f"{las['pod']}.jsonl")
    mine = [r for r in recs if str(r.get("downstream_direct_remote_address", "")).startswith(f"{frontend['ip']}:")]
    assert len(mine) >= 3
    write_rows(d / "accesslogs" / f"{las['pod']}.jsonl", [r for r in recs if r not in mine])
    write_rows(d / "accesslogs" / f"{stray}.jsonl", mine)
    _default_format(d)
    failed = failed_messages(verify(d))
    assert HUB_AND_SPOKE in failed, failed
    msg = failed[HUB_AND_SPOKE]
    assert frontend["pod"] in msg and stray in msg and "never had" in msg and "unverified" in msg, msg


# -- 2. two faults overlapping in one zone: the failover of callers the first one had taken down -------------------

KILL_PUBLIC_API = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 30, 50)
KILL_PRODUCT_API = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 40, 60)


def _overlapping(runs: Pristine, tmp_path: Path, faults: list[FaultSpec], misconfig: str | None = None) -> Path:
    sc = Scenario(T, duration_s=100, rate_per_zone=4, faults=faults, accesslogs="kind", misconfig=misconfig)
    return runs.run(tmp_path / "run", sc)


def test_a_failover_of_callers_back_during_the_fault_is_measured_from_their_return(
    runs: Pristine, tmp_path: Path
) -> None:
    """LAX's public-api killed (30-50 s), its product-api killed while it was down (40-60 s): the pair LAX ->
    product-api had no caller at the product-api's kill, and the replacement public-api, ready at 50 s, found
    the Region's product-api at once. Measured from the product-api's kill, its failover read 12 s, past
    maxFailoverS (5 s) and "traffic too sparse to resolve it": the correct mesh failed."""
    d = _overlapping(runs, tmp_path, [KILL_PUBLIC_API, KILL_PRODUCT_API])
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_a_failover_pair_whose_callers_were_down_through_the_fault_has_nothing_to_fail_over(
    runs: Pristine, tmp_path: Path
) -> None:
    """LAX's public-api down (30-70 s) through the whole kill of its product-api (40-50 s): no LAX public-api
    called product-api, and "no traffic during fault: failover unverified" failed the correct mesh."""
    nested = [replace(KILL_PUBLIC_API, restore=70), replace(KILL_PRODUCT_API, restore=50)]
    d = _overlapping(runs, tmp_path, nested)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_control_callers_back_during_the_fault_that_never_fail_over_fail(runs: Pristine, tmp_path: Path) -> None:
    """Control (the broken twin): no failover to the Region configured; the returned public-api's calls still go
    to LAX's dead product-api: fallback fails for the product-api's kill."""
    d = _overlapping(runs, tmp_path, [KILL_PUBLIC_API, KILL_PRODUCT_API], misconfig="missing-failover")
    failed = failed_messages(verify(d))
    assert FALLBACK in failed and f"{LAX} -> product-api" in failed[FALLBACK], failed
    assert "kill-product-api-lax" in failed[FALLBACK], failed


def test_a_recovery_of_callers_back_after_the_restore_is_measured_from_their_return(
    runs: Pristine, tmp_path: Path
) -> None:
    """LAX's public-api down for 80 s (30-110 s) around a 10 s kill of its product-api (40-50 s): the pair LAX ->
    product-api had no caller from the product-api's restore until the public-api's return, which then called
    LAX's product-api at once. Measured from the restore, its recovery read the public-api's 60 s away, "not
    shown within maxRecoveryS 60s": the correct mesh failed."""
    long = [replace(KILL_PUBLIC_API, restore=110), replace(KILL_PRODUCT_API, restore=50)]
    sc = Scenario(T, duration_s=150, rate_per_zone=4, faults=long, accesslogs="kind")
    v = verify(runs.run(tmp_path / "run", sc))
    assert v.passed, failed_messages(v)
    f = next(x for x in v.to_dict()["faults"] if x["fault"] == KILL_PRODUCT_API.fault)
    assert f["recovery_s"] is not None and f["recovery_s"] < 5, f


def test_control_callers_back_after_the_restore_that_never_recover_fail(runs: Pristine, tmp_path: Path) -> None:
    """Control (the broken twin): no locality, the returned public-api's calls stay with the Region after it came
    back: the product-api's kill still fails recovery."""
    long = [replace(KILL_PUBLIC_API, restore=110), replace(KILL_PRODUCT_API, restore=50)]
    sc = Scenario(T, duration_s=150, rate_per_zone=4, faults=long, accesslogs="kind", misconfig="no-locality")
    failed = failed_messages(verify(runs.run(tmp_path / "run", sc)))
    assert FALLBACK in failed and "kill-product-api-lax" in failed[FALLBACK], failed


# -- 3. a user's requests on no record while the entry sidecar logged them -----------------------------------------


def _ids_of(d: Path, zone: str, lo: float, hi: float, every: int) -> set[int]:
    """The ids of every `every`-th user request entering `zone` in [lo, hi) seconds into the run (one user of
    `every`, the zone's users taking turns)."""
    start = _start(d)
    mine = [r for r in rows(d / "requests.jsonl") if r["zone"] == zone and lo <= r["ts"] - start < hi]
    return {r["request_id"] for r in mine[::every]}


def _records_lost(d: Path, ids: set[int], status: int | None) -> int:
    """The requests `ids` as a user whose records never reached requests.jsonl (an in-zone worker's shipped
    records lost, a locust worker process gone) made them: the entry sidecar logged each (by its id), answered
    `status` (None: as it was). Returns how many entry lines name them."""
    write_rows(d / "requests.jsonl", [r for r in rows(d / "requests.jsonl") if r.get("request_id") not in ids])
    heads = {f"eh-{n:016x}" for n in ids}
    n = 0
    for f in sorted((d / "accesslogs").glob("*.jsonl")):
        recs = rows(f)
        for r in recs:
            if r.get("request_id") in heads:
                n += 1
                if status is not None:
                    r.update(response_code=status, response_flags="UF" if status == 503 else "-")
        write_rows(f, recs)
    rebuilt(d)
    return n


def test_a_users_failed_requests_on_no_record_are_unverified(runs: Pristine, tmp_path: Path) -> None:
    """One of LAX's users met only 503s for 30 s (the entry sidecar logged each of its requests, by its id,
    answered 503) and its records never reached requests.jsonl: availability judged the other users' requests
    alone, and the broken mesh passed."""
    sc = Scenario(T, duration_s=60, rate_per_zone=4, accesslogs="kind")
    d = runs.run(tmp_path / "run", sc)
    ids = _ids_of(d, LAX, 15, 45, 3)
    assert _records_lost(d, ids, 503) >= len(ids) >= 30
    failed = failed_messages(verify(d))
    assert COVERAGE in failed, failed
    msg = failed[COVERAGE]
    assert LAX in msg and "requests.jsonl" in msg and "unverified" in msg, msg


def test_control_requests_in_flight_when_the_users_stopped_pass(runs: Pristine, tmp_path: Path) -> None:
    """Control: the requests the users had in flight when locust stopped them (their last second: a stopped
    user's request fires no event, so it has no record) are logged by the entry sidecars with no record, and the
    run passes."""
    sc = Scenario(T, duration_s=60, rate_per_zone=4, accesslogs="kind")
    d = runs.run(tmp_path / "run", sc)
    ids = _ids_of(d, LAX, 59.5, 61, 1)
    assert _records_lost(d, ids, None) >= 1
    v = verify(d)
    assert v.passed, failed_messages(v)
