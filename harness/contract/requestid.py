"""The id each user request carries into the mesh, so the verifier can find the entry hop of every request.

Why: a zone's entry service (the frontend's nginx) passes each user request through `/api` to its own
sidecar, whose access log has one line for it. With one entry pod per zone, a gap in that log shows as
requests with no entry hop in their lifetime; with two or more, another pod's hop at the same moment
hides it. An id sent by the user and logged by the sidecar names the request's own line.

The format: ``eh-`` and 16 hex digits of a 63-bit number. The sidecars log ``%REQ(X-REQUEST-ID)%``
(Consul's access-log format); nginx passes the header through (it sets none of its own), and Envoy keeps
an id it receives from an internal caller. Not a UUID on purpose: Envoy's UUID request-id extension
writes a trace reason into a UUID it keeps, which would change the id on the way. The verifier keeps
only ids with this prefix, as a BIGINT: the mesh's own (UUID) ids of the inner hops are never stored.

Standard library only: it travels with the locustfile into the zones' worker pods
(`harness.traffic.inzone.LOCUST_SIDE`).
"""

from __future__ import annotations

import random

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_PREFIX = "eh-"
REQUEST_ID_BITS = 63  # a BIGINT's non-negative range: DuckDB reads the hex back without overflow


def new_request_id() -> tuple[int, str]:
    """A fresh id: (the number `requests.jsonl` records, the header value the sidecar logs).

    From the `random` module's own generator, which Python reseeds in a forked child: locust's
    `--processes` forks after importing the locustfile, and a generator of our own would have given every
    worker the same ids (in the same zone, one request's entry line would have stood for another's).
    """
    n = random.getrandbits(REQUEST_ID_BITS)
    return n, f"{REQUEST_ID_PREFIX}{n:016x}"


def request_id_sql(column: str) -> str:
    """SQL: the BIGINT of an access-log `column` holding a harness id (`REQUEST_ID_PREFIX`), else NULL."""
    return (
        f"CASE WHEN starts_with({column}, '{REQUEST_ID_PREFIX}') "
        f"THEN try_cast('0x' || substr({column}, {len(REQUEST_ID_PREFIX) + 1}) AS BIGINT) END"
    )
