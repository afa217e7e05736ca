"""run.json: every stage change is recorded, so a run that stopped says where (issue 10 deliver 3).

The verifier marks the verdict of a run that did not complete as partial and
still judges what was recorded; these tests pin the writer side
(`harness.run.mark_run`, and `run_e2e` marking its stages and how it ended).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import harness.e2e as e2e
from harness.backends import BackendOptions
from harness.errors import BackendError
from harness.run import mark_run
from tests.verdicts import verify


def test_mark_run_keeps_started_and_sets_ended_when_the_run_leaves_running(tmp_path: Path) -> None:
    first = mark_run(tmp_path, "up")
    assert first["status"] == "running" and first["ended"] is None and first["stage"] == "up"
    second = mark_run(tmp_path, "traffic")
    assert second["started"] == first["started"] and second["ended"] is None
    done = mark_run(tmp_path, "verify", "complete")
    assert done["ended"] is not None and done["started"] == first["started"]
    assert json.loads((tmp_path / "run.json").read_text()) == done
    assert not list(tmp_path.glob(".run.json*"))  # written atomically, no temp file left
    stopped = mark_run(tmp_path, status="interrupted")
    assert stopped["stage"] == "verify"  # the stage it stopped in is kept
    with pytest.raises(ValueError, match="run status 'done'"):
        mark_run(tmp_path, "x", "done")


class _FailingBackend:
    name = "fake"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.downs = 0

    def up(self, manifests: Any, progress: Any = None) -> None:
        raise self.exc

    def down(self) -> None:
        self.downs += 1

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """Every fault is possible (the run stops at `up` anyway)."""

    def prestart(self) -> None:
        """Starts nothing ahead."""

    def check_tools(self) -> None:
        """Needs no outside tool."""

    def check_manifests(self, manifests: Any) -> None:
        """Asks nothing more of the manifests."""

    def close(self) -> None:
        """Holds nothing in this process."""


@pytest.mark.parametrize(
    ("exc", "status"), [(BackendError("node lost"), "failed"), (KeyboardInterrupt(), "interrupted")]
)
def test_e2e_records_where_a_run_stopped_and_its_verdict_is_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, status: str
) -> None:
    backend = _FailingBackend(exc)
    monkeypatch.setattr(e2e, "choose", lambda name: ("fake", "test"))
    monkeypatch.setattr(e2e, "connect", lambda opts: backend)
    with pytest.raises(type(exc)):
        e2e.run_e2e(e2e.E2EOptions(runs_root=tmp_path), BackendOptions(name="local"), say=lambda m: None)
    (run_dir,) = tmp_path.iterdir()
    state = json.loads((run_dir / "run.json").read_text())
    assert (state["stage"], state["status"]) == ("up", status) and state["ended"] is not None
    assert state["runner_clock"] == "shared"  # a double that records no hops of its own: one clock
    assert backend.downs == 1
    v = verify(run_dir)  # nothing recorded but the manifests: judged all the same, and partial
    assert v.run.partial and v.run.stopped_at == "up" and not v.passed


def test_mark_run_keeps_the_runner_clock_given_at_the_first_mark(tmp_path: Path) -> None:
    """run.json's `runner_clock` is written once, with the first mark, and kept by every later one: the stages
    after it do not know the backend, and a run must not lose its word on its clocks at `complete`."""
    assert "runner_clock" not in mark_run(tmp_path, "up")  # no word given: none made up (older callers)
    mark_run(tmp_path, "render", runner_clock="separate")
    mark_run(tmp_path, "traffic")
    done = mark_run(tmp_path, "verify", "complete")
    assert done["runner_clock"] == "separate"
    assert json.loads((tmp_path / "run.json").read_text())["runner_clock"] == "separate"
    with pytest.raises(ValueError, match="runner_clock"):
        mark_run(tmp_path, "x", runner_clock="own")


def test_runner_clock_is_separate_only_where_the_nodes_are_not_this_machine() -> None:
    """EKS nodes keep their own clocks; local and kind run on this machine's kernel clock; a test double that
    records no hops of its own is one clock. The instances are never connected: only the class's answer counts."""
    from harness.backends.existing import ExistingBackend
    from harness.backends.kind import KindBackend
    from harness.backends.local import LocalBackend

    assert e2e.runner_clock(ExistingBackend.__new__(ExistingBackend)) == "separate"
    assert e2e.runner_clock(KindBackend.__new__(KindBackend)) == "shared"
    assert e2e.runner_clock(LocalBackend.__new__(LocalBackend)) == "shared"
    assert e2e.runner_clock(_FailingBackend(BackendError("x"))) == "shared"


def test_e2e_says_in_run_json_that_eks_nodes_keep_their_own_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HOLE (audit 9). An existing-backend (EKS) run's only record of its nodes' own clocks was clock.jsonl: lost,
    the verdict judged the hops on unaligned clocks as one. run_e2e now writes `runner_clock` with its first
    mark, before `up`, so even a run that stops there says it."""
    from harness.backends.existing import ExistingBackend

    class _FailingEks(ExistingBackend):
        def __init__(self) -> None:  # never connected: `up` fails at once
            self.inner = _FailingBackend(BackendError("no cluster"))

        def up(self, manifests: Any, progress: Any = None) -> None:
            self.inner.up(manifests)

        def down(self) -> None:
            self.inner.down()

        def require_capability(self, primitive: str, zone: str | None = None) -> None:
            """Every fault is possible (the run stops at `up` anyway)."""

        def check_tools(self) -> None:
            """No kubectl asked for: `up` fails before any would run."""

        def close(self) -> None:
            """Holds nothing in this process."""

    monkeypatch.setattr(e2e, "choose", lambda name: ("fake", "test"))
    monkeypatch.setattr(e2e, "connect", lambda opts: _FailingEks())
    with pytest.raises(BackendError):
        e2e.run_e2e(e2e.E2EOptions(runs_root=tmp_path), BackendOptions(name="local"), say=lambda m: None)
    (run_dir,) = tmp_path.iterdir()
    state = json.loads((run_dir / "run.json").read_text())
    assert (state["stage"], state["status"], state["runner_clock"]) == ("up", "failed", "separate")


def test_a_down_that_fails_after_a_failed_run_does_not_hide_why_the_run_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's own error is raised, the down's failure said: the down's error used to replace it (a failed
    `kind delete cluster` hid the `up` failure that made the run stop)."""
    backend = _FailingBackend(BackendError("node lost"))

    def down() -> None:
        backend.downs += 1
        raise BackendError("kind delete cluster failed")

    monkeypatch.setattr(backend, "down", down)
    monkeypatch.setattr(e2e, "choose", lambda name: ("fake", "test"))
    monkeypatch.setattr(e2e, "connect", lambda opts: backend)
    said: list[str] = []
    with pytest.raises(BackendError, match="node lost"):
        e2e.run_e2e(e2e.E2EOptions(runs_root=tmp_path), BackendOptions(name="local"), say=said.append)
    assert backend.downs == 1
    assert any("down failed too" in m and "kind delete cluster failed" in m for m in said), said
