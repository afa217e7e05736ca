"""Load a run directory's records into DuckDB tables (and its few documents) for the invariants.

Why DuckDB: a long run holds millions of hops; the invariants are set queries
(group by pair, range-join against fault windows), which a columnar engine does
in well under a second where a Python loop over dicts takes tens of seconds.
Every file is read with *explicit* column types (`harness.contract.rundir`) so that a
record missing a field yields NULL instead of a type guess that changes from
run to run, and every line that cannot be used is skipped and *named*
(`RunData.skipped`: file, line number, reason), never dropped silently.

Hops are rebuilt from `accesslogs/` + the inventory every time the access
logs exist (`harness.observe.hops.create_hops`): a stale or edited
`hops.jsonl` never decides a verdict. Without access logs (a run copied
without them) `hops.jsonl` is read, and hops it could not attribute are
attributed by the same IP-at-time rule (`harness.observe.hops.resolve_ips`).

Tables after `load_run`:
- `zones(name, kind, type)`: kind `region` (availability zone) or `edge`.
- `services(name, placement)`; `calls(caller, upstream)` (the call graph).
- `requests(ts, zone, endpoint, name, status, latency_ms, ok, error, request_id, node)`.
- `inventory` (= `inv`), `intervals`, `consul_names` (see observe).
- `node_fault_pods(fault, inject, pod, ip, node, zone, service)`: the pods a
  node fault (kill_node, zone_outage) killed (`_node_fault_pods`).
- `chaos(ts, fault, phase, action, kind, zone, service, services, entry_down)`.
- `entrypoints(ts, zone, url, up, reason)`.
- `upstream_stats(...)`: upstream-stats.jsonl plus `caller_zone`, `caller_service`
  (the sidecar's pod in the inventory) and `host_pod`, `host_zone`,
  `host_service` (who held the host's IP at the snapshot's time).
- `hops(...)`: the hops.jsonl columns plus `resolved` (the serving zone came from
  the inventory), `caller_kind`, `serving_kind` (`region|edge|unknown`, NULL when
  no upstream host), `placement` of the upstream and `ok`.

Readiness (`RunData.down`): a (zone, service) is *up* while at least one of
its pods is ready (`ready`/`unready` inventory events; `removed` is unready; a pod
on a node the harness stopped is unready from the inject, `_node_fault_pods`).
`RunData.spill`: it is up but *spills*: so few of its registered pods are
ready that Envoy sends part of the traffic to the next failover target
(`spills`; e.g. one of two replicas unready, or a replacement not yet ready
beside its peer).
An inventory without any readiness event (older runs) counts a pod as ready
from its `added` event, and says so in a note. For Region callers the key is
the Region as a whole (`topology.region`): any AZ's ready pod serves them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

from harness.columnar import REQUESTS, check_parquet, read_records
from harness.contract.clock import RUNNER_CLOCK_SHARED, RunClock, read_clock, record_lost
from harness.contract.rundir import (
    CHAOS_COLUMNS,
    CHAOS_DIR,
    CHAOS_FILE,
    CLOCK_FILE,
    ENTRYPOINT_COLUMNS,
    ENTRYPOINTS_FILE,
    HOP_COLUMNS,
    HOPS_FILE,
    HOPS_PARQUET_FILE,
    HOST_COLUMNS,
    HOST_FILE,
    INVENTORY_FILE,
    JOURNAL_FILE,
    PLAN_FILE,
    PREFLIGHT_FILE,
    PROBE_BUDGET_FILE,
    RECORDING_COLUMNS,
    RECORDING_FILE,
    RUN_FILE,
    UPSTREAM_STATS_COLUMNS,
    UPSTREAM_STATS_FILE,
    USERS_FILE,
    FaultKind,
    SkippedLine,
    load_jsonl,
    read_json_doc,
    sql_str,
    topology_path,
)
from harness.contract.settled import settled_at
from harness.observe.hops import (
    NAME_COLUMNS,
    POD_PLACE_SQL,
    HopsBuild,
    cluster_zone_names,
    create_arrivals,
    create_hops,
    create_request_ids,
    current_build,
    drop_hops_view,
    has_accesslogs,
    hop_names_sql,
    host_ip_sql,
    load_inventory,
    resolve_ips,
)
from harness.topology import Placement, Topology, load_topology

# A hop failed when no upstream host answered, the upstream answered 5xx, or a
# TCP hop (status 0) carries an Envoy response flag (UF, UH, UO, URX, ...).
# 4xx is a routing success: the right pod answered, the request was bad.
HOP_OK_SQL = (
    "(coalesce(upstream_host, '') <> '' AND coalesce(status, 0) < 500 "
    "AND NOT (coalesce(status, 0) = 0 AND coalesce(flags, '-') NOT IN ('-', '')))"
)

# Chaos actions of docs/CONTRACTS.md §4 mapped to fault kinds, for timelines
# written before `kind` existed.
ACTION_KINDS = {
    "kill_pod": "service-down",
    "kill_node": "service-down",
    "set_pod_unready": "service-down",
    "zone_outage": "zone-down",
    "set_link": "link-degraded",
    "partition_zone": "partition",
}
FAULT_KINDS = tuple(FaultKind)  # what the chaos actions write (harness.contract.rundir)
RUN_STATUSES = ("running", "complete", "interrupted", "failed")


@dataclass(frozen=True)
class Fault:
    """One fault of chaos.jsonl: its first inject and the first restore after it."""

    fault: str
    kind: str
    zone: str
    services: tuple[str, ...]
    entry_down: bool
    inject: float
    restore: float | None
    action: str | None
    # declared by the experiment (harness/chaos/expected.py): this fault's own error budget and the
    # single point of failure that explains its errors; None / () when nothing was declared
    expected_budget: float | None = None
    spof: tuple[str, ...] = ()
    expected_why: str = ""
    node: str | None = None  # kill_node: the node stopped (chaos.jsonl `node`)
    latency_ms: float | None = None  # degrade_link: added to the link's round trip (chaos.jsonl `latency_ms`)
    # a kind (or action) this harness does not know, as recorded: the fault is measured as service-down so the
    # rest of the verdict still reads, but which invariants it should meet is unknown, and experiment-ran fails
    unknown_kind: str | None = None


@dataclass
class RunMeta:
    """run.json: where the run was when it was last written (docs/CONTRACTS.md §4)."""

    present: bool = False
    started: float | None = None
    ended: float | None = None
    stage: str | None = None
    status: str | None = None

    @property
    def partial(self) -> bool:
        """The run did not complete (or says nothing of it ending): its records stop somewhere."""
        return self.present and (self.status != "complete" or self.ended is None)


@dataclass(frozen=True)
class PodReady:
    """One pod's zone and service, and the spans it was ready: the verdict's one reading of readiness (`_readiness`).

    Each span is [from, to); `to` is infinite while the pod was still ready at the end of the records. The
    per-zone down and spill intervals (`RunData.down`, `.spill`) are read in the same pass, so a pod's spans
    and its zone's outages never disagree (`FaultMeasurer._pods_left_out` reads the spans).
    """

    zone: str
    service: str
    spans: list[tuple[float, float]]


@dataclass
class RunData:
    con: duckdb.DuckDBPyConnection
    topology: Topology
    run_dir: Path
    faults: list[Fault]
    notes: list[str]
    start: float | None
    end: float | None
    skipped: list[SkippedLine] = field(default_factory=list)
    hops_source: str = "none"  # accesslogs | hops.{parquet,jsonl} (observe, current) | hops.parquet | hops.jsonl | none
    hops_build: HopsBuild | None = None
    meta: RunMeta = field(default_factory=RunMeta)
    preflight: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    journals: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    unreadable: dict[str, SkippedLine] = field(default_factory=dict)  # document (relative path) -> why
    readiness_events: bool = False
    entrypoints_present: bool = False
    # (zone or region, service) -> down intervals [lo, hi) (hi None: still down at the end)
    down: dict[tuple[str, str], list[tuple[float, float | None]]] = field(default_factory=dict)
    # ... -> spill intervals: some pods ready, too few for Envoy to keep all traffic there (`spills`)
    spill: dict[tuple[str, str], list[tuple[float, float | None]]] = field(default_factory=dict)
    # ... -> the spill intervals cut where the counts change: (from, to, ready, registered); Envoy keeps
    # min(1, 1.4 x ready / registered) of the traffic there (locality judges that share, `_spill_shares`)
    spill_parts: dict[tuple[str, str], list[tuple[float, float | None, int, int]]] = field(default_factory=dict)
    first_up: dict[tuple[str, str], float] = field(default_factory=dict)
    # pod -> its zone, service and ready spans (`_readiness`, the same pass that reads `down` and `spill`)
    pod_ready: dict[str, PodReady] = field(default_factory=dict)
    # clock.jsonl: the nodes' clocks against the runner's where they differ (EKS); None: one clock (local, kind)
    clock: RunClock | None = None
    # when the probe budget's decision fixed the probes' rate (probe-budget.json, harness.contract.settled); None:
    # no such decision on record (locust workers in the zones, no probed zone, a run stopped before it decided)
    settled: float | None = None
    # users.json: the shoppers' longest think time (EH_WAIT) as the traffic runner gave it to locust; None: not on
    # record (an older run, locust started by hand, a locustfile of one's own), judged by the default's bound
    users_wait_s: float | None = None
    hop_names: bool = False  # the hops' name columns are the ENUM `hop_name` (`_build_hops`): see `hop_key`

    def hop_key(self, sql: str) -> str:
        """SQL: a name (requests.zone, a zone's literal) as the hops' own `hop_name` ENUM.

        For join keys against the hops' name columns: the ENUM compares as a small integer, where a VARCHAR
        key makes DuckDB cast every hop's value to a string and sort strings (an ASOF join of a long run's
        requests with the entry hops took twice as long). The ENUM holds every name of the hops and every
        zone of the requests (`_build_hops`), so those keep their identity; any other name is NULL, and it
        matches no hop either way.
        """
        return f"TRY_CAST({sql} AS hop_name)" if self.hop_names else sql

    def scalar(self, sql: str, params: list[object] | None = None) -> object:
        row = self.con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def up_key(self, zone: str, service: str) -> tuple[str, str]:
        """The readiness key a caller in `zone` depends on for `service` (the Region as a whole for AZs)."""
        try:
            z = self.topology.zone(zone)
        except KeyError:
            return (zone, service)
        if not z.is_edge:
            return (self.topology.region, service)
        try:
            placement = self.topology.service(service).placement
        except KeyError:
            return (zone, service)
        return (zone, service) if placement is Placement.EDGE else (self.topology.region, service)


MEMORY_LIMIT = "1200MB"
"""DuckDB's own memory for a verdict (the process's peak RSS stays under 2 GB with Python and the report)."""


def find_topology(run_dir: Path) -> Path:
    return topology_path(run_dir)


def load_run(run_dir: Path, threads: int | None = None) -> RunData:
    """Read topology, records and documents of `run_dir` into an in-memory DuckDB database."""
    topology = load_topology(find_topology(run_dir))
    con = duckdb.connect(":memory:")
    # Compressed in memory (dictionary, RLE, ALP): a 10-hour run's hops and requests take a tenth of the
    # memory once checkpointed after loading, so the verdict's joins run in memory instead of spilling the
    # tables to disk (50M hops: 60 s -> 45 s). The temp tables the checks make stay plain.
    con.execute("ATTACH ':memory:' AS verdict (COMPRESS)")
    con.execute("USE verdict")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # A 10-hour run's hops do not fit the 2 GB a CI runner gives the verdict: DuckDB keeps to
    # MEMORY_LIMIT and spills the rest to a scratch directory of its own (never the run directory).
    spill = tempfile.mkdtemp(prefix="eh-verify-")
    try:
        con.execute(f"SET memory_limit = {sql_str(MEMORY_LIMIT)}")
        con.execute(f"SET temp_directory = {sql_str(spill)}")
        con.execute("SET TimeZone = 'UTC'")
        skipped: list[SkippedLine] = []
        notes: list[str] = []
        topology_tables(con, topology)
        skipped += read_records(con, "requests", run_dir, REQUESTS)  # compacted Parquet + the JSON tail
        con.execute("ALTER TABLE requests DROP COLUMN filename")
        clock = _clock(run_dir, notes, skipped)
        _requests_on_runner_clock(con, clock)
        skipped += load_jsonl(con, "chaos", [run_dir / CHAOS_FILE], CHAOS_COLUMNS, root=run_dir)
        skipped += load_jsonl(
            con, "entrypoints", [run_dir / ENTRYPOINTS_FILE], ENTRYPOINT_COLUMNS, root=run_dir,
            valid_sql="ts IS NOT NULL AND zone IS NOT NULL AND up IS NOT NULL", what="ts, zone or up",
        )  # fmt: skip
        skipped += load_inventory(con, run_dir / INVENTORY_FILE, topology, root=run_dir)
        con.execute("CREATE VIEW inventory AS SELECT * FROM inv")
        run = RunData(con, topology, run_dir, [], notes, None, None)
        weakref.finalize(run, shutil.rmtree, spill, True)
        run.entrypoints_present = (run_dir / ENTRYPOINTS_FILE).is_file()
        run.clock = clock
        _build_hops(run, skipped)
        con.execute("CHECKPOINT verdict")  # compresses what was loaded (see above)
        skipped += _upstream_stats(con, run_dir)
        run.faults = _faults(con, topology, notes)
        row = con.execute(
            "SELECT min(lo), max(hi) FROM (SELECT min(ts) lo, max(ts) hi FROM hops "
            "UNION ALL SELECT min(ts), max(ts) FROM requests UNION ALL SELECT min(ts), max(ts) FROM chaos)"
        ).fetchone()
        run.start, run.end = (row[0], row[1]) if row else (None, None)
        unknown = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT z FROM (SELECT caller_zone z FROM hops UNION SELECT zone FROM requests) "
                "WHERE z IS NOT NULL AND z NOT IN (SELECT name FROM zones) ORDER BY z"
            ).fetchall()
        ]
        if unknown:
            notes.append(f"records name zones the topology does not have: {', '.join(unknown)}")
        _node_fault_pods(run)
        _declarations_hit(run)
        _readiness(run)
        _documents(run, skipped)
        skipped += _recording_problems(con, run_dir, notes)
        skipped += _host_load(run)
        _probe_budget(run)
        _users_record(run, skipped)
        run.skipped = sorted(skipped, key=lambda s: (s.file, s.line))
    except BaseException:  # bad records, Ctrl-C: the scratch directory goes with the half-read run
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
        raise
    return run


def _clock(run_dir: Path, notes: list[str], skipped: list[SkippedLine]) -> RunClock | None:
    """The run's clock record (harness.contract.clock), stated in the notes: what the hops were corrected by.

    Whether each zone's offset is bounded well enough is judged by coverage; here the figures are said, so
    a reader of a passing verdict knows the failover and recovery times carry the clock's bound too.
    """
    clock = read_clock(run_dir)
    if clock is None:
        said = _runner_clock(run_dir)
        if said is None or said == RUNNER_CLOCK_SHARED:
            return None  # one clock (local, kind), or a run from before run.json said (judged as ever)
        # separate, or a value this verifier does not know: never taken for one clock (coverage fails it)
        return record_lost(f"{RUN_FILE} says runner_clock {said!r}")
    skipped += [SkippedLine(CLOCK_FILE, line, "not a JSON object (corrupt)") for line in clock.corrupt_lines]
    zones = [clock.zone(z) for z in sorted(clock.zones or {})]
    worst = max((z.uncertainty for z in zones if z.uncertainty is not None), default=None)
    bound = f"; failover and recovery times carry up to ± {worst * 1000:.1f} ms more" if worst is not None else ""
    what = "hop and user request times" if clock.requests_in_zones else "hop times"
    notes.append(
        f"clock: the nodes keep their own clocks ({clock.why or 'declared by the backend'}): {what} put on "
        f"the runner's clock by the offset of the node that stamped them (its zone's where that node was not "
        f"measured), measured with {clock.probes_answered}/{clock.probes_sent} "
        f"answered probes{bound}"
    )
    notes.extend(f"clock: {z.text()}" for z in zones)
    notes.extend(f"clock: {c.text()}" for _n, c in sorted((clock.nodes or {}).items()))
    return clock


def _runner_clock(run_dir: Path) -> str | None:
    """run.json's `runner_clock` (CONTRACTS §4): whether the backend's nodes keep their own clocks.

    Read here, before the hops and requests are loaded, because it decides whether a missing clock.jsonl means
    one clock or a lost record. None when run.json is missing, unreadable or older than the field: such a run
    is judged as before (by clock.jsonl alone); `_documents` reports an unreadable run.json itself.
    """
    try:
        doc = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = doc.get("runner_clock") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def _requests_on_runner_clock(con: duckdb.DuckDBPyConnection, clock: RunClock | None) -> None:
    """Requests stamped by locust workers in the zones' pods (`--workers-in-zone` on EKS: their nodes' clocks)
    are put on the runner's clock by the measured offset of the node each was stamped on (its `node`, the
    worker's), as hops are by their caller's node (observe); the zone's offset only for a request whose node was
    not measured (or not recorded), which coverage's clock check then holds unverified (`_clock_checks`).

    Why the node's: each node keeps its own clock, and a worker may run on a node of its zone other than the
    ones the probes reached. By the zone's offset (the hull of its probed nodes' intervals), a worker on a
    node 40 ms ahead of the probed frontend's had every request put 40 ms late against the faults and the hops,
    with the zone's clock check passing. Requests this machine sent (every other run) stay."""
    if clock is None or not clock.requests_in_zones:
        return
    zones, nodes = clock.offsets(), clock.node_offsets()
    if not zones and not nodes:
        return
    con.execute("CREATE TEMP TABLE request_zone_offsets (zone VARCHAR, offset_s DOUBLE)")
    con.executemany("INSERT INTO request_zone_offsets VALUES (?, ?)", [[z, o] for z, o in sorted(zones.items())])
    con.execute("CREATE TEMP TABLE request_node_offsets (node VARCHAR, offset_s DOUBLE)")
    con.executemany("INSERT INTO request_node_offsets VALUES (?, ?)", [[n, o] for n, o in sorted(nodes.items())])
    con.execute(
        "UPDATE requests SET ts = requests.ts - coalesce("
        "(SELECT n.offset_s FROM request_node_offsets n WHERE n.node = requests.node), "
        "(SELECT z.offset_s FROM request_zone_offsets z WHERE z.zone = requests.zone), 0)"
    )
    con.execute("DROP TABLE request_zone_offsets")
    con.execute("DROP TABLE request_node_offsets")


