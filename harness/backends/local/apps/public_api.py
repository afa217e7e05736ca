"""Stand-in for ``hashicorpdemoapp/public-api:v0.0.7`` (GraphQL, gqlgen v0.12, in front of product-api).

Held to the real image (shared/reference/hashicups-interfaces.md §4); every
remaining difference is listed in docs/local-emulation.md.

Configuration, as the real image: ``BIND_ADDRESS`` (default ``:8080``),
``PRODUCT_API_URI`` (default ``http://localhost:9090``), ``PAYMENT_API_URI``
(default ``http://localhost:18000``). Local convention: ``EH_BIND_HOST``.

Start-up: no dependency checks; it listens at once and never exits because a
dependency fails. That is why the renderer probes it with ``tcpSocket``
(harness/render/hashicups.py): the image offers nothing else that a probe can
use without payments.

Routes:
- ``GET /``: the GraphQL playground page.
- ``/api``: GraphQL over ``POST`` (``application/json``), ``GET`` (queries
  only; a mutation over GET is 406) and ``OPTIONS``. The schema is the real one
  (`public_api_schema.SCHEMA_SDL`); queries are parsed and validated by
  graphql-core (the reference implementation's rules, which gqlgen's
  gqlparser follows), so an unknown field or argument (``coffee(coffeeID:)``)
  is rejected with **HTTP 422** and ``extensions.code``
  ``GRAPHQL_VALIDATION_FAILED`` (``GRAPHQL_PARSE_FAILED`` for syntax errors),
  as gqlgen does.
- ``GET /health``: exactly the v0.0.7 check: ``GET {PRODUCT_API_URI}/health``
  must answer 200 (body ignored: product-api's ``not ok`` passes) **and**
  ``GET {PAYMENT_API_URI}/actuator/health`` must answer 200 with
  ``{"status": "UP"}``; otherwise 500 ``error. the following services are
  down: product-api, payments`` (only the failing ones). Without a payments
  service it never passes.

Resolvers, as the real ones: ``coffees`` → ``GET /coffees``; ``coffee(id)`` →
``GET /coffees/{id}`` (an empty array is the error ``No coffee with that ID``);
``coffeeIngredients(coffeeID)`` → ``GET /coffees/{id}/ingredients``;
``Coffee.ingredients`` are the ids product-api lists with the coffee (no extra
call); ``price(currency)`` ignores the currency; ``version`` is ``"1"``.
Orders, sign-up/login and payments are in the schema but not resolved here:
they answer a GraphQL error (docs/local-emulation.md).

Upstream failures are answered like gqlgen: **HTTP 200** with ``errors``
(``status: 500, body: Unable to list products\\n`` or the transport error)
and ``data`` null when the failing root field is non-null (``coffees``), else
the field null (``coffee``). A user-visible failure is therefore a GraphQL
error, not an HTTP status: the load tests and probes count ``errors`` as a
failed request, and the frontend's outlier detection never sees a 5xx from a
healthy public-api whose product-api died (no cascading ejection).

Run: ``python -m harness.backends.local.apps.public_api``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLResolveInfo,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    build_schema,
    execute_sync,
    parse,
    validate,
)

from harness.backends.local.apps._http import (
    Listener,
    Reply,
    Request,
    UpstreamClient,
    UpstreamError,
    log,
    parse_bind_address,
    serve,
)
from harness.backends.local.apps.public_api_schema import SCHEMA_SDL

APP = "public-api"
PRODUCT_TIMEOUT_S = 10.0  # hashicups-client-go: http.Client{Timeout: 10s}
# The payments client has no timeout in the image; a bound here only keeps threads from piling up forever.
PAYMENTS_TIMEOUT_S = 120.0
# main.go: http.ListenAndServe, a zero http.Server: idle keep-alive connections are never closed by the server
IDLE_TIMEOUT_S: float | None = None
# What hashicups-client-go's fresh `http.Request` carries to product-api besides the raw token (the image
# strips "Bearer "): Go's transport headers, nothing of the inbound request (no x-request-id, no trace
# context), so the sidecar logs the hop with its own request_id and this user_agent, as on a real cluster.
_GO_CLIENT_HEADERS = (("User-Agent", "Go-http-client/1.1"), ("Accept-Encoding", "gzip"))
# The image's router middleware adds these to every routed response (not to mux 404s).
_ROUTED_HEADERS = [("Strict-Transport-Security", "max-age=31536000; includeSubDomains")]
PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
NOT_EMULATED = "not emulated by the local public-api stand-in (docs/local-emulation.md)"

_PLAYGROUND = b"""<!DOCTYPE html>
<html><head><meta charset=utf-8><title>GraphQL playground</title></head>
<body><div id="root" data-endpoint="/api">GraphQL playground for /api</div></body></html>
"""


def _go_numbers(value: Any) -> Any:
    """gqlgen writes Float with Go's ``%g``: ``200``, not Python's ``200.0`` (the shared
    GraphQLFloat scalar is left alone: patching it would change every schema in the process)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 1e15 else value
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value


