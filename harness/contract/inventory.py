"""The inventory: which pod held which IP, on which node, in which zone, when (docs/CONTRACTS.md, inventory.jsonl).

Backends write it as it happens (`Inventory`, one `inventory.jsonl` line per
event); observe resolves every hop's upstream host to the pod that held its
IP at the hop's time, and verify, the report and the chaos probes read the
same history. The rule for "who held this IP at time t" is decided here,
once (`resolve_ip`, over the `intervals` the events describe); observe's SQL
(`harness.observe.hops`, which verify calls) is held to it by
tests/test_contract_inventory.py on generated inventories with IP reuse.

The rule. Each `added` / `ip` event opens an interval (pod, ip, [start,
end)) that the pod's next added/ip/removed event closes; ready/unready do
not change which IP a pod holds. For an (ip, t): take the interval of that
IP that started last at or before t ("prev") and the first one starting
after t ("next"). Prev wins when it still contains t (open, or t <= end);
else next when it starts within `SLACK_S` after t and no later than prev
ended before t (a tie goes to next, the later pod); else prev when it ended
within `SLACK_S` before t; else nobody. Slack covers clock skew between the
writer of the inventory and the sidecars, and event lag.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SLACK_S = 1.0
"""How far outside a pod's recorded lifetime a hop may still be attributed to it (clock skew, event lag)."""

EVENTS = ("added", "ip", "ready", "unready", "removed")
_ORDER = {"added": 0, "ip": 1}  # at one instant: added, then ip, then anything else (as observe's SQL sorts)


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
        self._events: list[dict[str, Any]] = []  # the history, as written: what `by_ip` resolves over
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._unsent: list[dict[str, Any]] = []  # written under the lock, handed to listeners after it

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Call `listener(record)` once for every change, with the record as written.

        For whoever must not miss a change between two looks (the entry
        monitor: a frontend replaced within its probe period). Called outside
        the inventory's lock, so a listener may query the inventory.
        """
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """Stop calling `listener` (a no-op if it was not subscribed)."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _write(self, event: str, info: PodInfo, ts: float) -> None:
        rec = {"ts": ts, "event": event, **{k: v for k, v in asdict(info).items() if k not in ("started", "ended")}}
        self._events.append(rec)
        if self._listeners:
            self._unsent.append(rec)
        if self._fh is None:
            return
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def _notify(self) -> None:
        """Hand the records written since the last call to the listeners (after the lock is released)."""
        with self._lock:
            recs, self._unsent = self._unsent, []
            listeners = list(self._listeners)
        for rec in recs:
            for fn in listeners:
                fn(rec)

    def added(self, info: PodInfo) -> None:
        with self._lock:
            self._pods[info.pod] = info
            self._write("added", info, info.started)
        self._notify()

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
        self._notify()

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
        self._notify()

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
        self._notify()

    def is_ready(self, pod: str) -> bool:
        with self._lock:
            return pod in self._ready

    def first_ready(self, pod: str) -> float | None:
        """When the pod first became ready, from its history (None if it never was), whatever it is now.

        The instant a replacement brought its service back: a pod that went
        unready again (its readiness flapped on a loaded node) was back all
        the same, and asking later must not move that instant.
        """
        with self._lock:
            return next((e["ts"] for e in self._events if e["pod"] == pod and e["event"] == "ready"), None)

    def times_ready(self, pod: str) -> int:
        """How often the pod became ready: a count that moves only when it did again, whatever the clocks say.

        A pod of a node that went down is Ready in the API until its kubelet,
        booting again, says otherwise: it is running again once this count
        grows past what it was at the kill (`harness.chaos.actions.ready_services`).
        The times cannot tell it: they come from the API server's clock, with
        second precision, and are kept monotone per pod.
        """
        with self._lock:
            return sum(1 for e in self._events if e["pod"] == pod and e["event"] == "ready")

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
                inv._events.append(rec)
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
        """The pod that held `ip` at `ts` by the one rule (`IpHistory.resolve`); the live holder when ts is None."""
        with self._lock:
            if ts is None:
                return next((p for p in self._pods.values() if p.ip == ip and p.ended is None), None)
            held = IpHistory.from_events(self._events).resolve(ip, ts)
            info = self._pods.get(held.pod) if held is not None else None
        if held is None or info is None:
            return None
        return PodInfo(
            **{**asdict(info), "ip": held.ip, "node": held.node or info.node, "zone": held.zone or info.zone}
        )

    def ready_pods(self) -> list[PodInfo]:
        """Live pods that are serving endpoints now."""
        with self._lock:
            return [p for p in self._pods.values() if p.ended is None and p.pod in self._ready]

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


