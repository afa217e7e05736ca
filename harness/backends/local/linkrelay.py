"""Service-link latency without netem: a delaying TCP relay in the hub namespace.

This kernel has no `sch_netem`, so the hub cannot simply delay packets on an
edge zone's uplink. Instead the hub's nftables `nat prerouting` redirects every
TCP connection between an edge zone and the Region to this relay (one listening
port per edge zone). The relay reads the connection's original destination
(SO_ORIGINAL_DST), connects there itself and copies bytes both ways, holding
each chunk for the zone's one-way delay (latency/2 each way, so a request /
response round trip grows by the configured latency, plus jitter).

Order is preserved and throughput is not serialised: each direction is a queue
of (due time, chunk) that one timer drains as chunks fall due, so many chunks
are "in flight" at once, as on a real long link. The relay is asyncio
protocols on uvloop (when installed), not streams and tasks: a chunk with no
delay goes from one socket's callback straight to the other's write, so the
relay costs about 20-30 us of CPU per request/response (bench/bench_relay.py).
The config file (JSON, see `write_config`) is re-read on SIGHUP and
when its mtime changes; delays are looked up per chunk, so `set_link` affects
existing connections as well as new ones.

Known differences from netem: the client's TCP handshake completes at the relay
(connect itself is not delayed), and a refused upstream shows up as a reset
right after connect rather than as a refused connect.

Run as ``python .../linkrelay.py --config FILE`` inside the hub namespace (the
module imports nothing of the harness, so it starts fast as a plain script;
``python -m harness.backends.local.linkrelay`` works too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SO_ORIGINAL_DST = 80
CHUNK = 65536
QUEUE_MAX_BYTES = 4 * 1024 * 1024  # per direction: beyond this the reader waits (backpressure)
CONNECT_TIMEOUT_S = 10.0

log = logging.getLogger("linkrelay")


@dataclass
class ZoneLink:
    """One edge zone's relay settings."""

    port: int
    latency_ms: float = 0.0
    jitter_ms: float = 0.0

    def one_way_delay_s(self) -> float:
        half = self.latency_ms / 2.0
        if self.jitter_ms > 0:
            half += random.uniform(-self.jitter_ms / 2.0, self.jitter_ms / 2.0)
        return max(0.0, half) / 1000.0


def write_config(path: Path, zones: dict[str, ZoneLink], ready_file: Path | None = None, generation: int = 0) -> None:
    """Write the relay's config atomically (the relay may read it at any time).

    After applying it the relay writes `generation` to `ready_file`, which is how
    the writer knows a change has taken effect.
    """
    doc: dict[str, Any] = {
        "generation": generation,
        "zones": {
            name: {"port": link.port, "latency_ms": link.latency_ms, "jitter_ms": link.jitter_ms}
            for name, link in zones.items()
        },
    }
    if ready_file is not None:
        doc["ready_file"] = str(ready_file)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_config(path: Path) -> tuple[dict[str, ZoneLink], str | None, int]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    zones = {
        name: ZoneLink(
            port=int(z["port"]), latency_ms=float(z.get("latency_ms", 0.0)), jitter_ms=float(z.get("jitter_ms", 0.0))
        )
        for name, z in doc.get("zones", {}).items()
    }
    return zones, doc.get("ready_file"), int(doc.get("generation", 0))


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The (ip, port) a redirected connection was originally addressed to."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    ip = socket.inet_ntoa(raw[4:8])
    return ip, port


