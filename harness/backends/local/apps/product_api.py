"""Stand-in for ``hashicorpdemoapp/product-api`` (the coffee catalogue over postgres).

Configuration, exactly as the real image reads it:
- ``CONFIG_FILE`` (default ``./conf.json``): JSON ``{"db_connection": <libpq
  string>, "bind_address": ":9090", "metrics_address": ":9103"}``; a container
  path, resolved through ``EH_MOUNTS``.
- ``DB_CONNECTION``, ``BIND_ADDRESS``, ``METRICS_ADDRESS`` override the file;
  as in the real app, the file is read only when ``DB_CONNECTION`` or
  ``BIND_ADDRESS`` is unset.

Start-up, as the real image (v0.0.22 ``retryDBUntilReady``): the metrics
listener opens first; then the database is tried every second and the API
port opens **only once postgres answers**; after 60 s without it the app logs
``Timeout waiting for database connection`` and exits 1. On a cluster that
means a probe of port 9090 fails until postgres is up, so the rendered
manifests give product-api a startupProbe (harness/render/hashicups.py).

Endpoints (shared/reference/hashicups-interfaces.md §1): ``GET /coffees``,
``GET /coffees/{id}`` (an **array** of 0 or 1 coffee), ``GET
/coffees/{id}/ingredients``; ``GET /health`` answers 200 with the body
``not ok`` (sic, the image's text) when the database pings, else 500;
``GET /health/readyz`` 200 ``ok`` / 500; ``GET /health/livez`` always 200
``ok``; ``GET /metrics`` (any path) on the metrics address. Success bodies
carry no explicit Content-Type (Go sniffs ``text/plain; charset=utf-8``),
errors are Go's ``http.Error`` text. An unknown path is 404 ``404 page not
found``, a known path with another method 405. The authenticated routes
(orders, sign-up/in/out, POST /coffees) answer 501: not emulated
(docs/local-emulation.md).

Every data request reads postgres with the image's own statements, as its
driver sends them: ``GET /coffees`` is ``GetCoffees``, one ``SELECT * FROM
coffees`` and then one ingredient query per coffee (1 + N statements, each
its own pool checkout), and lib/pq v1.2.0 spends two round trips on each
statement with arguments (Parse, then Bind/Execute) and one on each without,
so a product-api across the service link from postgres pays what the real
one pays (`execute_like_lib_pq`). The pool is the image's (`Database`): Go's
database/sql with every default over lib/pq v1.2.0 (no cap on open
connections, two kept idle for the pod's life, no connect timeout; a
statement that meets a bad connection tried twice on a cached-or-new one,
then on a new one), so the product-api → postgres hop shows in the mesh as
it does on a cluster: the two idle connections leave no access-log line
until they close, the ones beyond them one each when they are released.
Like the real app (Go's database/sql without deadlines), a hung database
makes requests wait; the sidecar's timeouts bound what users see.

Run: ``python -m harness.backends.local.apps.product_api``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.adapt import Transformer

from harness.backends.local.apps import resolve_path
from harness.backends.local.apps._http import (
    Listener,
    Reply,
    Request,
    log,
    parse_bind_address,
    serve,
    text_reply,
)

APP = "product-api"

# The statements of the image's data/connection.go (v0.0.22), with its placeholders ($1: lib/pq's own syntax, sent
# as written); no ORDER BY, as there: rows come in the table's order.
_COFFEES_SQL = "SELECT * FROM coffees"
_COFFEE_SQL = "SELECT * FROM coffees WHERE id = $1"
_INGREDIENT_IDS_SQL = "SELECT ingredient_id FROM coffee_ingredients WHERE coffee_id=$1 AND quantity > 0"
_INGREDIENTS_SQL = (
    "SELECT ingredients.id, ingredients.name, coffee_ingredients.quantity, coffee_ingredients.unit FROM ingredients"
    " LEFT JOIN coffee_ingredients ON ingredients.id=coffee_ingredients.ingredient_id"
    " WHERE coffee_ingredients.coffee_id=$1 AND coffee_ingredients.deleted_at IS NULL"
)
_PING_SQL = "SELECT 'lib/pq ping test';"  # lib/pq v1.2.0 conn.Ping, what database/sql's DB.Ping runs
# model.Coffee's fields that are Go `string`s: a NULL there fails sqlx's scan (nullable in the schema all the same)
_COFFEE_STRINGS = (
    "name",
    "teaser",
    "collection",
    "origin",
    "color",
    "description",
    "image",
    "created_at",
    "updated_at",
)
_COFFEE_JSON = ("id", "name", "teaser", "collection", "origin", "color", "description", "price", "image")
_COFFEE_PATH = re.compile(r"^/coffees/([0-9]+)$")
_INGREDIENTS_PATH = re.compile(r"^/coffees/([0-9]+)/ingredients$")
_ORDER_PATH = re.compile(r"^/orders/[0-9]+$")


DB_RETRY_INTERVAL_S = 1.0  # retryDBUntilReady: one attempt a second
DB_WAIT_TIMEOUT_S = 60.0  # ... and exit 1 once a failure comes more than 60 s after the first try
# Go's http.ListenAndServe (API and metrics): a zero http.Server, no IdleTimeout, no ReadTimeout; an idle
# keep-alive connection stays open until the client (the sidecar) closes it
IDLE_TIMEOUT_S: float | None = None
_SNIFFED = "text/plain; charset=utf-8"  # what Go's http server sniffs for a JSON body without Content-Type
_GO_ERROR_HEADERS = [("X-Content-Type-Options", "nosniff")]
# Authenticated or write routes of the real API that the stand-in does not emulate (method, path pattern).
_NOT_EMULATED = (
    re.compile(r"^/coffees$"),
    re.compile(r"^/coffees/[0-9]+/ingredients$"),
    re.compile(r"^/(signup|signin|signout)$"),
    re.compile(r"^/orders(/[0-9]+)?$"),
)


def go_error(status: int, text: str) -> Reply:
    """Go's ``http.Error``: text/plain, nosniff, the message plus a newline."""
    return Reply(status, (text + "\n").encode(), _SNIFFED, list(_GO_ERROR_HEADERS))


