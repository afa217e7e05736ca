"""The idle scheduling class for processes started ahead of their turn (a `chaos run`, locust).

Why: a process the harness starts early, so that its interpreter and imports
are paid before it is needed, must not slow what runs meanwhile (a bring-up,
an experiment, a probe budget measuring how busy the machine is). At the idle
class (SCHED_IDLE) it takes only CPU nothing else wants; when its turn comes
it is put back to the normal class, every thread of it.
"""

from __future__ import annotations

import contextlib
import os


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
