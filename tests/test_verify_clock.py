"""The nodes' clocks against the runner's (harness.contract.clock): the verifier's side, on synthetic runs.

On EKS the hops' times are Envoy's START_TIME on each node's clock, every other record the runner's. Each
broken case plants what such a run records (the access logs' START_TIMEs shifted by the nodes' offset) and
asserts what the verdict must say; the docstrings' "HOLE." says what the verifier did before it read the
clock record. Next to them, controls: the same run with one clock passes as it always did.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.contract.clock import CLOCK_CARRY_LIMIT_S, evaluate
from harness.verify import COVERAGE
from harness.verify.synth import FaultSpec, Scenario
from tests.test_verify_audit import why
from tests.test_verify_soundness import KILL, LAX, T, failed
from tests.verdicts import SHARED, envoy_start, rows, verify, write_rows

BEHIND = -0.3  # the nodes' clocks 300 ms behind the runner's
# a failover over maxFailoverS (5 s): the kill's hops fail for 5.1 s, the last failed one 72 ms over it (a hop that
# shows the breach: `faults.over_slo`), the first Region hop at 5.322 s
SLOW = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 5.1, 1.0)


def _run(tmp_path: Path, name: str, fault: FaultSpec) -> Path:
    return SHARED.run(tmp_path / name, Scenario(T, duration_s=90, rate_per_zone=4, faults=[fault]))


def _skew(d: Path, offset_s: float) -> Path:
    """Every access-log line stamped by a node clock `offset_s` off the runner's (node = runner + offset)."""
    for f in (d / "accesslogs").glob("*.jsonl"):
        recs = rows(f)
        for r in recs:
            at = datetime.fromtimestamp(envoy_start(r) + offset_s, UTC)
            r["start_time"] = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        write_rows(f, recs)
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d


def _skew_requests(d: Path, offset_s: float) -> Path:
    """Every user request stamped by its entry zone's node clock (locust workers in the zones' pods, each on its
    zone's probed node, which every record names: `node`)."""
    recs = rows(d / "requests.jsonl")
    write_rows(
        d / "requests.jsonl", [{**r, "ts": r["ts"] + offset_s, "node": f"{T.short(r['zone'])}-n1"} for r in recs]
    )
    return d


def _span(d: Path) -> tuple[float, float]:
    ts = [r["ts"] for r in rows(d / "requests.jsonl")]
    return min(ts), max(ts)


def _clock(d: Path, offset_s: float, skip: tuple[tuple[str, str], ...] = (), zones: list[str] | None = None,
           lax_rtt_s: float = 0.004, requests_in_zones: bool = False, lax_at: float = 0.5,
           spacing_s: float = 0.05, far_zone: str = LAX) -> Path:  # fmt: skip
    """clock.jsonl as the harness writes it on EKS: three probes per zone and batch `spacing_s` apart, each logged
    by the zone's frontend sidecar halfway through its round trip (4 ms; `far_zone`'s, LAX by default,
    `lax_rtt_s`, logged at `lax_at` of the way through it), at node time; (zone, batch) in `skip` found no line."""
    start, end = _span(d)
    recs: list[dict[str, Any]] = [{"ts": start - 2, "event": "clock", "runner_clock": "separate", "why": "test"}]
    if requests_in_zones:
        recs[0]["requests_clock"] = "zones"
    for zone in zones or [z.name for z in T.zones]:
        rtt_s, frac = (lax_rtt_s, lax_at) if zone == far_zone else (0.004, 0.5)
        for batch, at in (("start", start - 1.0), ("end", end + 1.0)):
            for i in range(3):
                t0 = at + i * spacing_s
                probe = f"{zone}-{batch}-{i}"
                recs.append({"ts": t0, "event": "sent", "batch": batch, "zone": zone, "probe": probe, "sent": t0,
                             "received": t0 + rtt_s, "status": 200, "error": None})  # fmt: skip
                if (zone, batch) in skip:
                    continue
                logged = int((t0 + frac * rtt_s + offset_s) * 1000) / 1000  # START_TIME: whole ms, truncated
                recs.append({"ts": t0 + rtt_s, "event": "logged", "batch": batch, "probe": probe,
                             "pod": f"frontend-{zone}", "zone": zone, "node": f"{T.short(zone)}-n1", "logged": logged,
                             "start_time": ""})  # fmt: skip
    write_rows(d / "clock.jsonl", recs)
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d


