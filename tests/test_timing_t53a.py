"""Correct meshes failed or left unverified by timing, third pass (task t53a): each finding a synthetic run written
as a real mesh records it, next to its control (the broken twin still fails)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.chaos.experiment import SHIPPED_EXPERIMENTS, PlannedExperiment, plan_experiment
from harness.contract.users import users_quiet_bound
from harness.topology import load_topology
from harness.verify import COVERAGE
from harness.verify.rundata import find_topology
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import KILL, LAS, LAX, T0, T, failed
from tests.verdicts import envoy_start, rows, verify, write_rows


# -- 1. coverage's "after" window follows the users' think time, not maxRecoveryS alone ----------------------------
def _quiet_shoppers(tmp_path: Path, name: str, wait: tuple[float, float] | None, quiet: tuple[float, float]) -> Path:
    """The reference run (LAX's product-api killed 30-50 s, maxRecoveryS 60 s) whose LAX shoppers were all between
    two requests for `quiet` (users thinking up to `wait`, users.json; None: not recorded), while the zone's probes
    went on (their requests are the harness's own: endpoint `probe`, the hops they make carry the recovery)."""
    sc = Scenario(T, duration_s=150, rate_per_zone=4, faults=[KILL], users_wait=wait)
    d = write_run(tmp_path / name, sc)
    reqs = rows(d / "requests.jsonl")
    t0 = min(r["ts"] for r in reqs)
    for r in reqs:
        if r["zone"] == LAX and quiet[0] <= r["ts"] - t0 < quiet[1]:
            r["endpoint"], r["name"] = "probe", "GET /api probe"
    write_rows(d / "requests.jsonl", reqs)
    return d


SLOW = (55.0, 55.0)  # EH_WAIT=55: users_quiet_bound 68 s, past maxRecoveryS (60 s)


def test_users_thinking_past_max_recovery_are_seen_after_the_restore(tmp_path: Path) -> None:
    """FINDING. Users configured to think 55 s between requests (EH_WAIT=55, users.json); LAX's shoppers were all
    between two requests from 47 s to 113 s (66 s: within their quiet bound, 68 s), their next one 63 s after the
    restore at 50 s; the zone's probes went on and show the recovery. Coverage's "after" window ran maxRecoveryS
    (60 s) past the restore and no further: "no user requests entering ... after the fault: recovery unverified",
    though e2e's cool-down waits for that request (to the same quiet bound) and it is on record. Now the window
    runs to the users' quiet bound where that is longer than maxRecoveryS: passes."""
    assert users_quiet_bound(SLOW[1]) > 60.0 + 113.0 - 110.0
    v = verify(_quiet_shoppers(tmp_path, "slow", SLOW, (47.0, 113.0)))
    assert v.passed, why(v)


def test_control_fast_or_unrecorded_users_quiet_after_the_restore_are_unverified(tmp_path: Path) -> None:
    """Control: the same quiet spell with users thinking 0.1-0.5 s (recorded) or no record of their think time is
    users gone: the "after" window is maxRecoveryS, as before, and holds no shopper's request."""
    for name, wait in (("fast", (0.1, 0.5)), ("unrecorded", None)):
        v = verify(_quiet_shoppers(tmp_path, name, wait, (47.0, 113.0)))
        assert failed(v) == {COVERAGE}, (name, why(v))
        assert f"no user requests entering {LAX} after the fault" in v.invariant(COVERAGE).message, why(v)


def test_control_slow_users_gone_past_their_quiet_bound_are_unverified(tmp_path: Path) -> None:
    """Control: the slow users' shoppers quiet from 47 s to the end of the run (users gone), or to 121 s (74 s,
    past their 68 s bound: the request after it comes too late to be their next one): unverified."""
    for name, quiet in (("gone", (47.0, 1000.0)), ("late", (47.0, 121.0))):
        v = verify(_quiet_shoppers(tmp_path, name, SLOW, quiet))
        assert failed(v) == {COVERAGE}, (name, why(v))
        text = v.invariant(COVERAGE).message
        assert f"no user requests entering {LAX} after the fault" in text or "no user request entering it" in text, text


# -- 2. a link degraded right after a fault that reached it, before that fault's recovery left it a baseline ---------
SLOW_BACK = replace(KILL, restore=40, recovery_delay_s=5.0)  # LAX's product-api killed 30-40 s, back in LAX at 45 s
SETTLED_AT = 29.5  # the probe budget decided just before the kill (run settled 0.25 s later): e2e's first fault
BASE_AT = 43.5  # where the service-link experiment began on base: the kill's 3 s pause and a steady state after it


def _kill_only(tmp_path: Path, budget_end_s: float | None = SETTLED_AT, kill: FaultSpec = SLOW_BACK) -> Path:
    return write_run(tmp_path / "src", Scenario(T, duration_s=120, rate_per_zone=4, faults=[kill],
                                                budget_end_s=budget_end_s))  # fmt: skip


def _as_of(src: Path, dst: Path, now: float) -> Path:
    """`src` as its run directory stood `now` s into it: the lines logged by then (an access-log line and a
    request's record are written when the call ends), the chaos, inventory and counter records made by then."""
    at = T0 + now
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for name in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (dst / name).unlink(missing_ok=True)
    for log in (dst / "accesslogs").glob("*.jsonl"):
        write_rows(log, [r for r in rows(log) if envoy_start(r) + float(r.get("duration") or 0) / 1000 <= at])
    reqs = rows(dst / "requests.jsonl")
    write_rows(dst / "requests.jsonl", [r for r in reqs if r["ts"] + r["latency_ms"] / 1000 <= at])
    for name in ("chaos.jsonl", "inventory.jsonl", "upstream-stats.jsonl"):
        write_rows(dst / name, [r for r in rows(dst / name) if r["ts"] <= at])
    return dst


def _with_link(tmp_path: Path, name: str, at: float, inert: bool = False) -> Path:
    """The run whose LAX link is degraded by +100 ms for 8 s from `at` s (`inert`: recorded, never applied)."""
    slow = FaultSpec("slow-link-lax", "link-degraded", LAX, (), at, at + 8, latency_ms=100.0, link_inert=inert)
    sc = Scenario(T, duration_s=120, rate_per_zone=4, faults=[SLOW_BACK, slow], budget_end_s=SETTLED_AT)
    return write_run(tmp_path / name, sc)


def _service_link() -> PlannedExperiment:
    return plan_experiment(SHIPPED_EXPERIMENTS / "service-link.json", T)


def test_e2e_holds_a_degradation_until_its_baseline_after_a_slow_recovery_is_on_record(tmp_path: Path) -> None:
    """FINDING. e2e's first experiment (a kill of LAX's product-api) began as the run settled, and its recovery took
    5 s; the service-link experiment followed 3.5 s after the restore (the kill's 3 s pause, a steady state). Its
    degradation is judged against LAX's hops that wait on the link since the run settled outside the kill's window,
    which runs to the recovery the hops show: there were none, and the correct mesh was "not shown: nothing to
    measure the added 100 ms against" (unverified), while a machine that began the experiment later passed it.
    The action waits for a baseline only when it is the link's first fault (after one, it cannot see where that
    fault's window ends). Now e2e waits before such an experiment until the records show the kill's recovery and
    LINK_EFFECT_MIN_HOPS hops after it (`link_baseline_owed`), polling on its clock: from 43.5 s to 46.5 s here,
    said once."""
    from harness.e2e import degraded_first, wait_link_baseline  # base: neither exists

    src = _kill_only(tmp_path)
    t = load_topology(find_topology(src))
    view = tmp_path / "live"
    now = [BASE_AT]
    _as_of(src, view, now[0])

    def sleep(s: float) -> None:
        now[0] += s
        _as_of(src, view, now[0])

    said: list[str] = []
    wait_link_baseline(view, t, degraded_first(_service_link(), t), said.append, clock=lambda: T0 + now[0],
                       sleep=sleep)  # fmt: skip
    assert now[0] == pytest.approx(46.5), now[0]
    assert len(said) == 1 and f"{LAX}'s link baseline (after {SLOW_BACK.fault}: 0 hops)" in said[0], said
    # as the verdict reads the runs: begun at 43.5 s (as on base) unverified, at 46.5 s judged and passed
    base = verify(_with_link(tmp_path, "base", BASE_AT))
    assert failed(base) == {COVERAGE}, why(base)
    assert "nothing to measure the added 100 ms against" in base.invariant(COVERAGE).message, why(base)
    held = verify(_with_link(tmp_path, "held", now[0]))
    assert held.passed, why(held)


def test_control_a_degradation_held_so_that_never_reached_the_link_still_fails(tmp_path: Path) -> None:
    """Control: the same degradation begun where e2e now begins it, recorded but never applied (`link_inert`),
    is judged against the baseline the wait put on record: "did not take effect"."""
    v = verify(_with_link(tmp_path, "inert", 46.5, inert=True))
    assert failed(v) == {COVERAGE}, why(v)
    assert "did not take effect" in v.invariant(COVERAGE).message, why(v)


@pytest.mark.parametrize(
    ("why_not", "now"),
    [
        ("baseline before the kill", BASE_AT),  # settled at 20.25 s: 10 s of hops before the kill
        ("no settled instant", BASE_AT),  # the verdict reads the whole stretch (the action does not wait either)
        ("a kill still on", 35.0),  # the baseline is the stretch before it
        ("past maxRecoveryS", 40.0 + 60.0),  # a recovery not on record by then is the verdict's to fail
        ("a fault of another Local Zone", BASE_AT),  # hub-and-spoke: it never reaches LAX's link
    ],
)
def test_control_nothing_is_waited_for_where_the_baseline_is_there_or_no_wait_brings_it(
    tmp_path: Path, why_not: str, now: float
) -> None:
    """None of these asks a wait (`link_baseline_owed` None): a baseline on record, or none that waiting brings."""
    from harness.verify import link_baseline_owed  # base: absent

    kw: dict[str, Any] = {}
    if why_not == "baseline before the kill":
        kw["budget_end_s"] = 20.0
    if why_not == "no settled instant":
        kw["budget_end_s"] = None
    if why_not == "a fault of another Local Zone":
        kw["kill"] = replace(SLOW_BACK, fault="kill-product-api-las", zone=LAS)
    src = _kill_only(tmp_path, **kw)
    t = load_topology(find_topology(src))
    assert link_baseline_owed(_as_of(src, tmp_path / "live", now), t, LAX, T0 + now) is None


def test_only_a_degradation_before_any_other_fault_of_its_experiment_on_the_link_is_held(tmp_path: Path) -> None:
    """The service-link experiment degrades LAX's link first (then cuts it): held. One that kills LAX's product-api
    first, then degrades the link, has its degradation after a fault of its own that reached the link: that
    experiment's own steps decide, not e2e before it (nothing is held)."""
    from harness.e2e import degraded_first  # base: absent

    assert degraded_first(_service_link(), T) == [LAX]
    p = _service_link()
    kill = ("kill_pod", [LAX])
    assert degraded_first(replace(p, steps=[kill, *p.steps]), T) == []
    assert degraded_first(replace(p, steps=[("kill_pod", [LAS]), *p.steps]), T) == [LAX]


# -- 3. the cool-down read a link's baseline from the warm-up, where the verdict reads it from the settled run -------
def _busy_link(tmp_path: Path, lingers: bool = False) -> Path:
    """LAX's link degraded by +60 ms 40-48 s on a busy machine: every hop of LAX's public-api to product-api (each
    waits on the link: product-api queries postgres in the Region) takes 200 ms more, none under the latency before
    or after; 300 ms more in the cold warm-up (before the run settled at 20.25 s); 45 ms more in the catch-up for 8 s
    after the restore. `lingers`: a rollback that left the latency on."""
    from tests.test_verify_audit7 import _edit_log
    from tests.test_verify_soundness import pod_of

    fault = FaultSpec("slow-link-lax", "link-degraded", LAX, (), 40, 48, latency_ms=60.0, link_lingers=lingers)
    d = write_run(tmp_path / "src", Scenario(T, duration_s=120, rate_per_zone=4, faults=[fault], budget_end_s=20.0))

    def busy(r: dict[str, Any], t: float) -> dict[str, Any]:
        if "product-api" not in str(r.get("upstream_cluster")):
            return r
        extra = 200.0 + (300.0 if t < 20.25 else 0.0) + (45.0 if 48.0 <= t < 56.0 else 0.0)
        return dict(r, duration=r["duration"] + extra)

    assert _edit_log(d, str(pod_of(d, LAX, "public-api")["pod"]), busy) > 0
    return d


def test_the_cool_down_reads_a_links_baseline_from_the_settled_run_as_the_verdict_does(tmp_path: Path) -> None:
    """FINDING. The cool-down keeps the users on until a degraded link is shown back as the verdict reads it
    (`pending._links_not_back`): its hops after the restore at a median excess over their kind's baseline under
    the mark. The verdict reads that baseline from the run's settled instant on; the cool-down's view of the run
    (`rundata.live_run`) had no settled instant, so it read the cold warm-up too (300 ms slower here): every
    excess 300 ms smaller, it took the machine's catch-up after the restore (45 ms over the settled baseline,
    against a mark of 30) as back 2 s after it, and stopped the users there. The verdict on those records: "did
    not end at its restore" (a correct rollback failed), while the same run gone on passes. Now the live view
    reads the settled instant as the verdict does: the cool-down waits until 65 s, and the records there show it
    back."""
    from harness.verify import pending_recoveries

    src = _busy_link(tmp_path)
    t = load_topology(find_topology(src))
    left = pending_recoveries(_as_of(src, tmp_path / "at50", 50.0), t, T0 + 50.0)
    assert [str(p) for p in left] == [f"{LAX}'s link back (after slow-link-lax)"], left
    stopped = verify(_as_of(src, tmp_path / "stopped50", 50.0))  # the records where base stopped the users
    assert "did not end at its restore" in stopped.invariant(COVERAGE).message, why(stopped)
    now = 60.0
    while pending_recoveries(_as_of(src, tmp_path / "live", now), t, T0 + now):
        now += 1.0
    assert now == 65.0, now
    v = verify(_as_of(src, tmp_path / "stopped", now))
    assert COVERAGE not in failed(v), why(v)
    assert verify(src).passed


def test_control_a_rollback_that_left_the_latency_on_is_waited_for_and_fails(tmp_path: Path) -> None:
    """Control: the same busy machine with the latency left on after the restore: the cool-down waits for it until
    maxRecoveryS has passed (the verdict decides from then on), and the verdict fails it."""
    from harness.verify import pending_recoveries

    src = _busy_link(tmp_path, lingers=True)
    t = load_topology(find_topology(src))
    assert [p.link for p in pending_recoveries(_as_of(src, tmp_path / "live", 100.0), t, T0 + 100.0)] == [True]
    v = verify(src)
    assert failed(v) == {COVERAGE} and "did not end at its restore" in v.invariant(COVERAGE).message, why(v)
