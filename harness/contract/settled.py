"""When a run's traffic has settled: the probe budget's decision, after which the probes keep one rate.

Before it, the shop is cold and the probes are being stepped (harness.traffic.budget measures the machine
with them), so the hops then take longer than at any later steady moment: measured on this 2-core machine,
104 ms against 49 ms at the median for the hops that wait on a Local Zone's service link. A degraded link is
judged against a baseline of those hops (harness.verify.invariants.users `_link_not_slowed`); read from the
warm-up, a link that did slow by its declared latency was "not shown" on a slow machine. So the verdict reads
that baseline only from the settled run, and e2e's warm-up makes sure the settled run has one before a
degradation that is the first fault to reach its link (the degradation waits for it:
harness.chaos.actions `degrade_link`; after a fault that reached the link, e2e waits for that fault's recovery
and a baseline after it before the experiment: harness.e2e `wait_link_baseline`). Both sides take their figures
from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class _Zones(Protocol):
    """What `reaches_link` asks of a topology (`harness.topology.Topology`, not imported: this module travels with
    the locustfile into the zones' pods, where only its own modules and the standard library are)."""

    def zone(self, name: str) -> Any: ...


MEASURING = "measuring"  # probe-budget.json's reason until the budget has decided (harness.traffic.budget)
SWITCH_S = 0.25  # after a new factor: every probe has re-read the file (within 2 x its check) and runs at its period
LINK_BASELINE_HOPS = 5
"""The fewest hops that wait on a link a degradation's baseline (and its own stretch) is judged on; the first
degradation of a zone's link waits for as many successful requests through the shop's API of the zone once the run
has settled."""
BASELINE_STALL_S = 8.0
"""How long that wait goes on while the zone gains no such request (then the link is degraded anyway, and the
verdict says what it leaves unverified): e2e's warm-up bound, for the same question."""


def reaches_link(t: _Zones, fault_zone: str, zone: str) -> bool:
    """A fault of `fault_zone` can change how long `zone`'s hops that wait on its service link take: a fault of
    the zone itself or of the Region (where those hops go). A fault of another Local Zone cannot (hub-and-spoke);
    a zone the topology does not know is judged as strictly as an edge zone, as the verifier judges it."""
    if fault_zone == zone:
        return True
    try:
        return not t.zone(fault_zone).is_edge
    except KeyError:
        return False


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