def _figures(d: Path) -> tuple[bool, float | None, float | None]:
    v = verify(d)
    f = v.faults[0]
    return v.passed, f.failover_s, f.recovery_s


def test_nodes_behind_the_runner_are_put_back_on_its_clock(tmp_path: Path) -> None:
    """HOLE. Nodes 300 ms behind the runner: every hop looked 300 ms earlier against the kill. The failover
    took 0.32 s and was measured as 0.02 s, the recovery 1.07 s as 0.77 s, and the verdict passed with both
    figures wrong. With the offset measured (clock.jsonl) the hops are put back on the runner's clock: the
    figures are those of the same run on one clock, to within the measurement's bound."""
    clean = _figures(_run(tmp_path, "clean", KILL))
    skewed = _figures(_clock(_skew(_run(tmp_path, "skewed", KILL), BEHIND), BEHIND))
    assert clean[0] and skewed[0]
    for got, want in zip(skewed[1:], clean[1:], strict=True):
        assert got is not None and want is not None and abs(got - want) <= 0.003, (skewed, clean)


def test_a_failover_over_its_slo_is_not_passed_by_a_slow_node_clock(tmp_path: Path) -> None:
    """HOLE. A failover whose last failed hop came 72 ms past maxFailoverS, on nodes 300 ms behind the runner, had
    that hop 228 ms within it: the verdict PASSED fallback. Corrected by the measured offset, it fails as on one
    clock."""
    assert not verify(_run(tmp_path, "clean", SLOW)).passed  # the truth, on one clock
    v = verify(_clock(_skew(_run(tmp_path, "skewed", SLOW), BEHIND), BEHIND))
    assert not v.passed and "fallback" in failed(v), why(v)
    assert v.faults[0].failover_s is not None and v.faults[0].failover_s > T.slo.max_failover_s


def test_requests_from_in_zone_workers_are_put_back_on_the_runners_clock(tmp_path: Path) -> None:
    """HOLE. With `--workers-in-zone` the users' requests are stamped by locust workers in each entry zone's
    pods, on their nodes' clocks, like the hops, while the faults are the runner's: with the nodes 300 ms
    behind, every request looked 300 ms earlier against the kill (availability's windows, coverage's, the
    requests tied to hops). The clock record says so (`requests_clock: zones`) and the requests are corrected
    by their zone's offset: the verdict's figures and request counts are those of the run on one clock."""
    clean_dir = _run(tmp_path, "clean", KILL)
    clean = verify(clean_dir)
    d = _run(tmp_path, "skewed", KILL)
    v = verify(_clock(_skew_requests(_skew(d, BEHIND), BEHIND), BEHIND, requests_in_zones=True))
    assert clean.passed and v.passed, why(v)
    f, g = v.faults[0], clean.faults[0]
    assert abs(f.failover_s - g.failover_s) <= 0.003 and abs(f.recovery_s - g.recovery_s) <= 0.003  # type: ignore[operator]
    windows = lambda x: [(w.requests, w.failed) for i in x.invariants if i.name == "availability" for w in i.windows]  # noqa: E731
    assert windows(v) == windows(clean)
    assert any(
        n.startswith("clock: the nodes keep their own clocks (test): hop and user request times") for n in v.run.notes
    )


