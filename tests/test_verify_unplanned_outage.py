"""An outage nobody injected that does not recover fails the run; a readiness flap stays a note.

A service with no ready pod in a zone outside every recorded fault (a crash,
an image that stops starting) was a note only ("... outside any recorded
fault (locality not judged then)"): the mesh routes around it by design, the
users are served from the Region, and every invariant held. So a zone whose
product-api crashed and never came back passed, and so did one served from
the Region for minutes. Such an outage now fails fallback once it lasts
longer than maxRecoveryS (or is still on at the end of a run that long after
it began): it did not recover in the time the SLO gives any recovery, and
locality could not be judged meanwhile. The seconds-long flaps of a loaded
machine stay notes (the longest in 350 stability runs of a correct mesh
lasted 1.6 s). Runs come from the synthetic mesh (`FaultSpec(recorded=False)`:
an outage with no timeline record and no experiment).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.topology import Topology
from harness.verify import FALLBACK, Verdict, pending_recoveries
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import LAX, T, failed
from tests.verdicts import rows, verify, write_rows

DURATION_S = 150.0
LIMIT_S = T.slo.max_recovery_s


def _crash(start: float, back: float | None) -> FaultSpec:
    return FaultSpec("crash", "service-down", LAX, ("product-api",), start, back, 0.2, 1.0, recorded=False)


def _verify(tmp_path: Path, topology: Topology = T, **kw: Any) -> Verdict:
    sc = Scenario(topology, duration_s=DURATION_S, rate_per_zone=4, **kw)
    return verify(write_run(tmp_path / "run", sc))


@pytest.mark.parametrize(("start", "back"), [(30.0, None), (30.0, 30.0 + LIMIT_S + 10)])
def test_an_outage_nobody_injected_that_outlasts_the_recovery_slo_fails_fallback(
    tmp_path: Path, start: float, back: float | None
) -> None:
    """Before: PASS, with the outage as a note (users were served from the Region all along)."""
    v = _verify(tmp_path, faults=[_crash(start, back)])
    assert not v.passed and FALLBACK in failed(v), why(v)
    msg = v.invariant(FALLBACK).message
    assert f"product-api had no ready pod in {LAX}" in msg and "outside any recorded fault" in msg
    assert f"longer than maxRecoveryS ({LIMIT_S:g}s)" in msg
    assert ("still when the run ended" in msg) is (back is None)
    assert FALLBACK not in {i.name for i in v.invariants if i.passed}


@pytest.mark.parametrize(("start", "back"), [(30.0, 50.0), (DURATION_S - 30.0, None)])
def test_a_short_outage_or_one_whose_recovery_is_not_yet_due_at_the_end_is_a_note(
    tmp_path: Path, start: float, back: float | None
) -> None:
    """20 s and back; or 30 s before the end and not back yet: within maxRecoveryS, its recovery not yet due."""
    v = _verify(tmp_path, faults=[_crash(start, back)])
    assert v.passed, why(v)
    notes = [n for n in v.run.notes if "outside any recorded fault" in n]
    assert any(n.startswith(f"product-api had no ready pod in {LAX}") for n in notes), notes


def test_a_spill_nobody_injected_that_outlasts_the_recovery_slo_fails_fallback(tmp_path: Path) -> None:
    """One of LAX's two product-api replicas unready for 80 s: Envoy sends part of the zone's traffic to the
    Region by design, for longer than any recovery may take, and nothing injected it."""
    t2 = _with_replicas("product-api", 2)
    v = _verify(tmp_path, topology=t2, degraded=[(LAX, "product-api", 30.0, 30.0 + LIMIT_S + 20)])
    assert FALLBACK in failed(v), why(v)
    assert "too few ready pods to keep its traffic" in v.invariant(FALLBACK).message
    # the same spill for 10 s: a note
    short = _verify(tmp_path / "short", topology=t2, degraded=[(LAX, "product-api", 30.0, 40.0)])
    assert short.passed, why(short)


@pytest.mark.parametrize("back", [40.0 + LIMIT_S + 10, 52.0])
def test_an_outage_that_begins_as_a_fault_is_undone_is_named_after_it(tmp_path: Path, back: float) -> None:
    """A node's pods start over after its restore (kind: the kubelet boots; here: new pods): their outage begins
    just after the fault's restore record, so it is no outage "nobody injected". Named after the fault; it
    still fails when it outlasts maxRecoveryS (the restored zone never came back)."""
    outage = FaultSpec("zone-las", "zone-down", LAX, (), 30.0, 40.0, 0.0, 1.0, entry_down=True)
    crash = _crash(40.5, back)
    v = _verify(tmp_path, faults=[outage, crash])
    notes = [n for n in v.run.notes if n.startswith(f"product-api had no ready pod in {LAX}")]
    assert notes and all("after the restore of zone-las" in n and "outside" not in n for n in notes), notes
    long = back - 40.5 > LIMIT_S
    assert (FALLBACK in failed(v)) is long, why(v)
    if long:
        assert "not back after the restore" in v.invariant(FALLBACK).message


def _with_blip(run: Path, pod_service: str, at: float, lasting: float) -> Path:
    """`run` with one of LAX's `pod_service` pods unready at `at` s into the run and ready `lasting` s later."""
    inv = run / "inventory.jsonl"
    rows = [json.loads(line) for line in inv.read_text().splitlines()]
    pod = next(r for r in rows if r["zone"] == LAX and r["service"] == pod_service and r["event"] == "added")
    t0 = min(r["ts"] for r in rows)
    rows += [{**pod, "event": "unready", "ts": t0 + at}, {**pod, "event": "ready", "ts": t0 + at + lasting}]
    inv.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["ts"])))
    return run


