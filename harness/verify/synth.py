"""Synthetic run directories: a small model of the mesh that writes the records.

Why this lives in the package: the verifier's tests, its benchmark and anyone
debugging a verdict need runs whose truth is *known* (the failover delay that
was built in, the LZ->LZ hop that was planted). Generating them from a model
of the routing rules (in-zone first, Region on failover, never LZ->LZ) rather
than from fixtures keeps the expected values computed, not copied. The model
also knows the seeded misconfigurations of the design, so the tests can check
each one makes the verdict fail.

It writes the files of docs/CONTRACTS.md §4 and nothing the verifier would not
get from a real run: run.json, manifests/topology.yaml, requests.jsonl,
accesslogs/<pod>.jsonl (raw Envoy JSON lines, local-backend style with
`direction`/`caller_*`, or kind style without them and with the inbound
`local_app` lines), hops.jsonl (what observe derives from them),
inventory.jsonl (added/ready/unready/removed), entrypoints.jsonl,
upstream-stats.jsonl (per-host counters at start, each fault boundary and
end), preflight.json, chaos.jsonl, plan.json and chaos/<id>/journal.json
(chaostoolkit-lib 1.44's journal shape). Each can be left out to model an
older or broken run.

Times follow the real writers: Envoy's START_TIME has millisecond precision,
so hop times are whole milliseconds in both access logs and hops.jsonl; the
chaos timeline's restore is written when the fault is undone (a killed pod's
replacement is ready at that instant), unless `FaultSpec.recorded_restore`
models an older timeline that wrote it later.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from harness.contract.names import consul_name
from harness.contract.requestid import REQUEST_ID_PREFIX
from harness.contract.rundir import (
    ACCESSLOG_DIR,
    CHAOS_FILE,
    ENTRYPOINTS_FILE,
    HOPS_FILE,
    INVENTORY_FILE,
    JOURNAL_FILE,
    MANIFESTS_DIR,
    PLAN_FILE,
    PREFLIGHT_FILE,
    PROBE_BUDGET_FILE,
    REQUESTS_FILE,
    RUN_FILE,
    TOPOLOGY_FILE,
    UPSTREAM_STATS_FILE,
    USERS_FILE,
)
from harness.contract.users import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S
from harness.render.consul import RenderedChains
from harness.topology import ENTRY_SERVICE, Placement, Topology, dump_topology
from harness.verify.rundata import OVERPROVISIONING

MISCONFIGS = (
    "failover-to-lz",  # the resolver fails over to another Local Zone (the hop is logged there)
    "failover-to-lz-hidden",  # targets [other LZ, Region]: the LZ attempt fails at connect, the retry hides it
    "missing-failover",
    "no-locality",
    "postgres-in-lz",
    "postgres-unrouted",  # the first Local Zone's postgres hops find no upstream host (a redirect removed)
    "call-outside-graph",  # the first Local Zone's frontend calls product-api directly
)
TRUST_DOMAIN = "0f0f0f0f-synth.consul"
ACTIONS = {"service-down": "kill_pod", "zone-down": "zone_outage", "link-degraded": "set_link"}


@dataclass(frozen=True)
class FaultSpec:
    """A fault as the chaos stage would record it, plus how the modelled mesh reacts.

    `inject` / `restore` are seconds from the run start (`restore` None: never
    restored). `failover_delay_s`: hops from the zone to the down services fail
    for this long before the Region takes over. `recovery_delay_s`: after the
    restore the Region keeps serving (zone-down: the zone keeps failing) this long.
    `recorded_restore`: when the timeline's restore line is written, if not at
    the restore (older timelines wrote it after waiting for readiness).
    `recorded=False` models an outage of the mesh that no experiment caused.
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
    recorded_restore: float | None = None
    recorded: bool = True  # False: an outage nobody injected (no timeline line, no experiment)
    # hops of the down services that start this long before the inject are in flight at
    # the kill: Envoy retries them to the Region, and stamps them with their start
    inflight_ms: float = 0.0
    # how long after the recorded inject the pods are gone (the local backend records, then kills: 0.3-0.6 s
    # under load); the zone's hops fail from the inject on
    kill_delay_s: float = 0.001
    # link-degraded: what it adds to each round trip across the link (recorded in the inject line);
    # `link_inert`: recorded, but it never reached the link (nothing slows down); `link_lingers`: the restore is
    # recorded but the latency stays on to the end of the run
    latency_ms: float = 200.0
    link_inert: bool = False
    link_lingers: bool = False
    # how long the primitive that undoes the fault takes after the restore is recorded (the timeline writes the
    # restore before calling it): a degraded link stays slow meanwhile, and the restore's counter snapshot, taken
    # once the primitive acted, comes after it (kind: `docker exec` of the rules on each of the zone's nodes)
    undo_s: float = 0.0
    # how long the primitive that applies the fault takes after the inject is recorded (the timeline writes the
    # inject before calling it), the mirror of `undo_s`: a degraded link is slowed only from then on, and the
    # inject's counter snapshot, taken once the primitive returned, comes after it. Only the link's effect is
    # modelled to wait for it (a kill's: `kill_delay_s`)
    apply_s: float = 0.0


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
    accesslogs: str = "local"  # local | kind | none
    readiness: bool = True  # the inventory has ready/unready events (older inventories do not)
    silent: list[tuple[str, float, float | None]] = field(default_factory=list)  # (zone, from, to): users hang
    # users.json (harness.traffic.runner): the users' (shortest, longest) think time as the runner gave it to
    # locust (EH_WAIT); None: no such record (an older run, locust started by hand)
    users_wait: tuple[float, float] | None = None
    stats: bool = True  # upstream-stats.jsonl
    entrypoints: bool = True  # entrypoints.jsonl
    preflight: bool = True  # preflight.json (every check passing)
    plan: bool = True  # plan.json + one experiment (journal) per fault
    run_status: str | None = "complete"  # run.json status; None: no run.json
    # (zone, service, from, to): one of the zone's replicas is unready (a readiness flap under load); with
    # fewer than 1/1.4 of them ready Envoy spills that share of the zone's hops to the Region (`spills`)
    degraded: list[tuple[str, str, float, float]] = field(default_factory=list)
    degraded_recorded: bool = True  # False: the spill happens but the inventory never says the pod was unready
    # (zone, every): the zone's frontend answers every `every`-th of its users' requests with a 500 before calling
    # anything (an app failing in one city, no fault): the zone's users see 1/every of their requests fail
    flaky: list[tuple[str, int]] = field(default_factory=list)
    # each user request carries its id (harness.contract.requestid), logged on its entry hop's lines;
    # False: a run recorded without them (an older harness)
    request_ids: bool = True
    # probe-budget.json: the probe budget's last window ended this long after the first request (its decision; the
    # run is settled SWITCH_S later: harness.contract.settled); None: no such record (in-zone workers, game days
    # of old)
    budget_end_s: float | None = None
    # a caller's connections to a TCP upstream (product-api -> postgres) are pooled as the real product-api pools
    # them (Go database/sql, no max lifetime): opened once, when the pod starts (its DB wait, before it is ready),
    # and held for its life. Envoy's tcp_proxy logs a connection when it closes, so they leave no access-log line
    # (nor hop) at all; only the caller's counters show them, and those count connections, not queries (each
    # downstream connection is one upstream "request": cx_total = rq_total, set at start-up, unchanged while it
    # serves; the open ones are its cx_active / rq_active gauges). A connection is dialled again only when its host is
    # gone, and the closed one is logged then, stamped with its start. False: one logged connection per query,
    # as a pool that closes every connection on release makes it look.
    pooled_tcp: bool = False
    # the round trips across its zone's service link of one call to a Region-only upstream from an edge zone: the
    # product-api image's GetCoffees makes 1 + N queries (19 with the seed), each paying the link's latency (its
    # own and a degradation's); 1: one query per call. A hop served by the Region crosses the link once
    db_round_trips: int = 1