def sniffed_json(obj: Any) -> Reply:
    """A JSON success body as the real handlers write it (no Content-Type set: Go sniffs text/plain)."""
    return Reply(200, json.dumps(obj, separators=(",", ":")).encode(), _SNIFFED)


def wait_for_database(
    connect: Callable[[], None],
    stop: threading.Event,
    timeout_s: float = DB_WAIT_TIMEOUT_S,
    interval_s: float = DB_RETRY_INTERVAL_S,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """The image's ``retryDBUntilReady``: True once `connect()` succeeds, False after `timeout_s`.

    Tries at once, then every `interval_s`; gives up on the first failure that
    comes more than `timeout_s` after the first try (so about 60 attempts).
    Returns False at once when `stop` is set (SIGTERM while waiting).
    """
    first = clock()
    while not stop.is_set():
        try:
            connect()
            return True
        except Exception as exc:
            if clock() - first > timeout_s:
                log(APP, "Timeout waiting for database connection", error=repr(str(exc).strip()[:200]))
                return False
            log(APP, "database not ready, retrying", error=repr(str(exc).strip()[:200]))
        stop.wait(interval_s)
    return False


class ScanError(Exception):
    """A row that sqlx cannot scan into the image's model (a NULL where the struct has a Go ``string``)."""


def _check(conn: psycopg.Connection[Any], res: psycopg.pq.abc.PGresult, want: psycopg.pq.ExecStatus) -> None:
    """Raise as psycopg would for a failed result, keeping what the server said (its severity: lib/pq's test).

    A result that carries the server's error fields (a FATAL one among them: the server ends the session) is
    that error; one without them is libpq's own account of a lost connection, an OperationalError.
    """
    if res.status == want:
        return
    if res.error_field(psycopg.pq.DiagnosticField.SEVERITY_NONLOCALIZED) is not None:
        raise psycopg.errors.error_from_result(res)
    if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        message = conn.pgconn.get_error_message() or "connection lost"
        raise psycopg.OperationalError(message)
    raise psycopg.errors.error_from_result(res)


def _text_param(value: Any) -> bytes | None:
    """An argument as lib/pq sends it without binary_parameters: text, typed by the server from the statement."""
    return None if value is None else str(value).encode()


def execute_like_lib_pq(
    conn: psycopg.Connection[Any], sql: str, args: tuple[Any, ...]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one statement (written with lib/pq's ``$n``) as the image's driver sends it; (column names, rows).

    lib/pq v1.2.0 (``conn.query``): a statement without arguments is one
    simple Query (one round trip). One with arguments is ``prepareTo`` (Parse
    of the unnamed statement, Describe, Sync; it waits for ReadyForQuery) and
    then ``exec`` (Bind with the arguments as text, Execute, Sync; it waits
    again): two round trips every time (the unnamed statement is never kept),
    and each is paid across the service link when postgres is in the Region.
    libpq's ``PQprepare`` and ``PQexecPrepared`` are those two exchanges (the
    server parses once, types the text arguments from the statement, as for
    the image).
    """
    if not args:
        with conn.cursor() as cur:
            cur.execute(sql, None)
            names = [col.name for col in cur.description or ()]
            return names, cur.fetchall()
    pgconn = conn.pgconn
    _check(conn, pgconn.prepare(b"", sql.encode()), psycopg.pq.ExecStatus.COMMAND_OK)
    params: list[Any] = [_text_param(a) for a in args]  # None is SQL NULL to libpq, whatever the stub says
    res = pgconn.exec_prepared(b"", params)
    _check(conn, res, psycopg.pq.ExecStatus.TUPLES_OK)
    tx = Transformer(conn)
    tx.set_pgresult(res)
    names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
    return names, tx.load_rows(0, res.ntuples, tuple)


class Config:
    """The product-api configuration after env overrides."""

    def __init__(self, db_connection: str, bind_address: str, metrics_address: str) -> None:
        self.db_connection = db_connection
        self.bind_address = bind_address
        self.metrics_address = metrics_address

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Read env vars, then, when the env does not name both DB and bind address, the config file over them.

        Raises ValueError naming the file and field, so a broken ConfigMap is
        one clear line in the pod's log.
        """
        env = dict(os.environ) if environ is None else environ
        db = env.get("DB_CONNECTION", "")
        bind = env.get("BIND_ADDRESS", "")
        metrics = env.get("METRICS_ADDRESS", "")
        if not db or not bind:
            config_file = env.get("CONFIG_FILE", "./conf.json")
            path = resolve_path(config_file, env)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ValueError(f"{config_file} ({path}): cannot read: {exc.strerror or exc}") from exc
            except json.JSONDecodeError as exc:
                raise ValueError(f"{config_file} ({path}): not JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{config_file}: must be a JSON object")
            for key in ("db_connection", "bind_address", "metrics_address"):
                if key in data and not isinstance(data[key], str):
                    raise ValueError(f"{config_file}: {key}: must be a string")
            # as main.go: the file is decoded over what the env gave, so a key the file has wins
            db = data.get("db_connection", db)
            bind = data.get("bind_address", bind)
            metrics = data.get("metrics_address", metrics)
        if not db:
            raise ValueError("db_connection: not set (CONFIG_FILE or DB_CONNECTION)")
        if not bind:
            raise ValueError("bind_address: not set (CONFIG_FILE or BIND_ADDRESS)")
        return cls(db, bind, metrics)


class BadConn(Exception):
    """Go's ``driver.ErrBadConn``: the driver says this connection is unusable; database/sql closes it and retries.

    Its text is Go's (``driver: bad connection``), which is what the image's ``/health`` prints after ``error``.
    """

    def __init__(self) -> None:
        super().__init__("driver: bad connection")


class DBClosed(Exception):
    """database/sql's ``errDBClosed``: a checkout after ``DB.Close`` (the pod is stopping)."""

    def __init__(self) -> None:
        super().__init__("sql: database is closed")


_T = TypeVar("_T")


class DriverConn(Protocol):
    """One driver connection as database/sql sees it (``driver.Conn`` with ``Queryer`` and ``Pinger``)."""

    def query(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one statement; raise BadConn when the connection is unusable."""
        ...

    def ping(self) -> None:
        """lib/pq's ``Ping``; raise BadConn on any failure."""
        ...

    def close(self) -> None:
        """Close the connection (database/sql's ``finalClose``)."""
        ...


# libpq's words for a read that met the peer's close: lib/pq reads io.EOF there, which it turns into ErrBadConn
_EOF_TEXT = "server closed the connection unexpectedly"
# libpq's words for a failed socket read or write: lib/pq's *net.OpError (the connection is marked bad, the error
# itself is returned to the caller, not retried)
_SOCKET_TEXT = ("could not send data to server", "could not receive data from server")


def lib_pq_failure(exc: psycopg.Error) -> str:
    """How lib/pq v1.2.0 (``conn.errRecover``) classifies the failure psycopg reports as `exc`.

    ``"bad"``: an error the server sent with severity FATAL, or the connection closed under the read (io.EOF):
    ErrBadConn, which database/sql answers by closing the connection and trying again. ``"broken"``: a socket
    error (*net.OpError): the connection is marked bad, the error goes to the caller as it is, and the next use
    of that connection is an ErrBadConn. ``"error"``: anything else (an SQL error): the connection stays good.
    """
    severity = exc.diag.severity_nonlocalized or exc.diag.severity
    if severity == "FATAL":
        return "bad"
    text = str(exc)
    if _EOF_TEXT in text:
        return "bad"
    if any(words in text for words in _SOCKET_TEXT) or isinstance(exc, psycopg.InterfaceError):
        return "broken"
    return "error"


class PqConn:
    """A lib/pq v1.2.0 connection over a psycopg one: its statements on the wire, its ``cn.bad`` bookkeeping."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.bad = False

    @classmethod
    def open(cls, dsn: str) -> PqConn:
        """lib/pq's ``Open``: a dial and start-up; its failure is the error itself, never ErrBadConn.

        No connect timeout beyond the DSN's (lib/pq has none; libpq's default for psycopg is 130 s, about the
        OS's own SYN timeout that bounds lib/pq). prepare_threshold=None: psycopg would otherwise prepare a
        statement run five times (the ping) and send it as Bind/Execute of a named statement, where lib/pq
        sends the same simple Query every time.
        """
        return cls(psycopg.connect(dsn, autocommit=True, prepare_threshold=None))

    def query(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self.bad:  # lib/pq's conn.query: `if cn.bad { return nil, driver.ErrBadConn }`
            raise BadConn()
        try:
            return execute_like_lib_pq(self.conn, sql, args)
        except psycopg.Error as exc:
            kind = lib_pq_failure(exc)
            if kind != "error":
                self.bad = True
            if kind == "bad":
                raise BadConn() from exc
            raise

    def ping(self) -> None:
        try:  # lib/pq's Ping: its simple query, and any failure is ErrBadConn
            execute_like_lib_pq(self.conn, _PING_SQL, ())
        except psycopg.Error as exc:
            self.bad = True
            raise BadConn() from exc

    def close(self) -> None:
        self.conn.close()


MAX_BAD_CONN_RETRIES = 2  # database/sql's maxBadConnRetries: tries on a cached-or-new connection, then a new one
DEFAULT_MAX_IDLE_CONNS = 2  # database/sql's defaultMaxIdleConns (SetMaxIdleConns never called by the image)
DB_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, BadConn, DBClosed)
_DATA_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, ScanError)  # what a data handler answers 500 for


@dataclass(frozen=True)
class PoolStats:
    """database/sql's ``DBStats`` that matter here, plus how many connections were ever opened."""

    open: int
    idle: int
    in_use: int
    opened: int
    max_idle_closed: int


class Database:
    """Go's ``database/sql`` pool as product-api v0.0.22 uses it: every default, nothing set.

    The image (data/connection.go) opens one ``*sqlx.DB`` and never calls ``SetMaxOpenConns``,
    ``SetMaxIdleConns``, ``SetConnMaxLifetime`` or ``SetConnMaxIdleTime``: the number of open connections is
    unlimited (a statement that finds no idle connection opens one, it never waits), at most two stay idle
    (a third released at once is closed: Envoy logs its TCP line then), and an idle one is kept for the life of
    the pod (no lifetime, no idle time: Envoy logs nothing for it until it closes).

    A connection the driver calls bad (``BadConn``: the server said FATAL, or the connection was closed under
    the read) is closed, not returned; a statement that met one is tried again on a cached-or-new connection,
    twice in all, then once on a new one (``DB.retry``), so after postgres moved two stale idle connections
    cost one statement two failed tries and a fresh dial. A ping (``DB.PingContext``) retries only taking a
    connection, not the ping: a stale idle connection fails one ``/health`` (``driver: bad connection``) and
    is closed. Any other error goes back to the caller with the connection returned to the pool (lib/pq may
    have marked it bad: its next use is then a BadConn).

    `connect` opens one driver connection (lib/pq's ``Open``); tests give a fake.
    """

    def __init__(
        self,
        dsn: str,
        connect: Callable[[], DriverConn] | None = None,
        max_idle: int = DEFAULT_MAX_IDLE_CONNS,
    ) -> None:
        self.dsn = dsn
        self._connect: Callable[[], DriverConn] = connect if connect is not None else (lambda: PqConn.open(dsn))
        self.max_idle = max_idle
        self._mu = threading.Lock()  # db.mu: the idle list and the counts change together
        self._free: list[DriverConn] = []  # db.freeConn, the most recently returned last
        self._open = 0
        self._opened = 0
        self._max_idle_closed = 0
        self._closed = False

    def _conn(self, always_new: bool) -> DriverConn:
        """``DB.conn``: the most recently returned idle connection (``cachedOrNewConn``), else a new one."""
        with self._mu:
            if self._closed:
                raise DBClosed()
            if not always_new and self._free:
                return self._free.pop()
            self._open += 1  # optimistically, as database/sql counts it
        try:
            conn = self._connect()
        except BaseException:
            with self._mu:
                self._open -= 1
            raise
        with self._mu:
            self._opened += 1
        return conn

    def _put(self, conn: DriverConn, err: BaseException | None) -> None:
        """``DB.putConn``: a bad connection is closed; a good one is kept while fewer than `max_idle` idle."""
        if not isinstance(err, BadConn):
            with self._mu:
                if not self._closed:
                    if len(self._free) < self.max_idle:
                        self._free.append(conn)
                        return
                    self._max_idle_closed += 1  # putConnDBLocked: no room (a closed DB counts nothing)
        self._final_close(conn)

    def _final_close(self, conn: DriverConn) -> None:
        try:
            conn.close()
        finally:
            with self._mu:
                self._open -= 1

    def _use(self, conn: DriverConn, work: Callable[[DriverConn], _T]) -> _T:
        try:
            result = work(conn)
        except BaseException as exc:
            self._put(conn, exc)
            raise
        self._put(conn, None)
        return result

    def _retry(self, attempt: Callable[[bool], _T]) -> _T:
        """``DB.retry``: `attempt(always_new)` on a cached-or-new connection while it meets BadConn, at most
        MAX_BAD_CONN_RETRIES times, then once on a new connection."""
        for _ in range(MAX_BAD_CONN_RETRIES):
            try:
                return attempt(False)
            except BadConn:
                continue
        return attempt(True)

    def _run(self, sql: str, args: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
        return self._retry(lambda always_new: self._use(self._conn(always_new), lambda c: c.query(sql, args)))

    def select(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """One sqlx ``Select`` of the image: a pooled connection for this statement alone, rows by column name.

        Each of the image's statements takes a connection from database/sql's
        pool and gives it back, so a request of 1 + N statements is 1 + N
        checkouts, each free to find the pool empty or its connection gone.
        """
        names, rows = self._run(sql, args)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def query(self, *statements: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        """Run the statements (lib/pq's ``$n`` placeholders), each on its own checkout; one row list each.

        Raises psycopg.Error or BadConn when the database cannot answer even on a fresh connection.
        """
        return [self._run(sql, args)[1] for sql, args in statements]

    def ping(self) -> None:
        """``DB.Ping``: taking a connection is retried, the ping itself is not (a failed one raises BadConn)."""
        self._use(self._retry(self._conn), lambda c: c.ping())

    def stats(self) -> PoolStats:
        """``DB.Stats``: open, idle and in-use connections now; how many were opened; how many the idle cap closed."""
        with self._mu:
            idle = len(self._free)
            return PoolStats(self._open, idle, self._open - idle, self._opened, self._max_idle_closed)

    def close(self) -> None:
        """``DB.Close``: no new checkouts; the idle connections are closed (one in use is closed on release)."""
        with self._mu:
            self._closed = True
            free, self._free = self._free, []
        for conn in free:
            self._final_close(conn)


def _coffee(row: dict[str, Any], ingredients: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``SELECT * FROM coffees`` row as sqlx scans it into model.Coffee, in that struct's JSON."""
    for index, (name, value) in enumerate(row.items()):
        if value is None and name in _COFFEE_STRINGS:
            raise ScanError(
                f'sql: Scan error on column index {index}, name "{name}": converting NULL to string is unsupported'
            )
    coffee = {key: row[key] for key in _COFFEE_JSON}
    coffee["ingredients"] = ingredients
    return coffee


class ProductApi:
    """Routes of the product API, reading `db` on every data request."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.counts: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def coffees(self, coffee_id: int | None) -> list[dict[str, Any]]:
        """All coffees (or the one with `coffee_id`), then one query per coffee for its ingredient ids.

        The image's ``GetCoffees``: 1 + N statements, each its own pool
        checkout, the N with an argument (two round trips each under lib/pq),
        so a product-api across the service link from postgres pays 1 + 2N
        round trips per ``GET /coffees``.
        """
        rows = self.db.select(_COFFEES_SQL) if coffee_id is None else self.db.select(_COFFEE_SQL, (coffee_id,))
        coffees = []
        for row in rows:
            ids = self.db.select(_INGREDIENT_IDS_SQL, (row["id"],))
            coffees.append(_coffee(row, [{"ingredient_id": i["ingredient_id"]} for i in ids]))
        return coffees

    def ingredients(self, coffee_id: int) -> list[dict[str, Any]]:
        """Ingredients of one coffee, as ``GET /coffees/{id}/ingredients`` lists them."""
        rows = self.db.select(_INGREDIENTS_SQL, (coffee_id,))
        return [{"id": r["id"], "name": r["name"], "quantity": r["quantity"], "unit": r["unit"]} for r in rows]

    def ping(self) -> None:
        """``sqlx.Connect``: open a connection and ping it; it stays in the pool, as in database/sql. Raises."""
        self.db.ping()

    def ready(self) -> str | None:
        """``db.Ping()`` (``IsConnected``): None when the database answers, else the error text.

        A ping on a stale idle connection is not retried (``DB.PingContext``): it is ``driver: bad connection``.
        """
        try:
            self.db.ping()
        except DB_ERRORS as exc:
            return str(exc).strip() or type(exc).__name__
        return None

    def handle(self, req: Request) -> Reply:
        """Dispatch one request and count it for /metrics."""
        name, reply = self._route(req)
        with self._lock:
            self.counts[(name, reply.status)] += 1
        return reply

    def _route(self, req: Request) -> tuple[str, Reply]:
        path = req.path
        get = req.method in ("GET", "HEAD")
        if path == "/health/livez":
            return ("livez", text_reply(200, "ok")) if get else ("other", Reply(405, b""))
        if path in ("/health", "/health/readyz"):
            if not get:
                return "other", Reply(405, b"")
            err = self.ready()
            word = "not ok" if path == "/health" else "ok"  # /health says "not ok" even when it is fine
            if err is not None:  # handlers/health.go: WriteHeader(500), "error %s", then the word: no http.Error
                return "readyz", Reply(500, f"error {err}{word}".encode(), _SNIFFED)
            return "readyz", Reply(200, word.encode(), _SNIFFED)
        coffee = _COFFEE_PATH.match(path)
        ingredients = _INGREDIENTS_PATH.match(path)
        if get:
            try:
                if path == "/coffees":
                    return "coffees", sniffed_json(self.coffees(None))
                if coffee:
                    return "coffee", sniffed_json(self.coffees(int(coffee.group(1))))
                if ingredients:
                    return "ingredients", sniffed_json(self.ingredients(int(ingredients.group(1))))
            except _DATA_ERRORS as exc:
                log(APP, "unable to get products from database", path=path, error=repr(str(exc).strip()))
                what = "ingredients" if ingredients else "products"
                return "error", go_error(500, f"Unable to list {what}")
            if path == "/orders" or _ORDER_PATH.match(path):
                return "other", go_error(501, f"{req.method} {path}: not emulated by the local stand-in")
        elif any(p.match(path) for p in _NOT_EMULATED):
            return "other", go_error(501, f"{req.method} {path}: not emulated by the local stand-in")
        elif path == "/coffees" or coffee:
            return "other", Reply(405, b"")
        return "not_found", go_error(404, "404 page not found")

    def metrics(self, req: Request) -> Reply:
        """Prometheus text on any path (the image's exporter is the handler of the whole listener)."""
        with self._lock:
            items = sorted(self.counts.items())
        lines = ["# TYPE product_api_requests_total counter"]
        lines += [f'product_api_requests_total{{handler="{h}",code="{c}"}} {n}' for (h, c), n in items]
        return Reply(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")


def main() -> int:
    """Load the configuration, open the metrics port, wait for postgres, then serve the API."""
    try:
        conf = Config.from_env()
        host, port = parse_bind_address(conf.bind_address, 9090)
        metrics = parse_bind_address(conf.metrics_address, 9103) if conf.metrics_address else None
    except ValueError as exc:
        log(APP, f"unable to load config: {exc}")
        return 1
    api = ProductApi(Database(conf.db_connection))
    early = [Listener(metrics[0], metrics[1], api.metrics, IDLE_TIMEOUT_S)] if metrics else []
    return serve(
        APP,
        early,
        on_stop=api.db.close,
        gate=lambda stop: wait_for_database(api.ping, stop),
        gated=[Listener(host, port, api.handle, IDLE_TIMEOUT_S)],
    )


if __name__ == "__main__":
    sys.exit(main())
