"""Verifier defects a twentieth audit found: a node-killed pod's unflushed log, a degraded link's window, one query.

Each "HOLE." says how the verdict went wrong before its fix; next to each, a control that passes (or fails) at
every timing, as it must.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.verify import COVERAGE, Verdict
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit16 import _slow_stop
from tests.test_verify_audit17 import _drop_inject_snapshot
from tests.test_verify_soundness import LAX, T, failed
from tests.test_verify_timing7 import _lose_access_log
from tests.verdicts import rows, verify, write_rows


# -- 1. a node-killed pod's log with no line, dated by `_died_at` -------------------------------------------------
def _killed_pod(d: Path) -> tuple[str, str, float]:
    """(the LAX product-api pod the node fault killed, the fault, its inject record's ts)."""
    inject = next(c for c in rows(d / "chaos.jsonl") if c["phase"] == "inject")
    removed = (e for e in rows(d / "inventory.jsonl") if e["event"] == "removed" and e["service"] == "product-api")
    pod = next(removed)["pod"]
    return pod, inject["fault"], inject["ts"]


def _counted(d: Path, pod: str, label: str, ts: float, more: int) -> None:
    """A counter snapshot `label` taken at `ts` that read `pod`: its counters as in its fault's inject snapshot,
    plus `more` requests on its first host (negative: fewer, the calls it had made by an earlier instant)."""
    stats = rows(d / "upstream-stats.jsonl")
    mine = [s for s in stats if s["pod"] == pod and str(s["label"]).startswith("inject ") and s["rq_total"] > 0]
    assert mine, "the pod's counters grew by its fault's inject snapshot"
    added = [{**s, "label": label, "ts": ts} for s in mine]
    added[0]["rq_total"] = max(1, added[0]["rq_total"] + more)
    write_rows(d / "upstream-stats.jsonl", sorted(stats + added, key=lambda s: s["ts"]))


def _node_kill_with_log_lost(tmp_path: Path, stop_s: float, snapshot_s: float | None = None) -> tuple[Path, str]:
    """LAX's product-api node killed by a primitive that took `stop_s` (`_slow_stop`, the pod removed when it
    died: an EKS drain's eviction, the local backend's kill), the pod's sidecar counted calls in the fault's
    "before" snapshot (harness.chaos.actions._held_fault takes it just before the inject record), and its access
    log never reached the collector. product-api's upstream is TCP (postgres): its served hops say nothing of its
    own calls (`UserChecks._http_callers`), only its counters do."""
    d = _slow_stop(tmp_path, stop_s, snapshot_s, shape="local", service="product-api", rate_per_zone=10)
    pod, fault, record = _killed_pod(d)
    _counted(d, pod, f"before {fault}", record - 0.01, -20)
    _lose_access_log(d, pod)
    return d, pod


def _names_the_lost_log(v: Verdict, pod: str) -> bool:
    return COVERAGE in failed(v) and any(pod in m and "no access-log line" in m for m in why(v))


def test_a_pod_that_served_on_through_a_slow_stop_has_no_unflushed_excuse_for_its_lost_log(tmp_path: Path) -> None:
    """HOLE. The pod's calls were counted just before the inject record, and it served on for the 4.6 s the
    primitive took: Envoy flushes its access log every second, so those calls' lines were written long before
    it died, and a log with none is lost, not unflushed. `_counted_without_lines` dated the death at the inject
    record (one flush interval after the snapshot) and excused it; `_died_at` dates it at its last served hop."""
    d, pod = _node_kill_with_log_lost(tmp_path, 4.6)
    v = verify(d)
    assert _names_the_lost_log(v, pod), why(v)


def test_a_pod_killed_within_a_flush_of_its_counted_calls_is_still_excused(tmp_path: Path) -> None:
    """Control: the same records with a stop of 50 ms: the pod died within a flush interval of its counted
    calls, and every line it wrote may have sat in the buffer its kill discarded. The verdict passes."""
    d, pod = _node_kill_with_log_lost(tmp_path, 0.05)
    v = verify(d)
    assert not _names_the_lost_log(v, pod), why(v)
    assert v.passed, why(v)


@pytest.mark.parametrize("grew", [pytest.param(True, id="grew-after-return"), pytest.param(False, id="control")])
def test_counters_that_grew_after_the_primitive_returned_leave_a_lost_log_unexcused(tmp_path: Path, grew: bool) -> None:
    """HOLE. The primitive returned 2 s after the inject record (its snapshot), yet the pod served until 4.6 s
    and another snapshot at 3 s (a concurrent experiment's) counted more calls of it: it was alive after the
    latest instant the rule allows for its death, its log went on, and none reached the collector. Dated at
    the inject record, it was excused as unflushed. Control (`grew` False): no later snapshot read it, and the
    pod died within a flush interval of its counted calls: excused."""
    d, pod = _node_kill_with_log_lost(tmp_path, 4.6, snapshot_s=2.0)
    _, _, record = _killed_pod(d)
    # the "before" snapshot (`_node_kill_with_log_lost`) is the evidence the rule reads as more than a flush
    # before its death: drop it here, so only the later growth can tell
    write_rows(d / "upstream-stats.jsonl",
               [s for s in rows(d / "upstream-stats.jsonl") if not str(s["label"]).startswith("before ")])  # fmt: skip
    if grew:
        _counted(d, pod, "before kill-product-api-las", record + 3.0, 30)
    v = verify(d)
    assert _names_the_lost_log(v, pod) == grew, why(v)
    assert v.passed != grew, why(v)


# -- 2. a degraded link's "inside" window, from when the primitive had returned ----------------------------------
APPLY = [pytest.param(0.05, id="apply-50ms"), pytest.param(3.5, id="apply-3.5s")]


def _degraded(tmp_path: Path, apply_s: float, **kw: Any) -> Verdict:
    """LAX's link degraded (+200 ms) for 6 s from 30 s, by a primitive that took `apply_s` to set the rules (kind:
    a `docker exec` of them on each of the zone's nodes, one after another, the timeline writing the inject
    before it: harness.chaos.actions._held_fault): the link is slowed only once it returned, when the inject's
    counter snapshot is taken (synth's `FaultSpec.apply_s`)."""
    f = FaultSpec("slow-link-lax", "link-degraded", LAX, (), 30.0, 36.0, apply_s=apply_s, **kw)
    return verify(write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[f])))


