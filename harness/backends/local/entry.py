"""User entry into a zone from the host, without touching the host's routes.

Pod IPs exist only inside the local backend's namespaces. Users (locust, curl,
the tests) reach a zone's frontend through an `EntryRelay`: it listens on the
host's loopback, and for each accepted connection opens a socket *created in
the hub namespace* (see `netns.socket_in`), connects to one of the zone's live
frontend pods (round-robin; the control loop keeps the list current with
`set_backends`) and copies bytes both ways. Hub-originated traffic is not
subject to zone partitions or service-link rules, just as users of an edge zone
enter it directly rather than through the Region.

When a frontend pod dies, `drop_backend` resets every client connection relayed
to it, as a zone's load balancer resets connections to a deregistered target:
without it, a user on a kept-alive connection would send its next request into
a namespace that no longer exists and wait for its own timeout (a minute with
locust's defaults), and the run would record no request from that zone at all.

It runs an event loop (uvloop's) on its own thread, so it works inside any caller
(the harness CLI, pytest) without owning their main thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import threading
from concurrent.futures import Future

from harness.backends.local.network.netns import NetnsExecutor
from harness.errors import BackendError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0  # pods sit on a local bridge: a live one answers in well under a millisecond
CHUNK = 65536


def _nodelay(sock: socket.socket | None) -> None:
    # small request/response traffic: without it, keep-alive responses can wait ~40 ms
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop (a dependency, as for the link relay), else asyncio's own.

    Every user request and zone probe crosses this relay, about half of the
    daemon's CPU in a run (a Python relay pays per chunk); uvloop's loop took
    a fifth off it (0.61-0.69 -> 0.51-0.55 ms of the daemon's CPU per request,
    side by side), and the machine's busy share decides how fast the probes may run.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy `reader` into `writer` until EOF, then pass the EOF on; a peer gone ends it quietly.

    The other direction's pump may have closed `writer` already (its peer
    reset). uvloop then raises RuntimeError ("the handler is closed") where
    asyncio's own loop raises nothing or ConnectionError: left uncaught, each
    such connection ended its relay task with "Task exception was never
    retrieved" and a traceback in the daemon's log (hundreds per node kill).
    """
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()
    except RuntimeError:
        if not writer.is_closing():  # not uvloop's closed handle: a defect, not a peer gone
            raise


class EntryRelay:
    """A loopback listener that forwards each connection to a live pod of one zone."""

    def __init__(self, netns: str, listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self.netns = netns
        self.listen_host = listen_host
        self.port = port
        self._backends: list[tuple[str, int]] = []
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sockets: NetnsExecutor | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._relayed: dict[asyncio.Task[None], tuple[str, asyncio.StreamWriter, asyncio.StreamWriter]] = {}
        self.dropped = 0  # client connections reset because their pod went away
        self.connections = 0  # accepted so far
        self.failures = 0  # accepted but no backend reachable

    @property
    def url(self) -> str:
        if self._server is None:
            raise BackendError("entry relay not started")
        return f"http://{self.listen_host}:{self.port}"

    def set_backends(self, backends: list[tuple[str, int]]) -> None:
        """The zone's live (ready) frontend endpoints; new connections use only these."""
        with self._lock:
            self._backends = list(backends)

    def backends(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._backends)

    def drop_backend(self, ip: str) -> None:
        """The pod at `ip` is gone: stop using it and reset every client connection relayed to it."""
        with self._lock:
            self._backends = [b for b in self._backends if b[0] != ip]
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def reset() -> None:
            for task, (addr, c_writer, u_writer) in list(self._relayed.items()):
                if addr == ip:
                    self.dropped += 1
                    c_writer.transport.abort()  # RST to the user: the request fails now, not after a timeout
                    u_writer.transport.abort()
                    task.cancel()

        with contextlib.suppress(RuntimeError):  # loop stopped meanwhile
            loop.call_soon_threadsafe(reset)

    def start(self) -> None:
        if self._thread is not None:
            return
        # one long-lived thread inside the hub creates the upstream sockets (cheaper than a thread each)
        self._sockets = NetnsExecutor(self.netns, max_workers=1, thread_name_prefix=f"entry-{self.netns}")
        loop = _event_loop()
        self._loop = loop
        started: Future[None] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"entry-relay-{self.port}", daemon=True)
        self._thread.start()
        try:
            started.result(timeout=10)
        except BaseException:
            self._thread.join(timeout=5)
            self._thread = None
            self._sockets.shutdown(wait=False)
            self._sockets = None
            raise

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close the listener and every relayed connection; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.sleep(0)

        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
                loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if self._sockets is not None:
            self._sockets.shutdown(wait=False)
        self._loop = self._thread = self._sockets = None
        self._server = None

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _connect(self) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Try the backends round-robin, starting at the next one; None if none answers."""
        candidates = self.backends()
        if not candidates:
            return None
        start = next(self._rr)
        loop = asyncio.get_running_loop()
        assert self._sockets is not None
        for i in range(len(candidates)):
            addr = candidates[(start + i) % len(candidates)]
            sock = await loop.run_in_executor(self._sockets, socket.socket, socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, addr), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                log.debug("entry: %s:%d unreachable: %s", addr[0], addr[1], exc)
                sock.close()
                continue
            _nodelay(sock)
            reader, writer = await asyncio.open_connection(sock=sock)
            return addr[0], reader, writer
        return None

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _nodelay(c_writer.get_extra_info("socket"))
        upstream = await self._connect()
        if upstream is None:
            self.failures += 1
            c_writer.transport.abort()
            return
        ip, u_reader, u_writer = upstream
        task = asyncio.current_task()
        assert task is not None
        self._relayed[task] = (ip, c_writer, u_writer)
        try:
            await asyncio.gather(_pump(c_reader, u_writer), _pump(u_reader, c_writer))
        finally:
            self._relayed.pop(task, None)
            for w in (c_writer, u_writer):
                w.close()
