"""The kill switch's stop of a library caller must not fail in silence (d48d).

`interrupt_chaos_process` stops the experiment of a process without chaostoolkit's SIGUSR1 handler with
`_thread.interrupt_main()`, a KeyboardInterrupt "like a Ctrl-C". CPython documents that it does nothing for a
signal Python does not handle (SIG_IGN, SIG_DFL: Doc/library/_thread.rst; Modules/signalmodule.c
`PyErr_SetInterruptEx` returns without tripping the signal for those handlers since bpo-23395). A library caller
started as a background job of a shell inherits SIGINT ignored: the switch rolled every fault back, the
experiment went on, and nothing said it was not stopped.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend, interrupt_chaos_process
from tests.conftest import wait_until


@pytest.fixture
def library_caller() -> Iterator[None]:
    """No SIGUSR1 handler (not under `chaos run`); the test sets SIGINT as the caller it stands for has it."""
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL), signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous[0])
        signal.signal(signal.SIGINT, previous[1] if previous[1] is not None else signal.SIG_DFL)


def _hold(seconds: float) -> None:
    """The experiment's main thread, waiting in short steps (where a KeyboardInterrupt would land)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


@pytest.mark.parametrize(("disposition", "named"), [(signal.SIG_IGN, "ignores SIGINT"),
                                                    (signal.SIG_DFL, "leaves SIGINT to its default")])  # fmt: skip
def test_a_library_caller_that_does_not_handle_sigint_is_told_the_experiment_was_not_stopped(
    library_caller: None, disposition: Any, named: str
) -> None:
    """Reproducer: on HEAD the call returned nothing and raised nothing; the line says what was and was not done."""
    signal.signal(signal.SIGINT, disposition)
    said = interrupt_chaos_process()
    _hold(0.3)  # no KeyboardInterrupt arrives (none can): the line is the only trace
    assert said is not None, "the kill switch's stop did nothing and said nothing"
    assert "\n" not in said and said.startswith("WARNING: kill switch: ") and named in said, said
    assert "not stopped" in said and "refuses every further injection" in said, said


def _switch_pulled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: list[str], hold_s: float) -> None:
    """A backend whose kill switch is armed (as after its first injection) and then pulled: the run's ABORT file
    appears, the (empty) ledger is rolled back, the experiment is told to stop; `said` is what its progress heard,
    complete once this returns or raises (the switch's thread has ended)."""
    monkeypatch.setenv("EH_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("EH_KILL_SWITCH", raising=False)
    b = ExistingBackend("ctx", workdir=tmp_path / "wd", progress=said.append)
    try:
        b._arm_kill_switch()
        (tmp_path / "ABORT").write_text("stop\n")
        assert wait_until(lambda: len(said) >= 2, hold_s), said
    finally:
        b.close()  # joins the switch's thread
        assert not [t for t in threading.enumerate() if t.name == "eh-kill-switch"]


def test_the_kill_switch_says_it_through_the_backends_progress(
    library_caller: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproducer, through the switch itself: the line reaches the backend's progress right after the switch's
    own, not a return value of a thread nobody reads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    said: list[str] = []
    _switch_pulled(tmp_path, monkeypatch, said, 10)
    assert said[0] == f"kill switch {tmp_path / 'ABORT'}: rolling back every fault in effect", said
    assert len(said) == 2 and said[1].startswith("WARNING: kill switch: ") and "ignores SIGINT" in said[1], said


def test_control_python_sigint_handler_still_gets_the_keyboardinterrupt_and_no_warning(
    library_caller: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: Python's own SIGINT handler (an interactive caller): the KeyboardInterrupt, as before, no line."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        _switch_pulled(tmp_path, monkeypatch, said, 10)  # interrupted while it waits: the stop landed
    assert said == [f"kill switch {tmp_path / 'ABORT'}: rolling back every fault in effect"], said


def test_control_under_chaostoolkit_sigusr1_is_sent_whatever_sigint_is(library_caller: None) -> None:
    """Control: with chaostoolkit's SIGUSR1 handler the stop is that signal (SIGINT ignored or not), no line."""
    got: list[int] = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, lambda signum, _frame: got.append(signum))
    assert interrupt_chaos_process() is None
    assert wait_until(lambda: got == [signal.SIGUSR1], 5), got
