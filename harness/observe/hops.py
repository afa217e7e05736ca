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
- Logical upstream: the serving pod's ``service``; without a serving pod (no
  upstream host, e.g. ``503 UH``, or an unknown IP) it comes from
  ``upstream_cluster``: strip a ``<8hex>~`` prefix and ``failover-target~N~``,
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
    from duckdb import DuckDBPyConnection

    from harness.topology import Topology

from harness.contract.inventory import SLACK_S
from harness.contract.rundir import (
    ACCESSLOG_COLUMNS,
    ACCESSLOG_DIR,
    ACCESSLOG_TS_SQL,
    ACCESSLOG_VALID_SQL,
    HOPS_BUILD_FILE,
    HOPS_FILE,
    INVENTORY_COLUMNS,
    INVENTORY_FILE,
    SkippedLine,
    hop_inputs,
    load_jsonl,
    sql_str,
    topology_path,
)

INBOUND_SQL = (
    "coalesce(direction = 'inbound' OR (direction IS NULL AND (coalesce(upstream_cluster, '') = 'local_app' "
    "OR regexp_matches(coalesce(upstream_host, ''), '^(127\\.[0-9.]+|\\[::1\\]|::1):[0-9]+$'))), false)"
)


@dataclass
class HopsBuild:
    """What building the `hops` table found besides the hops."""

    hops: int = 0
    accesslog_files: int = 0
    accesslog_lines: int = 0
    inbound_lines: int = 0
    skipped: list[SkippedLine] = field(default_factory=list)


def accesslog_files(run_dir: Path) -> list[Path]:
    return sorted((Path(run_dir) / ACCESSLOG_DIR).glob("*.jsonl"))