def _recording_problems(con: duckdb.DuckDBPyConnection, run_dir: Path, notes: list[str]) -> list[SkippedLine]:
    """What went wrong while the run was recorded (recording.jsonl): each a note of the verdict, never dropped."""
    skipped = load_jsonl(con, "recording", [run_dir / RECORDING_FILE], RECORDING_COLUMNS, root=run_dir)
    for what, message in con.execute("SELECT what, message FROM recording ORDER BY ts").fetchall():
        notes.append(f"recording: {what or '?'}: {message or ''}".rstrip(": "))
    return skipped


HOST_NOTE_SHARE = 0.10  # of the run, or of any fault window, spent saturated: worth a note


def host_saturation(run: RunData) -> tuple[int, float | None, list[tuple[str, float]]]:
    """The harness host's saturated share of the run and of each fault window, from `host.jsonl`.

    Returns (samples in the run, share of them saturated or None without
    samples, [(fault, share) for each fault window with samples]). A sample
    is saturated when the host's CPUs were at least `SATURATED` busy over it.
    """
    from harness.observe.host import SATURATED

    def share(lo: float, hi: float) -> tuple[int, float | None]:
        row = run.con.execute(
            "SELECT count(*), avg(CASE WHEN busy >= ? THEN 1.0 ELSE 0.0 END) FROM host WHERE ts BETWEEN ? AND ?",
            [SATURATED, lo, hi],
        ).fetchone()
        return (int(row[0]), None if row[1] is None else float(row[1])) if row else (0, None)

    if run.start is None or run.end is None:
        return 0, None, []
    n, of_run = share(run.start, run.end)
    per_fault = []
    for f in run.faults:
        _, of_fault = share(f.inject, f.restore if f.restore is not None else run.end)
        if of_fault is not None:
            per_fault.append((f.fault, of_fault))
    return n, of_run, per_fault