@pytest.mark.parametrize("case", ["no-probe-found", "no-end-batch", "too-wide", "zone-missing", "contradicting"])
def test_an_offset_that_is_not_bounded_is_unverified(tmp_path: Path, case: str) -> None:
    """The run says its nodes keep their own clocks, and a zone's offset is not known well enough:
    no probe found in its sidecars' logs, none at the end (drift unbounded), a round trip so slow the bound is
    wider than the rules carry (CLOCK_CARRY_LIMIT_S, the inventory's IP slack: a bound wider than
    CLOCK_TOLERANCE_S but within it is carried, tests/test_farrunner_t50e.py), no probe of that zone at all, or
    probes that contradict each other (its nodes disagree). Its hops cannot be set against the faults: coverage
    fails it as unverified."""
    d = _skew(_run(tmp_path, "run", KILL), BEHIND)
    if case == "no-probe-found":
        _clock(d, BEHIND, skip=(("us-west-2-lax-1a", "start"), ("us-west-2-lax-1a", "end")))
    elif case == "no-end-batch":
        _clock(d, BEHIND, skip=(("us-west-2-lax-1a", "end"),))
    elif case == "too-wide":
        _clock(d, BEHIND, lax_rtt_s=2.2 * CLOCK_CARRY_LIMIT_S)
    elif case == "zone-missing":
        _clock(d, BEHIND, zones=[z.name for z in T.zones if z.name != LAX])
    else:
        _clock(d, BEHIND)
        recs = rows(d / "clock.jsonl")
        first = next(r for r in recs if r["event"] == "logged" and r["zone"] == LAX and r["batch"] == "start")
        first["logged"] += 0.5  # one of LAX's nodes half a second off the others
        write_rows(d / "clock.jsonl", recs)
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    text = " ".join(why(v))
    assert "coverage: clock: us-west-2-lax-1a" in text and "unverified" in text, text
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    unverified = [c.subject for c in cov.checks if c.subject.startswith("clock ") and c.status != "pass"]
    assert unverified == [f"clock {LAX}"], unverified


def test_control_one_clock_needs_no_measurement(tmp_path: Path) -> None:
    """A run without clock.jsonl (local, kind: runner and nodes share one kernel clock) is judged as ever: no
    clock check, no correction, no note."""
    d = _run(tmp_path, "run", KILL)
    v = verify(d)
    assert v.passed, why(v)
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    assert not [c for c in cov.checks if c.subject.startswith("clock ")]
    assert not [n for n in v.run.notes if n.startswith("clock:")]


def test_control_a_measured_offset_passes_with_its_bound_stated(tmp_path: Path) -> None:
    """Every zone measured within the tolerance: a pass per zone in coverage, and the notes say by how much
    the hops were corrected and what bound the figures carry."""
    v = verify(_clock(_skew(_run(tmp_path, "run", KILL), BEHIND), BEHIND))
    assert v.passed, why(v)
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    clocks = {c.subject: c for c in cov.checks if c.subject.startswith("clock ")}
    assert set(clocks) == {f"clock {z.name}" for z in T.zones} and all(c.status == "pass" for c in clocks.values())
    assert abs(clocks[f"clock {LAX}"].detail["offset_s"] - BEHIND) < 0.003
    notes = [n for n in v.run.notes if n.startswith("clock:")]
    assert "failover and recovery times carry up to ±" in notes[0], notes
    assert any(re.match(rf"clock: {LAX}: nodes -(29|30)\d\.\d ms ± \d\.\d ms from the runner", n) for n in notes), notes


def test_the_offset_interval_is_the_hull_of_the_batches_intersections() -> None:
    """The arithmetic on its own: each probe bounds offset to [L - received, L + 1 ms - sent]; a batch's
    probes intersect; start and end batches are joined (drift); the middle corrects, half the width bounds."""
    recs: list[dict[str, Any]] = [{"event": "clock", "runner_clock": "separate"}]
    # start: two probes, offset in [0.100 - 0.010, 0.101 - 0.000] ∩ [0.104 - 0.012, 0.105 - 0.004] = [0.092, 0.101]
    # end: one probe 1 ms later in drift: [0.1015 - 0.004 ... ] (sent 100, received 100.004, logged 100.1035)
    for probe, batch, t0, t1, at in (("a", "start", 0.0, 0.010, 0.100), ("b", "start", 0.004, 0.012, 0.104),
                                     ("c", "end", 100.0, 100.004, 100.1035)):  # fmt: skip
        recs.append({"event": "sent", "probe": probe, "batch": batch, "zone": LAX, "sent": t0, "received": t1})
        recs.append({"event": "logged", "probe": probe, "batch": batch, "zone": LAX, "node": "n1", "logged": at})
    zc = evaluate(recs).zone(LAX)  # type: ignore[union-attr]
    assert zc.lo == pytest.approx(0.092) and zc.hi == pytest.approx(0.1045)
    assert zc.offset == pytest.approx(0.09825) and zc.uncertainty == pytest.approx(0.00625) and zc.bounded
    # a line's duration (start to last byte out, on the node) is time the answer had not left yet: probe a
    # logged with 5 ms of it raises its lower bound to 0.100 + 0.005 - 0.010 = 0.095
    recs[2]["duration_ms"] = 5
    assert evaluate(recs).zone(LAX).lo == pytest.approx(0.095)  # type: ignore[union-attr]
    assert evaluate([]) is None  # nothing recorded: one clock, nothing to measure
    # the declaration's line torn: the probes' records still say the nodes keep their own clocks
    whole = evaluate(recs).zone(LAX).offset  # type: ignore[union-attr]
    assert evaluate(recs[1:], corrupt_lines=[1]).zone(LAX).offset == pytest.approx(whole)  # type: ignore[union-attr]
    assert json.dumps(zc.text())  # printable