def build_hops(run_dir: Path, slack_s: float = SLACK_S) -> int:
    """Write ``run_dir/hops.jsonl`` from ``run_dir/accesslogs/*.jsonl`` + ``inventory.jsonl``; return the hop count.

    Idempotent: rebuilds the whole file from the raw logs each time. Missing
    inputs give an empty `hops.jsonl` (no access logs) or hops without
    serving pods (no inventory) rather than an error, so a crashed run can
    still be judged on what it has.
    """
    import duckdb

    run_dir = Path(run_dir)
    out = run_dir / HOPS_FILE
    tmp = run_dir / (HOPS_FILE + ".tmp")
    spill = run_dir / ".hops-duckdb-tmp"
    inputs = hop_inputs(run_dir)  # before reading: a file that changes meanwhile makes the build stale
    (run_dir / HOPS_BUILD_FILE).unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = {sql_str(spill)}")
        built = create_hops(con, run_dir, _topology_or_none(run_dir), slack_s)
        con.execute(f"COPY (SELECT * FROM hops ORDER BY ts, caller_pod) TO {sql_str(tmp)} (FORMAT JSON)")
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    os.replace(tmp, out)
    st = out.stat()
    meta = {
        "inputs": inputs,
        "hops_file": [st.st_size, st.st_mtime_ns],
        "slack_s": slack_s,
        "hops": built.hops,
        "accesslog_files": built.accesslog_files,
        "accesslog_lines": built.accesslog_lines,
        "inbound_lines": built.inbound_lines,
        "skipped": [asdict(s) for s in built.skipped],
    }
    (run_dir / HOPS_BUILD_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return built.hops


def current_build(run_dir: Path, slack_s: float = SLACK_S) -> HopsBuild | None:
    """What observe's last `build_hops` found, when hops.jsonl is still what it built from the present inputs.

    None when there is no record of the build, or the access logs, the
    inventory, the topology, hops.jsonl itself or the slack differ: then the
    hops must be built again (verify does, from the access logs).
    """
    try:
        meta = json.loads((run_dir / HOPS_BUILD_FILE).read_text(encoding="utf-8"))
        st = (run_dir / HOPS_FILE).stat()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("slack_s") != slack_s:
        return None
    if meta.get("hops_file") != [st.st_size, st.st_mtime_ns] or meta.get("inputs") != hop_inputs(run_dir):
        return None
    try:
        return HopsBuild(
            hops=int(meta["hops"]), accesslog_files=int(meta["accesslog_files"]),
            accesslog_lines=int(meta["accesslog_lines"]), inbound_lines=int(meta["inbound_lines"]),
            skipped=[SkippedLine(**s) for s in meta["skipped"]],
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
) -> HopsBuild:
    """Create `table` (the hops.jsonl columns) in `con` from the run's access logs and inventory.

    Also leaves `inv`, `intervals` and `consul_names` (see `load_inventory`)
    unless `inventory_loaded` says the caller made them already.
    """
    run_dir = Path(run_dir)
    con.execute("SET TimeZone = 'UTC'")  # Envoy's START_TIME without an offset is UTC
    built = HopsBuild()
    if not inventory_loaded:
        built.skipped += load_inventory(con, run_dir / INVENTORY_FILE, topology, root=run_dir)
    logs = accesslog_files(run_dir)
    built.accesslog_files = len(logs)
    built.skipped += _load_accesslogs(con, logs, run_dir)
    row = con.execute("SELECT count(*), count(*) FILTER (WHERE inbound) FROM raw_lines").fetchone()
    built.accesslog_lines, built.inbound_lines = (int(row[0]), int(row[1])) if row else (0, 0)
    con.execute(_HOPS_SQL.replace("$TABLE", table).replace("$SLACK", repr(float(slack_s))))
    row = con.execute(f"SELECT count(*) FROM {table}").fetchone()
    built.hops = int(row[0]) if row else 0
    con.execute("DROP TABLE raw_lines")
    con.execute("DROP TABLE raw")
    return built


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


def _load_accesslogs(con: DuckDBPyConnection, logs: list[Path], root: Path) -> list[SkippedLine]:
    """Tables `raw_lines` (every usable line, typed, `inbound` flagged) and `raw` (the outbound ones)."""
    skipped = load_jsonl(
        con, "raw_text", logs, ACCESSLOG_COLUMNS, valid_sql=ACCESSLOG_VALID_SQL, filename=True, root=root,
        what="start_time",
    )  # fmt: skip
    con.execute(f"CREATE TABLE raw_lines AS SELECT *, {INBOUND_SQL} AS inbound FROM raw_text")
    con.execute("DROP TABLE raw_text")
    # Per distinct value, not per line: a million lines name a few dozen clusters and files.
    con.execute(
        r"""
        CREATE TEMP TABLE cluster_names AS
        SELECT upstream_cluster, split_part(regexp_replace(regexp_replace(upstream_cluster,
               '^[0-9a-fA-F]{8}~', ''), '^failover-target~[0-9]+~', ''), '.', 1) AS cluster_service
        FROM (SELECT DISTINCT upstream_cluster FROM raw_lines WHERE upstream_cluster IS NOT NULL)
        """
    )
    con.execute(
        r"""
        CREATE TEMP TABLE file_pods AS
        SELECT filename, regexp_replace(regexp_extract(filename, '[^/]*$'), '\.jsonl$', '') AS pod
        FROM (SELECT DISTINCT filename FROM raw_lines)
        """
    )
    con.execute(
        rf"""
        CREATE TABLE raw AS
        SELECT *, {host_ip_sql("host")} AS ip
        FROM (
            SELECT
                l.rowid AS id,
                {ACCESSLOG_TS_SQL} AS ts,
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
            WHERE NOT l.inbound
        )
        """
    )
    con.execute("DROP TABLE cluster_names")
    con.execute("DROP TABLE file_pods")
    return skipped


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
            WHEN n.id IS NOT NULL AND n.start_ts - n.ts <= $SLACK
                 AND (p.id IS NULL OR n.start_ts - n.ts <= p.ts - p.end_ts) THEN 'next'
            WHEN p.id IS NOT NULL AND p.ts - p.end_ts <= $SLACK THEN 'prev'
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

    The same rule `create_hops` uses (one rule for hops, hops.jsonl copied
    without access logs, and the upstream counters' hosts). `source` needs
    columns `id`, `ts`, `ip`; rows nobody explains are left out of `target`.
    """
    sql = (
        f"CREATE TABLE {target} AS WITH"
        + _nearest_interval_sql("serving", source, "ip", "ip").rstrip(",")
        + " SELECT id, pod, zone, service FROM serving"
    )
    con.execute(sql.replace("$SLACK", repr(float(slack_s))))


def host_ip_sql(column: str) -> str:
    """SQL: the IP of an Envoy `host:port` (IPv6 in brackets), NULL when empty."""
    return (
        f"(CASE WHEN coalesce({column}, '') IN ('', '-') THEN NULL "
        f"WHEN {column} LIKE '[%' THEN regexp_extract({column}, '^\\[([^\\]]*)\\]', 1) "
        f"WHEN length({column}) - length(replace({column}, ':', '')) = 1 THEN split_part({column}, ':', 1) "
        f"ELSE {column} END)"
    )


_HOPS_SQL = (
    """
CREATE TABLE $TABLE AS
WITH"""
    + _nearest_interval_sql("serving", "raw", "ip", "ip")
    + _nearest_interval_sql("caller", "raw", "caller_pod", "pod")
    + """
caller_any AS (
    -- A caller pod seen outside every recorded interval still has one zone and service.
    SELECT pod, arg_max(zone, start_ts) AS zone, arg_max(service, start_ts) AS service
    FROM intervals GROUP BY pod
)
SELECT
    r.ts,
    r.caller_pod,
    coalesce(c.service, ca.service, cn.service, r.caller_service_raw) AS caller_service,
    coalesce(c.zone, ca.zone, cn.zone) AS caller_zone,
    coalesce(s.service, un.service, nullif(r.cluster_service, '')) AS upstream,
    r.upstream_cluster,
    r.host AS upstream_host,
    s.pod AS serving_pod,
    s.zone AS serving_zone,
    r.status,
    r.flags,
    r.duration_ms
FROM raw r
LEFT JOIN serving s ON s.id = r.id
LEFT JOIN caller c ON c.id = r.id
LEFT JOIN caller_any ca ON ca.pod = r.caller_pod
LEFT JOIN consul_names cn ON cn.consul_service = r.caller_service_raw
LEFT JOIN consul_names un ON un.consul_service = r.cluster_service
"""
)