def _host_load(run: RunData) -> list[SkippedLine]:
    """A note when the harness host was saturated for a noticeable share of the run or of a fault window.

    Information, not an invariant: a saturated host makes requests queue, so
    failures and times there may be the machine's rather than the mesh's; the
    reader learns where to look (fewer users or probes, a larger machine)
    instead of taking every failure for the mesh's.
    """
    from harness.observe.host import SATURATED

    skipped = load_jsonl(run.con, "host", [run.run_dir / HOST_FILE], HOST_COLUMNS, root=run.run_dir)
    n, share, per_fault = host_saturation(run)
    worst = sorted((x for x in per_fault if x[1] >= HOST_NOTE_SHARE), key=lambda x: -x[1])
    if share is None or (share < HOST_NOTE_SHARE and not worst):
        return skipped
    faults = ""
    if worst:
        shown = ", ".join(f"{fid} {s * 100:.0f}%" for fid, s in worst[:3])
        more = f" and {len(worst) - 3} more" if len(worst) > 3 else ""
        faults = f"; during fault windows: {shown}{more}"
    run.notes.append(
        f"host: this machine's CPUs were saturated (>= {SATURATED * 100:.0f}% busy) for {share * 100:.0f}% of the "
        f"run ({n} samples){faults}: failures and times there may be the machine's, not the mesh's "
        "(fewer users or probes, or a larger machine, tell them apart)"
    )
    return skipped


