"""Turn raw sidecar access logs into hop records (`hops.jsonl`, CONTRACTS §4).

A hop is one outbound request a sidecar sent on behalf of its app. What the
verifier needs per hop is *who called* (caller service and zone) and *who
served* (pod and zone). Envoy only knows the upstream's IP:port, and IPs are
short-lived: chaos kills pods, their replacements get new IPs, and old IPs are
handed to other pods later. So the serving pod is the one that held that IP
*at the time of the hop*, taken from the inventory's history.

This module is the one place that rule lives. `build_hops` writes
`hops.jsonl`; the verifier calls `create_hops` to build the same table in its
own DuckDB connection from the access logs every time it judges a run (a stale
or edited `hops.jsonl` never decides a verdict), and `resolve_ips` to
attribute the hosts of a `hops.jsonl` copied without its access logs and the
hosts of the upstream counters. There is no second IP-at-time rule anywhere.

The join runs in DuckDB, out of core: a long run produces millions of lines
and the work is a time-aware join on (ip, time) against the inventory's
intervals (two ASOF joins: the interval before and the one after each hop),
which a columnar engine does in seconds and Python loops would not.
`build_hops` writes with DuckDB's ``COPY ... (FORMAT JSON)`` to a temporary
file and renames it, so a reader never sees half a `hops.jsonl`.

Definitions:
- **Inbound lines are not hops.** A line is inbound when ``direction`` is
  ``inbound`` (local backend), or -- kind/EKS sidecars log both listeners
  without a direction -- when its ``upstream_cluster`` is ``local_app`` (the
  inbound listener's cluster in consul-dataplane) or its upstream host is on
  loopback (``127.0.0.1:<port>``, ``[::1]:<port>``: the app in the same pod).
  Such a line is the *serving* side of a hop whose outbound line the caller's
  sidecar wrote; counting it again would double the hop and it names no
  serving zone. They are counted apart (`HopsBuild.inbound_lines`).
- Serving pod: inventory interval with the same IP containing the hop's start;
  failing that, one within `SLACK_S` of it (inventory events and Envoy's
  clock are not perfectly in step), the nearest one first. An interval is
  opened by an ``added`` or ``ip`` event and closed by the pod's next
  ``added``/``ip``/``removed`` event (``ready``/``unready`` do not move IPs).
- Time: a hop's ``ts`` is Envoy's START_TIME, stamped by the caller's node. Where the run's nodes keep
  their own clocks (``clock.jsonl``: EKS seen from a CI runner), it is put on the runner's clock, which
  every other record uses, by the caller's zone's measured offset (`harness.contract.clock`), or by its
  node's where that node was measured through request pairs, not by the probes.
- Logical upstream: the serving pod's ``service``; without a serving pod (no
  upstream host, e.g. ``503 UH``, or an unknown IP) it comes from
  ``upstream_cluster``: strip ``failover-target~N~``, then a ``<8hex>~`` prefix,
  keep the part before the first ``.`` (the Consul service name), and map it
  through the inventory's ``consul_service -> service``, else through the
  topology's naming rule (``product-api-lax-1a`` -> ``product-api``).
- Caller: ``caller_pod`` (or the pod the file is named after) looked up in the
  inventory for its zone and logical service; falling back to the log's
  ``caller_service`` (a Consul name) mapped to a logical name, and to its zone
  when that Consul name lives in exactly one zone (CE edge names do).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Collection

    from duckdb import DuckDBPyConnection

    from harness.topology import Topology

from harness.columnar import ACCESSLOGS, load_state, read_records
from harness.contract.clock import read_clock
from harness.contract.inventory import SLACK_S
from harness.contract.rundir import (
    ACCESSLOG_DIR,
    FILE_POD_SQL,
    HOPS_BUILD_FILE,
    HOPS_FILE,
    HOPS_PARQUET_FILE,
    INBOUND_SQL,
    INVENTORY_COLUMNS,
    INVENTORY_FILE,
    UNPLACED_ARRIVAL,
    SkippedLine,
    hop_inputs,
    host_ip_sql,
    load_jsonl,
    sql_str,
    topology_path,
)

PIECE_BUCKET_S = 60.0  # see _pieces


@dataclass
class HopsBuild:
    """What building the `hops` table found besides the hops."""

    hops: int = 0
    accesslog_files: int = 0
    accesslog_lines: int = 0
    inbound_lines: int = 0
    skipped: list[SkippedLine] = field(default_factory=list)
    file: str = ""  # current_build: the hops file observe wrote that is still current


def accesslog_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / ACCESSLOG_DIR).glob("*.jsonl"))


def has_accesslogs(run_dir: Path) -> bool:
    """The run has access logs: JSON lines, or only their Parquet segments (the JSON exported elsewhere)."""
    return bool(accesslog_files(run_dir)) or bool(load_state(Path(run_dir), ACCESSLOGS)["segments"])


def build_hops(run_dir: Path, slack_s: float = SLACK_S, *, jsonl: bool = True) -> int:
    """Write ``run_dir/hops.parquet`` (and, if `jsonl`, the ``hops.jsonl`` export); return the hop count.

    From ``accesslogs/`` (its Parquet segments and JSON tail) + ``inventory.jsonl``.
    Idempotent: rebuilds the whole file from the raw logs each time. Missing
    inputs give no hops (no access logs) or hops without serving pods (no
    inventory) rather than an error, so a crashed run can still be judged on
    what it has. A long run (`harness e2e`) writes Parquet only: fifty
    million hops as JSON would take minutes and gigabytes nobody reads.
    """
    import duckdb

    run_dir = Path(run_dir)
    outs = [(run_dir / HOPS_PARQUET_FILE, "FORMAT PARQUET, COMPRESSION ZSTD")]
    if jsonl:
        outs.append((run_dir / HOPS_FILE, "FORMAT JSON"))
    spill = run_dir / ".hops-duckdb-tmp"
    inputs = hop_inputs(run_dir)  # before reading: a file that changes meanwhile makes the build stale
    (run_dir / HOPS_BUILD_FILE).unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = {sql_str(spill)}")
        built = create_hops(con, run_dir, _topology_or_none(run_dir), slack_s)
        for out, fmt in outs:
            tmp = out.with_name(out.name + ".tmp")
            con.execute(f"COPY (SELECT * FROM hops ORDER BY ts, caller_pod) TO {sql_str(tmp)} ({fmt})")
            os.replace(tmp, out)
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    meta = {
        "inputs": inputs,
        "outputs": {out.name: _fingerprint(out) for out, _ in outs},
        "slack_s": slack_s,
        "hops": built.hops,
        "accesslog_files": built.accesslog_files,
        "accesslog_lines": built.accesslog_lines,
        "inbound_lines": built.inbound_lines,
        "skipped": [asdict(s) for s in built.skipped],
    }
    (run_dir / HOPS_BUILD_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return built.hops


def _fingerprint(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def current_build(run_dir: Path, slack_s: float = SLACK_S) -> HopsBuild | None:
    """What observe's last `build_hops` found, when its hops file is still what it built from the present inputs.

    None when there is no record of the build, or the access logs (and their
    Parquet segments), the inventory, the topology, the hops file itself or
    the slack differ: then the hops must be built again (verify does, from
    the access logs). `HopsBuild.file` names the file to read: hops.parquet
    (always written), hops.jsonl only for a build recorded before it was.
    """
    try:
        meta = json.loads((run_dir / HOPS_BUILD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("slack_s") != slack_s or meta.get("inputs") != hop_inputs(run_dir):
        return None
    outputs = meta.get("outputs")
    if not isinstance(outputs, dict):
        return None
    try:
        if not outputs or any(fp != _fingerprint(run_dir / name) for name, fp in outputs.items()):
            return None  # any file it wrote edited since (or gone): the access logs decide
    except OSError:
        return None
    chosen = HOPS_PARQUET_FILE if HOPS_PARQUET_FILE in outputs else HOPS_FILE
    try:
        return HopsBuild(
            hops=int(meta["hops"]), accesslog_files=int(meta["accesslog_files"]),
            accesslog_lines=int(meta["accesslog_lines"]), inbound_lines=int(meta["inbound_lines"]),
            skipped=[SkippedLine(**s) for s in meta["skipped"]], file=chosen,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def _topology_or_none(run_dir: Path) -> Topology | None:
    """The run's topology when it has one (its naming rule maps Consul names the inventory never saw)."""
    from harness.errors import InputError
    from harness.topology import load_topology

    candidate = topology_path(run_dir)
    if not candidate.is_file():
        return None
    try:
        return load_topology(candidate)
    except InputError:
        return None


