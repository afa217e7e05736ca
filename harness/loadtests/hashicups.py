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
``--processes N``. Every request through ``/api`` carries a fresh
``X-Request-Id`` (``eh-`` and 16 hex digits, harness/contract/requestid.py),
recorded as its ``request_id``: the entry sidecar's access log names the
request's own line by it.

Zone probes (``ZoneProbe``, one per zone of ``EH_PROBE_ZONES``, a JSON list,
default every zone of ``EH_ENTRYPOINTS``): a coffees query into its zone every
``EH_PROBE_PERIOD`` seconds (default 0.03; ``EH_PROBE_PERIODS``, JSON
``{zone: seconds}``, sets a zone's own) on a fixed clock, whether or not the
previous one has answered (an open model: a slow request during a failover
does not delay the next probe, so the records keep their spacing exactly
when it matters). ``EH_PROBE_BUDGET`` names the probe budget's file: its
``scale`` multiplies every period: the harness writes it before locust
starts (the probes' slowest) and steps it up to what it measured this
machine carries (harness/traffic/budget.py). The
gap between two records bounds how precisely a failover or recovery instant
can be known; with shoppers alone a zone got ~6 requests/s (resolution ~170
ms), the probe brings every zone pair to ~30-45 ms (the period plus the jitter of
the records), within the 50 ms asked for. At most
``EH_PROBE_INFLIGHT`` probes of a zone are in flight (default: as many as
ticks fit in the two timeouts, so no tick is ever skipped: a partition once held
32 probes for ~0.5 s and the clock stopped for 300 ms right at the heal, where
the recovery instant is read); ``0`` disables probes. They take one of the ``-u`` users per probed zone (locust's
``fixed_count``): the harness adds them to its shopper count. `harness e2e`
probes the zones its experiments act on (8 zones at 33 requests/s each would
saturate the local backend's 2 cores and stretch every gap).

Timeouts, set deliberately (locust's defaults are 60 s each): a connection
must be up within ``CONNECT_TIMEOUT_S`` (3 s: one lost SYN is retransmitted
after 1 s), and an answer must come within ``NETWORK_TIMEOUT_S`` (10 s: above
the mesh's own worst case, three 2 s connect attempts per hop with the
rendered retries). A user whose connection goes to a pod that died would
otherwise wait a minute and the run would record nothing from its zone; the
entry points reset such connections at once, these bound what is left.

Knobs (env): ``EH_SHAPE=steady|ramp`` picks a load shape from
``loadtests/shapes.py`` (unset: plain ``-u -r -t``); ``EH_WAIT`` is the think
time in seconds, ``"MIN,MAX"`` or one number (default ``0.1,0.5``; ``0`` for
maximum throughput).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, between, constant, events, task
from locust.user.task import LOCUST_STATE_STOPPING
from shapes import select_shape, stop_shape_on_sigterm

try:
    from harness.contract.requestid import REQUEST_ID_HEADER, new_request_id
    from harness.traffic.budget import ScaleFile
    from harness.traffic.recorder import attach_from_env, parse_entrypoints
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from harness.contract.requestid import REQUEST_ID_HEADER, new_request_id
    from harness.traffic.budget import ScaleFile
    from harness.traffic.recorder import attach_from_env, parse_entrypoints

COFFEES_QUERY = {"query": "{ coffees { id name price } }"}
COFFEE_QUERY = '{ coffee(id: "%s") { id name price } }'

ENTRYPOINTS = parse_entrypoints(os.environ.get("EH_ENTRYPOINTS"))
DEFAULT_ZONE = os.environ.get("EH_ZONE") or "default"
PROBE_PERIOD_S = float(os.environ.get("EH_PROBE_PERIOD", "0.03"))
PROBE_ZONES = [
    z for z in json.loads(os.environ.get("EH_PROBE_ZONES") or json.dumps(list(ENTRYPOINTS))) if z in ENTRYPOINTS
]
# per-zone periods over EH_PROBE_PERIOD (JSON {zone: seconds}): `harness e2e` probes an availability zone
# faster, because its entry spreads the calls over every AZ and only its own share makes its zone's hops
PROBE_PERIODS = {str(z): float(v) for z, v in json.loads(os.environ.get("EH_PROBE_PERIODS") or "{}").items()}
# the probe budget's factor on every period (harness.traffic.budget): slower probes where the machine is small
PROBE_BUDGET = ScaleFile(os.environ.get("EH_PROBE_BUDGET"))
# a user's bounds; harness.contract.users holds the same two for the harness's own "did it answer?" (this file
# runs where the harness package may not be installed; tests/test_chaos.py keeps them equal)
CONNECT_TIMEOUT_S = 3.0
NETWORK_TIMEOUT_S = 10.0
PROBE_ENDPOINT = "probe"  # requests.jsonl's endpoint of the zone probes (harness.contract.users holds it too)


def _inflight(period_s: float) -> int:
    """At most this many probes of a zone in flight: EH_PROBE_INFLIGHT, else enough that a tick is never skipped
    (a request ends within the timeouts at the latest)."""
    if os.environ.get("EH_PROBE_INFLIGHT"):
        return int(os.environ["EH_PROBE_INFLIGHT"])
    return math.ceil((CONNECT_TIMEOUT_S + NETWORK_TIMEOUT_S) / period_s) + 1 if period_s > 0 else 0


PROBE_INFLIGHT = _inflight(PROBE_PERIOD_S)
_MOST_INFLIGHT = max([PROBE_INFLIGHT, *(_inflight(v) for v in PROBE_PERIODS.values())])

# At most one shape class may be visible here: locust runs the first one it finds.
Shape = select_shape(os.environ.get("EH_SHAPE"))


def _api(endpoint: str) -> dict[str, Any]:
    """Keyword arguments of one request through `/api`: a fresh id sent as `X-Request-Id` and recorded.

    The entry sidecar logs the id on the request's own line, so the verifier finds every request's entry
    hop by it (harness.contract.requestid), not only some hop of the zone at the same moment.
    """
    n, header = new_request_id()
    return {"headers": {REQUEST_ID_HEADER: header}, "context": {"endpoint": endpoint, "request_id": n}}


def wait_bounds(raw: str) -> tuple[float, float]:
    """EH_WAIT's (shortest, longest) think time: the rule of `harness.contract.users.parse_wait`, which the
    harness records in the run directory for the verifier (a test keeps the two equal)."""
    try:
        parts = [float(p) for p in raw.strip().split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] >= 0:
        return parts[0], parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return parts[0], parts[1]
    raise ValueError(f"EH_WAIT: expected 'SECONDS' or 'MIN,MAX' (0 <= MIN <= MAX), got {raw!r}")


def _wait_time() -> Any:
    """Think time from EH_WAIT: a shop with zero think time is a benchmark, not users."""
    lo, hi = wait_bounds(os.environ.get("EH_WAIT", "0.1,0.5"))
    return constant(lo) if lo == hi else between(lo, hi)


# Round-robin slot per user. Each worker process counts on its own: locust's master hands users to its
# workers one by one in turn (locust/dispatch.py `_distribute_users`), so worker k's i-th user is the
# (k + i * workers)-th overall. Offset by the index alone, `-u 6 --processes 2` over six zones put worker 0's
# shoppers in zones 0-2 and worker 1's in 1-3: two zones had none (the verdict's coverage fails them).
# EH_LOCUST_PROCESSES: the local `--processes` count (harness.traffic.runner sets it; workers in the zones
# serve one zone each and leave it unset: 1).
_WORKERS = max(1, int(os.environ.get("EH_LOCUST_PROCESSES") or 1))
_slots = itertools.count()
_probe_slots = itertools.count()


def _slot(counter: itertools.count[int], environment: Any) -> int:
    """This user's place in the master's round robin over every worker's users."""
    worker = int(getattr(environment.runner, "worker_index", 0) or 0)
    return worker + next(counter) * _WORKERS


_NULL_DATA = re.compile(rb'"data"\s*:\s*null')


def graphql_failure(status: int, body: bytes | None) -> str | None:
    """Why a GraphQL response counts as failed, or None when it is a success.

    Fast path first: a 200 whose body has ``"data"``, not as ``null``, and no
    ``"errors"`` anywhere is a success without parsing it (parsing every body
    cost more than recording the request). Anything else is parsed and judged
    exactly (``{"data":null}`` passed the fast path as a success).
    """
    if status != 200:
        return f"HTTP {status}"
    if body and b'"errors"' not in body and b'"data"' in body and not _NULL_DATA.search(body):
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


def _failure(resp: Any) -> str | None:
    """Why a response failed: the transport error when none came back (a timeout, a reset), else the GraphQL verdict."""
    if not resp.status_code and getattr(resp, "error", None) is not None:
        return f"no response: {resp.error}"
    return graphql_failure(resp.status_code, resp.content)


class HashiCupsUser(FastHttpUser):
    """One shopper bound to one entry zone for its whole life (like a real user near a zone)."""

    wait_time = _wait_time()
    connection_timeout = CONNECT_TIMEOUT_S
    network_timeout = NETWORK_TIMEOUT_S

    def __init__(self, environment: Any) -> None:
        if ENTRYPOINTS:
            zones = list(ENTRYPOINTS)
            self.zone = zones[_slot(_slots, environment) % len(zones)]
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
            "/api", json=COFFEES_QUERY, name="POST /api coffees", catch_response=True, **_api("coffees")
        ) as resp:
            why = _failure(resp)
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
            catch_response=True,
            **_api("coffee"),
        ) as resp:
            why = _failure(resp)
            if why is not None:
                resp.failure(why)


class ZoneProbe(FastHttpUser):
    """A coffees query into one zone every PROBE_PERIOD_S, on a fixed clock (see the module docstring).

    One instance per probed zone (``fixed_count``); each takes the next zone
    round-robin, over every worker's probes under ``--processes`` (`_slot`).
    """

    # No probes: not a user at all. Locust reads a fixed_count of 0 as "weighted", and handed out a
    # share of the shoppers as probes with a period of 0 that spun without yielding (`--probe-period 0`
    # with 4 users: 1 answer in 6 s).
    abstract = not (PROBE_ZONES and PROBE_PERIOD_S > 0 and PROBE_INFLIGHT > 0)
    fixed_count = len(PROBE_ZONES)
    wait_time = constant(0)
    connection_timeout = CONNECT_TIMEOUT_S
    network_timeout = NETWORK_TIMEOUT_S
    concurrency = max(1, _MOST_INFLIGHT)

    def __init__(self, environment: Any) -> None:
        self.zone = PROBE_ZONES[_slot(_probe_slots, environment) % len(PROBE_ZONES)]
        self.period_s = PROBE_PERIODS.get(self.zone, PROBE_PERIOD_S)
        self.inflight = _inflight(self.period_s)
        self.host = ENTRYPOINTS[self.zone]
        super().__init__(environment)
        self._context = {"zone": self.zone}

    def context(self) -> dict[str, Any]:
        return self._context

    def _one(self) -> None:
        with self.client.post(
            "/api", json=COFFEES_QUERY, name="POST /api probe", catch_response=True, **_api(PROBE_ENDPOINT)
        ) as resp:
            why = _failure(resp)
            if why is not None:
                resp.failure(why)

    def _sleep_until(self, tick: float) -> float:
        """Sleep until `tick`, looking at the probe budget's factor meanwhile; returns the tick, moved if it changed.

        A new factor moves the tick to the last one plus the new period: the
        budget measures the new rate SWITCH_S after writing it, and a probe
        asleep for its slowest period (0.5 s) would otherwise start the new
        rate only after it woke (harness.traffic.budget).
        """
        scale = PROBE_BUDGET.scale()
        while (delay := tick - time.monotonic()) > 0:
            gevent.sleep(min(delay, PROBE_BUDGET.check_s))
            now = PROBE_BUDGET.scale()
            if now != scale:
                tick += self.period_s * (now - scale)
                scale = now
        return tick

    @task
    def probe(self) -> None:
        """Fire on the clock; never wait for an answer before the next tick (up to its `inflight` at once).

        Ends when locust stops the user (its state turns "stopping"), after
        the probes in flight have their answers: a task that never returned
        held every stop for the whole `--stop-timeout`, and killing it there
        dropped those answers from the records.
        """
        pool = Pool(max(1, self.inflight))
        next_at = time.monotonic()
        try:
            while self._state != LOCUST_STATE_STOPPING:
                next_at = self._sleep_until(next_at)
                if pool.free_count() > 0:
                    pool.spawn(self._one)
                next_at += self.period_s * PROBE_BUDGET.scale()
                if next_at < time.monotonic() - self.period_s:
                    next_at = time.monotonic()  # fell behind (CPU starved): restart the clock, never burst
            pool.join()  # locust's --stop-timeout bounds this wait
        finally:
            pool.kill(block=False)


@events.init.add_listener
def _attach_recorder(environment: Any, **_kwargs: Any) -> None:
    """Start recording in every locust process (master and each worker).

    Runs after ``--processes`` forked, so each process opens its own
    O_APPEND descriptor; the master fires no request events itself and only
    appends what workers in entry-zone pods forward (``EH_FORWARD_RECORDS``,
    harness.traffic.inzone).
    """
    attach_from_env(environment)
    stop_shape_on_sigterm(environment)
