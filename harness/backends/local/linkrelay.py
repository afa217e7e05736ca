"""Service-link latency without netem: a delaying TCP relay in the hub namespace.

This kernel has no `sch_netem`, so the hub cannot simply delay packets on an
edge zone's uplink. Instead the hub's nftables `nat prerouting` redirects every
TCP connection between an edge zone and the Region to this relay (one listening
port per edge zone). The relay reads the connection's original destination
(SO_ORIGINAL_DST), connects there itself and copies bytes both ways, holding
each chunk for the zone's one-way delay (latency/2 each way, so a request /
response round trip grows by the configured latency, plus jitter).

Order is preserved and throughput is not serialised: each direction is a queue
of (due time, chunk); a reader enqueues chunks as they arrive and a writer
sends each once it is due, so many chunks are "in flight" at once, as on a real
long link. The config file (JSON, see `write_config`) is re-read on SIGHUP and
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
import os
import random
import signal
import socket
import struct
import sys
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


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (linger 0), so the peer sees a failure, not a clean EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Pipe:
    """One direction of a relayed connection: read → delay → write, in order."""

    def __init__(self, relay: Relay, zone: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.relay = relay
        self.zone = zone
        self.reader = reader
        self.writer = writer
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued_bytes = 0
        self.last_due = 0.0
        self.have_data = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.failed = False

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.space.wait()
                data = await self.reader.read(CHUNK)
                self._push(loop.time(), data or None)
                if not data:
                    return
        except (ConnectionError, OSError):
            self.failed = True
            self._push(loop.time(), None)

    def _push(self, now: float, data: bytes | None) -> None:
        due = max(now + self.relay.delay_s(self.zone), self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        if data:
            self.queued_bytes += len(data)
            if self.queued_bytes >= QUEUE_MAX_BYTES:
                self.space.clear()
        self.have_data.set()

    async def write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.have_data.clear()
                await self.have_data.wait()
            due, data = self.queue[0]
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            if data is None:
                if self.failed:
                    _reset(self.writer)
                elif self.writer.can_write_eof():
                    with contextlib.suppress(OSError):
                        self.writer.write_eof()
                return
            self.queued_bytes -= len(data)
            if self.queued_bytes < QUEUE_MAX_BYTES:
                self.space.set()
            self.writer.write(data)
            await self.writer.drain()


class Relay:
    """All edge zones' listeners in one asyncio process."""

    def __init__(self, config: Path, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.config = config
        self.connect_timeout_s = connect_timeout_s
        self.zones: dict[str, ZoneLink] = {}
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self.mtime = 0.0
        self.ready_file: str | None = None
        self.conns: set[asyncio.Task[None]] = set()

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
                self.servers[name] = await asyncio.start_server(
                    functools.partial(self._accept, name), host="0.0.0.0", port=link.port, reuse_address=True
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

    def _accept(self, zone: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(zone, reader, writer))
        self.conns.add(task)
        task.add_done_callback(self.conns.discard)

    async def _serve(self, zone: str, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        csock = c_writer.get_extra_info("socket")
        try:
            dst = original_dst(csock)
        except OSError as exc:
            log.warning("%s: no original destination (%s); dropping", zone, exc)
            _reset(c_writer)
            return
        _nodelay(csock)
        try:
            u_reader, u_writer = await asyncio.wait_for(asyncio.open_connection(*dst), self.connect_timeout_s)
        except (TimeoutError, OSError) as exc:
            log.debug("%s: connect %s:%d failed: %s", zone, dst[0], dst[1], exc)
            _reset(c_writer)
            return
        _nodelay(u_writer.get_extra_info("socket"))
        up = _Pipe(self, zone, c_reader, u_writer)
        down = _Pipe(self, zone, u_reader, c_writer)
        coros = (up.read_loop(), up.write_loop(), down.read_loop(), down.write_loop())
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            # done when both writers finished (each saw EOF / failure), or on any error
            writers = {tasks[1], tasks[3]}
            pending: set[asyncio.Future[None]] = set(tasks)
            while writers & pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t.exception() is not None for t in done if not t.cancelled()):
                    _reset(c_writer)
                    _reset(u_writer)
                    break
        finally:
            for t in tasks:
                t.cancel()
            for w in (c_writer, u_writer):
                w.close()

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
        for t in list(self.conns):
            t.cancel()


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
    asyncio.run(Relay(args.config, args.connect_timeout).main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