def create_hops(
    con: DuckDBPyConnection,
    run_dir: Path,
    topology: Topology | None = None,
    slack_s: float = SLACK_S,
    *,
    inventory_loaded: bool = False,
    table: str = "hops",
    view: bool = False,
) -> HopsBuild:
    """Create `table` (the hops.jsonl columns) in `con` from the run's access logs and inventory.

    Also leaves `inv`, `intervals` and `consul_names` (see `load_inventory`)
    unless `inventory_loaded` says the caller made them already. With `view`,
    `table` is a temporary view (the caller materialises what it needs in
    one pass, then calls `drop_hops_view`) and `HopsBuild.hops` is left 0.
    """
    run_dir = Path(run_dir)
    con.execute("SET TimeZone = 'UTC'")  # Envoy's START_TIME without an offset is UTC
    built = HopsBuild()
    if not inventory_loaded:
        built.skipped += load_inventory(con, run_dir / INVENTORY_FILE, topology, root=run_dir)
    built.skipped += _load_accesslogs(con, run_dir)
    built.accesslog_files = max(len(accesslog_files(run_dir)), len(con.execute("SELECT * FROM file_pods").fetchall()))
    row = con.execute("SELECT count(*), count(*) FILTER (WHERE inbound) FROM raw_lines").fetchone()
    built.accesslog_lines, built.inbound_lines = (int(row[0]), int(row[1])) if row else (0, 0)
    _pieces(con, "serving_pieces", "ip", slack_s)
    _pieces(con, "caller_pieces", "pod", slack_s)
    if view:
        con.execute(_HOPS_SQL.replace("CREATE TABLE $TABLE", f"CREATE TEMP VIEW {table}"))
        return built
    con.execute(_HOPS_SQL.replace("$TABLE", table))
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    built.hops = int(row[0]) if row else 0
    drop_hops_view(con, None)
    return built


