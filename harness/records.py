"""The record files of a run directory: their names and column types, in one place.

docs/CONTRACTS.md section 4 describes the records in prose; this module is the
same contract for code. Observe writes hops from access logs and the
inventory; verify and report read every file; the traffic runner counts
requests. All of them read JSON lines with DuckDB through `read_json_sql`, so
a file with millions of lines is never looped over in Python.
"""

from __future__ import annotations

import os
from pathlib import Path

REQUESTS_FILE = "requests.jsonl"
ACCESSLOG_DIR = "accesslogs"
INVENTORY_FILE = "inventory.jsonl"
HOPS_FILE = "hops.jsonl"
CHAOS_FILE = "chaos.jsonl"

REQUEST_COLUMNS = {
    "ts": "DOUBLE",
    "zone": "VARCHAR",
    "endpoint": "VARCHAR",
    "name": "VARCHAR",
    "status": "INTEGER",
    "latency_ms": "DOUBLE",
    "ok": "BOOLEAN",
    "error": "VARCHAR",
}
INVENTORY_COLUMNS = {
    "ts": "DOUBLE",
    "event": "VARCHAR",
    "pod": "VARCHAR",
    "ip": "VARCHAR",
    "node": "VARCHAR",
    "zone": "VARCHAR",
    "service": "VARCHAR",
    "consul_service": "VARCHAR",
    "namespace": "VARCHAR",
}
HOP_COLUMNS = {
    "ts": "DOUBLE",
    "caller_pod": "VARCHAR",
    "caller_service": "VARCHAR",
    "caller_zone": "VARCHAR",
    "upstream": "VARCHAR",
    "upstream_cluster": "VARCHAR",
    "upstream_host": "VARCHAR",
    "serving_pod": "VARCHAR",
    "serving_zone": "VARCHAR",
    "status": "INTEGER",
    "flags": "VARCHAR",
    "duration_ms": "DOUBLE",
}
CHAOS_COLUMNS = {
    "ts": "DOUBLE",
    "fault": "VARCHAR",
    "phase": "VARCHAR",
    "action": "VARCHAR",
    "kind": "VARCHAR",
    "zone": "VARCHAR",
    "service": "VARCHAR",
    "services": "VARCHAR[]",
    "entry_down": "BOOLEAN",
}
# The access-log fields observe needs (read as text: Envoy writes numbers for
# some fields and null for empty ones, and other backends may quote them).
ACCESSLOG_COLUMNS = {
    "start_time": "VARCHAR",
    "response_code": "VARCHAR",
    "response_flags": "VARCHAR",
    "duration": "VARCHAR",
    "upstream_host": "VARCHAR",
    "upstream_cluster": "VARCHAR",
    "caller_pod": "VARCHAR",
    "caller_service": "VARCHAR",
    "direction": "VARCHAR",
}


def sql_str(value: str | os.PathLike[str]) -> str:
    """A SQL string literal (file paths are interpolated: DuckDB table functions take no parameters there)."""
    return "'" + os.fspath(value).replace("'", "''") + "'"


def columns_sql(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{sql_str(k)}: {sql_str(v)}" for k, v in columns.items()) + "}"


def read_json_sql(paths: Path | list[Path], columns: dict[str, str], *, filename: bool = False) -> str:
    """`read_json(...)` over JSON-lines file(s) with fixed column types; malformed lines are skipped."""
    files = sql_str(paths) if isinstance(paths, Path) else "[" + ", ".join(sql_str(p) for p in paths) + "]"
    extra = ", filename=true" if filename else ""
    return (
        f"read_json({files}, format='newline_delimited', columns={columns_sql(columns)}, "
        f"ignore_errors=true, maximum_object_size=16777216{extra})"
    )
