"""Coverage's "did not take effect" rule, measured from when the fault's primitive had returned.

The timeline records a fault's inject *before* its primitive runs (harness.chaos.actions._held_fault) and takes
the inject counter snapshot once it has returned. kind's `kill_node` / `zone_outage` is `docker stop` of the
node's container (STOPSIGNAL SIGRTMIN+3: systemd's shutdown; containerd.service's KillMode=process leaves the
pod containers running until PID 1 exits), up to docker's 10 s timeout; the node's pods rightly serve meanwhile.
The failover has been measured from when the fault took effect since 8291c7b (`CheckBase.effective_at`), but
coverage's allowance still ran from the inject record: the same correct mesh passed after a 50 ms stop and was
"unverified" after a 6 s one. Each "HOLE." says how; next to it, controls: a fault whose pods outlived the
primitive's return, a kill_pod whose pod never died, and a fault without its inject snapshot still fail. The
partition's "did not hold throughout" rule had the same allowance from the same record, and shares the fix.
(test_verify_audit16 holds the failover's half of the same defect, and the `_slow_stop` run it is built on.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import COVERAGE, Verdict
from harness.verify.synth import FaultSpec, Scenario, chaos_records, write_run
from tests.test_verify_audit import why
from tests.test_verify_audit5 import _no_op
from tests.test_verify_audit16 import _fault, _slow_stop
from tests.test_verify_soundness import KILL, LAX, T, failed, run
from tests.verdicts import rows, slow_primitive, verify, write_rows

SLOW = [pytest.param(6.0, id="stop-6s"), pytest.param(8.0, id="stop-8s")]


def _effect_text(v: Verdict) -> str:
    """The coverage failures that say a fault did not take effect."""
    return " ".join(t for t in why(v) if "did not take effect" in t)


def _drop_inject_snapshot(d: Path) -> Path:
    """The run without its faults' inject counter snapshots (a primitive that raised, a snapshot no sidecar
    answered, a run from before snapshots): the records no longer say when the primitive returned."""
    stats = rows(d / "upstream-stats.jsonl")
    kept = [s for s in stats if not str(s.get("label", "")).startswith("inject ")]
    assert len(kept) < len(stats), "the run had no inject snapshot to drop"
    write_rows(d / "upstream-stats.jsonl", kept)
    return d


# -- 1. a correct mesh after a slow `docker stop` -----------------------------------------------------------------
@pytest.mark.parametrize("stop_s", SLOW)
def test_a_node_kill_whose_stop_outlasts_max_failover_is_covered(tmp_path: Path, stop_s: float) -> None:
    """HOLE. A correct mesh (the node's pods serve until `docker stop` returns `stop_s` after the inject record,
    the Region serves 0.5 s later) whose stop took longer than maxFailoverS (5 s): its pods' hops more than 5 s
    after the inject record read as a kill that "did not take effect", and coverage failed the run as
    unverified. Measured from the primitive's return (the inject counter snapshot), nothing outlived it."""
    v, f = _fault(_slow_stop(tmp_path, stop_s))
    assert COVERAGE not in failed(v), why(v)
    assert v.passed, why(v)
    assert f.failover_s is not None and 0.45 <= f.failover_s <= 0.6, f


def test_the_same_mesh_gets_the_same_verdict_after_a_stop_of_50ms_and_of_8s(tmp_path: Path) -> None:
    """HOLE (same config, same verdict). One mesh, two stop durations kind may legitimately take: the verdict,
    its failed invariants and the measured failover agree (before: PASS at 50 ms, coverage FAIL at 8 s)."""
    (fast, ff), (slow, fs) = (_fault(_slow_stop(tmp_path / n, s)) for n, s in (("fast", 0.05), ("slow", 8.0)))
    assert (fast.passed, failed(fast)) == (slow.passed, failed(slow)), (why(fast), why(slow))
    assert fast.passed, why(fast)
    assert ff.failover_s is not None and fs.failover_s is not None
    assert abs(ff.failover_s - fs.failover_s) < 0.05, (ff, fs)


# -- 2. controls: what still fails ---------------------------------------------------------------------------------
@pytest.mark.parametrize("returned_s", [pytest.param(0.05, id="returned-50ms"), pytest.param(2.5, id="returned-2.5s")])
def test_pods_serving_past_the_primitives_return_still_fail_coverage(tmp_path: Path, returned_s: float) -> None:
    """The node's pods served 8 s after the inject record, but `docker stop` had returned `returned_s` after it
    (its snapshot): they served more than maxFailoverS (5 s) after the primitive was done, a kill that did not
    take effect when it said it had. Coverage fails it, naming the instant the allowance ran from."""
    v, _ = _fault(_slow_stop(tmp_path, 8.0, snapshot_s=returned_s))
    assert COVERAGE in failed(v), why(v)
    text = _effect_text(v)
    assert "kill-node" in text and "primitive had returned" in text, why(v)


