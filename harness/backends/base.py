"""The one protocol every backend (kind, existing, local) implements.

Backends take the rendered manifests (a directory written by `harness render`,
loaded with `harness.render.manifests.load`) and never import the verifier,
the report or the CLI. Everything the later stages need from a backend goes
through this protocol: where users enter, which pod held which IP when (the
inventory), where the sidecars' access logs come from, and the chaos
primitives the experiments drive.
"""

from __future__ import annotations

import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import BackendError

if TYPE_CHECKING:
    from harness.render.manifests import Manifests


@dataclass(frozen=True)
class PodInfo:
    """One pod as the inventory knows it; `ended` is None while it lives."""

    pod: str
    ip: str
    node: str
    zone: str
    service: str  # logical service (app label), e.g. product-api
    consul_service: str  # Consul name, e.g. product-api-lax-1a
    namespace: str
    started: float
    ended: float | None = None


class Inventory:
    """Pod → IP → node → zone, with history: pods that died keep their entry.

    Thread-safe; every change is appended to `inventory.jsonl` when a path is
    given, so a run directory holds the whole history even after a crash.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._ready: dict[str, float] = {}  # pod -> when it last became ready (only pods ready now)
        self._path = path
        self._fh = path.open("a", encoding="utf-8") if path is not None else None

    def _write(self, event: str, info: PodInfo, ts: float) -> None:
        if self._fh is None:
            return
        rec = {"ts": ts, "event": event, **{k: v for k, v in asdict(info).items() if k not in ("started", "ended")}}
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def added(self, info: PodInfo) -> None:
        with self._lock:
            self._pods[info.pod] = info
            self._write("added", info, info.started)

    def removed(self, pod: str, ts: float | None = None) -> None:
        with self._lock:
            info = self._pods.get(pod)
            if info is None or info.ended is not None:
                return
            ts = time.time() if ts is None else ts
            ended = PodInfo(**{**asdict(info), "ended": ts})
            self._pods[pod] = ended
            self._ready.pop(pod, None)
            self._write("removed", ended, ts)

    def ip_changed(self, info: PodInfo, ts: float | None = None) -> None:
        """The same pod now holds another IP (its sandbox was re-created on a restarted node): event `ip`.

        The pod keeps its name and its readiness record; lookups of the old IP
        after `ts` no longer find it here (the file keeps the history for observe).
        """
        with self._lock:
            old = self._pods.get(info.pod)
            if old is None or old.ended is not None or old.ip == info.ip:
                return
            ts = time.time() if ts is None else ts
            self._pods[info.pod] = PodInfo(**{**asdict(info), "started": old.started, "ended": None})
            self._write("ip", self._pods[info.pod], ts)

    def ready(self, pod: str, ts: float | None = None) -> None:
        """The pod became a serving endpoint (what consul-k8s registers as passing).

        `added` does not imply it: a pod exists (and holds its IP) before its
        readiness probe passes. Only a change is written; unknown or removed
        pods are ignored (a late probe result of a pod that just died).
        """
        self._set_ready(pod, True, ts)

    def unready(self, pod: str, ts: float | None = None) -> None:
        """The pod stopped being a serving endpoint (probe failed, unready chaos); `removed` implies it."""
        self._set_ready(pod, False, ts)

    def _set_ready(self, pod: str, ready: bool, ts: float | None) -> None:
        with self._lock:
            info = self._pods.get(pod)
            if info is None or info.ended is not None or (pod in self._ready) == ready:
                return
            ts = time.time() if ts is None else ts
            if ready:
                self._ready[pod] = ts
            else:
                self._ready.pop(pod, None)
            self._write("ready" if ready else "unready", info, ts)

    def is_ready(self, pod: str) -> bool:
        with self._lock:
            return pod in self._ready

    def ready_since(self, pod: str) -> float | None:
        """When the pod last became ready (None while it is not ready)."""
        with self._lock:
            return self._ready.get(pod)

    @classmethod
    def load(cls, path: Path) -> Inventory:
        """Replay an `inventory.jsonl` written by another process (read-only)."""
        inv = cls()
        if not path.exists():
            return inv
        with path.open(encoding="utf-8") as fh:
            for raw in fh:
                if not raw.strip():
                    continue
                rec = json.loads(raw)
                fields = {k: rec[k] for k in ("pod", "ip", "node", "zone", "service", "consul_service", "namespace")}
                if rec["event"] == "added":
                    inv._pods[rec["pod"]] = PodInfo(**fields, started=rec["ts"])
                elif rec["event"] == "removed" and rec["pod"] in inv._pods:
                    old = inv._pods[rec["pod"]]
                    inv._pods[rec["pod"]] = PodInfo(**{**asdict(old), "ended": rec["ts"]})
                    inv._ready.pop(rec["pod"], None)
                elif rec["event"] == "ready" and rec["pod"] in inv._pods:
                    inv._ready.setdefault(rec["pod"], rec["ts"])
                elif rec["event"] == "unready":
                    inv._ready.pop(rec["pod"], None)
                elif rec["event"] == "ip" and rec["pod"] in inv._pods:
                    inv._pods[rec["pod"]] = PodInfo(**{**asdict(inv._pods[rec["pod"]]), "ip": rec["ip"]})
        return inv

    def pods(self, alive_only: bool = False) -> list[PodInfo]:
        with self._lock:
            return [p for p in self._pods.values() if not alive_only or p.ended is None]

    def get(self, pod: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(pod)

    def by_ip(self, ip: str, ts: float | None = None) -> PodInfo | None:
        """The pod that held `ip` at time `ts` (the live one when ts is None)."""
        with self._lock:
            best: PodInfo | None = None
            for p in self._pods.values():
                if p.ip != ip:
                    continue
                if ts is None:
                    if p.ended is None:
                        return p
                    continue
                alive_then = p.started - 1.0 <= ts and (p.ended is None or ts <= p.ended + 1.0)
                if alive_then and (best is None or p.started > best.started):
                    best = p
            return best

    def ready_pods(self) -> list[PodInfo]:
        """Live pods that are serving endpoints now."""
        with self._lock:
            return [p for p in self._pods.values() if p.ended is None and p.pod in self._ready]

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class LogSource(ABC):
    """A stream of one sidecar's raw access-log lines."""

    pod: str

    @abstractmethod
    def read(self) -> Iterator[str]:
        """Lines written since the last call (non-blocking)."""


