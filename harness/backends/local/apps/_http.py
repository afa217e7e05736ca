"""Shared HTTP plumbing for the local HashiCups stand-ins (standard library only).

Why not a framework: the apps must start listening in well under half a
second inside a pod's network namespace, and each one serves a handful of
routes. Why the care below:
- Every app sits behind an Envoy sidecar that keeps connections alive. A
  Python server that writes headers and body in separate `send()` calls hits
  Nagle + delayed ACK (about 40 ms per keep-alive response), so replies are
  written in one call on a TCP_NODELAY socket.
- The default listen backlog (5) drops connections under locust's load;
  it is raised.
- Upstream calls reuse one keep-alive connection per serving thread, and a
  request that fails on a *reused* connection before any byte of response
  arrived is retried once on a fresh one: the peer (Envoy) may close idle
  connections at any time, and that race must not show up as a user error.
- SIGTERM stops accepting and exits 0, as a container runtime expects.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Headers that describe one connection, never forwarded by a proxy (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)


def log(app: str, message: str, **fields: Any) -> None:
    """One line to stderr: the local backend keeps each container's stderr as its log."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{app}] {message}{' ' + extra if extra else ''}\n")
    sys.stderr.flush()


def bind_host_default() -> str:
    """Host to bind when the image's configuration names only a port (``EH_BIND_HOST``)."""
    return os.environ.get("EH_BIND_HOST", "").strip() or "0.0.0.0"


def parse_bind_address(value: str, default_port: int) -> tuple[str, int]:
    """Parse a Go-style listen address (``:9090``, ``127.0.0.1:9090``, ``9090``).

    The real images pass these strings to Go's ``http.ListenAndServe``, where an
    empty host means every address; here an empty host falls back to
    ``EH_BIND_HOST`` so tests can keep everything on loopback.
    """
    text = value.strip()
    if not text:
        return bind_host_default(), default_port
    if text.isdigit():
        return bind_host_default(), int(text)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bind address {value!r}: expected [host]:port")
    host = host.strip("[]")
    return (host or bind_host_default()), int(port)


@dataclass
class Reply:
    """A complete HTTP response, written to the socket in one call."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def text_reply(status: int, text: str) -> Reply:
    """Plain-text body (health endpoints answer ``ok`` like the real apps)."""
    return Reply(status, text.encode())


@dataclass
class Request:
    """What a route handler sees of a request."""

    method: str
    target: str  # raw request target: path plus query
    path: str  # without the query string
    headers: list[tuple[str, str]]
    body: bytes
    client: tuple[str, int]

    def header(self, name: str, default: str = "") -> str:
        """First value of header `name` (case-insensitive)."""
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return default


Handler = Callable[[Request], Reply]


class _RequestHandler(BaseHTTPRequestHandler):
    """Adapts BaseHTTPRequestHandler to `Handler` functions with one-write replies."""

    protocol_version = "HTTP/1.1"  # keep-alive by default, as Envoy expects
    timeout = 120.0  # replaced by each Listener's idle_timeout_s (the image's own)
    app_name = "app"
    app_handler: Handler

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request logging: at load-test rates it would dominate CPU; errors are logged."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        length = int(self.headers.get("Content-Length", "0") or "0")
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._write(Reply(400, b"bad request body\n"), close=True)
            return
        path = self.path.split("?", 1)[0]
        req = Request(self.command, self.path, path, list(self.headers.items()), body, self.client_address[:2])
        try:
            reply = self.app_handler(req)
        except Exception as exc:  # a handler bug must answer 500, not drop the connection
            log(self.app_name, "handler error", path=path, error=repr(exc))
            traceback.print_exc(file=sys.stderr)
            reply = Reply(500, f"internal error: {exc}\n".encode())
        self._write(reply)

    def _write(self, reply: Reply, close: bool = False) -> None:
        phrase = self.responses.get(reply.status, ("",))[0]
        lines = [f"HTTP/1.1 {reply.status} {phrase}"]
        names = {k.lower() for k, _ in reply.headers}
        if "content-type" not in names and reply.content_type:
            lines.append(f"Content-Type: {reply.content_type}")
        lines.extend(f"{k}: {v}" for k, v in reply.headers)
        lines.append(f"Content-Length: {len(reply.body)}")
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # in-flight keep-alive connections must not block exit
    allow_reuse_address = True
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (routine under chaos) is not an error worth a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


@dataclass
class Listener:
    """One listening socket, the handler that serves it, and how long an idle keep-alive connection is kept.

    `idle_timeout_s` is the image's own server's: None for Go's
    ``http.ListenAndServe`` (a zero ``http.Server`` closes no connection), 5 s
    for node's ``http.Server`` (``keepAliveTimeout``), 75 s for nginx
    (``keepalive_timeout``). Every app sits behind an Envoy sidecar that keeps
    its connections to the app for an hour when idle; an app that closes one
    earlier races the sidecar reusing it, and the request Envoy sent on it as
    it closed fails (503, ``UC``). That race exists on a real cluster only
    where the image's server closes idle connections; it must not exist here
    where it does not. Required, so every app says which it is.
    """

    host: str
    port: int
    handler: Handler
    idle_timeout_s: float | None


def handler_class(app: str, lst: Listener) -> type[BaseHTTPRequestHandler]:
    """The request-handler class `serve` binds for `lst`: its handler, and its image's idle timeout."""
    attrs = {"app_name": app, "app_handler": staticmethod(lst.handler), "timeout": lst.idle_timeout_s}
    return type(f"{app}Handler", (_RequestHandler,), attrs)


