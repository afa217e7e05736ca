"""Turn raw sidecar access logs into hop records (`hops.jsonl`, CONTRACTS §4).

A hop is one outbound request a sidecar sent on behalf of its app. What the
verifier needs per hop is *who called* (caller service and zone) and *who
served* (pod and zone). Envoy only knows the upstream's IP:port, and IPs are
short-lived: chaos kills pods, their replacements get new IPs, and old IPs are
handed to other pods later. So the serving pod is the one that held that IP
*at the time of the hop*, taken from the inventory's history.

The join runs in DuckDB, out of core: a long run produces millions of lines
and the work is a time-aware join on (ip, time) against the inventory's
intervals (two ASOF joins: the interval before and the one after each hop),
which a columnar engine does in seconds and Python loops would not (2 M
hops in about 20 s on a busy 2-core machine). The result is written by
DuckDB's ``COPY ... (FORMAT JSON)`` to a temporary file and renamed, so a
reader never sees half a `hops.jsonl`.

Matching rules:
- Only ``direction == "outbound"`` lines (all lines when the field is absent:
  kind/existing sidecars log outbound listeners only).
- Serving pod: inventory interval with the same IP containing the hop's start;
  failing that, one within `SLACK_S` of it (inventory events and Envoy's
  clock are not perfectly in step), the nearest one first.
- Logical upstream: the serving pod's ``service``; without a serving pod (no
  upstream host, e.g. ``503 UH``, or an unknown IP) it comes from
  ``upstream_cluster``: strip a ``<8hex>~`` prefix and ``failover-target~N~``,
  keep the part before the first ``.`` (the Consul service name), and map it
  through the inventory's ``consul_service -> service``.
- Caller: ``caller_pod`` (or the pod the file is named after) looked up in the
  inventory for its zone and logical service; falling back to the log's
  ``caller_service`` (a Consul name) mapped to a logical name, and to its zone
  when that Consul name lives in exactly one zone (CE edge names do).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

from harness.records import (
    ACCESSLOG_COLUMNS,
    ACCESSLOG_DIR,
    HOPS_FILE,
    INVENTORY_COLUMNS,
    INVENTORY_FILE,
    read_json_sql,
    sql_str,
)

SLACK_S = 1.0
"""How far outside a pod's recorded lifetime a hop may still be attributed to it (clock skew, event lag)."""


def build_hops(run_dir: Path, slack_s: float = SLACK_S) -> int:
    """Write ``run_dir/hops.jsonl`` from ``run_dir/accesslogs/*.jsonl`` + ``inventory.jsonl``; return the hop count.

    Idempotent: rebuilds the whole file from the raw logs each time. Missing
    inputs give an empty `hops.jsonl` (no access logs) or hops without
    serving pods (no inventory) rather than an error, so a crashed run can
    still be judged on what it has.
    """
    import duckdb

    run_dir = Path(run_dir)
    logs = sorted((run_dir / ACCESSLOG_DIR).glob("*.jsonl"))
    inventory = run_dir / INVENTORY_FILE
    out = run_dir / HOPS_FILE
    tmp = run_dir / (HOPS_FILE + ".tmp")
    spill = run_dir / ".hops-duckdb-tmp"
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = {sql_str(spill)}")
        con.execute("SET TimeZone = 'UTC'")  # Envoy's START_TIME without an offset is UTC
        _load_inventory(con, inventory)
        _load_accesslogs(con, logs)
        con.execute(_HOPS_SQL.replace("$SLACK", repr(float(slack_s))))
        con.execute(f"COPY (SELECT * FROM hops ORDER BY ts, caller_pod) TO {sql_str(tmp)} (FORMAT JSON)")
        row = con.execute("SELECT count(*) FROM hops").fetchone()
        count = int(row[0]) if row else 0
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    os.replace(tmp, out)
    return count


