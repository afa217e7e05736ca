"""Errors an experiment declares as expected: a single point of failure and its budget.

Some faults break what the design cannot survive: the Region database has one
primary and nothing promotes its read replica, so losing the primary's AZ
fails every zone's coffee queries until it is back. Such an experiment says so
in the action's arguments::

    "arguments": {"zone": "${db_zone}", "service": "postgres", "duration_s": 8,
                  "expected_errors": {"singlePointOfFailure": "postgres", "errorBudget": 0.9,
                                      "why": "one primary, no automatic failover to the replica"}}

The action writes the declaration into the fault's inject line of
chaos.jsonl (`expected_error_budget`, `single_point_of_failure`,
`expected_why`), and the verdict judges that fault's availability window
against the declared budget instead of the SLO's, states the single point of
failure and its errors against that budget in the fault's result, and still
fails when more requests fail than declared (docs/CONTRACTS.md, chaos.jsonl).
The declaration is checked before anything starts (`check`), like every
other argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.topology import Topology

KEYS = frozenset({"singlePointOfFailure", "errorBudget", "why"})
ARGUMENT = "expected_errors"


def check(value: Any, topology: Topology | None = None) -> dict[str, Any]:
    """The normalised declaration; ValueError with a one-line message (the field named) when it is wrong."""
    if not isinstance(value, Mapping):
        raise ValueError("a JSON object {singlePointOfFailure, errorBudget, why}")
    unknown = sorted(set(value) - KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (keys: {', '.join(sorted(KEYS))})")
    budget = value.get("errorBudget")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 <= budget <= 1:
        raise ValueError(f"errorBudget: a share of user requests between 0 and 1, got {budget!r}")
    spof = value.get("singlePointOfFailure")
    services = [spof] if isinstance(spof, str) else spof
    if not isinstance(services, list) or not services or not all(isinstance(s, str) and s for s in services):
        raise ValueError("singlePointOfFailure: the service (or list of services) whose loss the design cannot survive")
    if topology is not None:
        names = [s.name for s in topology.services]
        for s in services:
            if s not in names:
                raise ValueError(f"singlePointOfFailure: service {s!r} is not in the topology ({', '.join(names)})")
    why = value.get("why", "")
    if not isinstance(why, str):
        raise ValueError("why: a sentence")
    return {"singlePointOfFailure": list(services), "errorBudget": float(budget), "why": why}


def timeline_fields(declared: Mapping[str, Any] | None) -> dict[str, Any]:
    """The inject line's fields for a (checked) declaration; nothing when none was made."""
    if declared is None:
        return {}
    d = check(declared)
    return {
        "expected_error_budget": d["errorBudget"],
        "single_point_of_failure": d["singlePointOfFailure"],
        "expected_why": d["why"],
    }
