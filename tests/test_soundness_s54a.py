"""Broken meshes the verdict passed / correct ones it failed, a fourth pass (s54a).

Each case is a correct synthetic run (harness.verify.synth, kind-style access logs) edited the way the mesh in
question records it, with its twin beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.columnar import ACCESSLOGS, compact
from harness.topology import load_topology
from harness.verify import COVERAGE, EXPERIMENT_RAN, HUB_AND_SPOKE
from harness.verify.synth import FaultSpec, Scenario
from tests.verdicts import Pristine, envoy_start, failed_messages, rebuilt, rows, verify, write_rows

T = load_topology()
LAX = "us-west-2-lax-1a"
# two partitions of LAX: the first leaves its failures in the counters, the second is judged
CUT_1 = FaultSpec("partition-lax-1", "partition", LAX, (), 15, 30, 0.2, 1.0, entry_down=True)
CUT_2 = FaultSpec("partition-lax-2", "partition", LAX, (), 50, 70, 0.2, 1.0, entry_down=True)
COUNTERS = ("cx_total", "cx_connect_fail", "rq_total", "rq_error", "rq_timeout")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("s54a"))


# -- 1. a partition shown by the counters alone, across a sidecar's restart -------------------------------------


def _label_ts(d: Path, label: str) -> float:
    return next(s["ts"] for s in rows(d / "upstream-stats.jsonl") if s["label"] == label)


def _held_through_the_cut(runs: Pristine, tmp_path: Path) -> tuple[Path, str, list[dict[str, Any]]]:
    """LAX's product-api's pooled connection to postgres hung through the second partition instead of failing
    its re-dials on record: no failed hop in the window (Envoy logs a TCP connection when it closes), only its
    sidecar's connect failures (cx_connect_fail; a failed connect is no request). Returns the run, the pod and
    its postgres counters."""
    sc = Scenario(T, duration_s=100, rate_per_zone=4, pooled_tcp=True, faults=[CUT_1, CUT_2], accesslogs="kind")
    d = rebuilt(runs.run(tmp_path / "run", sc))
    inject, restore = _label_ts(d, f"inject {CUT_2.fault}"), _label_ts(d, f"restore {CUT_2.fault}")
    pod = next(e["pod"] for e in rows(d / "inventory.jsonl")
               if e["event"] == "added" and e["zone"] == LAX and e["service"] == "product-api")  # fmt: skip
    log = d / "accesslogs" / f"{pod}.jsonl"
    recs = rows(log)
    gone = [r for r in recs if r["upstream_host"].endswith(":5432") and int(r["response_code"]) != 200
            and inject - 1 <= envoy_start(r) < restore + 1]  # fmt: skip
    assert len(gone) >= 40
    write_rows(log, [r for r in recs if r not in gone])
    stats = rows(d / "upstream-stats.jsonl")
    mine = [s for s in stats if s["pod"] == pod and s["host"].endswith(":5432")]
    for s in mine:
        if s["label"] in (f"restore {CUT_2.fault}", "end"):
            s["rq_total"] -= len(gone)
            s["rq_error"] -= len(gone)
    write_rows(d / "upstream-stats.jsonl", stats)
    return d, pod, stats


def _restarted(d: Path, pod: str, stats: list[dict[str, Any]], new: dict[str, int]) -> None:
    """The pod's sidecar restarted 10 s into the second partition: its restore and end reads are the new Envoy's,
    `new` its postgres counters (from zero at its start)."""
    for s in stats:
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] in (f"restore {CUT_2.fault}", "end"):
            s.update(new, rq_total=s["rq_active"], rq_error=new.get("rq_error", 0), rq_timeout=0)
    write_rows(d / "upstream-stats.jsonl", stats)


def test_control_a_partition_shown_by_the_counters_alone_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: the hung connection's sidecar counted the cut's connect failures, no hop failed: passes."""
    d, _, _ = _held_through_the_cut(runs, tmp_path)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_a_sidecar_crashed_in_place_during_a_partition_still_shows_the_cut(runs: Pristine, tmp_path: Path) -> None:
    """Envoy crashed (OOM) 10 s into the partition and kubelet restarted the container in place: same pod, same
    address, no inventory record, counters from zero. Its 10 connect failures since are the cut; subtracting
    the old Envoy's 60 earlier ones (the first partition's) from them left the sum below zero, and the correct
    mesh was "not shown to have cut anything" (unverified)."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    _restarted(d, pod, stats, {"cx_total": 10, "cx_connect_fail": 10})
    v = verify(d)
    assert v.passed, failed_messages(v)


def recreated_under_its_name(d: Path, pod: str) -> None:
    """The inventory of `pod` re-created under its name, same address, 10 s into the second partition: removed,
    then added and ready again (a new Envoy the counters' reads after it belong to)."""
    inv = rows(d / "inventory.jsonl")
    added = next(e for e in inv if e["event"] == "added" and e["pod"] == pod)
    at = _label_ts(d, f"inject {CUT_2.fault}") + 10
    inv += [
        {**added, "ts": at, "event": "removed"},
        {**added, "ts": at + 0.2},
        {**added, "ts": at + 1, "event": "ready"},
    ]
    write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))


