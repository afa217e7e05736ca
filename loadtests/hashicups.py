"""HashiCups shoppers for locust: ``locust -f loadtests/hashicups.py --host http://127.0.0.1:8080``.

Journeys (weights in brackets), all through the frontend's nginx as real users
enter the shop:
- [1] open the shop: ``GET /``
- [3] list coffees: ``POST /api`` ``{ coffees { id name price } }``
  (frontend → public-api → product-api → postgres: the full mesh path)
- [2] one coffee's detail: ``POST /api`` ``{ coffee(id: "N") { ... } }``
  with an id seen in a listing

A GraphQL answer is a failure when it is not a 200, not JSON, carries
``errors`` or lacks ``data``: public-api reports a dead product-api as a 200
with ``errors``, and counting that as success would hide exactly the outages
the harness is looking for.

Zones: with ``EH_ENTRYPOINTS='{"zone": "http://host:port", ...}'`` users are
spread round-robin over the zones' entry points (``--host`` is then only a
fallback); otherwise every user enters at ``--host``, zone ``$EH_ZONE`` or
``default``. Every request carries its entry zone in the request event's
context.

Records: with ``EH_REQUESTS_FILE=path`` each request is appended to that file
as one ``requests.jsonl`` line (docs/CONTRACTS.md §4), also with
``--processes N``.

Knobs (env): ``EH_SHAPE=steady|ramp`` picks a load shape from
``loadtests/shapes.py`` (unset: plain ``-u -r -t``); ``EH_WAIT`` is the think
time in seconds, ``"MIN,MAX"`` or one number (default ``0.1,0.5``; ``0`` for
maximum throughput).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant, events, task
from shapes import select_shape

try:
    from harness.traffic.recorder import RequestRecorder, parse_entrypoints
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from harness.traffic.recorder import RequestRecorder, parse_entrypoints

COFFEES_QUERY = {"query": "{ coffees { id name price } }"}
COFFEE_QUERY = '{ coffee(id: "%s") { id name price } }'

ENTRYPOINTS = parse_entrypoints(os.environ.get("EH_ENTRYPOINTS"))
DEFAULT_ZONE = os.environ.get("EH_ZONE") or "default"

# At most one shape class may be visible here: locust runs the first one it finds.
Shape = select_shape(os.environ.get("EH_SHAPE"))


def _wait_time() -> Any:
    """Think time from EH_WAIT: a shop with zero think time is a benchmark, not users."""
    raw = os.environ.get("EH_WAIT", "0.1,0.5").strip()
    parts = [float(p) for p in raw.split(",") if p.strip()]
    if len(parts) == 1:
        return constant(parts[0])
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return between(parts[0], parts[1])
    raise ValueError(f"EH_WAIT: expected 'SECONDS' or 'MIN,MAX', got {raw!r}")


# Round-robin slot per user. Each worker process counts on its own, offset by
# its worker index, so N workers still spread their users over all zones.
_slots = itertools.count()


def graphql_failure(status: int, body: bytes | None) -> str | None:
    """Why a GraphQL response counts as failed, or None when it is a success.

    Fast path first: a 200 whose body has ``"data"`` and no ``"errors"``
    anywhere is a success without parsing it (parsing every body cost more
    than recording the request). Anything else is parsed and judged exactly.
    """
    if status != 200:
        return f"HTTP {status}"
    if body and b'"errors"' not in body and b'"data"' in body:
        return None
    try:
        doc = json.loads(body or b"")
    except ValueError:
        return "response is not JSON"
    if not isinstance(doc, dict):
        return "response is not a JSON object"
    if doc.get("errors"):
        errs = doc["errors"]
        first = errs[0] if isinstance(errs, list) and errs else errs
        msg = first.get("message") if isinstance(first, dict) else first
        return f"GraphQL error: {msg}"
    if doc.get("data") is None:
        return "GraphQL response without data"
    return None


class HashiCupsUser(FastHttpUser):
    """One shopper bound to one entry zone for its whole life (like a real user near a zone)."""

    wait_time = _wait_time()

    def __init__(self, environment: Any) -> None:
        if ENTRYPOINTS:
            zones = list(ENTRYPOINTS)
            worker = int(getattr(environment.runner, "worker_index", 0) or 0)
            self.zone = zones[(next(_slots) + worker) % len(zones)]
            # FastHttpUser builds its client from self.host in __init__: set it first.
            self.host = ENTRYPOINTS[self.zone]
        else:
            self.zone = DEFAULT_ZONE
        super().__init__(environment)
        self._context = {"zone": self.zone}
        self.coffee_ids: list[str] = []

    def context(self) -> dict[str, Any]:
        """Merged into every request event's context: the recorder reads the zone from here."""
        return self._context

    @task(1)
    def shop(self) -> None:
        self.client.get("/", name="GET /", context={"endpoint": "shop"})

    @task(3)
    def coffees(self) -> None:
        with self.client.post(
            "/api", json=COFFEES_QUERY, name="POST /api coffees", context={"endpoint": "coffees"}, catch_response=True
        ) as resp:
            why = graphql_failure(resp.status_code, resp.content)
            if why is not None:
                resp.failure(why)
                return
            if self.coffee_ids:
                return  # the menu is known; re-reading it per request would only burn CPU
            try:
                items = json.loads(resp.content or b"")["data"]["coffees"] or []
                self.coffee_ids = [str(c["id"]) for c in items if isinstance(c, dict) and "id" in c]
            except (KeyError, TypeError, ValueError):
                resp.failure("coffees: unexpected response shape")

    @task(2)
    def coffee(self) -> None:
        coffee_id = random.choice(self.coffee_ids) if self.coffee_ids else str(random.randint(1, 6))
        with self.client.post(
            "/api",
            json={"query": COFFEE_QUERY % coffee_id},
            name="POST /api coffee",
            context={"endpoint": "coffee"},
            catch_response=True,
        ) as resp:
            why = graphql_failure(resp.status_code, resp.content)
            if why is not None:
                resp.failure(why)


@events.init.add_listener
def _attach_recorder(environment: Any, **_kwargs: Any) -> None:
    """Start recording in every locust process (master and each forked worker).

    Runs after ``--processes`` forked, so each process opens its own
    O_APPEND descriptor; the master never fires request events and writes nothing.
    """
    recorder = RequestRecorder.from_env()
    if recorder is not None:
        recorder.attach(environment)