@dataclass(frozen=True)
class Interval:
    """One (pod, ip) holding: from its added/ip event to the pod's next added/ip/removed event (None: still)."""

    pod: str
    ip: str
    zone: str
    service: str
    node: str
    start: float
    end: float | None


def intervals(events: Iterable[Mapping[str, Any]]) -> list[Interval]:
    """The holdings an inventory's events describe (the `intervals` table of observe, as Python values)."""
    by_pod: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        if e.get("event") in ("added", "ip", "removed") and e.get("pod") is not None and e.get("ts") is not None:
            by_pod.setdefault(str(e["pod"]), []).append(e)
    out: list[Interval] = []
    for pod, evs in by_pod.items():
        evs = sorted(evs, key=lambda e: (float(e["ts"]), _ORDER.get(str(e["event"]), 2)))
        for i, e in enumerate(evs):
            if e["event"] not in ("added", "ip") or not e.get("ip"):
                continue
            end = float(evs[i + 1]["ts"]) if i + 1 < len(evs) else None
            out.append(
                Interval(
                    pod, str(e["ip"]), str(e.get("zone") or ""), str(e.get("service") or ""), str(e.get("node") or ""),
                    float(e["ts"]), end,
                )
            )  # fmt: skip
    return out


class IpHistory:
    """Every IP's holdings, sorted by start: answers `resolve(ip, t)` in O(log n)."""

    def __init__(self, holdings: Iterable[Interval]) -> None:
        self._by_ip: dict[str, list[Interval]] = {}
        for h in holdings:
            self._by_ip.setdefault(h.ip, []).append(h)
        self._starts: dict[str, list[float]] = {}
        for ip, hs in self._by_ip.items():
            hs.sort(key=lambda h: h.start)
            self._starts[ip] = [h.start for h in hs]

    @classmethod
    def from_events(cls, events: Iterable[Mapping[str, Any]]) -> IpHistory:
        return cls(intervals(events))

    def resolve(self, ip: str, ts: float, slack_s: float = SLACK_S) -> Interval | None:
        """The holding of `ip` at `ts` by the rule in the module docstring; None when nobody explains it."""
        hs = self._by_ip.get(ip)
        if not hs:
            return None
        i = bisect.bisect_right(self._starts[ip], ts)
        prev = hs[i - 1] if i > 0 else None
        nxt = hs[i] if i < len(hs) else None
        if prev is not None and (prev.end is None or ts <= prev.end):
            return prev
        # Written as comparisons of ts with breakpoints (start - slack, end + slack, the
        # midpoint of a gap), the way observe's SQL evaluates the rule piece by piece:
        # `nxt.start - ts <= slack` and `ts >= nxt.start - slack` differ in the last bit.
        prev_end = prev.end if prev is not None else None  # before ts here (None: no prev)
        if nxt is not None and ts >= nxt.start - slack_s and (prev_end is None or ts >= (prev_end + nxt.start) / 2):
            return nxt
        if prev is not None and prev_end is not None and ts <= prev_end + slack_s:
            return prev
        return None


def resolve_ip(events: Iterable[Mapping[str, Any]], ip: str, ts: float, slack_s: float = SLACK_S) -> Interval | None:
    """One lookup without keeping the index (tests, small inventories)."""
    return IpHistory.from_events(events).resolve(ip, ts, slack_s)
