"""`FakeBackend`: an in-memory cluster behind the backend protocol, for tests without a cluster.

What it models, and why each part is there (a fake is only as good as its likeness):
- Pods where the renderer puts them (`harness.render.naming.workloads`: an
  edge-placed service in every zone, a Region-only one spread over the AZs),
  each with an IP, a node of its zone and its Consul name, entered into an
  `Inventory` with `added`/`ready` events, as the real backends do.
- Consul CE's routing as the harness expects it: a call goes to a ready pod
  of the upstream in the caller's own zone; without one it fails over to the
  Region (the AZs), never to another Local Zone; a Region-only upstream is
  always served from the Region. A partitioned zone reaches no Region pod
  (Envoy: ``503 UF``); no pod anywhere is ``503 UH``.
- One outbound access-log line per hop, in the sidecars' JSON format
  (`start_time`, `response_code`, `response_flags`, `upstream_host`,
  `upstream_cluster` with the failover sub-cluster, `caller_pod`,
  `caller_service`, `direction`), served by `log_sources()` like a real
  backend's and written by `write_run`, so observe and the verifier read it
  as they read a real run.
- The chaos primitives change that state: `kill_pod` replaces the pods (new
  IPs, `removed` then `added`/`ready`), `kill_node`/`zone_outage` remove a
  node's/zone's pods until restored, `set_pod_unready` takes pods out of
  routing, `partition_zone` cuts the zone from the Region.

Time comes from `clock` (default `time.time`); a `ManualClock` makes a test
deterministic (same calls, same records, same verdict).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.backends.base import CHAOS_PRIMITIVES, Backend, Status
from harness.chaos.timeline import FaultKind, takes_entry_down
from harness.contract.inventory import Inventory, PodInfo
from harness.contract.logsource import LogSource
from harness.contract.rundir import (
    ACCESSLOG_DIR,
    CHAOS_FILE,
    INVENTORY_FILE,
    MANIFESTS_DIR,
    REQUESTS_FILE,
    RUN_FILE,
    TOPOLOGY_FILE,
)
from harness.errors import BackendError
from harness.render.consul import RenderedChains
from harness.render.naming import workloads
from harness.topology import ENTRY_SERVICE, Placement, Topology, load_topology
from harness.topology.model import dump_topology

if TYPE_CHECKING:
    from harness.render.manifests import Manifests

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"


class ManualClock:
    """A clock that moves only when told: `clock()` is now, `advance(s)` moves it on."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now = round(self.now + seconds, 6)  # no drift from adding 0.05 a thousand times
        return self.now


class MemoryLogSource(LogSource):
    """One sidecar's access-log lines, read once each (the shape `AccessLogCollector` polls)."""

    def __init__(self, pod: str, lines: list[str]) -> None:
        self.pod = pod
        self._lines = lines
        self._pos = 0

    def read(self) -> Iterator[str]:
        new, self._pos = self._lines[self._pos :], len(self._lines)
        yield from new


@dataclass
class _Pod:
    info: PodInfo
    port: int
    ready: bool = True


@dataclass
class FakeRequest:
    """One user request through a zone's entry point, as `requests.jsonl` records it."""

    ts: float
    zone: str
    status: int
    latency_ms: float
    hops: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 400

    def record(self) -> dict[str, Any]:
        return {"ts": self.ts, "zone": self.zone, "endpoint": f"fake://{self.zone}", "name": "coffees",
                "status": self.status, "latency_ms": self.latency_ms, "ok": self.ok,
                "error": None if self.ok else f"HTTP {self.status}"}  # fmt: skip


