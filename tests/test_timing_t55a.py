"""t55a: correct meshes failed by timing, fifth pass.

1. A game day (`harness traffic` + `harness chaos`): a link degraded after an earlier fault that reached it had no
   baseline when that fault's recovery was slow. e2e holds such an experiment (`wait_link_baseline`); a game day's
   `harness chaos` did not, and its action cannot read the hops (`harness.chaos` is below the verifier). Now the
   `harness chaos` process answers the action through the run directory (`harness.contract.linkwatch`,
   `harness.e2e.LinkBaselineWatcher`), and the action waits for that answer, bounded.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import harness.chaos
from harness.chaos import ChaosResult, actions
from harness.topology import load_topology
from harness.verify.rundata import find_topology
from tests.test_chaos import FakeBackend, fake  # noqa: F401  (the fixture)
from tests.test_cli_chaos import UpBackend, up  # noqa: F401  (the fixture)
from tests.test_timing_t53a import BASE_AT, SLOW_BACK, _as_of, _kill_only, _with_link
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T0, failed
from tests.verdicts import verify

try:  # base: absent, and the finding fails on its assertion (the action degrades the link at once)
    from harness.contract import linkwatch
    from harness.e2e import LinkBaselineWatcher
except ImportError:
    linkwatch = LinkBaselineWatcher = None  # type: ignore[assignment,misc]
LINK_WATCH_FILE, LINK_ASK_FILE = "link-baseline.json", "link-baseline-ask.json"  # harness.contract.rundir's


# -- 1. a game day's degradation after a fault that reached the link waits for its baseline --------------------------
def _view(src: Path, view: Path, now: float) -> None:
    """The run as it stood `now` s into it (`_as_of`), keeping the question and answer files written meanwhile."""
    keep = {n: (view / n).read_bytes() for n in (LINK_WATCH_FILE, LINK_ASK_FILE) if (view / n).exists()}
    _as_of(src, view, now)
    for name, data in keep.items():
        (view / name).write_bytes(data)


class _GameDay:
    """The kill's run (t53a: LAX's product-api killed 30-40 s, back at 45 s, settled at 29.5 s) seen live by the
    chaos action from `at` s on, on a fake clock; `watcher`: `harness chaos`'s, stepped at each of the action's
    polls (as its thread would answer), or none (plain `chaos run`)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: float, watcher: bool = True,
                 answers: bool = True, **kw: Any) -> None:  # fmt: skip
        self.src = _kill_only(tmp_path, **kw)
        self.view = tmp_path / "live"
        self.now = at
        _view(self.src, self.view, at)
        monkeypatch.setenv("EH_RUN_DIR", str(self.view))
        monkeypatch.setattr(actions, "_now", lambda: self.now)
        monkeypatch.setattr(actions, "time", SimpleNamespace(sleep=self.sleep, time=lambda: T0 + self.now))
        t = load_topology(find_topology(self.src))
        self.said: list[str] = []
        self.watcher = (
            None
            if LinkBaselineWatcher is None
            else LinkBaselineWatcher(self.view, t, self.said.append, clock=lambda: T0 + self.now)
        )
        self.answers = answers and self.watcher is not None
        self._seen = -1e9
        if watcher and linkwatch is not None:
            linkwatch.write_watch(self.view, {})  # as the watcher's start writes it (its thread: `sleep` below)

    def sleep(self, s: float) -> None:
        self.now = round(self.now + s, 6)
        if (
            self.watcher is not None and self.answers and self.now - self._seen >= self.watcher.poll_s - 1e-6
        ):  # the view as the watcher reads it
            self._seen = self.now
            _view(self.src, self.view, self.now)
            self.watcher.step()


