"""The chaos timeline: one JSON line per fault injection and restore.

The verifier reads only this file to know when each fault started and ended and
what it should expect (see docs/CONTRACTS.md "chaos.jsonl"), so every action that
breaks something records it here *before* it acts, and its restore *before* the
primitive that undoes it (a verdict must not depend on which of two threads,
the action or the traffic, wrote first). A fault that heals by itself (a killed
pod replaced by its Deployment) is restored at the `ts` of the replacement's
`ready` inventory event, passed in as `ts`.
Lines are appended and flushed one by one: a run interrupted by Ctrl-C keeps
everything that happened up to then.
"""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.contract.rundir import CHAOS_FILE


class FaultKind(StrEnum):
    SERVICE_DOWN = "service-down"  # the listed services have no live instance left in the zone
    ZONE_DOWN = "zone-down"  # every node of the zone is down
    LINK_DEGRADED = "link-degraded"  # latency / loss on the zone's service link
    PARTITION = "partition"  # the zone is cut off from the Region


def timeline_path() -> Path | None:
    run_dir = os.environ.get("EH_RUN_DIR")
    return Path(run_dir) / CHAOS_FILE if run_dir else None


def record(
    fault: str,
    phase: str,
    action: str,
    zone: str,
    kind: FaultKind,
    services: list[str] | None = None,
    entry_down: bool = False,
    path: Path | None = None,
    ts: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Append one timeline line (to $EH_RUN_DIR/chaos.jsonl unless `path` is given); `ts` defaults to now."""
    rec = {
        "ts": time.time() if ts is None else ts,
        "fault": fault,
        "phase": phase,
        "action": action,
        "zone": zone,
        "kind": kind.value,
        "services": list(services or []),
        "entry_down": entry_down,
        **extra,
    }
    target = path or timeline_path()
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(rec) + "\n").encode())
        finally:
            os.close(fd)
    return rec