@dataclass
class _Pod:
    name: str
    ip: str
    zone: str
    service: str


def _num(x: float) -> str:
    return repr(round(x, 6))


def _ms(ts: float) -> int:
    """Envoy's clock: whole milliseconds (START_TIME is printed with %3f)."""
    return int(ts * 1000 + 1e-6)


@functools.lru_cache(maxsize=4096)
def _envoy_second(s: int) -> str:
    """START_TIME's whole-second part (every hop of a second shares it: formatted once, not per line)."""
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _envoy_time(ms: int) -> str:
    return f"{_envoy_second(ms // 1000)}.{ms % 1000:03d}Z"


class _Model:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.t = sc.topology
        self.rng = random.Random(sc.seed)
        # consul() and cluster() per argument tuple: pure functions of the topology, asked once per hop and line
        # (half the time a busy synthetic run took to write)
        self._consul_names: dict[tuple[str, str], str] = {}
        self._clusters: dict[tuple[str, str, str, str | None], str] = {}
        self.azs = [z.name for z in self.t.region_zones]
        self.lzs = [z.name for z in self.t.edge_zones]
        self.zone_index = {z.name: i for i, z in enumerate(self.t.zones)}
        self.next_host: dict[str, int] = {}
        self.inventory: list[dict[str, object]] = []
        self.pods: dict[tuple[str, str], list[_Pod]] = {}  # current pods per (service, zone)
        self.all_pods: dict[str, _Pod] = {}
        self.ports = {s.name: s.container_port for s in self.t.services}
        self.counters: dict[tuple[str, str, str], list[int]] = {}  # (pod, cluster, host) -> cx, cf, rq, rqe, active
        self.stats_lines: list[str] = []
        self.chains = RenderedChains(self.t, self.t.edition, TRUST_DOMAIN)
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
        self.entry = ENTRY_SERVICE  # what users enter through (harness.topology), not any service no one calls
        self._members()
        # Pod lifecycle during faults, in time order: (ts, order, what, service, zone)
        self.changes: list[tuple[float, int, str, str, str]] = []
        for f in sc.faults:
            if f.kind == "service-down":
                for name in f.services:
                    self.changes.append((sc.start + f.inject + f.kill_delay_s, 0, "down", name, f.zone))
                    if f.restore is not None:
                        self.changes.append((sc.start + f.restore, 1, "up", name, f.zone))
            elif f.kind == "zone-down":
                for s in self.t.services:
                    if (s.name, f.zone) in self.pods:
                        self.changes.append((sc.start + f.inject + 0.001, 0, "unready", s.name, f.zone))
                        if f.restore is not None:
                            self.changes.append((sc.start + f.restore, 1, "ready", s.name, f.zone))
        self.unready: set[str] = set()  # pods a `degraded` window holds unready
        self.dead: set[str] = set()  # pods a service-down fault took down: they serve nothing until it is undone
        for zone, service, lo, hi in sc.degraded:
            self.changes.append((sc.start + lo, 0, "unready-one", service, zone))
            self.changes.append((sc.start + hi, 1, "ready-one", service, zone))
        self.changes.sort()

    def _ip(self, zone: str) -> str:
        n = self.next_host.get(zone, 10)
        self.next_host[zone] = n + 1
        return f"10.213.{self.zone_index[zone]}.{n}"

    def _event(self, ts: float, event: str, p: _Pod) -> None:
        self.inventory.append(
            {
                "ts": ts,
                "event": event,
                "pod": p.name,
                "ip": p.ip,
                "node": f"{self.t.short(p.zone)}-n1" if p.zone in self.zone_index else "",
                "zone": p.zone,
                "service": p.service,
                "consul_service": self.consul(p.service, p.zone),
                "namespace": "hashicups",
            }
        )

    def consul(self, service: str, zone: str) -> str:
        key = (service, zone)
        if (name := self._consul_names.get(key)) is None:
            try:
                name = consul_name(self.t, self.t.service(service), self.t.zone(zone), self.t.edition)
            except KeyError:
                name = service
            self._consul_names[key] = name
        return name

    def _add(self, service: str, zone: str, ts: float, ip: str | None = None, ready: bool = True) -> _Pod:
        short = self.t.short(zone)
        k = len(self.inventory)
        pod = _Pod(f"{service}-{short}-{k:04x}", ip or self._ip(zone), zone, service)
        self.pods.setdefault((service, zone), []).append(pod)
        self.all_pods[pod.name] = pod
        self._event(ts, "added", pod)
        if ready and self.sc.readiness:
            self._event(ts + (1.0 if ts < self.sc.start else 0.0), "ready", pod)
        return pod

    def apply(self, ts: float, what: str, service: str, zone: str) -> None:
        """A fault's effect on the pods (killed / back / unready / ready), as the inventory records it."""
        if what in ("unready-one", "ready-one"):  # a `degraded` window: the zone's first replica
            first = self.pods[(service, zone)][0]
            (self.unready.add if what == "unready-one" else self.unready.discard)(first.name)
            if self.sc.degraded_recorded and self.sc.readiness:
                self._event(ts, what.removesuffix("-one"), first)
            return
        if what == "down":
            self.dead.update(p.name for p in self.pods.get((service, zone), []))
            if self.sc.replace_pods:
                for p in self.pods.get((service, zone), []):
                    self._event(ts, "removed", p)
            elif self.sc.readiness:
                for p in self.pods.get((service, zone), []):
                    self._event(ts, "unready", p)
        elif what == "up":
            self.dead.difference_update(p.name for p in self.pods.get((service, zone), []))
            if self.sc.replace_pods:
                self.replace(service, zone, ts)
            elif self.sc.readiness:
                for p in self.pods.get((service, zone), []):
                    self._event(ts, "ready", p)
        elif self.sc.readiness:
            for p in self.pods.get((service, zone), []):
                self._event(ts, what, p)

    def replace(self, service: str, zone: str, ts: float) -> None:
        """The Deployment's replacements are ready at `ts` (the restore); the dead pods' IPs are reused."""
        old = self.pods.get((service, zone), [])
        self.pods[(service, zone)] = []
        for _ in old:
            self._add(service, zone, ts)
        # the old IPs are handed to unrelated pods in the first AZ: attribution must use history
        for p in old:
            self._add("batch-job", self.azs[0], ts + 0.001, ip=p.ip, ready=False)
            self.pods.pop(("batch-job", self.azs[0]), None)

    def spill_share(self, service: str, zone: str) -> float:
        """The share of a zone's hops Envoy sends on to the Region: 1 - min(1, ready share x OVERPROVISIONING)."""
        pods = self.pods.get((service, zone), [])
        ready = sum(1 for p in pods if p.name not in self.unready)
        if not pods or ready == len(pods):
            return 0.0
        return max(0.0, 1.0 - min(1.0, ready / len(pods) * OVERPROVISIONING))

    def pick(self, service: str, zone: str) -> _Pod | None:
        pods = [p for p in self.pods.get((service, zone), []) if p.name not in self.unready | self.dead]
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

    # -- attempt evidence ------------------------------------------------------
    def _members(self) -> None:
        """Every sidecar lists its upstreams' hosts with zero counters before the first request."""
        for (service, zone), callers in list(self.pods.items()):
            for u in next((s.upstreams for s in self.t.services if s.name == service), []):
                local = self.pods.get((u, zone)) if self.t.service(u).placement is Placement.EDGE else None
                targets = local or [p for az in self.azs for p in self.pods.get((u, az), [])]
                for c in callers:
                    for p in targets:
                        key = (c.name, self.cluster(service, zone, u, p.zone), f"{p.ip}:{self.ports[u]}")
                        self.counters.setdefault(key, [0, 0, 0, 0, 0])

    def aggregate(self, caller: str, caller_zone: str, upstream: str) -> str:
        """The cluster a caller's route names, as Envoy 1.40 logs it in %UPSTREAM_CLUSTER%: for a failover chain
        the aggregate cluster, named as its primary (the caller's own zone's target), whichever child served.

        Named as Consul names the rendered config's chains (`RenderedChains`): `<8 hex>~`-prefixed, since every
        caller's `connectTimeoutMs` differs from the 5 s of a target without a resolver (the Region's)."""
        return self.chains.chain(caller, caller_zone, upstream).route

    def cluster(self, caller: str, caller_zone: str, upstream: str, served_zone: str | None) -> str:
        """The Envoy cluster of a caller's upstream that holds the serving host, as `/clusters` lists it.

        Consul names a failover chain's children `failover-target~<i>~<the primary's cluster>` (i: the target's
        place in the chain, 0 the primary): the name never says which zone a child's hosts are in, only its
        index does (0: the caller's own zone; any other: a failover target, the Region or, misconfigured,
        another Local Zone)."""
        key = (caller, caller_zone, upstream, served_zone)
        if (child := self._clusters.get(key)) is None:
            chain = self.chains.chain(caller, caller_zone, upstream)
            name = self.consul(upstream, caller_zone)
            target = self.consul(upstream, served_zone) if served_zone else name
            child = self._clusters[key] = chain.children[0 if target == name else min(1, len(chain.children) - 1)]
        return child

    def count(self, caller: str, cluster: str, host: str, rq: int = 1, cf: int = 0, err: int = 0) -> None:
        c = self.counters.setdefault((caller, cluster, host), [0, 0, 0, 0, 0])
        if c[0] == 0 or cf:
            c[0] += 1  # a new connection (first use, or a connect attempt that failed)
        c[1] += cf
        c[2] += rq
        c[3] += err

    def connect(self, caller: str, cluster: str, host: str, opened: bool = True) -> None:
        """A pooled TCP connection through the caller's sidecar opened (one connection, one tcp_proxy "request",
        both active while it is held: Envoy's cx_active / rq_active gauges) or, `opened` False, closed."""
        c = self.counters.setdefault((caller, cluster, host), [0, 0, 0, 0, 0])
        if opened:
            c[0] += 1
            c[2] += 1
        c[4] += 1 if opened else -1

    def snapshot(self, ts: float, label: str) -> None:
        """Every live sidecar's counters (a dead pod's Envoy admin does not answer).

        A sidecar lists its clusters' hosts with zero counters until it uses them, so a pod born since the
        last snapshot is in this one although it has not called anyone yet (`_members`).
        """
        if not self.sc.stats:
            return
        self._members()
        alive = {p.name for pods in self.pods.values() for p in pods}
        for (pod, cluster, host), (cx, cf, rq, rqe, active) in sorted(self.counters.items()):
            if pod not in alive:
                continue
            self.stats_lines.append(
                json.dumps(
                    {
                        "ts": ts,
                        "label": label,
                        "pod": pod,
                        "cluster": cluster,
                        "host": host,
                        "cx_total": cx,
                        "cx_connect_fail": cf,
                        "rq_total": rq,
                        "rq_error": rqe,
                        "rq_timeout": 0,
                        "cx_active": active,
                        "rq_active": active,
                        "health_flags": "healthy",
                    }
                )
                + "\n"
            )


