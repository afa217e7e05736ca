"""Attempt evidence: per-host upstream counters of every sidecar (`upstream-stats.jsonl`).

An access-log line names only the *last* attempt's host: a retry that went to
another Local Zone first and then to the Region leaves a clean log. Envoy's own
per-host counters (`GET /clusters?format=json` on the admin API) name every
host a sidecar tried (`cx_total`, `cx_connect_fail`, `rq_total` ...). A
snapshot of them from every live meshed pod is taken at the start of traffic,
around each fault boundary and at the end; the verifier diffs consecutive
snapshots of a pod to see which hosts it tried in between.

Labels: ``start``, ``before <fault>`` (just before a primitive that kills pods:
a killed pod's counters die with it, so what it tried since the last snapshot
is caught first), ``inject <fault>`` (right after the primitive acted),
``restore <fault>`` (right after the undoing primitive), ``end``.

Counters are cumulative per Envoy process; a replacement pod starts at zero.

Evidence must not disturb what it measures: a snapshot is taken right at a
fault boundary, exactly where failover and recovery instants are read, so it
asks every sidecar in one `Backend.envoy_admin_many` (the local backend: one
request to its daemon, not one per pod), whose threads run at the lowest CPU
priority (nice 19) and yield to traffic.
Envoy's proto3 JSON leaves out zero values and writes uint64 as strings, so a
missing counter is 0.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.backends.base import AdminAnswers
from harness.contract.inventory import Inventory
from harness.contract.rundir import SNAPSHOT_ADMIN_TIMEOUT_S, UPSTREAM_STATS_FILE


class AdminReader(Protocol):
    """What a snapshot reads of a backend (any `harness.backends.base.Backend` is one)."""

    def inventory(self) -> Inventory: ...
    def envoy_admin_many(self, pods: Sequence[str], path: str, timeout_s: float = 5.0) -> AdminAnswers: ...


COUNTERS = ("cx_total", "cx_connect_fail", "rq_total", "rq_error", "rq_timeout")
# Gauges, not counters (Envoy's admin docs, per host statistics): what is open when the snapshot reads it. A TCP
# upstream's connection is logged when it closes, and the real product-api holds its postgres connections for the
# pod's life: rq_total - rq_active is what a TCP cluster's access log owes (harness.verify `_counted_without_lines`)
GAUGES = ("cx_active", "rq_active")
INBOUND_CLUSTERS = frozenset({"local_app"})  # the sidecar's own app: not an upstream


def on_loopback(address: str) -> bool:
    """Whether a cluster host is on the pod's own loopback: the pod itself, never another pod of the mesh.

    consul-dataplane's Envoy has bootstrap clusters beside the mesh's (Consul's bootstrap template:
    `self_admin`, 127.0.0.1:19000, behind the ready listener the kubelet probes; the dataplane's own xDS
    server; `local_app`, the app). Their counters move with every readiness probe, and read as upstream
    attempts they named 127.0.0.1:19000 a host no inventory knows: every kind/EKS run's hub-and-spoke and
    coverage "unverified". A mesh upstream's hosts are pod (or node) addresses, never loopback.
    """
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# Envoy's HostUtility::healthFlagsToString order and wording, from the JSON health_status fields
_HEALTH_FLAGS = (
    ("failed_active_health_check", "/failed_active_hc"),
    ("failed_outlier_check", "/failed_outlier_check"),
)
_EDS_FLAGS = {"UNHEALTHY": "/failed_eds_health", "DEGRADED": "/degraded_eds_health", "DRAINING": "/eds_status_draining"}
_LATER_FLAGS = (
    ("failed_active_degraded_check", "/degraded_active_hc"),
    ("pending_dynamic_removal", "/pending_dynamic_removal"),
    ("pending_active_hc", "/pending_active_hc"),
    ("excluded_via_immediate_hc_fail", "/excluded_via_immediate_hc_fail"),
    ("active_hc_timeout", "/active_hc_timeout"),
)


def health_flags(status: dict[str, Any]) -> str:
    """The text `/clusters` prints as health_flags (``healthy`` or ``/failed_eds_health`` ...)."""
    out = "".join(text for key, text in _HEALTH_FLAGS if status.get(key))
    out += _EDS_FLAGS.get(str(status.get("eds_health_status", "")), "")
    out += "".join(text for key, text in _LATER_FLAGS if status.get(key))
    return out or "healthy"


def parse_clusters(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (upstream cluster, host) of a `/clusters?format=json` answer: inbound clusters and hosts on the
    pod's own loopback (`on_loopback`: the dataplane's bootstrap clusters) left out."""
    rows: list[dict[str, Any]] = []
    for cluster in doc.get("cluster_statuses") or []:
        name = str(cluster.get("name", ""))
        if name in INBOUND_CLUSTERS:
            continue
        for host in cluster.get("host_statuses") or []:
            sock = (host.get("address") or {}).get("socket_address") or {}
            if on_loopback(str(sock.get("address", ""))):
                continue
            stats = {s.get("name"): s.get("value") for s in host.get("stats") or []}
            row: dict[str, Any] = {"cluster": name, "host": f"{sock.get('address', '')}:{sock.get('port_value', 0)}"}
            for c in COUNTERS + GAUGES:
                row[c] = int(stats.get(c) or 0)
            row["health_flags"] = health_flags(host.get("health_status") or {})
            rows.append(row)
    return rows


