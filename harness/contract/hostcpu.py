"""The host's CPU busy share, defined once: what `host.jsonl` records and what the probe budget holds.

`harness.observe.host` samples it into the run directory (the verdict's
`host:` note), and `harness.traffic.budget` measures it to size the zone
probes so that the harness's own load does not saturate the machine. Both
must mean the same thing by "busy", hence one definition here.
"""

from __future__ import annotations

from pathlib import Path

PROC_STAT = Path("/proc/stat")


def cpu_times(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None without /proc/stat."""
    try:
        with path.open() as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 4:  # not a cpu line (a stand-in read while it was rewritten): no reading, not a crash
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user..steal; guest time is already in user
    return total - idle, total


def busy_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the interval between two `cpu_times` readings that all CPUs together were busy.

    None when either reading is missing or no time passed (the counters tick
    at USER_HZ, so two readings inside one tick are equal).
    """
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