def _nodelay(sock: Any) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Close with RST (linger 0), so the peer sees a failure, not a clean EOF."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _Side(asyncio.Protocol):
    """One socket of a relayed connection; what its peer reads is written here after the link's delay.

    Protocols and callbacks, not streams and tasks: a chunk that needs no
    delay is written to the other socket from inside `data_received`, the
    cheapest path asyncio has (a userspace relay pays per chunk, and a mesh's
    requests and responses are small ones). A delayed chunk joins this side's
    queue; one timer per side writes every chunk that is due, in order.
    Backpressure: the peer stops reading while this side's queue holds more
    than QUEUE_MAX_BYTES or its socket's send buffer is full.
    """

    def __init__(self, conn: _Conn, name: str) -> None:
        self.conn = conn
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.queue: deque[tuple[float, bytes | None]] = deque()  # None: end of stream
        self.queued_bytes = 0
        self.last_due = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.read_paused = False
        self.gone = False
        self.early: list[bytes | None] = []  # read before the upstream connection existed

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport.get_extra_info("socket"))
        if self.name == "client":
            self._pause_reading()  # nothing is read until the upstream connection exists
            self.conn.task = self.conn.loop.create_task(self.conn.connect_upstream())

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.send(data)
        elif not self.conn.connected:
            self.early.append(data)  # a loop may deliver bytes before the pause took effect: keep them

    def eof_received(self) -> bool:
        if self.peer is not None:
            self.peer.send(None)
        elif not self.conn.connected:
            self.early.append(None)
        return True  # keep our write side open: the other direction may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.lost(self, failed=exc is not None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._backpressure()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._backpressure()

    # -- relaying ------------------------------------------------------------
    def send(self, data: bytes | None) -> None:
        """Write `data` (None: end of stream) to this side once the link's delay has passed.

        Due times are on `time.monotonic()`, not `loop.time()`: uvloop's loop time is
        libuv's, cached at the start of a loop iteration and in whole milliseconds, and
        its timers round to the millisecond, so a chunk timed by it could leave up to a
        few milliseconds early under load (an 80 ms link measured 79.9 ms). A link's
        latency is a floor, as with netem: `_flush` never writes a chunk before it is due.
        """
        now = time.monotonic()
        due = max(now + self.conn.relay.delay_s(self.conn.zone), self.last_due)
        self.last_due = due
        if due <= now and not self.queue:
            self._write(data)  # no delay and nothing before it: straight through
            return
        self.queue.append((due, data))
        if data:
            self.queued_bytes += len(data)
            self._backpressure()
        if self.timer is None:
            self._arm(now)

    def _arm(self, now: float) -> None:
        """Wake when the head of the queue falls due (rounded up to the loop's millisecond)."""
        wait = max(0.0, self.queue[0][0] - now)
        self.timer = self.conn.loop.call_later(math.ceil(wait * 1000.0) / 1000.0, self._flush)

    def _flush(self) -> None:
        self.timer = None
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data:
                self.queued_bytes -= len(data)
            self._write(data)
        self._backpressure()
        if self.queue:
            self._arm(now)  # not yet due (or woken early): wait for the rest

    def _write(self, data: bytes | None) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if data is not None:
            t.write(data)
        elif self.conn.failed:
            _abort(t)  # the other side was reset: so is this one
        else:
            if t.can_write_eof():
                with contextlib.suppress(OSError):
                    t.write_eof()
            self.conn.half_closed(self)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.read_paused and not self.transport.is_closing():
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    def _backpressure(self) -> None:
        peer = self.peer
        if peer is None:
            return
        if self.write_paused or self.queued_bytes >= QUEUE_MAX_BYTES:
            peer._pause_reading()
        elif self.conn.connected:
            peer._resume_reading()