def _active(f: FaultSpec, rel: float, extra: float = 0.0) -> bool:
    return f.inject <= rel and (f.restore is None or rel < f.restore + extra)


def experiment_id(i: int, f: FaultSpec) -> str:
    return f"{i + 1:02d}-{f.fault}"


def action_name(f: FaultSpec) -> str:
    return f"{ACTIONS.get(f.kind, 'partition_zone')} {f.zone}"


def write_run(run_dir: Path, sc: Scenario) -> Path:
    """Write the scenario's records into `run_dir` (created) and return it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifests").mkdir(exist_ok=True)
    (run_dir / MANIFESTS_DIR / TOPOLOGY_FILE).write_text(dump_topology(sc.topology), encoding="utf-8")
    m = _Model(sc)
    logs = _AccessLogs(run_dir / ACCESSLOG_DIR, sc.accesslogs)
    with (
        (run_dir / HOPS_FILE).open("w", encoding="utf-8") as hops,
        (run_dir / REQUESTS_FILE).open("w", encoding="utf-8") as reqs,
    ):
        _simulate(m, sc, hops, reqs, logs)
    logs.flush()
    _write_lines(run_dir / INVENTORY_FILE, [json.dumps(e) + "\n" for e in _sorted_events(m.inventory)])
    _write_lines(run_dir / CHAOS_FILE, [json.dumps(r) + "\n" for r in chaos_records(sc)])
    if sc.stats:
        _write_lines(run_dir / UPSTREAM_STATS_FILE, m.stats_lines)
    if sc.entrypoints:
        _write_lines(run_dir / ENTRYPOINTS_FILE, [json.dumps(r) + "\n" for r in entrypoint_records(sc, m)])
    if sc.preflight:
        (run_dir / PREFLIGHT_FILE).write_text(json.dumps(preflight(sc, m), indent=1), encoding="utf-8")
    if sc.plan and any(f.recorded for f in sc.faults):
        _write_plan(run_dir, sc)
    if sc.budget_end_s is not None:  # one window, within the target at the set rates (no note)
        end = sc.start + sc.budget_end_s
        window = {"start": end - 1.0, "end": end, "scale": 1.0, "busy": 0.5, "requests_per_s": 50.0,
                  "probes_per_s": 10.0}  # fmt: skip
        budget = {"scale": 1.0, "target_busy": 0.6, "cpus": 2, "periods": {}, "reason": "within", "windows": [window]}
        (run_dir / PROBE_BUDGET_FILE).write_text(json.dumps(budget, indent=1) + "\n", encoding="utf-8")
    if sc.users_wait is not None:
        users = {"wait_s": list(sc.users_wait), "wait_env": ",".join(f"{w:g}" for w in sc.users_wait),
                 "connect_timeout_s": CONNECT_TIMEOUT_S, "answer_timeout_s": ANSWER_TIMEOUT_S,
                 "locustfile": "loadtests/hashicups.py"}  # fmt: skip
        (run_dir / USERS_FILE).write_text(json.dumps(users) + "\n", encoding="utf-8")
    if sc.run_status is not None:
        ended = sc.start + sc.duration_s + 1.0 if sc.run_status != "running" else None
        stage = "done" if sc.run_status == "complete" else "chaos"  # where an unfinished run stopped
        state = {"started": sc.start - 20.0, "ended": ended, "stage": stage, "status": sc.run_status}
        (run_dir / RUN_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
    return run_dir


def _write_lines(path: Path, lines: list[str]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.writelines(lines)


def _sorted_events(events: list[dict[str, object]]) -> list[dict[str, object]]:
    order = {"added": 0, "ready": 1, "unready": 2, "removed": 3}
    return sorted(events, key=lambda e: (float(e["ts"]), order.get(str(e["event"]), 9)))  # type: ignore[arg-type]


def chaos_records(sc: Scenario) -> Iterator[dict[str, object]]:
    events: list[dict[str, object]] = []
    for f in sc.faults:
        if not f.recorded:
            continue
        base = {
            "fault": f.fault,
            "action": ACTIONS.get(f.kind, "partition_zone"),
            "kind": f.kind,
            "zone": f.zone,
            "service": f.services[0] if f.services else None,
            "services": list(f.services),
            "entry_down": f.entry_down,
        }
        extra = {"latency_ms": f.latency_ms, "loss_percent": 0.0} if f.kind == "link-degraded" else {}
        events.append({"ts": sc.start + f.inject, "phase": "inject", **base, **extra})
        if f.restore is not None:
            at = f.recorded_restore if f.recorded_restore is not None else f.restore
            events.append({"ts": sc.start + at, "phase": "restore", **base})
    yield from sorted(events, key=lambda e: float(e["ts"]))  # type: ignore[arg-type]


def _entry_dead(m: _Model, f: FaultSpec, zone: str, rel: float) -> bool:
    return (
        f.zone == zone
        and (f.kind == "zone-down" or (f.kind == "service-down" and m.entry in f.services))
        and _active(f, rel, f.recovery_delay_s if f.kind == "zone-down" else 0.0)
    )


def entrypoint_records(sc: Scenario, m: _Model) -> list[dict[str, object]]:
    """Each zone's entry point up at the start, down while a fault kills it (as `_entry_dead` models)."""
    out: list[dict[str, object]] = []
    for z in sc.topology.zones:
        url = f"http://127.0.0.1:{31000 + m.zone_index[z.name]}"
        out.append({"ts": sc.start - 5.0, "zone": z.name, "url": url, "up": True, "reason": "ready"})
        for f in sc.faults:
            if f.zone != z.name or not (f.kind == "zone-down" or (f.kind == "service-down" and m.entry in f.services)):
                continue
            out.append({"ts": sc.start + f.inject, "zone": z.name, "url": url, "up": False,
                        "reason": f"no ready {m.entry} pod"})  # fmt: skip
            if f.restore is not None:
                back = f.restore + (f.recovery_delay_s if f.kind == "zone-down" else 0.0)
                out.append({"ts": sc.start + back, "zone": z.name, "url": url, "up": True, "reason": "ready"})
    return sorted(out, key=lambda r: (float(r["ts"]), str(r["zone"])))  # type: ignore[arg-type]


