"""Synthetic run directories: a small model of the mesh that writes the records.

Why this lives in the package: the verifier's tests, its benchmark and anyone
debugging a verdict need runs whose truth is *known* (the failover delay that
was built in, the LZ->LZ hop that was planted). Generating them from a model
of the routing rules (in-zone first, Region on failover, never LZ->LZ) rather
than from fixtures keeps the expected values computed, not copied. The model
also knows the seeded misconfigurations of the design, so the tests can check
each one makes the verdict fail.

It writes exactly the files of docs/CONTRACTS.md §4 (manifests/topology.yaml,
requests.jsonl, hops.jsonl, inventory.jsonl, chaos.jsonl) and nothing the
verifier would not get from a real run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from harness.topology import Placement, Topology, dump_topology

MISCONFIGS = ("failover-to-lz", "missing-failover", "no-locality", "postgres-in-lz")


@dataclass(frozen=True)
class FaultSpec:
    """A fault as the chaos stage would record it, plus how the modelled mesh reacts.

    `inject` / `restore` are seconds from the run start (`restore` None: never
    restored). `failover_delay_s`: hops from the zone to the down services fail
    for this long before the Region takes over. `recovery_delay_s`: after the
    restore the Region keeps serving (zone-down: the zone keeps failing) this long.
    """

    fault: str
    kind: str
    zone: str
    services: tuple[str, ...] = ()
    inject: float = 30.0
    restore: float | None = 60.0
    failover_delay_s: float = 1.0
    recovery_delay_s: float = 2.0
    entry_down: bool = False


@dataclass
class Scenario:
    topology: Topology
    duration_s: float = 120.0
    rate_per_zone: float = 5.0
    faults: list[FaultSpec] = field(default_factory=list)
    misconfig: str | None = None
    drop_serving_zone: float = 0.0  # share of hops written without serving_zone/pod (observe could not tell)
    replace_pods: bool = True  # a restored service comes back as new pods under new IPs; old IPs are reused
    start: float = 1_764_100_000.0
    seed: int = 0


@dataclass
class _Pod:
    name: str
    ip: str
    zone: str
    service: str


def _num(x: float) -> str:
    return repr(round(x, 6))


class _Model:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.t = sc.topology
        self.rng = random.Random(sc.seed)
        self.azs = [z.name for z in self.t.region_zones]
        self.lzs = [z.name for z in self.t.edge_zones]
        self.zone_index = {z.name: i for i, z in enumerate(self.t.zones)}
        self.next_host: dict[str, int] = {}
        self.inventory: list[dict[str, object]] = []
        self.pods: dict[tuple[str, str], list[_Pod]] = {}  # current pods per (service, zone)
        self.history: dict[tuple[str, str], list[tuple[float, list[_Pod]]]] = {}
        self.ports = {s.name: s.container_port for s in self.t.services}
        for s in self.t.services:
            zones = [z.name for z in self.t.zones] if s.placement is Placement.EDGE else self.azs
            if s.placement is Placement.REGION:
                for i in range(s.replicas):
                    self._add(s.name, zones[i % len(zones)], sc.start - 10.0)
            else:
                for z in zones:
                    for _ in range(s.replicas):
                        self._add(s.name, z, sc.start - 10.0)
            if s.placement is Placement.REGION and sc.misconfig == "postgres-in-lz":
                for z in self.lzs:
                    self._add(s.name, z, sc.start - 10.0)
        self.entry = next(s.name for s in self.t.services if not any(s.name in o.upstreams for o in self.t.services))
        # pod replacement: at each service-down restore the zone's pods are replaced
        self.changes: list[tuple[float, str, str]] = []
        for f in sc.faults:
            if f.kind == "service-down" and f.restore is not None and sc.replace_pods:
                for name in f.services:
                    self.changes.append((sc.start + f.restore, name, f.zone))
        self.changes.sort()

    def _ip(self, zone: str) -> str:
        n = self.next_host.get(zone, 10)
        self.next_host[zone] = n + 1
        return f"10.213.{self.zone_index[zone]}.{n}"

    def _add(self, service: str, zone: str, ts: float, ip: str | None = None) -> _Pod:
        short = self.t.short(zone)
        k = len(self.inventory)
        pod = _Pod(f"{service}-{short}-{k:04x}", ip or self._ip(zone), zone, service)
        self.pods.setdefault((service, zone), []).append(pod)
        self.inventory.append(
            {
                "ts": ts,
                "event": "added",
                "pod": pod.name,
                "ip": pod.ip,
                "node": f"{short}-n1",
                "zone": zone,
                "service": service,
            }
        )
        return pod

    def replace(self, service: str, zone: str, ts: float) -> None:
        old = self.pods.get((service, zone), [])
        self.pods[(service, zone)] = []
        for p in old:
            self.inventory.append(
                {
                    "ts": ts,
                    "event": "removed",
                    "pod": p.name,
                    "ip": p.ip,
                    "node": "",
                    "zone": p.zone,
                    "service": service,
                }
            )
        for _ in old:
            self._add(service, zone, ts)
        # the old IPs are handed to unrelated pods in the first AZ: attribution must use history
        for p in old:
            self._add("batch-job", self.azs[0], ts + 0.001, ip=p.ip)
            self.pods.pop(("batch-job", self.azs[0]), None)

    def pick(self, service: str, zone: str) -> _Pod | None:
        pods = self.pods.get((service, zone))
        if not pods:
            return None
        return pods[self.rng.randrange(len(pods))] if len(pods) > 1 else pods[0]

    def region_pod(self, service: str, prefer: str | None) -> _Pod | None:
        if prefer in self.azs:
            p = self.pick(service, prefer)
            if p:
                return p
        for az in self.azs:
            p = self.pick(service, az)
            if p:
                return p
        return None


def _active(f: FaultSpec, rel: float, extra: float = 0.0) -> bool:
    return f.inject <= rel and (f.restore is None or rel < f.restore + extra)


def write_run(run_dir: Path, sc: Scenario) -> Path:
    """Write the scenario's records into `run_dir` (created) and return it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifests").mkdir(exist_ok=True)
    (run_dir / "manifests" / "topology.yaml").write_text(dump_topology(sc.topology), encoding="utf-8")
    m = _Model(sc)
    with (
        (run_dir / "hops.jsonl").open("w", encoding="utf-8") as hops,
        (run_dir / "requests.jsonl").open("w", encoding="utf-8") as reqs,
    ):
        _simulate(m, sc, hops, reqs)
    with (run_dir / "inventory.jsonl").open("w", encoding="utf-8") as inv:
        for e in sorted(m.inventory, key=lambda e: float(e["ts"])):  # type: ignore[arg-type]
            inv.write(json.dumps(e) + "\n")
    with (run_dir / "chaos.jsonl").open("w", encoding="utf-8") as ch:
        for rec in chaos_records(sc):
            ch.write(json.dumps(rec) + "\n")
    return run_dir