CHAOS_PRIMITIVES = frozenset(
    {
        "kill_pod",
        "kill_node",
        "zone_outage",
        "set_link",
        "partition_zone",
        "set_pod_unready",
    }
)
"""Fault-injecting primitives (each has its restore); `Backend.capabilities()` returns a subset."""


@dataclass(frozen=True)
class ConfigEntryStatus:
    """The consul-k8s `Synced` condition of one config-entry CRD (ServiceResolver, ...).

    `synced` is the condition's status: True, False, or None for "Unknown" or
    no condition yet; `reason`/`message` as the controller wrote them
    (shared/reference/consul-http-api-subset.md §6).
    """

    kind: str
    namespace: str
    name: str
    synced: bool | None
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class EdgeProbe:
    """A real call from one service identity to another that the intentions must refuse.

    `possible` False: the backend cannot make such a call (it would need the
    source's mTLS identity); the preflight check then says so instead of
    passing. `refused`: the destination's sidecar refused it (HTTP 403 from
    the RBAC filter, or the connection closed for a TCP service).
    """

    possible: bool
    refused: bool
    detail: str


@dataclass
class Status:
    backend: str
    up: bool
    detail: str = ""
    pods: dict[str, str] = field(default_factory=dict)  # pod -> phase

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Backend(ABC):
    """What `harness up/down/status/chaos` drive, whichever cluster is behind it."""

    name: str

    @abstractmethod
    def up(self, manifests: Manifests, progress: Callable[[str], None] | None = None) -> None:
        """Create the cluster (if the backend owns one) and apply the manifests; `progress` gets one line per step."""

    @abstractmethod
    def manifests(self) -> Manifests:
        """The manifests the running cluster was brought up with (for a later process's run directory)."""

    @abstractmethod
    def down(self) -> None:
        """Remove everything `up` created. Idempotent; works after a crash."""

    @abstractmethod
    def status(self) -> Status: ...

    @abstractmethod
    def inventory(self) -> Inventory: ...

    @abstractmethod
    def entrypoints(self) -> dict[str, str]:
        """Zone name → base URL of that zone's frontend, as users reach it."""

    @abstractmethod
    def save_artifacts(self, out: Path) -> None:
        """For the post-mortem: whatever the backend can hand over (pod logs, events, Envoy config dumps)."""

    @abstractmethod
    def log_sources(self) -> list[LogSource]:
        """Current sidecar access-log sources (call again to pick up new pods)."""

    def flush_access_logs(self, timeout_s: float = 30.0) -> list[str]:
        """Block until every access-log line the sidecars wrote so far can be read from `log_sources()`.

        Call it after the last request and before the collector's last poll:
        Envoy buffers access logs and writes them every
        `--file-flush-interval-msec` (default 10 s), so "traffic stopped" is
        not "logs complete". Returns one line per sidecar that could not be
        confirmed complete (for the verdict's notes). This default suits a
        backend whose sources tail files that its sidecars flush on their own
        short interval; the Kubernetes backends override it (Envoy's
        `write_total_buffered` gauge, then a catch-up read of each container log).
        """
        return []

    # -- observation beyond access logs ----------------------------------------
    @abstractmethod
    def capabilities(self) -> frozenset[str]:
        """The chaos primitives (names in `CHAOS_PRIMITIVES`) this backend can perform on this cluster.

        An experiment that needs one outside the set is refused before anything
        is injected, rather than failing half-way through a game day.
        """

    def require_capability(self, primitive: str) -> None:
        """Refuse `primitive` (BackendError saying why) when this cluster cannot perform it.

        Called before a fault is recorded or injected, so a refused fault
        leaves no trace on the cluster or in the timeline. Backends whose
        `capabilities()` is costly for some primitives override this to check
        only the one asked for.
        """
        if primitive not in self.capabilities():
            raise BackendError(f"the {self.name} backend cannot {primitive} on this cluster")

    @abstractmethod
    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        """GET `path` (e.g. ``/clusters?format=json``) on the Envoy admin API of `pod`'s sidecar."""

    @abstractmethod
    def consul_api(self) -> AbstractContextManager[str]:
        """A context yielding the base URL of Consul's HTTP API (``http://127.0.0.1:PORT``) while it lasts."""

    # -- Consul's view, for preflight (harness.preflight) ----------------------
    def config_entry_status(self) -> list[ConfigEntryStatus]:
        """The `Synced` condition of every config-entry CRD applied (kind/EKS: the CRDs' status).

        Not abstract so that backends gain it one at a time; the default says
        the backend cannot tell, and preflight's `crd-synced` check fails with
        that message (unverified is a failure).
        """
        raise BackendError(f"{self.name}: this backend cannot report the config-entry CRDs' Synced condition")

    def probe_edge(self, source: str, destination: str) -> EdgeProbe:
        """Call `destination` (a Consul service) as `source` would, through its sidecar's inbound listener.

        Names as the intentions API writes them: ``name``, or ``namespace/name``
        in Enterprise.

        Used by preflight's `refused-probe` check on an edge the topology does
        not declare. Default: not possible here (see `EdgeProbe`).
        """
        return EdgeProbe(False, False, f"{self.name}: calling as another service's identity is not possible here")

    # -- chaos primitives: each returns quickly; each has its restore ---------
    @abstractmethod
    def kill_pod(self, zone: str, service: str) -> list[str]:
        """Kill every pod of `service` in `zone`; the Deployment re-creates them. Returns pod names."""

    @abstractmethod
    def kill_node(self, node: str) -> None:
        """Stop a node: its pods die and its links go down until `restore_node`."""

    @abstractmethod
    def restore_node(self, node: str) -> None: ...

    @abstractmethod
    def zone_outage(self, zone: str) -> None:
        """Every node of `zone` down."""

    @abstractmethod
    def restore_zone(self, zone: str) -> None: ...

    @abstractmethod
    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        """Degrade the zone's service link to the Region."""

    @abstractmethod
    def clear_link(self, zone: str) -> None:
        """Back to the topology's service-link settings."""

    @abstractmethod
    def partition_zone(self, zone: str) -> None:
        """Cut the zone's service link (zone ↔ Region traffic fails)."""

    @abstractmethod
    def heal_zone(self, zone: str) -> None: ...

    @abstractmethod
    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        """Make the pods fail readiness (they stay running)."""

    @abstractmethod
    def set_pod_ready(self, zone: str, service: str) -> list[str]: ...

    @abstractmethod
    def nodes(self) -> dict[str, str]:
        """Node name → zone name."""

    def close(self) -> None:  # noqa: B027 - a no-op is right for backends that hold nothing in-process
        """Release what this client holds in this process (watch threads, log followers); the cluster stays.

        Idempotent. The chaostoolkit extension shares one backend per process
        and calls this when chaostoolkit's process ends, so no thread outlives it.
        """
