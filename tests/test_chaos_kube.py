"""One backend per chaostoolkit process on the Kubernetes backends: its inventory watcher stops at the end.

Each action used to build its own backend, and on kind/existing each started
an inventory watch thread that nobody stopped (issue 9). Against the fake API
server: actions and probes of one process share one backend and one watcher,
and the control's `after_experiment_control` stops it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from harness.backends import BackendOptions
from harness.backends.existing import ExistingBackend
from harness.chaos import actions, probes
from harness.chaos.control import after_experiment_control
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer, lax_pod, node, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

LAX = "us-west-2-lax-1a"


def _watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "eh-inventory-watch" and t.is_alive()]


def _existing(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[ExistingBackend]:
    """Every backend the chaos activities make (EH_BACKEND=existing) is one on the fake API server, seeded with a
    Local Zone node and a product-api pod on it; returns the list they are added to (empty at first)."""
    made: list[ExistingBackend] = []

    def connect(opts: BackendOptions) -> ExistingBackend:
        kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
        b = ExistingBackend("eks-nightly", kc, (), workdir=tmp_path / "wd", manifests=rendered(tmp_path))
        made.append(b)
        return b

    monkeypatch.setattr(actions, "connect", connect)
    monkeypatch.setattr(actions, "_backends", {})
    monkeypatch.setenv("EH_BACKEND", "existing")
    seed = connect(BackendOptions())
    api.seed(
        seed.cluster, node("lax-node", LAX, "local-zone", "10.0.3.10", ""), lax_pod("pa-1", "10.0.3.20", "lax-node")
    )
    made.clear()
    return made


def test_actions_share_one_backend_and_its_watcher_stops_at_the_end(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = len(_watchers())
    made = _existing(api, tmp_path, monkeypatch)
    for _ in range(3):  # three activities of one experiment
        probes.zone_has_ready("a Local Zone", "product-api", configuration={"zone": "a Local Zone"})
        actions.make_ready(LAX, "product-api")
    assert len(made) == 1 and len(_watchers()) == before + 1
    after_experiment_control(context={}, state={})
    wait_until(lambda: len(_watchers()) <= before, 60)
    assert len(_watchers()) == before


def test_a_prestarted_chaos_process_warms_up_on_existing_with_reads_only(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next experiment's `chaos run` is started ahead (harness.chaos.launch) and makes the run's backend, reads
    the topology and asks a first status while the current one runs. On an EKS cluster that is someone else's, it
    must not change anything before its turn: every request it makes is a read, and it made the backend that the
    experiment's activities then use (one backend per process)."""
    from harness.chaos import launch

    made = _existing(api, tmp_path, monkeypatch)
    start = len(api.requests())
    try:
        launch._prewarm()
        asked = api.requests()[start:]
        assert asked, "the warm-up asked the cluster nothing"
        assert {m for m, *_ in asked} <= {"GET"}, [(m, p) for m, p, *_ in asked if m != "GET"]
        assert len(made) == 1
        probes.zone_has_ready("a Local Zone", "product-api", configuration={"zone": "a Local Zone"})
        assert len(made) == 1  # the experiment's activities use the backend the warm-up made
    finally:
        after_experiment_control(context={}, state={})


def test_a_prestarted_chaos_process_whose_cluster_does_not_answer_raises_nothing_in_its_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm-up that fails (no cluster, a refused context) is left for the experiment, which does the same step
    again and says why: the warm-up itself raises nothing."""
    from harness.chaos import launch

    def connect(opts: BackendOptions) -> ExistingBackend:
        raise ConnectionRefusedError("no API server")

    monkeypatch.setattr(actions, "connect", connect)
    monkeypatch.setattr(actions, "_backends", {})
    monkeypatch.setenv("EH_BACKEND", "existing")
    launch._prewarm()