def preflight(sc: Scenario, m: _Model) -> dict[str, Any]:
    """Consul's view as the preflight would record it for a correctly rendered mesh (every check passing)."""
    t = sc.topology
    checks: list[dict[str, Any]] = []
    names = sorted({m.consul(s.name, z.name) for s in t.services for z in t.zones
                    if s.placement is Placement.EDGE or not z.is_edge})  # fmt: skip
    for n in names:
        checks.append({"check": "crd-synced", "subject": f"ServiceDefaults/{n}", "ok": True, "message": "Synced",
                       "detail": {}})  # fmt: skip
        checks.append({"check": "instances-passing", "subject": n, "ok": True, "message": "every instance passing",
                       "detail": {}})  # fmt: skip
    for z in t.edge_zones:
        for s in t.services:
            if s.placement is not Placement.EDGE:
                continue
            local = m.consul(s.name, z.name)
            checks.append({"check": "discovery-chain", "subject": local, "ok": True,
                           "message": "in-zone first, then the Region", "detail": {"caller_zone": z.name,
                           "targets": [f"{local}.default.dc1", f"{s.name}.default.dc1"]}})  # fmt: skip
    declared = {(s.name, u) for s in t.services for u in s.upstreams}
    for src in t.services:
        for dst in t.services:
            if src.name != dst.name and (src.name, dst.name) not in declared:
                checks.append({"check": "intentions", "subject": f"{src.name} -> {dst.name}", "ok": True,
                               "message": "denied", "detail": {"allowed": False}})  # fmt: skip
    checks.append({"check": "refused-probe", "subject": "frontend -> product-api", "ok": True,
                   "message": "refused (403)", "detail": {}})  # fmt: skip
    return {"ts": sc.start - 15.0, "consul": "http://127.0.0.1:8500", "ok": True, "checks": checks}


