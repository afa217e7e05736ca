"""The pod inventory from a list + watch (docs/CONTRACTS.md, inventory.jsonl): pods, IPs, nodes, readiness over time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any

from harness.backends.kube.api import (
    KubeApi,
    KubeApiError,
    LineStream,
    _labels,
    _meta,
    parse_k8s_time,
)
from harness.contract.inventory import Inventory, PodInfo
from harness.contract.names import (
    ANN_SERVICE as ANN_CONSUL_SERVICE,
)
from harness.contract.names import (
    LABEL_APP,
    LABEL_CONSUL_SERVICE,
    LABEL_POD_ZONE,
    LABEL_SERVING,
)


class InventoryMixin(KubeApi):
    """Inventory reads of a cluster: a one-shot refresh, a continuous watch, pod states for probes."""

    def pod_phases(self, namespaces: Iterable[str] | None = None) -> dict[str, str]:
        """Pod name -> its state as the chaos probes read it, for HashiCups pods (those with a zone label).

        `Ready` is the pod's Ready condition (what the Endpoints controller and
        so consul-k8s go by), never the phase: a Running pod can be unready for
        a long time (readiness probe failing, a node the control plane lost).
        States: Ready, Unready (taken out of its Service by the unready chaos),
        NotReady, Terminating, or the phase (Pending, ...). Keyed by pod name,
        the inventory's key, which the chaos actions join on.
        """
        items: list[dict[str, Any]] = []
        if namespaces is None:
            items = self.pods()
        else:
            for ns in namespaces:
                items += self.pods(ns)
        return {str(_meta(p)["name"]): pod_state(p) for p in items if LABEL_POD_ZONE in _labels(p)}

    # -- inventory -----------------------------------------------------------
    @staticmethod
    def pod_info(pod: Mapping[str, Any], node_zones: Mapping[str, str]) -> PodInfo | None:
        """PodInfo of a HashiCups pod with an IP, else None (not ours, or not scheduled yet).

        The zone comes from the node the pod runs on (the truth about where it
        served from); the pod's own zone label is only the fallback for a node
        whose labels we do not know.
        """
        labels = _labels(pod)
        if LABEL_POD_ZONE not in labels:
            return None
        meta = _meta(pod)
        status = pod.get("status") or {}
        ip = status.get("podIP")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if not ip:
            return None
        ann = meta.get("annotations") or {}
        started = parse_k8s_time(status.get("startTime")) or parse_k8s_time(meta.get("creationTimestamp"))
        return PodInfo(
            pod=str(meta["name"]),
            ip=str(ip),
            node=str(node),
            zone=node_zones.get(node) or labels[LABEL_POD_ZONE],
            service=labels.get(LABEL_APP, ""),
            consul_service=labels.get(LABEL_CONSUL_SERVICE) or str(ann.get(ANN_CONSUL_SERVICE, "")),
            namespace=str(meta.get("namespace", "")),
            started=started if started is not None else time.time(),
        )

    def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        """All pods and the list's resourceVersion (where a watch continues without a gap)."""
        doc = self.request("GET", "/api/v1/pods") or {}
        return list(doc.get("items") or []), str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def refresh_inventory(self, inventory: Inventory) -> None:
        """One list, folded into `inventory` (pods gone since are removed): a catch-up, not a history."""
        items, _rv = self.list_pods()
        PodTracker(inventory, self.nodes()).sync(items, initial=True)

    def watch_inventory(
        self, inventory: Inventory, on_forbidden: Callable[[str], None] | None = None
    ) -> InventoryWatcher:
        """List now (so the inventory is current when this returns), then keep it current until `.stop()`
        (`on_forbidden`: see `InventoryWatcher`)."""
        w = InventoryWatcher(self, inventory, on_forbidden=on_forbidden)
        w.start()
        return w


