"""Every GraphQL query the harness sends is valid against the real public-api v0.0.7 schema.

The load tests once asked ``coffee(coffeeID: "N")``; the real schema is
``coffee(id: String!)``, so on a real cluster a third of user requests failed
with 422 while the lenient local stand-in answered them. This test reads the
queries straight from the sources that send them (the locust file is parsed,
not imported: importing locust monkey-patches the process with gevent) and
validates each one with graphql-core against the real schema, argument names
and types included; and it checks the stand-in rejects what gqlgen rejects.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from graphql import build_schema, parse, validate

from harness.backends.local.apps._http import Request, UpstreamResponse
from harness.backends.local.apps.public_api import PublicApi
from harness.backends.local.apps.public_api_schema import SCHEMA_SDL

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO / "loadtests" / "hashicups.py", REPO / "harness" / "chaos" / "probes.py"]
SCHEMA = build_schema(SCHEMA_SDL)


def _graphql_strings(node: ast.AST) -> list[str]:
    """String constants that are GraphQL documents: the value of a "query" key, or a *_QUERY constant."""
    found: list[str] = []
    for n in ast.walk(node):
        if isinstance(n, ast.Dict):
            for k, v in zip(n.keys, n.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "query" and isinstance(v, ast.Constant):
                    found.append(str(v.value))
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str):
            names = [t.id for t in n.targets if isinstance(t, ast.Name)]
            if any(name.endswith("QUERY") for name in names):
                found.append(n.value.value)
    return found


def sent_queries() -> list[tuple[str, str]]:
    out = []
    for src in SOURCES:
        for q in _graphql_strings(ast.parse(src.read_text(), str(src))):
            out.append((src.name, q.replace("%s", "3")))  # printf-style ids, as the locust file fills them
    return out


def test_the_sources_do_send_queries() -> None:
    queries = sent_queries()
    assert {name for name, _ in queries} == {"hashicups.py", "probes.py"}
    assert any("coffee(" in q for _, q in queries) and any("coffees" in q for _, q in queries)


@pytest.mark.parametrize(("source", "query"), sent_queries())
def test_every_sent_query_is_valid_against_the_real_schema(source: str, query: str) -> None:
    errors = validate(SCHEMA, parse(query))
    assert not errors, f"{source}: {query}: {[e.message for e in errors]}"


def test_the_old_load_test_query_is_rejected() -> None:
    errors = validate(SCHEMA, parse('{ coffee(coffeeID: "3") { id name price } }'))
    assert any("Unknown argument" in e.message for e in errors)


def test_argument_types_are_checked() -> None:
    assert validate(SCHEMA, parse("{ coffee(id: 3) { id } }"))  # Int where String! is declared
    assert validate(SCHEMA, parse('{ coffees(id: "3") { id } }'))  # coffees takes no argument
    assert not validate(SCHEMA, parse('{ coffeeIngredients(coffeeID: "3") { name } }'))


class _NoUpstream:
    def request(self, method: str, path: str, body: bytes | None = None, headers: Any = ()) -> UpstreamResponse:
        return UpstreamResponse(200, [], b"[]")


def _post(api: PublicApi, query: str) -> tuple[int, Any]:
    body = json.dumps({"query": query}).encode()
    req = Request("POST", "/api", "/api", [("Content-Type", "application/json")], body, ("127.0.0.1", 1))
    reply = api.handle(req)
    return reply.status, json.loads(reply.body)


@pytest.mark.parametrize(("source", "query"), sent_queries())
def test_the_stand_in_accepts_every_sent_query(source: str, query: str) -> None:
    status, _doc = _post(PublicApi(_NoUpstream(), _NoUpstream()), query)  # type: ignore[arg-type]
    assert status == 200, (source, query)


def test_the_stand_in_rejects_like_gqlgen() -> None:
    api = PublicApi(_NoUpstream(), _NoUpstream())  # type: ignore[arg-type]
    status, doc = _post(api, '{ coffee(coffeeID: "3") { id } }')
    assert status == 422
    assert doc["data"] is None
    assert [e["extensions"]["code"] for e in doc["errors"]] == ["GRAPHQL_VALIDATION_FAILED"] * 2
    status, doc = _post(api, "{ coffees { id ")
    assert (status, doc["errors"][0]["extensions"]["code"]) == (422, "GRAPHQL_PARSE_FAILED")