def _write_plan(run_dir: Path, sc: Scenario) -> None:
    exps = []
    for i, f in enumerate(x for x in sc.faults if x.recorded):
        exp_id = experiment_id(i, f)
        exps.append({"id": exp_id, "file": f"experiments/{f.fault}.json", "actions": [action_name(f)]})
        d = run_dir / "chaos" / exp_id
        d.mkdir(parents=True, exist_ok=True)
        (d / JOURNAL_FILE).write_text(json.dumps(journal(sc, f), indent=1), encoding="utf-8")
    (run_dir / PLAN_FILE).write_text(json.dumps({"experiments": exps}, indent=1), encoding="utf-8")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def journal(sc: Scenario, f: FaultSpec) -> dict[str, Any]:
    """A chaostoolkit-lib 1.44 journal of an experiment whose one action ran and succeeded."""
    t0 = sc.start + f.inject - 1.0
    probe = {"activity": {"type": "probe", "name": "all-pods-ready", "tolerance": True,
                          "provider": {"type": "python", "module": "harness.chaos.probes", "func": "all_pods_ready"}},
             "output": True, "status": "succeeded", "start": _iso(t0), "end": _iso(t0 + 0.1), "duration": 0.1,
             "tolerance_met": True}  # fmt: skip
    end = sc.start + (f.restore if f.restore is not None else sc.duration_s)
    action = {"activity": {"type": "action", "name": action_name(f),
                           "provider": {"type": "python", "module": "harness.chaos.actions",
                                        "func": ACTIONS.get(f.kind, "partition_zone")}},
              "output": {"fault": f.fault}, "status": "succeeded", "start": _iso(sc.start + f.inject),
              "end": _iso(end), "duration": end - sc.start - f.inject}  # fmt: skip
    return {
        "chaoslib-version": "1.44.0",
        "experiment": {"title": f.fault},
        "start": _iso(t0),
        "end": _iso(end + 1.0),
        "status": "completed",
        "deviated": False,
        "steady_states": {
            "before": {"steady_state_met": True, "probes": [probe]},
            "after": {"steady_state_met": True, "probes": [probe]},
            "during": [],
        },
        "run": [action],
        "rollbacks": [],
    }