def pod_condition(pod: Mapping[str, Any], kind: str) -> tuple[str, float | None]:
    """(status, lastTransitionTime) of a pod condition; ("", None) when the pod has none of that type."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status") or ""), parse_k8s_time(c.get("lastTransitionTime"))
    return "", None


def pod_serving(pod: Mapping[str, Any]) -> bool:
    """Whether the pod is an Endpoints address of its Service, i.e. what consul-k8s registers as passing.

    Ready condition True, the `edge-harness.io/serving` label (part of the
    Service selector) not "false", and not terminating: the Endpoints
    controller drops terminating pods from `addresses` at once.
    """
    return (
        pod_condition(pod, "Ready")[0] == "True"
        and _labels(pod).get(LABEL_SERVING) != "false"
        and not _meta(pod).get("deletionTimestamp")
    )


def pod_state(pod: Mapping[str, Any]) -> str:
    """Ready / Unready / NotReady / Terminating / <phase>: one word per pod for status and probes."""
    if _meta(pod).get("deletionTimestamp"):
        return "Terminating"
    phase = str((pod.get("status") or {}).get("phase") or "Unknown")
    if phase != "Running":
        return phase
    if pod_condition(pod, "Ready")[0] != "True":
        return "NotReady"
    if _labels(pod).get(LABEL_SERVING) == "false":
        return "Unready"
    return "Ready"


class PodTracker:
    """Turns pod snapshots (a list, watch events) into inventory events (docs/CONTRACTS.md, inventory.jsonl).

    - `added` when a HashiCups pod first has an IP; `ip` when the same pod
      later holds another one (its sandbox was re-created on a restarted node);
    - `ready` / `unready` when `pod_serving` changes, at the Ready condition's
      `lastTransitionTime` when that is what changed (metav1.Time has second
      precision, so it can be up to 1 s early; it is kept within the pod's own
      history and never later than now), else when it was observed (a label
      flip or a deletion carries no time of its own);
    - `removed` when the pod is deleted, failed or succeeded.
    Times of pods found by the first list are the cluster's (startTime,
    lastTransitionTime), so history before the watch began is not guessed.
    """

    def __init__(self, inventory: Inventory, zones: Mapping[str, str]) -> None:
        self.inventory = inventory
        self.zones = dict(zones)
        self._last_ts: dict[str, float] = {}

    def _at(self, pod: str, ts: float | None, now: float) -> float:
        t = now if ts is None else min(max(ts, self._last_ts.get(pod, ts)), now)
        self._last_ts[pod] = max(t, self._last_ts.get(pod, t))
        return t

    def observe(self, pod: Mapping[str, Any], *, initial: bool = False, now: float | None = None) -> None:
        now = time.time() if now is None else now
        name = str(_meta(pod).get("name", ""))
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self.gone(name, now)
            return
        info = pod_info_of(pod, self.zones)
        if info is None:
            return
        known = self.inventory.get(name)
        if known is None or known.ended is not None:
            started = self._at(name, info.started if initial else None, now)
            self.inventory.added(PodInfo(**{**asdict(info), "started": started}))
        elif known.ip != info.ip:
            self.inventory.ip_changed(info, self._at(name, None, now))
        serving = pod_serving(pod)
        if serving == self.inventory.is_ready(name):
            return
        status, changed_at = pod_condition(pod, "Ready")
        by_condition = (status == "True") == serving and changed_at is not None
        ts = self._at(name, changed_at if by_condition else None, now)
        if serving:
            self.inventory.ready(name, ts)
        else:
            self.inventory.unready(name, ts)

    def gone(self, name: str, now: float | None = None) -> None:
        info = self.inventory.get(name)
        if info is None or info.ended is not None:
            return
        self.inventory.removed(name, self._at(name, None, time.time() if now is None else now))

    def sync(self, items: Iterable[Mapping[str, Any]], *, initial: bool = False) -> None:
        """A full list: observe each pod, end the live ones the list no longer has."""
        now = time.time()
        seen = set()
        for p in items:
            self.observe(p, initial=initial, now=now)
            seen.add(str(_meta(p).get("name", "")))
        for info in self.inventory.pods(alive_only=True):
            if info.pod not in seen:
                self.gone(info.pod, now)


def pod_info_of(pod: Mapping[str, Any], zones: Mapping[str, str]) -> PodInfo | None:
    """`InventoryMixin.pod_info` without a cluster (the logic needs only the pod and the node zones)."""
    return InventoryMixin.pod_info(pod, zones)


MAX_BACKOFF_S = 10.0
"""The longest wait between two watch attempts (each after a failure relists first)."""


class InventoryWatcher:
    """List + watch of pods feeding an Inventory through a `PodTracker`, until stopped.

    Kubernetes' list/watch contract (api-concepts, "Efficient detection of
    changes"): the list's `metadata.resourceVersion` is where the watch
    starts, so nothing between the two is missed; every event's object
    carries its resourceVersion, and a watch that ends (the server's
    `timeoutSeconds`, a dropped connection) resumes from the last one seen,
    with `allowWatchBookmarks` keeping it current through quiet periods; a
    version the server no longer has answers `ERROR` 410 Expired, and only
    then is the whole list read again (pods gone meanwhile are removed). The
    first list happens in `start()`, so the inventory is complete when the
    caller goes on to send traffic.

    A 403 on the watch is a permission problem (the identity may list pods
    but not watch them), not an API hiccup: it used to be retried quietly
    like one, the history silently became a relist every few seconds, and
    pods that came and went between two lists were never recorded. Now the
    first refusal is kept (`forbidden`) and handed to `on_forbidden` once
    (the backend says it and reports it as a gap of the run's records,
    `KubeBackend.record_gaps`, which the verdict fails as unverified). The
    watch is still retried at the longest backoff, relisting each time: the
    inventory stays as current as lists make it (chaos targets, the entry
    monitor read it), and a role fixed meanwhile is picked up; the gap stays
    recorded, because it happened. `up`'s permission check
    (`harness.backends.kube.permissions`) refuses such a role before a run.
    """

    def __init__(
        self,
        cluster: InventoryMixin,
        inventory: Inventory,
        watch_timeout_s: int = 300,
        on_forbidden: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.inventory = inventory
        self.watch_timeout_s = watch_timeout_s
        self.tracker = PodTracker(inventory, {})
        self._stop = threading.Event()
        self._stream: LineStream | None = None
        self._rv = ""
        self._thread = threading.Thread(target=self._run, name="eh-inventory-watch", daemon=True)
        self.errors: list[str] = []
        self.relists = 0
        self.forbidden = ""  # the first 403 the watch got ("": none)
        self.on_forbidden = on_forbidden

    def _relist(self, initial: bool) -> None:
        self.tracker.zones = self.cluster.nodes()
        items, self._rv = self.cluster.list_pods()
        self.tracker.sync(items, initial=initial)
        self.relists += 1

    def start(self) -> None:
        self._relist(initial=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if not self._rv:
                    self._relist(initial=False)
                query = [
                    ("watch", "true"),
                    ("resourceVersion", self._rv),
                    ("allowWatchBookmarks", "true"),
                    ("timeoutSeconds", str(self.watch_timeout_s)),
                ]
                stream = self.cluster.stream_lines("/api/v1/pods", query, read_timeout=self.watch_timeout_s + 30)
                self._stream = stream
                if self._stop.is_set():
                    stream.close()
                    break
                for line in stream.lines():
                    if self._stop.is_set():
                        break
                    self._handle(line)
                backoff = 0.5
            except Exception as exc:  # a watch must outlive API hiccups; the error is kept for status
                self.errors.append(str(exc))
                self._rv = ""
                if isinstance(exc, KubeApiError) and exc.status == 403:
                    backoff = MAX_BACKOFF_S  # a permission problem: no quick retries, a relist per attempt
                    if not self.forbidden:
                        self.forbidden = exc.api_message or str(exc)
                        if self.on_forbidden is not None:
                            self.on_forbidden(self.forbidden)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _handle(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        obj = event.get("object") or {}
        kind = event.get("type")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            self.errors.append(f"watch: {obj.get('message') if isinstance(obj, dict) else obj}")
            if code == 410:
                self._rv = ""  # expired: list again
                if self._stream is not None:
                    self._stream.close()
            return
        if not isinstance(obj, dict) or "metadata" not in obj:
            return
        rv = str(obj["metadata"].get("resourceVersion") or "")
        if rv:
            self._rv = rv
        if kind == "BOOKMARK":
            return
        name = str(obj["metadata"].get("name", ""))
        if kind == "DELETED":
            self.tracker.gone(name)
            return
        node = (obj.get("spec") or {}).get("nodeName")
        if node and node not in self.tracker.zones:
            self.tracker.zones.update(self.cluster.nodes())  # a node joined since we looked
        self.tracker.observe(obj)
