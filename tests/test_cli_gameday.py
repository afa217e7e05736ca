"""The game-day flow through the CLI on the local backend, command by command.

up → status → traffic (recording a run directory) with chaos from another
"terminal" into the same directory → verify → report → down. Every command is
a separate process, as an operator would run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.render import render
from harness.topology import load_topology
from tests.conftest import REPO, leftovers

CLUSTER = "ehcli"


def harness(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def _rendered_pods() -> int:
    """Pods the default topology's Deployments ask for (the topology file, not a number written here)."""
    objs = [o for objs in render(load_topology()).k8s.values() for o in objs]
    return sum(int(o["spec"].get("replicas", 1)) for o in objs if o.get("kind") == "Deployment")


@pytest.mark.local  # the game day itself; the bad-input test below needs no root
@pytest.mark.slow
@pytest.mark.chaos
def test_gameday_flow(tmp_path: Path) -> None:
    backend = ["--backend", "local", "--cluster", CLUSTER]
    run = tmp_path / "runs" / "gameday"
    try:
        up = harness("up", *backend, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "us-west-2-lax-1a" in up.stdout and "http://127.0.0.1:" in up.stdout
        st = harness("status", *backend, "--json", cwd=tmp_path)
        assert st.returncode == 0, st.stderr
        pods = json.loads(st.stdout)["pods"]
        assert len(pods) == _rendered_pods() and set(pods.values()) == {"Ready"}
        answering = {e["zone"] for e in json.loads(st.stdout)["entrypoints"] if e["answers"] and e["status"] == 200}
        assert answering == {z.name for z in load_topology().zones}  # every zone's shop answers

        traffic = subprocess.Popen(
            [sys.executable, "-m", "harness", "traffic", *backend, "--users", "6", "--duration", "22",
             "--run-dir", str(run)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        time.sleep(6)
        chaos = harness("chaos", *backend, str(REPO / "experiments" / "kill-product-api-lax.json"), "--run-dir",
                        str(run), cwd=tmp_path)  # fmt: skip
        assert chaos.returncode == 0, chaos.stdout + chaos.stderr
        # chaostoolkit's journal and log are in the run directory, not where the operator stands
        assert not (tmp_path / "chaostoolkit.log").exists() and not (tmp_path / "journal.json").exists()
        assert (run / "chaos" / "01-kill-product-api-lax" / "chaos.log").stat().st_size > 0
        out, _ = traffic.communicate(timeout=120)
        assert traffic.returncode == 0, out
        assert "requests" in out

        verify = harness("verify", str(run), cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "Verdict: PASS" in verify.stdout
        verdict = json.loads((run / "verdict.json").read_text())
        assert verdict["passed"] and len(verdict["faults"]) == 1
        report = harness("report", str(run), cwd=tmp_path)
        assert report.returncode == 0, report.stderr
        assert (run / "report.html").stat().st_size > 10_000 and (run / "junit.xml").exists()
        assert any((run / "artifacts" / "pods").iterdir())
    finally:
        down = harness("down", *backend, cwd=tmp_path)
        assert down.returncode == 0, down.stderr
    assert leftovers(CLUSTER) == []
    # a second down is harmless, and so is status of a cluster that is gone
    assert harness("down", *backend, cwd=tmp_path).returncode == 0
    gone = harness("status", *backend, cwd=tmp_path)
    assert gone.returncode == 3 and "down" in gone.stdout


def test_bad_experiment_and_unknown_run_dir_are_input_errors(tmp_path: Path) -> None:
    bad = tmp_path / "e.json"
    bad.write_text("{")
    r = harness("chaos", "--backend", "local", "--cluster", CLUSTER, str(bad), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith(f"{bad}: line 1: JSON syntax error")
    assert not (tmp_path / "runs").exists()  # nothing half-started
    r = harness("verify", str(tmp_path / "nope"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"{tmp_path / 'nope'}: not a run directory"
