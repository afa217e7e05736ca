"""The frontend pod's nginx stand-in speaks the HTTP version real nginx would send to the sidecar.

Why it matters: the frontend's nginx proxies ``/api`` to its Envoy sidecar's
outbound listener. Consul builds that listener's HTTP connection manager
without ``http_protocol_options.accept_http_10`` (hashicorp/consul
agent/xds/listeners.go ``makeHTTPFilter``: no HttpProtocolOptions at all), and
Envoy answers any HTTP/1.0 request on such a listener with ``426 Upgrade
Required`` (envoyproxy/envoy source/common/http/http1/codec_impl.cc,
``ServerConnectionImpl``: "Send Upgrade Required if HTTP/1.0 support is not
explicitly configured on"). nginx proxies with HTTP/1.0 unless
``proxy_http_version 1.1`` says otherwise (ngx_http_proxy_module, default
``proxy_http_version 1.0``). The stand-in always spoke HTTP/1.1, so a frontend
configuration without the directive passed every local run and failed every
user request on kind/EKS.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from harness.backends.local.apps._http import Request
from harness.backends.local.apps.nginx import ConfigError, Proxy, build_servers, parse_conf
from harness.backends.local.mesh import MeshConfig, ServiceRef
from harness.backends.local.mesh.envoy import LogContext, outbound_listener
from harness.topology import load_topology
from tests.conftest import REPO

HOST = "127.0.0.1"


class _EnvoyLikeUpstream(BaseHTTPRequestHandler):
    """Records each request line and answers as an HCM without accept_http_10 does: 426 to HTTP/1.0."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(self.requestline)
        status = 426 if self.request_version == "HTTP/1.0" else 200
        body = b"" if status == 426 else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 426:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


