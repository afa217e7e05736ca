"""chaostoolkit actions of the harness (`provider: python, module: harness.chaos.actions`).

Each action records the fault in the chaos timeline before it acts, holds it
for `duration_s` where that makes sense, restores, waits until the zone is
whole again, and records the restore. Each has a matching restore action for
the experiment's `rollbacks` (run with `--rollback-strategy always`), which is
idempotent, so a game day interrupted half-way still puts things back.

The backend comes from EH_BACKEND / EH_CLUSTER / EH_CONTEXT (set by
`harness chaos`), or from the experiment's `configuration` block.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from harness.backends import BackendOptions, connect
from harness.backends.base import Backend
from harness.chaos.timeline import FaultKind, record
from harness.errors import BackendError

READY_TIMEOUT_S = 90.0


def _backend(configuration: dict[str, Any] | None) -> Backend:
    cfg = configuration or {}
    return connect(
        BackendOptions.from_env(
            name=cfg.get("eh_backend"), cluster=cfg.get("eh_cluster"), context=cfg.get("eh_context")
        )
    )


def _fault_id(action: str, zone: str, service: str | None = None) -> str:
    short = zone.split("-", 3)[-1]
    return "-".join(x for x in (action, service, short, uuid.uuid4().hex[:4]) if x)


def ready_services(backend: Backend, zone: str) -> set[str]:
    """Logical services with at least one Ready pod in `zone`."""
    phases = backend.status().pods
    return {
        p.service for p in backend.inventory().pods(alive_only=True) if p.zone == zone and phases.get(p.pod) == "Ready"
    }


def wait_ready(backend: Backend, zone: str, services: list[str], timeout_s: float = READY_TIMEOUT_S) -> float:
    """Block until every service in `services` has a Ready pod in `zone`; returns seconds waited."""
    t0 = time.time()
    while True:
        missing = set(services) - ready_services(backend, zone)
        if not missing:
            return time.time() - t0
        if time.time() - t0 > timeout_s:
            raise BackendError(f"{zone}: {', '.join(sorted(missing))} not ready after {timeout_s:.0f} s")
        time.sleep(0.2)


def _zone_services(backend: Backend, zone: str) -> list[str]:
    return sorted({p.service for p in backend.inventory().pods(alive_only=True) if p.zone == zone})


def kill_pod(zone: str, service: str, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Kill every pod of `service` in `zone`; the fault lasts until the Deployment has replaced them."""
    b = _backend(configuration)
    fault = _fault_id("kill-pod", zone, service)
    b.require_capability("kill_pod")  # refused before anything is recorded or injected
    record(fault, "inject", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service], entry_down=service == "frontend")
    pods = b.kill_pod(zone, service)
    time.sleep(0.5)  # the dead pods must leave the inventory before we wait for replacements
    waited = wait_ready(b, zone, [service])
    record(fault, "restore", "kill_pod", zone, FaultKind.SERVICE_DOWN, [service])
    return {"fault": fault, "killed": pods, "replaced_after_s": round(waited + 0.5, 3)}


