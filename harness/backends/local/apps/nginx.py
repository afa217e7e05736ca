"""Stand-in for the ``nginx`` image in the frontend pod: a small reverse proxy.

Reads every ``*.conf`` in ``/etc/nginx/conf.d`` (the official image includes
them inside ``http {}``), resolved through ``EH_MOUNTS`` to the pod's copy of
the ConfigMap, and serves the ``server`` blocks it finds. The frontend pod is
where users enter, so this proxy decides which user requests reach the
public API: it must follow the rendered configuration, not a hard-coded
route table.

Understood (with nginx's semantics):
- ``upstream NAME { server HOST:PORT; ... keepalive N; }`` (round robin; on a
  connection failure the next server is tried, like ``proxy_next_upstream error``)
- ``server { listen [HOST:]PORT [default_server]; server_name ...; location ... }``
- ``location [=|^~] PATH { ... }``: exact match first, else longest prefix
- ``proxy_pass http://HOST:PORT[/URI]`` or ``http://UPSTREAM[/URI]`` (with a
  URI, the matched prefix is replaced by it)
- ``proxy_set_header NAME VALUE`` (inherited only when a level sets none;
  an empty value removes the header; variables ``$host $http_* $remote_addr
  $proxy_add_x_forwarded_for $scheme $request_uri $uri $proxy_host
  $server_port``)
- ``return CODE [TEXT|URL]``, ``add_header NAME VALUE [always]``
- ``proxy_connect_timeout``/``proxy_read_timeout``/``proxy_send_timeout``
  (the largest is the upstream timeout; default 60 s)
- ``proxy_http_version 1.0|1.1``: the request line sent upstream, **1.0 by
  default** as in nginx (ngx_http_proxy_module). It matters here because the
  upstream is an Envoy sidecar whose HTTP connection manager Consul builds
  without ``accept_http_10`` (agent/xds/listeners.go ``makeHTTPFilter``), and
  Envoy answers an HTTP/1.0 request with **426 Upgrade Required** (its HTTP/1
  codec, ``accept_http_10_`` unset). A frontend configuration that leaves the
  version out fails every proxied request on a real cluster; so it does here.
- Accepted with no local effect (they change no routing): ``server_tokens``,
  ``gzip*``, ``access_log``, ``error_log``, ``proxy_http_version``,
  ``proxy_cache_bypass``, ``proxy_cache_path``, ``keepalive_timeout`` (an idle
  client connection is closed after nginx's default 75 s whatever it says),
  ``client_max_body_size``.

Anything else (``include``, regex locations, ``proxy_cache``, server
parameters such as ``weight=``...) stops the app at start-up with
``FILE:LINE: directive "x" ...``: a configuration this stand-in would only
half-honour must fail loudly, never be silently ignored.

Upstream connections are kept alive and reused; hop-by-hop headers
(``Connection``, ``Upgrade``...) are never forwarded (no websocket tunnels).
Upstream failures answer 502 (504 on timeout), like nginx.

Run: ``python -m harness.backends.local.apps.nginx`` (local convention:
``EH_BIND_HOST`` for a ``listen`` without a host).
"""

from __future__ import annotations

import itertools
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from harness.backends.local.apps import resolve_path
from harness.backends.local.apps._http import (
    HOP_BY_HOP,
    Listener,
    Reply,
    Request,
    UpstreamClient,
    UpstreamError,
    bind_host_default,
    log,
    serve,
)

APP = "nginx"
CONF_DIR = "/etc/nginx/conf.d"
KEEPALIVE_TIMEOUT_S = 75.0  # keepalive_timeout's default: nginx closes a client connection idle that long

_NO_EFFECT = frozenset(
    {
        "server_tokens",
        "gzip",
        "gzip_proxied",
        "gzip_comp_level",
        "gzip_types",
        "gzip_min_length",
        "gzip_vary",
        "gzip_http_version",
        "gzip_buffers",
        "gzip_disable",
        "access_log",
        "error_log",
        "proxy_cache_bypass",
        "keepalive_timeout",
        "client_max_body_size",
    }
)
_TIMEOUTS = frozenset({"proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"})
_INHERITED = _NO_EFFECT | _TIMEOUTS | {"proxy_set_header", "add_header", "proxy_http_version"}
HTTP_VERSIONS = ("1.0", "1.1")
DEFAULT_HTTP_VERSION = "1.0"  # nginx's default for proxy_http_version
_VARIABLE = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")
_KNOWN_VARIABLES = frozenset(
    {"host", "remote_addr", "proxy_add_x_forwarded_for", "scheme", "request_uri", "uri", "proxy_host", "server_port"}
)
_ADD_HEADER_CODES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})


