"""e2e's warm-up and cool-down wait for served requests (harness.traffic.RequestWatch), not for a fixed time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.testing import ManualClock
from harness.traffic import RequestWatch


def _req(ts: float, zone: str, ok: bool = True) -> str:
    return json.dumps({"ts": ts, "zone": zone, "status": 200 if ok else 503, "ok": ok}) + "\n"


class Schedule:
    """A fake clock for a `RequestWatch` (its `clock` and `sleep`), and the records written as it passes: each
    `(at, text)` is appended to `path` once the clock has reached `at`. Whether a wait ends in time, or at its
    bound, is then this schedule's, not the machine's: writer threads that slept 0.2 s against a bound of
    0.5 s failed whenever a loaded runner held the thread longer."""

    def __init__(self, path: Path, writes: list[tuple[float, str]] | None = None) -> None:
        self.path = path
        self.clock = ManualClock(0.0)
        self.writes = sorted(writes or [], key=lambda w: w[0])
        self._write_due()

    def _write_due(self) -> None:
        due = [text for at, text in self.writes if at <= self.clock.now]
        self.writes = [(at, text) for at, text in self.writes if at > self.clock.now]
        if due:
            with self.path.open("a") as fh:
                fh.write("".join(due))

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._write_due()

    def watch(self, zones: list[str]) -> RequestWatch:
        return RequestWatch(self.path, zones, clock=self.clock, sleep=self.sleep)


def test_waits_until_every_zone_served_since_the_given_time(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    sched = Schedule(path)
    w = sched.watch(["a", "b"])
    assert w.wait(0.0, 1, 0.05) is False  # no file yet: waits its bound, then says so
    assert sched.clock.now == pytest.approx(0.1)  # one look, one pause, then the bound
    sched.writes = [(0.3, '{"ts": 2.0, "zo'), (0.5, 'ne": "b", "ok": true}\n' + "not json\n" + _req(3.0, "c"))]
    with path.open("a") as fh:
        fh.write(_req(1.0, "a") + _req(1.0, "b", ok=False))  # b failed; a line torn at 0.3, completed at 0.5
    assert w.wait(0.0, 1, 5.0) is True  # b's first success, completed across two reads
    assert sched.clock.now == pytest.approx(0.5)  # at the first look after it (not its bound's False)
    assert w.served(0.0) == {"a": 1, "b": 1}
    assert w.served(1.5) == {"a": 0, "b": 1}
    assert w.wait(5.0, 1, 0.05) is False  # nothing since t=5: bounded


def _fault(ts: object, fault: str, phase: str) -> str:
    return json.dumps({"ts": ts, "fault": fault, "phase": phase, "action": "kill_pod", "zone": "a"}) + "\n"


def test_the_cooldown_counts_from_the_last_restore_when_every_fault_was_restored(tmp_path: Path) -> None:
    """The last recovery is on record once every zone was served after the last restore: requests the last
    experiment carried after it count, so the cool-down does not wait for as many again. A fault left active, or
    none made, counts from the end of the experiments."""
    from harness.e2e import cooldown_since

    chaos = tmp_path / "chaos.jsonl"
    assert cooldown_since(tmp_path, 100.0) == 100.0  # no chaos.jsonl: no fault made
    lines = [(10.0, "f1", "inject"), (20.0, "f1", "restore"), (30.0, "f2", "inject"), (45.0, "f2", "restore"),
             (40.0, "f3", "inject"), (41.0, "f3", "restore")]  # fmt: skip
    chaos.write_text("".join(_fault(*line) for line in lines))
    assert cooldown_since(tmp_path, 100.0) == 45.0  # the latest restore, not the last line's
    assert cooldown_since(tmp_path, 44.0) == 44.0  # never after the end of the experiments
    with chaos.open("a") as fh:
        fh.write(_fault("late", "f4", "inject") + _fault(None, "f4", "restore"))  # no usable time: skipped
    assert cooldown_since(tmp_path, 100.0) == 45.0
    with chaos.open("a") as fh:
        fh.write(_fault(60.0, "f5", "inject"))  # left active by a failed experiment
    assert cooldown_since(tmp_path, 100.0) == 100.0


def test_a_wait_can_ask_each_zone_its_own_count(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(_req(float(i), "a") for i in range(3)) + _req(0.5, "b"))
    w = RequestWatch(path, ["a", "b"])
    assert w.wait(0.0, {"a": 3, "b": 1}, 0.05) is True
    assert w.wait(0.0, {"a": 3, "b": 2}, 0.05) is False  # b has one answer, not two
    assert w.wait(0.0, {"a": 3}, 0.05) is True  # a zone not named needs nothing
    assert w.wait(0.0, 2, 0.05) is False  # a count for every zone, as before


def test_the_warm_up_asks_20_answers_of_the_zones_a_fault_acts_on_and_of_all_with_a_region_fault() -> None:
    """A zone no fault acts on is only shown served before the chaos; a zone a fault acts on needs its "before".
    A fault in the Region (every Local Zone falls back there) makes every zone one a fault acts on."""
    from harness.chaos import plan_run
    from harness.chaos.experiment import SHIPPED_EXPERIMENTS as EXPERIMENTS_DIR
    from harness.e2e import SHOWN_SERVED, WARM_REQUESTS, warm_need
    from harness.topology.model import load_topology

    t = load_topology()
    zones = [z.name for z in t.zones]
    edge = plan_run([EXPERIMENTS_DIR / "node-kill.json"], t, None)
    need = warm_need(zones, edge, t)
    acted = set(edge[0].zones)
    assert acted and not acted & {z.name for z in t.region_zones}
    assert {z for z, n in need.items() if n == WARM_REQUESTS} == acted
    assert {z for z, n in need.items() if n == SHOWN_SERVED} == set(zones) - acted
    region = plan_run([EXPERIMENTS_DIR / "az-node-loss.json"], t, None)
    assert set(region[0].zones) & {z.name for z in t.region_zones}
    assert warm_need(zones, edge + region, t) == dict.fromkeys(zones, WARM_REQUESTS)
    assert warm_need(zones, [], t) == dict.fromkeys(zones, SHOWN_SERVED)  # no chaos: served is enough


def test_the_cool_down_counts_the_shoppers_not_the_zone_probes(tmp_path: Path) -> None:
    """The verdict's coverage asks for users (shoppers) entering each zone after the last restore, and leaves the
    zone probes out as availability does: a probed zone's 20 answers came from its probes in under a second, and
    the cool-down could stop before one of its shoppers was served. Asked without the probes, they do not count."""
    from harness.contract.users import PROBE_ENDPOINT

    path = tmp_path / "requests.jsonl"
    probes = "".join(
        json.dumps({"ts": 1.0 + i / 100, "zone": "a", "status": 200, "ok": True, "endpoint": PROBE_ENDPOINT}) + "\n"
        for i in range(20)
    )
    path.write_text(probes + _req(1.0, "b"))
    w = RequestWatch(path, ["a", "b"])
    assert w.wait(0.0, 1, 0.05) is True  # the warm-up's count: any answer
    assert w.wait(0.0, 1, 0.05, probes=False) is False  # the cool-down's: a's shoppers were not served yet
    assert w.served(0.0, probes=False) == {"a": 0, "b": 1}
    with path.open("a") as fh:
        fh.write(_req(2.0, "a"))
    assert w.wait(0.0, 1, 0.05, probes=False) is True


class _Decided:
    """A probe budget that decides at once, its last window ending at `end` (the requests' clock)."""

    def __init__(self, end: float) -> None:
        self.end = end

    def settle(self) -> object:
        from harness.traffic.budget import BudgetDecision, BudgetWindow

        window = BudgetWindow(self.end - 1.0, self.end, 1.0, 0.5, 50.0, 10.0)
        return BudgetDecision(1.0, 0.6, 2, {"a": 0.1}, "within", [window])


def _api(ts: float, zone: str, endpoint: str = "coffees") -> str:
    return json.dumps({"ts": ts, "zone": zone, "status": 200, "ok": True, "endpoint": endpoint}) + "\n"


def test_a_game_days_warm_up_waits_for_a_zone_served_slowly_and_gives_up_on_one_not_served(tmp_path: Path) -> None:
    """The bound (e2e's --warmup, `harness traffic`'s) is how long a zone still short gains nothing, not the
    warm-up's length. A zone served one request per 0.2 s, needing 2 s for its 10, is waited for past a 0.5 s bound, so
    the budget's line means the warm-up is complete however slowly the machine serves it (bounded by time, a
    busy CI runner said it with 19 of LAX's 20). A zone that gains nothing ends the wait after the bound, and
    the shortfall is said before the line."""
    from typing import cast

    from harness.e2e import warm_up
    from harness.traffic import ProbeBudget

    budget = cast(ProbeBudget, _Decided(0.0))

    def trickle(path: Path, n: int) -> Schedule:
        path.write_text("")
        return Schedule(path, [(0.2 * (i + 1), _api(1.0 + i, "a")) for i in range(n)])

    said: list[str] = []
    slow = trickle(tmp_path / "slow.jsonl", 10)
    warm_up(budget, slow.watch(["a"]), 0.5, said.append, need={"a": 10})
    assert slow.clock.now == pytest.approx(2.0)  # the tenth came at 2 s, past the bound: waited for
    assert slow.watch(["a"]).served(0.0)["a"] == 10 and not any("incomplete" in m for m in said), said
    dead = tmp_path / "dead.jsonl"
    dead.write_text(_api(1.0, "a"))
    said = []
    sched = Schedule(dead)
    warm_up(budget, sched.watch(["a"]), 0.5, said.append, need={"a": 10})
    # no request gained for the bound: given up once (the budget's wait and the warm-up's share one clock)
    assert sched.clock.now == pytest.approx(0.5)
    assert (
        said[0]
        == "warm-up: incomplete, a zone short of them gained none for 0.5 s (a 1 of 10 requests): "
        "the verdict says what that leaves unverified"
        and len(said) == 2
    ), said  # then the budget's line
