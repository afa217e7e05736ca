"""A run directory holds everything of one run (see docs/CONTRACTS.md section 4).

It is the only thing the verifier and the report read, so a run copied from
another machine (or from CI's artifacts) can be judged again with
`harness verify RUN_DIR`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from harness.contract.clock import RUNNER_CLOCKS
from harness.contract.inventory import Inventory
from harness.contract.rundir import RUN_FILE

RUNS_ROOT = Path("runs")
RUN_STATUSES = ("running", "complete", "interrupted", "failed")


def new_run_dir(root: Path = RUNS_ROOT, label: str = "") -> Path:
    """`runs/<UTC timestamp>[-label]/`, unique even when two runs start in the same second."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    base = f"{stamp}-{label}" if label else stamp
    for i in range(1000):
        path = root / (base if i == 0 else f"{base}.{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {root}")


def copy_manifests(src: Path, run_dir: Path) -> Path:
    dst = run_dir / "manifests"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def write_inventory(inv: Inventory, path: Path) -> None:
    """Pod lifecycle events (added, removed) in time order, from an in-memory inventory."""
    events: list[tuple[float, str, dict[str, object]]] = []
    for p in inv.pods():
        base = {k: v for k, v in asdict(p).items() if k not in ("started", "ended")}
        events.append((p.started, "added", base))
        if p.ended is not None:
            events.append((p.ended, "removed", base))
    events.sort(key=lambda e: (e[0], e[1] != "added"))
    with path.open("w", encoding="utf-8") as fh:
        for ts, event, base in events:
            fh.write(json.dumps({"ts": ts, "event": event, **base}) + "\n")


def mark_run(
    run_dir: Path, stage: str | None = None, status: str = "running", runner_clock: str | None = None
) -> dict[str, object]:
    """Write `run_dir/run.json`: where the run is and whether it finished (docs/CONTRACTS.md §4).

    Called at every stage change, so a run killed at any point says where it
    stopped: the verifier marks the verdict of a run whose status is not
    `complete` (or that has no `ended`) as partial. `started` is kept from
    the first call; `ended` is set when the status leaves `running`. Written
    atomically (temp file + rename): a reader never sees half a file.

    `runner_clock` (given once, at the first call, then kept): whether the backend's nodes stamp their access
    logs with this machine's clock (`shared`: local, kind) or their own (`separate`: existing/EKS). It is the
    run's second word on it beside clock.jsonl, so a run whose clock.jsonl is lost is not judged as one clock.
    """
    if status not in RUN_STATUSES:
        raise ValueError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")
    if runner_clock is not None and runner_clock not in RUNNER_CLOCKS:
        raise ValueError(f"runner_clock {runner_clock!r} is not one of {', '.join(RUNNER_CLOCKS)}")
    path = Path(run_dir) / RUN_FILE
    now = time.time()
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            old = {}
    except (OSError, ValueError):
        old = {}
    data: dict[str, object] = {
        "started": old.get("started", now),
        "ended": None if status == "running" else now,
        "stage": stage if stage is not None else old.get("stage"),
        "status": status,
    }
    clock = runner_clock if runner_clock is not None else old.get("runner_clock")
    if clock is not None:
        data["runner_clock"] = clock
    tmp = path.with_name(f".{RUN_FILE}.tmp")
    tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
    tmp.replace(path)
    return data
