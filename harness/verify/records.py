"""Load a run directory's records into DuckDB tables the invariants query.

Why DuckDB: a long run holds millions of hops; the invariants are set queries
(group by pair, range-join against fault windows), which a columnar engine does
in well under a second where a Python loop over dicts takes tens of seconds.
Every file is read with `read_json` and *explicit* column types so that a
record missing a field (an older observe, a copied run) yields NULL instead of
a type guess that changes from run to run. A truncated last line (a run killed
mid-write) is skipped (`ignore_errors`), because records are appended and
flushed one line at a time and everything before it is intact.

Tables after `load_run`:
- `zones(name, kind, type)`: kind `region` (availability zone) or `edge`.
- `services(name, placement)`; `calls(caller, upstream)` (the call graph).
- `requests(ts, zone, endpoint, name, status, latency_ms, ok, error)`.
- `inventory(ts, event, pod, ip, node, zone, service)`.
- `chaos(ts, fault, phase, action, kind, zone, service, services, entry_down)`.
- `hops(...)`: hops.jsonl plus the derived columns `serving_zone` (resolved
  from `inventory` by IP *at the hop's time* when the record lacks it),
  `resolved` (it was), `caller_kind`, `serving_kind` (`region|edge|unknown`,
  NULL when no upstream host), `placement` of the upstream and `ok`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from harness.records import CHAOS_COLUMNS, HOP_COLUMNS, INVENTORY_COLUMNS, REQUEST_COLUMNS, read_json_sql, sql_str
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
FAULT_KINDS = ("service-down", "zone-down", "link-degraded", "partition")


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


@dataclass
class RunData:
    con: duckdb.DuckDBPyConnection
    topology: Topology
    run_dir: Path
    faults: list[Fault]
    notes: list[str]
    start: float | None
    end: float | None

    def scalar(self, sql: str, params: list[object] | None = None) -> object:
        row = self.con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]


def _load_table(
    con: duckdb.DuckDBPyConnection, table: str, path: Path, columns: dict[str, str], where: str = ""
) -> None:
    """Create `table` from a JSON-lines file, or empty with the same schema when absent."""
    if path.is_file() and path.stat().st_size > 0:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM {read_json_sql(path, columns)} {where}")
    else:
        cols = ", ".join(f'"{k}" {v}' for k, v in columns.items())
        con.execute(f"CREATE TABLE {table} ({cols})")


def find_topology(run_dir: Path) -> Path:
    for candidate in (run_dir / "manifests" / "topology.yaml", run_dir / "topology.yaml"):
        if candidate.is_file():
            return candidate
    return run_dir / "manifests" / "topology.yaml"  # load_topology reports "no such file" on it


def load_run(run_dir: Path, threads: int | None = None) -> RunData:
    """Read topology and records of `run_dir` into an in-memory DuckDB database."""
    topology = load_topology(find_topology(run_dir))
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    _topology_tables(con, topology)
    _load_table(con, "requests", run_dir / "requests.jsonl", REQUEST_COLUMNS, "WHERE ts IS NOT NULL")
    _load_table(con, "inventory", run_dir / "inventory.jsonl", INVENTORY_COLUMNS, "WHERE ts IS NOT NULL")
    _load_table(con, "chaos", run_dir / "chaos.jsonl", CHAOS_COLUMNS, "WHERE ts IS NOT NULL")
    _build_hops(con, topology, run_dir / "hops.jsonl")
    notes: list[str] = []
    faults = _faults(con, topology, notes)
    row = con.execute(
        "SELECT min(lo), max(hi) FROM (SELECT min(ts) lo, max(ts) hi FROM hops "
        "UNION ALL SELECT min(ts), max(ts) FROM requests UNION ALL SELECT min(ts), max(ts) FROM chaos)"
    ).fetchone()
    start, end = (row[0], row[1]) if row else (None, None)
    unknown = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT z FROM (SELECT caller_zone z FROM hops UNION SELECT zone FROM requests) "
            "WHERE z IS NOT NULL AND z NOT IN (SELECT name FROM zones) ORDER BY z"
        ).fetchall()
    ]
    if unknown:
        notes.append(f"records name zones the topology does not have: {', '.join(unknown)}")
    return RunData(con, topology, run_dir, faults, notes, start, end)


def _topology_tables(con: duckdb.DuckDBPyConnection, t: Topology) -> None:
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


def _case(column: str, mapping: dict[str, str], default: str) -> str:
    """A CASE over the topology's few names: cheaper than a join, so it fuses with the scan."""
    whens = " ".join(f"WHEN {sql_str(k)} THEN {sql_str(v)}" for k, v in mapping.items())
    return f"(CASE {column} {whens} ELSE {sql_str(default)} END)" if mapping else sql_str(default)


