"""Sidecar access logs followed through the API, across container restarts (the kind/existing log sources)."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
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


class KubeLogSource(LogSource):
    """One sidecar's access-log lines, followed through the API across container restarts.

    A follow stream ends when the container restarts (or the connection
    drops); the source re-opens it with sinceTime = the last line's second
    and drops lines it already delivered (same timestamp and text), so a
    restart neither loses nor duplicates lines. It stops for good when the
    pod is gone. `read()` never blocks: a background thread does the following.
    """

    def __init__(
        self,
        pod: str,
        namespace: str,
        container: str = DATAPLANE_CONTAINER,
        *,
        cluster: KubeApi | None = None,
        opener: LogOpener | None = None,
        retry_s: float = 1.0,
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

    def _run(self) -> None:
        while not self._stop.is_set():
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
        self._finished.set()


class KubeLogSources:
    """The set of sidecar log sources of a cluster, stable across calls.

    `log_sources()` is called repeatedly to pick up new pods; returning the
    same object for a pod already followed is what keeps lines from being
    delivered twice. Finished sources (pod gone, all lines read) are dropped.
    """

    def __init__(self, cluster: KubeApi, container: str = DATAPLANE_CONTAINER) -> None:
        self.cluster = cluster
        self.container = container
        self._sources: dict[tuple[str, str], KubeLogSource] = {}
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
                    self._sources[key] = KubeLogSource(key[1], key[0], self.container, cluster=self.cluster)
            for key, src in list(self._sources.items()):
                if src.finished:
                    del self._sources[key]
            return list(self._sources.values())

    def known(self) -> list[KubeLogSource]:
        """The sources followed now (without listing pods again)."""
        with self._lock:
            return list(self._sources.values())

    def close(self) -> None:
        with self._lock:
            for src in self._sources.values():
                src.close()
            self._sources.clear()
