"""Stand-in for ``hashicorpdemoapp/product-api`` (the coffee catalogue over postgres).

Configuration, exactly as the real image reads it:
- ``CONFIG_FILE`` (default ``./conf.json``): JSON ``{"db_connection": <libpq
  string>, "bind_address": ":9090", "metrics_address": ":9103"}``; a container
  path, resolved through ``EH_MOUNTS``.
- ``DB_CONNECTION``, ``BIND_ADDRESS``, ``METRICS_ADDRESS`` override the file;
  as in the real app, the file is read only when ``DB_CONNECTION`` or
  ``BIND_ADDRESS`` is unset.

Endpoints (JSON shapes as the real API): ``GET /coffees``, ``GET /coffees/{id}``
(a list, like the real handler), ``GET /coffees/{id}/ingredients``,
``GET /health`` and ``/health/readyz`` (``ok`` only when the database answers),
``GET /health/livez`` (always ``ok``); ``GET /metrics`` on the metrics address.

Every data request reads postgres, because the point of the harness is to
see the product-api → postgres hop in the mesh: the database is reached
through the Envoy sidecar and may fail over between Region pods, so
connections are pooled, a failed pooled connection is discarded together with
its idle siblings, and the query is retried once on a fresh connection.

Deliberate difference: the real app waits (up to 60 s) for the database
before it listens; this one listens at once and reports the database through
``/health/readyz``, so a pod's readiness, not its absence, shows the outage.
Like the real app (Go's database/sql without deadlines), a hung database
makes requests wait; the sidecar's timeouts bound what users see.

Run: ``python -m harness.backends.local.apps.product_api``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import threading
import time
from collections import Counter
from typing import Any

import psycopg

from harness.backends.local.apps import resolve_path
from harness.backends.local.apps._http import (
    Listener,
    Reply,
    Request,
    json_reply,
    log,
    parse_bind_address,
    serve,
    text_reply,
)

APP = "product-api"

_COFFEE_COLUMNS = ("id", "name", "teaser", "collection", "origin", "color", "description", "price", "image")
_COFFEES_SQL = f"SELECT {', '.join(_COFFEE_COLUMNS)} FROM coffees"
_INGREDIENT_IDS_SQL = "SELECT coffee_id, ingredient_id FROM coffee_ingredients WHERE quantity > 0"
_INGREDIENTS_SQL = (
    "SELECT ingredients.id, ingredients.name, coffee_ingredients.quantity, coffee_ingredients.unit"
    " FROM ingredients LEFT JOIN coffee_ingredients ON ingredients.id = coffee_ingredients.ingredient_id"
    " WHERE coffee_ingredients.coffee_id = %s AND coffee_ingredients.deleted_at IS NULL ORDER BY ingredients.id"
)
_COFFEE_PATH = re.compile(r"^/coffees/([0-9]+)$")
_INGREDIENTS_PATH = re.compile(r"^/coffees/([0-9]+)/ingredients$")


class Config:
    """The product-api configuration after env overrides."""

    def __init__(self, db_connection: str, bind_address: str, metrics_address: str) -> None:
        self.db_connection = db_connection
        self.bind_address = bind_address
        self.metrics_address = metrics_address

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        """Read env vars, then the config file when the env does not name DB and bind address.

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
            db = db or data.get("db_connection", "")
            bind = bind or data.get("bind_address", "")
            metrics = metrics or data.get("metrics_address", "")
        if not db:
            raise ValueError("db_connection: not set (CONFIG_FILE or DB_CONNECTION)")
        if not bind:
            raise ValueError("bind_address: not set (CONFIG_FILE or BIND_ADDRESS)")
        return cls(db, bind, metrics)