def _build_hops(con: duckdb.DuckDBPyConnection, t: Topology, path: Path) -> None:
    """Read hops.jsonl into `hops` with serving zone, zone kinds, placement and success.

    One scan of the file computes everything from the topology (CASE over its
    zone and service names fuses with the JSON scan; a join would materialise
    the million rows once more). Then only the hops that lack a serving zone but
    have an upstream host are updated from the inventory: an ASOF join picks the
    pod that held the IP *at the hop's time* (pods are replaced under new IPs
    and IPs are reused, so the latest mapping would be wrong); if the IP's first
    `added` event comes slightly after the hop (clocks of different machines),
    that first holder is used.
    """
    kinds = {z.name: ("edge" if z.is_edge else "region") for z in t.zones}
    placements = {s.name: s.placement.value for s in t.services}
    serving_kind = (
        "(CASE WHEN serving_zone IS NULL THEN "
        "(CASE WHEN coalesce(upstream_host, '') = '' THEN NULL ELSE 'unknown' END) "
        f"ELSE {_case('serving_zone', kinds, 'unknown')} END)"
    )
    if path.is_file() and path.stat().st_size > 0:
        source = (
            f"(SELECT * REPLACE (nullif(serving_pod, '') AS serving_pod, nullif(serving_zone, '') AS serving_zone) "
            f"FROM {read_json_sql(path, HOP_COLUMNS)} WHERE ts IS NOT NULL)"
        )
    else:
        cols = ", ".join(f'NULL::{v} AS "{k}"' for k, v in HOP_COLUMNS.items())
        source = f"(SELECT {cols} LIMIT 0)"
    con.execute(
        f"""
        CREATE TABLE hops AS
        SELECT *, false AS resolved,
               {_case("caller_zone", kinds, "unknown")} AS caller_kind,
               {serving_kind} AS serving_kind,
               {_case("upstream", placements, "unknown")} AS placement,
               {HOP_OK_SQL} AS ok
        FROM {source}
        """
    )
    con.execute(
        "CREATE TABLE inv_ip AS SELECT ts, ip, pod, zone FROM inventory "
        "WHERE event IN ('added', 'ip') AND coalesce(ip, '') <> '' AND zone IS NOT NULL"
    )
    con.execute(
        "CREATE TABLE inv_first AS SELECT ip, arg_min(pod, ts) pod, arg_min(zone, ts) zone FROM inv_ip GROUP BY ip"
    )
    con.execute(
        f"""
        UPDATE hops SET serving_zone = m.zone, serving_pod = coalesce(hops.serving_pod, m.pod), resolved = true,
               serving_kind = {_case("m.zone", kinds, "unknown")}
        FROM (
            SELECT h.rid, coalesce(i.zone, f.zone) AS zone, coalesce(i.pod, f.pod) AS pod
            FROM (SELECT rowid AS rid, ts,
                         regexp_replace(regexp_replace(upstream_host, ':[0-9]+$', ''), '^\\[|\\]$', '', 'g') AS ip
                  FROM hops WHERE serving_zone IS NULL AND coalesce(upstream_host, '') <> '') h
            ASOF LEFT JOIN inv_ip i ON h.ip = i.ip AND h.ts >= i.ts
            LEFT JOIN inv_first f ON h.ip = f.ip
            WHERE coalesce(i.zone, f.zone) IS NOT NULL
        ) m
        WHERE hops.rowid = m.rid
        """
    )


def _faults(con: duckdb.DuckDBPyConnection, t: Topology, notes: list[str]) -> list[Fault]:
    """Pair inject and restore records per fault id (sorted by time, not file order)."""
    rows = con.execute(
        "SELECT ts, fault, phase, action, kind, zone, service, services, entry_down FROM chaos ORDER BY ts, phase"
    ).fetchall()
    open_: dict[str, dict[str, object]] = {}
    done: list[Fault] = []
    for ts, fault, phase, action, kind, zone, service, services, entry_down in rows:
        if not fault:
            notes.append(f"chaos record at {ts} has no fault id; ignored")
            continue
        if phase == "inject":
            if fault in open_:
                notes.append(f"fault {fault}: second inject at {ts} before a restore; ignored")
                continue
            k = kind or ACTION_KINDS.get(action or "", "")
            if k not in FAULT_KINDS:
                notes.append(f"fault {fault}: unknown kind {kind!r} (action {action!r}); treated as service-down")
                k = "service-down"
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
    for flt in done:
        try:
            t.zone(flt.zone)
        except KeyError:
            notes.append(f"fault {flt.fault}: zone {flt.zone!r} is not in the topology")
    return sorted(done, key=lambda x: (x.inject, x.fault))


def zone_is_edge(t: Topology, zone: str) -> bool:
    try:
        return t.zone(zone).is_edge
    except KeyError:
        return True  # unknown zones are judged as strictly as edge zones


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