@pytest.mark.parametrize("apply_s", APPLY)
def test_a_degraded_link_is_judged_from_when_its_primitive_had_returned(tmp_path: Path, apply_s: float) -> None:
    """HOLE (same config, same verdict). The degradation's effect is the median of the zone's hops that wait on
    the link "inside" the fault; that window began at the inject record, while the rules are on only once the
    primitive returned. With a 3.5 s primitive in a 6 s hold more than half of those hops were not slowed, the
    median was the baseline's, and a link that was slowed for the rest of the hold "did not take effect", where
    the same mesh with a 50 ms primitive passed. From the inject counter snapshot, both pass."""
    v = _degraded(tmp_path, apply_s)
    assert COVERAGE not in failed(v), why(v)
    assert v.passed, why(v)


@pytest.mark.parametrize("apply_s", APPLY)
def test_an_inert_degradation_still_did_not_take_effect_whatever_its_primitive_took(
    tmp_path: Path, apply_s: float
) -> None:
    """Control: a degradation that never reached the link (`link_inert`) fails coverage at both timings."""
    v = _degraded(tmp_path, apply_s, link_inert=True)
    assert COVERAGE in failed(v), why(v)
    assert "did not take effect" in " ".join(why(v)), why(v)


def test_a_degradation_without_its_inject_snapshot_is_judged_from_the_inject_record(tmp_path: Path) -> None:
    """Without the inject counter snapshot (a primitive that raised, a run from before snapshots) the records do
    not say when the rules were on: the window runs from the inject record, as before, and a slow primitive's
    unslowed hops are judged with it (not passed on an instant nobody recorded)."""
    f = FaultSpec("slow-link-lax", "link-degraded", LAX, (), 30.0, 36.0, apply_s=3.5)
    d = write_run(tmp_path / "run", Scenario(T, duration_s=90, rate_per_zone=4, faults=[f]))
    _drop_inject_snapshot(d)
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    assert "did not take effect" in " ".join(why(v)), why(v)