# each pod's zone and service, from its latest inventory interval (a pod never changes zone): for a pod seen
# outside every recorded interval (a caller logging before its `added`, a counter read after its `removed`)
POD_PLACE_SQL = (
    "SELECT pod, arg_max(zone, start_ts) AS zone, arg_max(service, start_ts) AS service FROM intervals GROUP BY pod"
)

# the pod an access-log file belongs to: its name without `.jsonl` (harness.observe.collector.pod_file_name)
NAME_COLUMNS = ("caller_pod", "caller_service", "caller_zone", "upstream", "upstream_cluster", "upstream_host",
                "serving_pod", "serving_zone", "flags")  # fmt: skip
"""The hop columns whose values are names: a few hundred distinct values in fifty million rows."""


def hop_names_sql() -> str:
    """SQL: every value a `create_hops(view=True)` view can put into a `NAME_COLUMNS` column (a superset).

    From the small tables it joins (inventory intervals, Consul names, cluster
    and file names) plus one scan of the access logs' own name columns. A
    reader can then store those columns as one ENUM (a byte or two per value
    instead of a string each: a 10-hour run's hops fit in memory); a value
    this misses makes the cast fail loudly, never a silent NULL.
    """
    return """
        SELECT DISTINCT v FROM (
            SELECT unnest([pod, zone, service, consul_service]) AS v FROM intervals
            UNION ALL SELECT unnest([consul_service, service, zone]) FROM consul_names
            UNION ALL SELECT unnest([upstream_cluster, cluster_service]) FROM cluster_names
            UNION ALL SELECT pod FROM file_pods
            UNION ALL SELECT unnest([caller_pod, caller_service, upstream_host, response_flags, upstream_cluster])
                FROM (SELECT DISTINCT caller_pod, caller_service, upstream_host, response_flags, upstream_cluster
                      FROM raw_text)
            UNION ALL SELECT unnest(['', '-'])
        ) WHERE v IS NOT NULL
    """


def drop_hops_view(con: DuckDBPyConnection, view: str | None) -> None:
    """Drop a `create_hops(view=True)` view and what it reads (or only the latter, for `view=None`)."""
    if view is not None:
        con.execute(f"DROP VIEW {view}")
    _drop_accesslogs(con)
    for pieces in ("serving_pieces", "caller_pieces"):
        con.execute(f"DROP TABLE {pieces}")
        con.execute(f"DROP TABLE {pieces}_last")


def load_inventory(
    con: DuckDBPyConnection, path: Path, topology: Topology | None = None, root: Path | None = None
) -> list[SkippedLine]:
    """Tables `inv` (the raw events), `intervals` ((pod, ip) with [start, end)) and `consul_names`."""
    skipped = load_jsonl(
        con, "inv", [path], INVENTORY_COLUMNS, root=root, valid_sql="ts IS NOT NULL AND pod IS NOT NULL",
        what="ts or pod",
    )  # fmt: skip
    # Each added/ip event opens an interval for (pod, ip) that the pod's next added/ip/removed event
    # closes; ready/unready change whether the pod serves, not which IP it holds.
    con.execute(
        """
        CREATE TABLE intervals AS
        SELECT pod, ip, zone, service, consul_service, start_ts, end_ts FROM (
            SELECT pod, event, nullif(ip, '') AS ip, zone, service, consul_service, ts AS start_ts,
                   lead(ts) OVER (PARTITION BY pod ORDER BY ts,
                       CASE event WHEN 'added' THEN 0 WHEN 'ip' THEN 1 ELSE 2 END) AS end_ts
            FROM inv WHERE event IN ('added', 'ip', 'removed')
        ) WHERE event IN ('added', 'ip')
        """
    )
    # Consul name -> logical service, and its zone when it exists in exactly one zone.
    con.execute(
        """
        CREATE TABLE consul_names AS
        SELECT consul_service, min(service) AS service,
               CASE WHEN count(DISTINCT zone) = 1 THEN min(zone) END AS zone
        FROM inv WHERE consul_service IS NOT NULL GROUP BY consul_service
        """
    )
    if topology is not None:
        rows = [r for r in topology_names(topology) if r[0]]
        con.execute("CREATE TEMP TABLE topo_names (consul_service VARCHAR, service VARCHAR, zone VARCHAR)")
        con.executemany("INSERT INTO topo_names VALUES (?, ?, ?)", [list(r) for r in rows])
        con.execute(
            "INSERT INTO consul_names SELECT * FROM topo_names "
            "WHERE consul_service NOT IN (SELECT consul_service FROM consul_names)"
        )
        con.execute("DROP TABLE topo_names")
    return skipped


def topology_names(t: Topology) -> list[tuple[str, str, str | None]]:
    """(Consul name, logical service, its zone if it names exactly one) by the renderer's naming rule."""
    from harness.contract.names import consul_name

    zones_of: dict[str, set[str]] = {}
    service_of: dict[str, str] = {}
    for s in t.services:
        for z in t.zones:
            if s.placement.value == "region" and z.is_edge:
                continue
            name = consul_name(t, s, z, t.edition)
            zones_of.setdefault(name, set()).add(z.name)
            service_of[name] = s.name
    return [(n, service_of[n], next(iter(zs)) if len(zs) == 1 else None) for n, zs in sorted(zones_of.items())]