def _load_inventory(con: DuckDBPyConnection, path: Path) -> None:
    """Table `inv` (the raw events) and `intervals`: (pod, ip) with [start, end) from the history."""
    cols = ", ".join(f"{k} {v}" for k, v in INVENTORY_COLUMNS.items())
    if path.is_file() and path.stat().st_size > 0:
        sql = f"""
            CREATE TABLE inv AS SELECT {", ".join(INVENTORY_COLUMNS)}
            FROM {read_json_sql(path, INVENTORY_COLUMNS)}
            WHERE ts IS NOT NULL AND pod IS NOT NULL
        """
    else:
        sql = f"CREATE TABLE inv ({cols})"
    con.execute(sql)
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


def _load_accesslogs(con: DuckDBPyConnection, logs: list[Path]) -> None:
    """Table `raw`: the outbound lines, typed, with a row id and the pod each file belongs to."""
    names = ", ".join(ACCESSLOG_COLUMNS)
    if not logs:
        cols = ", ".join(f"{k} {v}" for k, v in ACCESSLOG_COLUMNS.items())
        con.execute(f"CREATE TABLE raw_lines ({cols}, filename VARCHAR)")
    else:
        source = read_json_sql(logs, ACCESSLOG_COLUMNS, filename=True)
        con.execute(f"CREATE TABLE raw_lines AS SELECT {names}, filename FROM {source}")
    con.execute(
        r"""
        CREATE TABLE raw AS
        SELECT row_number() OVER () AS id, *,
            CASE
                WHEN host = '' THEN NULL
                WHEN host LIKE '[%' THEN regexp_extract(host, '^\[([^\]]*)\]', 1)
                WHEN length(host) - length(replace(host, ':', '')) = 1 THEN split_part(host, ':', 1)
                ELSE host
            END AS ip
        FROM (
            SELECT
                coalesce(try_cast(start_time AS DOUBLE),
                         epoch_us(try_cast(start_time AS TIMESTAMPTZ)) / 1e6) AS ts,
                coalesce(nullif(caller_pod, ''),
                         regexp_replace(regexp_extract(filename, '[^/]*$'), '\.jsonl$', '')) AS caller_pod,
                nullif(caller_service, '') AS caller_service_raw,
                CASE WHEN upstream_host IS NULL OR upstream_host IN ('', '-') THEN ''
                     ELSE upstream_host END AS host,
                CASE WHEN upstream_cluster IN ('', '-') THEN NULL ELSE upstream_cluster END AS upstream_cluster,
                split_part(regexp_replace(regexp_replace(coalesce(upstream_cluster, ''),
                    '^[0-9a-fA-F]{8}~', ''), '^failover-target~[0-9]+~', ''), '.', 1) AS cluster_service,
                coalesce(try_cast(try_cast(response_code AS DOUBLE) AS INTEGER), 0) AS status,
                coalesce(nullif(response_flags, ''), '-') AS flags,
                try_cast(duration AS DOUBLE) AS duration_ms
            FROM raw_lines
            WHERE direction IS NULL OR direction = 'outbound'
        )
        WHERE ts IS NOT NULL
        """
    )


def _nearest_interval_sql(name: str, raw_key: str, interval_key: str) -> str:
    """CTEs `<name>` (id, pod, zone, service): the inventory interval each hop falls in.

    Two ASOF joins on (key, time) instead of a range join: one finds the
    interval that started last at or before the hop, the other the next one
    to start after it, so the work stays O(n log n) however often an IP was
    reused. The pick: the previous interval when it still contains the hop;
    otherwise the nearer of the two within the slack (ties go to the later
    pod); otherwise none.
    """
    return f"""
{name}_prev AS (
    SELECT r.id, r.ts, i.pod, i.zone, i.service, i.end_ts
    FROM raw r ASOF JOIN intervals i ON r.{raw_key} = i.{interval_key} AND r.ts >= i.start_ts
),
{name}_next AS (
    SELECT r.id, r.ts, i.pod, i.zone, i.service, i.start_ts
    FROM raw r ASOF JOIN intervals i ON r.{raw_key} = i.{interval_key} AND r.ts < i.start_ts
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


_HOPS_SQL = (
    """
CREATE TABLE hops AS
WITH"""
    + _nearest_interval_sql("serving", "ip", "ip")
    + _nearest_interval_sql("caller", "caller_pod", "pod")
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