class Database:
    """A small postgres connection pool that heals after the database moves.

    At most `size` connections exist; callers beyond that wait. Connections
    are autocommit (read-only queries, no transaction left open on an
    abandoned connection). A connection older than `max_lifetime_s` is closed
    instead of reused (Go's `sql.DB.SetConnMaxLifetime`, as services commonly
    set it): Envoy writes a TCP access-log line only when a connection closes,
    so recycled connections keep the postgres hops visible during a run.
    """

    def __init__(self, dsn: str, size: int = 8, connect_timeout: int = 3, max_lifetime_s: float = 5.0) -> None:
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.max_lifetime_s = max_lifetime_s
        self._idle: queue.LifoQueue[tuple[psycopg.Connection[Any], float]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def _flush_idle(self) -> None:
        while True:
            try:
                conn, _born = self._idle.get_nowait()
            except queue.Empty:
                return
            conn.close()

    def _idle_conn(self) -> tuple[psycopg.Connection[Any], float] | None:
        """A pooled connection young enough to reuse (older ones are closed on the way)."""
        while True:
            try:
                conn, born = self._idle.get_nowait()
            except queue.Empty:
                return None
            if time.monotonic() - born < self.max_lifetime_s:
                return conn, born
            conn.close()

    def _new(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout)

    def query(self, *statements: tuple[str, tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
        """Run the statements on one connection; one result list per statement.

        Raises psycopg.Error when the database cannot answer even on a fresh
        connection.
        """
        with self._slots:
            for attempt in range(2):
                pooled = self._idle_conn()
                if pooled is not None:
                    conn, born = pooled
                    reused = True
                else:
                    conn = self._new()  # a failure here is not retried: nothing stale to blame
                    born, reused = time.monotonic(), False
                try:
                    results = []
                    with conn.cursor() as cur:
                        for sql, params in statements:
                            cur.execute(sql, params)
                            results.append(cur.fetchall())
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    conn.close()
                    self._flush_idle()  # siblings went to the same (gone) server
                    if reused and attempt == 0:
                        continue
                    raise
                except BaseException:
                    conn.close()
                    raise
                self._idle.put((conn, born))
                return results
        raise AssertionError("unreachable")  # the loop either returns or raises

    def close(self) -> None:
        self._flush_idle()


def _coffee(row: tuple[Any, ...], ingredients: list[dict[str, int]]) -> dict[str, Any]:
    coffee = dict(zip(_COFFEE_COLUMNS, row, strict=True))
    for key in ("teaser", "collection", "origin", "color", "description", "image"):
        coffee[key] = coffee[key] or ""  # Go strings: NULL reads as ""
    coffee["ingredients"] = ingredients
    return coffee


class ProductApi:
    """Routes of the product API, reading `db` on every data request."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.counts: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def coffees(self, coffee_id: int | None) -> list[dict[str, Any]]:
        """All coffees (or the one with `coffee_id`) with their ingredient ids."""
        params: tuple[Any, ...]
        if coffee_id is None:
            coffees_sql, ids_sql, params = f"{_COFFEES_SQL} ORDER BY id", _INGREDIENT_IDS_SQL, ()
        else:
            coffees_sql = f"{_COFFEES_SQL} WHERE id = %s"
            ids_sql = f"{_INGREDIENT_IDS_SQL} AND coffee_id = %s"
            params = (coffee_id,)
        rows, pairs = self.db.query((coffees_sql, params), (ids_sql + " ORDER BY coffee_id, ingredient_id", params))
        by_coffee: dict[int, list[dict[str, int]]] = {}
        for cid, iid in pairs:
            by_coffee.setdefault(cid, []).append({"ingredient_id": iid})
        return [_coffee(r, by_coffee.get(r[0], [])) for r in rows]

    def ingredients(self, coffee_id: int) -> list[dict[str, Any]]:
        """Ingredients of one coffee, as ``GET /coffees/{id}/ingredients`` lists them."""
        (rows,) = self.db.query((_INGREDIENTS_SQL, (coffee_id,)))
        return [{"id": i, "name": n, "quantity": q, "unit": u} for i, n, q, u in rows]

    def ready(self) -> str | None:
        """None when the database answers, else the error text."""
        try:
            self.db.query(("SELECT 1", ()))
        except psycopg.Error as exc:
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
        if req.method not in ("GET", "HEAD"):
            return "other", Reply(405, b"")
        if path == "/health/livez":
            return "livez", text_reply(200, "ok")
        if path in ("/health", "/health/readyz"):
            err = self.ready()
            if err is not None:
                return "readyz", text_reply(500, f"error {err}")
            return "readyz", text_reply(200, "ok")
        try:
            if path == "/coffees":
                return "coffees", json_reply(200, self.coffees(None))
            m = _COFFEE_PATH.match(path)
            if m:
                return "coffee", json_reply(200, self.coffees(int(m.group(1))))
            m = _INGREDIENTS_PATH.match(path)
            if m:
                return "ingredients", json_reply(200, self.ingredients(int(m.group(1))))
        except psycopg.Error as exc:
            log(APP, "unable to get products from database", path=path, error=repr(str(exc).strip()))
            return "error", text_reply(500, "Unable to list products\n")
        return "not_found", text_reply(404, "404 page not found\n")

    def metrics(self, req: Request) -> Reply:
        """Prometheus text: request counts per handler and status."""
        if req.path != "/metrics":
            return text_reply(404, "404 page not found\n")
        with self._lock:
            items = sorted(self.counts.items())
        lines = ["# TYPE product_api_requests_total counter"]
        lines += [f'product_api_requests_total{{handler="{h}",code="{c}"}} {n}' for (h, c), n in items]
        return Reply(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")


def main() -> int:
    """Load the configuration, then serve until SIGTERM."""
    try:
        conf = Config.from_env()
        host, port = parse_bind_address(conf.bind_address, 9090)
        listeners_spec = [(host, port)]
        if conf.metrics_address:
            listeners_spec.append(parse_bind_address(conf.metrics_address, 9103))
    except ValueError as exc:
        log(APP, f"unable to load config: {exc}")
        return 1
    api = ProductApi(Database(conf.db_connection))
    listeners = [Listener(host, port, api.handle)]
    if len(listeners_spec) > 1:
        mhost, mport = listeners_spec[1]
        listeners.append(Listener(mhost, mport, api.metrics))
    return serve(APP, listeners, on_stop=api.db.close)


if __name__ == "__main__":
    sys.exit(main())