def chaos_records(sc: Scenario) -> Iterator[dict[str, object]]:
    events: list[dict[str, object]] = []
    for f in sc.faults:
        base = {
            "fault": f.fault,
            "action": {"service-down": "kill_pod", "zone-down": "zone_outage", "link-degraded": "set_link"}.get(
                f.kind, "partition_zone"
            ),
            "kind": f.kind,
            "zone": f.zone,
            "service": f.services[0] if f.services else None,
            "services": list(f.services),
            "entry_down": f.entry_down,
        }
        events.append({"ts": sc.start + f.inject, "phase": "inject", **base})
        if f.restore is not None:
            events.append({"ts": sc.start + f.restore, "phase": "restore", **base})
    yield from sorted(events, key=lambda e: float(e["ts"]))  # type: ignore[arg-type]


def _simulate(m: _Model, sc: Scenario, hops: IO[str], reqs: IO[str]) -> None:
    t = sc.topology
    zones = [z.name for z in t.zones]
    edge = {z.name: z.is_edge for z in t.zones}
    placement = {s.name: s.placement for s in t.services}
    upstreams = {s.name: list(s.upstreams) for s in t.services}
    link_ms = {z.name: z.link.latency_ms for z in t.zones if z.is_edge}
    step = 1.0 / sc.rate_per_zone
    n_ticks = int(sc.duration_s * sc.rate_per_zone)
    rng = m.rng
    changes = list(m.changes)
    faults = sc.faults
    drop = sc.drop_serving_zone
    hop_lines: list[str] = []
    req_lines: list[str] = []

    def serve(caller: str, czone: str, up: str, rel: float) -> tuple[_Pod | None, int, str, float]:
        """Where the modelled mesh sends one hop: (pod, status, flags, extra latency)."""
        extra = 0.0
        for f in faults:
            if f.zone != czone:
                continue
            if f.kind == "partition" and placement[up] is Placement.REGION and _active(f, rel):
                pod = m.region_pod(up, None)
                return pod, 503, "UF", 1000.0
            if f.kind == "link-degraded" and placement[up] is Placement.REGION and _active(f, rel):
                extra += 200.0
            if f.kind == "service-down" and up in f.services and _active(f, rel, f.recovery_delay_s):
                if f.restore is not None and rel >= f.restore:
                    return m.region_pod(up, None), 200, "-", link_ms.get(czone, 0.0)  # recovering
                if sc.misconfig == "missing-failover" or rel < f.inject + f.failover_delay_s:
                    return None, 503, "UH", 0.0
                if sc.misconfig == "failover-to-lz":
                    other = next((z for z in m.lzs if z != czone), None)
                    pod = m.pick(up, other) if other else None
                    return pod, 503, "UF", 1000.0
                return m.region_pod(up, None), 200, "-", link_ms.get(czone, 0.0)
        if placement[up] is Placement.REGION:
            if sc.misconfig == "postgres-in-lz" and edge[czone]:
                return m.pick(up, czone), 200, "-", extra
            return m.region_pod(up, czone), 200, "-", extra + link_ms.get(czone, 0.0)
        if sc.misconfig == "no-locality" and edge[czone]:
            return m.region_pod(up, None), 200, "-", extra + link_ms.get(czone, 0.0)
        return m.pick(up, czone), 200, "-", extra

    def call(svc: str, zone: str, ts: float, rel: float) -> tuple[bool, float, float]:
        """Run `svc`'s upstream calls from `zone`; return (ok, latency, next ts)."""
        ok, total = True, 0.0
        caller_pod = m.pick(svc, zone)
        cname = caller_pod.name if caller_pod else f"{svc}-{t.short(zone)}"
        for up in upstreams[svc]:
            pod, status, flags, extra = serve(svc, zone, up, rel)
            dur = 1.0 + extra
            host = f"{pod.ip}:{m.ports[up]}" if pod else ""
            sz = pod.zone if pod else None
            sp = pod.name if pod else None
            if pod and drop and rng.random() < drop:
                sz = sp = None
            if status >= 500 or pod is None:
                ok = False
            hop_lines.append(
                f'{{"ts": {_num(ts)}, "caller_pod": "{cname}", "caller_service": "{svc}", "caller_zone": "{zone}", '
                f'"upstream": "{up}", "upstream_cluster": "{up}.default.dc1.internal", "upstream_host": "{host}", '
                f'"serving_pod": {json.dumps(sp)}, "serving_zone": {json.dumps(sz)}, "status": {status}, '
                f'"flags": "{flags}", "duration_ms": {_num(dur)}}}\n'
            )
            ts += 0.0005
            total += dur
            if pod is None or status >= 500:
                break
            sub_ok, sub_lat, ts = call(up, pod.zone, ts, rel)
            total += sub_lat
            if not sub_ok:
                ok = False
                break
        return ok, total, ts

    for k in range(n_ticks):
        for zi, z in enumerate(zones):
            rel = k * step + zi * step / (len(zones) + 1)
            while changes and sc.start + rel >= changes[0][0]:
                ts_c, s, cz = changes.pop(0)
                m.replace(s, cz, ts_c)
            ts = sc.start + rel
            entry_dead = any(
                f.zone == z
                and (f.kind == "zone-down" or (f.kind == "service-down" and m.entry in f.services))
                and _active(f, rel, f.recovery_delay_s if f.kind == "zone-down" else 0.0)
                for f in faults
            )
            if entry_dead:
                req_lines.append(
                    f'{{"ts": {_num(ts)}, "zone": "{z}", "endpoint": "coffees", "name": "POST /api coffees", '
                    f'"status": 0, "latency_ms": 1000.0, "ok": false, "error": "connection refused"}}\n'
                )
                continue
            ok, lat, _ = call(m.entry, z, ts, rel)
            status = 200 if ok else 502
            err = "null" if ok else '"bad gateway"'
            req_lines.append(
                f'{{"ts": {_num(ts)}, "zone": "{z}", "endpoint": "coffees", "name": "POST /api coffees", '
                f'"status": {status}, "latency_ms": {_num(lat + 2.0)}, "ok": {"true" if ok else "false"}, '
                f'"error": {err}}}\n'
            )
        if len(hop_lines) > 50_000:
            hops.writelines(hop_lines)
            reqs.writelines(req_lines)
            hop_lines.clear()
            req_lines.clear()
    hops.writelines(hop_lines)
    reqs.writelines(req_lines)
