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