class FakeBackend(Backend):
    """An in-memory cluster of the topology's HashiCups pods, routed the way Consul CE routes them.

    `FakeBackend(topology)` is up at once (pass `up_now=False` to call `up`
    yourself, e.g. with loaded manifests). Drive it with `request(zone)` (one
    user request through the zone's frontend) or `traffic(seconds)`, inject
    faults with the chaos primitives, then hand `log_sources()` and
    `inventory()` to the harness's collector, or `write_run(dir)` and
    `harness.verify(dir)`.
    """

    name = "fake"

    def __init__(
        self,
        topology: Topology | Path | str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        up_now: bool = True,
        replace_s: float = 1.0,
    ) -> None:
        self.topology = topology if isinstance(topology, Topology) else load_topology(topology)
        self.clock = clock
        self.inv = Inventory()
        self.replace_s = replace_s  # a killed pod's replacement is ready this long after the kill
        self._pending: list[tuple[float, list[_Pod], dict[str, Any]]] = []  # (due, killed pods, their fault)
        self.requests: list[FakeRequest] = []
        self.faults: list[tuple[float, str, tuple[Any, ...]]] = []  # (ts, primitive, args): what was called
        self._inv_events: list[dict[str, Any]] = []  # inventory.jsonl lines
        self.timeline: list[dict[str, Any]] = []  # chaos.jsonl lines, as the chaos actions would write them
        self._open: dict[str, dict[str, Any]] = {}  # zone, node or zone/service -> its open fault's inject
        self._pods: dict[str, _Pod] = {}
        self._logs: dict[str, list[str]] = {}
        self._sources: dict[str, MemoryLogSource] = {}
        self._down_nodes: set[str] = set()
        self._partitioned: set[str] = set()
        self._links: dict[str, tuple[float, float]] = {}
        self._next_ip = 10
        self._rr: dict[tuple[str, str], int] = {}
        self._up = False
        self._manifests: Manifests | None = None
        self._chains: RenderedChains | None = None
        if up_now:
            self._place()

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self, manifests: Manifests | None = None, progress: Callable[[str], None] | None = None) -> None:
        if manifests is not None:
            self.topology, self._manifests = manifests.topology, manifests
        if not self._up:
            self._place()
        if progress is not None:
            progress(f"fake: {len(self.inv.pods(alive_only=True))} pods up")

    def manifests(self) -> Manifests:
        """The topology rendered in memory (what `harness up` would have applied), for roles and preflight."""
        if self._manifests is None:
            from harness.render import render
            from harness.render.manifests import Manifests

            r = render(self.topology)
            self._manifests = Manifests(Path("<fake>"), r.topology, r.kind_config, r.helm_values, r.objects, r.meta,
                                        entry=r.entry)  # fmt: skip
        return self._manifests

    def down(self) -> None:
        now = self.clock()
        for pod in [p.pod for p in self.inv.pods(alive_only=True)]:
            self._inv_event("removed", pod, now)
        self._up = False

    def status(self) -> Status:
        self._tick()
        pods = {p.pod: ("Running" if self._pods[p.pod].ready else "NotReady") for p in self.inv.pods(alive_only=True)}
        return Status(self.name, self._up, f"{len(pods)} pods", pods)

    def inventory(self) -> Inventory:
        self._tick()
        return self.inv

    def entrypoints(self) -> dict[str, str]:
        return {z.name: f"fake://{z.name}" for z in self.topology.zones}

    def nodes(self) -> dict[str, str]:
        return {self._node(z.name, i): z.name for z in self.topology.zones for i in range(max(1, z.nodes))}

    def control_plane_nodes(self) -> dict[str, list[str]]:
        """None: this fake routes as Consul would from the harness's own process, on no node of its own."""
        return {}

    def save_artifacts(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {"pods": {n: {"ip": p.info.ip, "zone": p.info.zone, "ready": p.ready} for n, p in self._pods.items()},
                 "down_nodes": sorted(self._down_nodes), "partitioned": sorted(self._partitioned)}  # fmt: skip
        (out / "fake-state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")

    def log_sources(self) -> list[LogSource]:
        for pod in self._logs:
            self._sources.setdefault(pod, MemoryLogSource(pod, self._logs[pod]))
        return list(self._sources.values())

    def capabilities(self) -> frozenset[str]:
        return CHAOS_PRIMITIVES

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        raise BackendError(f"fake: {pod} has no Envoy admin API")

    def consul_api(self) -> contextlib.AbstractContextManager[str]:
        raise BackendError("fake: no Consul HTTP API")

    # -- chaos primitives ----------------------------------------------------------------------
    # Each writes the chaos timeline the harness's chaos actions would write around it (`chaos.jsonl`:
    # inject, then restore; the same fault kinds), so a verdict over `write_run` judges the fault windows.
    def kill_pod(self, zone: str, service: str) -> list[str]:
        """The pods die now; the Deployment's replacements are ready `replace_s` later (new names and IPs),
        and that readiness is the fault's restore, as the chaos action records it."""
        self._fault("kill_pod", zone, service)
        victims = [p for p in self._alive() if p.info.zone == zone and p.info.service == service]
        fault = self._inject("kill_pod", zone, FaultKind.SERVICE_DOWN, [service])
        now = self.clock()
        for v in victims:
            self._inv_event("removed", v.info.pod, now)
        self._pending.append((now + self.replace_s, victims, fault))
        self._tick()
        return [v.info.pod for v in victims]

    def _tick(self) -> None:
        """Start the replacements that are due (at their due time, not at the time someone looked)."""
        now = self.clock()
        for item in [x for x in self._pending if x[0] <= now]:
            self._pending.remove(item)
            due, victims, fault = item
            for v in victims:
                self._start(v.info.service, v.info.consul_service, v.info.namespace, v.info.zone, v.info.node,
                            v.port, ts=due)  # fmt: skip
            self._restore(fault, ts=due)

    def kill_node(self, node: str) -> None:
        self._fault("kill_node", node)
        lost = sorted({p.info.service for p in self._alive() if p.info.node == node})
        zone = self.nodes()[node]
        self._inject("kill_node", zone, FaultKind.SERVICE_DOWN, lost, key=node, node=node)
        self._down(node)

    def restore_node(self, node: str) -> None:
        self._fault("restore_node", node)
        if node in self._down_nodes:  # idempotent: a node that is up keeps its pods
            self._up_again(node)
            self._restore(self._open.get(node))

    def zone_outage(self, zone: str) -> None:
        self._fault("zone_outage", zone)
        services = sorted({p.info.service for p in self._alive() if p.info.zone == zone})
        self._inject("zone_outage", zone, FaultKind.ZONE_DOWN, services)
        for node, z in self.nodes().items():
            if z == zone:
                self._down(node)

    def restore_zone(self, zone: str) -> None:
        self._fault("restore_zone", zone)
        for node, z in self.nodes().items():
            if z == zone and node in self._down_nodes:
                self._up_again(node)
        self._restore(self._open.get(zone))

    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        self._fault("set_link", zone, latency_ms, loss_percent)
        self._links[zone] = (latency_ms, loss_percent)
        self._inject("degrade_link", zone, FaultKind.LINK_DEGRADED, [], latency_ms=latency_ms)

    def clear_link(self, zone: str) -> None:
        self._fault("clear_link", zone)
        self._links.pop(zone, None)
        self._restore(self._open.get(zone))

    def partition_zone(self, zone: str) -> None:
        self._fault("partition_zone", zone)
        self._partitioned.add(zone)
        self._inject("partition_zone", zone, FaultKind.PARTITION, [])

    def heal_zone(self, zone: str) -> None:
        self._fault("heal_zone", zone)
        self._partitioned.discard(zone)
        self._restore(self._open.get(zone))

    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        self._fault("set_pod_unready", zone, service)
        self._inject("make_unready", zone, FaultKind.SERVICE_DOWN, [service],
                     key=f"{zone}/{service}")  # fmt: skip
        return self._set_ready(zone, service, False)

    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        self._fault("set_pod_ready", zone, service)
        pods = self._set_ready(zone, service, True)
        self._restore(self._open.get(f"{zone}/{service}"))
        return pods

    # -- traffic -------------------------------------------------------------------------------
    def request(self, zone: str) -> FakeRequest:
        """One user request entering `zone`'s frontend; every hop it makes is logged by its caller's sidecar."""
        self._tick()
        ts = self.clock()
        entry = self._pick(ENTRY_SERVICE, zone, zone)
        if entry is None:
            req = FakeRequest(ts, zone, 503, 0.0)
        else:
            req = FakeRequest(ts, zone, 200, 0.0)
            ok, latency = self._call(entry, ts, req)
            req.status, req.latency_ms = (200 if ok else 502), latency
        self.requests.append(req)
        return req

    def traffic(self, seconds: float, period_s: float = 0.05, zones: list[str] | None = None) -> list[FakeRequest]:
        """A request into every zone (or `zones`) each `period_s` for `seconds`; needs a `ManualClock`."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("traffic() advances the clock: construct the FakeBackend with clock=ManualClock()")
        names = zones if zones is not None else [z.name for z in self.topology.zones]
        out: list[FakeRequest] = []
        for _ in range(round(seconds / period_s)):
            # requests in the middle of each period: a primitive called between two traffic() calls acts
            # strictly between requests, never at the instant of one (no tie for the verifier to break)
            self.clock.advance(period_s / 2)
            out += [self.request(z) for z in names]
            self.clock.advance(period_s / 2)
        return out

    # -- a run directory -----------------------------------------------------------------------
    def write_run(self, run_dir: Path | str) -> Path:
        """The records a run directory holds for what happened so far (docs/CONTRACTS.md §4).

        `manifests/topology.yaml`, `inventory.jsonl`, `accesslogs/<pod>.jsonl`,
        `requests.jsonl`, `chaos.jsonl` (the faults injected through this
        backend, inject and restore) and a complete `run.json`. No plan,
        preflight or counters: the verdict judges hops, requests and fault
        windows, and says which evidence it lacks (unverified is a failure).
        """
        run = Path(run_dir)
        (run / MANIFESTS_DIR).mkdir(parents=True, exist_ok=True)
        (run / MANIFESTS_DIR / TOPOLOGY_FILE).write_text(dump_topology(self.topology), encoding="utf-8")
        events = sorted(self._inv_events, key=lambda e: float(e["ts"]))  # stable: same-ts events keep their order
        (run / INVENTORY_FILE).write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
        logs = run / ACCESSLOG_DIR
        logs.mkdir(exist_ok=True)
        for pod, lines in self._logs.items():
            (logs / f"{pod}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        chaos = [{k: v for k, v in r.items() if k != "closed"} for r in self.timeline]
        (run / CHAOS_FILE).write_text("".join(json.dumps(r) + "\n" for r in chaos), encoding="utf-8")
        reqs = "".join(json.dumps(r.record()) + "\n" for r in self.requests)
        (run / REQUESTS_FILE).write_text(reqs, encoding="utf-8")
        start = min([r.ts for r in self.requests], default=self.clock())
        end = max([r.ts for r in self.requests], default=start)
        state = {"started": start - 1.0, "ended": end + 1.0, "stage": "done", "status": "complete"}
        (run / RUN_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        return run

    # -- internals -----------------------------------------------------------------------------
    def _node(self, zone: str, i: int) -> str:
        return f"{self.topology.short(self.topology.zone(zone))}-n{i + 1}"

    def _fault(self, primitive: str, *args: Any) -> None:
        self.faults.append((self.clock(), primitive, args))

    def _inject(self, action: str, zone: str, kind: FaultKind, services: list[str],
                key: str | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
        """Open a fault: its `inject` line (the shape `harness.chaos.timeline.record` writes)."""
        n = sum(1 for r in self.timeline if r["phase"] == "inject") + 1
        rec = {"ts": self.clock(), "fault": f"{n:02d}-{action}-{self.topology.short(self.topology.zone(zone))}",
               "phase": "inject", "action": action, "zone": zone, "kind": kind.value, "services": services,
               "entry_down": takes_entry_down(kind, services), **extra}  # fmt: skip
        self.timeline.append(rec)
        self._open[key or zone] = rec
        return rec

    def _restore(self, inject: dict[str, Any] | None, ts: float | None = None) -> None:
        """Close a fault: its `restore` line (nothing when no such fault is open)."""
        if inject is None or inject.get("closed"):
            return
        inject["closed"] = True
        rec = {k: v for k, v in inject.items() if k != "closed"}
        self.timeline.append({**rec, "ts": self.clock() if ts is None else ts, "phase": "restore", "entry_down": False})
        self._open = {k: v for k, v in self._open.items() if v is not inject}

    def _inv_event(self, event: str, pod: str, ts: float, info: PodInfo | None = None) -> None:
        """One inventory change, in memory and as its `inventory.jsonl` line (what a backend writes)."""
        before = self.inv.get(pod), self.inv.is_ready(pod)
        if event == "added" and info is not None:
            self.inv.added(info)
        elif event == "removed":
            self.inv.removed(pod, ts)
        elif event == "ready":
            self.inv.ready(pod, ts)
        else:
            self.inv.unready(pod, ts)
        p = self.inv.get(pod)
        if p is not None and (before != (p, self.inv.is_ready(pod))):  # only a change is written
            base = {"pod": p.pod, "ip": p.ip, "node": p.node, "zone": p.zone, "service": p.service,
                    "consul_service": p.consul_service, "namespace": p.namespace}  # fmt: skip
            self._inv_events.append({"ts": ts, "event": event, **base})

    def _down(self, node: str) -> None:
        self._down_nodes.add(node)
        now = self.clock()
        for p in [p for p in self._alive() if p.info.node == node]:
            self._inv_event("removed", p.info.pod, now)

    def _up_again(self, node: str) -> None:
        self._down_nodes.discard(node)
        self._place(only_node=node)

    def _alive(self) -> list[_Pod]:
        return [self._pods[p.pod] for p in self.inv.pods(alive_only=True)]

    def _place(self, only_node: str | None = None) -> None:
        """Start the topology's pods (those of `only_node` only, after a restore)."""
        t = self.topology
        for w in workloads(t, t.edition):
            nodes = [self._node(w.zone.name, i) for i in range(max(1, w.zone.nodes))]
            for i in range(w.replicas):
                node = nodes[i % len(nodes)]
                if node in self._down_nodes or (only_node is not None and node != only_node):
                    continue
                self._start(w.service.name, w.consul_name, w.namespace, w.zone.name, node, w.service.container_port)
        self._up = True

    def _start(
        self, service: str, consul: str, namespace: str, zone: str, node: str, port: int, ts: float | None = None
    ) -> _Pod:
        self._next_ip += 1
        n = self._next_ip
        pod = f"{consul}-{n:05d}"
        started = self.clock() if ts is None else ts
        info = PodInfo(pod, f"10.244.{n // 250}.{n % 250 + 2}", node, zone, service, consul, namespace, started)
        self._pods[pod] = _Pod(info, port)
        self._inv_event("added", pod, info.started, info)
        self._inv_event("ready", pod, info.started)
        return self._pods[pod]

    def _set_ready(self, zone: str, service: str, ready: bool) -> list[str]:
        hit = [p for p in self._alive() if p.info.zone == zone and p.info.service == service]
        for p in hit:
            p.ready = ready
            self._inv_event("ready" if ready else "unready", p.info.pod, self.clock())
        return [p.info.pod for p in hit]

    def _pick(self, service: str, zone: str, caller_zone: str) -> _Pod | None:
        ready = [p for p in self._alive() if p.ready and p.info.service == service and p.info.zone == zone]
        if not ready:
            return None
        key = (caller_zone, service)
        self._rr[key] = self._rr.get(key, -1) + 1
        return ready[self._rr[key] % len(ready)]

    def _route(self, caller: _Pod, upstream: str) -> tuple[_Pod | None, str]:
        """Consul CE's choice for one hop: (serving pod or None, Envoy response flags)."""
        t = self.topology
        zone = t.zone(caller.info.zone)
        svc = t.service(upstream)
        if svc.placement is Placement.EDGE:
            local = self._pick(upstream, zone.name, zone.name)
            if local is not None:
                return local, "-"
        if zone.name in self._partitioned:
            return None, "UF"
        azs = sorted(t.region_zones, key=lambda z: z.name != zone.name)  # own AZ first, when the caller is in one
        for az in azs:
            pod = self._pick(upstream, az.name, zone.name)
            if pod is not None:
                return pod, "-"
        return None, "UH"

    def _cluster(self, caller: _Pod, upstream: str) -> str:
        """Envoy logs the route's cluster: with a failover chain the aggregate, named as its primary (the
        caller's own zone's target) whichever child's host served; only the host says where the call went.
        Named as Consul names the rendered config's chains (`RenderedChains`: hash-prefixed, `<8 hex>~`)."""
        t = self.topology
        if self._chains is None or self._chains.t is not t:
            self._chains = RenderedChains(t, t.edition, TRUST_DOMAIN)
        return self._chains.chain(caller.info.service, caller.info.zone, upstream).route

    def _call(self, caller: _Pod, ts: float, req: FakeRequest) -> tuple[bool, float]:
        t = self.topology
        total = 0.0
        for upstream in t.service(caller.info.service).upstreams:
            served, flags = self._route(caller, upstream)
            link = self._links.get(caller.info.zone, (0.0, 0.0))[0]
            crosses = served is not None and served.info.zone != caller.info.zone
            dur = 1.0 + (link + self._base_link(caller.info.zone) if crosses else 0.0)
            code = 200 if served is not None else 503
            tcp = t.service(upstream).protocol == "tcp"
            line = {"start_time": _envoy_time(ts), "method": "GET", "path": f"/{upstream}",
                    "response_code": 0 if tcp else code, "response_flags": flags, "duration": int(dur),
                    "upstream_host": f"{served.info.ip}:{served.port}" if served else None,
                    "upstream_cluster": self._cluster(caller, upstream), "caller_pod": caller.info.pod,
                    "caller_service": caller.info.consul_service, "direction": "outbound"}  # fmt: skip
            req.hops.append(line)
            ok, sub = self._call(served, ts, req) if served is not None else (False, 0.0)
            # Envoy's %DURATION% lasts until the upstream answers, its own calls included (a slow link behind
            # product-api shows in public-api's hop to it), and the line is written then
            line["duration"] = int(dur + sub)
            self._logs.setdefault(caller.info.pod, []).append(json.dumps(line))
            total += dur + sub
            if not ok:
                return False, total
        return True, total

    def _base_link(self, zone: str) -> float:
        z = self.topology.zone(zone)
        return z.link.latency_ms if z.is_edge else 0.0


def _envoy_time(ts: float) -> str:
    """Envoy's %START_TIME%: UTC, whole milliseconds (rounded: a fake clock's 0.1 is not 0.0999...)."""
    ms = round(ts * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"
