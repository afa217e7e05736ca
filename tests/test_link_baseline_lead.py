"""A link's first degradation waits for its settled baseline (`harness.chaos.actions._settled_baseline`).

The verdict judges a degraded link against the zone's hops that wait on it from the run's settled instant on
(harness.contract.settled), outside the faults that reach the link. e2e's warm-up waited for those hops before the
first fault of any kind, for the plan's first such degradation; the degradation asks for them itself now, so the
faults before it carry them and no run waits for them up front. These tests drive the wait with a fake clock
(`Schedule`): whether it ends, and when, is the schedule's, not the machine's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from harness.chaos import actions
from harness.contract import requestwatch as watch
from harness.contract.requestwatch import ANSWER_ORDER_SLACK_S, RequestWatch, answered_before
from harness.contract.rundir import CHAOS_FILE, PROBE_BUDGET_FILE, REQUESTS_FILE
from harness.contract.settled import BASELINE_STALL_S, LINK_BASELINE_HOPS, SWITCH_S
from tests.test_chaos import LAX, FakeBackend, fake  # noqa: F401  (the fixture)
from tests.test_e2e_waits import Schedule

LAS = "us-west-2-las-1a"
REGION_AZ = "us-west-2a"
SETTLED = 100.0 + SWITCH_S  # the budget's last window ends at 100 (below)


def _req(ts: float, zone: str, endpoint: str = "coffees", ok: bool = True) -> str:
    return json.dumps({"ts": ts, "zone": zone, "endpoint": endpoint, "ok": ok, "latency_ms": 40.0}) + "\n"


def _run(run_dir: Path, decided: bool = True) -> Path:
    """A run directory whose probe budget decided (its last window ending at 100) or is still measuring, and whose
    warm-up served LAX 20 requests through /api before that, and its page after it (nginx: no hop on the link)."""
    windows = [{"start": 99.0, "end": 100.0, "scale": 1.0, "busy": 0.5, "requests_per_s": 50.0, "probes_per_s": 10.0}]
    budget = {"scale": 1.0, "reason": "within" if decided else "measuring", "windows": windows}
    (run_dir / PROBE_BUDGET_FILE).write_text(json.dumps(budget))
    path = run_dir / REQUESTS_FILE
    path.write_text("".join(_req(1.0 + i / 10, LAX) for i in range(20)) + _req(101.0, LAX, "shop") * 10)
    return path


def _scheduled(monkeypatch: pytest.MonkeyPatch, sched: Schedule) -> list[RequestWatch]:
    """The action's watch, on the schedule's clock (its own `poll`s and the stall bound are then the schedule's)."""
    made: list[RequestWatch] = []

    class OnSchedule(RequestWatch):
        def __init__(self, path: Path, zones: list[str], start: int = 0, **_: Any) -> None:
            super().__init__(path, zones, clock=sched.clock, sleep=sched.sleep, start=start)
            made.append(self)

    monkeypatch.setattr(watch, "RequestWatch", OnSchedule)
    return made


def _settled(at: float, n: int = LINK_BASELINE_HOPS, zone: str = LAX) -> tuple[float, str]:
    """`n` probe requests through LAX's /api that began after the run settled, on file at `at` on the clock."""
    return at, "".join(_req(SETTLED + 1 + i / 10, zone, "probe") for i in range(n))


def test_the_first_degradation_waits_for_requests_through_api_since_the_run_settled(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The warm-up's 20 (before the decision), the page after it and another zone's requests do not count."""
    path = _run(tmp_path)
    sched = Schedule(path, [(0.2, _req(SETTLED + 0.5, LAS, "probe") * 9), _settled(0.7)])
    _scheduled(monkeypatch, sched)
    actions.degrade_link(LAX, 50, duration_s=0.0)
    assert sched.clock.now == pytest.approx(0.7)  # until they were on file, not its bound
    inject = json.loads((tmp_path / CHAOS_FILE).read_text().splitlines()[0])
    assert inject["phase"] == "inject" and inject["zone"] == LAX
    assert [c[0] for c in fake.calls] == ["set_link", "clear_link"]  # the link degraded after the wait


@pytest.mark.parametrize(("zone", "waits"), [(LAX, False), (REGION_AZ, False), (LAS, True)])
def test_after_a_fault_that_reached_the_link_its_baseline_lies_between_the_two(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    zone: str,
    waits: bool,
) -> None:
    """An earlier fault of the zone or of the Region reached the link: the verdict reads the baseline after it, and
    nothing is waited for (as e2e never did). One of another Local Zone did not (hub-and-spoke): still waited for."""
    path = _run(tmp_path)
    (tmp_path / CHAOS_FILE).write_text(json.dumps({"ts": 110.0, "fault": "f", "phase": "inject", "zone": zone}) + "\n")
    sched = Schedule(path, [_settled(0.5)])
    _scheduled(monkeypatch, sched)
    actions._settled_baseline(fake, LAX)  # type: ignore[arg-type]
    assert sched.clock.now == pytest.approx(0.5 if waits else 0.0)


@pytest.mark.parametrize("why", ["no run directory", "budget still measuring", "no budget"])
def test_without_a_settled_instant_nothing_is_waited_for(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    why: str,
) -> None:
    """No settled instant on record (locust in the zones' pods reads no budget; a game day's chaos begun before
    the budget's line): the verdict reads the baseline from the whole stretch, and the action does not wait."""
    path = _run(tmp_path, decided=why != "budget still measuring")
    if why == "no run directory":
        monkeypatch.delenv("EH_RUN_DIR")
    if why == "no budget":
        (tmp_path / PROBE_BUDGET_FILE).unlink()
    sched = Schedule(path, [_settled(0.5)])
    made = _scheduled(monkeypatch, sched)
    actions._settled_baseline(fake, LAX)  # type: ignore[arg-type]
    assert sched.clock.now == 0.0 and made == []


def test_a_zone_that_gains_no_request_is_degraded_after_the_stall_bound_and_said(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A zone served slowly is waited for however slowly (each request that brings it closer restarts the bound);
    one that gains nothing for BASELINE_STALL_S is degraded anyway, with a line saying what it had."""
    path = _run(tmp_path)
    slow = [(2.0 * (i + 1), _req(SETTLED + 1 + i, LAX, "probe")) for i in range(LINK_BASELINE_HOPS - 1)]
    sched = Schedule(path, slow)
    _scheduled(monkeypatch, sched)
    with caplog.at_level(logging.WARNING, logger="chaostoolkit"):
        actions.degrade_link(LAX, 50, duration_s=0.0)
    last_gain = 2.0 * (LINK_BASELINE_HOPS - 1)
    assert sched.clock.now == pytest.approx(last_gain + BASELINE_STALL_S, abs=0.11)
    assert f"{LINK_BASELINE_HOPS - 1} of {LINK_BASELINE_HOPS} requests through /api" in caplog.text
    assert [c[0] for c in fake.calls] == ["set_link", "clear_link"]


def test_the_watch_starts_near_the_end_of_a_long_requests_file_and_counts_the_same(tmp_path: Path) -> None:
    """A game day's requests.jsonl grows to gigabytes: the watch starts at a line answered well before the settled
    instant (a binary search), not at the file's start, and counts what a watch from the start counts."""
    path = tmp_path / REQUESTS_FILE
    early = "".join(_req(float(i) / 100, LAX) for i in range(40_000))  # 400 s of requests, ~3 MB
    late = "".join(_req(1000.0 + i, LAX, "probe") for i in range(7)) + _req(1000.5, LAX, "probe", ok=False)
    path.write_text(early + late)
    start = answered_before(path, 1000.0)
    assert 0 < start < len(early)
    with path.open("rb") as fh:
        fh.seek(start - 1)
        assert fh.read(1) == b"\n"  # a line's start
        first = json.loads(fh.readline())
    assert first["ts"] < 1000.0 - ANSWER_ORDER_SLACK_S + 1  # nothing from the settled instant on is skipped
    assert path.stat().st_size - start < 0.3 * path.stat().st_size
    assert RequestWatch(path, [LAX], start=start).served(1000.0) == RequestWatch(path, [LAX]).served(1000.0) == {LAX: 7}
    assert answered_before(path, 5.0) == 0  # nothing answered early enough: from the start
    assert answered_before(tmp_path / "absent.jsonl", 5.0) == 0