def make_schema() -> GraphQLSchema:
    """The real v0.0.7 schema with the stand-in's resolvers attached."""
    schema = build_schema(SCHEMA_SDL)
    query = schema.query_type
    assert query is not None
    query.fields["version"].resolve = lambda _root, _info: "1"
    query.fields["coffees"].resolve = _resolve_coffees
    query.fields["coffee"].resolve = _resolve_coffee
    query.fields["coffeeIngredients"].resolve = _resolve_coffee_ingredients
    query.fields["orders"].resolve = _not_emulated
    query.fields["order"].resolve = _not_emulated
    mutation = schema.mutation_type
    assert mutation is not None
    for f in mutation.fields.values():
        f.resolve = _not_emulated
    coffee = schema.get_type("Coffee")
    coffee.fields["ingredients"].resolve = _resolve_coffee_ingredient_ids  # type: ignore[union-attr]
    return schema


# --------------------------------------------------------------------------- resolvers


class Upstream:
    """What resolvers get as ``info.context``: product-api and the headers each call to it carries."""

    def __init__(self, product_api: UpstreamClient, headers: list[tuple[str, str]]) -> None:
        self.product_api = product_api
        self.headers = headers

    def get_json(self, path: str) -> Any:
        """GET `path` on product-api; an Exception worded like hashicups-client-go on any failure."""
        try:
            resp = self.product_api.request("GET", path, headers=self.headers)
        except UpstreamError as exc:
            raise Exception(go_transport_error(exc)) from exc
        body = resp.body.decode("utf-8", "replace")
        if resp.status != 200:
            raise Exception(f"status: {resp.status}, body: {body}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Exception(f"invalid character in response from product-api: {exc}") from exc


def go_transport_error(exc: UpstreamError) -> str:
    """A transport failure in the words of Go's net/http client (url.Error), e.g. ``Get "...": ...``."""
    cause = exc.cause
    method = (exc.method or "GET").capitalize()
    authority = urlsplit(exc.url).netloc
    if isinstance(cause, ConnectionRefusedError):
        reason = f"dial tcp {authority}: connect: connection refused"
    elif isinstance(cause, TimeoutError):
        reason = "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
    elif isinstance(cause, ConnectionResetError):
        reason = f"read tcp {authority}: read: connection reset by peer"
    else:
        reason = "EOF"
    return f'{method} "{exc.url}": {reason}'


def _ctx(info: GraphQLResolveInfo) -> Upstream:
    ctx = info.context
    assert isinstance(ctx, Upstream)
    return ctx


def _resolve_coffees(_root: Any, info: GraphQLResolveInfo) -> Any:
    return _ctx(info).get_json("/coffees")


def _resolve_coffee(_root: Any, info: GraphQLResolveInfo, id: str) -> Any:
    found = _ctx(info).get_json(f"/coffees/{quote(id, safe='')}")
    if not found:
        raise Exception("No coffee with that ID")
    return found[0]


def _resolve_coffee_ingredients(_root: Any, info: GraphQLResolveInfo, coffeeID: str) -> Any:
    return _ctx(info).get_json(f"/coffees/{quote(coffeeID, safe='')}/ingredients")


def _resolve_coffee_ingredient_ids(coffee: Any, _info: GraphQLResolveInfo) -> Any:
    items = coffee.get("ingredients") if isinstance(coffee, dict) else None
    return [{"id": i.get("ingredient_id")} for i in items or [] if isinstance(i, dict)]


def _not_emulated(_root: Any, info: GraphQLResolveInfo, **_args: Any) -> Any:
    raise Exception(f"{info.field_name}: {NOT_EMULATED}")


# --------------------------------------------------------------------------- request handling


_REQUIRED_ARG = re.compile(r'^Argument "(?P<type>[^".]+)\.(?P<field>[^"(]+)\((?P<arg>[^":]+):\)"(?P<rest> of type .*)$')


def _gqlparser_wording(message: str) -> str:
    """graphql-core quotes names with ' where gqlgen's gqlparser uses "; a few rules are worded differently."""
    text = message.replace("'", '"')
    # graphql-js: Unknown argument "coffeeID" on field "Query.coffee".
    # gqlparser:  Unknown argument "coffeeID" on field "coffee" of type "Query".
    if text.startswith("Unknown argument ") and '" on field "' in text:
        head, _, rest = text.partition(' on field "')
        qualified = rest.split('"', 1)[0]
        if "." in qualified:
            type_name, field_name = qualified.split(".", 1)
            tail = rest.split('"', 1)[1]
            text = f'{head} on field "{field_name}" of type "{type_name}"{tail}'
    # graphql-js: Argument "Query.coffee(id:)" of type "String!" is required, but it was not provided.
    # gqlparser:  Field "coffee" argument "id" of type "String!" is required, but it was not provided.
    m = _REQUIRED_ARG.match(text)
    if m:
        text = f'Field "{m["field"]}" argument "{m["arg"]}"{m["rest"]}'
    return text


def _error_obj(err: GraphQLError, code: str | None = None) -> dict[str, Any]:
    """A gqlerror.Error as gqlgen encodes it: message, path, locations, extensions (omitempty)."""
    out: dict[str, Any] = {"message": err.message if code is None else _gqlparser_wording(err.message)}
    if err.path:
        out["path"] = list(err.path)
    if err.locations and code is not None:
        out["locations"] = [{"line": loc.line, "column": loc.column} for loc in err.locations]
    if code is not None:
        out["extensions"] = {"code": code}
    return out


def _body(errors: list[dict[str, Any]] | None, data: Any) -> bytes:
    """graphql.Response: ``errors`` (omitempty) before ``data`` (always present)."""
    doc: dict[str, Any] = {}
    if errors:
        doc["errors"] = errors
    doc["data"] = _go_numbers(data)
    return json.dumps(doc, separators=(",", ":")).encode()


def _reply(status: int, body: bytes) -> Reply:
    return Reply(status, body, "application/json", list(_ROUTED_HEADERS))


def _message_reply(status: int, message: str) -> Reply:
    return _reply(status, _body([{"message": message}], None))


class PublicApi:
    """The routes of the public API: ``/``, ``/api``, ``/health``."""

    def __init__(self, product_api: UpstreamClient, payments: UpstreamClient, cache_size: int = 256) -> None:
        self.product_api = product_api
        self.payments = payments
        self.schema = make_schema()
        self._docs: OrderedDict[str, tuple[DocumentNode | None, Reply | None]] = OrderedDict()
        self._docs_lock = threading.Lock()
        self._cache_size = cache_size

    # -- /health ----------------------------------------------------------------
    def health(self) -> Reply:
        """v0.0.7: product-api /health answers 200, then payments /actuator/health is 200 and UP."""
        down: list[str] = []
        try:
            if self.product_api.request("GET", "/health").status != 200:
                down.append("product-api")
        except UpstreamError:
            down.append("product-api")
        try:
            resp = self.payments.request("GET", "/actuator/health")
            status = json.loads(resp.body).get("status") if resp.status == 200 else None
            if status != "UP":
                down.append("payments")
        except (UpstreamError, ValueError, AttributeError):
            down.append("payments")
        if down:
            return Reply(500, f"error. the following services are down: {', '.join(down)}".encode(),
                         "application/json", list(_ROUTED_HEADERS))  # fmt: skip
        return Reply(200, b"ok", "application/json", list(_ROUTED_HEADERS))

    # -- GraphQL ------------------------------------------------------------------
    def _document(self, query: str) -> tuple[DocumentNode | None, Reply | None]:
        """Parsed and validated document, or the 422 reply; cached (the shop sends a handful of queries)."""
        with self._docs_lock:
            hit = self._docs.get(query)
            if hit is not None:
                self._docs.move_to_end(query)
                return hit
        result: tuple[DocumentNode | None, Reply | None]
        try:
            doc = parse(query)
        except GraphQLError as exc:
            result = (None, _reply(422, _body([_error_obj(exc, PARSE_FAILED)], None)))
        else:
            errors = validate(self.schema, doc)
            if errors:
                result = (None, _reply(422, _body([_error_obj(e, VALIDATION_FAILED) for e in errors], None)))
            else:
                result = (doc, None)
        with self._docs_lock:
            self._docs[query] = result
            while len(self._docs) > self._cache_size:
                self._docs.popitem(last=False)
        return result

    @staticmethod
    def _operation(doc: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
        """gqlparser's Operations.ForName: by name, or the only operation when no name is given."""
        ops = [d for d in doc.definitions if isinstance(d, OperationDefinitionNode)]
        if not name:
            return ops[0] if len(ops) == 1 else None
        for op in ops:
            if op.name is not None and op.name.value == name:
                return op
        return None

    def graphql(self, params: dict[str, Any], headers: list[tuple[str, str]], method: str) -> Reply:
        query = params.get("query")
        if not isinstance(query, str):
            query = ""
        doc, rejected = self._document(query)
        if rejected is not None:
            return rejected
        assert doc is not None
        op_name = params.get("operationName") if isinstance(params.get("operationName"), str) else None
        op = self._operation(doc, op_name)
        if op is None:  # no error code: gqlgen v0.12 answers it with 200
            return _message_reply(200, f"operation {op_name or ''} not found")
        if method == "GET" and op.operation is not OperationType.QUERY:
            return _message_reply(406, "GET requests only allow query operations")
        variables = params.get("variables") or {}
        if not isinstance(variables, dict):
            return _reply(422, _body([{"message": "variables must be an object",
                                       "extensions": {"code": VALIDATION_FAILED}}], None))  # fmt: skip
        result = execute_sync(self.schema, doc, context_value=Upstream(self.product_api, headers),
                         variable_values=variables, operation_name=op_name)  # fmt: skip
        if result.errors and result.data is None and all(not e.path for e in result.errors):
            # variable coercion failed before execution: gqlgen's validator.VariableValues, a 422
            return _reply(422, _body([_error_obj(e, VALIDATION_FAILED) for e in result.errors], None))
        if result.errors:
            log(APP, "resolver errors", errors=json.dumps([e.message for e in result.errors])[:300])
        errors = [_error_obj(e) for e in result.errors] if result.errors else None
        return _reply(200, _body(errors, result.data))

    def api(self, req: Request) -> Reply:
        """gqlgen's transports: OPTIONS, GET (queries), POST application/json; anything else 400."""
        headers = list(_GO_CLIENT_HEADERS)
        auth = req.header("Authorization")
        if auth:
            headers.append(("Authorization", auth.removeprefix("Bearer ")))
        if req.method == "OPTIONS":
            return Reply(200, b"", "application/json", [*_ROUTED_HEADERS, ("Allow", "OPTIONS, GET, POST")])
        if req.method == "GET":
            qs = parse_qs(urlsplit(req.target).query)
            params: dict[str, Any] = {k: v[0] for k, v in qs.items()}
            if "variables" in params:
                try:
                    params["variables"] = json.loads(params["variables"])
                except ValueError:
                    return _message_reply(400, "variables could not be decoded")
            return self.graphql(params, headers, "GET")
        if req.method == "POST":
            ctype = req.header("Content-Type").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                return _message_reply(400, "transport not supported")
            try:
                params = json.loads(req.body or b"")
            except ValueError as exc:
                return _message_reply(400, f"json body could not be decoded: {exc}")
            if not isinstance(params, dict):
                return _message_reply(400, "json body could not be decoded: not an object")
            return self.graphql(params, headers, "POST")
        return _message_reply(400, "transport not supported")

    def handle(self, req: Request) -> Reply:
        """The image's mux: ``/``, ``/api``, ``/health``; anything else is Go's plain 404."""
        if req.path == "/health":
            return self.health()
        if req.path == "/api":
            return self.api(req)
        if req.path == "/" and req.method in ("GET", "HEAD"):
            return Reply(200, _PLAYGROUND, "text/html", list(_ROUTED_HEADERS))
        return Reply(404, b"404 page not found\n")


def main() -> int:
    """Read BIND_ADDRESS / PRODUCT_API_URI / PAYMENT_API_URI and serve until SIGTERM."""
    try:
        host, port = parse_bind_address(os.environ.get("BIND_ADDRESS", "") or ":8080", 8080)
        product = UpstreamClient(os.environ.get("PRODUCT_API_URI", "") or "http://localhost:9090", PRODUCT_TIMEOUT_S)
        payments = UpstreamClient(os.environ.get("PAYMENT_API_URI", "") or "http://localhost:18000", PAYMENTS_TIMEOUT_S)
    except ValueError as exc:
        log(APP, f"invalid configuration: {exc}")
        return 1
    return serve(APP, [Listener(host, port, PublicApi(product, payments).handle, IDLE_TIMEOUT_S)])


if __name__ == "__main__":
    sys.exit(main())