@pytest.mark.parametrize(
    "snapshot_s",
    [
        pytest.param(0.05, id="returned-at-once"),
        pytest.param(8.0, id="returned-after-8s"),
        pytest.param(None, id="none"),
    ],
)
def test_a_kill_pod_whose_pod_never_died_still_fails(tmp_path: Path, snapshot_s: float | None) -> None:
    """A kill_pod recorded and reported done whose pod kept serving to the restore (20 s): with its snapshot at
    once or 8 s on (pods served 12 s past either), or with none (the allowance from the inject record), the pod
    served beyond maxFailoverS after the primitive could have acted, and coverage fails the fault."""
    d = _no_op(tmp_path / "run", KILL)
    if snapshot_s is not None:  # the mesh's counters as at the start, read again once the primitive returned
        inject = next(c for c in rows(d / "chaos.jsonl") if c["phase"] == "inject")
        stats = rows(d / "upstream-stats.jsonl")
        first = [s for s in stats if s["label"] == stats[0]["label"]]
        snap = [{**s, "label": f"inject {KILL.fault}", "ts": inject["ts"] + snapshot_s} for s in first]
        write_rows(d / "upstream-stats.jsonl", sorted([*stats, *snap], key=lambda s: s["ts"]))
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    text = _effect_text(v)
    assert KILL.fault in text, why(v)
    assert ("no inject counter snapshot" in text) == (snapshot_s is None), text


def test_a_slow_kill_without_its_inject_snapshot_is_unverified(tmp_path: Path) -> None:
    """Without the snapshot the records do not say when the primitive returned: the allowance runs from the
    inject record (not from the restore, which `_acted_at`'s upper bound falls back to and which would excuse
    a kill that never took effect), so the 8 s stop's pods are unverified, and the message says why."""
    v, _ = _fault(_drop_inject_snapshot(_slow_stop(tmp_path, 8.0)))
    assert COVERAGE in failed(v), why(v)
    assert "no inject counter snapshot" in _effect_text(v), why(v)


def test_a_quick_kill_without_its_inject_snapshot_still_passes(tmp_path: Path) -> None:
    """The control: a correct kill whose pods died at once needs no snapshot to show it took effect."""
    sc = Scenario(T, duration_s=90, rate_per_zone=4, faults=[KILL])
    d = write_run(tmp_path / "run", sc)
    assert any(c["phase"] == "inject" for c in chaos_records(sc))
    v = verify(_drop_inject_snapshot(d))
    assert COVERAGE not in failed(v), why(v)
    assert not _effect_text(v), why(v)


# -- 3. the partition's "did not hold throughout" rule, the same allowance -------------------------------------------
PARTITION = FaultSpec("partition-lax", "partition", LAX, (), 30, 50, entry_down=True)


def _slow_partition(tmp_path: Path, stop_s: float, snapshot_s: float | None = None) -> Path:
    """A partition of LAX whose primitive took `stop_s` (kind: one iptables-restore per node, one `docker exec`
    after another): recorded `stop_s` before the cut, the users served through LAX's entry until then, and the
    inject counter snapshot taken at the cut (`snapshot_s` after the record instead: a primitive that returned
    before anything was cut)."""
    return slow_primitive(run(tmp_path, faults=[PARTITION], rate_per_zone=10), stop_s, snapshot_s)


@pytest.mark.parametrize("stop_s", [pytest.param(0.05, id="stop-50ms"), *SLOW])
def test_a_partition_whose_primitive_outlasts_max_failover_is_covered(tmp_path: Path, stop_s: float) -> None:
    """HOLE. The same rule for a partition (`_partition_leaked`): users served through LAX's entry until the
    cut, `stop_s` after its record, read as a partition that "did not take effect throughout" once the primitive
    took longer than maxFailoverS. Measured from the primitive's return, every stop passes alike."""
    v = verify(_slow_partition(tmp_path, stop_s))
    assert COVERAGE not in failed(v), why(v)
    assert v.passed, why(v)


@pytest.mark.parametrize("returned_s", [pytest.param(0.05, id="returned-50ms"), pytest.param(None, id="none")])
def test_a_partition_that_leaked_past_its_primitives_return_still_fails(
    tmp_path: Path, returned_s: float | None
) -> None:
    """Users served across the cut link 8 s after the record, the primitive done 50 ms after it (or no snapshot
    saying when): the partition did not hold, and coverage fails it."""
    d = _slow_partition(tmp_path, 8.0, snapshot_s=returned_s)
    if returned_s is None:
        _drop_inject_snapshot(d)
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    text = " ".join(why(v))
    assert "did not take effect throughout" in text, text
    assert ("no inject counter snapshot" in text) == (returned_s is None), text