def test_a_sidecar_back_under_its_name_during_a_partition_counts_from_zero(runs: Pristine, tmp_path: Path) -> None:
    """The pod re-created under its name 10 s into the partition (the inventory's removed, then added, same
    address): the new Envoy's counters happen to read what the old one's did at the inject, every one of them
    (no counter went down), yet all of them are its own since it started, inside the cut."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    at_inject = next(s for s in stats if s["pod"] == pod and s["host"].endswith(":5432")
                     and s["label"] == f"inject {CUT_2.fault}")  # fmt: skip
    assert at_inject["cx_connect_fail"] > 0
    _restarted(d, pod, stats, {c: at_inject[c] for c in COUNTERS})
    recreated_under_its_name(d, pod)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_control_a_restarted_sidecar_that_counted_no_cut_is_still_unverified(runs: Pristine, tmp_path: Path) -> None:
    """Control (the broken twin): the new Envoy counted no failure towards another zone; nothing else shows the
    cut: still not shown."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    _restarted(d, pod, stats, {"cx_total": 0, "cx_connect_fail": 0})
    failed = failed_messages(verify(d))
    assert COVERAGE in failed and f"partition of {LAX} is not shown to have cut anything" in failed[COVERAGE], failed


# -- 2. Consul's default access-log format: an inbound line behind X-Forwarded-For names no caller ---------------


def _default_format(d: Path) -> None:
    """Every line as Consul's default format writes it: no downstream_direct_remote_address."""
    for f in sorted((d / "accesslogs").glob("*.jsonl")):
        write_rows(f, [{k: v for k, v in r.items() if k != "downstream_direct_remote_address"} for r in rows(f)])
    rebuilt(d)


@pytest.mark.parametrize("records", ["jsonl", "parquet"])
def test_calls_into_another_lz_unplaceable_in_the_default_format_are_unverified(
    runs: Pristine, tmp_path: Path, records: str
) -> None:
    """s53a's killed LAX frontend whose last second went to LAS's public-api, recorded in the default format: LAS's
    inbound lines of those calls carry the ALB's X-Forwarded-For and no peer address, so they name no caller, and
    the frontend's own lines died with it. The broken mesh passed, saying nothing of what it could not check."""
    from tests.test_soundness_s53a import _frontend_last_second_to_las, _frontend_run, _inbound_via_alb

    d = _frontend_run(runs, tmp_path)
    _inbound_via_alb(d)
    assert _frontend_last_second_to_las(d) >= 3
    _default_format(d)
    if records == "parquet":
        assert compact(d, ACCESSLOGS) > 0
    failed = failed_messages(verify(d))
    assert HUB_AND_SPOKE in failed, failed
    msg = failed[HUB_AND_SPOKE]
    assert "frontend-lax-1a" in msg and "public-api-las-1a" in msg, msg
    assert "no downstream_direct_remote_address" in msg and "unverified" in msg, msg


def test_control_the_default_format_with_no_caller_dead_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: a correct run in the default format behind an ALB where no sidecar died (a degraded link): every
    caller's own lines say where its calls went, nothing is left unchecked, and it passes."""
    from tests.test_soundness_s53a import _inbound_via_alb

    slow = FaultSpec("slow-lax", "link-degraded", LAX, (), 30, 50, 0, 1.0)
    d = runs.run(tmp_path / "run", Scenario(T, duration_s=60, rate_per_zone=4, faults=[slow], accesslogs="kind"))
    _inbound_via_alb(d)
    _default_format(d)
    v = verify(d)
    assert v.passed, failed_messages(v)


# -- 3. a journal that says completed with no steady state checked after the method --------------------------------


def _journal_with_hypothesis(d: Path) -> tuple[Path, dict[str, Any]]:
    """The run's journal as chaostoolkit writes it: the experiment it ran (its steady-state hypothesis with it)."""
    jp = next((d / "chaos").glob("*/journal.json"))
    j = json.loads(jp.read_text())
    probe = j["steady_states"]["before"]["probes"][0]["activity"]
    j["experiment"]["steady-state-hypothesis"] = {"title": "all pods ready", "probes": [probe]}
    return jp, j


@pytest.mark.parametrize("after", ["never-checked", "no-probes", "not-met"])
def test_a_completed_journal_without_the_steady_state_after_is_unverified(
    runs: Pristine, tmp_path: Path, after: str
) -> None:
    """chaostoolkit says completed, not deviated, when it never checked the hypothesis after the method
    (`--hypothesis-strategy before-method-only`: steady_states.after null), and the verdict read only `deviated`:
    the state the faults left was on no record and experiment-ran passed."""
    sc = Scenario(T, duration_s=100, rate_per_zone=4, faults=[CUT_2], accesslogs="kind")
    d = runs.run(tmp_path / "run", sc)
    jp, j = _journal_with_hypothesis(d)
    states = j["steady_states"]
    if after == "never-checked":
        states["after"] = None
    elif after == "no-probes":
        states["after"]["probes"] = []
    else:  # a probe's tolerance not met, written without the deviation
        states["after"]["steady_state_met"] = False
        states["after"]["probes"][0].update(tolerance_met=False, output=False)
    jp.write_text(json.dumps(j))
    failed = failed_messages(verify(d))
    assert EXPERIMENT_RAN in failed and "steady state after the method" in failed[EXPERIMENT_RAN], failed


def test_control_a_completed_journal_with_its_hypothesis_held_after_passes(runs: Pristine, tmp_path: Path) -> None:
    """Control: the same journal with the hypothesis checked and held after the method passes."""
    sc = Scenario(T, duration_s=100, rate_per_zone=4, faults=[CUT_2], accesslogs="kind")
    d = runs.run(tmp_path / "run", sc)
    jp, j = _journal_with_hypothesis(d)
    jp.write_text(json.dumps(j))
    v = verify(d)
    assert v.passed, failed_messages(v)
