"""One local cluster per machine at a time: the lock test sessions and cluster benches share.

Local clusters compete for the same cores and the same timing; two at once
(two checkouts' suites, a bench beside a test run) make each other's timing
fail. Whoever brings clusters up for a while (a pytest session with `local`
tests, bench/stability.py, bench/soak.py) holds this lock; `flock -o` on the
same path serializes anything else (README "Tests").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

MACHINE_LOCK = Path(os.environ.get("EH_TEST_LOCK", "/run/edge-harness-tests.lock"))


def acquire_machine_lock(who: str = "another session uses the local backend", path: Path | None = None) -> int:
    """Take the lock (waiting, and saying so once, when someone holds it); the descriptor releases it on close."""
    lock = path or MACHINE_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for {lock}: {who}", file=sys.stderr, flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def machine_lock(path: Path | None = None) -> Iterator[None]:
    """`acquire_machine_lock` for the length of a block."""
    fd = acquire_machine_lock(path=path)
    try:
        yield
    finally:
        os.close(fd)


__all__ = ["MACHINE_LOCK", "acquire_machine_lock", "machine_lock"]
