"""When a run's traffic has settled: the probe budget's decision, after which the probes keep one rate.

Before it, the shop is cold and the probes are being stepped (harness.traffic.budget measures the machine
with them), so the hops then take longer than at any later steady moment: measured on this 2-core machine,
104 ms against 49 ms at the median for the hops that wait on a Local Zone's service link. A degraded link is
judged against a baseline of those hops (harness.verify.invariants.users `_link_not_slowed`); read from the
warm-up, a link that did slow by its declared latency was "not shown" on a slow machine. So the verdict reads
that baseline only from the settled run, and e2e's warm-up makes sure the settled run has one before a
degradation that is the first fault to reach its link (harness.e2e `link_baseline_need`). Both sides take
their figures from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MEASURING = "measuring"  # probe-budget.json's reason until the budget has decided (harness.traffic.budget)
SWITCH_S = 0.25  # after a new factor: every probe has re-read the file (within 2 x its check) and runs at its period
LINK_BASELINE_HOPS = 5
"""The fewest hops that wait on a link a degradation's baseline (and its own stretch) is judged on; e2e asks for
as many successful requests through the shop's API of the zone once the run has settled."""


def settled_at(record: Mapping[str, Any]) -> float | None:
    """When the probes run at the probe budget's decided rate: its last window's end plus `SWITCH_S` (the
    decision is written as that window ends, and the probes take up to `SWITCH_S` to re-read it).

    None when the record shows no decision made by measuring: still `MEASURING` (the run stopped before the
    budget decided), or no window (no zone probed, no CPU reading): then nothing was stepped by a window, and
    the run has no settled instant to read from the records (a baseline is read as before). Malformed: None.
    """
    try:
        if record.get("reason") == MEASURING:
            return None
        windows = record.get("windows") or []
        if not windows:
            return None
        return float(windows[-1]["end"]) + SWITCH_S
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return None
