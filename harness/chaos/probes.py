"""chaostoolkit probes of the harness (`provider: python, module: harness.chaos.probes`).

Used in steady-state hypotheses: is every pod Ready, does each zone's shop
answer. They only read; tolerances are set in the experiment.
"""

from __future__ import annotations

from typing import Any

import httpx

from harness.chaos.actions import _backend, ready_services

COFFEES = {"query": "{ coffees { id name } }"}


def all_pods_ready(configuration: dict[str, Any] | None = None) -> bool:
    """True when the backend reports every pod Ready."""
    st = _backend(configuration).status()
    return st.up and bool(st.pods) and all(phase == "Ready" for phase in st.pods.values())


def zone_has_ready(zone: str, service: str, configuration: dict[str, Any] | None = None) -> bool:
    return service in ready_services(_backend(configuration), zone)


def shop_answers(zone: str, configuration: dict[str, Any] | None = None) -> int:
    """HTTP status of a coffees query entering at `zone` (0 when no response)."""
    url = _backend(configuration).entrypoints()[zone]
    try:
        r = httpx.post(f"{url}/api", json=COFFEES, timeout=5)
    except httpx.HTTPError:
        return 0
    if r.status_code == 200 and r.json().get("errors"):
        return 502
    return r.status_code


def every_shop_answers(configuration: dict[str, Any] | None = None) -> bool:
    b = _backend(configuration)
    return all(shop_answers(z, configuration) == 200 for z in b.entrypoints())
