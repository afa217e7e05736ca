"""Traffic: HashiCups users driven by locust, recorded request by request.

The harness side (`run_traffic`, `TrafficRunner`) starts locust in its own
process and never imports locust (gevent monkey-patching). The locust side is
`loadtests/hashicups.py`, which uses `harness.traffic.recorder` to append
`requests.jsonl` (docs/CONTRACTS.md §4). `RequestWatch` follows that file
while it grows (warm-up, cool-down); `ProbeBudget` fits the zone probes'
rate to what this machine carries.
"""

from harness.contract.requestwatch import RequestWatch, Stall
from harness.traffic.budget import BudgetDecision, ProbeBudget
from harness.traffic.recorder import RequestRecorder, parse_entrypoints
from harness.traffic.runner import (
    DEFAULT_LOCUSTFILE,
    TrafficError,
    TrafficResult,
    TrafficRunner,
    ZoneCounts,
    run_traffic,
    summarise_requests,
)

__all__ = [
    "DEFAULT_LOCUSTFILE",
    "BudgetDecision",
    "ProbeBudget",
    "RequestRecorder",
    "RequestWatch",
    "Stall",
    "TrafficError",
    "TrafficResult",
    "TrafficRunner",
    "ZoneCounts",
    "parse_entrypoints",
    "run_traffic",
    "summarise_requests",
]
