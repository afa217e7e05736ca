"""`chaos run` started ahead of its experiment (harness.chaos.launch): it runs as a plain one, and leaves nothing.

Real chaostoolkit, no backend: the experiments call processes only.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness import prestart
from harness.backends import BackendOptions
from harness.chaos import Launcher, chaos_env, launch, plan_run, run_planned, write_plan
from harness.prestart import all_threads_normal, may_idle
from tests.conftest import wait_until

OPTS = BackendOptions(name="local", cluster="nothere")


def _exp(tmp_path: Path, name: str, method: list[dict[str, Any]], **more: Any) -> Path:
    doc = {"title": name, "description": "no backend needed", "method": method, **more}
    f = tmp_path / f"{name}.json"
    f.write_text(json.dumps(doc))
    return f


def _proc(name: str, path: str, *args: str) -> dict[str, Any]:
    return {"type": "action", "name": name, "provider": {"type": "process", "path": path, "arguments": list(args)}}


@pytest.mark.slow
def test_experiments_run_back_to_back_in_prestarted_processes_as_in_plain_ones(tmp_path: Path) -> None:
    """Each experiment runs in the process started while the one before ran, with the run's environment
    (EH_RUN_DIR reaches the activities), and is judged as a plain `chaos run` is: a failed gate skips the method.
    Where it imported at the idle scheduling class (root), it runs the experiment at the normal one."""
    run = tmp_path / "run"
    seen = tmp_path / "seen"
    gate = {"title": "ok", "probes": [{"type": "probe", "name": "gate", "tolerance": 0,
            "provider": {"type": "process", "path": "false"}}]}  # fmt: skip
    # the chaos process's run directory, pid and scheduling policy (field 41 of its stat; 0: the normal class)
    record = f'echo "$EH_RUN_DIR $PPID $(cut -d")" -f2 /proc/$PPID/stat | cut -d" " -f40)" >> {seen}'
    paths = [
        _exp(tmp_path, "alpha", [_proc("act", "sh", "-c", record)]),
        _exp(tmp_path, "beta", [_proc("act", "true")], **{"steady-state-hypothesis": gate}),
    ]
    planned = plan_run(paths, None, None, run)
    write_plan(run, planned)
    with Launcher(chaos_env(run, OPTS)) as launcher:
        launcher.prestart()
        first = launcher.take()
        launcher.prestart()
        second = launcher._ready
        assert second is not None and second.proc.poll() is None  # the next one waits while the first runs
        if launcher.idle:  # root: it imports and waits at the idle class, and runs its experiment at the normal one
            assert wait_until(lambda: os.sched_getscheduler(second.proc.pid) == os.SCHED_IDLE, timeout=10)
        a = run_planned(planned[0], run, OPTS, started=first)
        assert second.proc.poll() is None  # still waiting: it runs only what it is given
        b = run_planned(planned[1], run, OPTS, started=launcher.take())
    assert a.ok and a.returncode == 0, a.reason
    # run by the prestarted process, at the normal scheduling class
    assert seen.read_text().split() == [str(run.resolve()), str(first.proc.pid), "0"]
    assert not b.ok and b.reason is not None and b.reason.startswith("the steady state before the method did not hold")
    for exp_id in ("01-alpha", "02-beta"):
        assert {p.name for p in (run / "chaos" / exp_id).iterdir()} >= {"experiment.json", "journal.json", "chaos.log"}
    assert first.proc.returncode == 0 and second.proc.returncode == 0


@pytest.mark.slow
def test_a_prestarted_process_closed_unused_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a chaostoolkit that ran would leave chaostoolkit.log and journal.json here
    launcher = Launcher(chaos_env(tmp_path / "run", OPTS))
    launcher.prestart()
    ready = launcher._ready
    assert ready is not None
    time.sleep(0.5)  # well into its imports, or done with them
    launcher.close()
    assert ready.proc.returncode == 0
    assert list(tmp_path.iterdir()) == []
    launcher.close()  # idempotent


def test_one_that_does_not_go_when_closed_is_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch, "launcher_argv", lambda idle=False: ["sleep", "30"])
    monkeypatch.setattr(prestart, "CLOSE_WAIT_S", 0.2)
    ready = launch.Prestarted(dict(os.environ))
    t0 = time.monotonic()
    ready.close()
    assert ready.proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_an_interrupted_prestarted_experiment_plays_its_rollbacks(tmp_path: Path) -> None:
    """Ctrl-C during the method: the prestarted process is stopped as a plain one is (SIGINT to its session),
    its journal says "interrupted" and its rollbacks ran."""
    started, rolled = tmp_path / "started", tmp_path / "rolled"
    exp = _exp(tmp_path, "interrupted", [_proc("act", "sh", "-c", f"touch {started}; sleep 120")],
               rollbacks=[_proc("undo", "touch", str(rolled))])  # fmt: skip
    run = tmp_path / "run"
    (p,) = plan_run([exp], None, None, run)

    def ctrl_c(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    def interrupt_once_acting() -> None:
        if wait_until(started.exists, timeout=60):
            os.kill(os.getpid(), signal.SIGUSR1)  # the test's Ctrl-C, delivered to the main thread

    previous = signal.signal(signal.SIGUSR1, ctrl_c)
    watcher = threading.Thread(target=interrupt_once_acting, daemon=True)
    watcher.start()
    try:
        with Launcher(chaos_env(run, OPTS)) as launcher, pytest.raises(KeyboardInterrupt):
            run_planned(p, run, OPTS, started=launcher.take())
    finally:
        signal.signal(signal.SIGUSR1, previous)
    watcher.join()
    journal = json.loads((run / "chaos" / "01-interrupted" / "journal.json").read_text())
    assert journal["status"] == "interrupted"
    assert rolled.exists()


def test_one_that_died_waiting_is_judged_as_a_chaos_that_did_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its command line meets a closed pipe: no error of ours, the experiment has no journal, and the result says
    so with the process's exit code, as for a `chaos run` that failed to start."""
    monkeypatch.setattr(launch, "launcher_argv", lambda idle=False: ["sh", "-c", "exit 3"])
    run = tmp_path / "run"
    (p,) = plan_run([_exp(tmp_path, "gone", [_proc("act", "true")])], None, None, run)
    dead = launch.Prestarted(dict(os.environ))
    dead.proc.wait()
    res = run_planned(p, run, OPTS, started=dead)
    assert not res.ok and res.returncode == 3 and res.status == "missing"
    assert res.reason is not None and res.reason.startswith("no journal: chaostoolkit exited 3")


@pytest.mark.skipif(not may_idle(), reason="the idle class is set and reset only as root")
def test_every_thread_of_a_process_that_waited_idle_runs_at_the_normal_class() -> None:
    """The class is a thread's: a thread started while the process waited at the idle class would keep it, as
    the parent puts only the main thread back. Here a thread goes idle and stays alive; `_all_threads_normal`,
    which the process calls when its turn comes, puts it back with the main thread."""
    idle, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def waits_idle() -> None:
        tid.append(threading.get_native_id())
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        idle.set()
        done.wait(10)

    t = threading.Thread(target=waits_idle)
    t.start()
    try:
        assert idle.wait(10) and os.sched_getscheduler(tid[0]) == os.SCHED_IDLE
        all_threads_normal()
        assert os.sched_getscheduler(tid[0]) == os.SCHED_OTHER
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        done.set()
        t.join(10)