def _load_accesslogs(con: DuckDBPyConnection, run_dir: Path) -> list[SkippedLine]:
    """Tables `raw_lines` (every usable line, typed, `inbound` flagged) and `raw` (the outbound ones).

    The lines come from the Parquet segments the collector compacted during
    the run plus the JSON lines not compacted yet (`harness.columnar`).
    """
    skipped = read_records(con, "raw_text", run_dir, ACCESSLOGS, view=True)
    clock = read_clock(run_dir)
    offsets = clock.offsets() if clock is not None else {}
    node_offsets = clock.node_offsets() if clock is not None else {}
    # Views, not tables: the lines are scanned (from Parquet) straight into the hops table; a long
    # run's fifty million lines are never materialised twice.
    con.execute(f"CREATE TEMP VIEW raw_lines AS SELECT *, {INBOUND_SQL} AS inbound FROM raw_text")
    # Per distinct value, not per line: a million lines name a few dozen clusters and files.
    con.execute(
        f"""
        CREATE TEMP TABLE cluster_names AS
        SELECT upstream_cluster, {cluster_service_sql("upstream_cluster")} AS cluster_service
        FROM (SELECT DISTINCT upstream_cluster FROM raw_text WHERE upstream_cluster IS NOT NULL)
        """
    )
    con.execute(f"CREATE TEMP TABLE file_pods AS SELECT filename, {FILE_POD_SQL} AS pod "
                "FROM (SELECT DISTINCT filename FROM raw_text)")  # fmt: skip
    # A run whose nodes keep their own clocks (clock.jsonl): each line's START_TIME is put on the runner's
    # clock by its caller's zone's measured offset (harness.contract.clock); the caller pod's zone is the
    # inventory's (a pod never changes zone). A pod on a node no probe reached but measured through request
    # pairs (`RunClock.nodes`: its own node's offset, which may be far from its zone's probed nodes') is put
    # on it by its node's offset. Without one, nothing is joined: the same SQL as ever.
    ts_sql, clock_join = "l.ts", ""
    if offsets or node_offsets:
        con.execute("CREATE TEMP TABLE clock_zones (zone VARCHAR, offset_s DOUBLE)")
        if offsets:
            con.executemany("INSERT INTO clock_zones VALUES (?, ?)", [[z, o] for z, o in sorted(offsets.items())])
        con.execute("CREATE TEMP TABLE clock_nodes (node VARCHAR, offset_s DOUBLE)")
        if node_offsets:
            con.executemany("INSERT INTO clock_nodes VALUES (?, ?)", sorted([n, o] for n, o in node_offsets.items()))
        con.execute(
            f"CREATE TEMP TABLE clock_pods AS SELECT p.pod, coalesce(n.offset_s, z.offset_s) AS offset_s "
            f"FROM ({POD_PLACE_SQL}) p LEFT JOIN clock_zones z USING (zone) "
            "LEFT JOIN (SELECT pod, arg_max(node, ts) AS node FROM inv WHERE nullif(node, '') IS NOT NULL "
            "GROUP BY pod) pn ON pn.pod = p.pod LEFT JOIN clock_nodes n ON n.node = pn.node "
            "WHERE coalesce(n.offset_s, z.offset_s) IS NOT NULL"
        )
        con.execute("DROP TABLE clock_zones")
        con.execute("DROP TABLE clock_nodes")
        ts_sql = "l.ts - coalesce(cp.offset_s, 0)"
        clock_join = "LEFT JOIN clock_pods cp ON cp.pod = coalesce(nullif(l.caller_pod, ''), f.pod)"
    con.execute(
        rf"""
        CREATE TEMP VIEW raw AS
        SELECT *, {host_ip_sql("host")} AS ip
        FROM (
            SELECT
                {ts_sql} AS ts,
                coalesce(nullif(l.caller_pod, ''), f.pod) AS caller_pod,
                nullif(l.caller_service, '') AS caller_service_raw,
                CASE WHEN l.upstream_host IS NULL OR l.upstream_host IN ('', '-') THEN ''
                     ELSE l.upstream_host END AS host,
                CASE WHEN l.upstream_cluster IN ('', '-') THEN NULL ELSE l.upstream_cluster END AS upstream_cluster,
                coalesce(c.cluster_service, '') AS cluster_service,
                coalesce(try_cast(try_cast(l.response_code AS DOUBLE) AS INTEGER), 0) AS status,
                coalesce(nullif(l.response_flags, ''), '-') AS flags,
                try_cast(l.duration AS DOUBLE) AS duration_ms
            FROM raw_lines l
            JOIN file_pods f ON f.filename = l.filename
            LEFT JOIN cluster_names c ON c.upstream_cluster = l.upstream_cluster
            {clock_join}
            WHERE NOT l.inbound
        )
        """
    )
    # the inbound lines naming a caller's address (`ARRIVAL_IP_SQL`: NULL on every other line, so the inbound test
    # is not made again per line), on the runner's clock as the hops (the line's pod is the serving one: its
    # file's, or the local sidecars' `caller_pod`, their own pod)
    con.execute(
        f"""
        CREATE TEMP VIEW raw_arrivals AS
        SELECT {ts_sql} AS ts, coalesce(nullif(l.caller_pod, ''), f.pod) AS pod, l.arrival_ip AS ip
        FROM raw_lines l
        JOIN file_pods f ON f.filename = l.filename
        {clock_join}
        WHERE l.arrival_ip IS NOT NULL
        """
    )
    return skipped