def test_a_game_days_degradation_after_a_slow_recovery_waits_for_its_baseline(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """FINDING. A game day: `harness traffic`, then `harness chaos` of a kill of LAX's product-api (restored at
    40 s, its recovery took 5 s), then `harness chaos` of service-link, whose degradation began 3.5 s after the
    restore. The action waits for a baseline only as the link's first fault: after one, it cannot read where that
    fault's window ends (the hops; `harness.chaos` is below the verifier), so it degraded the link at once, with
    not one hop outside the kill's window: "not shown" (unverified) on a correct mesh that a later start passed.
    Now `harness chaos` answers the action (`LinkBaselineWatcher`, as e2e's hold asks `link_baseline_owed`):
    held to 46.5 s here, said once; the verdict of the link degraded there passes."""
    day = _GameDay(tmp_path, monkeypatch, BASE_AT)
    out = actions.degrade_link(LAX, 100, duration_s=0.0)
    assert 46.0 <= day.now <= 47.0, day.now
    assert "baseline" not in out  # nothing given up: the journal says nothing
    assert [c[0] for c in fake.calls] == ["set_link", "clear_link"]  # the link degraded after the wait
    assert len(day.said) == 1 and f"{LAX}'s link baseline (after {SLOW_BACK.fault}: 0 hops)" in day.said[0], day.said
    held = verify(_with_link(tmp_path, "held", round(day.now, 1)))
    assert held.passed, why(held)


def test_control_the_degradation_begun_where_base_began_it_is_not_shown(tmp_path: Path) -> None:
    """Control: the same run with the link degraded at 43.5 s, where the action began it on base: unverified."""
    v = verify(_with_link(tmp_path, "base", BASE_AT))
    assert failed(v) == {"coverage"}, why(v)
    assert "nothing to measure the added 100 ms against" in v.invariant("coverage").message, why(v)


def test_control_a_degradation_held_that_never_reached_the_link_still_fails(tmp_path: Path) -> None:
    """Control: recorded where the game day now begins it, never applied (`link_inert`): "did not take effect"."""
    v = verify(_with_link(tmp_path, "inert", 46.5, inert=True))
    assert failed(v) == {"coverage"}, why(v)
    assert "did not take effect" in v.invariant("coverage").message, why(v)


def test_control_a_baseline_on_record_is_not_waited_for(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: settled at 20 s, 10 s of LAX's hops before the kill are the baseline: answered at the first poll."""
    day = _GameDay(tmp_path, monkeypatch, BASE_AT, budget_end_s=20.0)
    assert actions._settled_baseline(fake, LAX) is None  # type: ignore[arg-type]
    assert day.now <= BASE_AT + actions.POLL_S + 1e-6 and day.said == []  # within one look


@pytest.mark.parametrize("who", ["none", "gone"])
def test_control_no_process_to_answer_nothing_is_asked(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    who: str,
) -> None:
    """Control: plain `chaos run`, or e2e (its hold is before the experiment), has no watcher; one whose process is
    gone (its file left behind) answers nothing: the action does not wait, as before, and asks nothing."""
    day = _GameDay(tmp_path, monkeypatch, BASE_AT, watcher=False)
    if who == "gone":
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (day.view / LINK_WATCH_FILE).write_text(json.dumps({"pid": int(dead.stdout), "answers": {}}))
    assert actions._settled_baseline(fake, LAX) is None  # type: ignore[arg-type]
    assert day.now == BASE_AT and not (day.view / LINK_ASK_FILE).exists()


def test_a_watcher_that_never_answers_is_given_up_at_max_recovery_and_the_journal_says_so(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bounded: a watcher that is there but never answers holds the degradation maxRecoveryS (60 s), no longer;
    its output (the journal's) and chaos.log say it was given up."""
    day = _GameDay(tmp_path, monkeypatch, BASE_AT, answers=False)
    day.sleep = lambda s: setattr(day, "now", day.now + s)  # type: ignore[method-assign]
    monkeypatch.setattr(actions, "time", SimpleNamespace(sleep=day.sleep, time=lambda: T0 + day.now))
    with caplog.at_level(logging.WARNING, logger="chaostoolkit"):
        out = actions.degrade_link(LAX, 100, duration_s=0.0)
    assert day.now == pytest.approx(BASE_AT + 60.0, abs=0.2)
    assert "gave up waiting for us-west-2-lax-1a's link baseline (no answer after 60." in out["baseline"]
    assert "gave up waiting" in caplog.text


def test_a_watcher_that_stops_mid_wait_is_given_up_at_once(
    fake: FakeBackend,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A watcher whose process ends (its file gone) while the baseline is still owed answers nothing more: the
    action stops waiting at its next look, not at its bound, and says what was still owed."""
    day = _GameDay(tmp_path, monkeypatch, BASE_AT)
    step = day.sleep

    def sleep(s: float) -> None:
        step(s)
        if day.now >= 44.0:
            (day.view / LINK_WATCH_FILE).unlink(missing_ok=True)

    monkeypatch.setattr(actions, "time", SimpleNamespace(sleep=sleep, time=lambda: T0 + day.now))
    note = actions._settled_baseline(fake, LAX)  # type: ignore[arg-type]
    assert day.now == pytest.approx(44.0), day.now
    assert note is not None and "(the process answering stopped after 0.5 s: " in note, note
    assert f"{LAX}'s link baseline (after {SLOW_BACK.fault}: 0 hops)" in note, note


def test_the_watchers_thread_answers_and_ends_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness chaos`'s watcher as it runs: on its thread it answers a question asked of it (owed, then nothing
    owed), and on exit removes its files (a later chaos process of the run finds no watcher)."""
    import threading

    import harness.verify

    owed = [True]
    asked = threading.Event()

    class _Owed:
        due = 1e12

        def __str__(self) -> str:
            return f"{LAX}'s link baseline"

    def stand_in(run_dir: Path, topology: object, zone: str, now: float) -> object:
        asked.set()
        return _Owed() if owed[0] else None

    monkeypatch.setattr(harness.verify, "link_baseline_owed", stand_in)
    said: list[str] = []
    with LinkBaselineWatcher(tmp_path, object(), said.append, poll_s=0.0):  # type: ignore[arg-type]
        assert linkwatch.watching(tmp_path) == os.getpid()
        token = linkwatch.ask(tmp_path, LAX)
        assert asked.wait(60)  # a hang guard, not the outcome
        owed[0] = False
        got = None
        for _ in range(6000):  # each look waits on the watcher's own poll, not on a wall-clock deadline
            got = linkwatch.answer_of(tmp_path, LAX, token)
            if got is not None and got["owed"] is None:
                break
            threading.Event().wait(0.01)
        assert got is not None and got["owed"] is None, got
    assert linkwatch.watching(tmp_path) is None and not (tmp_path / LINK_ASK_FILE).exists()
    assert len(said) == 1 and said[0].startswith(f"chaos: waiting for {LAX}'s link baseline to be on record"), said


def _link_experiment(tmp_path: Path, func: str) -> Path:
    f = tmp_path / "exp.json"
    args: dict[str, Any] = {
        "zone": LAX,
        **({"latency_ms": 100} if func == "degrade_link" else {"service": "product-api"}),
    }
    prov = {"type": "python", "module": "harness.chaos.actions", "func": func, "arguments": args}
    f.write_text(json.dumps({"title": "t", "description": "d",
                             "method": [{"type": "action", "name": "it", "provider": prov}]}))  # fmt: skip
    return f


@pytest.mark.parametrize(("func", "watched"), [("degrade_link", True), ("kill_pod", False)])
def test_harness_chaos_answers_while_an_experiment_that_degrades_a_link_runs(
    tmp_path: Path,
    up: UpBackend,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    func: str,
    watched: bool,
) -> None:
    """`harness chaos` runs an experiment that degrades a link inside its watcher (its file names this process
    while the experiment runs, gone after); one that degrades none starts no watcher."""
    from harness.cli import main

    seen: list[int | None] = []

    def fake_run(p: Any, run_dir: Path, opts: Any, timeout_s: float = 900) -> ChaosResult:
        seen.append(linkwatch.watching(run_dir))
        return ChaosResult(p.id, "completed", False, run_dir / "journal.json", 0, None)

    monkeypatch.setattr(harness.chaos, "run_planned", fake_run)
    run = tmp_path / "run"
    assert main(["chaos", "--backend", "local", str(_link_experiment(tmp_path, func)), "--run-dir", str(run)]) == 0
    assert seen == [os.getpid() if watched else None]
    assert not (run / LINK_WATCH_FILE).exists()
