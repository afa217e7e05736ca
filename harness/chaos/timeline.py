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
from pathlib import Path
from typing import Any

from harness.contract.rundir import CHAOS_FILE, FaultKind
from harness.topology import ENTRY_SERVICE

__all__ = ["FaultKind", "record", "records", "takes_entry_down", "timeline_path"]


def timeline_path() -> Path | None:
    run_dir = os.environ.get("EH_RUN_DIR")
    return Path(run_dir) / CHAOS_FILE if run_dir else None


def records(path: Path) -> list[dict[str, Any]]:
    """The timeline's fault records so far, in order: a line being written right now (no JSON yet) or one that is no
    fault record is left out (the verdict names such lines; a reader while chaos runs sees the next poll's)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and "fault" in rec:
            out.append(rec)
    return out


def takes_entry_down(kind: FaultKind, services: list[str] | None) -> bool:
    """Can users entering the fault's zone be served? Not when it takes the zone's entry service down, the whole
    zone (zone-down) or its way to the Region (partition): the one rule every action's `entry_down` follows."""
    return kind in (FaultKind.ZONE_DOWN, FaultKind.PARTITION) or ENTRY_SERVICE in (services or [])


def record(
    fault: str,
    phase: str,
    action: str,
    zone: str,
    kind: FaultKind,
    services: list[str] | None = None,
    entry_down: bool | None = None,
    path: Path | None = None,
    ts: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Append one timeline line (to $EH_RUN_DIR/chaos.jsonl unless `path` is given); `ts` defaults to now.

    `entry_down` is the inject's `takes_entry_down` unless given; a restore line's is false.
    """
    if entry_down is None:
        entry_down = phase == "inject" and takes_entry_down(kind, services)
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
        line = (json.dumps(rec) + "\n").encode()
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # one write, so concurrent writers never interleave within a line; a short one (a full disk) left a
            # torn line the verdict fails as unread, and must fail the action that recorded it here too, not
            # let it run on as if its fault were on record (the rest is not written after: another writer's
            # line may already follow)
            written = os.write(fd, line)
        finally:
            os.close(fd)
        if written != len(line):
            raise OSError(f"{target}: wrote {written} of {len(line)} bytes of the {phase} line of {fault}")
    return rec
