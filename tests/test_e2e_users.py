"""The whole loop with node-kill on the local backend: the killed zone's users stay on the record.

Users on kept-alive connections to a pod that died with its node used to hang
on the dead peer for locust's 60 s default, so no request entering the zone
was recorded from the fault to the end of the run and the verdict said
"failover not applicable". The entry point now resets those connections (as a
zone's load balancer does for a deregistered target) and locust's timeouts are
set; this run counts the zone's requests during and after the fault.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from harness.backends import BackendOptions
from harness.e2e import E2EOptions, run_e2e
from tests.conftest import REPO, leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow, pytest.mark.chaos]

LAX = "us-west-2-lax-1a"


@pytest.fixture(scope="module")
def e2e_node_kill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One e2e run with node-kill on the default topology (its single-node Local Zone loses its shop)."""
    runs = tmp_path_factory.mktemp("runs")
    opts = E2EOptions(
        topology=REPO / "fixtures" / "topology.yaml",
        experiments=[REPO / "experiments" / "node-kill.json"],
        runs_root=runs,
        warmup_s=4,
        cooldown_s=6,
    )
    res = run_e2e(opts, BackendOptions(name="local", cluster="ehrte2e"), say=lambda _m: None)
    assert leftovers("ehrte2e") == []
    return res.run_dir


def test_users_of_a_killed_zone_are_recorded_during_and_after_the_fault(e2e_node_kill: Path) -> None:
    run = e2e_node_kill
    faults = [json.loads(x) for x in (run / "chaos.jsonl").read_text().splitlines()]
    inject = next(f["ts"] for f in faults if f["phase"] == "inject")
    restore = next(f["ts"] for f in faults if f["phase"] == "restore")
    zone = faults[0]["zone"]
    assert zone == LAX
    reqs = [json.loads(x) for x in (run / "requests.jsonl").read_text().splitlines()]
    last = max(r["ts"] for r in reqs)
    during = [r for r in reqs if r["zone"] == zone and inject <= r["ts"] <= restore]
    after = [r for r in reqs if r["zone"] == zone and r["ts"] > restore]
    assert during, "no request entered the killed zone during the fault"
    assert sum(1 for r in during if not r["ok"]) > 0  # the entry was down: users saw it
    assert after and sum(1 for r in after if r["ok"]) > 10, "the zone's users never came back"
    assert last - max(r["ts"] for r in after) < 2.0  # ... and kept coming until the end
    entry = [json.loads(x) for x in (run / "entrypoints.jsonl").read_text().splitlines()]
    changes = [(e["up"], e["reason"]) for e in entry if e["zone"] == zone and e["ts"] >= inject]
    assert changes[:2] == [(False, "no ready frontend pod"), (True, "a ready frontend pod serves it")]


def test_e2e_run_directory_holds_plan_chaos_dir_and_snapshots(e2e_node_kill: Path) -> None:
    run = e2e_node_kill
    plan = json.loads((run / "plan.json").read_text())
    assert plan == {"experiments": [{"id": "01-node-kill", "file": str(REPO / "experiments" / "node-kill.json"),
                                     "actions": ["kill a node of a Local Zone"], "roles": {"zone": LAX}}]}  # fmt: skip
    d = run / "chaos" / "01-node-kill"
    assert json.loads((d / "journal.json").read_text())["status"] == "completed"
    ran = json.loads((d / "experiment.json").read_text())
    assert ran["configuration"] == {"zone": LAX}
    assert (d / "chaos.log").stat().st_size > 0
    fault = json.loads((run / "chaos.jsonl").read_text().splitlines()[0])["fault"]
    rows = [json.loads(x) for x in (run / "upstream-stats.jsonl").read_text().splitlines()]
    labels = list(dict.fromkeys(r["label"] for r in rows))
    assert labels == ["start", f"before {fault}", f"inject {fault}", f"restore {fault}", "end"]
    pods_before = {r["pod"] for r in rows if r["label"] == f"before {fault}"}
    pods_inject = {r["pod"] for r in rows if r["label"] == f"inject {fault}"}
    assert {p for p in pods_before - pods_inject} and all("lax-1a" in p for p in pods_before - pods_inject)


def test_the_probes_began_at_their_slowest_and_the_budget_stepped_them_up(e2e_node_kill: Path) -> None:
    """probe-budget.json was written before locust started: the zone's first probes came at the slowest
    period (0.5 s), and the budget's first window measured them there (harness.traffic.budget, from below)."""
    budget = json.loads((run := e2e_node_kill / "probe-budget.json").read_text())
    assert budget["windows"][0]["scale"] == pytest.approx(0.5 / 0.03, rel=0.01), run
    assert budget["reason"] != "measuring" and budget["scale"] <= budget["windows"][0]["scale"]
    reqs = [json.loads(x) for x in (e2e_node_kill / "requests.jsonl").read_text().splitlines()]
    probes = sorted(r["ts"] for r in reqs if r["endpoint"] == "probe" and r["zone"] == LAX)
    first = [b - a for a, b in itertools.pairwise(probes[:3])]
    assert len(first) == 2 and min(first) > 0.4, probes[:3]
