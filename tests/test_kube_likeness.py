"""Where the kind/EKS backends meet real Kubernetes behaviour the fakes used to wave through.

Each test makes the simulated cluster (`tests.kubesim`) behave as a real one
does, with the source named, and shows the backend failing under it. Each failed on the
backend before its fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.chaos import actions
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import Tools, kind_backend
from tests.test_backend_kind import tools as tools  # the fake kind/docker/helm/kubectl on PATH

pytestmark = pytest.mark.slow

LAX = "us-west-2-lax-1a"


@pytest.mark.parametrize("action", ["kill_node", "zone_outage"])
def test_kill_node_returns_only_when_the_restarted_nodes_pods_run_again(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        monkeypatch.setattr(actions, "_backends", {})
        monkeypatch.setattr(actions, "connect", lambda opts: backend)
        monkeypatch.setattr(actions, "_snapshot", lambda b, label: None)  # counters are not what this is about
        monkeypatch.setenv("EH_RUN_DIR", str(tmp_path / "run"))
        os.makedirs(tmp_path / "run", exist_ok=True)
        # kind: `docker start` returns when the container runs; systemd, containerd and the kubelet boot after
        # (seconds). Scaled like the sim's other timings, but longer than one look of wait_ready (0.1 s).
        api.sim.t.node_boot_s = 3.0
        # A node-kill shorter than node-monitor-grace-period (real: 10 s default vs 40-50 s; sim: 0.3 vs 1 s).
        out = getattr(actions, action)(LAX, duration_s=0.3, configuration={})
        assert out.get("services_lost", out.get("services")), out  # the zone's only node: every service went
        not_running = api.sim.call(
            lambda: sorted(p["metadata"]["name"] for p in api.sim.pods_of(zone=LAX) if not api.sim._alive(p))
        )
        assert not_running == [], f"kill_node returned while {not_running} were still down"
    finally:
        backend.close()