def _drop_accesslogs(con: DuckDBPyConnection) -> None:
    for view in ("raw", "raw_arrivals", "raw_lines"):
        con.execute(f"DROP VIEW IF EXISTS {view}")
    for table in ("cluster_names", "file_pods", "clock_pods"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    _drop_records(con, "raw_text")


def _drop_records(con: DuckDBPyConnection, name: str) -> None:
    """Drop what `read_records(view=True)` made under `name`: the view first, as it reads the tail table."""
    names = (name, f"{name}_tail")
    kinds = dict(con.execute(
        "SELECT table_name, table_type FROM information_schema.tables WHERE list_contains(?, table_name)", [names]
    ).fetchall())  # fmt: skip
    for n in names:
        if n in kinds:
            con.execute(f"DROP {'VIEW' if kinds[n] == 'VIEW' else 'TABLE'} {n}")


def create_request_ids(
    con: DuckDBPyConnection,
    run_dir: Path,
    services: Collection[str],
    table: str = "request_ids",
    *,
    source: str | None = None,
    zone_type: str = "VARCHAR",
    recorded: str | None = None,
) -> None:
    """Table `table` (zone, request_id): the outbound lines of `services`' sidecars carrying a user request's id.

    Only the entry sidecars' lines carry one (harness.contract.requestid: nginx passes the user's header to
    its sidecar; the services behind it make requests of their own); the serving sidecar's inbound line of
    the same request is left out, as it shows the request arrived, not that the entry logged its call. The
    line's pod is its caller (its file's, as for the hops), placed by the inventory (`intervals`, a pod never
    changes zone) or by its Consul name. `source`: a `read_records` text view over the access logs already
    made (the hops' own `raw_text`); without one the records are read here, their request ids alone.
    `zone_type`: a reader's ENUM of names (a long run has a line per user request: tens of millions).
    `recorded`: a table of the users' records (a `request_id` column): then also `<table>_unrecorded` (zone,
    request_id, ts): the ids of `table` no record names, with their first line's START_TIME (the node's clock),
    read again only for them (a correct run has few: the requests in flight when the users were stopped).
    A run without access logs gets empty tables.
    """
    own = source is None
    unrecorded = f"CREATE TABLE {table}_unrecorded (zone VARCHAR, request_id BIGINT, ts DOUBLE)"
    if own:
        if not has_accesslogs(run_dir):
            con.execute(f"CREATE TABLE {table} (zone {zone_type}, request_id BIGINT)")
            if recorded is not None:
                con.execute(unrecorded)
            return
        source = f"{table}_text"
        read_records(con, source, Path(run_dir), ACCESSLOGS, view=True)  # skipped lines: the hops' build names them
    try:
        con.execute(
            f"""
            CREATE TABLE {table} AS
            WITH l AS (SELECT coalesce(nullif(caller_pod, ''), {FILE_POD_SQL}) AS pod,
                              nullif(caller_service, '') AS consul_service, request_id
                       FROM {source} WHERE request_id IS NOT NULL AND NOT ({INBOUND_SQL})),
                 p AS ({POD_PLACE_SQL})
            SELECT TRY_CAST(coalesce(p.zone, cn.zone) AS {zone_type}) AS zone, l.request_id
            FROM l LEFT JOIN p USING (pod) LEFT JOIN consul_names cn ON cn.consul_service = l.consul_service
            WHERE list_contains(?, coalesce(p.service, cn.service))
            """,
            [sorted(services)],
        )
        if recorded is not None:
            con.execute(unrecorded)
            con.execute(
                f"""
                CREATE TEMP TABLE {table}_lost AS SELECT DISTINCT request_id FROM {table}
                WHERE request_id NOT IN (SELECT request_id FROM {recorded} WHERE request_id IS NOT NULL)
                """
            )
            con.execute(
                f"""
                INSERT INTO {table}_unrecorded
                SELECT CAST(any_value(i.zone) AS VARCHAR), l.request_id, min(l.ts)
                FROM {source} l JOIN {table}_lost USING (request_id) JOIN {table} i USING (request_id)
                WHERE NOT ({INBOUND_SQL}) GROUP BY l.request_id
                """
            )
            con.execute(f"DROP TABLE {table}_lost")
    finally:
        if own:
            _drop_records(con, str(source))


def create_arrivals(con: DuckDBPyConnection, run_dir: Path, table: str = "arrivals", *, loaded: bool = False) -> None:
    """Table `table` (ts, serving_pod, serving_zone, caller_pod, caller_zone, calls): the calls the serving
    sidecars' inbound lines show arriving from a pod of the run (`ARRIVAL_IP_SQL`: the caller's IP, placed by the
    IP-at-time rule, `resolve_ips`), per serving pod, caller pod and second (`ts`: the second's first).

    The other record of a hop than its caller's outbound line, and the one left when that line is lost: a killed
    sidecar's last flush interval dies in its buffer, its counters since its last snapshot with its admin. Lines
    whose address no pod held (users entering the frontend from a node or a load balancer, a gateway) are left
    out; so are lines without one (a run recorded before the field was read). Lines whose caller the format
    cannot say (`UNPLACED_ARRIVAL`: X-Forwarded-For set, no DOWNSTREAM_DIRECT_REMOTE_ADDRESS, as in Consul's
    default format) go to `<table>_unplaced` (ts, serving_pod, serving_zone, calls), per serving pod and second.
    `loaded`: `_load_accesslogs` has made its views already (`create_hops(view=True)`); else the access logs are
    read here, their inbound lines alone kept. Needs the inventory's tables (`load_inventory`).
    """
    unplaced = f"CREATE TABLE {table}_unplaced (ts DOUBLE, serving_pod VARCHAR, serving_zone VARCHAR, calls BIGINT)"
    if not loaded and not has_accesslogs(run_dir):
        con.execute(f"CREATE TABLE {table} (ts DOUBLE, serving_pod VARCHAR, serving_zone VARCHAR, "
                    "caller_pod VARCHAR, caller_zone VARCHAR, calls BIGINT)")  # fmt: skip
        con.execute(unplaced)
        return
    if not loaded:
        _load_accesslogs(con, run_dir)
    try:
        # per second, not per line: a long run has an inbound line per hop; the rule's answer for one address
        # changes at an inventory event, and an address never moves between zones within a second
        con.execute(
            "CREATE TEMP TABLE arrivals_src AS SELECT row_number() OVER () AS id, * FROM ("
            "SELECT min(ts) AS ts, pod, ip, count(*) AS calls FROM raw_arrivals GROUP BY pod, ip, floor(ts))"
        )
        # the lines whose caller the format does not say (X-Forwarded-For set, no direct address), per serving
        # pod and second: what the verdict could not check
        con.execute(unplaced)
        con.execute(
            f"""
            INSERT INTO {table}_unplaced
            SELECT a.ts, a.pod, sp.zone, a.calls FROM arrivals_src a LEFT JOIN ({POD_PLACE_SQL}) sp ON sp.pod = a.pod
            WHERE a.ip = '{UNPLACED_ARRIVAL}'
            """
        )
        con.execute(f"DELETE FROM arrivals_src WHERE ip = '{UNPLACED_ARRIVAL}'")
        resolve_ips(con, "arrivals_src", "arrivals_res")
        con.execute(
            f"""
            CREATE TABLE {table} AS
            SELECT a.ts, a.pod AS serving_pod, sp.zone AS serving_zone, r.pod AS caller_pod, r.zone AS caller_zone,
                   a.calls
            FROM arrivals_src a JOIN arrivals_res r USING (id) LEFT JOIN ({POD_PLACE_SQL}) sp ON sp.pod = a.pod
            """
        )
        con.execute("DROP TABLE arrivals_src")
        con.execute("DROP TABLE arrivals_res")
    finally:
        if not loaded:
            _drop_accesslogs(con)


def _pieces(con: DuckDBPyConnection, name: str, interval_key: str, slack_s: float) -> None:
    """Table `<name>` (key, b, point_*, span_*): the IP-at-time rule as pieces of the time axis, per key.

    The rule (`_nearest_interval_sql`) compares a row's time only with its
    key's interval starts and ends, those +- the slack, and the midpoints
    between one interval's end and the next one's start. Between two such
    breakpoints its answer cannot change. So the rule is evaluated once at
    every breakpoint (`point_*`) and once inside every gap between two
    (`span_*`, valid up to the next breakpoint `nb`), on a table of a few
    hundred rows, and every hop then finds its piece [b, nb) by key and time
    (a hash join plus a range check): `point_*` when t = b, else `span_*`.
    Before a key's first breakpoint nothing matches (that is more than the
    slack before its first interval). Same answers as evaluating
    the rule per row, at a fraction of the cost: four ASOF joins and a full
    join of fifty million rows become one hash join against a tiny table.
    """
    slack = repr(float(slack_s))
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {name}_bp AS
        WITH iv AS (
            SELECT {interval_key} AS key, start_ts, end_ts,
                   lead(start_ts) OVER (PARTITION BY {interval_key} ORDER BY start_ts) AS next_start
            FROM intervals WHERE {interval_key} IS NOT NULL
        ),
        b AS (
            SELECT key, start_ts AS b FROM iv
            UNION ALL SELECT key, start_ts - {slack} FROM iv
            UNION ALL SELECT key, end_ts FROM iv WHERE end_ts IS NOT NULL
            UNION ALL SELECT key, end_ts + {slack} FROM iv WHERE end_ts IS NOT NULL
            UNION ALL SELECT key, (end_ts + next_start) / 2 FROM iv WHERE end_ts IS NOT NULL AND next_start IS NOT NULL
        ),
        d AS (SELECT DISTINCT key, b FROM b WHERE b IS NOT NULL)
        SELECT key, b, coalesce((b + lead(b) OVER (PARTITION BY key ORDER BY b)) / 2, b + 1.0) AS mid FROM d
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {name}_samples AS
        SELECT row_number() OVER () AS id, key, ts, what, b FROM (
            SELECT key, b AS ts, 'point' AS what, b FROM {name}_bp
            UNION ALL SELECT key, mid, 'span', b FROM {name}_bp
        )
        """
    )
    sql = (
        f"CREATE OR REPLACE TEMP TABLE {name}_eval AS WITH"
        + _nearest_interval_sql("ev", f"{name}_samples", "key", interval_key).rstrip(",")
        + f" SELECT s.key, s.b, s.what, e.pod, e.zone, e.service FROM {name}_samples s LEFT JOIN ev e ON e.id = s.id"
    )
    con.execute(sql.replace("$SLACK", slack))
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {name} AS
        SELECT key, b,
            max(pod) FILTER (WHERE what = 'point') AS point_pod,
            max(zone) FILTER (WHERE what = 'point') AS point_zone,
            max(service) FILTER (WHERE what = 'point') AS point_service,
            max(pod) FILTER (WHERE what = 'span') AS span_pod,
            max(zone) FILTER (WHERE what = 'span') AS span_zone,
            max(service) FILTER (WHERE what = 'span') AS span_service
        FROM {name}_eval GROUP BY key, b
        """
    )
    # Each piece runs to the next breakpoint. A hash join on (key, minute) plus a range check finds a
    # row's piece far faster than an ASOF join sorting every row, and stays linear however often an
    # IP was reused: a piece is listed under every minute it covers, so a row meets only the few
    # pieces of its own minute. A key's last piece has no end: it is joined on the key alone.
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name}_all AS SELECT *, lead(b) OVER (PARTITION BY key ORDER BY b) "
                f"AS nb FROM {name}")  # fmt: skip
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT *, unnest(range("
        f"CAST(floor(b / {PIECE_BUCKET_S}) AS BIGINT), CAST(floor(nb / {PIECE_BUCKET_S}) AS BIGINT) + 1)) AS bk "
        f"FROM {name}_all WHERE nb IS NOT NULL"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name}_last AS SELECT * EXCLUDE (nb) FROM {name}_all WHERE nb IS NULL")
    con.execute(f"DROP TABLE {name}_all")
    for t in ("bp", "samples", "eval"):
        con.execute(f"DROP TABLE {name}_{t}")


def _piece_sql(alias: str, field: str, ts: str) -> str:
    """SQL: `field` (pod, zone, service) of the piece a row at time `ts` fell in (joined by `_piece_join_sql`)."""
    return (
        f"(CASE WHEN {alias}l.key IS NOT NULL "
        f"THEN (CASE WHEN {ts} = {alias}l.b THEN {alias}l.point_{field} ELSE {alias}l.span_{field} END) "
        f"ELSE (CASE WHEN {ts} = {alias}.b THEN {alias}.point_{field} ELSE {alias}.span_{field} END) END)"
    )


def _piece_join_sql(alias: str, pieces: str, key: str, ts: str) -> str:
    """SQL: the two LEFT JOINs that find a row's piece of `pieces` (see `_pieces`) as `alias` / `<alias>l`."""
    return (
        f"LEFT JOIN {pieces} {alias} ON {key} = {alias}.key "
        f"AND CAST(floor({ts} / {PIECE_BUCKET_S}) AS BIGINT) = {alias}.bk AND {ts} >= {alias}.b AND {ts} < {alias}.nb "
        f"LEFT JOIN {pieces}_last {alias}l ON {key} = {alias}l.key AND {ts} >= {alias}l.b"
    )


def _nearest_interval_sql(name: str, source: str, source_key: str, interval_key: str) -> str:
    """CTEs `<name>` (id, pod, zone, service): the inventory interval each row of `source` falls in.

    `source` has columns `id`, `ts` and `source_key`. Two ASOF joins on
    (key, time) instead of a range join: one finds the interval that started
    last at or before the row, the other the next one to start after it, so
    the work stays O(n log n) however often an IP was reused. The pick: the
    previous interval when it still contains the row; otherwise the nearer of
    the two within the slack (ties go to the later pod); otherwise none.
    """
    return f"""
{name}_prev AS (
    SELECT r.id, r.ts, i.pod, i.zone, i.service, i.end_ts
    FROM {source} r ASOF JOIN intervals i ON r.{source_key} = i.{interval_key} AND r.ts >= i.start_ts
),
{name}_next AS (
    SELECT r.id, r.ts, i.pod, i.zone, i.service, i.start_ts
    FROM {source} r ASOF JOIN intervals i ON r.{source_key} = i.{interval_key} AND r.ts < i.start_ts
),
{name}_both AS (
    SELECT coalesce(p.id, n.id) AS id,
        CASE
            WHEN p.id IS NOT NULL AND (p.end_ts IS NULL OR p.ts <= p.end_ts) THEN 'prev'
            WHEN n.id IS NOT NULL AND n.ts >= n.start_ts - $SLACK
                 AND (p.id IS NULL OR n.ts >= (p.end_ts + n.start_ts) / 2) THEN 'next'
            WHEN p.id IS NOT NULL AND p.ts <= p.end_ts + $SLACK THEN 'prev'
        END AS pick,
        p.pod AS p_pod, p.zone AS p_zone, p.service AS p_service,
        n.pod AS n_pod, n.zone AS n_zone, n.service AS n_service
    FROM {name}_prev p FULL JOIN {name}_next n ON p.id = n.id
),
{name} AS (
    SELECT id,
        CASE pick WHEN 'prev' THEN p_pod ELSE n_pod END AS pod,
        CASE pick WHEN 'prev' THEN p_zone ELSE n_zone END AS zone,
        CASE pick WHEN 'prev' THEN p_service ELSE n_service END AS service
    FROM {name}_both WHERE pick IS NOT NULL
),"""


def resolve_ips(con: DuckDBPyConnection, source: str, target: str, slack_s: float = SLACK_S) -> None:
    """Create `target` (id, pod, zone, service): the pod that held each `source` row's `ip` at its `ts`.

    The same rule `create_hops` uses (one rule for hops, hops copied
    without access logs, and the upstream counters' hosts). `source` needs
    columns `id`, `ts`, `ip`; rows nobody explains are left out of `target`.
    """
    _pieces(con, f"{target}_pieces", "ip", slack_s)
    p = f"{target}_pieces"
    con.execute(
        f"""
        CREATE TABLE {target} AS SELECT * FROM (
            SELECT r.id, {_piece_sql("p", "pod", "r.ts")} AS pod, {_piece_sql("p", "zone", "r.ts")} AS zone,
                   {_piece_sql("p", "service", "r.ts")} AS service
            FROM {source} r {_piece_join_sql("p", p, "r.ip", "r.ts")}
        ) WHERE pod IS NOT NULL
        """
    )
    con.execute(f"DROP TABLE {p}")
    con.execute(f"DROP TABLE {p}_last")


def _cluster_sni_sql(column: str) -> str:
    """SQL: the SNI an Envoy cluster name is built on, its failover-child and `<8 hex>~` prefixes cut.

    The order is Consul's, outside in: a chain its caller's upstream config customized (a connect timeout
    that differs from any target's, as the rendered edge chains' Region target without a resolver does) has
    its base name hash-prefixed first and its failover children named after that (xds
    getTargetClusterName, failover_policy.go sequential)."""
    return (
        f"regexp_replace(regexp_replace(CAST({column} AS VARCHAR), '^failover-target~[0-9]+~', ''), "
        "'^[0-9a-fA-F]{8}~', '')"
    )


def cluster_service_sql(column: str) -> str:
    """SQL: the Consul service an Envoy cluster name stands for (`product-api-las-1a` of
    `failover-target~1~product-api-las-1a.default.dc1.internal.<trust domain>.consul`, of a
    `<8 hex>~`-prefixed name, or of both: `failover-target~1~<8 hex>~product-api-las-1a...`), whatever host
    it holds: the SNI's first label (`_cluster_sni_sql`)."""
    return f"split_part({_cluster_sni_sql(column)}, '.', 1)"


def cluster_namespace_sql(column: str) -> str:
    """SQL: the Consul namespace of the service an Envoy cluster name stands for, the SNI's second label
    (`<service>.<namespace>.<dc>.internal.<trust domain>` in the default partition, consul agent/connect/sni.go
    ServiceSNI): `default` in CE, the zone's mirrored namespace in Enterprise, where it is what tells one zone's
    `product-api` from another's."""
    return f"split_part({_cluster_sni_sql(column)}, '.', 2)"


def cluster_zone_names(t: Topology) -> list[tuple[str, str, str]]:
    """(Consul service, Consul namespace, zone) for each cluster target that stands for exactly one zone's
    instances: an Envoy cluster named for it is a route to that zone, whichever host it held.

    CE names an edge zone's copy (`product-api-las-1a`) in its one namespace; Enterprise keeps the plain name in
    the zone's mirrored namespace (`product-api` in `hashicups-las-1a`). Read off the name alone, an Enterprise
    route to another Local Zone's instances stood for no zone."""
    from harness.contract.names import CE_CONSUL_NAMESPACE, consul_name, namespace
    from harness.topology import Edition

    zones_of: dict[tuple[str, str], set[str]] = {}
    for s in t.services:
        for z in t.zones:
            if s.placement.value == "region" and z.is_edge:
                continue
            ns = namespace(t, z) if t.edition is Edition.ENTERPRISE else CE_CONSUL_NAMESPACE
            zones_of.setdefault((consul_name(t, s, z, t.edition), ns), set()).add(z.name)
    return [(n, ns, next(iter(zs))) for (n, ns), zs in sorted(zones_of.items()) if n and len(zs) == 1]


_HOPS_SQL = f"""
CREATE TABLE $TABLE AS
WITH caller_any AS (
    -- A caller pod seen outside every recorded interval still has one zone and service.
    {POD_PLACE_SQL}
)
SELECT
    r.ts,
    r.caller_pod,
    coalesce({_piece_sql("c", "service", "r.ts")}, ca.service, cn.service, r.caller_service_raw) AS caller_service,
    coalesce({_piece_sql("c", "zone", "r.ts")}, ca.zone, cn.zone) AS caller_zone,
    coalesce({_piece_sql("s", "service", "r.ts")}, un.service, nullif(r.cluster_service, '')) AS upstream,
    r.upstream_cluster,
    r.host AS upstream_host,
    {_piece_sql("s", "pod", "r.ts")} AS serving_pod,
    {_piece_sql("s", "zone", "r.ts")} AS serving_zone,
    r.status,
    r.flags,
    r.duration_ms
FROM raw r
{_piece_join_sql("s", "serving_pieces", "r.ip", "r.ts")}
{_piece_join_sql("c", "caller_pieces", "r.caller_pod", "r.ts")}
LEFT JOIN caller_any ca ON ca.pod = r.caller_pod
LEFT JOIN consul_names cn ON cn.consul_service = r.caller_service_raw
LEFT JOIN consul_names un ON un.consul_service = r.cluster_service
"""