@pytest.mark.parametrize(("lasting", "noted"), [(0.0004, False), (0.05, True)])
def test_an_outage_shorter_than_the_access_logs_clock_is_not_a_note(
    tmp_path: Path, lasting: float, noted: bool
) -> None:
    """A pod unready and ready again within a millisecond (two pods' readiness written microseconds apart in one
    control-loop tick, as the Region's two frontends at start-up) was a note "frontend had too few ready pods
    ... from 12:23:03.351Z to 12:23:03.351Z": Envoy's timestamps are whole milliseconds, no hop can be placed in
    it. 50 ms stays a note."""
    sc = Scenario(T, duration_s=DURATION_S, rate_per_zone=4)
    v = verify(_with_blip(write_run(tmp_path / "run", sc), "product-api", 60.0, lasting))
    assert v.passed, why(v)
    notes = [n for n in v.run.notes if n.startswith(f"product-api had no ready pod in {LAX}")]
    assert bool(notes) is noted, v.run.notes


def test_the_cool_down_waits_for_an_outage_nobody_injected_until_it_is_back_or_due(tmp_path: Path) -> None:
    """LAX's product-api crashed 10 s before the users would stop and never came back. Stopped then, the verdict
    has it as a note (its recovery not yet due) and passes; kept on past maxRecoveryS, it fails fallback. Before,
    e2e's cool-down asked nothing of it (no fault to recover from) and the verdict was the cool-down's length;
    now it waits for the outage until it is over or due, and the verdict is the mesh's."""
    start = DURATION_S - 10.0
    sc = Scenario(T, duration_s=DURATION_S, rate_per_zone=4, faults=[_crash(start, None)])
    run = write_run(tmp_path / "short", sc)
    left = pending_recoveries(run, T, sc.start + DURATION_S)
    assert [(p.zone, p.upstream, p.outage) for p in left] == [(LAX, "product-api", True)], left
    assert left[0].due == pytest.approx(sc.start + start + LIMIT_S, abs=0.5)
    assert "outside any recorded fault" in str(left[0])
    assert verify(run).passed  # what stopping then gave: a note
    long = Scenario(T, duration_s=start + LIMIT_S + 5, rate_per_zone=4, faults=[_crash(start, None)])
    run = write_run(tmp_path / "long", long)
    assert pending_recoveries(run, T, long.start + start + LIMIT_S + 5) == []  # due: the verdict decides
    v = verify(run)
    assert not v.passed and FALLBACK in failed(v), why(v)


@pytest.mark.parametrize("faults", ["flap-over", "in-a-fault"])
def test_the_cool_down_does_not_wait_for_an_outage_over_or_one_a_fault_explains(tmp_path: Path, faults: str) -> None:
    """Controls: a crash back 2 s later is not waited for; nor is the outage of a zone-down fault's own services
    (its pairs are watched as that fault's recovery, `_watched`, not as an outage nobody injected)."""
    if faults == "flap-over":
        specs = [_crash(DURATION_S - 10.0, DURATION_S - 8.0)]
    else:
        specs = [FaultSpec("zone-lax", "zone-down", LAX, (), DURATION_S - 10.0, None, 0.0, 1.0, entry_down=True)]
    sc = Scenario(T, duration_s=DURATION_S, rate_per_zone=4, faults=specs)
    run = write_run(tmp_path / "run", sc)
    assert [p for p in pending_recoveries(run, T, sc.start + DURATION_S) if p.outage] == []


def test_the_cool_down_waits_for_a_spill_nobody_injected_too(tmp_path: Path) -> None:
    """The same for a spill: one of LAX's two product-api replicas unready since 10 s before the users would stop
    (Envoy sends part of the zone's calls to the Region by design), nothing injected: waited for until it is over
    or due, as the verdict fails one that lasts maxRecoveryS; one already over is not."""
    t2 = _with_replicas("product-api", 2)
    start = DURATION_S - 10.0
    on = Scenario(t2, duration_s=DURATION_S, rate_per_zone=4, degraded=[(LAX, "product-api", start, start + LIMIT_S)])
    run = write_run(tmp_path / "on", on)
    now = on.start + DURATION_S
    inv = run / "inventory.jsonl"  # the records as they are now: the replica's return is still to come
    write_rows(inv, [e for e in rows(inv) if e["ts"] <= now])
    left = pending_recoveries(run, t2, now)
    assert [(p.zone, p.upstream, p.outage) for p in left] == [(LAX, "product-api", True)], left
    assert "too few ready pods" in str(left[0]) and left[0].due == pytest.approx(on.start + start + LIMIT_S, abs=0.5)
    over = Scenario(t2, duration_s=DURATION_S, rate_per_zone=4, degraded=[(LAX, "product-api", start, start + 2)])
    run = write_run(tmp_path / "over", over)
    assert [p for p in pending_recoveries(run, t2, over.start + DURATION_S) if p.outage] == []
