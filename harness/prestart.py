"""Processes started ahead of their turn (a `chaos run`, locust): the idle class while they wait, and the order.

Why: a process the harness starts early, so that its interpreter and imports
are paid before it is needed, must not slow what runs meanwhile (a bring-up,
an experiment, a probe budget measuring how busy the machine is). At the idle
class (SCHED_IDLE) it takes only CPU nothing else wants; when its turn comes
it is put back to the normal class, every thread of it.

Both sides of the protocol live here: the parent's `Waiting` (started with a
pipe for stdin; `send` writes the one order line and closes it; `close` ends
an unused one), and the child's `take_order` (reads that line: None when the
pipe was closed unused, else the order, with the process back at the normal
class and its stdin the null device a plain run gets).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

CLOSE_WAIT_S = 5.0  # an unused process, told there is nothing to run, is gone well within this
IDLE_FLAG = "--idle"  # the child imports at SCHED_IDLE


def may_idle() -> bool:
    """Whether a waiting process may go to the idle class: only where it can be put back (root; Linux)."""
    return hasattr(os, "SCHED_IDLE") and os.geteuid() == 0


def go_idle() -> None:
    """The calling thread to the idle class (a fresh process's only thread)."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def normal_class(pid: int) -> None:
    """Back to the normal scheduling class (from SCHED_IDLE), when allowed; a process gone is no matter.

    The class is a thread's: given a process's pid, this is its main thread only (`all_threads_normal`)."""
    with contextlib.suppress(OSError):
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))


def all_threads_normal() -> None:
    """Every thread of this process back to the normal class. A parent's `normal_class(pid)` reaches only the
    main thread, and a thread started while the process waited at the idle class keeps that class for life."""
    for tid in os.listdir("/proc/self/task"):
        normal_class(int(tid))


class Waiting:
    """The parent's side: `proc`, started by the subclass with `stdin=PIPE`, waits for one order line."""

    proc: subprocess.Popen[bytes]
    idle: bool

    def send(self, order: Any) -> subprocess.Popen[bytes]:
        """Give the process its order (JSON, one line) and its normal class back; returns the process."""
        assert self.proc.stdin is not None
        if self.idle:
            normal_class(self.proc.pid)  # at once, even when it is still importing
        try:
            self.proc.stdin.write(json.dumps(order).encode() + b"\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died waiting: its exit code and its own record say so, as for one that failed to start
        return self.proc

    def close(self) -> None:
        """An unused process: nothing to run (end of its stdin), then gone; killed if it does not go."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def idle_asked() -> bool:
    """The child's first step: at the idle class if its parent asked (IDLE_FLAG) and says so."""
    idle = IDLE_FLAG in sys.argv[1:]
    if idle:
        go_idle()
    return idle


def take_order(idle: bool) -> Any | None:
    """The child's wait: its order (None when closed unused), at the normal class, stdin the null device."""
    line = sys.stdin.readline()
    if not line.strip():
        return None
    order = json.loads(line)
    if idle:
        all_threads_normal()  # the parent did the main thread's already
    devnull = os.open(os.devnull, os.O_RDONLY)  # the stdin a plain run gets
    os.dup2(devnull, 0)
    os.close(devnull)
    return order