class ConfigError(Exception):
    """The configuration names something this stand-in does not implement."""


# ------------------------------------------------------------------------- parsing


@dataclass
class Directive:
    """One directive: ``name args... ;`` or ``name args... { block }``."""

    name: str
    args: list[str]
    file: str
    line: int
    block: list[Directive] | None = None

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def _tokens(text: str, file: str) -> list[tuple[str, int, bool]]:
    """(token, line, quoted) triples; quotes removed, comments dropped."""
    out: list[tuple[str, int, bool]] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            out.append((c, line, False))
            i += 1
        elif c in "\"'":
            start_line, j, buf = line, i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ConfigError(f"{file}:{start_line}: unterminated string")
            out.append(("".join(buf), start_line, True))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{};\"'":
                j += 1
            out.append((text[i:j], line, False))
            i = j
    return out


def parse_conf(text: str, file: str) -> list[Directive]:
    """Parse nginx configuration syntax into a directive tree."""
    toks = _tokens(text, file)
    pos = 0

    def block(depth: int) -> list[Directive]:
        nonlocal pos
        items: list[Directive] = []
        while pos < len(toks):
            tok, line, quoted = toks[pos]
            if tok == "}" and not quoted:
                if depth == 0:
                    raise ConfigError(f'{file}:{line}: unexpected "}}"')
                pos += 1
                return items
            if tok in ("{", ";") and not quoted:
                raise ConfigError(f"{file}:{line}: unexpected {tok!r}")
            name, args = tok, list[str]()
            pos += 1
            while True:
                if pos >= len(toks):
                    raise ConfigError(f'{file}:{line}: directive "{name}" is not terminated by ";"')
                t, _, q = toks[pos]
                if t == ";" and not q:
                    pos += 1
                    items.append(Directive(name, args, file, line))
                    break
                if t == "{" and not q:
                    pos += 1
                    items.append(Directive(name, args, file, line, block(depth + 1)))
                    break
                if t == "}" and not q:
                    raise ConfigError(f'{file}:{line}: directive "{name}" is not terminated by ";"')
                args.append(t)
                pos += 1
        if depth > 0:
            raise ConfigError(f'{file}: unexpected end of file, expecting "}}"')
        return items

    return block(0)


# ------------------------------------------------------------------------- model


@dataclass
class Target:
    """Where a proxied location sends requests."""

    clients: list[UpstreamClient]
    uri: str | None  # replacement for the matched prefix; None: pass the request URI unchanged
    proxy_host: str
    _next: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def order(self) -> list[UpstreamClient]:
        """Servers to try for one request: round robin start, then the others."""
        with self._lock:
            start = next(self._next) % len(self.clients)
        return self.clients[start:] + self.clients[:start]


@dataclass
class Location:
    """One ``location`` block with its effective (inherited) settings."""

    path: str
    exact: bool
    target: Target | None = None
    ret: tuple[int, str] | None = None
    set_headers: list[tuple[str, str]] = field(default_factory=list)
    add_headers: list[tuple[str, str, bool]] = field(default_factory=list)


@dataclass
class Server:
    """One ``server`` block."""

    host: str
    port: int
    locations: list[Location] = field(default_factory=list)

    def match(self, path: str) -> Location | None:
        """nginx's choice: an exact match, else the longest matching prefix."""
        for loc in self.locations:
            if loc.exact and loc.path == path:
                return loc
        best: Location | None = None
        for loc in self.locations:
            if not loc.exact and path.startswith(loc.path) and (best is None or len(loc.path) > len(best.path)):
                best = loc
        return best


def _seconds(d: Directive) -> float:
    m = re.fullmatch(r"([0-9]+)(ms|s|m)?", d.args[0]) if len(d.args) == 1 else None
    if m is None:
        raise ConfigError(f'{d.where()}: directive "{d.name}": invalid time {" ".join(d.args)!r}')
    value = int(m.group(1))
    return {"ms": value / 1000, "m": value * 60.0}.get(m.group(2) or "s", float(value))