def settled_of(run_dir: Path) -> float | None:
    """When the run settled (`harness.contract.settled.settled_at` over probe-budget.json); None without a
    decision on record (absent, still measuring, unreadable)."""
    try:
        data = json.loads((run_dir / PROBE_BUDGET_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return settled_at(data) if isinstance(data, dict) else None


def _probe_budget(run: RunData) -> None:
    """When the run settled (`RunData.settled`), and a note when the probe budget slowed the zone probes
    (probe-budget.json): why the resolution is coarser.

    The note is information only: the verdict prints each figure's resolution,
    measured from the records; it says that the harness chose it to keep its
    own load off the machine, and from what it measured.
    """
    run.settled = settled_of(run.run_dir)
    try:
        data = json.loads((run.run_dir / PROBE_BUDGET_FILE).read_text(encoding="utf-8"))
        scale = float(data["scale"])
        target = float(data["target_busy"])
        periods = {str(z): float(p) for z, p in dict(data.get("periods") or {}).items()}
        # (busy, factor) per window; runs before the budget measured from below had every first window at 1
        busy = [(float(w["busy"]), float(w.get("scale", 1.0))) for w in data.get("windows") or []]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # absent (no probes here, an older run) or not ours to judge: nothing to say
    if scale <= 1.0 or not periods:
        return

    def at(window: tuple[float, float]) -> str:
        return f"{window[0] * 100:.0f}% busy " + ("at the set rates" if window[1] == 1.0 else f"at x{window[1]:g}")

    measured = ""
    if busy:
        measured = f"this machine was {at(busy[0])}" + (f", {at(busy[-1])}" if len(busy) > 1 else "") + "; "
    rates = ", ".join(f"{z} every {p * 1000:.0f} ms" for z, p in sorted(periods.items()))
    run.notes.append(
        f"probes: slowed x{scale:g} by the probe budget ({measured}target {target * 100:.0f}%), so failover and "
        f"recovery times are resolved more coarsely: {rates}"
    )


def topology_tables(con: duckdb.DuckDBPyConnection, t: Topology) -> None:
    """Tables `zones`, `services`, `calls` and `cluster_zones` of the topology (the verdict's; e2e's cool-down
    reads a degraded link's hops through the same call graph: `harness.verify.pending`)."""
    con.execute("CREATE TABLE zones (name VARCHAR, kind VARCHAR, type VARCHAR)")
    con.executemany(
        "INSERT INTO zones VALUES (?, ?, ?)",
        [[z.name, "edge" if z.is_edge else "region", z.type.value] for z in t.zones],
    )
    con.execute("CREATE TABLE services (name VARCHAR, placement VARCHAR)")
    con.executemany("INSERT INTO services VALUES (?, ?)", [[s.name, s.placement.value] for s in t.services])
    con.execute("CREATE TABLE calls (caller VARCHAR, upstream VARCHAR)")
    rows = [[s.name, u] for s in t.services for u in s.upstreams]
    if rows:
        con.executemany("INSERT INTO calls VALUES (?, ?)", rows)
    # Consul services that stand for one zone's instances (CE `product-api-las-1a`, Enterprise `product-api` in
    # `hashicups-las-1a`): an Envoy cluster named so is a route to that zone, whichever host it held (hub-and-spoke
    # reads it where a host cannot be attributed)
    con.execute("CREATE TABLE cluster_zones (consul_service VARCHAR, namespace VARCHAR, zone VARCHAR)")
    named = [list(r) for r in cluster_zone_names(t)]
    if named:
        con.executemany("INSERT INTO cluster_zones VALUES (?, ?, ?)", named)


def serving_kind_sql(t: Topology) -> str:
    """SQL: a hop's `serving_kind` (`region|edge|unknown`, NULL when no upstream host) from its `serving_zone`."""
    kinds = {z.name: ("edge" if z.is_edge else "region") for z in t.zones}
    return (
        "(CASE WHEN serving_zone IS NULL THEN "
        "(CASE WHEN coalesce(upstream_host, '') = '' THEN NULL ELSE 'unknown' END) "
        f"ELSE {_case('serving_zone', kinds, 'unknown')} END)"
    )


def _case(column: str, mapping: dict[str, str], default: str) -> str:
    """A CASE over the topology's few names: cheaper than a join, so it fuses with the scan."""
    whens = " ".join(f"WHEN {sql_str(k)} THEN {sql_str(v)}" for k, v in mapping.items())
    return f"(CASE {column} {whens} ELSE {sql_str(default)} END)" if mapping else sql_str(default)


def _build_hops(run: RunData, skipped: list[SkippedLine]) -> None:
    """Table `hops`: rebuilt from the access logs when there are any, else read from hops.jsonl.

    Then one pass adds what the invariants group by: zone kinds and the
    upstream's placement (a CASE over the topology's names fuses with the
    scan; a join would materialise the million rows once more) and success.
    """
    con, t, run_dir = run.con, run.topology, run.run_dir
    logs = has_accesslogs(run_dir)
    current = current_build(run_dir) if logs else None
    if current is not None:
        # observe resolved these hops from exactly the access logs and inventory present now: taken as built,
        # with observe's rule and its counts (a hops file edited, or older than its inputs, is not current)
        skipped += [s for s in current.skipped if s.file != INVENTORY_FILE]  # the inventory's were counted above
        if current.file == HOPS_PARQUET_FILE:
            check_parquet(con, [run_dir / current.file], run_dir)
            cols = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in HOP_COLUMNS.items())
            con.execute(f"CREATE TABLE hops_base AS SELECT {cols} FROM read_parquet({sql_str(run_dir / current.file)})")
        else:
            skipped += load_jsonl(con, "hops_base", [run_dir / HOPS_FILE], HOP_COLUMNS, root=run_dir)
        run.hops_build = current
        run.hops_source = f"{current.file} (observe, current)"
        resolved = "serving_zone IS NOT NULL"
        source = "hops_base"
    elif logs:
        # a view: the access-log lines go from Parquet into `hops` in one pass (no second copy of them)
        built = create_hops(con, run_dir, t, inventory_loaded=True, table="hops_base", view=True)
        skipped += built.skipped
        run.hops_build = built
        run.hops_source = "accesslogs"
        resolved = "serving_zone IS NOT NULL"
        source = "hops_base"
    else:
        parquet = run_dir / HOPS_PARQUET_FILE
        if parquet.is_file():
            # observe's columnar record (a run copied without its access logs)
            check_parquet(con, [parquet], run_dir)
            cols = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in HOP_COLUMNS.items())
            con.execute(f"CREATE TABLE hops_file AS SELECT {cols} FROM read_parquet({sql_str(parquet)})")
            run.hops_source = HOPS_PARQUET_FILE
        else:
            skipped += load_jsonl(con, "hops_file", [run_dir / HOPS_FILE], HOP_COLUMNS, root=run_dir)
            run.hops_source = HOPS_FILE if (run_dir / HOPS_FILE).is_file() else "none"
        # Hops observe could not attribute: the pod that held the IP at the hop's time (observe's one rule).
        con.execute(
            f"CREATE TEMP TABLE need_ip AS SELECT rowid AS id, ts, {host_ip_sql('upstream_host')} AS ip "
            "FROM hops_file WHERE nullif(serving_zone, '') IS NULL AND coalesce(upstream_host, '') <> ''"
        )
        resolve_ips(con, "need_ip", "need_res")
        con.execute(
            """
            CREATE TABLE hops_base AS
            SELECT h.* REPLACE (coalesce(nullif(h.serving_pod, ''), r.pod) AS serving_pod,
                                coalesce(nullif(h.serving_zone, ''), r.zone) AS serving_zone),
                   r.id IS NOT NULL AS resolved_
            FROM hops_file h LEFT JOIN need_res r ON r.id = h.rowid
            """
        )
        for tbl in ("hops_file", "need_ip", "need_res"):
            con.execute(f"DROP TABLE {tbl}")
        resolved = "resolved_"
        source = "hops_base"
    kinds = {z.name: ("edge" if z.is_edge else "region") for z in t.zones}
    placements = {s.name: s.placement.value for s in t.services}
    serving_kind = serving_kind_sql(t)
    # Names as one ENUM: a byte or two per value instead of a string each, so fifty million hops stay
    # within the memory limit (as strings they spill gigabytes to disk and the verdict takes minutes).
    # Compared, joined, ordered and printed like the strings they stand for (alphabetical order).
    if run.hops_source == "accesslogs":
        con.execute(f"CREATE TEMP TABLE hop_names AS {hop_names_sql()}")
    else:
        con.execute(
            "CREATE TEMP TABLE hop_names AS SELECT DISTINCT v FROM (SELECT unnest(["
            + ", ".join(NAME_COLUMNS)
            + f"]) AS v FROM {source}) WHERE v IS NOT NULL"
        )
    # the user requests' zones too: their join keys against the hops are the same ENUM (`RunData.hop_key`)
    con.execute("INSERT INTO hop_names SELECT DISTINCT zone FROM requests WHERE zone IS NOT NULL "
                "AND zone NOT IN (SELECT v FROM hop_names)")  # fmt: skip
    named = bool(con.execute("SELECT count(*) FROM hop_names").fetchone()[0])  # type: ignore[index]
    if named:
        con.execute("CREATE TYPE hop_name AS ENUM (SELECT v FROM hop_names ORDER BY v)")
    run.hop_names = named
    con.execute("DROP TABLE hop_names")
    cols = ", ".join(
        f'CAST("{c}" AS hop_name) AS "{c}"' if named and c in NAME_COLUMNS else f'"{c}"' for c in HOP_COLUMNS
    )
    con.execute(
        f"""
        CREATE TABLE hops AS
        SELECT {cols}, {resolved} AS resolved,
               {_case("caller_zone", kinds, "unknown")} AS caller_kind,
               {serving_kind} AS serving_kind,
               {_case("upstream", placements, "unknown")} AS placement,
               {HOP_OK_SQL} AS ok
        FROM {source}
        """
    )
    # the entry hops' request ids (`UserChecks._entry_silent`), from the same text view where the hops came
    # from the access logs, else read apart: a column of its own beside fifty million hops would not fit
    create_request_ids(con, run_dir, t.entry_services, source="raw_text" if run.hops_source == "accesslogs" else None,
                       zone_type="hop_name" if named else "VARCHAR", recorded="requests")  # fmt: skip
    # the calls the serving sidecars' inbound lines show arriving (hub-and-spoke's record of a hop whose caller's
    # own line was lost), from the same views where the hops came from the access logs
    create_arrivals(con, run_dir, loaded=run.hops_source == "accesslogs")
    if run.hops_source == "accesslogs":
        drop_hops_view(con, source)
        row = con.execute("SELECT count(*) FROM hops").fetchone()
        if run.hops_build is not None:
            run.hops_build.hops = int(row[0]) if row else 0
    else:
        con.execute(f"DROP TABLE {source}")


