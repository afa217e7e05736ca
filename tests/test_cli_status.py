"""`harness status` prints every zone's entry point and whether it answers now.

A fake backend stands in for the cluster; the entry points are real HTTP
servers on loopback (one serving, one failing with 503, one port nobody
listens on), so "answers" is measured, not assumed.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import harness.backends
from harness.backends.base import Status
from harness.cli import main
from harness.errors import BackendError
from harness.status import probe_entrypoints


class _Handler(BaseHTTPRequestHandler):
    code = 200

    def do_GET(self) -> None:
        body = b"<html>HashiCups</html>"
        self.send_response(self.server.code)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _server(code: int) -> ThreadingHTTPServer:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.code = code  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens there


@pytest.fixture
def entry() -> Iterator[dict[str, str]]:
    ok, failing = _server(200), _server(503)
    try:
        yield {
            "us-west-2-lax-1a": f"http://127.0.0.1:{ok.server_address[1]}",
            "us-west-2-las-1a": f"http://127.0.0.1:{failing.server_address[1]}",
            "us-west-2-phx-2a": f"http://127.0.0.1:{_closed_port()}",
        }
    finally:
        ok.shutdown()
        failing.shutdown()


class StatusBackend:
    name = "local"

    def __init__(self, up: bool, entry: dict[str, str] | None, err: str = "") -> None:
        self.up, self.entry, self.err, self.closed = up, entry or {}, err, False

    def status(self) -> Status:
        return Status("local", self.up, "16 pods" if self.up else "not up", {"frontend-lax-1a-0": "Ready"})

    def entrypoints(self) -> dict[str, str]:
        if self.err:
            raise BackendError(self.err)
        return self.entry

    def close(self) -> None:
        self.closed = True


def _use(monkeypatch: pytest.MonkeyPatch, b: StatusBackend) -> None:
    monkeypatch.setattr(harness.backends, "connect", lambda opts: b)


def test_status_prints_each_entry_point_and_whether_it_answers(
    entry: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    b = StatusBackend(True, entry)
    _use(monkeypatch, b)
    assert main(["status", "--backend", "local"]) == 0
    out = capsys.readouterr().out
    lines = {z: next(line for line in out.splitlines() if z in line) for z in entry}
    for zone, url in entry.items():
        assert url in lines[zone]
    assert "yes: HTTP 200 in" in lines["us-west-2-lax-1a"]
    assert "yes: HTTP 503 in" in lines["us-west-2-las-1a"]
    assert "no: connection refused" in lines["us-west-2-phx-2a"]
    assert b.closed


def test_status_json_carries_the_entry_points(
    entry: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, StatusBackend(True, entry))
    assert main(["status", "--backend", "local", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    got = {e["zone"]: (e["url"], e["answers"], e["ok"], e["status"]) for e in doc["entrypoints"]}
    assert got == {
        "us-west-2-lax-1a": (entry["us-west-2-lax-1a"], True, True, 200),
        "us-west-2-las-1a": (entry["us-west-2-las-1a"], True, False, 503),
        "us-west-2-phx-2a": (entry["us-west-2-phx-2a"], False, False, None),
    }
    assert doc["pods"] == {"frontend-lax-1a-0": "Ready"}


def test_status_of_a_cluster_that_is_down_probes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, StatusBackend(False, {"us-west-2-lax-1a": "http://127.0.0.1:9"}))
    assert main(["status", "--backend", "local"]) == 3
    out = capsys.readouterr().out
    assert "local: down" in out and "Entry points" not in out


def test_status_says_why_when_the_backend_cannot_list_entry_points(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use(monkeypatch, StatusBackend(True, None, err="no entry point for us-west-2-lax-1a: pass --entrypoint"))
    assert main(["status", "--backend", "local"]) == 0
    assert "entry points: unknown (no entry point for us-west-2-lax-1a: pass --entrypoint)" in capsys.readouterr().out


def test_zones_are_probed_at_once_so_a_dead_zone_costs_one_timeout() -> None:
    # every request waits at a barrier for all three: answered 200 only if the probes are in flight together
    # (one after the other, the first breaks the barrier after its 30 s: the bound only says how soon a
    # sequential prober fails, so it is far above how long three threads may take to start on a starved CPU)
    barrier = threading.Barrier(3)

    class Meet(_Handler):
        def do_GET(self) -> None:
            try:
                barrier.wait(timeout=30)
                self.server.code = 200  # type: ignore[attr-defined]
            except threading.BrokenBarrierError:
                self.server.code = 500  # type: ignore[attr-defined]
            super().do_GET()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Meet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        states = probe_entrypoints({"a": url, "b": url, "c": url}, timeout_s=60)
    finally:
        srv.shutdown()
    assert [(s.zone, s.status) for s in states] == [("a", 200), ("b", 200), ("c", 200)]


def test_an_entry_that_accepts_but_never_answers_times_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        (state,) = probe_entrypoints({"z": f"http://127.0.0.1:{s.getsockname()[1]}"}, timeout_s=0.3)
    assert not state.answers and state.detail == "timed out after 0.3 s", state
