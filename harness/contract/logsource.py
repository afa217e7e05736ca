"""How access-log lines pass from a backend to observe: a `LogSource` per sidecar.

Backends hand out sources (`Observation.log_sources()`: the local backend
tails the sidecars' files, kind/EKS follow the containers' logs through the
API); observe's collector polls them into `accesslogs/<pod>.jsonl`. The type
lives here so neither side imports the other.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import IO

IDLE_CLOSE_S = 10.0
"""A source (and its copy in the run directory) with no new line for this long gives back its file descriptors."""


class LogSource(ABC):
    """A stream of one sidecar's raw access-log lines."""

    pod: str

    @abstractmethod
    def read(self) -> Iterator[str]:
        """Lines written since the last call (non-blocking)."""


class FileLogSource(LogSource):
    """Tail one sidecar's access-log file, like ``tail -F``.

    Survives the file not existing yet (pod starting), being truncated
    (copytruncate rotation: read again from the start) and being replaced
    (rename rotation or a pod restarted into the same path: the old file is
    read to its end, then the new one from its start). A line is yielded only
    once it is complete, so a line caught mid-write is never split in two.
    """

    def __init__(self, pod: str, path: Path, chunk_size: int = 1 << 20, idle_close_s: float = IDLE_CLOSE_S) -> None:
        self.pod = pod
        self.path = Path(path)
        self._chunk = chunk_size
        self.idle_close_s = idle_close_s
        self._fh: IO[bytes] | None = None
        self._ino: tuple[int, int] | None = None
        self._pending = b""
        self._offset = 0  # where reading resumes after the handle was closed for being idle
        self._parked = False
        self._last = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._fh is not None

    def _open(self) -> bool:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return False
        st = os.fstat(fh.fileno())
        self._fh, self._ino, self._pending = fh, (st.st_dev, st.st_ino), b""
        return True

    def _drain(self) -> Iterator[str]:
        fh = self._fh
        assert fh is not None
        while True:
            data = fh.read(self._chunk)
            if not data:
                return
            data = self._pending + data
            lines = data.split(b"\n")
            self._pending = lines.pop()
            for raw in lines:
                line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
                if line.strip():
                    yield line

    def _unpark(self) -> bool:
        """Reopen a handle closed for being idle, only when the file has something new (no fd otherwise)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if (st.st_dev, st.st_ino) != self._ino:
            self._parked = False  # replaced while closed: the new file from its start
            return self._open()
        if st.st_size == self._offset:
            return False
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return False
        if st.st_size > self._offset:
            fh.seek(self._offset)
        else:
            self._pending = b""  # truncated while closed: everything now in the file is new
        self._fh, self._parked = fh, False
        return True

    def read(self) -> Iterator[str]:
        if self._fh is None and not (self._unpark() if self._parked else self._open()):
            return
        n = 0
        for line in self._read_open():
            n += 1
            yield line
        now = time.monotonic()
        if n:
            self._last = now
        elif self._fh is not None and now - self._last >= self.idle_close_s:
            # Idle (e.g. its pod is gone): give the descriptor back; a long run with pod churn must not
            # hold one per pod it ever saw. `_unpark` resumes at the same byte when the file grows.
            self._offset = self._fh.tell()
            self._fh.close()
            self._fh, self._parked = None, True

    def _read_open(self) -> Iterator[str]:
        yield from self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # removed: keep the old handle (more lines may still arrive) until a new file shows up
        assert self._fh is not None
        if (st.st_dev, st.st_ino) != self._ino:
            # Replaced: the old file is drained above; switch to the new one from its start.
            self._fh.close()
            self._fh = None
            if self._open():
                yield from self._drain()
        elif st.st_size < self._fh.tell():
            # Truncated in place: everything now in the file is new.
            self._fh.seek(0)
            self._pending = b""
            yield from self._drain()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._parked = False
