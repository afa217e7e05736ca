"""Observe: copy the sidecars' access logs out while a run goes on, then derive hops.

- `AccessLogCollector` (background thread) + `FileLogSource` (tail -F of one
  file) fill ``<run dir>/accesslogs/<pod>.jsonl`` with raw lines.
- `build_hops(run_dir)` joins those lines with ``inventory.jsonl`` (which pod
  held which IP when) into ``hops.jsonl`` (docs/CONTRACTS.md §4);
  `create_hops` builds the same table inside a caller's DuckDB connection
  (the verifier's), `resolve_ips` applies the same IP-at-time rule to other
  records.

The collector names are imported lazily: it needs the backend protocol
(`harness.backends.base.LogSource`), and the verifier, which imports
`harness.observe.hops`, must not import anything of the backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from harness.observe.collector import AccessLogCollector, CollectorError, FileLogSource, pod_file_name

_COLLECTOR = ("AccessLogCollector", "CollectorError", "FileLogSource", "pod_file_name")


def __getattr__(name: str) -> Any:
    if name in _COLLECTOR:
        from harness.observe import collector

        return getattr(collector, name)
    raise AttributeError(f"module 'harness.observe' has no attribute {name!r}")


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
