"""Stopping on a signal the way a user expects: at once, cleaning up, and never half-way through the cleanup.

`harness` commands (and the pytest plugin's session) run inside
`handle_signals()`. SIGINT (Ctrl-C: to the whole process group from a
terminal, or to the harness process alone), SIGTERM (CI cancelling a job,
`timeout`, systemd) and SIGHUP (the terminal went away) all raise
`Interrupted`, a `KeyboardInterrupt`, in the main thread: every `finally`
and `except BaseException` on the way out runs (traffic stopped, chaos
rolled back, the cluster taken down, `run.json` marked), and the command
exits 128 + the signal number (130 for Ctrl-C).

While that cleanup runs, a second signal does not interrupt it (a cleanup
cut in half is exactly what leaves a cluster that is neither up nor down): it
is reported and deferred. A third one gives up the cleanup (the user insists;
`harness down` finishes what is left, from the state the backend wrote).
Child processes run in their own sessions, so a terminal's Ctrl-C reaches
only the harness, which stops them in order.

What happens after the block is a strategy (`After`): an in-process caller
(a test, pytest's session) gets its own handlers back; the `harness`
command ignores every later signal, because by then its outcome is decided
and its cleanup has run. Restoring there would let a Ctrl-C pressed twice
in quick succession (the second after a short cleanup) raise a bare
`KeyboardInterrupt` while the command prints its last line or while the
interpreter shuts down (which resets Python-handled signals to their
default): the command would die by the signal (-2) instead of exiting 130.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAP_S = 0.05  # the longest single sleep of `nap`: how late a stop signal can be handled at worst

# reset the stop signals to their defaults, then become the command (same pid: callers signal and wait for it)
_DEFAULT_STOP_SIGNALS = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.signal(signal.SIGTERM, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
)


class Interrupted(KeyboardInterrupt):
    """A signal asked the harness to stop; `exit_code` is what the command exits with."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class After(enum.Enum):
    """What `handle_signals` leaves behind when its block ends."""

    RESTORE = "restore"  # the previous handlers: an in-process caller (a test, pytest) keeps its own
    IGNORE = "ignore"  # nothing more can change the outcome: a process about to exit (the `harness` command)

    def apply(self, previous: Mapping[signal.Signals, Any] | None = None) -> None:
        """Leave the signals as this strategy says (`previous`: the handlers to restore)."""
        for s in SIGNALS:
            handler = (previous or {}).get(s) if self is After.RESTORE else signal.SIG_IGN
            signal.signal(s, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


def _raise_once(signum: int, _frame: FrameType | None) -> None:
    After.IGNORE.apply()  # nothing was started: the one signal decides, later ones cannot cut its exit short
    raise Interrupted(signum)


def stop_at_once() -> None:
    """Make the first signal of `SIGNALS` raise `Interrupted` and ignore the rest: a process's start, before
    `handle_signals` (which replaces this) or instead of it (a command line that never gets that far)."""
    for s in SIGNALS:
        signal.signal(s, _raise_once)


@contextlib.contextmanager
def handle_signals(say: Callable[[str], None] = lambda _m: None, after: After = After.RESTORE) -> Iterator[list[int]]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise `Interrupted` once; later ones are deferred, then final.

    Yields the list of signals received (in order). Outside the main thread
    (where Python cannot install handlers) it does nothing. On exit the
    handlers are restored or the signals ignored, as `after` says.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            raise Interrupted(signum)
        if len(received) == 2:
            say(
                f"{name} again: still cleaning up (stopping now would leave things half-removed); "
                "send it once more to leave at once, then `harness down` removes what is left"
            )
            return
        raise Interrupted(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    try:  # installing is within the try: a signal between two installs still leaves them as `after` says
        for s in SIGNALS:
            signal.signal(s, handler)
        yield received
    finally:
        after.apply(previous)


def with_default_stop_signals(argv: Sequence[str]) -> list[str]:
    """`argv` started with SIGINT and SIGTERM at their default dispositions, whatever this process inherited.

    The harness stops chaostoolkit with SIGINT (it plays its rollbacks) and
    locust with SIGTERM (it stops its users and writes its stats). An
    ignored signal survives exec: a shell ignores SIGINT in every job it puts
    in the background without job control (`harness e2e &` in a script, a
    cron or CI step, `bench/` runs), so the child would sit out the stop
    until the escalation (locust: 15 s more in every e2e; chaostoolkit:
    SIGKILL after 60 s, its rollbacks never played). A handler does not
    survive exec, so only callers outside `handle_signals` handed the ignore
    on; this does not depend on the caller at all. A bare interpreter resets
    the signals and execs the command, keeping the pid.
    """
    return [sys.executable, "-I", "-S", "-c", _DEFAULT_STOP_SIGNALS, *argv]


def nap(seconds: float, step_s: float = NAP_S) -> None:
    """Sleep `seconds` in steps of at most `step_s`, so that a stop signal is handled within a step.

    Why: CPython's `time.sleep` looks for a pending signal only when its
    `clock_nanosleep` returns early (EINTR). A signal that lands after the
    interpreter's last check and before the sleep has begun interrupts
    nothing, and its handler (`Interrupted`, chaostoolkit's own) runs only
    when the whole sleep is over: seconds late when a chaos action holds a
    fault for its duration in one sleep. A rare race, but a stop that waits
    for the fault to end is the one thing a stop must not do.
    """
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(step_s, left))
