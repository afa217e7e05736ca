"""The port-forward relay (`ForwardRelay`) answers through a forward whose pod went, and waits for a slow answer.

Two ways it answered "Server disconnected" (httpx: a connection closed with no byte back), both seen only under
heavy load in the flow tests:
- kubectl watches nothing: after its pod is gone it keeps listening, accepts the next connection, closes it
  without a byte and exits "lost connection to pod" (client-go tools/portforward handleConnection). The relay
  reused such a forward because its process was alive. The fake kubectl hid this behind a 0.1 s pod watch that
  kubectl does not have, so the relay met a stale forward only when load delayed that watch.
- the relay's 10 s connect timeout stayed on the connection and cut any answer slower than that.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kube.forward import ForwardRelay
from tests import kubesim_tools
from tests.conftest import wait_until
from tests.kubefake import NODES, FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

pytestmark = pytest.mark.slow  # the simulated cluster runs in real time: seconds each


def _get(port: int, timeout_s: float | None = 30.0) -> bytes:
    """One HTTP/1.0 GET to loopback `port`: everything that came back (b"" is an empty reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def _app(name: str, kind: str = "Deployment") -> dict[str, Any]:
    """A one-replica Deployment (or a bare Pod) serving HTTP on port 80 in namespace n."""
    labels = {"app": name, "edge-harness.io/zone": "us-west-2a"}
    spec = {"containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 80}]}]}
    if kind == "Pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "n", "labels": labels},
                "spec": {**spec, "nodeName": NODES[0]["metadata"]["name"]}}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "n"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels},
                                                                                 "spec": spec}},
    }  # fmt: skip


@pytest.fixture
def fake_kubectl(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The fake kubectl (tests.kubesim_tools) against `api`, as the relay's kubectl argv."""
    kubesim_tools.install(tmp_path / "bin", ("kubectl",))
    monkeypatch.setenv("FAKE_API", api.url)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # the cluster's admin
    return [str(tmp_path / "bin" / "kubectl")]


def _ready(api: FakeApiServer, tmp_path: Path, uid_not: str = "") -> list[dict[str, Any]]:
    c = api.cluster(tmp_path)
    return [
        p
        for p in c.pods("n")
        if p["metadata"]["uid"] != uid_not
        and any(x.get("type") == "Ready" and x.get("status") == "True" for x in p["status"].get("conditions") or [])
    ]


def _instance_gone(api: FakeApiServer, uid: str) -> bool:
    run = api.sim.pods.get(uid)
    return run is None or run.current is None or not run.current.alive


def test_the_relay_answers_through_a_fresh_forward_when_its_pod_was_replaced(
    api: FakeApiServer, tmp_path: Path, fake_kubectl: list[str]
) -> None:
    """The forward's pod is replaced between two requests: the second is answered by the new pod (on HEAD, the
    relay handed it to the still-running kubectl, which closed it unanswered: an empty reply)."""
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _app("a"))
    assert wait_until(lambda: bool(_ready(api, tmp_path)), 60)
    (old,) = _ready(api, tmp_path)
    relay = ForwardRelay(fake_kubectl, "n", "deployment/a", 80)
    try:
        assert _get(relay.port).startswith(b"HTTP/1.")
        first = relay._forward
        assert first is not None and first.alive
        c.delete_pod("n", old["metadata"]["name"])
        uid = old["metadata"]["uid"]
        assert wait_until(lambda: _instance_gone(api, uid) and bool(_ready(api, tmp_path, uid_not=uid)), 60)
        assert first.alive  # kubectl learns it only from a connection (no watch): the stale forward is still up
        assert _get(relay.port).startswith(b"HTTP/1."), relay.errors
        assert relay.restarts == 1 and relay._forward is not first
        assert not first.alive  # the old one met the request, closed it unanswered and was let go
        assert _get(relay.port).startswith(b"HTTP/1.")  # and the new one stays
        assert relay.restarts == 1
    finally:
        relay.close()


def test_the_relay_still_closes_a_connection_no_forward_can_answer(
    api: FakeApiServer, tmp_path: Path, fake_kubectl: list[str]
) -> None:
    """Control: a bare pod, deleted: no forward can reach it, so the client still gets nothing (as on HEAD), and
    `errors`, which `Backend._unreachable` reports, now says why (on HEAD it was empty: the stale forward's
    connect had succeeded)."""
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _app("b", kind="Pod"))
    assert wait_until(lambda: bool(_ready(api, tmp_path)), 60)
    (pod,) = _ready(api, tmp_path)
    relay = ForwardRelay(fake_kubectl, "n", "pod/b", 80)
    try:
        assert _get(relay.port).startswith(b"HTTP/1.")
        c.delete_pod("n", "b")
        assert wait_until(lambda: _instance_gone(api, pod["metadata"]["uid"]) and not c.pods("n"), 60)
        assert _get(relay.port) == b""
        assert relay.errors and 'pods "b" not found' in relay.errors[-1]
    finally:
        relay.close()


_PIPE_KUBECTL = """
import os, socket, sys, threading
lsock = socket.socket()
lsock.bind(("127.0.0.1", 0))
lsock.listen(8)
print(f"Forwarding from 127.0.0.1:{lsock.getsockname()[1]} -> {sys.argv[-1].lstrip(':')}", flush=True)
def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    conn, _ = lsock.accept()
    up = socket.create_connection(("127.0.0.1", int(os.environ["PIPE_TO"])))
    threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
    threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
"""


@pytest.fixture
def held_server() -> Iterator[tuple[int, threading.Event, threading.Event]]:
    """An HTTP server that answers only once `release` is set (`asked` says the request arrived)."""
    asked, release = threading.Event(), threading.Event()

    class Held(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.set()
            release.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Held)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1]), asked, release
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_the_relay_waits_for_an_answer_slower_than_its_connect_timeout(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    held_server: tuple[int, threading.Event, threading.Event],
) -> None:
    """An answer that comes after the relay's connect timeout still reaches the client (on HEAD the timeout stayed
    on the connection: the relay cut it, an empty reply). The timeout is shrunk to 0.3 s so the test is short;
    the answer is held until twice that has passed, so a timeout left on the connection always fires first."""
    port, asked, release = held_server
    script = tmp_path / "kubectl"
    script.write_text(f"#!{sys.executable}\n{_PIPE_KUBECTL}")
    script.chmod(0o755)
    monkeypatch.setenv("PIPE_TO", str(port))
    real = socket.create_connection

    def short(address: Any, timeout: Any = None, *args: Any, **kw: Any) -> socket.socket:
        return real(address, 0.3 if isinstance(timeout, int | float) else timeout, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", short)
    relay = ForwardRelay([str(script)], "n", "svc/held", 80)
    out: list[bytes] = []
    try:
        client = threading.Thread(target=lambda: out.append(_get(relay.port, timeout_s=None)), daemon=True)
        client.start()
        assert asked.wait(30)
        threading.Event().wait(0.6)  # past the (shrunk) timeout; what it proves does not depend on how far
        release.set()
        client.join(30)
        assert out and out[0].startswith(b"HTTP/1.0 200") and out[0].endswith(b"ok"), (out, relay.errors)
    finally:
        relay.close()
