"""Broken meshes the verdict passed / correct ones it failed, a fifth pass (s55a).

Each case is a correct synthetic run (harness.verify.synth, kind-style access logs) edited the way the mesh in
question records it, with its twin beside it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.topology import load_topology
from harness.verify import HUB_AND_SPOKE
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