def _upstream_stats(con: duckdb.DuckDBPyConnection, run_dir: Path) -> list[SkippedLine]:
    """Table `upstream_stats`: the counters, their sidecar's zone, and who held each host's IP then."""
    skipped = load_jsonl(con, "stats_raw", [run_dir / UPSTREAM_STATS_FILE], UPSTREAM_STATS_COLUMNS, root=run_dir)
    con.execute(f"CREATE TEMP TABLE stats_ip AS SELECT row_number() OVER () AS id, *, {host_ip_sql('host')} AS ip "
                "FROM stats_raw")  # fmt: skip
    resolve_ips(con, "stats_ip", "stats_host")
    con.execute(
        f"""
        CREATE TABLE upstream_stats AS
        SELECT s.* EXCLUDE (id), c.zone AS caller_zone, c.service AS caller_service,
               h.pod AS host_pod, h.zone AS host_zone, h.service AS host_service
        FROM stats_ip s
        LEFT JOIN ({POD_PLACE_SQL}) c ON c.pod = s.pod
        LEFT JOIN stats_host h ON h.id = s.id
        """
    )
    for tbl in ("stats_raw", "stats_ip", "stats_host"):
        con.execute(f"DROP TABLE {tbl}")
    return skipped


def faults_of(run_dir: Path, t: Topology) -> list[Fault]:
    """The faults of `run_dir`'s chaos.jsonl as the verdict pairs them, read on their own (a run still going)."""
    con = duckdb.connect()
    try:
        load_jsonl(con, "chaos", [run_dir / CHAOS_FILE], CHAOS_COLUMNS, root=run_dir)
        return _faults(con, t, [])
    finally:
        con.close()