def _say_clocks(d: Path, runner_clock: str) -> Path:
    """run.json's `runner_clock` as run_e2e writes it from the backend (existing/EKS: separate; local, kind: shared)."""
    state = json.loads((d / "run.json").read_text(encoding="utf-8"))
    (d / "run.json").write_text(json.dumps({**state, "runner_clock": runner_clock}) + "\n", encoding="utf-8")
    return d


def _lose_clock(d: Path, how: str) -> Path:
    """clock.jsonl lost (not copied with the run, never written) or left empty (cut before its first line)."""
    if how == "deleted":
        (d / "clock.jsonl").unlink()
    else:
        (d / "clock.jsonl").write_text("", encoding="utf-8")
    for stale in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / stale).unlink(missing_ok=True)
    return d


def test_control_an_eks_run_that_says_its_clocks_passes_with_its_record(tmp_path: Path) -> None:
    """The EKS-like run (nodes 300 ms behind, measured) with run.json saying so passes, as without the field."""
    v = verify(_say_clocks(_clock(_skew(_run(tmp_path, "run", KILL), BEHIND), BEHIND), "separate"))
    assert v.passed, why(v)
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    assert {c.subject for c in cov.checks if c.subject.startswith("clock")} == {f"clock {z.name}" for z in T.zones}


@pytest.mark.parametrize(("said", "how"), [("separate", "deleted"), ("separate", "empty"), ("own", "deleted")])
def test_a_lost_clock_record_of_an_eks_run_is_unverified(tmp_path: Path, said: str, how: str) -> None:
    """HOLE (audit 9). The same run with clock.jsonl lost: nothing said its nodes keep their own clocks, so the
    verifier took one clock, judged its hops 300 ms early against the kill (failover 0.32 s read as 0.02 s) and
    PASSED. run.json's `runner_clock` says it now: coverage fails with one message naming the lost record, not
    one per zone (no zone's probes are to blame). A value this verifier does not know is not one clock either."""
    d = _lose_clock(_say_clocks(_clock(_skew(_run(tmp_path, "run", KILL), BEHIND), BEHIND), said), how)
    v = verify(d)
    assert not v.passed and COVERAGE in failed(v), why(v)
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    clocks = [c for c in cov.checks if c.subject.startswith("clock")]
    assert [(c.subject, c.status) for c in clocks] == [("clock", "unverified")], clocks
    assert "clock.jsonl is missing or records nothing" in clocks[0].message and repr(said) in clocks[0].message
    assert cov.message.count("clock.jsonl") == 1, cov.message


@pytest.mark.parametrize("said", ["shared", None])
def test_control_a_run_on_one_clock_without_clock_record_passes(tmp_path: Path, said: str | None) -> None:
    """Local and kind (run.json: shared) and runs from before the field (none) have no clock.jsonl and pass
    as ever: no clock check, no note."""
    d = _run(tmp_path, "run", KILL)
    if said is not None:
        _say_clocks(d, said)
    v = verify(d)
    assert v.passed, why(v)
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    assert not [c for c in cov.checks if c.subject.startswith("clock")]
    assert not [n for n in v.run.notes if n.startswith("clock:")]