class _AccessLogs:
    """Raw Envoy access-log lines per pod, buffered and appended (a long run has many pods and lines)."""

    def __init__(self, root: Path, style: str) -> None:
        self.root = root
        self.style = style
        self.buf: dict[str, list[str]] = {}
        self.n = 0
        if style != "none":
            root.mkdir(parents=True, exist_ok=True)

    def add(self, pod: str, rec: dict[str, Any]) -> None:
        if self.style == "none":
            return
        self.buf.setdefault(pod, []).append(json.dumps(rec) + "\n")
        self.n += 1
        if self.n >= 50_000:
            self.flush()

    def flush(self) -> None:
        for pod, lines in self.buf.items():
            with (self.root / f"{pod}.jsonl").open("a", encoding="utf-8") as fh:
                fh.writelines(lines)
        self.buf.clear()
        self.n = 0


def _simulate(m: _Model, sc: Scenario, hops: IO[str], reqs: IO[str], logs: _AccessLogs) -> None:
    t = sc.topology
    zones = [z.name for z in t.zones]
    edge = {z.name: z.is_edge for z in t.zones}
    placement = {s.name: s.placement for s in t.services}
    upstreams = {s.name: list(s.upstreams) for s in t.services}
    protocol = {s.name: s.protocol for s in t.services}
    if sc.misconfig == "call-outside-graph":
        upstreams = {**upstreams, "frontend": ["product-api", *upstreams["frontend"]]}
    link_ms = {z.name: z.link.latency_ms for z in t.zones if z.is_edge}
    step = 1.0 / sc.rate_per_zone
    n_ticks = int(sc.duration_s * sc.rate_per_zone)
    rng = m.rng
    changes = list(m.changes)
    snaps = sorted(
        [(sc.start - 0.5, "start")]
        + [(sc.start + f.inject + f.apply_s + 0.002, f"inject {f.fault}") for f in sc.faults if f.recorded]
        + [(sc.start + (f.restore if f.recorded_restore is None else f.recorded_restore) + f.undo_s + 0.002,
            f"restore {f.fault}") for f in sc.faults if f.restore is not None and f.recorded]
    )  # fmt: skip
    faults = sc.faults
    drop = sc.drop_serving_zone
    first_lz = m.lzs[0] if m.lzs else None
    hop_lines: list[str] = []
    req_lines: list[str] = []
    # (caller pod, TCP upstream) -> the pod its pooled connection reaches, and when it was opened (Envoy's ms)
    held: dict[tuple[str, str], tuple[_Pod, int]] = {}

    def serve(
        caller: str, czone: str, up: str, rel: float, caller_pod: _Pod | None
    ) -> tuple[_Pod | None, int, str, float]:
        """Where the modelled mesh sends one hop: (pod, status, flags, extra latency)."""
        # a hop that crosses the zone's link pays its latency and a degradation's: once when the Region serves
        # it, on each round trip (`db_round_trips`) when it is a Region-only service's (its queries)
        slowed = degraded(czone, rel)
        crossing = link_ms.get(czone, 0.0) + slowed if edge[czone] else 0.0
        for f in faults:
            if f.zone != czone:
                continue
            if f.kind == "partition" and placement[up] is Placement.REGION and _active(f, rel):
                pod = m.region_pod(up, None)
                return pod, 503, "UF", 1000.0
            if f.kind == "service-down" and up in f.services and f.inject - f.inflight_ms / 1000 <= rel < f.inject:
                return m.region_pod(up, None), 200, "-", f.inflight_ms + crossing
            if f.kind == "service-down" and up in f.services and _active(f, rel, f.recovery_delay_s):
                if f.restore is not None and rel >= f.restore:
                    return m.region_pod(up, None), 200, "-", crossing  # recovering
                if sc.misconfig == "missing-failover" or rel < f.inject + f.failover_delay_s:
                    return None, 503, "UH", 0.0
                if sc.misconfig == "failover-to-lz":
                    other = next((z for z in m.lzs if z != czone), None)
                    pod = m.pick(up, other) if other else None
                    return pod, 503, "UF", 1000.0
                if sc.misconfig == "failover-to-lz-hidden":
                    other = next((z for z in m.lzs if z != czone), None)
                    tried = m.pick(up, other) if other else None
                    if tried and caller_pod:  # the connect to the other LZ fails; Envoy retries to the Region
                        m.count(caller_pod.name, m.cluster(caller, czone, up, other), f"{tried.ip}:{m.ports[up]}", 0, 1)
                return m.region_pod(up, None), 200, "-", crossing
        if placement[up] is Placement.REGION:
            if sc.misconfig == "postgres-in-lz" and edge[czone]:
                return m.pick(up, czone), 200, "-", slowed
            if sc.misconfig == "postgres-unrouted" and czone == first_lz:
                return None, 0, "UH", 0.0
            return m.region_pod(up, czone), 200, "-", crossing * sc.db_round_trips
        if sc.misconfig == "no-locality" and edge[czone]:
            return m.region_pod(up, None), 200, "-", crossing
        share = m.spill_share(up, czone) if edge[czone] else 0.0
        if share > 0 and rng.random() < share:  # drawn only in a spill: other scenarios keep their sequence
            return m.region_pod(up, None), 200, "-", crossing
        return m.pick(up, czone), 200, "-", 0.0

    def held_conn(svc: str, zone: str, up: str, rel: float, caller_pod: _Pod) -> _Pod | None:
        """The pod `caller_pod`'s pooled connection to `up` reaches, dialled now if it has none or its host is gone
        (`Scenario.pooled_tcp`); None when the dial fails (then the hop is modelled as a logged failure)."""
        now = _ms(sc.start + rel)
        if (kept := held.pop((caller_pod.name, up), None)) is not None:
            target, opened = kept
            if target.name not in m.dead and target in m.pods.get((up, target.zone), []):
                held[(caller_pod.name, up)] = kept
                return target
            # its host is gone: the connection closed, and Envoy logs it now, stamped with its start
            host = f"{target.ip}:{m.ports[up]}"
            m.connect(caller_pod.name, m.cluster(svc, zone, up, target.zone), host, opened=False)
            line(caller_pod.name, svc, zone, up, target, opened, float(max(1, now - opened)), 0, "-", None)
        pod, status, _, _ = serve(svc, zone, up, rel, caller_pod)
        if pod is None or status >= 500:
            return None
        m.connect(caller_pod.name, m.cluster(svc, zone, up, pod.zone), f"{pod.ip}:{m.ports[up]}")
        held[(caller_pod.name, up)] = (pod, now)
        return pod

    def line(
        cname: str,
        svc: str,
        zone: str,
        up: str,
        pod: _Pod | None,
        at: int,
        dur: float,
        status: int,
        flags: str,
        rid: str | None,
        sp: str | None = None,
        sz: str | None = None,
    ) -> None:
        """One hop as the caller's sidecar logs it (and, kind style, the serving sidecar's inbound line).
        `sp` / `sz`: the serving pod and zone hops.jsonl names (observe could not tell: None), `pod`'s by default."""
        if pod is not None and sp is None and sz is None and not drop:
            sp, sz = pod.name, pod.zone
        host = f"{pod.ip}:{m.ports[up]}" if pod else ""
        logged = m.aggregate(svc, zone, up)  # what the access log names: the route's aggregate cluster
        code = 0 if protocol[up] == "tcp" else status  # Envoy logs TCP proxies with code 0 and the flags
        hop_lines.append(
            f'{{"ts": {at / 1000!r}, "caller_pod": "{cname}", "caller_service": "{svc}", "caller_zone": "{zone}", '
            f'"upstream": "{up}", "upstream_cluster": "{logged}", "upstream_host": "{host}", '
            f'"serving_pod": {json.dumps(sp)}, "serving_zone": {json.dumps(sz)}, "status": {code}, '
            f'"flags": "{flags}", "duration_ms": {dur!r}}}\n'
        )
        rec: dict[str, Any] = {"start_time": _envoy_time(at), "method": "GET", "path": f"/{up}",
                               "response_code": code, "response_flags": flags, "duration": int(dur),
                               "upstream_host": host or None, "upstream_cluster": logged}  # fmt: skip
        if rid is not None:
            rec["request_id"] = rid
        if sc.accesslogs == "local":
            rec |= {"caller_pod": cname, "caller_service": m.consul(svc, zone), "direction": "outbound"}
        logs.add(cname, rec)
        if sc.accesslogs == "kind" and pod is not None:
            inbound = {**rec, "upstream_host": f"127.0.0.1:{m.ports[up]}", "upstream_cluster": "local_app"}
            logs.add(pod.name, inbound)

    def degraded(czone: str, rel: float) -> float:
        """What a degradation of `czone`'s link adds to each round trip across it at `rel` (0 when none is on, or
        it never reached the link)."""
        extra = 0.0
        for f in faults:
            if f.zone != czone or f.kind != "link-degraded" or f.link_inert:
                continue
            undoing = f.restore is not None and f.restore <= rel < f.restore + f.undo_s
            if rel >= f.inject + f.apply_s and (_active(f, rel) or (f.link_lingers and rel >= f.inject) or undoing):
                extra += f.latency_ms
        return extra

    def across(czone: str, target: _Pod, rel: float) -> float | None:
        """What a query on a held connection from `czone` to `target` adds by crossing the zone's link (its
        latency, and a degradation's while it is on, as `serve` adds them); None while a partition cuts it off:
        the held connection stalls, and the query database/sql sends on a new one fails to connect (`serve`)."""
        if target.zone == czone or not edge[czone]:
            return 0.0
        if any(f.zone == czone and f.kind == "partition" and _active(f, rel) for f in faults):
            return None
        return (link_ms.get(czone, 0.0) + degraded(czone, rel)) * sc.db_round_trips

    def dial_new(rel: float) -> None:
        """Each live pod of a caller of a TCP upstream holds its pooled connection from start-up on (its DB wait)."""
        if not sc.pooled_tcp:
            return
        for (svc, zone), pods in list(m.pods.items()):
            ups = [u for u in upstreams.get(svc, []) if protocol.get(u) == "tcp"]
            for p in pods if ups else []:
                if p.name not in m.dead:
                    for up in ups:
                        held_conn(svc, zone, up, rel, p)

    def call(
        svc: str, zone: str, ms: int, rel: float, caller_pod: _Pod | None = None, rid: str | None = None
    ) -> tuple[bool, float, int]:
        """Run `svc`'s upstream calls from `zone`; return (ok, latency, next ms).

        `caller_pod`: the pod that serves the call (a hop's serving pod makes its own calls, from its own
        sidecar, as in a real mesh); None for the users' entry, which picks one of the zone's pods. `rid`:
        the user request's id, which the entry passes on (the services behind it make calls of their own).
        """
        ok, total = True, 0.0
        if caller_pod is None:
            caller_pod = m.pick(svc, zone)
        cname = caller_pod.name if caller_pod else f"{svc}-{t.short(zone)}"
        for up in upstreams[svc]:
            if sc.misconfig == "call-outside-graph" and svc == "frontend" and up == "product-api" and zone != first_lz:
                continue
            if sc.pooled_tcp and protocol[up] == "tcp" and caller_pod is not None:
                target = held_conn(svc, zone, up, rel, caller_pod)
                lat = None if target is None else across(zone, target, rel)
                if target is not None and lat is not None:  # a query on the held connection: no line, no counter
                    sub_ok, sub_lat, ms = call(up, target.zone, ms + 1, rel, target)
                    total += float(round(1.0 + lat + sub_lat))
                    if not sub_ok:
                        ok = False
                        break
                    continue
            pod, status, flags, extra = serve(svc, zone, up, rel, caller_pod)
            if pod is None and flags == "-":  # no pod to send to: Envoy says "no healthy upstream", never nothing
                status, flags = 503, "UH"
            host = f"{pod.ip}:{m.ports[up]}" if pod else ""
            sz = pod.zone if pod else None
            sp = pod.name if pod else None
            cluster = m.cluster(svc, zone, up, sz)  # the child that held the host (counters)
            if pod and caller_pod:
                m.count(caller_pod.name, cluster, host, 1, 1 if flags == "UF" else 0, 1 if status >= 500 else 0)
            if pod and drop and rng.random() < drop:
                sz = sp = None
            if status >= 500 or pod is None:
                ok = False
            at = ms
            ms += 1
            sub_ok, sub_lat = True, 0.0
            if ok:
                sub_ok, sub_lat, ms = call(up, pod.zone, ms, rel, pod)  # type: ignore[union-attr]
            # Envoy's %DURATION%: whole milliseconds, the upstream's own calls included (logged when it answers)
            dur = float(round(1.0 + extra + sub_lat))
            line(cname, svc, zone, up, pod, at, dur, status, flags, rid, sp, sz)
            total += dur
            if not ok:
                break
            if not sub_ok:
                ok = False
                break
        return ok, total, ms

    def silent(z: str, rel: float) -> bool:
        return any(sz == z and lo <= rel and (hi is None or rel < hi) for sz, lo, hi in sc.silent)

    flaky = dict(sc.flaky)
    dial_new(-1.0)  # before the 'start' snapshot: the pods' DB waits connected as they started
    for k in range(n_ticks):
        for zi, z in enumerate(zones):
            rel = k * step + zi * step / (len(zones) + 1)
            ts = sc.start + rel
            while changes and ts >= changes[0][0]:
                ts_c, _, what, s, cz = changes.pop(0)
                m.apply(ts_c, what, s, cz)
                dial_new(ts_c - sc.start)  # a replacement connected in its DB wait, before it was ready
            while snaps and ts >= snaps[0][0]:
                m.snapshot(*snaps.pop(0))
            if silent(z, rel):
                continue
            # the request's id: unique in the run, as locust's random ones are
            n = k * len(zones) + zi + 1 if sc.request_ids else None
            rid_field = "" if n is None else f', "request_id": {n}'
            if any(_entry_dead(m, f, z, rel) for f in faults):
                req_lines.append(
                    f'{{"ts": {_num(ts)}, "zone": "{z}", "endpoint": "coffees", "name": "POST /api coffees", '
                    f'"status": 0, "latency_ms": 1000.0, "ok": false, "error": "connection refused"{rid_field}}}\n'
                )
                continue
            if z in flaky and k % flaky[z] == flaky[z] - 1:
                req_lines.append(
                    f'{{"ts": {_num(ts)}, "zone": "{z}", "endpoint": "coffees", "name": "POST /api coffees", '
                    f'"status": 500, "latency_ms": 3.0, "ok": false, "error": "internal server error"{rid_field}}}\n'
                )
                continue
            ok, lat, _ = call(m.entry, z, _ms(ts), rel, rid=None if n is None else f"{REQUEST_ID_PREFIX}{n:016x}")
            status = 200 if ok else 502
            err = "null" if ok else '"bad gateway"'
            req_lines.append(
                f'{{"ts": {_num(ts)}, "zone": "{z}", "endpoint": "coffees", "name": "POST /api coffees", '
                f'"status": {status}, "latency_ms": {_num(lat + 2.0)}, "ok": {"true" if ok else "false"}, '
                f'"error": {err}{rid_field}}}\n'
            )
        if len(hop_lines) > 50_000:
            hops.writelines(hop_lines)
            reqs.writelines(req_lines)
            hop_lines.clear()
            req_lines.clear()
    for ts_c, _, what, s, cz in changes:
        m.apply(ts_c, what, s, cz)
        dial_new(ts_c - sc.start)
    for snap in snaps:
        m.snapshot(*snap)
    m.snapshot(sc.start + sc.duration_s + 0.5, "end")
    hops.writelines(hop_lines)
    reqs.writelines(req_lines)
