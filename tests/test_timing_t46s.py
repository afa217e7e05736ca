"""Correct meshes failed (or broken ones passed) by timing: bounds that depended on when a read landed or on the
machine's speed, each next to its control (task t46s)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from harness.contract.rundir import USERS_FILE
from harness.contract.users import WAIT_ENV, parse_wait
from harness.e2e import COOL_REQUESTS, E2EOptions, check_inputs, cool_down
from harness.errors import InputError
from harness.preflight import run_preflight
from harness.testing import ManualClock
from harness.traffic import TrafficRunner
from harness.traffic.runner import DEFAULT_LOCUSTFILE
from harness.verify import COVERAGE
from harness.verify.synth import Scenario, write_run
from tests.test_e2e_waits import Schedule, _req
from tests.test_input95_cli import _cli, _one_line, _tree, kubeconfig
from tests.test_preflight import _failed, frontend_may_call_product_api, rendered, setup
from tests.test_timing_t45f import _clocked, _Pushed
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import KILL, LAS, LAX, T, failed
from tests.verdicts import rebuilt, rows, verify, write_rows

__all__ = ["kubeconfig", "rendered", "setup"]  # the fixtures test_preflight and test_input95_cli define, used here

COUNTED = "sent requests by their own counters but have no access-log line"
TWO_PUBLIC_APIS = _with_replicas("public-api", 2)


# -- 2. an HTTP request in flight when the counters are read owes no line yet -----------------------------------------
def _idle_public_api(tmp_path: Path) -> tuple[Path, str]:
    """Two public-api replicas in LAX; every call frontend made went to the first (the second's IP rewritten in
    frontend's lines), so the second served nothing and has no access-log line of its own."""
    d = write_run(tmp_path / "run", Scenario(TWO_PUBLIC_APIS, duration_s=60, rate_per_zone=4))
    inv = rows(d / "inventory.jsonl")
    first, idle = (e for e in inv if e["event"] == "added" and e["zone"] == LAX and e["service"] == "public-api")
    # every line of it becomes the first's: frontend's calls to it, and its own calls to product-api for them
    for log in (d / "accesslogs").glob("*.jsonl"):
        text = log.read_text().replace(f'"{idle["ip"]}:', f'"{first["ip"]}:').replace(idle["pod"], first["pod"])
        log.write_text(text)
    mine = d / "accesslogs" / f"{idle['pod']}.jsonl"
    if mine.exists():
        own = d / "accesslogs" / f"{first['pod']}.jsonl"
        write_rows(own, sorted(rows(own) + rows(mine), key=lambda r: str(r.get("start_time", ""))))
        mine.unlink()
    return rebuilt(d), str(idle["pod"])


def _in_flight_at_end(d: Path, pod: str, total: int, active: int) -> None:
    """`pod`'s counters: nothing until the 'end' read, which counts `total` requests to one product-api host, of
    which `active` were still in flight (Envoy's rq_active gauge: counted in rq_total, not yet logged)."""
    stats = rows(d / "upstream-stats.jsonl")
    mine = [s for s in stats if s["pod"] == pod]
    assert mine and {s["label"] for s in mine} >= {"start", "end"}, mine
    target = next(s for s in mine if s["label"] == "end" and s["host"].endswith(":9090"))
    for s in mine:
        for k in ("cx_total", "cx_connect_fail", "rq_total", "rq_error", "rq_timeout", "cx_active", "rq_active"):
            s[k] = 0
    target.update(cx_total=1, rq_total=total, cx_active=1 if active else 0, rq_active=active)
    write_rows(d / "upstream-stats.jsonl", stats)


def test_http_requests_in_flight_at_the_read_owe_no_line(tmp_path: Path) -> None:
    """FINDING. A public-api replica whose first two calls to product-api were under way when its sidecar's
    counters were read (rq_total 2, rq_active 2): Envoy writes an HTTP access-log line when the stream completes
    (a request still in flight has been counted and not logged), so the pod has no line yet in a correct mesh.
    `_counted_without_lines` excused the open requests of TCP clusters only: "sent requests by their own
    counters but have no access-log line", unverified, as the read happened to land mid-request."""
    d, pod = _idle_public_api(tmp_path)
    _in_flight_at_end(d, pod, total=2, active=2)
    v = verify(d)
    assert not [m for m in why(v) if COUNTED in m], why(v)
    assert v.passed, why(v)


def test_an_http_request_completed_before_the_read_still_owes_its_line(tmp_path: Path) -> None:
    """The control: exactly the in-flight count is excused, no more. Of three counted requests two were in flight
    at the read and one had ended, and the pod has no line for it: unverified, naming the pod."""
    d, pod = _idle_public_api(tmp_path)
    _in_flight_at_end(d, pod, total=3, active=2)
    v = verify(d)
    assert COVERAGE in failed(v), why(v)
    text = next(m for m in why(v) if COUNTED in m)
    assert pod in text and "(1 requests)" in text, text


def test_an_idle_replica_with_no_counters_passes(tmp_path: Path) -> None:
    """The baseline of the two above: the same run with the replica's counters all zero passes."""
    d, pod = _idle_public_api(tmp_path)
    _in_flight_at_end(d, pod, total=0, active=0)
    v = verify(d)
    assert v.passed, why(v)


# -- 3. preflight: one deadline for "has the control plane settled?" --------------------------------------------------
def _never_settles(setup: Any) -> Any:
    """A cluster that never settles in any of the three ways: a CRD never synced, an instance never passing, an
    undeclared call the sidecar never refuses (its intention allows it)."""
    b = setup(frontend_may_call_product_api)
    b.view.unready.add(next(i.pod for i in b.view.instances() if i.service == "public-api-lax-1a"))
    b.synced["product-api-lax-1a"] = False
    return b


def _messages(res: Any) -> dict[str, list[tuple[str, str]]]:
    return {k: sorted((c.subject, c.message) for c in v) for k, v in _failed(res).items()}


def test_a_cluster_that_never_settles_is_told_so_after_one_bound_not_three(setup: Any) -> None:
    """FINDING. CRD sync, instance health and the refused probe each had their own `settle_s`, one after the
    other: a cluster that settled in none of them was failed after 3 x 30 s, one that failed one of them after
    30 s, so how long preflight took depended on which checks failed, not on one bound. They are one question
    (has the control plane settled?), now asked against one deadline; each failure keeps its exact message
    (the same as judged at once)."""
    clock, slept, sleep = _clocked()
    res = run_preflight(_never_settles(setup), settle_s=30.0, sleep=sleep, clock=clock)
    assert clock.now == 30.0 and slept == [1.0] * 30, (clock.now, slept)
    at_once = run_preflight(_never_settles(setup), settle_s=0.0, sleep=sleep, clock=ManualClock(0.0))
    assert set(_messages(res)) >= {"crd-synced", "instances-passing", "refused-probe"}
    assert _messages(res) == _messages(at_once)


def test_a_cluster_that_settles_in_stages_within_the_bound_passes(setup: Any) -> None:
    """Control: CRDs synced at 10 s, the instance passing at 20 s, the sidecars refusing from the sixth probe
    look on (25 s): all within the one 30 s deadline, preflight passes, done when the last one settled."""
    b = setup()
    pod = next(i.pod for i in b.view.instances() if i.service == "public-api-lax-1a")
    b.view.unready.add(pod)
    b.synced["product-api-lax-1a"] = False
    _Pushed(b, late=5)

    def settling(now: float) -> None:
        if now >= 10.0:
            b.synced["product-api-lax-1a"] = True
        if now >= 20.0:
            b.view.unready.discard(pod)

    clock, _slept, sleep = _clocked(settling)
    res = run_preflight(b, settle_s=30.0, sleep=sleep, clock=clock)
    assert res.ok, [(c.check, c.subject, c.message) for c in res.failures]
    assert clock.now == 25.0, clock.now


# -- 1. a zone's quiet spells bounded by what its users were configured with -----------------------------------------
def _quiet_las(tmp_path: Path, name: str, wait: tuple[float, float] | None, quiet: tuple[float, float]) -> Any:
    """The reference run (LAX's product-api killed 30-50 s) with LAS's users between two requests for `quiet`,
    recorded with the users' think time `wait` (users.json; None: not recorded)."""
    sc = Scenario(T, duration_s=120, rate_per_zone=4, faults=[KILL], silent=[(LAS, *quiet)], users_wait=wait)
    return verify(write_run(tmp_path / name, sc))


def test_users_thinking_up_to_30s_may_leave_a_zone_quiet_for_28s(tmp_path: Path) -> None:
    """FINDING. Users configured to think 20-30 s between requests (EH_WAIT=20,30: a shop browsed, not a load
    test); LAS's users were all between two requests from 40 s to 68 s, as such users are. `_users_gaps` failed
    every quiet spell over a fixed 20 s (USERS_GAP_S, which assumed think times far below it) as "no user request
    entering it in flight ... unverified": the verdict hung on how long the users were set to think, which the
    run did not record. The runner now records it (users.json) and the bound is the longest think time plus a
    request's timeouts (43 s here)."""
    v = _quiet_las(tmp_path, "slow", (20.0, 30.0), (40.0, 68.0))
    assert v.passed, why(v)


def test_fast_users_still_catch_a_zone_that_went_quiet(tmp_path: Path) -> None:
    """Control: the same 28 s quiet spell with users thinking 0.1-0.5 s (the default, recorded) or with no record
    (an older run) is users gone, not slow ones: unverified at the 20 s bound, as before."""
    for name, wait in (("fast", (0.1, 0.5)), ("unrecorded", None)):
        v = _quiet_las(tmp_path, name, wait, (40.0, 68.0))
        assert failed(v) == {COVERAGE}, (name, why(v))
        text = v.invariant(COVERAGE).message
        assert f"coverage: {LAS}: no user request entering it in flight from " in text, text
        assert "(28s, longer than 20s)" in text, text


def test_slow_users_gone_for_longer_than_their_think_time_are_unverified(tmp_path: Path) -> None:
    """Control: with users thinking up to 30 s, LAS quiet from 20 s to 80 s (60 s: longer than any think time and
    a request's timeouts) is users gone: unverified, naming the bound and where it came from."""
    v = _quiet_las(tmp_path, "gone", (20.0, 30.0), (20.0, 80.0))
    assert failed(v) == {COVERAGE}, why(v)
    text = v.invariant(COVERAGE).message
    assert "(60s, longer than 43s: the users' longest think time 30s (EH_WAIT, users.json)" in text, text


def test_the_runner_records_the_users_think_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """users.json says what the locustfile was given: EH_WAIT, else its default; a bad value is refused with one
    line naming the variable, before locust is started (no records, no process)."""
    monkeypatch.setenv(WAIT_ENV, "20,30")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r = TrafficRunner({LAX: "http://127.0.0.1:9"}, tmp_path / "a", users=1, spawn_rate=1, duration_s=1)
    r._write_users_file()
    doc = json.loads((tmp_path / "a" / USERS_FILE).read_text())
    assert doc["wait_s"] == [20.0, 30.0] and doc["wait_env"] == "20,30", doc
    monkeypatch.delenv(WAIT_ENV)
    r = TrafficRunner({LAX: "http://127.0.0.1:9"}, tmp_path / "b", users=1, spawn_rate=1, duration_s=1)
    r._write_users_file()
    assert json.loads((tmp_path / "b" / USERS_FILE).read_text())["wait_s"] == [0.1, 0.5]
    with pytest.raises(InputError) as bad:
        TrafficRunner({LAX: "http://127.0.0.1:9"}, tmp_path / "c", users=1, spawn_rate=1, duration_s=1,
                      extra_env={WAIT_ENV: "0.5,0.1"})  # fmt: skip
    assert bad.value.line.startswith(f"{WAIT_ENV}: expected 'SECONDS' or 'MIN,MAX'"), bad.value.line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("raw", ["0.1,0.5", "2", " 0 ", "1,1", "0.5,0.1", "-1", "x", "1,2,3", "", "1,"])
def test_the_locustfile_reads_eh_wait_as_the_harness_records_it(raw: str) -> None:
    """The locustfile runs where the harness may not be installed and parses EH_WAIT itself: the same rule (its
    function read from the file, not imported: importing locust would monkey-patch this process with gevent)."""
    source = DEFAULT_LOCUSTFILE.read_text()
    rule = source[source.index("def wait_bounds(") : source.index("\n\n\ndef _wait_time(")]
    scope: dict[str, Any] = {}
    exec(compile("from __future__ import annotations\n" + rule, str(DEFAULT_LOCUSTFILE), "exec"), scope)
    try:
        expected: Any = parse_wait(raw)
    except ValueError:
        expected = ValueError
    try:
        got: Any = scope["wait_bounds"](raw)
    except ValueError:
        got = ValueError
    assert got == expected


# -- 4. e2e's cool-down: users that think slowly are waited for until coverage has them ---------------------------
RESTORE = 1000.0  # the last restore, on the requests' clock


def _shoppers(sched: Schedule, zone: str, at: list[float]) -> None:
    """`zone`'s shoppers' requests that began `at` seconds after the restore, each on file when it began."""
    sched.writes += [(t, _req(RESTORE + t, zone)) for t in at]
    sched.writes.sort(key=lambda w: w[0])


def test_the_cool_down_waits_for_a_slow_thinking_zones_next_user(tmp_path: Path) -> None:
    """FINDING. Users thinking 20-30 s (EH_WAIT=20,30); after the last restore zone a's users are served at once,
    zone b's one user starts its next request 19 s later. The cool-down waited a fixed `cooldown_s` (8 s) for
    shoppers and stopped the traffic: b had no shopper request after the restore, and the verdict's coverage
    failed the correct run ("no user requests entering b after the fault: recovery unverified"). Now it waits,
    past `cooldown_s`, until each zone had one, within the users' longest think time and a request's timeouts
    (43 s) of the restore."""
    sched = Schedule(tmp_path / "requests.jsonl")
    _shoppers(sched, "a", [0.1 * i for i in range(1, 40)])
    _shoppers(sched, "b", [19.0])
    w = sched.watch(["a", "b"])
    # HEAD's cool-down (one count with a fixed bound) gave up with b unserved
    assert w.wait(RESTORE, COOL_REQUESTS, 8.0, probes=False) is False
    assert w.served(RESTORE, probes=False)["b"] == 0
    sched2 = Schedule(tmp_path / "requests2.jsonl")
    _shoppers(sched2, "a", [0.1 * i for i in range(1, 40)])
    _shoppers(sched2, "b", [19.0])
    w2 = sched2.watch(["a", "b"])
    assert cool_down(w2, RESTORE, RESTORE, 8.0, 30.0) is True  # b's user was waited for
    assert w2.served(RESTORE, probes=False)["b"] == 1
    assert sched2.clock.now == pytest.approx(19.0)


def test_the_cool_down_of_fast_users_ends_at_the_count(tmp_path: Path) -> None:
    """Control: users at the default think time are served at once: no longer wait."""
    sched = Schedule(tmp_path / "requests.jsonl")
    for z in ("a", "b"):
        _shoppers(sched, z, [0.05 * i for i in range(1, 30)])
    assert cool_down(sched.watch(["a", "b"]), RESTORE, RESTORE, 8.0, 0.5) is True
    assert sched.clock.now == pytest.approx(0.1)  # at the first look after their first requests


def test_the_cool_down_asks_no_more_requests_than_the_verdict_reads(tmp_path: Path) -> None:
    """FINDING (e2e's length): the cool-down waited for 20 shoppers per zone after the last restore, a count no
    rule of the verdict reads (coverage's "after" window asks one; each pair's recovery is `wait_recoveries`'):
    in a default e2e it held the run ~1.4 s after its last experiment, whose own pause had carried 17 of LAX's.
    Here every zone was served since the restore when the cool-down begins (its users think 0.5 s): it ends at
    once, as the verdict has what it reads."""
    sched = Schedule(tmp_path / "requests.jsonl")
    for z in ("a", "b"):
        _shoppers(sched, z, [0.0, *(0.5 + 0.5 * i for i in range(1, 30))])
    sched.sleep(0.0)  # the requests since the restore are on file when the cool-down begins
    assert cool_down(sched.watch(["a", "b"]), RESTORE, RESTORE, 8.0, 0.5) is True
    assert sched.clock.now == pytest.approx(0.0)


def test_the_cool_down_of_a_zone_with_no_users_is_bounded(tmp_path: Path) -> None:
    """Control: a zone whose users are gone holds the cool-down only until the users' bound from the restore
    (30 s think time + 13 s timeouts), then the verdict decides (coverage: unverified); time already spent since
    the restore counts."""
    sched = Schedule(tmp_path / "requests.jsonl")
    _shoppers(sched, "a", [0.1 * i for i in range(1, 40)])
    assert cool_down(sched.watch(["a", "b"]), RESTORE, RESTORE + 3.0, 8.0, 30.0) is False
    assert sched.clock.now == pytest.approx(40.0, abs=0.11)


def test_e2e_refuses_a_bad_eh_wait_before_anything_is_created(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input, one line naming the variable, exit 2 (InputError), in e2e's input check: before the run
    directory and the cluster, not when the traffic starts on a cluster already up."""
    monkeypatch.setenv(WAIT_ENV, "slow")
    with pytest.raises(InputError) as bad:
        check_inputs(E2EOptions(), cast(Any, None), cast(Any, None))
    assert bad.value.line == f"{WAIT_ENV}: expected 'SECONDS' or 'MIN,MAX' (0 <= MIN <= MAX), got 'slow'"


def test_traffic_refuses_a_bad_eh_wait_in_one_line(tmp_path: Path, kubeconfig: Path) -> None:
    """The same for `harness traffic`: exit 2, one line naming EH_WAIT, no run directory (before, the runner
    would have been refused only after the run directory and its run.json were made)."""
    proc, cwd = _cli(tmp_path, "traffic", "--backend", "existing", "--context", "lab", "--kubeconfig",
                     str(kubeconfig), "--entrypoint", "us-west-2a=http://127.0.0.1:1", tools=("kubectl",),
                     env={WAIT_ENV: "0.5,0.1"})  # fmt: skip
    _one_line(proc, 2, f"{WAIT_ENV}: expected 'SECONDS' or 'MIN,MAX'")
    assert _tree(cwd) == []
