"""Collect sidecar access logs into the run directory while traffic and chaos run.

The sidecars' access logs are the only record of which pod served each hop
(the HashiCups apps never say), and pods die during chaos taking their logs
with them. So lines are copied out continuously, as raw as they came, to
``<run dir>/accesslogs/<pod>.jsonl`` and flushed at once; `build_hops` turns
them into hop records later, offline.

The collector runs in a background thread. A thread that dies quietly would
leave a run that *looks* fine but has no hops, so an error in the thread is
kept and re-raised in the caller's thread by `stop()` or `check()` (the way
kopf surfaces errors of its daemon threads).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO

from harness.columnar import COMPACT_EVERY_S, compact_all
from harness.contract.logsource import IDLE_CLOSE_S, FileLogSource, LogSource
from harness.contract.rundir import write_collected
from harness.errors import HarnessError

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
"""How often the collector reads every source: a line a sidecar has flushed is in the run directory this much later."""


class CollectorError(HarnessError):
    """The collector thread failed; the original exception is the ``__cause__``."""


def pod_file_name(pod: str) -> str:
    """The file name for a pod's lines: pod names are DNS labels, but never trust a path separator."""
    safe = pod.replace(os.sep, "_").replace("\0", "_")
    if safe in ("", ".", ".."):
        safe = f"_{safe}_"
    return f"{safe}.jsonl"


class AccessLogCollector:
    """Poll log sources in a background thread; append raw lines to ``out_dir/<pod>.jsonl``.

    `sources` is called on every poll (a backend's ``log_sources``) so pods
    created during the run are picked up; a source that disappears from the
    list is simply no longer polled (its file stays). Sources are kept by pod
    name: the first source object seen for a pod is the one polled for the
    rest of the run, so a backend that hands out a fresh object for the same
    pod on every call (each reading from the start of the pod's log) cannot
    make the collector copy the same lines twice.

    Use as a context manager or call `start()` / `stop()`; `stop()` does a
    last poll so lines written just before it are kept, closes the files and
    re-raises (as :class:`CollectorError`) any error from the thread.
    """

    def __init__(
        self,
        sources: Callable[[], list[LogSource]],
        out_dir: Path,
        interval_s: float = POLL_INTERVAL_S,
        idle_close_s: float = IDLE_CLOSE_S,
        *,
        compact_run_dir: Path | None = None,
        compact_every_s: float = COMPACT_EVERY_S,
        collected_file: Path | None = None,
    ) -> None:
        self._sources = sources
        self.out_dir = Path(out_dir)
        self.interval_s = interval_s
        self.idle_close_s = idle_close_s
        self._last_line: dict[str, float] = {}
        # Keep the run's records columnar as they come (harness.columnar): a long run's verdict then
        # reads Parquet segments instead of parsing gigabytes of JSON when the run ends.
        self.compact_run_dir = Path(compact_run_dir) if compact_run_dir is not None else None
        self.compact_every_s = compact_every_s
        # when each completed poll began (harness.contract.rundir `collected_until`): how far the run's records
        # reach is read from it by the cool-down, not assumed from `interval_s`, which a slow poll or a
        # compaction of seconds between two polls outlasts
        self.collected_file = Path(collected_file) if collected_file is not None else None
        self._last_compact = time.monotonic()
        self.compact_errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._files: dict[str, IO[str]] = {}
        self._known: dict[str, LogSource] = {}
        self.lines_written = 0

    def start(self) -> AccessLogCollector:
        if self._thread is not None:
            raise CollectorError("access-log collector already started")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="access-log-collector", daemon=True)
        self._thread.start()
        return self

    def poll_once(self) -> int:
        """Read every source once and append what it had; returns the number of lines written.

        Once every source was read, `collected_file` (if given) says when this poll began: each line a source had
        delivered by then is in the run directory now."""
        began = time.time()
        total = 0
        for offered in self._sources():
            src = self._known.setdefault(offered.pod, offered)
            fh = self._files.get(src.pod)
            n = 0
            for line in src.read():
                if fh is None:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    fh = self._files[src.pod] = (self.out_dir / pod_file_name(src.pod)).open("a", encoding="utf-8")
                fh.write(line.rstrip("\r\n") + "\n")
                n += 1
            now = time.monotonic()
            if fh is not None and n:
                fh.flush()  # on disk now: a crash of the harness must not lose what the pod said
                self._last_line[src.pod] = now
            elif fh is not None and now - self._last_line.get(src.pod, now) >= self.idle_close_s:
                fh.close()  # idle (its pod is likely gone): reopened in append mode if it speaks again
                del self._files[src.pod]
            total += n
        self.lines_written += total
        if self.collected_file is not None:
            with contextlib.suppress(OSError):  # unwritten: the last one stays, older than the records (safe side)
                write_collected(self.collected_file, began)
        return total

    def compact(self) -> None:
        """Turn the lines collected since the last call into Parquet segments (access logs and requests).

        A failure here loses nothing (the JSON lines stay and readers read
        what was not compacted), so it is logged and kept in `compact_errors`
        rather than stopping the collection.
        """
        if self.compact_run_dir is None:
            return
        self._last_compact = time.monotonic()
        try:
            compact_all(self.compact_run_dir)
        except Exception as exc:
            log.warning("compacting records into Parquet failed: %r", exc)
            self.compact_errors.append(repr(exc))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll_once()
                if time.monotonic() - self._last_compact >= self.compact_every_s:
                    self.compact()
                self._stop.wait(self.interval_s)
            self.poll_once()  # last lines written just before stop()
        except BaseException as exc:
            self._error = exc

    def check(self) -> None:
        """Raise the collector thread's error now, if it has one (call it between steps)."""
        if self._error is not None:
            raise CollectorError(f"access-log collector failed: {self._error!r}") from self._error

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, close the files, and re-raise its error here (in the caller's thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise CollectorError(f"access-log collector did not stop within {timeout} s")
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        for src in self._known.values():
            if isinstance(src, FileLogSource):  # made per call by the backend: the collector is its only holder
                src.close()
        self.check()
        self.compact()  # everything collected is columnar now: the verdict reads no JSON

    def __enter__(self) -> AccessLogCollector:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.stop()
            return
        with contextlib.suppress(CollectorError):
            self.stop()  # the body's exception is the one to see; ours is secondary
