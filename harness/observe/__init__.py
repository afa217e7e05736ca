"""Observe: copy the sidecars' access logs out while a run goes on, then derive hops.

- `AccessLogCollector` (background thread) + `FileLogSource` (tail -F of one
  file) fill ``<run dir>/accesslogs/<pod>.jsonl`` with raw lines.
- `build_hops(run_dir)` joins those lines with ``inventory.jsonl`` (which pod
  held which IP when) into ``hops.jsonl`` (docs/CONTRACTS.md §4).
"""

from harness.observe.collector import AccessLogCollector, CollectorError, FileLogSource, pod_file_name
from harness.observe.hops import ACCESSLOG_DIR, HOPS_FILE, INVENTORY_FILE, SLACK_S, build_hops

__all__ = [
    "ACCESSLOG_DIR",
    "HOPS_FILE",
    "INVENTORY_FILE",
    "SLACK_S",
    "AccessLogCollector",
    "CollectorError",
    "FileLogSource",
    "build_hops",
    "pod_file_name",
]