def live_run(con: duckdb.DuckDBPyConnection, run_dir: Path, t: Topology) -> RunData:
    """A run still going, as far as what each fault asks of which pairs goes (`invariants.scope.FaultScoping`, for
    e2e's cool-down): its faults (chaos.jsonl), the pods each node fault killed (`_node_fault_pods`) and the
    readiness (`_readiness`: a declared fault's cascade), over the inventory already in `con`
    (`observe.hops.create_hops`), and when it settled (`settled_of`: where a link's baseline begins, as the
    verdict reads it). No end: its records are still coming, and an outage not over yet is open."""
    load_jsonl(con, "chaos", [run_dir / CHAOS_FILE], CHAOS_COLUMNS, root=run_dir)
    run = RunData(con, t, run_dir, [], [], None, float("inf"))
    run.faults = _faults(con, t, run.notes)
    run.settled = settled_of(run_dir)  # the verdict's, for a link's baseline (`pending._link_back_mark`)
    _node_fault_pods(run)
    _declarations_hit(run)
    _readiness(run)
    return run


def _faults(con: duckdb.DuckDBPyConnection, t: Topology, notes: list[str]) -> list[Fault]:
    """Pair inject and restore records per fault id (sorted by time, not file order)."""
    rows = con.execute(
        "SELECT ts, fault, phase, action, kind, zone, service, services, entry_down, expected_error_budget, "
        "single_point_of_failure, expected_why, node, latency_ms FROM chaos ORDER BY ts, phase"
    ).fetchall()
    open_: dict[str, dict[str, object]] = {}
    done: list[Fault] = []
    for ts, fault, phase, action, kind, zone, service, services, entry_down, budget, spof, why, node, lat in rows:
        if not fault:
            notes.append(f"chaos record at {ts} has no fault id; ignored")
            continue
        if phase == "inject":
            if fault in open_:
                notes.append(f"fault {fault}: second inject at {ts} before a restore; ignored")
                continue
            if any(d.fault == fault for d in done):
                notes.append(f"fault id {fault} names two faults (a new inject at {ts}): each is judged on its own")
            k = kind or ACTION_KINDS.get(action or "", "")
            unknown = None
            if k not in FAULT_KINDS:
                notes.append(f"fault {fault}: unknown kind {kind!r} (action {action!r}); measured as service-down")
                unknown, k = str(kind or action or "?"), "service-down"
            svcs = tuple(services) if services is not None else ((service,) if service else ())
            if k == "zone-down":
                svcs = svcs if svcs else tuple(s.name for s in t.services)
            open_[fault] = {
                "kind": k,
                "zone": zone or "",
                "services": svcs,
                "entry_down": bool(entry_down) if entry_down is not None else k == "zone-down",
                "inject": ts,
                "action": action,
                "expected_budget": budget,
                "spof": tuple(spof or ()),
                "expected_why": why or "",
                "node": node or None,
                "latency_ms": None if lat is None else float(lat),
                "unknown_kind": unknown,
            }
        elif phase == "restore":
            if fault not in open_:
                notes.append(f"fault {fault}: restore at {ts} without an inject; ignored")
                continue
            started = open_.pop(fault)
            done.append(Fault(fault=fault, restore=ts, **started))  # type: ignore[arg-type]
        else:
            notes.append(f"fault {fault}: unknown phase {phase!r}; ignored")
    done.extend(Fault(fault=fault, restore=None, **f) for fault, f in open_.items())  # type: ignore[arg-type]
    known = {s.name for s in t.services}
    for flt in done:
        try:
            t.zone(flt.zone)
        except KeyError:
            notes.append(f"fault {flt.fault}: zone {flt.zone!r} is not in the topology")
        # it hit nothing the verdict can see: coverage fails it ("no pod of ... ran")
        notes.extend(f"fault {flt.fault}: service {s!r} is not in the topology" for s in flt.services if s not in known)
    return sorted(done, key=lambda x: (x.inject, x.fault))


OVERPROVISIONING = 1.4
"""Envoy's default overprovisioning factor, which Consul leaves on each failover target's endpoints (one
priority group, no policy; ../notes: consul-dataplane-semantics §1): a priority's health is
min(1, healthy share x 1.4); below 1 the rest of the traffic goes to the next target."""


def unread_failures(name: str, skipped: Iterable[SkippedLine], what: str) -> list[str]:
    """A failure per record file with lines the loader had to skip (picked from `RunData.skipped` by the
    caller): what those lines held was never judged, and "unverified is a failure"."""
    by_file: dict[str, list[SkippedLine]] = {}
    for sk in skipped:
        by_file.setdefault(sk.file, []).append(sk)
    out = []
    for fname, lines in sorted(by_file.items()):
        shown = ", ".join(str(sk.line) for sk in lines[:5]) + (" ..." if len(lines) > 5 else "")
        out.append(
            f"{name}: {fname}: {len(lines)} line(s) could not be read (line {shown}) - {lines[0].reason}: the "
            f"{what} they held are unverified"
        )
    return out


def spills(ready: int, registered: int) -> bool:
    """Envoy spills part of a target's traffic to the next: some hosts healthy, fewer than 1/1.4 of them.

    Registered = every pod of the service the catalog lists (alive: a pod not yet ready, or unready, is
    an UNHEALTHY endpoint; a removed pod is gone from it). No healthy host at all is `down`, not a spill.
    """
    return ready > 0 and ready * OVERPROVISIONING < registered


NODE_FAULT_ACTIONS = ("kill_node", "zone_outage")
"""Chaos actions that stop whole nodes: kill_node (its record's `node`) and zone_outage (every node of its zone)."""


def stops_nodes(f: Fault) -> bool:
    """Whether fault `f` stopped whole nodes: a zone_outage (every node of its zone), or a kill_node whose record
    names its node (one without a node stopped nothing the records can place)."""
    return f.action in NODE_FAULT_ACTIONS and (f.action == "zone_outage" or bool(f.node))


def pods_taken_down(con: duckdb.DuckDBPyConnection, f: Fault, services: Iterable[str] | None = None) -> list[str]:
    """The pods fault `f` took down, sorted; of `services` only, when given.

    A node fault's (`stops_nodes`): those on its stopped nodes (`_node_fault_pods`), of any service unless
    `services` names some. Any other fault that takes services down (kill_pod, make_unready; a zone-down without a
    node record): the pods of `services` (default: the fault's own services) in its zone alive at the inject (one
    gone at the inject went by this fault). The one reading of "what a fault hit": the checks' `_hit_pods` (the
    pods whose death a failover counts from) and `_declarations_hit` (whether the declared single point of failure
    was hit) ask it, so the two cannot drift apart.
    """
    if stops_nodes(f):
        sql = "SELECT DISTINCT pod FROM node_fault_pods WHERE fault = ? AND inject = ?"
        args: list[object] = [f.fault, f.inject]
        if services is not None:
            sql += " AND list_contains(?, service)"
            args.append(list(services))
    else:
        sql = (
            "SELECT DISTINCT pod FROM intervals WHERE zone = ? AND list_contains(?, service) AND start_ts <= ? "
            "AND coalesce(end_ts, 'infinity'::DOUBLE) >= ?"
        )
        args = [f.zone, list(f.services if services is None else services), f.inject, f.inject]
    return [str(r[0]) for r in con.execute(sql + " ORDER BY pod", args).fetchall()]


