"""Stand-in for ``hashicorpdemoapp/public-api`` (GraphQL in front of product-api).

Configuration, as the real image: ``BIND_ADDRESS`` (default ``:8080``) and
``PRODUCT_API_URI`` (default ``http://localhost:9090``, the Envoy upstream
listener in a meshed pod). Local convention: ``EH_BIND_HOST``.

Endpoints: ``POST /api`` (also ``GET /api?query=``) with the coffee part of
the real schema::

    type Query  { coffees: [Coffee!]!  coffee(id: String!): Coffee  version: String! }
    type Coffee { id: ID! name image teaser collection origin color description
                  price(currency: Currency = USD): Float  ingredients: [Ingredient] }
    type Ingredient { id: ID! name: String quantity: Int unit: String }

``coffee`` also accepts the older argument name ``coffeeID``. Fields resolve
exactly as the real resolvers do: ``coffees`` is ``GET /coffees``, ``coffee``
is ``GET /coffees/{id}``, ``ingredients`` is ``GET /coffees/{id}/ingredients``
per coffee; each request is a fresh call to product-api, so every GraphQL
request makes at least one mesh hop. ``GET /health`` answers ``ok`` without
calling product-api: readiness must not drop every zone's public-api when the
product-api behind it fails over.

Deliberate difference: the real server (gqlgen) answers resolver errors with
HTTP 200 and a GraphQL ``errors`` list. Here an upstream failure (no response,
or a non-200 from product-api) answers **HTTP 502** with the same GraphQL
error body, so user-visible failures are counted by status code. Queries the
stand-in cannot parse or that name unknown fields answer 422 (gqlgen's
status for invalid queries).

The GraphQL parser is a small hand-written one (queries, aliases, arguments,
variables, ``__typename``; no fragments or directives): enough for the shop
and the load tests, without a dependency that would slow start-up.

Run: ``python -m harness.backends.local.apps.public_api``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness.backends.local.apps._http import (
    Listener,
    Reply,
    Request,
    UpstreamClient,
    UpstreamError,
    json_reply,
    log,
    parse_bind_address,
    serve,
    text_reply,
)

APP = "public-api"
# Headers copied to product-api so a user request can be followed across hops.
_PROPAGATED = ("x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled")


class QueryError(Exception):
    """The query cannot be parsed or validated (HTTP 422)."""


class UpstreamFailure(Exception):
    """product-api gave no usable answer (HTTP 502)."""


# --------------------------------------------------------------------------- parser

_TOKEN = re.compile(
    r"""
    (?P<ignored>[\s,\ufeff]+|\#[^\n\r]*)
  | (?P<spread>\.\.\.)
  | (?P<punct>[!$():=@\[\]{}|&])
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<string>"(?:[^"\\\n\r]|\\.)*")
    """,
    re.VERBOSE,
)


@dataclass
class Field:
    """One selected field: ``alias: name(args) { selections }``."""

    name: str
    alias: str
    args: dict[str, Any] = field(default_factory=dict)
    selections: list[Field] | None = None


@dataclass
class Variable:
    """A ``$name`` reference, resolved against the request's variables at execution."""

    name: str


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise QueryError(f"Syntax Error: unexpected character {text[pos]!r} at offset {pos}")
            pos = m.end()
            kind = m.lastgroup or ""
            if kind == "ignored":
                continue
            self.tokens.append((kind, m.group()))
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "")

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        tk, tv = self.peek()
        if (value is not None and tv != value) or (kind is not None and tk != kind) or tk == "eof":
            want = value or kind or "token"
            raise QueryError(f"Syntax Error: expected {want}, found {tv or '<EOF>'!r}")
        self.i += 1
        return tv

    def accept(self, value: str) -> bool:
        if self.peek()[1] == value and self.peek()[0] != "string":
            self.i += 1
            return True
        return False

    def document(self) -> dict[str | None, list[Field]]:
        """Operations by name (None for an anonymous one)."""
        ops: dict[str | None, list[Field]] = {}
        while self.peek()[0] != "eof":
            name: str | None = None
            kind, value = self.peek()
            if kind == "name":
                if value != "query":
                    raise QueryError(f"only query operations are supported, not {value!r}")
                self.i += 1
                if self.peek()[0] == "name":
                    name = self.take(kind="name")
                if self.accept("("):
                    self.variable_definitions()
                if self.peek()[1] == "@":
                    raise QueryError("directives are not supported")
            ops[name] = self.selection_set()
        if not ops:
            raise QueryError("Syntax Error: empty document")
        return ops

    def variable_definitions(self) -> None:
        while not self.accept(")"):
            self.take("$")
            self.take(kind="name")
            self.take(":")
            self.type_ref()
            if self.accept("="):
                self.value()

    def type_ref(self) -> None:
        if self.accept("["):
            self.type_ref()
            self.take("]")
        else:
            self.take(kind="name")
        self.accept("!")

    def selection_set(self) -> list[Field]:
        self.take("{")
        fields: list[Field] = []
        while not self.accept("}"):
            if self.peek()[0] == "spread":
                raise QueryError("fragments are not supported")
            first = self.take(kind="name")
            alias, name = first, first
            if self.accept(":"):
                name = self.take(kind="name")
            f = Field(name=name, alias=alias)
            if self.accept("("):
                while not self.accept(")"):
                    arg = self.take(kind="name")
                    self.take(":")
                    f.args[arg] = self.value()
            if self.peek()[1] == "@":
                raise QueryError("directives are not supported")
            if self.peek()[1] == "{":
                f.selections = self.selection_set()
            fields.append(f)
        if not fields:
            raise QueryError("Syntax Error: empty selection set")
        return fields

    def value(self) -> Any:
        kind, tok = self.peek()
        if kind == "punct" and tok == "$":
            self.i += 1
            return Variable(self.take(kind="name"))
        if kind == "string":
            self.i += 1
            return json.loads(tok)
        if kind == "number":
            self.i += 1
            return float(tok) if any(c in tok for c in ".eE") else int(tok)
        if kind == "name":
            self.i += 1
            return {"true": True, "false": False, "null": None}.get(tok, tok)  # other names: enum values
        if self.accept("["):
            items = []
            while not self.accept("]"):
                items.append(self.value())
            return items
        if self.accept("{"):
            obj = {}
            while not self.accept("}"):
                key = self.take(kind="name")
                self.take(":")
                obj[key] = self.value()
            return obj
        raise QueryError(f"Syntax Error: unexpected {tok or '<EOF>'!r}")


