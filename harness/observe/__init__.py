"""Observe: copy the sidecars' access logs out while a run goes on, then derive hops.

- `AccessLogCollector` (background thread) + `FileLogSource` (tail -F of one
  file) fill ``<run dir>/accesslogs/<pod>.jsonl`` with raw lines.
- `build_hops(run_dir)` joins those lines with ``inventory.jsonl`` (which pod
  held which IP when) into ``hops.jsonl`` (docs/CONTRACTS.md §4);
  `create_hops` builds the same table inside a caller's DuckDB connection
  (the verifier's), `resolve_ips` applies the same IP-at-time rule to other
  records.

Observe imports nothing of the backends: the log-source type it polls is the
contract layer's (`harness.contract.logsource`).
"""

from __future__ import annotations

from harness.contract.logsource import FileLogSource
from harness.observe.collector import AccessLogCollector, CollectorError, pod_file_name
from harness.observe.hops import (
    ACCESSLOG_DIR,
    HOPS_FILE,
    INBOUND_SQL,
    INVENTORY_FILE,
    SLACK_S,
    HopsBuild,
    build_hops,
    create_hops,
    load_inventory,
    resolve_ips,
)

__all__ = [
    "ACCESSLOG_DIR",
    "HOPS_FILE",
    "INBOUND_SQL",
    "INVENTORY_FILE",
    "SLACK_S",
    "AccessLogCollector",
    "CollectorError",
    "FileLogSource",
    "HopsBuild",
    "build_hops",
    "create_hops",
    "load_inventory",
    "pod_file_name",
    "resolve_ips",
]
