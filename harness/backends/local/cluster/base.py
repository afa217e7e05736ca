"""What every part of the local cluster shares: constants, the pod record, and the cluster's fields.

`core.LocalCluster` sets the fields; the pod lifecycle (`pods`), the
control loop (`control`) and the chaos primitives (`chaos`) are mixins over
`ClusterBase`, so each concern reads the same state without owning it.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.backends.local.certs import CertAuthority
from harness.backends.local.mesh import Catalog, MeshConfig
from harness.backends.local.network import Network, PodNet, netns
from harness.backends.local.sched import ClusterSpec, DeploymentSpec, Node, Placed, Probe
from harness.backends.local.sidecar import Sidecar
from harness.backends.local.state import State
from harness.contract.inventory import Inventory
from harness.render.manifests import Manifests
from harness.topology.model import Topology

log = logging.getLogger("harness.local")

INBOUND_PORT = 20000
ADMIN_PORT = 19000
TICK_S = 0.1
READY_WAIT_S = 30.0
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
INOTIFY_PER_SIDECAR = 8  # one instance per watched xDS directory subscription (LDS, CDS, each EDS), with room


@dataclass
class ProbeState:
    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0
    inflight: Future[bool] | None = None
    # liveness/readiness: the container's startup probe; kubelet runs neither until it succeeded
    gate: ProbeState | None = None
    started: bool = False  # startup probes: succeeded once (then never run again)


@dataclass
class Pod:
    name: str
    dep: DeploymentSpec
    node: Node
    net: PodNet
    dir: Path
    started: float
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sidecar: Sidecar | None = None
    ready: bool = False
    alive: bool = True
    forced_unready: bool = False
    serving: bool = False  # what the inventory last said (ready/unready) and what sidecars and relays were told
    # its node was killed at this time.time(): processes dead, address black-holed, but still registered and Ready
    # (nobody has told the API yet) until the node grace period runs out or the node comes back (chaos.kill_node)
    dark_since: float | None = None
    readiness: list[ProbeState] = field(default_factory=list)
    liveness: list[ProbeState] = field(default_factory=list)
    startup: list[ProbeState] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.alive and self.ready and not self.forced_unready


@dataclass
class Reservation:
    """A pod being created (`PodLifecycle._create_pod`): on its node for the scheduler, not yet in `pods`.

    kind/EKS chaos selects pods by label, so it takes a Pending or
    ContainerCreating pod too; what it did to this one is kept here and
    applied in the step that releases it (`PodLifecycle._settle`).
    """

    placed: Placed
    dep: DeploymentSpec
    zone: str
    deleted_at: float | None = None  # `kill_pod` deleted it at this time.time()
    forced_unready: bool = False  # `set_pod_unready` took it out of its Service


class ClusterBase:
    """The fields of one local cluster (set by `LocalCluster.__init__`) and the hooks the parts call on each other."""

    m: Manifests
    topology: Topology
    state_dir: Path
    cluster: str
    spec: ClusterSpec
    mesh: MeshConfig
    state: State
    pods_dir: Path
    log_dir: Path
    inventory: Inventory
    entrypoints_file: Path
    entry_up: dict[str, bool]
    reserved: dict[str, Reservation]
    lock: threading.RLock
    tick_lock: threading.Lock
    pods: dict[str, Pod]
    down_nodes: set[str]
    pending: dict[str, list[float]]
    creating: dict[str, int]
    counter: itertools.count[int]
    catalog_sig: str
    stop_event: threading.Event
    error: BaseException | None
    pool: ThreadPoolExecutor
    network: Network | None
    probe_pool: netns.NetnsExecutor | None
    entries: dict[str, Any]
    certs: CertAuthority | None
    _loop: threading.Thread | None

    # Implemented by the mixins; declared here so each part can call the others.
    def _create_pod(self, dep: DeploymentSpec, retry_in: float | None = None) -> Pod | None:
        raise NotImplementedError

    def _kill_processes(self, pod: Pod) -> None:
        raise NotImplementedError

    def _pod_died(self, pod: Pod, reason: str, replace_in: float | None = None) -> None:
        raise NotImplementedError

    def _pod_gone(self, pod: Pod, reason: str, replace_in: float | None = None) -> bool:
        raise NotImplementedError

    def _tear_down(self, pod: Pod) -> None:
        raise NotImplementedError

    def _push(self) -> None:
        raise NotImplementedError

    def _update_serving(self) -> None:
        raise NotImplementedError

    def _placed(self) -> list[Placed]:
        raise NotImplementedError

    def _catalog(self) -> Catalog:
        raise NotImplementedError