def _node_fault_pods(run: RunData) -> None:
    """Table `node_fault_pods`: the pods each node fault killed; each is not ready from the fault's inject.

    Why: a stopped node is dead at once, but the Kubernetes API does not say
    so. On kind (`docker stop` of the node's container) and EKS the kubelet
    stops reporting; the node controller marks the node's pods not Ready only
    after its grace period (40-50 s, consul-k8s deregisters them after that),
    usually longer than our faults. The inventory, a watch of the API, so shows
    them Ready through the fault, or until the grace period ends mid-fault;
    after the restore the booting kubelet sets them unready, they usually get a
    new IP (an `ip` event) and are `ready` again. The local backend does the
    same (its node kill keeps the pods registered and Ready for
    `local.nodeGracePeriodS`), except that after the restore it writes them
    `removed` and starts new pods.
    The chaos record is the truth about what the harness did, so a pod that
    was on a stopped node (inventory `node` at the inject; a zone_outage
    stops every node of its zone) and alive at the inject counts as not ready
    from the inject until its next `ready` event after it: `_readiness` adds
    an `unready` at the inject. Where the inventory records the death itself
    (older local runs: `removed` at the inject; the grace period ending
    mid-fault: `unready` then) that is a no-op or comes later, and the pod's
    readiness from the inject on is the same either way. The IP each held at
    the inject is one of the fault's dead IPs (`FaultMeasurer._detection`).
    Hop attribution (`intervals`) is untouched.
    """
    run.con.execute(
        "CREATE TABLE node_fault_pods (fault VARCHAR, inject DOUBLE, pod VARCHAR, ip VARCHAR, node VARCHAR, "
        "zone VARCHAR, service VARCHAR)"
    )
    for f in run.faults:
        if not stops_nodes(f):
            continue
        run.con.execute(
            """
            INSERT INTO node_fault_pods
            SELECT ?, ?, i.pod, i.ip, n.node, i.zone, i.service
            FROM intervals i
            JOIN (SELECT pod, arg_max(node, ts) AS node FROM inv WHERE ts <= ? AND node IS NOT NULL GROUP BY pod) n
              ON n.pod = i.pod
            WHERE i.start_ts <= ? AND coalesce(i.end_ts, 'infinity'::DOUBLE) > ?
              AND i.zone IS NOT NULL AND i.service IS NOT NULL
              AND (CASE WHEN ? = 'kill_node' THEN n.node = ? ELSE i.zone = ? END)
            """,
            [f.fault, f.inject, f.inject, f.inject, f.inject, f.action, f.node or "", f.zone],
        )


def _declarations_hit(run: RunData) -> None:
    """Drop each fault's declared expected errors (`Fault.expected_budget`, `.spof`) unless the fault took down a
    pod of its declared single point of failure, and say so in the notes.

    Why: the declaration excuses what losing that service costs (its errors judged at the declared budget, no
    failover measured for it, the dependants' locality and the zones' windows held over its cascade), and nothing
    else. The verdict took it as given: a kill of LAX's product-api that declared postgres (budget 99 %) had a
    quarter of LAX's shoppers failing through a working failover judged at 99 %, and passed. Hit means: a pod of
    the declared service alive at the inject on a node the fault stopped (`node_fault_pods`), or, for any other
    fault, in its zone (a kill_pod or make_unready of it, a zone outage or partition of its AZ). The fault is
    then judged like any other, at the SLO's budget.
    """
    for i, f in enumerate(run.faults):
        if f.expected_budget is None:
            continue
        # a node fault hits whatever ran on its nodes; any other only the services it names (a zone-down all)
        hit = f.spof if stops_nodes(f) else [s for s in f.spof if f.kind != "service-down" or s in f.services]
        if pods_taken_down(run.con, f, hit):
            continue
        run.notes.append(
            f"fault {f.fault}: declared single point of failure {', '.join(f.spof)}, but the fault took down no pod "
            f"of it ({f.action or f.kind} in {f.zone}{': ' + ', '.join(f.services) if f.services else ''}): its "
            f"declared {f.expected_budget * 100:g}% budget excuses nothing; judged as any other fault"
        )
        run.faults[i] = replace(f, expected_budget=None, spof=(), expected_why="")


def _readiness(run: RunData) -> None:
    """Down and spill intervals per (zone, service) and per (Region, service), and each pod's ready spans
    (`RunData.pod_ready`), from the inventory (few rows), in one pass: the verdict's one reading of readiness.

    Plus the `unready` a node fault implies at its inject (`_node_fault_pods`).
    """
    # Events at the same instant keep the writer's order (one pod's unready then ready stays so); a
    # hand-over between two pods at one instant is a zero-length outage, which is dropped below.
    rows = run.con.execute(
        "SELECT ts, event, pod, zone, service, src FROM ("
        "SELECT ts, event, pod, zone, service, 0 AS src, rowid AS seq FROM inv "
        "WHERE zone IS NOT NULL AND service IS NOT NULL "
        "UNION ALL SELECT DISTINCT inject, 'unready', pod, zone, service, 1, 0 FROM node_fault_pods"
        ") ORDER BY ts, src, seq"
    ).fetchall()
    run.readiness_events = any(r[1] in ("ready", "unready") and r[5] == 0 for r in rows)
    # an older inventory (no readiness events) has no `ready` to end an implied unready: judged as before
    rows = [r[:5] for r in rows if r[5] == 0 or run.readiness_events]
    if rows and not run.readiness_events:
        run.notes.append(
            "the inventory has no ready/unready events (an older inventory): "
            "a pod counts as ready from its `added` event until it is removed"
        )
    ready_pods: dict[tuple[str, str], set[str]] = {}
    alive_pods: dict[tuple[str, str], set[str]] = {}
    open_down: dict[tuple[str, str], float] = {}
    open_spill: dict[tuple[str, str], float] = {}
    open_part: dict[tuple[str, str], tuple[float, int, int]] = {}
    ready_since: dict[str, float] = {}  # pod -> when its open ready span began
    for ts, event, pod, zone, service in rows:
        keys = [(zone, service)]
        if not _is_edge(run.topology, zone):
            keys.append((run.topology.region, service))
        if event == "ready" or (event == "added" and not run.readiness_events):
            becomes: bool | None = True
        elif event in ("unready", "removed"):
            becomes = False
        else:
            becomes = None
        _pod_span(run.pod_ready.setdefault(str(pod), PodReady(str(zone), str(service), [])), ready_since,
                  str(pod), becomes, float(ts))  # fmt: skip
        for key in keys:
            alive = alive_pods.setdefault(key, set())
            if event == "removed":
                alive.discard(pod)
            elif event in ("added", "ready", "unready"):
                alive.add(pod)
            pods = ready_pods.setdefault(key, set())
            before = bool(pods)
            if becomes is not None:
                (pods.add if becomes else pods.discard)(pod)
            after = bool(pods)
            if after and not before:
                run.first_up.setdefault(key, float(ts))
                _close(run.down, open_down, key, float(ts))
            elif before and not after:
                open_down[key] = float(ts)
            part = open_part.get(key)
            counts = (len(pods), len(alive))
            if part is not None and part[1:] != counts:  # the spill ended or its counts changed
                if float(ts) > part[0]:
                    run.spill_parts.setdefault(key, []).append((part[0], float(ts), *part[1:]))
                del open_part[key]
            if spills(len(pods), len(alive)):
                open_spill.setdefault(key, float(ts))
                open_part.setdefault(key, (float(ts), *counts))
            else:
                _close(run.spill, open_spill, key, float(ts))
    for opened, into in ((open_down, run.down), (open_spill, run.spill)):
        for key, lo in opened.items():
            into.setdefault(key, []).append((lo, None))
    for key, (lo, ready, registered) in open_part.items():
        run.spill_parts.setdefault(key, []).append((lo, None, ready, registered))
    for pod, lo in ready_since.items():
        run.pod_ready[pod].spans.append((lo, float("inf")))