def _check_variables(d: Directive) -> None:
    for arg in d.args:
        for m in _VARIABLE.finditer(arg):
            name = m.group(1).strip("{}")
            if name not in _KNOWN_VARIABLES and not name.startswith("http_"):
                raise ConfigError(f'{d.where()}: directive "{d.name}": variable "${name}" is not supported')


def _parse_address(text: str, d: Directive) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{d.where()}: directive "{d.name}": invalid address {text!r}')
    return host.strip("[]"), int(port)


@dataclass
class _Scope:
    """Settings a level passes down to the levels inside it."""

    set_headers: list[tuple[str, str]] = field(default_factory=list)
    add_headers: list[tuple[str, str, bool]] = field(default_factory=list)
    timeout: float = 60.0
    http_version: str = DEFAULT_HTTP_VERSION

    def child(self, items: list[Directive]) -> _Scope:
        """nginx inheritance: a level that sets any proxy_set_header (add_header) replaces the parent's list;
        a level's own proxy_http_version (or timeout) replaces the parent's."""
        own_set = [(d.args[0], d.args[1]) for d in items if d.name == "proxy_set_header"]
        own_add = [(d.args[0], d.args[1], len(d.args) == 3) for d in items if d.name == "add_header"]
        timeouts = [_seconds(d) for d in items if d.name in _TIMEOUTS]
        timeout = max(timeouts) if timeouts else self.timeout
        versions = [d for d in items if d.name == "proxy_http_version"]
        for d in versions:  # checked here: the level's locations are built before its own directives are
            _check_common(d)
        version = versions[-1].args[0] if versions else self.http_version
        return _Scope(own_set or self.set_headers, own_add or self.add_headers, timeout, version)


def _check_common(d: Directive) -> None:
    """Validate the argument count of directives allowed at several levels."""
    if d.block is not None:
        raise ConfigError(f'{d.where()}: directive "{d.name}" has no block')
    if d.name == "proxy_set_header" and len(d.args) != 2:
        raise ConfigError(f'{d.where()}: directive "proxy_set_header" takes NAME VALUE')
    if d.name == "add_header" and (len(d.args) not in (2, 3) or (len(d.args) == 3 and d.args[2] != "always")):
        raise ConfigError(f'{d.where()}: directive "add_header" takes NAME VALUE [always]')
    if d.name == "proxy_http_version" and (len(d.args) != 1 or d.args[0] not in HTTP_VERSIONS):
        raise ConfigError(f'{d.where()}: directive "proxy_http_version" takes 1.0 or 1.1')
    _check_variables(d)


def build_servers(items: list[Directive]) -> list[Server]:
    """Turn the http-context directives into servers; ConfigError for anything unsupported."""
    upstreams: dict[str, list[tuple[str, int]]] = {}
    server_blocks: list[Directive] = []
    for d in items:
        if d.name == "upstream":
            upstreams[_upstream_name(d)] = _upstream_servers(d)
        elif d.name == "server" and d.block is not None and not d.args:
            server_blocks.append(d)
        elif d.name == "proxy_cache_path":
            continue  # declares a cache zone; without proxy_cache (rejected below) it changes nothing
        elif d.name in _INHERITED:
            _check_common(d)
        else:
            raise ConfigError(f'{d.where()}: directive "{d.name}" is not supported by the local nginx stand-in')
    if not server_blocks:
        raise ConfigError(f"{items[0].file if items else CONF_DIR}: no server block")
    http_scope = _Scope().child(items)
    servers = [_build_server(d, http_scope, upstreams) for d in server_blocks]
    seen: dict[int, Server] = {}
    for s in servers:
        if s.port in seen:
            raise ConfigError(f"two server blocks listen on port {s.port}: server_name routing is not supported")
        seen[s.port] = s
    return servers


def _upstream_name(d: Directive) -> str:
    if len(d.args) != 1 or d.block is None:
        raise ConfigError(f'{d.where()}: directive "upstream" takes NAME {{ ... }}')
    return d.args[0]


