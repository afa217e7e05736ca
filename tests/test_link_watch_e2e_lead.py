"""e2e answers a degradation that follows its own experiment's earlier fault on the link (t55a's watcher).

e2e holds an experiment whose first fault on a link degrades it (`wait_link_baseline`); t55a made a game day's
`harness chaos` answer the action's question when an earlier fault reached the link (`LinkBaselineWatcher`). An
operator's experiment run by e2e that kills LAX's product-api and then slows LAX's link reached the link itself:
no hold before the experiment can cover it, and e2e ran no watcher, so its degradation began with no baseline
when the kill's recovery was slow ("not shown" on a correct mesh, by timing). e2e now runs the watcher for such
an experiment only: the shipped ones never reach a link before they degrade it, and a watcher would make each
of their degradations ask for a baseline the hold has just put on record (a records read on the critical path).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from pathlib import Path

import pytest

from harness.chaos.experiment import SHIPPED_EXPERIMENTS, PlannedExperiment, plan_experiment
from harness.contract import linkwatch
from harness.topology import load_topology
from tests.test_verify_soundness import LAS, LAX, T

REPO = Path(__file__).resolve().parents[1]


def _service_link() -> PlannedExperiment:
    return plan_experiment(SHIPPED_EXPERIMENTS / "service-link.json", T)


def test_e2e_answers_a_degradation_after_its_own_experiments_kill_on_the_link(tmp_path: Path) -> None:
    """FINDING. Kill LAX's product-api, then slow LAX's link, in one experiment run by e2e: the watcher runs
    while it does (the action finds it and asks, as a game day's does), and is gone after."""
    from harness.e2e import LinkBaselineWatcher, link_watch  # base: e2e ran no watcher

    p = _service_link()
    own = replace(p, steps=[("kill_pod", [LAX]), *p.steps])
    watch = link_watch(tmp_path, T, own, lambda _m: None, held=True)
    assert isinstance(watch, LinkBaselineWatcher)
    with watch:
        assert linkwatch.watching(tmp_path) == os.getpid()  # degrade_link's `_answered_baseline` asks it
    assert linkwatch.watching(tmp_path) is None


@pytest.mark.parametrize(
    ("before", "after_own"),
    [
        ([], []),  # service-link as shipped: its degradation comes first (e2e's hold covers it)
        ([("kill_pod", [LAS])], []),  # another Local Zone's fault cannot reach LAX's link (hub-and-spoke)
        ([("kill_pod", [LAX])], [LAX]),
    ],
)
def test_degraded_after_own_follows_reaches_link(before: list[tuple[str, list[str]]], after_own: list[str]) -> None:
    from harness.e2e import degraded_after_own, degraded_first

    p = _service_link()
    q = replace(p, steps=[*before, *p.steps])
    assert degraded_after_own(q, T) == after_own
    assert degraded_first(q, T) == ([] if after_own else [LAX])  # one or the other, never both, for one degrade


def test_a_region_fault_before_the_degradation_reaches_every_links_baseline() -> None:
    from harness.e2e import degraded_after_own

    region = next(z.name for z in T.zones if not z.is_edge)
    p = _service_link()
    assert degraded_after_own(replace(p, steps=[("kill_pod", [region]), *p.steps]), T) == [LAX]


@pytest.mark.parametrize("topology", ["topology.yaml", "topology-wide.yaml"])
def test_control_the_shipped_experiments_run_without_a_watcher(topology: str, tmp_path: Path) -> None:
    """Control: no shipped experiment reaches a link before it degrades it, on the default and the wide topology:
    e2e runs them as before (no watcher, no question asked, nothing on the critical path)."""
    from harness.e2e import link_watch

    t = load_topology(REPO / "fixtures" / topology)
    for f in sorted(SHIPPED_EXPERIMENTS.glob("*.json")):
        p = plan_experiment(f, t)
        assert isinstance(link_watch(tmp_path, t, p, lambda _m: None, held=True), contextlib.nullcontext), f.name