def _pod_span(place: PodReady, since: dict[str, float], pod: str, becomes: bool | None, ts: float) -> None:
    """Open or close `pod`'s ready span at `ts` as its readiness `becomes` (None: no change); a span of zero
    length (unready at the instant it was ready) is dropped, as `_close` drops a zone's."""
    if becomes and pod not in since:
        since[pod] = ts
    elif becomes is False and pod in since:
        lo = since.pop(pod)
        if ts > lo:
            place.spans.append((lo, ts))


def _close(
    into: dict[tuple[str, str], list[tuple[float, float | None]]], opened: dict[tuple[str, str], float],
    key: tuple[str, str], ts: float,
) -> None:  # fmt: skip
    """End `key`'s open interval at `ts`; one of zero length (a hand-over at one instant) is dropped."""
    lo = opened.pop(key, None)
    if lo is not None and ts > lo:
        into.setdefault(key, []).append((lo, ts))


def _users_record(run: RunData, skipped: list[SkippedLine]) -> None:
    """`RunData.users_wait_s` from users.json (harness.traffic.runner): how long the users thought between two
    requests, which bounds how long a zone with users can go with none of its requests in flight. A file that
    cannot be read, or whose `wait_s` is not a (shortest, longest) pair of seconds, is said in the notes and
    judged as none."""
    data = _doc(run, USERS_FILE, skipped)
    if data is None:
        return
    wait = data.get("wait_s") if isinstance(data, dict) else None
    if wait is None and isinstance(data, dict):
        return  # a locustfile with a think time of its own: not known
    try:
        lo, hi = (float(x) for x in wait)  # type: ignore[union-attr]
        if not 0 <= lo <= hi < float("inf"):
            raise ValueError(wait)
    except (TypeError, ValueError):
        run.notes.append(f"{USERS_FILE}: wait_s {wait!r} is not [shortest, longest] seconds: not used")
        return
    run.users_wait_s = hi


def _is_edge(t: Topology, zone: str) -> bool:
    try:
        return t.zone(zone).is_edge
    except KeyError:
        return True


def _doc(run: RunData, rel: str, skipped: list[SkippedLine]) -> Any:
    data, bad = read_json_doc(run.run_dir / rel, root=run.run_dir)
    if bad is not None:
        skipped.append(bad)
        run.unreadable[rel] = bad
    return data


def _documents(run: RunData, skipped: list[SkippedLine]) -> None:
    """run.json, preflight.json, plan.json and the experiments' journals (small: plain Python)."""
    meta = _doc(run, RUN_FILE, skipped)
    if isinstance(meta, dict):
        status = meta.get("status")
        run.meta = RunMeta(
            present=True,
            started=_num(meta.get("started")),
            ended=_num(meta.get("ended")),
            stage=str(meta["stage"]) if meta.get("stage") is not None else None,
            status=str(status) if status is not None else None,
        )
        if status not in RUN_STATUSES:
            run.notes.append(f"{RUN_FILE}: unknown status {status!r}")
    elif RUN_FILE in run.unreadable:
        run.meta = RunMeta(present=True)  # a run.json cut short: the run did not finish writing it
    elif meta is not None:
        run.unreadable[RUN_FILE] = SkippedLine(RUN_FILE, 1, "not a JSON object")
        run.meta = RunMeta(present=True)
    else:
        run.notes.append(f"no {RUN_FILE}: whether the run completed is not recorded")
    pre = _doc(run, PREFLIGHT_FILE, skipped)
    run.preflight = pre if isinstance(pre, dict) else None
    # the cluster's own caveats (e.g. a Kubernetes outside the chart's range): the run's result carries them
    warnings = (run.preflight or {}).get("warnings")
    run.notes.extend(f"{PREFLIGHT_FILE}: {w}" for w in (warnings if isinstance(warnings, list) else []) if w)
    if pre is not None and not isinstance(pre, dict):
        run.unreadable[PREFLIGHT_FILE] = SkippedLine(PREFLIGHT_FILE, 1, "not a JSON object")
    plan = _doc(run, PLAN_FILE, skipped)
    run.plan = plan if isinstance(plan, dict) else None
    if plan is not None and not isinstance(plan, dict):
        run.unreadable[PLAN_FILE] = SkippedLine(PLAN_FILE, 1, "not a JSON object")
    ids = [str(e.get("id")) for e in (run.plan or {}).get("experiments") or [] if isinstance(e, dict)]
    chaos_dir = run.run_dir / CHAOS_DIR
    found = sorted(p.name for p in chaos_dir.iterdir() if p.is_dir()) if chaos_dir.is_dir() else []
    for exp_id in dict.fromkeys([*ids, *found]):
        rel = f"{CHAOS_DIR}/{exp_id}/{JOURNAL_FILE}"
        j = _doc(run, rel, skipped)
        run.journals[exp_id] = j if isinstance(j, dict) else None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def zone_is_edge(t: Topology, zone: str) -> bool:
    return _is_edge(t, zone)  # unknown zones are judged as strictly as edge zones


def pairs(t: Topology) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every (caller zone, upstream, caller services) the topology's call graph produces.

    Edge-placed services run in every zone, Region-placed ones in the AZs only.
    """
    out: dict[tuple[str, str], list[str]] = {}
    for z in t.zones:
        for s in t.services:
            if s.placement is Placement.REGION and z.is_edge:
                continue
            for u in s.upstreams:
                out.setdefault((z.name, u), []).append(s.name)
    return [(z, u, tuple(c)) for (z, u), c in out.items()]
