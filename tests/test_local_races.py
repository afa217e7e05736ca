"""The local cluster's behaviour is its rules', whichever thread runs first (no root, no processes).

The control loop ticks on its own thread while chaos operations arrive on
the daemon's API threads and pods are created on the pool's. Each test here
runs the real lifecycle, control-loop and chaos code over records (fake
network, inventory, sidecars and relays) and lets a control-loop tick land
after *every* locked step of the operation under test (`WindowLock`): where
a real tick can land, given ~50 ms of `ip` calls or one GIL switch. A tick
cannot land where the operation holds `tick_lock`, so there the hook does
nothing. Each test compares with the same operation with no tick inside it.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.backends.local.cluster.base import Pod, Reservation
from harness.backends.local.cluster.chaos import ClusterChaos
from harness.backends.local.cluster.control import ControlLoop
from harness.backends.local.cluster.pods import PodLifecycle
from harness.backends.local.mesh import Catalog
from harness.backends.local.sched import Placed
from harness.errors import BackendError
from harness.topology import ENTRY_SERVICE

RESTART_S = 2.0


class WindowLock:
    """The cluster's RLock, which runs `between()` after each outermost release: a tick landing there."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = threading.local()
        self.between: Callable[[], None] | None = None
        self._busy = False

    def __enter__(self) -> WindowLock:
        self._lock.acquire()
        self._depth.n = getattr(self._depth, "n", 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth.n -= 1
        self._lock.release()
        if self._depth.n == 0 and self.between is not None and not self._busy:
            self._busy = True
            try:
                self.between()
            finally:
                self._busy = False


class Inline:
    """The pod pool, run at once on the submitting thread (a creation in a window is then in it too)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller, as the pool would
            fut.set_exception(exc)
        return fut

    def shutdown(self, **_: Any) -> None:
        pass


class Sidecar:
    def __init__(self, owner: str, events: list[tuple[Any, ...]]) -> None:
        self.owner, self.events = owner, events

    def update(self, catalog: Catalog) -> list[str]:
        present = frozenset(e.pod for eps in catalog.values() for e in eps)
        healthy = frozenset(e.pod for eps in catalog.values() for e in eps if e.healthy)
        self.events.append(("told", self.owner, present, healthy))
        return []


class Relay:
    def __init__(self, zone: str, events: list[tuple[Any, ...]]) -> None:
        self.zone, self.events, self.url = zone, events, f"http://entry-{zone}"

    def set_backends(self, backends: list[tuple[str, int]]) -> None:
        self.events.append(("relay", self.zone, frozenset(ip for ip, _ in backends)))

    def drop_backend(self, ip: str) -> None:
        self.events.append(("drop", self.zone, ip))


def node(name: str, zone: str) -> Any:
    return SimpleNamespace(name=name, zone=zone, labels={})


def deployment(name: str, replicas: int, nodes: list[str]) -> Any:
    return SimpleNamespace(
        name=name, where=f"default/{name}", replicas=replicas, meshed=True, consul_service=name, app=name,
        namespace="default", labels={"app": name}, fits=nodes, port=lambda _ref: 8080,
        placed_on=lambda node: Placed(node, "default", {"app": name}),
    )  # fmt: skip


class Cluster(PodLifecycle, ControlLoop, ClusterChaos):
    """The real pod lifecycle, control loop and chaos over records: pods have no processes and no probes."""

    def __init__(self, tmp_path: Path, deployments: list[Any], nodes: list[Any]) -> None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.certs = SimpleNamespace()  # type: ignore[assignment]
        self.events: list[tuple[Any, ...]] = []
        self.placements: list[tuple[str, str, frozenset[str]]] = []  # (deployment, node, nodes down then)
        self.nodes = nodes
        self.spec = SimpleNamespace(  # type: ignore[assignment]
            deployments=deployments,
            nodes=nodes,
            services=[SimpleNamespace(namespace="default", ports=[("http", "http")], selector={"app": ENTRY_SERVICE})],
            place=self._place,
        )
        self.mesh = SimpleNamespace(namespaced=False)  # type: ignore[assignment]
        self.topology = SimpleNamespace(  # type: ignore[assignment]
            local=SimpleNamespace(node_grace_period_s=40.0, pod_restart_delay_s=RESTART_S)
        )
        self.lock = WindowLock()  # type: ignore[assignment]
        self.tick_lock = threading.Lock()
        self.pods: dict[str, Pod] = {}
        self.reserved: dict[str, Reservation] = {}
        self.pending = {d.where: [] for d in deployments}
        self.creating = {d.where: 0 for d in deployments}
        self.down_nodes: set[str] = set()
        self.catalog_sig = ""
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.pool = Inline()  # type: ignore[assignment]
        self.probe_pool = SimpleNamespace()  # type: ignore[assignment]
        self.pods_dir = tmp_path / "pods"
        self.entrypoints_file = tmp_path / "entrypoints.jsonl"
        self.entry_up: dict[str, bool] = {}
        self.entries = {z: Relay(z, self.events) for z in sorted({n.zone for n in nodes})}
        self.counter = iter(range(1, 1000))  # type: ignore[assignment]
        self.during_start: Callable[[Pod], None] | None = None
        ev = self.events
        self.inventory = SimpleNamespace(  # type: ignore[assignment]
            added=lambda info: ev.append(("added", info.pod)),
            removed=lambda pod: ev.append(("removed", pod)),
            ready=lambda pod: ev.append(("ready", pod)),
            unready=lambda pod: ev.append(("unready", pod)),
        )
        self.ips = iter(range(10, 250))
        self.network = SimpleNamespace(  # type: ignore[assignment]
            add_pod=lambda name, zone: SimpleNamespace(ip=f"10.0.0.{next(self.ips)}", ns=f"ns-{name}"),
            set_pod_link=lambda name, up: ev.append(("link", name, up)),
            remove_pod=lambda name: None,
        )

    # -- the parts a real cluster has and these records do not -----------------------------------------------
    def _place(self, dep: Any, down: set[str], placed: list[Placed]) -> Any:
        """Least-loaded fitting node that is up, then by name (the real scheduler's tie-break)."""
        fit = [n for n in self.nodes if n.name in dep.fits and n.name not in down]
        if not fit:
            return None
        load = {n.name: sum(1 for p in placed if p.node == n.name and p.labels == dep.labels) for n in fit}
        best = min(fit, key=lambda n: (load[n.name], n.name))
        self.placements.append((dep.name, best.name, frozenset(down)))
        return best

    def _start_processes(self, pod: Pod) -> None:
        pod.sidecar = Sidecar(pod.name, self.events)  # type: ignore[assignment]
        if self.during_start is not None:
            self.during_start(pod)
        pod.ready = True  # no probes: Ready once started

    # -- helpers ----------------------------------------------------------------------------------------------
    def add(self, dep: Any, node_name: str) -> Pod:
        """A pod of `dep` on `node_name`, created as the Deployment controller has one created (counted first)."""
        with self.lock:
            self.creating[dep.where] += 1
        fits, dep.fits = dep.fits, [node_name]
        try:
            pod = self._create_pod(dep)
        finally:
            dep.fits = fits
        assert pod is not None
        return pod

    def tick_in_windows(self) -> None:
        """From now on a control-loop tick runs after each locked step where the tick lock is free."""

        def tick() -> None:
            if not self.tick_lock.acquire(blocking=False):
                return  # the operation holds it: no tick can land here
            try:
                self._tick_locked()
            finally:
                self.tick_lock.release()

        self.lock.between = tick  # type: ignore[attr-defined]

    def no_ticks(self) -> None:
        self.lock.between = None  # type: ignore[attr-defined]

    def tick(self) -> None:
        with self.tick_lock:
            self._tick_locked()


def told_before(events: list[tuple[Any, ...]], pod: str, ip: str, mark: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Sidecar and relay updates that already left `pod` (at `ip`) out before the event `mark` was written."""
    out: list[tuple[Any, ...]] = []
    for ev in events:
        if ev == mark:
            return out
        if (ev[0] == "told" and pod not in ev[2]) or (ev[0] == "relay" and ip not in ev[2]) or ev[0] == "drop":
            out.append(ev)
    raise AssertionError(f"{mark} never written: {events}")


# --- a dead pod's `removed` is written before anyone is told --------------------------------------------------


def _frontend_of_a_dead_node(tmp_path: Path) -> tuple[Cluster, Pod]:
    fe, api = deployment(ENTRY_SERVICE, 1, ["n1"]), deployment("public-api", 1, ["n2"])
    c = Cluster(tmp_path, [fe, api], [node("n1", "z"), node("n2", "z")])
    frontend = c.add(fe, "n1")
    c.add(api, "n2")
    c.tick()  # both Ready, every sidecar and the relay told
    c.kill_node("n1")  # the frontend is dark: registered and Ready until the grace period
    c.tick()
    c.events.clear()
    return c, frontend


def test_a_dead_pod_deleted_by_chaos_is_removed_from_the_inventory_before_sidecars_or_relays_hear_of_it(
    tmp_path: Path,
) -> None:
    """docs/local-emulation.md: every change reaches inventory.jsonl *before* the sidecars and the entry relays
    are told. `kill_pod` of a pod on a dead node (and `restore_node`) end it on an API thread: the pod left the
    count in one locked step and `removed` was written after it, so a tick in between pushed a catalog without
    it and set the zone's entry down (entrypoints.jsonl) before the inventory said the pod was gone."""
    c, frontend = _frontend_of_a_dead_node(tmp_path / "control")
    c.kill_pod("z", ENTRY_SERVICE)
    c.tick()
    assert told_before(c.events, frontend.name, frontend.net.ip, ("removed", frontend.name)) == []
    assert any(e[0] == "relay" and e[2] == frozenset() for e in c.events)  # the relay is told, after

    c, frontend = _frontend_of_a_dead_node(tmp_path / "window")
    c.tick_in_windows()
    c.kill_pod("z", ENTRY_SERVICE)
    assert told_before(c.events, frontend.name, frontend.net.ip, ("removed", frontend.name)) == []


def test_a_restored_nodes_pods_are_removed_from_the_inventory_before_sidecars_hear_of_it(tmp_path: Path) -> None:
    for name, window in (("control", False), ("window", True)):
        c, frontend = _frontend_of_a_dead_node(tmp_path / name)
        if window:
            c.tick_in_windows()
        c.restore_node("n1")
        c.no_ticks()
        c.tick()
        assert told_before(c.events, frontend.name, frontend.net.ip, ("removed", frontend.name)) == [], name


# --- a zone's nodes go down and come back together --------------------------------------------------------------


def _zone(tmp_path: Path) -> tuple[Cluster, Any]:
    api = deployment("product-api", 3, ["n1", "n2"])
    c = Cluster(tmp_path, [api], [node("n1", "z"), node("n2", "z"), node("r1", "r")])
    c.add(api, "n1")
    c.add(api, "n1")
    c.add(api, "n2")
    c.tick()
    c.zone_outage("z")
    c.tick()
    c.placements.clear()
    return c, api


def test_a_zones_pods_come_back_with_every_node_of_the_zone_up(tmp_path: Path) -> None:
    """`restore_zone` brings back node after node, each node's pods one after another (~50 ms of `ip` calls
    each): a tick in between placed the restored pods (due at once) with the zone's other nodes still down and
    the node's other dead pods still counted, so where they landed depended on which thread ran first."""
    where = {}
    for name, window in (("control", False), ("window", True)):
        c, _ = _zone(tmp_path / name)
        if window:
            c.tick_in_windows()
        c.restore_zone("z")
        c.no_ticks()
        c.tick()
        assert len(c.placements) >= 3 and all(not down for _, _, down in c.placements), (name, c.placements)
        where[name] = sorted(p.node.name for p in c.pods.values() if p.alive)
    assert where["window"] == where["control"] == ["n1", "n1", "n2"]


def test_a_zone_outage_takes_its_nodes_down_at_one_instant(tmp_path: Path) -> None:
    """`zone_outage` killed node after node: a tick in between placed a replacement due then on a node of the
    zone that was about to die (while the Region had room), and the zone's pods went dark at different times
    (so their grace periods ran out in different ticks)."""
    for name, window in (("control", False), ("window", True)):
        api = deployment("product-api", 1, ["n1"])
        web = deployment("public-api", 1, ["n2", "r1"])
        c = Cluster(tmp_path / name, [api, web], [node("n1", "z"), node("n2", "z"), node("r1", "r")])
        c.add(api, "n1")
        gone = c.add(web, "n2")
        c.tick()
        c._pod_died(gone, "container exited", replace_in=0.0)  # its replacement is due now
        if window:
            c.tick_in_windows()
        c.zone_outage("z")
        c.no_ticks()
        c.tick()
        darks = {p.dark_since for p in c.pods.values() if p.alive and p.node.zone == "z"}
        assert len(darks) == 1, (name, darks)
        web_pods = [p for p in c.pods.values() if p.alive and p.dep is web]
        assert [p.node.name for p in web_pods] == ["r1"], (name, [(p.name, p.node.name) for p in web_pods])


# --- a pod whose node dies while it is being created ------------------------------------------------------------


def test_a_pod_whose_node_is_killed_while_it_is_created_is_dark_not_ready(tmp_path: Path) -> None:
    """A pod placed on a node that `kill_node` takes down while the pod's processes start (~1 s) was added as
    an ordinary live pod: probed, Ready, serving, in the entry relay, on a dead node, until the node's restore.
    Killed a moment later, it is dark (its link down, not Ready on a kubelet that never reported it)."""
    for name, during in (("control", False), ("window", True)):
        fe = deployment(ENTRY_SERVICE, 1, ["n1"])
        c = Cluster(tmp_path / name, [fe], [node("n1", "z"), node("n2", "z")])
        if during:
            c.during_start = lambda pod, c=c: c.kill_node(pod.node.name)
            pod = c.add(fe, "n1")
        else:
            pod = c.add(fe, "n1")
            c.kill_node("n1")
        c.tick()
        assert pod.dark_since is not None and pod.alive, name
        assert ("link", pod.name, False) in c.events, name
        if during:  # never Ready: its kubelet died before it could say so
            assert not pod.serving and ("ready", pod.name) not in c.events
            assert all(pod.net.ip not in e[2] for e in c.events if e[0] == "relay")
        c.restore_node("n1")
        assert not pod.alive and c.pending[fe.where], name


# --- a pod's registration and the Deployment's count are one step ----------------------------------------------


def test_a_pod_registered_while_another_replacement_is_due_does_not_cancel_it(tmp_path: Path) -> None:
    """A new pod was added to `pods` in one locked step and taken out of `creating` in a later one: a tick in
    between counted it twice, saw no replica missing and dropped the replacement another dead pod had booked
    (`pending`); the next tick then created that one at once instead of podRestartDelayS after the death."""
    for name, window in (("control", False), ("window", True)):
        api = deployment("product-api", 2, ["n1", "n2"])
        c = Cluster(tmp_path / name, [api], [node("n1", "z"), node("n2", "z")])
        a = c.add(api, "n1")
        b = c.add(api, "n2")
        c.tick()
        c._pod_died(a, "container exited")  # replacement due in 2 s: created (below) a little early, by hand
        c._pod_died(b, "container exited")  # replacement due in 2 s
        with c.lock:
            c.pending[api.where].pop(0)
            c.creating[api.where] += 1
        if window:
            c.tick_in_windows()
        c._create_then_count(api)  # a's replacement, registered with b's still due
        c.no_ticks()
        c.tick()
        live = [p.name for p in c.pods.values() if p.alive]
        assert len(live) == 1, (name, live)
        assert len(c.pending[api.where]) == 1 and c.pending[api.where][0] > time.time() + RESTART_S - 0.5, name


def test_a_creation_with_no_node_to_go_to_is_retried_a_second_later_whatever_tick_follows(tmp_path: Path) -> None:
    """A creation that finds no node (`_create_pod` -> None) is retried 1 s on; the retry was booked after the
    creation left the count, so a tick in between booked an immediate one instead."""
    for name, window in (("control", False), ("window", True)):
        api = deployment("product-api", 1, ["n1"])
        c = Cluster(tmp_path / name, [api], [node("n1", "z")])
        c.down_nodes.add("n1")
        with c.lock:
            c.creating[api.where] += 1
        if window:
            c.tick_in_windows()
        t0 = time.time()
        c._create_then_count(api)
        c.no_ticks()
        assert c.pending[api.where] and min(c.pending[api.where]) >= t0 + 0.9, (name, c.pending, t0)


def test_a_new_pod_is_in_the_inventory_before_any_sidecar_is_told_of_it(tmp_path: Path) -> None:
    """`added` was written after the pod joined `pods`: a tick in between pushed it (not ready) to every
    sidecar before the inventory knew it."""
    api, web = deployment("product-api", 1, ["n1"]), deployment("public-api", 1, ["n1"])
    c = Cluster(tmp_path, [api, web], [node("n1", "z")])
    c.add(web, "n1")  # no tick before the window's: it would create the product-api replica itself
    c.tick_in_windows()
    pod = c.add(api, "n1")
    first_told = next(i for i, e in enumerate(c.events) if e[0] == "told" and pod.name in e[2])
    assert c.events.index(("added", pod.name)) < first_told, c.events


# --- chaos that lands on a pod being created ---------------------------------------------------------------------


FAKE_PIDS = itertools.count(1 << 30)  # above any pid_max, and one process's in one cluster only


class Proc:
    """A pod's process as `kill_pod` and the control loop see it: alive until its group is killed."""

    def __init__(self, pid: int, table: dict[int, Proc]) -> None:
        self.pid, self.returncode = pid, None
        table[pid] = self

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


class ProcCluster(Cluster):
    """`Cluster` whose pods have one process each, so a kill of a live pod ends it (no signal is sent)."""

    def __init__(self, tmp_path: Path, deployments: list[Any], nodes: list[Any]) -> None:
        super().__init__(tmp_path, deployments, nodes)
        self.procs: dict[int, Proc] = {}
        self.state = SimpleNamespace(remove_pid=lambda _pid: None)  # type: ignore[assignment]

    def _start_processes(self, pod: Pod) -> None:
        pod.procs["app"] = Proc(next(FAKE_PIDS), self.procs)  # type: ignore[assignment]
        super()._start_processes(pod)


@pytest.fixture
def procs_killed(monkeypatch: pytest.MonkeyPatch) -> Callable[[ProcCluster], None]:
    """`os.killpg` ends the cluster's fake processes instead (set per cluster with the returned function)."""
    clusters: list[ProcCluster] = []

    def killpg(pid: int, sig: int) -> None:
        for c in clusters:
            if pid in c.procs:
                c.procs[pid].returncode = -sig
                return
        raise AssertionError(f"killpg({pid}): not a fake process")

    monkeypatch.setattr(os, "killpg", killpg)
    return clusters.append


def _api_and_frontend(tmp_path: Path, replicas: int) -> tuple[ProcCluster, Any]:
    api = deployment("product-api", replicas, ["n1", "n2"])
    fe = deployment(ENTRY_SERVICE, 1, ["n1"])
    c = ProcCluster(tmp_path, [api, fe], [node("n1", "z"), node("n2", "z")])
    c.add(fe, "n1")
    return c, api


def test_a_kill_takes_a_pod_being_created_as_kind_deletes_a_containercreating_pod(
    tmp_path: Path, procs_killed: Callable[[ProcCluster], None]
) -> None:
    """kind/EKS delete a service's pods by label selector, a Pending or ContainerCreating one too, and the
    ReplicaSet replaces it. `kill_pod` took only the registered pods: a kill landing while a pod of the zone
    was being created (a replacement just starting) left that pod alive and Ready, and with no registered pod
    at all it failed ("no live ... pod") where kind/EKS delete the one being created."""
    for replicas in (2, 1):
        c, api = _api_and_frontend(tmp_path / f"r{replicas}", replicas)
        procs_killed(c)
        live = c.add(api, "n1") if replicas == 2 else None  # no tick before: it would create the missing one
        killed: list[list[str]] = []
        at: list[float] = []

        def kill(pod: Pod, c: ProcCluster = c, killed: list[list[str]] = killed, at: list[float] = at) -> None:
            at.append(time.time())
            killed.append(c.kill_pod("z", "product-api"))

        c.during_start = kill
        starting = c.add(api, "n2")
        c.during_start = None
        c.tick()
        c.tick()
        assert not starting.alive and starting.name not in c.pods, replicas
        assert killed == [([live.name] if live else []) + [starting.name]], (replicas, killed)
        assert not [p.name for p in c.pods.values() if p.alive and p.dep is api], replicas
        # in the inventory (it held its IP), removed before anyone was told of it, never ready nor in a catalog
        evs = [e for e in c.events if e[0] in ("added", "removed", "ready") and e[1] == starting.name]
        assert evs == [("added", starting.name), ("removed", starting.name)], (replicas, evs)
        assert not any(e[0] == "told" and starting.name in e[2] for e in c.events), replicas
        # replaced as a killed pod is: podRestartDelayS after the kill, one replacement per pod
        due = sorted(c.pending[api.where])
        assert len(due) == replicas and all(at[0] + RESTART_S - 0.5 < t < at[0] + RESTART_S + 0.5 for t in due), (
            replicas,
            due,
            at,
        )


def test_a_kill_of_registered_pods_is_as_before(tmp_path: Path, procs_killed: Callable[[ProcCluster], None]) -> None:
    """The control: with no pod being created, `kill_pod` ends the live pods by their processes, the loop
    notices at its next tick and books each replacement podRestartDelayS on; no pod at all is an error."""
    c, api = _api_and_frontend(tmp_path, 2)
    procs_killed(c)
    a, b = c.add(api, "n1"), c.add(api, "n2")
    c.tick()
    t0 = time.time()
    assert c.kill_pod("z", "product-api") == [a.name, b.name]
    assert a.alive and b.alive  # until the loop sees their processes gone, as kubelet would
    c.tick()
    assert not a.alive and not b.alive and ("removed", a.name) in c.events and ("removed", b.name) in c.events
    assert len(c.pending[api.where]) == 2 and min(c.pending[api.where]) >= t0 + RESTART_S - 0.01
    with pytest.raises(BackendError, match="no live product-api pod in z"):
        c.kill_pod("z", "product-api")


def test_a_kill_of_a_pod_being_created_books_its_replacement_whatever_tick_lands_in_between(
    tmp_path: Path, procs_killed: Callable[[ProcCluster], None]
) -> None:
    """The pod being created leaves the count where it is registered: its replacement must be booked and the pod
    dead in that step (a tick after a registration that left it alive made it Ready and told the sidecars of
    it; one after it left the count with nothing due created the replacement at once), and no tick may create
    one while the doomed pod is still counted as being created."""
    for name, window in (("control", False), ("window", True)):
        c, api = _api_and_frontend(tmp_path / name, 1)
        procs_killed(c)
        if window:
            c.tick_in_windows()
        t0 = time.time()
        c.during_start = lambda pod, c=c: c.kill_pod("z", "product-api")
        starting = c.add(api, "n1")
        c.during_start = None
        c.no_ticks()
        c.tick()
        assert not starting.alive, name
        assert [p.name for p in c.pods.values() if p.dep is api] == [], (name, list(c.pods))
        assert ("ready", starting.name) not in c.events, name
        assert not any(e[0] == "told" and starting.name in e[2] for e in c.events), name
        assert len(c.pending[api.where]) == 1 and c.pending[api.where][0] >= t0 + RESTART_S - 0.01, (name, c.pending)


def test_unready_chaos_takes_a_pod_being_created_out_of_service_until_made_ready(
    tmp_path: Path, procs_killed: Callable[[ProcCluster], None]
) -> None:
    """kind/EKS take pods out of their Service by flipping a label on every pod the selector finds, one being
    created too: once Ready it stays out until the label is flipped back. `set_pod_unready` marked only the
    registered pods, so a pod created during the fault served through it."""
    c, api = _api_and_frontend(tmp_path, 2)
    procs_killed(c)
    live = c.add(api, "n1")
    marked: list[list[str]] = []
    c.during_start = lambda pod: marked.append(c.set_pod_unready("z", "product-api"))
    starting = c.add(api, "n2")
    c.during_start = None
    c.tick()
    assert starting.alive and starting.ready and not starting.serving
    assert ("ready", starting.name) not in c.events
    assert not any(e[0] == "told" and starting.name in e[3] for e in c.events)
    assert marked == [[live.name, starting.name]]
    assert c.set_pod_ready("z", "product-api") == [live.name, starting.name]
    assert starting.serving and ("ready", starting.name) in c.events


def test_a_pod_killed_while_created_whose_start_then_fails_is_replaced_as_a_killed_pod_is(
    tmp_path: Path, procs_killed: Callable[[ProcCluster], None]
) -> None:
    """kind/EKS: a pod deleted while ContainerCreating is gone whatever its sandbox does next, and the ReplicaSet
    creates its replacement. A start that failed after the kill had marked its reservation (a sidecar bootstrap
    that could not be written, a process that would not spawn) dropped the mark with the reservation: nothing was
    booked podRestartDelayS after the kill, and the next tick created the replacement at once (a missing replica
    with nothing due). The step that releases the reservation books it now, whatever tick lands in between."""
    for name, window in (("control", False), ("window", True)):
        c, api = _api_and_frontend(tmp_path / name, 1)
        procs_killed(c)
        if window:
            c.tick_in_windows()
        at: list[float] = []
        started: list[str] = []

        def kill_then_fail(pod: Pod, c: ProcCluster = c, at: list[float] = at, started: list[str] = started) -> None:
            at.append(time.time())
            started.append(pod.name)
            assert c.kill_pod("z", "product-api") == [pod.name]
            raise OSError(28, "No space left on device")

        c.during_start = kill_then_fail
        with c.lock:  # counted, as the Deployment controller counts the pod it has created
            c.creating[api.where] += 1
        c._create_then_count(api)  # as the pool runs it: a failed start is the cluster's error (status)
        c.during_start = None
        c.no_ticks()
        c.tick()
        assert isinstance(c.error, OSError), name
        assert c.reserved == {} and c.creating[api.where] == 0, (name, c.reserved, c.creating)
        assert [p.name for p in c.pods.values() if p.dep is api] == [], name  # nothing created at once
        due = c.pending[api.where]
        assert len(due) == 1 and at[0] + RESTART_S - 0.5 < due[0] < at[0] + RESTART_S + 0.5, (name, due, at)
        assert [e for e in c.events if e[0] in ("added", "removed") and e[1] in started] == [], name  # never added


def test_a_start_that_fails_with_no_kill_books_nothing_and_is_created_again_at_the_next_tick(
    tmp_path: Path, procs_killed: Callable[[ProcCluster], None]
) -> None:
    """The control: a start that fails on its own leaves the count and its reservation, books nothing (no pod was
    deleted), and the next tick creates the missing replica at once, as before."""
    c, api = _api_and_frontend(tmp_path, 1)
    procs_killed(c)

    def fail(pod: Pod) -> None:
        raise OSError(28, "No space left on device")

    c.during_start = fail
    with c.lock:
        c.creating[api.where] += 1
    c._create_then_count(api)
    c.during_start = None
    assert isinstance(c.error, OSError)
    assert c.reserved == {} and c.creating[api.where] == 0 and c.pending[api.where] == []
    c.tick()
    assert [p.alive for p in c.pods.values() if p.dep is api] == [True]
