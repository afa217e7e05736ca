"""Sidecar access logs followed through the API, across container restarts (the kind/existing log sources)."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

from harness.backends.base import LogSource
from harness.backends.kube.api import (
    KubeApi,
    KubeApiError,
    _labels,
    _meta,
)
from harness.contract.names import (
    DATAPLANE_CONTAINER,
    LABEL_POD_ZONE,
)
from harness.errors import BackendError

ACCESS_LOG_KEYS = frozenset({"start_time", "response_code", "upstream_cluster"})
# How often a followed container log's first line is read to see whether the kubelet rotated it: as often as the
# kubelet itself checks the sizes (containerLogMonitorInterval, 10 s), far below the time a sidecar takes to fill
# containerLogMaxSize again (minutes at 10Mi), so the new file still holds every line since the rotation.
ROTATION_CHECK_S = 10.0
# A follow stream that ended (the container restarting, an API hiccup) or could not open is tried again this much later.
RETRY_S = 1.0
HEAD_BYTES = 4096  # limitBytes of that read: the first line of the current file (an access-log line is ~1 KB)


def access_log_record(text: str, pod: str) -> str | None:
    """The line as JSON with `caller_pod` added, when it is an Envoy access-log line; else None.

    consul-dataplane's container log mixes its own (hclog) lines and Envoy's
    with the access log; only JSON objects carrying access-log fields count.
    """
    s = text.strip()
    if not s.startswith("{"):
        return None
    try:
        rec = json.loads(s)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not rec.keys() >= ACCESS_LOG_KEYS:
        return None
    rec["caller_pod"] = pod
    return json.dumps(rec, separators=(",", ":"))


def split_timestamp(line: str) -> tuple[int, str] | None:
    """`2026-11-25T20:26:03.123456789Z text` (logs with timestamps=true) -> (epoch ns, text)."""
    stamp, sep, text = line.partition(" ")
    if not sep or not stamp.endswith("Z") or "T" not in stamp:
        return None
    base, _, frac = stamp[:-1].partition(".")
    try:
        secs = int(datetime.fromisoformat(base + "+00:00").timestamp())
    except ValueError:
        return None
    nanos = int((frac + "000000000")[:9]) if frac.isdigit() else 0
    return secs * 1_000_000_000 + nanos, text


def since_time(ns: int) -> str:
    """sinceTime for the log API (RFC 3339, second precision: the server truncates anyway)."""
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LogStream(Protocol):
    def lines(self) -> Iterator[str]: ...
    def close(self) -> None: ...


# since_time (None: from the container's start) -> an open follow stream with timestamps.
LogOpener = Callable[[str | None], LogStream]


class PodGone(Exception):
    """Raised by a LogOpener when the pod no longer exists: the source is finished."""


def api_log_opener(cluster: KubeApi, namespace: str, pod: str, container: str) -> LogOpener:
    """Follow a container's log through the API (timestamps on, for resuming and dedupe)."""

    def open_(since: str | None) -> LogStream:
        query = [("container", container), ("follow", "true"), ("timestamps", "true")]
        if since is not None:
            query.append(("sinceTime", since))
        try:
            return cluster.stream_lines(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log", query)
        except KubeApiError as exc:
            if exc.status == 404:
                raise PodGone(pod) from None
            raise

    return open_


@dataclass(frozen=True)
class LogRotation:
    """The kubelet rotated a followed container log: seen at `seen_ts`, the new file beginning at `first_ns`.

    Lines the runtime wrote to the old file after `last_ns` (the last line delivered before the new file's
    first) are beyond the log API if the follow stream had not relayed them: the API reads only the current
    file, and a kubelet >= 1.29 moves its stream to the new file without reading the old one to its end.
    """

    seen_ts: float
    first_ns: int | None
    last_ns: int

    def describe(self, pod: str) -> str:
        """One line for the run's records (`recording.jsonl`, a note of the verdict)."""
        after = _iso_ns(self.last_ns) if self.last_ns >= 0 else "its start"
        until = f" and before {_iso_ns(self.first_ns)}" if self.first_ns is not None else ""
        return (
            f"{pod}: the kubelet rotated its sidecar's container log (seen at {_iso_ns(int(self.seen_ts * 1e9))}); "
            f"lines written to the old file after {after}{until} that the follow stream had not relayed are beyond "
            "the log API (it reads only the current file)"
        )


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KubeLogSource(LogSource):
    """One sidecar's access-log lines, followed through the API across container restarts and log rotations.

    A follow stream ends when the container restarts (or the connection
    drops); the source re-opens it with sinceTime = the last line's second
    and drops lines it already delivered (same timestamp and text), so a
    restart neither loses nor duplicates lines. It stops for good when the
    pod is gone. `read()` never blocks: a background thread does the following.

    The kubelet rotates a container log at containerLogMaxSize (10Mi unless
    the node says otherwise; a busy sidecar fills it in minutes), and the
    log API only ever reads the current file (k8s.io/cri-client pkg/logs
    ReadLogs). A kubelet before 1.29 keeps a follow stream on the renamed
    file, where nothing is written any more, without ending it
    (kubernetes/kubernetes#115701): every line after the rotation was lost
    to the run, and at the next rotation lost to the API. So a second thread
    reads the current file's first line every `rotation_check_s`; when it
    changed, the file was rotated, and a stream that has not relayed the
    new file's first line by the next check is re-opened from the last
    delivered line (the new file holds every line since the rotation; the
    old stream had a whole period to relay the old file's tail, which a
    re-open could never read). Each rotation seen is kept in `rotations`.
    """

    def __init__(
        self,
        pod: str,
        namespace: str,
        container: str = DATAPLANE_CONTAINER,
        *,
        cluster: KubeApi | None = None,
        opener: LogOpener | None = None,
        retry_s: float = RETRY_S,
        rotation_check_s: float = ROTATION_CHECK_S,
    ) -> None:
        if opener is None:
            if cluster is None:
                raise ValueError("KubeLogSource needs a cluster or an opener")
            opener = api_log_opener(cluster, namespace, pod, container)
        self.pod = pod
        self.namespace = namespace
        self.container = container
        self._opener = opener
        self._retry_s = retry_s
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._stream: LogStream | None = None
        self._thread: threading.Thread | None = None
        self._last_ns = -1
        self._seen_at_last: set[str] = set()
        self._accept_lock = threading.Lock()
        self._cluster = cluster
        self._rotation_check_s = rotation_check_s
        self._head: tuple[int, str] | None = None  # the current file's first line as last read; (-1, "") empty
        self._head_lock = threading.Lock()
        self._rotation_seen: float | None = None  # a rotation seen while the new file was still empty
        self._awaiting: int | None = None  # the first line of a new file the stream has not relayed yet
        self._since_check: list[int] = []  # instants delivered since the last rotation check (and the one before)
        self._watcher: threading.Thread | None = None
        self.rotations: list[LogRotation] = []
        self.opens = 0
        self.errors: list[str] = []

    def _accept(self, line: str) -> str | None:
        """Dedupe by timestamp: lines at or before the last delivered instant were delivered already."""
        parsed = split_timestamp(line)
        if parsed is None:
            return None
        ns, text = parsed
        with self._accept_lock:
            if ns < self._last_ns or (ns == self._last_ns and text in self._seen_at_last):
                return None
            if ns > self._last_ns:
                self._last_ns = ns
                self._seen_at_last = set()
                self._since_check.append(ns)
            self._seen_at_last.add(text)
        return text

    def _deliver(self, line: str) -> None:
        text = self._accept(line)
        if text is None:
            return
        rec = access_log_record(text, self.pod)
        if rec is not None:
            self._queue.put(rec)

    def catch_up(self) -> bool:
        """Read the container log once (not following) from the last delivered second: nothing is left behind.

        The follow stream delivers lines as the API server relays them, with
        no way to tell "all caught up" from "nothing new"; a plain read of the
        log now returns every line the runtime holds, and the timestamp dedupe
        drops what was delivered already. False when the pod is gone (its log
        went with it) or the read failed.
        """
        if self._cluster is None:
            return False
        query = [("container", self.container), ("timestamps", "true")]
        if self._last_ns >= 0:
            query.append(("sinceTime", since_time(self._last_ns)))
        try:
            text = self._cluster.request(
                "GET", f"/api/v1/namespaces/{quote(self.namespace)}/pods/{quote(self.pod)}/log", query=query
            )
        except BackendError as exc:
            self.errors.append(str(exc))
            return False
        for line in (text if isinstance(text, str) else "").splitlines():
            self._deliver(line)
        return True

    def _read_head(self) -> tuple[int, str] | None:
        """The first line of the container's current log file ((-1, "") when empty), or None when unreadable."""
        if self._cluster is None:
            return None
        query = [("container", self.container), ("timestamps", "true"), ("limitBytes", str(HEAD_BYTES))]
        try:
            text = self._cluster.request(
                "GET", f"/api/v1/namespaces/{quote(self.namespace)}/pods/{quote(self.pod)}/log", query=query
            )
        except BackendError:
            return None  # a pod gone or restarting: the follow stream says so
        first = (text if isinstance(text, str) else "").partition("\n")[0]
        if not first:
            return (-1, "")
        return split_timestamp(first) or (-1, first)

    def _check_rotation(self) -> bool:
        """Read the current file's first line, keep a rotation it shows; True when the stream must be re-opened.

        A file only grows until the kubelet renames it: another first line, or none where there was one, is a
        new file (the first line of a file that was empty is its first write). A stream that follows the
        rotation (kubelet >= 1.29) relays the new file's first line soon; one that has not by the next check,
        a period later (the old file's tail long relayed), stays on the renamed file and is re-opened.
        """
        with self._head_lock:  # the follow loop's check at each open and the periodic one: one at a time
            return self._check_rotation_locked()

    def _check_rotation_locked(self) -> bool:
        head = self._read_head()
        if head is None:
            return False
        empty = (-1, "")
        before, self._head = self._head, head
        rotated = before is not None and before != empty and head != before
        with self._accept_lock:
            last = self._last_ns
        awaited, self._awaiting = self._awaiting, None
        if awaited is not None and last < awaited:
            return True  # a check ago the new file began, and nothing of it came: a stream left on the old one
        if rotated and head == empty:  # a new file, still empty: kept until its first line says where it begins
            self._rotation_seen = time.time()
            return False
        if not rotated and not (before == empty and head != empty and self._rotation_seen is not None):
            with self._accept_lock:
                self._since_check = self._since_check[-1:]
            return False
        seen_ts = self._rotation_seen if not rotated and self._rotation_seen is not None else time.time()
        self._rotation_seen = None
        first = head[0] if head[0] >= 0 else None
        with self._accept_lock:
            # the new file began after the check before the rotation was seen: its last line before is among these
            seen, self._since_check = self._since_check, self._since_check[-1:]
        before_first = [n for n in seen if first is None or n < first]
        self.rotations.append(LogRotation(seen_ts, first, before_first[-1] if before_first else -1))
        self._awaiting = first
        return False

    def _watch_rotations(self) -> None:
        while not self._stop.wait(self._rotation_check_s) and not self._finished.is_set():
            if self._check_rotation():
                stream = self._stream
                if stream is not None:
                    stream.close()  # the follow loop re-opens it from the last delivered line

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._cluster is not None and self._rotation_check_s > 0:
                self._check_rotation()  # the file this stream starts on: the one a later rotation replaces
            try:
                stream = self._opener(since_time(self._last_ns) if self._last_ns >= 0 else None)
            except PodGone:
                break
            except Exception as exc:  # container not started yet, API hiccup: try again shortly
                self.errors.append(str(exc))
                self._stop.wait(self._retry_s)
                continue
            self.opens += 1
            self._stream = stream
            try:
                for line in stream.lines():
                    self._deliver(line)
            finally:
                stream.close()
            self._stop.wait(self._retry_s)  # ended: container restarting, or we are stopping
        self._finished.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"eh-logs-{self.pod}", daemon=True)
            self._thread.start()
            if self._cluster is not None and self._rotation_check_s > 0:
                self._watcher = threading.Thread(
                    target=self._watch_rotations, name=f"eh-logrot-{self.pod}", daemon=True
                )
                self._watcher.start()

    def read(self) -> Iterator[str]:
        self.start()
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    @property
    def finished(self) -> bool:
        """True once the pod is gone (or `close` was called) and no line is left to read."""
        return self._finished.is_set() and self._queue.empty()

    def wait_finished(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self._finished.set()


class KubeLogSources:
    """The set of sidecar log sources of a cluster, stable across calls.

    `log_sources()` is called repeatedly to pick up new pods; returning the
    same object for a pod already followed is what keeps lines from being
    delivered twice. Finished sources (pod gone, all lines read) are dropped.
    """

    def __init__(
        self,
        cluster: KubeApi,
        container: str = DATAPLANE_CONTAINER,
        *,
        retry_s: float = RETRY_S,
        rotation_check_s: float = ROTATION_CHECK_S,
    ) -> None:
        self.cluster = cluster
        self.container = container
        self._retry_s = retry_s  # each source's (`KubeLogSource`)
        self._rotation_check_s = rotation_check_s
        self._sources: dict[tuple[str, str], KubeLogSource] = {}
        self._dropped: list[str] = []  # rotations of finished sources, said by `rotation_notes` all the same
        self._lock = threading.Lock()

    def current(self) -> list[LogSource]:
        meshed = []
        for p in self.cluster.pods():
            meta = _meta(p)
            if LABEL_POD_ZONE not in _labels(p):
                continue
            containers = {c.get("name") for c in ((p.get("spec") or {}).get("containers") or [])}
            if self.container not in containers:
                continue  # not injected (yet): nothing to follow
            meshed.append((str(meta.get("namespace")), str(meta["name"])))
        with self._lock:
            for key in meshed:
                if key not in self._sources:
                    self._sources[key] = KubeLogSource(
                        key[1], key[0], self.container, cluster=self.cluster, retry_s=self._retry_s,
                        rotation_check_s=self._rotation_check_s,
                    )  # fmt: skip
            for key, src in list(self._sources.items()):
                if src.finished:
                    self._dropped += [r.describe(src.pod) for r in src.rotations]
                    del self._sources[key]
            return list(self._sources.values())

    def rotation_notes(self) -> list[str]:
        """Every rotation a followed log went through this process, one line each (`LogRotation.describe`):
        where a sidecar's log shows a gap, the verdict's notes say whether a rotation was there."""
        with self._lock:
            return [*self._dropped, *(r.describe(s.pod) for s in self._sources.values() for r in s.rotations)]

    def known(self) -> list[KubeLogSource]:
        """The sources followed now (without listing pods again)."""
        with self._lock:
            return list(self._sources.values())

    def close(self) -> None:
        with self._lock:
            for src in self._sources.values():
                src.close()
            self._sources.clear()
