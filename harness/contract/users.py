"""How long a user waits for the shop: one definition for every "did it answer?" the harness asks.

The locust users (`loadtests/hashicups.py` `CONNECT_TIMEOUT_S`,
`NETWORK_TIMEOUT_S`) count a request as failed past these bounds; the
steady-state shop probe (`harness.chaos.probes`) and the kind/EKS entry-point
monitor (`harness.backends.kube.backend.EntryMonitor`) use the same ones, so
that "no answer" means the same everywhere. A shorter bound in one of them
called a slow but correct answer "none": the probe's steady state deviated,
or the entry point was recorded down and its zone's failed requests were
left out of the availability budget. The answer bound is above the mesh's
own worst case (three 2 s connect attempts per hop with the rendered
retries). The locust file runs where this package may not be installed (in
the zones' pods), so it holds the two numbers itself; a test keeps them equal.
"""

from __future__ import annotations

import httpx

CONNECT_TIMEOUT_S = 3.0  # one lost SYN is retransmitted after 1 s
ANSWER_TIMEOUT_S = 10.0
USER_TIMEOUT = httpx.Timeout(ANSWER_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)  # for the harness's own HTTP asks
PROBE_ENDPOINT = "probe"
"""`requests.jsonl`'s `endpoint` of the zone probes (loadtests/hashicups.py `ZoneProbe`, which holds it too): the
harness's own instrument, each a coffees query through every service of the chain, at a rate the probe budget sets
from how busy the machine is. The shoppers' endpoints are `shop` (the page), `coffees` and `coffee`."""

WAIT_ENV = "EH_WAIT"
"""The shoppers' think time between two requests (loadtests/hashicups.py reads it, with the same rule and default
as `parse_wait`; a test keeps them equal): seconds, ``MIN,MAX`` or one number."""
DEFAULT_WAIT = "0.1,0.5"


def parse_wait(raw: str) -> tuple[float, float]:
    """`WAIT_ENV`'s value as (shortest, longest) think time in seconds; ValueError naming the value if bad."""
    try:
        parts = [float(p) for p in raw.strip().split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] >= 0:
        return parts[0], parts[0]
    if len(parts) == 2 and 0 <= parts[0] <= parts[1]:
        return parts[0], parts[1]
    raise ValueError(f"expected 'SECONDS' or 'MIN,MAX' (0 <= MIN <= MAX), got {raw!r}")


def users_quiet_bound(longest_wait_s: float) -> float:
    """The longest a user's own requests can leave a zone with none of them in flight while the user goes on.

    A user starts its next request a think time (at most `longest_wait_s`) after its last one ended, and a
    request that gets no answer still ends within the connect and answer timeouts: so a zone with users whose
    requests are all between two of them is quiet at most this long, however slow the think time is set.
    """
    return longest_wait_s + CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S