@contextmanager
def upstream() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_EnvoyLikeUpstream,), {"seen": seen})
    server = ThreadingHTTPServer((HOST, 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()


def _proxy(conf: str) -> Proxy:
    (server,) = build_servers(parse_conf(conf, "/etc/nginx/conf.d/nginx.conf"))
    return Proxy(server)


def _get(proxy: Proxy, path: str) -> int:
    req = Request("GET", path, path, [("Host", "shop")], b"", (HOST, 40000))
    return proxy.handle(req).status


def _conf(port: int, version_line: str) -> str:
    location = f" location /api {{\n  proxy_pass http://{HOST}:{port};\n  {version_line}\n }}\n"
    return f"server {{\n listen 8080;\n{location}}}\n"


def test_nginx_without_proxy_http_version_sends_http10_and_the_sidecar_refuses_it() -> None:
    with upstream() as (port, seen):
        status = _get(_proxy(_conf(port, "")), "/api")
    assert seen == ["GET /api HTTP/1.0"], seen
    assert status == 426  # what the user gets through a real sidecar, not a silent pass


def test_nginx_with_proxy_http_version_11_is_served() -> None:
    """Control: the directive the renderer writes keeps HTTP/1.1, which the sidecar serves."""
    with upstream() as (port, seen):
        status = _get(_proxy(_conf(port, "proxy_http_version 1.1;")), "/api")
    assert seen == ["GET /api HTTP/1.1"], seen
    assert status == 200


def test_proxy_http_version_is_inherited_from_the_server_level() -> None:
    conf = (
        f"server {{\n listen 8080;\n proxy_http_version 1.1;\n"
        f" location /api {{\n  proxy_pass http://{HOST}:{{port}};\n }}\n}}\n"
    )
    with upstream() as (port, seen):
        status = _get(_proxy(conf.replace("{port}", str(port))), "/api")
    assert (seen, status) == (["GET /api HTTP/1.1"], 200)


@pytest.mark.parametrize("value", ["2.0", "1.1 1.0", "http/1.1"])
def test_a_proxy_http_version_nginx_refuses_stops_the_stand_in(value: str) -> None:
    with pytest.raises(ConfigError, match=r'nginx.conf:5: directive "proxy_http_version" takes 1.0 or 1.1'):
        _proxy(_conf(1, f"proxy_http_version {value};"))


def test_the_rendered_frontend_nginx_proxies_every_location_with_http11() -> None:
    """The shipped configuration is the one the sidecar accepts (checked through the stand-in's own parser)."""
    from harness.render import render  # noqa: F401  (render's modules first: hashicups alone is a circular import)
    from harness.render.hashicups import nginx_conf

    for name in ("topology.yaml", "topology-wide.yaml", "topology-eu.yaml"):
        path = REPO / "fixtures" / name
        if not path.exists():
            continue
        t = load_topology(path)
        (server,) = build_servers(parse_conf(nginx_conf(t, t.service("frontend")), "nginx.conf"))
        versions = {c.http_version for loc in server.locations if loc.target for c in loc.target.clients}
        assert versions == {"1.1"}, (name, versions)


def test_the_emulated_outbound_http_listener_accepts_no_http10_like_consuls() -> None:
    """The emulation's sidecar must refuse HTTP/1.0 as a real one does, or the local run could not show it."""
    objects = [
        {
            "apiVersion": "consul.hashicorp.com/v1alpha1",
            "kind": "ProxyDefaults",
            "metadata": {"name": "global", "namespace": "consul"},
            "spec": {"config": {"protocol": "http"}},
        }
    ]
    mesh = MeshConfig.from_objects(objects, "test")
    chain = mesh.compile_chain(ServiceRef("frontend"), ServiceRef("public-api"))
    log = LogContext(path=REPO / "unused.log", pod="p", service="frontend")
    listener = outbound_listener(chain, mesh, HOST, 8080, log)
    (hcm,) = [f["typed_config"] for f in listener["filter_chains"][0]["filters"]]
    assert "http_connection_manager" in hcm["@type"].lower().replace(".", "_")
    assert "accept_http_10" not in str(hcm.get("http_protocol_options", {}))


# --- the kind/EKS fake holds the same line ------------------------------------------------------------------


class _Req:
    """What kubesim's frontend handler reads of a request."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.path_qs = path
        self.headers: dict[str, str] = {}

    async def read(self) -> bytes:
        return b""


def _sim_frontend(conf: str) -> tuple[Any, dict[str, Any]]:
    from tests.kubesim import ClusterSim

    sim = ClusterSim()
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fe-nginx", "namespace": "shop"}}
    sim.objects[("v1", "configmaps", "shop", "fe-nginx")] = {**cm, "data": {"nginx.conf": conf}}
    pod = {
        "metadata": {"name": "fe-1", "namespace": "shop", "uid": "u1", "labels": {"app": "frontend"}},
        "spec": {
            "containers": [
                {"name": "nginx", "volumeMounts": [{"name": "nginx-config", "mountPath": "/etc/nginx/conf.d"}]}
            ],
            "volumes": [{"name": "nginx-config", "configMap": {"name": "fe-nginx"}}],
        },
    }
    return sim, pod


def test_kubesim_frontend_without_proxy_http_version_answers_426_like_a_real_sidecar() -> None:
    sim, pod = _sim_frontend(_conf(8080, ""))
    resp = asyncio.run(sim._frontend(pod, _Req("/api")))
    assert resp.status == 426


def test_kubesim_frontend_with_the_rendered_nginx_conf_is_not_refused() -> None:
    """Control: the rendered ConfigMap proxies /api with HTTP/1.1, so the fake goes on to its mesh hop."""
    from harness.render import render  # noqa: F401  (render's modules first: hashicups alone is a circular import)
    from harness.render.hashicups import nginx_conf

    t = load_topology(REPO / "fixtures" / "topology.yaml")
    sim, pod = _sim_frontend(nginx_conf(t, t.service("frontend")))
    assert sim._nginx_http_version(pod, "/api") == "1.1"
    resp = asyncio.run(sim._frontend(pod, _Req("/api")))
    assert resp.status != 426