def _upstream_servers(d: Directive) -> list[tuple[str, int]]:
    addrs: list[tuple[str, int]] = []
    for s in d.block or []:
        if s.name == "server" and len(s.args) == 1 and s.block is None:
            host, port = _parse_address(s.args[0], s)
            addrs.append((host or "localhost", port))
        elif s.name == "server":
            raise ConfigError(f'{s.where()}: directive "server" in upstream: only "server HOST:PORT;" is supported')
        elif s.name == "keepalive":
            continue  # upstream connections are always kept alive here
        else:
            raise ConfigError(f'{s.where()}: directive "{s.name}" is not supported in upstream')
    if not addrs:
        raise ConfigError(f'{d.where()}: upstream "{d.args[0]}" has no server')
    return addrs


def _build_server(d: Directive, parent: _Scope, upstreams: dict[str, list[tuple[str, int]]]) -> Server:
    items = d.block or []
    scope = parent.child(items)
    listen: tuple[str, int] | None = None
    loc_blocks: list[Directive] = []
    for x in items:
        if x.name == "listen":
            if listen is not None:
                raise ConfigError(f'{x.where()}: only one "listen" per server is supported')
            if not x.args or any(a != "default_server" for a in x.args[1:]) or x.block is not None:
                raise ConfigError(f'{x.where()}: directive "listen" takes [HOST:]PORT [default_server]')
            listen = _parse_address(x.args[0], x)
        elif x.name == "server_name":
            continue  # one server per port, so the name selects nothing
        elif x.name == "location":
            loc_blocks.append(x)
        elif x.name in _INHERITED:
            _check_common(x)
        else:
            raise ConfigError(f'{x.where()}: directive "{x.name}" is not supported by the local nginx stand-in')
    if listen is None:
        listen = ("", 80)  # nginx's default for a server without listen (as root)
    server = Server(listen[0] or bind_host_default(), listen[1])
    for x in loc_blocks:
        server.locations.append(_build_location(x, scope, upstreams))
    return server


def _build_location(d: Directive, parent: _Scope, upstreams: dict[str, list[tuple[str, int]]]) -> Location:
    if d.block is None:
        raise ConfigError(f'{d.where()}: directive "location" needs a block')
    if len(d.args) == 2 and d.args[0] in ("=", "^~"):
        exact, path = d.args[0] == "=", d.args[1]
    elif len(d.args) == 1 and not d.args[0].startswith(("~", "@", "=")):
        exact, path = False, d.args[0]
    else:
        raise ConfigError(
            f'{d.where()}: location {" ".join(d.args)!r}: only prefix, "= PATH" and "^~ PATH" are supported'
        )
    scope = parent.child(d.block)
    loc = Location(path, exact, set_headers=scope.set_headers, add_headers=scope.add_headers)
    for x in d.block:
        if x.name == "proxy_pass":
            if len(x.args) != 1:
                raise ConfigError(f'{x.where()}: directive "proxy_pass" takes one URL')
            loc.target = _target(x, upstreams, scope.timeout, scope.http_version)
        elif x.name == "return":
            if not x.args or not x.args[0].isdigit() or len(x.args) > 2:
                raise ConfigError(f'{x.where()}: directive "return" takes CODE [TEXT|URL]')
            loc.ret = (int(x.args[0]), x.args[1] if len(x.args) == 2 else "")
        elif x.name in _INHERITED:
            _check_common(x)
        else:
            raise ConfigError(f'{x.where()}: directive "{x.name}" is not supported by the local nginx stand-in')
    if loc.target is None and loc.ret is None:
        raise ConfigError(f"{d.where()}: location {path!r} has neither proxy_pass nor return")
    return loc


def _target(
    d: Directive, upstreams: dict[str, list[tuple[str, int]]], timeout: float, http_version: str = DEFAULT_HTTP_VERSION
) -> Target:
    url = d.args[0]
    if not url.startswith("http://"):
        raise ConfigError(f"{d.where()}: proxy_pass {url!r}: only http:// is supported")
    if "$" in url:
        raise ConfigError(f"{d.where()}: proxy_pass {url!r}: variables are not supported")
    rest = url[len("http://") :]
    authority, slash, path = rest.partition("/")
    uri = "/" + path if slash else None
    if authority in upstreams:
        addrs = upstreams[authority]
    else:
        host, port = _parse_address(authority if ":" in authority else f"{authority}:80", d)
        addrs = [(host, port)]
    clients = [UpstreamClient(f"http://{h}:{p}", timeout=timeout, http_version=http_version) for h, p in addrs]
    return Target(clients, uri, authority)


