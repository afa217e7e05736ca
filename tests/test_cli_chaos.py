"""`harness chaos` and `harness e2e` refuse bad experiments before anything starts, and gate on the journal.

A fake backend stands in where a cluster would be: these are the CLI's
decisions (exit codes, one line, nothing created), not the backend's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness.backends
import harness.chaos
from harness.backends import BackendOptions
from harness.backends.base import CHAOS_PRIMITIVES, Status
from harness.chaos import ChaosResult
from harness.cli import main
from harness.e2e import E2EOptions, run_e2e
from harness.errors import BackendError, InputError
from harness.topology import load_topology
from tests.conftest import REPO

TOPOLOGY = REPO / "fixtures" / "topology.yaml"


class UpBackend:
    """A cluster that is up with the default topology; records what was asked of it."""

    name = "local"

    def __init__(self, caps: frozenset[str] = CHAOS_PRIMITIVES) -> None:
        self.caps = caps
        self.calls: list[str] = []

    class _M:
        topology = load_topology(TOPOLOGY)

    def status(self) -> Status:
        return Status("local", True, "16 pods")

    def manifests(self) -> Any:
        return self._M()

    def capabilities(self) -> frozenset[str]:
        return self.caps

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """As `Backend.require_capability`: BackendError saying why."""
        if primitive not in self.caps:
            raise BackendError(f"the local backend cannot {primitive} on this cluster")

    def up(self, *a: Any, **k: Any) -> None:
        self.calls.append("up")

    def down(self) -> None:
        self.calls.append("down")

    def close(self) -> None:
        self.calls.append("close")


def _experiment(tmp_path: Path, zone: str, func: str = "kill_pod", **args: Any) -> Path:
    f = tmp_path / "exp.json"
    prov = {"type": "python", "module": "harness.chaos.actions", "func": func, "arguments": {"zone": zone, **args}}
    act = {"type": "action", "name": "break it", "provider": prov}
    f.write_text(json.dumps({"title": "t", "description": "d", "method": [act]}))
    return f


@pytest.fixture
def up(monkeypatch: pytest.MonkeyPatch) -> UpBackend:
    b = UpBackend()
    monkeypatch.setattr(harness.backends, "connect", lambda opts: b)
    return b


def test_chaos_with_no_cluster_up_exits_3_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EH_STATE_ROOT", str(tmp_path / "state"))
    import harness.backends.local.backend as lb

    monkeypatch.setattr(lb, "DEFAULT_STATE_ROOT", tmp_path / "state")
    exp = REPO / "experiments" / "kill-product-api-lax.json"
    rc = main(["chaos", "--backend", "local", "--cluster", "nocl", str(exp)])
    err = capsys.readouterr().err.strip()
    assert rc == 3 and len(err.splitlines()) == 1, err
    assert "not up" in err
    assert not (tmp_path / "runs").exists()


def test_chaos_naming_a_zone_that_does_not_exist_exits_2_and_creates_nothing(
    tmp_path: Path, up: UpBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    exp = _experiment(tmp_path, "us-west-2-sea-1a", service="product-api")
    rc = main(["chaos", "--backend", "local", str(exp)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (
        f"{exp}: method[0].provider.arguments.zone: zone 'us-west-2-sea-1a' is not in the topology "
        "(us-west-2-las-1a, us-west-2-lax-1a, us-west-2-phx-2a, us-west-2-wl1-sfo-wlz-1, us-west-2a, us-west-2b)"
    )
    assert not (tmp_path / "runs").exists() and "close" in up.calls


def test_chaos_refuses_a_fault_the_cluster_cannot_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    b = UpBackend(CHAOS_PRIMITIVES - {"set_link"})
    monkeypatch.setattr(harness.backends, "connect", lambda opts: b)
    monkeypatch.chdir(tmp_path)
    exp = _experiment(tmp_path, "us-west-2-lax-1a", func="degrade_link", latency_ms=50)
    assert main(["chaos", "--backend", "local", str(exp)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"{exp}: method[0].provider.func: degrade_link: the local backend cannot set_link on this cluster"
    )
    assert not (tmp_path / "runs").exists()


def test_chaos_exit_code_follows_the_judged_journal(
    tmp_path: Path, up: UpBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    why = "steady state before the method did not hold (probe 'shop' answered 503, outside its tolerance)"
    ran: list[Path] = []

    def fake_run(p: Any, run_dir: Path, opts: BackendOptions, timeout_s: float = 900) -> ChaosResult:
        ran.append(run_dir)
        assert (run_dir / "plan.json").exists()  # the plan is on disk before the experiment starts
        return ChaosResult(p.id, "completed", False, run_dir / "chaos" / p.id / "journal.json", 0, why)

    monkeypatch.setattr(harness.chaos, "run_planned", fake_run)
    exp = _experiment(tmp_path, "us-west-2-lax-1a", service="product-api")
    rc = main(["chaos", "--backend", "local", str(exp), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith(f"chaos: 01-exp: {why}") and len(err.splitlines()) == 1
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["experiments"][0]["actions"] == ["break it"]


def test_e2e_refuses_a_bad_experiment_before_the_run_directory_and_the_cluster(tmp_path: Path, up: UpBackend) -> None:
    exp = REPO / "experiments" / "edge-outage.json"
    narrow = tmp_path / "two-lz.yaml"
    doc = yaml.safe_load(TOPOLOGY.read_text())
    doc["zones"] = [z for z in doc["zones"] if z["name"] not in ("us-west-2-phx-2a", "us-west-2-wl1-sfo-wlz-1")]
    narrow.write_text(yaml.safe_dump(doc))
    assert len(load_topology(narrow).edge_zones) == 2
    opts = E2EOptions(topology=narrow, experiments=[exp], runs_root=tmp_path / "runs")
    with pytest.raises(InputError, match=r"edge-outage.json: configuration: 'an edge zone': the topology has 2 edge"):
        run_e2e(opts, BackendOptions(name="local"), say=lambda _m: None)
    assert not (tmp_path / "runs").exists() and "up" not in up.calls
