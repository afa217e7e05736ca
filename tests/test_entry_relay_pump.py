"""The entry relay's pump when the other direction has closed its writer first (a peer reset, a node killed).

With uvloop (the relay's loop where installed) a write or an EOF passed on to
a closed transport raises RuntimeError ("the handler is closed"); the pump
must end quietly, as it does for a ConnectionError, not leave its task with an
exception nobody retrieves (a traceback in the daemon's log per connection).
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from harness.backends.local.entry import _event_loop, _pump


async def _closed_writer_case(data: bytes) -> None:
    left, right = socket.socketpair()
    src_a, src_b = socket.socketpair()
    try:
        _reader, writer = await asyncio.open_connection(sock=left)
        reader, _src_writer = await asyncio.open_connection(sock=src_a)
        writer.transport.abort()  # the other pump's peer reset: this writer is closed under us
        await asyncio.sleep(0)
        src_b.sendall(data)
        src_b.shutdown(socket.SHUT_WR)  # then EOF: the pump passes it on to the closed writer
        await asyncio.wait_for(_pump(reader, writer), 5)
    finally:
        for s in (right, src_b):
            s.close()


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n\r\n"], ids=["eof only", "data then eof"])
def test_the_pump_ends_quietly_on_a_writer_the_other_direction_closed(data: bytes) -> None:
    loop = _event_loop()
    try:
        loop.run_until_complete(_closed_writer_case(data))
    finally:
        loop.close()


def test_a_runtime_error_on_a_live_writer_is_not_swallowed() -> None:
    """Only a closed writer's RuntimeError is a peer gone; any other is raised."""

    class Broken:
        def can_write_eof(self) -> bool:
            return True

        def is_closing(self) -> bool:
            return False

        def write_eof(self) -> None:
            raise RuntimeError("a defect")

    async def case() -> None:
        reader = asyncio.StreamReader()
        reader.feed_eof()
        await _pump(reader, Broken())  # type: ignore[arg-type]

    with pytest.raises(RuntimeError, match="a defect"):
        asyncio.run(case())
