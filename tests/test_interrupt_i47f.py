"""The Ctrl-C tests' trigger must not depend on how the test process was started.

A process started as a background job of a non-interactive shell (`pytest ... &`,
a CI step's job) inherits SIGINT ignored, and Python then installs no SIGINT
handler of its own. `_thread.interrupt_main()` does nothing for a signal Python
does not handle (its documented behaviour), and a real SIGINT is dropped. So
test_interrupt_k45i's fault-time interrupts never reached the run, which went
on to its end: "DID NOT RAISE KeyboardInterrupt" on unchanged code. First seen
on a loaded machine; the cause is the disposition, not the load: at load 15
the tests pass with Python's handler and fail with SIGINT ignored. The same
inheritance changed test_signals' in-process case (the caller's handler
restored: Python's, or the inherited "ignore").
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_interrupt_k45i import _interrupt_on_inject


@pytest.fixture(params=["ignored", "python"])
def sigint(request: pytest.FixtureRequest) -> Iterator[str]:
    """This process's SIGINT disposition as the test runner inherited it: ignored (a background job) or Python's."""
    previous = signal.signal(
        signal.SIGINT, signal.SIG_IGN if request.param == "ignored" else signal.default_int_handler
    )
    try:
        yield request.param
    finally:
        signal.signal(signal.SIGINT, previous)


def _inject(root: Path, action: str) -> None:
    run = root / "runs" / "20260101T000000Z"
    run.mkdir(parents=True)
    line = {"ts": time.time(), "fault": "f", "phase": "inject", "action": action, "zone": "z", "kind": "service-down"}
    (run / "chaos.jsonl").write_text(json.dumps(line) + "\n")


def _a_fault_that_holds(seconds: float = 20.0) -> None:
    """The run's main thread while the fault holds: waiting on chaostoolkit (Popen.wait sleeps in short steps)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)


@pytest.mark.parametrize("signal_it", [False, True], ids=["interrupt_main", "real-sigint"])
def test_the_interrupt_on_inject_reaches_the_run_whatever_sigint_was_inherited(
    tmp_path: Path, sigint: str, signal_it: bool
) -> None:
    """Reproducer ([ignored-*]: failed DID NOT RAISE on main) and control ([python-*]: passed already)."""
    _inject(tmp_path, "kill_node")
    with _interrupt_on_inject(tmp_path, "kill_node", signal_it=signal_it), pytest.raises(KeyboardInterrupt):
        _a_fault_that_holds()
    assert signal.getsignal(signal.SIGINT) == (signal.SIG_IGN if sigint == "ignored" else signal.default_int_handler)


def test_a_fault_never_injected_fails_saying_so(tmp_path: Path, sigint: str) -> None:
    """The test's precondition: no injection on record is named, not reported as "DID NOT RAISE"."""
    (tmp_path / "runs").mkdir()
    with (
        pytest.raises(AssertionError, match="never recorded the injection of kill_node"),
        _interrupt_on_inject(tmp_path, "kill_node"),
        pytest.raises(KeyboardInterrupt),
    ):
        pass  # the run ended (a refused or failed experiment) without the fault


def test_the_in_process_entry_dies_by_the_repeated_sigint_even_from_a_background_job(sigint: str) -> None:
    """test_signals' in-process case: its child sets Python's own handler, the caller it stands for, rather than
    inheriting the test runner's disposition (ignored in a background job: the child exited 130, not -SIGINT)."""
    from tests.test_signals import test_a_signal_at_any_point_of_the_process_exits_128_plus_it_without_a_traceback

    test_a_signal_at_any_point_of_the_process_exits_128_plus_it_without_a_traceback(
        "main", "last-line", -signal.SIGINT, ""
    )


def test_the_kill_switch_stop_of_a_library_caller_is_tested_with_python_sigint_handler(sigint: str) -> None:
    """test_coverage_a44c's control (a library caller gets a KeyboardInterrupt) sets the caller's SIGINT handler
    it stands for; from a background job (SIGINT ignored) it failed DID NOT RAISE."""
    from tests.test_coverage_a44c import test_interrupt_chaos_process_control_without_handler_interrupts_main

    test_interrupt_chaos_process_control_without_handler_interrupts_main()
