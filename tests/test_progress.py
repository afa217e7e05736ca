"""`harness e2e` progress: phase, current fault and time left, live on a terminal, plain lines in CI logs.

The display reads the run directory as the run writes it, so these tests
write it the way `run_e2e` (run.json via `mark_run`) and the chaos process
(`chaos/<id>/`, `chaos.jsonl`, the journal) do, step by step, with a fake
clock, and read what the user would see.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import harness.e2e
from harness.chaos.experiment import plan_experiment
from harness.cli import main
from harness.errors import InputError
from harness.progress import (
    ACTIVITY_OVERHEAD_S,
    EXPERIMENT_OVERHEAD_S,
    HEARTBEAT_S,
    E2EProgress,
    estimate_experiment_s,
)
from harness.run import mark_run
from harness.topology import load_topology

REPO = Path(__file__).resolve().parents[1]
LAX = "us-west-2-lax-1a"
ANSI = re.compile(r"\x1b\[")


@dataclass
class Planned:
    id: str
    data: dict[str, Any]


EXP = {
    "steady-state-hypothesis": {"probes": [{"type": "probe", "name": "ready", "provider": {"type": "python"}}]},
    "method": [{"type": "action", "name": "kill a node", "pauses": {"after": 4},
                "provider": {"type": "python", "module": "harness.chaos.actions", "func": "kill_node",
                             "arguments": {"zone": LAX, "duration_s": 8}}}],
    "rollbacks": [{"type": "action", "name": "restore", "provider": {"type": "python",
                   "module": "harness.chaos.actions", "func": "restore_node", "arguments": {"zone": LAX}}}],
}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_estimate_counts_pauses_fault_holds_and_a_cost_per_activity() -> None:
    # probe twice (before and after), the action (8 s hold + 4 s pause), the rollback
    assert estimate_experiment_s(EXP) == EXPERIMENT_OVERHEAD_S + 4 * ACTIVITY_OVERHEAD_S + 8 + 4
    # no duration_s given: the action's own default (zone_outage holds 10 s), read from its signature
    outage = {"method": [{"provider": {"module": "harness.chaos.actions", "func": "zone_outage", "arguments": {}}}]}
    assert estimate_experiment_s(outage) == EXPERIMENT_OVERHEAD_S + ACTIVITY_OVERHEAD_S + 10


@pytest.mark.parametrize("path", sorted((REPO / "experiments").glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_experiment_is_estimated_at_least_its_own_holds_and_pauses(path: Path) -> None:
    p = plan_experiment(path, load_topology(REPO / "fixtures" / "topology.yaml"), None)
    floor = 0.0
    for act in p.data["method"]:
        floor += float((act.get("pauses") or {}).get("after") or 0)
        floor += float((act["provider"].get("arguments") or {}).get("duration_s") or 0)
    assert estimate_experiment_s(p.data) > floor


def _chaos_line(run: Path, **rec: Any) -> None:
    with (run / "chaos.jsonl").open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


def test_plain_lines_when_not_a_terminal(tmp_path: Path) -> None:
    buf = StringIO()
    clock = Clock()
    prog = E2EProgress(Console(file=buf, force_terminal=False, width=200), clock=clock)
    assert prog.live is False  # a file is not a terminal: plain lines
    run = tmp_path / "run"
    run.mkdir()
    est = estimate_experiment_s(EXP)
    prog.start(run, [Planned("01-node-kill", EXP)], warmup_s=8, cooldown_s=6, watch=False)
    mark_run(run, "up")
    assert prog.poll() == ["phase: bringing the cluster up"]  # no time left before the cluster is up
    mark_run(run, "traffic")
    assert prog.poll() == [f"phase: traffic: warm-up (≈{8 + est + 6:.0f} s left)"]
    clock.now += 8
    mark_run(run, "chaos")
    (run / "chaos" / "01-node-kill").mkdir(parents=True)
    _chaos_line(run, ts=clock.now, fault="kill-node-lax-1a-ab12", phase="inject", zone=LAX, kind="zone-down")
    assert prog.poll() == [
        "phase: chaos",
        "experiment 01-node-kill started",
        f"fault kill-node-lax-1a-ab12 injected in {LAX} (zone-down) (≈{est + 6:.0f} s left)",
    ]
    clock.now += 5
    assert prog.poll() == []  # nothing changed, no heartbeat yet
    clock.now += HEARTBEAT_S
    (beat,) = prog.poll()
    assert beat == (
        f"progress: chaos: experiment 01-node-kill (1/1); active fault: kill-node-lax-1a-ab12 in {LAX} "
        f"(≈{max(0, est - 5 - HEARTBEAT_S) + 6:.0f} s left)"
    )
    _chaos_line(run, ts=clock.now, fault="kill-node-lax-1a-ab12", phase="restore", zone=LAX, kind="zone-down")
    (run / "chaos" / "01-node-kill" / "journal.json").write_text("{}")
    clock.now += 1
    assert prog.poll() == ["experiment 01-node-kill finished", "fault kill-node-lax-1a-ab12 restored (≈6 s left)"]
    mark_run(run, "cooldown")
    clock.now += 2
    prog.stop()  # the last change is printed by stop's final poll
    out = buf.getvalue()
    assert re.search(r"^\d\d:\d\d:\d\d phase: cooldown \(≈6 s left\)$", out, re.M), out
    assert not ANSI.search(out) and "\r" not in out  # CI logs: no colour codes, no cursor movement


def test_a_fault_injected_and_restored_between_two_polls_shows_both(tmp_path: Path) -> None:
    prog = E2EProgress(Console(file=StringIO(), force_terminal=False), clock=Clock())
    run = tmp_path / "run"
    run.mkdir()
    prog.start(run, [], warmup_s=0, cooldown_s=0, watch=False)
    for i in range(3):  # a burst of pod kills, each back before the next poll
        _chaos_line(run, ts=1.0 + i, fault=f"kill-{i}", phase="inject", zone=LAX, kind="service-down")
        _chaos_line(run, ts=1.5 + i, fault=f"kill-{i}", phase="restore", zone=LAX, kind="service-down")
    assert prog.poll() == [
        line
        for i in range(3)
        for line in (f"fault kill-{i} injected in {LAX} (service-down)", f"fault kill-{i} restored")
    ]
    assert prog.headline() == "starting"  # nothing active any more


def test_a_half_written_timeline_line_is_read_on_the_next_poll(tmp_path: Path) -> None:
    prog = E2EProgress(Console(file=StringIO(), force_terminal=False), clock=Clock())
    run = tmp_path / "run"
    run.mkdir()
    prog.start(run, [], warmup_s=0, cooldown_s=0, watch=False)
    (run / "chaos.jsonl").write_text('{"ts": 1, "fault": "f", "phase": "inj')
    assert prog.poll() == []
    (run / "chaos.jsonl").write_text('{"ts": 1, "fault": "f", "phase": "inject", "zone": "z", "kind": "partition"}\n')
    assert prog.poll() == ["fault f injected in z (partition)"]


def test_live_panel_on_a_terminal_shows_phase_experiments_fault_and_time_left(tmp_path: Path) -> None:
    buf = StringIO()
    clock = Clock()
    prog = E2EProgress(Console(file=buf, force_terminal=True, width=120), clock=clock)
    assert prog.live is True
    run = tmp_path / "run"
    run.mkdir()
    second = {"method": [{"provider": {"module": "harness.chaos.actions", "func": "zone_outage", "arguments": {}}}]}
    prog.start(run, [Planned("01-node-kill", EXP), Planned("02-zone-outage", second)], 8, 6, watch=False)
    mark_run(run, "chaos")
    (run / "chaos" / "01-node-kill").mkdir(parents=True)
    _chaos_line(run, ts=clock.now - 3, fault="kill-node-x", phase="inject", zone=LAX, kind="zone-down")
    prog.say("chaos: 01-node-kill (experiments/node-kill.json)")
    prog.poll()
    panel = Console(file=StringIO(), width=120, record=True, force_terminal=False)
    panel.print(prog.render())
    text = panel.export_text()
    left = estimate_experiment_s(EXP) + estimate_experiment_s(second) + 6
    assert f"e2e chaos: experiment 01-node-kill (1/2)   ≈{left:.0f} s left" in text  # faults on lines of their own
    assert re.search(r"running\s+01-node-kill\s+0 s of ≈\d+ s", text), text
    outage_s = EXPERIMENT_OVERHEAD_S + ACTIVITY_OVERHEAD_S + 10
    assert re.search(rf"to come\s+02-zone-outage\s+≈{outage_s:.0f} s", text), text
    assert f"fault kill-node-x: zone-down in {LAX}, 3 s" in text
    prog.stop()
    out = buf.getvalue()
    assert "chaos: 01-node-kill (experiments/node-kill.json)" in out  # the run's own lines stay above the panel
    assert ANSI.search(out)  # a terminal: colours and the live panel's cursor control


def test_harness_e2e_drives_the_progress_from_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI hands run_e2e a callback that starts watching the run directory, and stops it however the run ends."""
    seen: dict[str, Any] = {}

    def fake_run_e2e(opts: Any, bopts: Any, say: Any, on_start: Any) -> None:
        run = tmp_path / "run"
        run.mkdir()
        say(f"run directory: {run}")
        on_start(run, [Planned("01-node-kill", EXP)])
        mark_run(run, "chaos")
        seen["warmup"] = opts.warmup_s
        raise InputError("experiments/x.json", "method[0]", "stop here")  # ends the run; progress must still stop

    monkeypatch.setattr(harness.e2e, "run_e2e", fake_run_e2e)
    assert main(["e2e", "--backend", "local", "--warmup", "3"]) == 2
    out = capsys.readouterr().out
    assert "run directory:" in out and re.search(r"phase: chaos \(≈\d+ s left\)", out), out
    assert seen["warmup"] == 3
