"""Per-request records (`requests.jsonl`) written from inside a locust process.

The verifier judges availability from what users saw, request by request, and
lines them up with the chaos timeline; locust's own aggregated stats are too
coarse for that. So every request event becomes one JSON line (CONTRACTS §4,
`requests.jsonl`).

This module never imports locust: it is imported by the locustfile (inside the
gevent-patched locust process) and only *receives* locust's environment. The
harness process may import the package `harness.traffic` without dragging
gevent's monkey-patching in.

Writing: the file is opened with ``O_APPEND`` and every record is one
``os.write`` of one complete line. With ``--processes N`` several workers
append to the same file; on Linux an ``O_APPEND`` write of a few hundred bytes
to a local file lands whole at the end, so lines never interleave and nothing
is buffered in user space that a crash could lose.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

REQUESTS_FILE_ENV = "EH_REQUESTS_FILE"
"""Env var naming the file to append records to; unset = no recording."""

ENTRYPOINTS_ENV = "EH_ENTRYPOINTS"
"""Env var with a JSON object {zone: base_url}: users spread over these zones."""

ZONE_ENV = "EH_ZONE"
"""Env var naming the zone of the single --host when EH_ENTRYPOINTS is unset."""

DEFAULT_ZONE = "default"

NODE_ENV = "EH_NODE"
"""Env var naming the node the locust process runs on (a worker pod's ``spec.nodeName``, harness.traffic.inzone):
each record says it (``node``) because that node's clock stamped its ``ts``, and on EKS every node keeps its own."""

FORWARD_ENV = "EH_FORWARD_RECORDS"
"""``1`` in a locust worker that runs away from the run directory (a pod): send records to the master."""

RECORDS_MESSAGE = "eh_records"
"""The locust custom message type carrying a batch of `requests.jsonl` lines from a worker to the master."""

STOP_MESSAGE = "eh_records_stop"
"""Master -> forwarding worker when the run ends: stop your users, send every record left, then `DONE_MESSAGE`."""

DONE_MESSAGE = "eh_records_done"
"""Forwarding worker -> master, after its last batch: the number of records it sent in all."""

FORWARD_BATCH = 200
FORWARD_EVERY_S = 0.25
DONE_GRACE_S = 5.0
"""How long past locust's --stop-timeout the master waits for its workers' last records (a worker gone waits it all)."""

_log = logging.getLogger(__name__)
_dumps = json.JSONEncoder(ensure_ascii=False).encode
_MID_CACHE_MAX = 10_000  # bounded: a locustfile naming requests by URL would otherwise grow it forever


def _node_tail(node: str | None) -> str:
    """The `node` field of every line a process on `node` writes; none where the runner stamps the requests."""
    return f', "node": {_dumps(node)}' if node else ""


class RequestRecorder:
    """Appends one `requests.jsonl` line per locust request event.

    Attach with :meth:`attach` (from the locustfile's ``init`` listener). The
    entry zone and endpoint come from the request event's ``context`` (the
    user's ``context()`` merged with the per-request context): keys ``zone`` and
    ``endpoint``. A request without a zone is attributed to `default_zone`. Key
    ``request_id``: the id the request carried (`harness.contract.requestid`).
    """

    def __init__(self, path: str | os.PathLike[str], default_zone: str = DEFAULT_ZONE, node: str | None = None) -> None:
        self.path = os.fspath(path)
        self.default_zone = default_zone
        self._node_tail = _node_tail(node)
        # O_APPEND: each write lands at the current end even with several writer processes.
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._mid: dict[tuple[str, str, str], str] = {}
        self.written = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RequestRecorder | None:
        """A recorder for the file named by ``EH_REQUESTS_FILE``, or None when unset.

        Recording is opt-in so a plain ``locust -f loadtests/hashicups.py`` run
        by hand leaves no files behind.
        """
        env = os.environ if environ is None else environ
        path = env.get(REQUESTS_FILE_ENV)
        if not path:
            return None
        return cls(path, default_zone=env.get(ZONE_ENV) or DEFAULT_ZONE)

    def attach(self, environment: Any) -> None:
        """Listen to `environment.events.request`; close the file on ``quit``.

        Not on ``quitting``: locust fires that *before* it stops the users
        (`main.shutdown`: quitting, then `runner.quit()`), so the requests that
        complete in between were answered by the shop and counted in locust's
        stats but dropped here (19 records for 20 answers). ``quit`` fires after
        every user stopped; a process that never fires it closes the file at exit.
        """
        environment.events.request.add_listener(self.on_request)
        environment.events.quit.add_listener(self._on_quit)

    def _on_quit(self, **_kwargs: Any) -> None:
        self.close()

    def _on_quitting(self, **_kwargs: Any) -> None:
        """`ForwardingRecorder` (a distributed worker) still closes on ``quitting``: see its `attach`."""
        self.close()

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float | None,
        response_length: int,
        response: Any = None,
        context: dict[str, Any] | None = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        url: str | None = None,
        **_kwargs: Any,
    ) -> None:
        """Locust `request` event listener: one record, one write.

        Kept lean (cached string fields, one f-string, one syscall) because it
        runs on every request and the bench holds it to >= 0.8x of plain
        locust throughput; `json.dumps` of a dict per request cost twice as much.
        """
        fd = self._fd
        if fd is None:
            return
        os.write(fd, self.line(name, response_time, response, context, exception, start_time).encode())
        self.written += 1

    def line(
        self,
        name: str,
        response_time: float | None,
        response: Any,
        context: dict[str, Any] | None,
        exception: BaseException | None,
        start_time: float | None,
    ) -> str:
        """One `requests.jsonl` line (with its newline) for one request event."""
        ctx = context or {}
        zone = ctx.get("zone") or self.default_zone
        endpoint = ctx.get("endpoint") or name
        # The string fields repeat (a few zones x endpoints): encode them once, format the rest.
        key = (zone, endpoint, name)
        mid = self._mid.get(key)
        if mid is None:
            mid = f'"zone": {_dumps(zone)}, "endpoint": {_dumps(endpoint)}, "name": {_dumps(name)}'
            if len(self._mid) < _MID_CACHE_MAX:
                self._mid[key] = mid
        status = int(getattr(response, "status_code", None) or 0)
        latency = float(response_time or 0.0)
        if start_time is None:
            start_time = time.time() - latency / 1000.0  # locust passes it for HTTP users; custom clients may not
        rid = ctx.get("request_id")
        rid_text = "null" if rid is None else str(int(rid))
        if exception is None:
            tail = '"ok": true, "error": null'
        else:
            tail = f'"ok": false, "error": {_dumps(_error_text(exception))}'
        return (
            f'{{"ts": {float(start_time)!r}, {mid}, "status": {status}, "latency_ms": {round(latency, 3)!r}, '
            f'{tail}, "request_id": {rid_text}{self._node_tail}}}\n'
        )

    def close(self) -> None:
        """Close the file; later events are dropped (locust is shutting down)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class ForwardingRecorder(RequestRecorder):
    """A locust worker's recorder that sends its lines to the master instead of writing a file.

    For workers running where the run directory is not (pods placed in an
    entry zone, `harness.traffic.inzone`): every batch goes to the master as a
    locust custom message (`RECORDS_MESSAGE`, locust's own worker -> master
    channel), and the master's `MasterSink` appends it to ``requests.jsonl``.
    Batches leave every `FORWARD_EVERY_S` or `FORWARD_BATCH` lines, so a record
    is late by at most a fraction of a second. When the run ends the master
    asks (`STOP_MESSAGE`): the worker stops its users as locust's own stop
    does (the requests in flight get their answers within --stop-timeout),
    sends the rest and then `DONE_MESSAGE` with its count, on the one channel,
    so the count arrives after every record it counts.
    """

    def __init__(self, send: Any, default_zone: str = DEFAULT_ZONE, node: str | None = None) -> None:
        self.path = "<master>"
        self.default_zone = default_zone
        self._node_tail = _node_tail(node)
        self._fd = None
        self._mid = {}
        self.written = 0
        self._send = send
        self._buf: list[str] = []
        self._last = time.monotonic()
        self._open = True

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float | None,
        response_length: int,
        response: Any = None,
        context: dict[str, Any] | None = None,
        exception: BaseException | None = None,
        start_time: float | None = None,
        url: str | None = None,
        **_kwargs: Any,
    ) -> None:
        if not self._open:
            return
        self._buf.append(self.line(name, response_time, response, context, exception, start_time))
        self.written += 1
        if len(self._buf) >= FORWARD_BATCH or time.monotonic() - self._last >= FORWARD_EVERY_S:
            self.flush()

    def flush(self, **_kwargs: Any) -> None:
        """Send what is buffered (also the locust `test_stop` listener)."""
        self._last = time.monotonic()
        if self._buf:
            batch, self._buf = self._buf, []
            self._send(RECORDS_MESSAGE, batch)

    def on_stop_message(self, environment: Any = None, **_kwargs: Any) -> None:
        """The master's `STOP_MESSAGE`: stop the users (their last records come in), send them, then the count."""
        environment.runner.stop()  # what locust's own "stop" message does; fires test_stop, which flushes
        self.flush()
        self._send(DONE_MESSAGE, self.written)

    def attach(self, environment: Any) -> None:
        environment.events.request.add_listener(self.on_request)
        environment.events.test_stop.add_listener(self.flush)
        environment.events.quitting.add_listener(self._on_quitting)
        environment.runner.register_message(STOP_MESSAGE, self.on_stop_message)

    def close(self) -> None:
        if self._open:
            self.flush()
        self._open = False