class _Conn:
    """A relayed connection: the client side (accepted) and the upstream side (connected by us)."""

    def __init__(self, relay: Relay, zone: str, loop: asyncio.AbstractEventLoop) -> None:
        self.relay = relay
        self.zone = zone
        self.loop = loop
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.failed = False
        self.connected = False
        self.write_closed: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def connect_upstream(self) -> None:
        """Connect to the redirected connection's original destination, then let bytes flow."""
        client = self.client
        assert client.transport is not None
        try:
            dst = original_dst(client.transport.get_extra_info("socket"))
        except OSError as exc:
            log.warning("%s: no original destination (%s); dropping", self.zone, exc)
            _abort(client.transport)
            return
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: self.upstream, dst[0], dst[1]), self.relay.connect_timeout_s
            )
        except (TimeoutError, OSError) as exc:
            log.debug("%s: connect %s:%d failed: %s", self.zone, dst[0], dst[1], exc)
            _abort(client.transport)
            return
        if client.gone:
            _abort(self.upstream.transport)
            return
        self.relay.conns.add(self)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.connected = True
        # bytes either side sent before both were wired (a server's greeting can arrive with the connect)
        for side in (client, self.upstream):
            early, side.early = side.early, []
            for data in early:
                assert side.peer is not None
                side.peer.send(data)
        client._resume_reading()

    def lost(self, side: _Side, failed: bool) -> None:
        """One socket is gone: a reset travels on as a reset, a close as an end of stream (both delayed)."""
        other = side.peer
        side.peer = None
        if other is None:
            self._forget()
            return
        other.peer = None
        if failed:
            self.failed = True
        other.send(None)  # after what is queued for it; written as RST when failed
        if not failed and other.transport is not None:
            self._close_when_drained(other)
        self._forget()

    def half_closed(self, side: _Side) -> None:
        """Both directions ended cleanly: close both sockets."""
        self.write_closed.add(side.name)
        if len(self.write_closed) == 2:
            for s in (self.client, self.upstream):
                if s.transport is not None and not s.transport.is_closing():
                    s.transport.close()

    def _close_when_drained(self, side: _Side) -> None:
        if side.queue or side.timer is not None:
            self.loop.call_later(0.05, self._close_when_drained, side)
        elif side.transport is not None and not side.transport.is_closing():
            side.transport.close()

    def _forget(self) -> None:
        if self.client.gone and self.upstream.gone:
            self.relay.conns.discard(self)


class Relay:
    """All edge zones' listeners in one asyncio process."""

    def __init__(self, config: Path, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.config = config
        self.connect_timeout_s = connect_timeout_s
        self.zones: dict[str, ZoneLink] = {}
        self.servers: dict[str, asyncio.Server] = {}
        self.mtime = 0.0
        self.ready_file: str | None = None
        self.conns: set[_Conn] = set()

    def delay_s(self, zone: str) -> float:
        link = self.zones.get(zone)
        return link.one_way_delay_s() if link is not None else 0.0

    async def reload(self) -> None:
        try:
            st = self.config.stat()
            zones, ready, generation = read_config(self.config)
        except (OSError, ValueError, KeyError) as exc:
            log.error("cannot read %s: %s", self.config, exc)
            return
        self.mtime = st.st_mtime
        self.ready_file = ready
        for name, link in zones.items():
            old = self.zones.get(name)
            if name not in self.servers or (old is not None and old.port != link.port):
                if name in self.servers:
                    self.servers.pop(name).close()
                loop = asyncio.get_running_loop()
                self.servers[name] = await loop.create_server(
                    functools.partial(self._client_side, name, loop),
                    host="0.0.0.0",
                    port=link.port,
                    reuse_address=True,
                )
            self.zones[name] = link
        for name in list(self.servers):
            if name not in zones:
                self.servers.pop(name).close()
                self.zones.pop(name, None)
        log.info("config %d: %s", generation, {z: (k.port, k.latency_ms, k.jitter_ms) for z, k in self.zones.items()})
        if self.ready_file:
            tmp = Path(self.ready_file + ".tmp")
            tmp.write_text(f"{generation} {os.getpid()}\n")
            os.replace(tmp, self.ready_file)

    def _client_side(self, zone: str, loop: asyncio.AbstractEventLoop) -> _Side:
        return _Conn(self, zone, loop).client

    async def watch(self) -> None:
        """Poll the config's mtime: a fallback for a SIGHUP that raced a write."""
        while True:
            await asyncio.sleep(0.5)
            with contextlib.suppress(OSError):
                if self.config.stat().st_mtime != self.mtime:
                    await self.reload()

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        await self.reload()
        if not self.servers and not self.zones:
            log.warning("no zones configured")
        watcher = loop.create_task(self.watch())
        await stop.wait()
        watcher.cancel()
        for s in self.servers.values():
            s.close()
        for c in list(self.conns):
            _abort(c.client.transport)
            _abort(c.upstream.transport)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="linkrelay", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--verbose", action="store_true")
    # users' access links (access.py) fail fast like the entry relay; the service link waits like a mesh connect
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT_S)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s linkrelay %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop  # libuv's loop: about half the per-chunk cost of asyncio's own

        uvloop.run(Relay(args.config, args.connect_timeout).main())
    except ImportError:
        asyncio.run(Relay(args.config, args.connect_timeout).main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
