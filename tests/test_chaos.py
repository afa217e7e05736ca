"""Chaos: experiments are valid chaostoolkit files; actions record the timeline around each fault."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.backends.base import Inventory, PodInfo, Status
from harness.chaos import actions, check_experiment
from harness.errors import BackendError, InputError

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "experiments").glob("*.json"))
LAX = "us-west-2-lax-1a"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_experiment_validates_with_chaostoolkit(path: Path) -> None:
    check_experiment(path)
    chaos = Path(sys.executable).with_name("chaos")
    r = subprocess.run([str(chaos), "--no-log-file", "validate", str(path)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(path.read_text())
    # every destructive action has a way back: a rollback, or it restores by itself (kill_pod waits for the replacement)
    funcs = {a["provider"]["func"] for a in data["method"]}
    rollbacks = {a["provider"]["func"] for a in data.get("rollbacks", [])}
    pairs = {"make_unready": "make_ready", "kill_node": "restore_node", "zone_outage": "restore_zone",
             "degrade_link": "clear_link", "partition_zone": "heal_zone"}  # fmt: skip
    for f in funcs & pairs.keys():
        assert pairs[f] in rollbacks, f"{path.name}: {f} without rollback {pairs[f]}"


@pytest.mark.parametrize(
    ("text", "field"),
    [("{", "line 1"), ("[]", ""), ('{"title": "x"}', "method"),
     ('{"title":"x","method":[{"provider":{"type":"python","module":"os","func":"system"}}]}',
      "method[0].provider.module")],
    ids=["syntax", "not-object", "no-method", "foreign-module"],
)  # fmt: skip
def test_bad_experiment_is_input_error(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "e.json"
    f.write_text(text)
    with pytest.raises(InputError) as exc:
        check_experiment(f)
    assert str(exc.value).startswith(f"{f}: {field}")


class FakeBackend:
    """Enough of the protocol for the actions: a zone whose pods die and come back."""

    name = "fake"

    def __init__(self) -> None:
        self.inv = Inventory()
        self.n = 0
        self.calls: list[tuple[str, Any]] = []
        self.replace_at: float | None = None
        self.unready_until = 0.0
        self._add("product-api")
        self._add("frontend")

    def _add(self, service: str) -> None:
        self.n += 1
        self.inv.added(
            PodInfo(
                f"{service}-{self.n}",
                f"10.0.0.{self.n}",
                "lax-1a-n1",
                LAX,
                service,
                f"{service}-lax-1a",
                "ns",
                time.time(),
            )
        )

    def require_capability(self, primitive: str) -> None:
        """Every fault is possible on this fake (the actions ask before they record an inject)."""

    def status(self) -> Status:
        if self.replace_at is not None and time.time() >= self.replace_at:
            self.replace_at = None
            self._add("product-api")
        phase = "Ready" if time.time() >= self.unready_until else "NotReady"
        return Status("fake", True, "", {p.pod: phase for p in self.inv.pods(alive_only=True)})

    def inventory(self) -> Inventory:
        return self.inv

    def nodes(self) -> dict[str, str]:
        return {"lax-1a-n1": LAX}

    def kill_pod(self, zone: str, service: str) -> list[str]:
        self.calls.append(("kill_pod", (zone, service)))
        victims = [p.pod for p in self.inv.pods(alive_only=True) if p.service == service]
        for v in victims:
            self.inv.removed(v)
        self.replace_at = time.time() + 0.3
        return victims

    def kill_node(self, node: str) -> None:
        self.calls.append(("kill_node", node))
        for p in self.inv.pods(alive_only=True):
            self.inv.removed(p.pod)

    def partition_zone(self, zone: str) -> None:
        self.calls.append(("partition_zone", zone))
        self.unready_until = float("inf")

    def heal_zone(self, zone: str) -> None:
        self.calls.append(("heal_zone", zone))
        self.unready_until = time.time() + 0.4  # readiness comes back a little after the heal

    def restore_node(self, node: str) -> None:
        self.calls.append(("restore_node", node))
        self._add("product-api")
        self._add("frontend")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBackend:
    b = FakeBackend()
    monkeypatch.setattr(actions, "_backend", lambda configuration=None: b)
    monkeypatch.setenv("EH_RUN_DIR", str(tmp_path))
    return b


def _timeline(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (tmp_path / "chaos.jsonl").read_text().splitlines()]


def test_kill_pod_records_inject_then_restore_after_replacement(fake: FakeBackend, tmp_path: Path) -> None:
    out = actions.kill_pod(LAX, "product-api")
    inject, restore = _timeline(tmp_path)
    assert (inject["phase"], restore["phase"]) == ("inject", "restore")
    assert inject["fault"] == restore["fault"] == out["fault"]
    assert inject["kind"] == "service-down" and inject["services"] == ["product-api"] and not inject["entry_down"]
    assert restore["ts"] - inject["ts"] >= 0.3  # the fault lasts until the Deployment replaced the pod
    assert fake.calls == [("kill_pod", (LAX, "product-api"))]


def test_kill_node_names_services_lost_and_restores(fake: FakeBackend, tmp_path: Path) -> None:
    out = actions.kill_node(LAX, duration_s=0.1)
    inject, restore = _timeline(tmp_path)
    assert inject["services"] == ["frontend", "product-api"] and inject["entry_down"] is True
    assert out["node"] == "lax-1a-n1" and [c[0] for c in fake.calls] == ["kill_node", "restore_node"]
    assert restore["phase"] == "restore"


def test_kill_node_unknown_zone_is_refused(fake: FakeBackend) -> None:
    with pytest.raises(BackendError, match="no node"):
        actions.kill_node("us-west-2-nowhere-1a", duration_s=0)


def test_wait_ready_times_out_with_the_missing_services(fake: FakeBackend) -> None:
    with pytest.raises(BackendError, match="public-api not ready"):
        actions.wait_ready(fake, LAX, ["public-api"], timeout_s=0.3)  # type: ignore[arg-type]


def test_partition_records_restore_at_the_heal_and_returns_once_the_zone_is_whole(
    fake: FakeBackend, tmp_path: Path
) -> None:
    t0 = time.time()
    out = actions.partition_zone(LAX, duration_s=0.1)
    inject, restore = _timeline(tmp_path)
    assert (inject["kind"], inject["entry_down"]) == ("partition", True)
    assert restore["ts"] - inject["ts"] < 0.35  # recorded at the heal, not after the wait
    assert time.time() - t0 >= 0.45 and out["whole_after_heal_s"] >= 0.3  # ...but returned once Ready again
    assert [c[0] for c in fake.calls] == ["partition_zone", "heal_zone"]