class MasterSink:
    """The master's side: append each batch a worker forwarded to the run's ``requests.jsonl``.

    Locust's master, once the run ends, tells its workers to quit and waits
    0.5 s for them: the records of requests still in flight then (answered
    within --stop-timeout, 2 s) came after it and were lost, as was everything
    after ``quitting`` when a SIGINT ended the run (the file closed there,
    before the workers were told anything). So on ``test_stop``, before locust
    sends its quit, the sink asks every worker for the rest (`STOP_MESSAGE`)
    and waits for each one's `DONE_MESSAGE`, at most --stop-timeout plus
    `DONE_GRACE_S`; it closes the file on ``quit``, after the runner quit.
    A worker that never answers, or whose count is more than arrived, is
    logged by name (``missing``: the records it may have lost).
    """

    def __init__(self, path: str | os.PathLike[str], grace_s: float = DONE_GRACE_S) -> None:
        self.path = os.fspath(path)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.received = 0
        self.grace_s = grace_s
        self.by_worker: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.missing: dict[str, str] = {}

    def on_message(self, environment: Any = None, msg: Any = None, **_kwargs: Any) -> None:
        lines = getattr(msg, "data", None) or []
        if self._fd is None or not lines:
            return
        os.write(self._fd, "".join(str(x) for x in lines).encode())  # one write: lines never interleave
        self.received += len(lines)
        node = str(getattr(msg, "node_id", ""))
        self.by_worker[node] = self.by_worker.get(node, 0) + len(lines)

    def on_done(self, environment: Any = None, msg: Any = None, **_kwargs: Any) -> None:
        self.done[str(getattr(msg, "node_id", ""))] = int(getattr(msg, "data", 0) or 0)

    def collect(self, environment: Any = None, **_kwargs: Any) -> None:
        """Ask each connected worker for its last records and wait for them (the master's ``test_stop``)."""
        runner = environment.runner
        workers = [str(c.id) for c in runner.clients.all if getattr(c, "state", "") != "missing"]
        for w in workers:
            runner.send_message(STOP_MESSAGE, None, client_id=w)
        wait_s = float(getattr(environment, "stop_timeout", 0) or 0) + self.grace_s
        deadline = time.monotonic() + wait_s
        while any(w not in self.done for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)  # gevent's in a locust process: the master's receiver runs meanwhile
        for w in workers:
            got = self.by_worker.get(w, 0)
            if w not in self.done:
                self.missing[w] = f"no answer within {wait_s:g} s"
            elif self.done[w] > got:
                self.missing[w] = f"sent {self.done[w]} records, {got} arrived"
        for w, why in self.missing.items():
            _log.warning("worker %s: its last records are missing from %s (%s)", w, self.path, why)

    def close(self, **_kwargs: Any) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def attach_from_env(environment: Any, environ: Mapping[str, str] | None = None) -> None:
    """Wire recording into one locust process (the locustfile's ``init`` listener calls this).

    - ``EH_FORWARD_RECORDS=1`` (a worker pod in an entry zone): forward every
      record to the master;
    - a master (``--master``, or ``--processes``' parent) with ``EH_REQUESTS_FILE``:
      receive forwarded records into that file (a master fires no request events);
    - any other process with ``EH_REQUESTS_FILE``: append to it (local users,
      ``--processes`` workers).
    """
    env = os.environ if environ is None else environ
    runner = getattr(environment, "runner", None)
    if env.get(FORWARD_ENV) == "1":
        if runner is None or not hasattr(runner, "send_message"):
            raise RuntimeError(f"{FORWARD_ENV}=1 needs a locust worker (--worker)")
        ForwardingRecorder(runner.send_message, env.get(ZONE_ENV) or DEFAULT_ZONE, env.get(NODE_ENV) or None).attach(
            environment
        )
        return
    path = env.get(REQUESTS_FILE_ENV)
    if not path:
        return
    if runner is not None and type(runner).__name__ == "MasterRunner":
        sink = MasterSink(path)
        runner.register_message(RECORDS_MESSAGE, sink.on_message)
        if not getattr(getattr(environment, "parsed_options", None), "processes", None):
            # --master: workers elsewhere forward their records (--processes' children write the file themselves)
            runner.register_message(DONE_MESSAGE, sink.on_done)
            environment.events.test_stop.add_listener(sink.collect)
        environment.events.quit.add_listener(sink.close)
        return
    RequestRecorder(path, default_zone=env.get(ZONE_ENV) or DEFAULT_ZONE).attach(environment)


def _error_text(exc: BaseException) -> str:
    """A short, single-line description (tracebacks would bloat millions of lines)."""
    text = str(exc) or type(exc).__name__
    text = text.replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def parse_entrypoints(raw: str | None) -> dict[str, str]:
    """Parse ``EH_ENTRYPOINTS`` (JSON {zone: base_url}); empty dict when unset.

    Raises ValueError with a clear message on anything else, because a typo
    there would otherwise silently send all traffic to one zone.
    """
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ENTRYPOINTS_ENV}: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{ENTRYPOINTS_ENV}: expected a non-empty JSON object {{zone: base_url}}")
    out: dict[str, str] = {}
    for zone, url in data.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"{ENTRYPOINTS_ENV}: zone {zone!r}: base URL must be http(s)://..., got {url!r}")
        out[str(zone)] = url.rstrip("/")
    return out