@dataclass
class Snapshot:
    label: str
    ts: float
    rows: int = 0
    pods: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # pod -> why (a pod dying meanwhile is normal)


def _append(path: Path, lines: list[str]) -> None:
    """One O_APPEND write per pod: the harness and chaostoolkit's process append to the same file."""
    if not lines:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)


def snapshot(backend: AdminReader, run_dir: Path, label: str, pods: Iterable[str] | None = None) -> Snapshot:
    """Append the counters of every live meshed pod (or of `pods`) to ``run_dir/upstream-stats.jsonl``.

    All pods are asked at once (`envoy_admin_many`: concurrently, at low
    priority; the local backend in one request to its daemon) and every row
    of one snapshot carries the same `ts` (when the snapshot started), so a
    reader groups them by (ts, label). A pod that cannot answer (it died meanwhile, or has no sidecar) is
    reported in the result, not raised: evidence is collected, never fatal.
    """
    ts = time.time()
    names = sorted(pods) if pods is not None else sorted(p.pod for p in backend.inventory().pods(alive_only=True))
    snap = Snapshot(label, ts)
    path = Path(run_dir) / UPSTREAM_STATS_FILE
    if not names:
        return snap
    answers = backend.envoy_admin_many(names, "/clusters?format=json", SNAPSHOT_ADMIN_TIMEOUT_S)
    for pod in names:
        raw = answers.get(pod, "no answer")
        try:
            rows = parse_clusters(json.loads(raw)) if isinstance(raw, bytes) else str(raw)
        except ValueError as exc:  # a torn or odd answer: that pod's evidence is missing, said per pod
            rows = f"{type(exc).__name__}: {exc}"
        if isinstance(rows, str):
            snap.failed[pod] = rows
            continue
        # a sidecar whose clusters have no host at all answered all the same: one row without a host says it
        # was read (the verifier asks whether each pod was read in every snapshot taken while it was up)
        rows = rows or [{"cluster": "", "host": ""}]
        lines = [json.dumps({"ts": ts, "label": label, "pod": pod, **row}) + "\n" for row in rows]
        _append(path, lines)
        snap.rows += len(lines)
        snap.pods.append(pod)
    return snap


def snapshot_quietly(backend: AdminReader, run_dir: Path | None, label: str) -> Snapshot | None:
    """`snapshot` for the chaos actions: no run directory (plain `chaos run`) means no snapshot, and a
    backend that cannot answer at all is logged to stderr (chaostoolkit's log), never failing the fault."""
    if run_dir is None:
        return None
    try:
        snap = snapshot(backend, run_dir, label)
    except Exception as exc:  # the inventory could not be read: note it, the fault goes on
        print(f"upstream stats {label!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if snap.failed and not snap.pods:
        print(f"upstream stats {label!r}: no pod answered: {next(iter(snap.failed.values()))}", file=sys.stderr)
    return snap