def load_servers(conf_dir: Path) -> list[Server]:
    """Parse every ``*.conf`` in `conf_dir` (sorted, as nginx's ``include conf.d/*.conf``)."""
    files = sorted(conf_dir.glob("*.conf"))
    if not files:
        raise ConfigError(f"{CONF_DIR} ({conf_dir}): no *.conf file")
    items: list[Directive] = []
    for f in files:
        items.extend(parse_conf(f.read_text(encoding="utf-8"), f"{CONF_DIR}/{f.name}"))
    return build_servers(items)


# -------------------------------------------------------------------------- proxy


class Proxy:
    """Serves one server block."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def _expand(self, value: str, req: Request, target: Target) -> str:
        host = req.header("host").rsplit(":", 1)[0] if req.header("host") else self.server.host
        xff = req.header("x-forwarded-for")
        values = {
            "host": host,
            "remote_addr": req.client[0],
            "proxy_add_x_forwarded_for": f"{xff}, {req.client[0]}" if xff else req.client[0],
            "scheme": "http",
            "request_uri": req.target,
            "uri": req.path,
            "proxy_host": target.proxy_host,
            "server_port": str(self.server.port),
        }

        def sub(m: re.Match[str]) -> str:
            name = m.group(1).strip("{}")
            if name.startswith("http_"):
                return req.header(name[5:].replace("_", "-"))
            return values.get(name, "")

        return _VARIABLE.sub(sub, value)

    def handle(self, req: Request) -> Reply:
        """Route by location, then proxy or return."""
        loc = self.server.match(req.path)
        if loc is None:
            page = b"<html><center><h1>404 Not Found</h1></center></html>\n"
            return self._finish(Reply(404, page, "text/html"), None)
        if loc.ret is not None:
            code, text = loc.ret
            if code in (301, 302, 303, 307, 308):
                return self._finish(Reply(code, b"", headers=[("Location", text)]), loc)
            return self._finish(Reply(code, text.encode()), loc)
        assert loc.target is not None
        return self._finish(self._proxy(req, loc, loc.target), loc)

    def _finish(self, reply: Reply, loc: Location | None) -> Reply:
        reply.headers.append(("Server", "nginx"))
        if loc is not None:
            for name, value, always in loc.add_headers:
                if always or reply.status in _ADD_HEADER_CODES:
                    reply.headers.append((name, value))
        return reply

    def _proxy(self, req: Request, loc: Location, target: Target) -> Reply:
        uri = req.target
        if target.uri is not None:
            uri = target.uri + req.target[len(loc.path) :]
        headers = [(k, v) for k, v in req.headers if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
        overrides = {"host": ("Host", target.proxy_host)}
        for name, value in loc.set_headers:
            overrides[name.lower()] = (name, self._expand(value, req, target))
        headers = [(k, v) for k, v in headers if k.lower() not in overrides]
        headers += [(n, v) for key, (n, v) in overrides.items() if v and key not in HOP_BY_HOP]
        body = req.body if req.body or req.method in ("POST", "PUT", "PATCH") else None
        last: UpstreamError | None = None
        for client in target.order():
            try:
                resp = client.request(req.method, uri, body=body, headers=headers)
            except UpstreamError as exc:
                last = exc
                continue
            out = [(k, v) for k, v in resp.headers if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            ctype = next((v for k, v in out if k.lower() == "content-type"), "")
            out = [(k, v) for k, v in out if k.lower() not in ("content-type", "server")]
            return Reply(resp.status, resp.body, ctype, out)
        log(APP, "upstream failed", uri=uri, error=str(last))
        timed_out = last is not None and isinstance(last.__cause__, TimeoutError)
        code = 504 if timed_out else 502
        title = "504 Gateway Time-out" if timed_out else "502 Bad Gateway"
        return Reply(code, f"<html><center><h1>{title}</h1></center></html>\n".encode(), "text/html")


def main() -> int:
    """Load conf.d, then serve every server block until SIGTERM."""
    try:
        servers = load_servers(resolve_path(CONF_DIR))
    except (ConfigError, ValueError) as exc:
        log(APP, f"[emerg] {exc}")
        return 1
    except OSError as exc:
        log(APP, f"[emerg] cannot read configuration: {exc}")
        return 1
    return serve(APP, [Listener(s.host, s.port, Proxy(s).handle, KEEPALIVE_TIMEOUT_S) for s in servers])


if __name__ == "__main__":
    sys.exit(main())