def serve(
    app: str,
    listeners: Sequence[Listener],
    on_stop: Callable[[], None] | None = None,
    gate: Callable[[threading.Event], bool] | None = None,
    gated: Sequence[Listener] = (),
) -> int:
    """Bind every listener, serve until SIGTERM/SIGINT, return the exit code.

    `listeners` open at once. When `gate` is given, it is called next (with
    the stop event, so a SIGTERM ends its wait) and `gated` listeners open only
    once it returns True; False ends the app with exit code 1. That is
    product-api's start-up: its metrics port opens at once, its API port only
    once postgres answers, and it gives up after a while.
    Each group's sockets are bound before any of them serves, so a port
    conflict fails with a clear message (exit 1) instead of a half-started pod.
    """
    servers: list[_Server] = []
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if stopping.is_set():
            return
        stopping.set()
        log(app, "stopping", signal=signal.Signals(signum).name)

    def bind(group: Sequence[Listener]) -> bool:
        bound: list[_Server] = []
        for lst in group:
            try:
                bound.append(_Server((lst.host, lst.port), handler_class(app, lst)))
            except OSError as exc:
                log(app, "cannot listen", address=f"{lst.host}:{lst.port}", error=exc.strerror or str(exc))
                for s in bound:
                    s.server_close()
                return False
        for s in bound:
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        servers.extend(bound)
        if group:
            log(app, "listening", addresses=",".join(f"{lst.host}:{lst.port}" for lst in group))
        return True

    def close_all() -> None:
        for s in servers:
            s.shutdown()
            s.server_close()

    # Handlers first: a SIGTERM that arrives right after the port opens must still be a clean stop.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not bind(listeners):
        return 1
    if gate is not None and not stopping.is_set():
        if not gate(stopping):
            close_all()
            return 0 if stopping.is_set() else 1
        if not stopping.is_set() and not bind(gated):
            close_all()
            return 1
    while not stopping.wait(0.5):
        pass
    close_all()
    if on_stop is not None:
        on_stop()
    return 0


@dataclass
class UpstreamResponse:
    """A complete upstream response (body read in full)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class UpstreamError(Exception):
    """No HTTP response came back from the upstream (refused, reset, timed out).

    `method`, `url` and `cause` let a caller word the failure the way the real
    (Go) client would (``Get "http://...": dial tcp ...: connection refused``).
    """

    def __init__(self, message: str, method: str = "", url: str = "", cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.cause = cause


class _Http10Connection(http.client.HTTPConnection):
    """An HTTPConnection whose request line says ``HTTP/1.0`` (http.client has no switch for it)."""

    _http_vsn = 10
    _http_vsn_str = "HTTP/1.0"


class UpstreamClient:
    """Keep-alive HTTP/1.1 client for one upstream, one connection per calling thread.

    One connection per thread matches the servers above (a thread per
    downstream connection), so each downstream keep-alive connection maps to
    one upstream keep-alive connection, like a proxy would hold them.

    `http_version` ``"1.0"`` sends HTTP/1.0 request lines with
    ``Connection: close`` on a fresh connection each time (nginx's default
    ``proxy_http_version``): an Envoy sidecar as Consul configures it answers
    those with 426, and the caller must see that as a real cluster would.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, http_version: str = "1.1") -> None:
        parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
        if parts.scheme != "http":
            raise ValueError(f"{base_url!r}: only http:// upstreams are supported")
        if not parts.hostname:
            raise ValueError(f"{base_url!r}: no host")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        if http_version not in ("1.0", "1.1"):
            raise ValueError(f"HTTP version {http_version!r}: expected 1.0 or 1.1")
        self.http_version = http_version
        self._local = threading.local()

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    def _conn(self) -> tuple[http.client.HTTPConnection, bool]:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            return conn, True
        cls = _Http10Connection if self.http_version == "1.0" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> UpstreamResponse:
        """Send one request; raise UpstreamError when no response arrived."""
        target = self.base_path + path
        hdrs = list(headers)
        if self.http_version == "1.0":  # one request per connection, said so (nginx sends Connection: close)
            hdrs = [(k, v) for k, v in hdrs if k.lower() != "connection"] + [("Connection", "close")]
        for attempt in range(2):
            conn, reused = self._conn()
            try:
                conn.putrequest(
                    method, target, skip_host=any(k.lower() == "host" for k, _ in hdrs), skip_accept_encoding=True
                )
                for k, v in hdrs:
                    conn.putheader(k, v)
                if body is not None or method in ("POST", "PUT", "PATCH"):
                    conn.putheader("Content-Length", str(len(body or b"")))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self._drop()
                stale = reused and isinstance(
                    exc,
                    (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, http.client.BadStatusLine),
                )
                if attempt == 0 and stale:
                    continue
                url = f"http://{self.authority}{target}"
                raise UpstreamError(f"{method} {url}: {exc!r}", method, url, exc) from exc
            if resp.will_close or self.http_version == "1.0":
                self._drop()
            return UpstreamResponse(resp.status, resp.getheaders(), data)
        raise AssertionError("unreachable")  # the loop either returns or raises