def make_unready(
    zone: str, service: str, duration_s: float = 10.0, configuration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fail the readiness of `service` in `zone` for `duration_s` (pods keep running)."""
    b = _backend(configuration)
    fault = _fault_id("unready", zone, service)
    b.require_capability("set_pod_unready")
    record(fault, "inject", "make_unready", zone, FaultKind.SERVICE_DOWN, [service], entry_down=service == "frontend")
    pods = b.set_pod_unready(zone, service)
    try:
        time.sleep(duration_s)
    finally:
        b.set_pod_ready(zone, service)
        wait_ready(b, zone, [service])
        record(fault, "restore", "make_unready", zone, FaultKind.SERVICE_DOWN, [service])
    return {"fault": fault, "pods": pods}


def make_ready(zone: str, service: str, configuration: dict[str, Any] | None = None) -> list[str]:
    """Rollback of `make_unready` (idempotent)."""
    return _backend(configuration).set_pod_ready(zone, service)


def kill_node(
    zone: str, node: str | None = None, duration_s: float = 10.0, configuration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stop a node of `zone` (the first one unless `node` is named) for `duration_s`.

    Its pods die; services left with no instance in the zone fall back to the Region.
    Node names differ per backend (kind-worker3, ip-10-0-...), so experiments name the zone.
    """
    b = _backend(configuration)
    nodes = sorted(n for n, z in b.nodes().items() if z == zone)
    if not nodes or (node is not None and node not in nodes):
        raise BackendError(f"no node {node or ''} in zone {zone}")
    node = node or nodes[0]
    alive = b.inventory().pods(alive_only=True)
    on_node = {p.service for p in alive if p.node == node}
    elsewhere = {p.service for p in alive if p.zone == zone and p.node != node}
    lost = sorted(on_node - elsewhere)
    fault = _fault_id("kill-node", zone, node)
    b.require_capability("kill_node")
    record(fault, "inject", "kill_node", zone, FaultKind.SERVICE_DOWN, lost, entry_down="frontend" in lost, node=node)
    b.kill_node(node)
    try:
        time.sleep(duration_s)
    finally:
        b.restore_node(node)
        wait_ready(b, zone, sorted(on_node))
        record(fault, "restore", "kill_node", zone, FaultKind.SERVICE_DOWN, lost, node=node)
    return {"fault": fault, "node": node, "services_lost": lost}


def restore_node(zone: str, node: str | None = None, configuration: dict[str, Any] | None = None) -> None:
    """Rollback of `kill_node` (idempotent): the named node, or every node of the zone."""
    b = _backend(configuration)
    for n in [node] if node else sorted(n for n, z in b.nodes().items() if z == zone):
        b.restore_node(n)


def zone_outage(zone: str, duration_s: float = 10.0, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every node of `zone` down for `duration_s`."""
    b = _backend(configuration)
    services = _zone_services(b, zone)
    fault = _fault_id("zone-outage", zone)
    b.require_capability("zone_outage")
    record(fault, "inject", "zone_outage", zone, FaultKind.ZONE_DOWN, services, entry_down=True)
    b.zone_outage(zone)
    try:
        time.sleep(duration_s)
    finally:
        b.restore_zone(zone)
        wait_ready(b, zone, services)
        record(fault, "restore", "zone_outage", zone, FaultKind.ZONE_DOWN, services)
    return {"fault": fault, "services": services}


def restore_zone(zone: str, configuration: dict[str, Any] | None = None) -> None:
    _backend(configuration).restore_zone(zone)


def degrade_link(
    zone: str,
    latency_ms: float,
    loss_percent: float = 0.0,
    duration_s: float = 10.0,
    configuration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Add latency / loss on the zone's service link for `duration_s`: traffic must stay in-zone."""
    b = _backend(configuration)
    fault = _fault_id("link", zone)
    b.require_capability("set_link")  # e.g. EKS, or kind without sch_netem: refused, nothing recorded
    record(
        fault, "inject", "degrade_link", zone, FaultKind.LINK_DEGRADED, latency_ms=latency_ms, loss_percent=loss_percent
    )
    b.set_link(zone, latency_ms, loss_percent)
    try:
        time.sleep(duration_s)
    finally:
        b.clear_link(zone)
        record(fault, "restore", "degrade_link", zone, FaultKind.LINK_DEGRADED)
    return {"fault": fault}


def clear_link(zone: str, configuration: dict[str, Any] | None = None) -> None:
    _backend(configuration).clear_link(zone)


def partition_zone(zone: str, duration_s: float = 10.0, configuration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cut the zone's service link for `duration_s`.

    The zone's shop needs postgres, which lives only in the Region, so its users
    cannot be served while the link is cut: the fault is recorded with
    `entry_down`, and the verdict reports those requests apart from the budget
    while it checks that the other zones are untouched and this one recovers.

    The restore is recorded at the heal (recovery is measured from there); the
    action then waits until the zone's pods are Ready again: their readiness
    depends on postgres, and Envoy keeps an ejected postgres host out for a
    growing time after repeated ejections, so "healed" and "whole" differ.
    """
    b = _backend(configuration)
    services = _zone_services(b, zone)
    fault = _fault_id("partition", zone)
    b.require_capability("partition_zone")
    record(fault, "inject", "partition_zone", zone, FaultKind.PARTITION, entry_down=True)
    b.partition_zone(zone)
    try:
        time.sleep(duration_s)
    finally:
        b.heal_zone(zone)
        record(fault, "restore", "partition_zone", zone, FaultKind.PARTITION)
    waited = wait_ready(b, zone, services)
    return {"fault": fault, "whole_after_heal_s": round(waited, 3)}


def heal_zone(zone: str, configuration: dict[str, Any] | None = None) -> None:
    _backend(configuration).heal_zone(zone)