def parse_query(text: str, operation_name: str | None = None) -> list[Field]:
    """Top-level fields of the operation to run; QueryError when the query is invalid."""
    ops = _Parser(text).document()
    if operation_name:
        if operation_name not in ops:
            raise QueryError(f"Unknown operation named {operation_name!r}.")
        return ops[operation_name]
    if len(ops) > 1:
        raise QueryError("Must provide operation name if query contains multiple operations.")
    return next(iter(ops.values()))


# ----------------------------------------------------------------------- executor

_COFFEE_SCALARS = {"name", "image", "teaser", "collection", "origin", "color", "description"}
_INGREDIENT_FIELDS = {"id", "name", "quantity", "unit"}


class PublicApi:
    """Resolves the coffee queries against product-api."""

    def __init__(self, product_api: UpstreamClient) -> None:
        self.product_api = product_api

    def _get(self, path: str, headers: list[tuple[str, str]]) -> Any:
        try:
            resp = self.product_api.request("GET", path, headers=[("Accept", "application/json"), *headers])
        except UpstreamError as exc:
            raise UpstreamFailure(str(exc)) from exc
        if resp.status != 200:
            text = resp.body[:200].decode("utf-8", "replace").strip()
            raise UpstreamFailure(f"product-api GET {path}: HTTP {resp.status}: {text}")
        try:
            return json.loads(resp.body)
        except ValueError as exc:
            raise UpstreamFailure(f"product-api GET {path}: invalid JSON: {exc}") from exc

    @staticmethod
    def _arg(f: Field, names: tuple[str, ...], variables: dict[str, Any], default: Any = None) -> Any:
        for n in names:
            if n in f.args:
                v = f.args[n]
                return variables.get(v.name, default) if isinstance(v, Variable) else v
        return default

    def execute(self, fields: list[Field], variables: dict[str, Any], headers: list[tuple[str, str]]) -> dict[str, Any]:
        """The ``data`` object for the query's top-level fields."""
        data: dict[str, Any] = {}
        for f in fields:
            if f.name == "__typename":
                data[f.alias] = "Query"
            elif f.name == "version":
                data[f.alias] = "1"
            elif f.name == "coffees":
                self._require_selection(f, "[Coffee!]!")
                coffees = self._get("/coffees", headers)
                data[f.alias] = [self._coffee(c, f.selections or [], variables, headers) for c in coffees]
            elif f.name == "coffee":
                self._require_selection(f, "Coffee")
                cid = self._arg(f, ("id", "coffeeID"), variables)
                if cid is None or not str(cid).isdigit():
                    raise QueryError(f'coffee: argument "id" must be a numeric string, got {cid!r}')
                found = self._get(f"/coffees/{int(str(cid))}", headers)
                data[f.alias] = self._coffee(found[0], f.selections or [], variables, headers) if found else None
            else:
                raise QueryError(f'Cannot query field "{f.name}" on type "Query".')
        return data

    @staticmethod
    def _require_selection(f: Field, type_name: str) -> None:
        if not f.selections:
            raise QueryError(f'Field "{f.name}" of type "{type_name}" must have a selection of subfields.')

    def _coffee(
        self, c: dict[str, Any], sel: list[Field], variables: dict[str, Any], headers: list[tuple[str, str]]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in sel:
            if f.name == "__typename":
                out[f.alias] = "Coffee"
            elif f.name == "id":
                out[f.alias] = str(c["id"])
            elif f.name in _COFFEE_SCALARS:
                out[f.alias] = c.get(f.name)
            elif f.name == "price":
                currency = self._arg(f, ("currency",), variables, "USD")
                if currency != "USD":
                    raise QueryError(f"price: currency {currency!r} is not supported by this stand-in (USD only)")
                out[f.alias] = float(c["price"])
            elif f.name == "ingredients":
                self._require_selection(f, "[Ingredient]")
                items = self._get(f"/coffees/{int(c['id'])}/ingredients", headers)
                out[f.alias] = [self._ingredient(i, f.selections or []) for i in items]
            else:
                raise QueryError(f'Cannot query field "{f.name}" on type "Coffee".')
        return out

    @staticmethod
    def _ingredient(i: dict[str, Any], sel: list[Field]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in sel:
            if f.name == "__typename":
                out[f.alias] = "Ingredient"
            elif f.name in _INGREDIENT_FIELDS:
                out[f.alias] = str(i["id"]) if f.name == "id" else i.get(f.name)
            else:
                raise QueryError(f'Cannot query field "{f.name}" on type "Ingredient".')
        return out

    def handle(self, req: Request) -> Reply:
        """Route: ``/health`` and the GraphQL endpoint."""
        if req.path == "/health":
            return text_reply(200, "ok")
        if req.path != "/api":
            return text_reply(404, "404 page not found\n")
        try:
            query, variables, op = self._graphql_params(req)
            fields = parse_query(query, op)
            headers = [(k, v) for k, v in req.headers if k.lower() in _PROPAGATED]
            return json_reply(200, {"data": self.execute(fields, variables, headers)})
        except QueryError as exc:
            return json_reply(422, {"errors": [{"message": str(exc)}], "data": None})
        except UpstreamFailure as exc:
            log(APP, "product-api failed", error=str(exc))
            return json_reply(502, {"errors": [{"message": str(exc), "path": []}], "data": None})

    @staticmethod
    def _graphql_params(req: Request) -> tuple[str, dict[str, Any], str | None]:
        if req.method == "GET":
            qs = parse_qs(urlsplit(req.target).query)
            params: dict[str, Any] = {k: v[0] for k, v in qs.items()}
            if isinstance(params.get("variables"), str):
                try:
                    params["variables"] = json.loads(params["variables"])
                except ValueError as exc:
                    raise QueryError(f"variables: not JSON: {exc}") from exc
        elif req.method == "POST":
            try:
                params = json.loads(req.body or b"{}")
            except ValueError as exc:
                raise QueryError(f"json body could not be decoded: {exc}") from exc
        else:
            raise QueryError(f"method {req.method} is not supported on /api")
        if not isinstance(params, dict) or not isinstance(params.get("query"), str):
            raise QueryError('no query given: expected {"query": "..."}')
        variables = params.get("variables") or {}
        if not isinstance(variables, dict):
            raise QueryError("variables: must be an object")
        op = params.get("operationName") or None
        return params["query"], variables, op if isinstance(op, str) else None


def main() -> int:
    """Read BIND_ADDRESS / PRODUCT_API_URI and serve until SIGTERM."""
    try:
        host, port = parse_bind_address(os.environ.get("BIND_ADDRESS", "") or ":8080", 8080)
        client = UpstreamClient(os.environ.get("PRODUCT_API_URI", "") or "http://localhost:9090")
    except ValueError as exc:
        log(APP, f"invalid configuration: {exc}")
        return 1
    return serve(APP, [Listener(host, port, PublicApi(client).handle)])


if __name__ == "__main__":
    sys.exit(main())
