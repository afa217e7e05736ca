"""What the kind and existing backends share: a cluster driven through the Kubernetes API.

Both backends apply the same rendered objects through `kube.KubeCluster`,
keep their state (manifests path, what they started or created) in one JSON
file in a workdir so a later process can pick up where `up` left off, follow
the same inventory watch and sidecar logs, and do pod chaos with the same
label flips and deletions. They differ in how the cluster is reached and
created, and in node/zone/link chaos (docker + iptables on kind, cordon +
NetworkPolicy on a shared cluster), which stays in the subclasses.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.backends.base import CHAOS_PRIMITIVES, Backend, Inventory, LogSource
from harness.backends.kube import InventoryWatcher, KubeCluster, KubeLogSources, ProgressFn
from harness.errors import BackendError

if TYPE_CHECKING:
    from harness.render.manifests import Manifests

HelmRun = Callable[[Sequence[str]], None]


class KubeBackend(Backend):
    """Common state, API access, inventory, logs and pod chaos of the Kubernetes-API backends.

    A subclass says where its cluster is (`_where`, `_connect`) and how helm is
    run and pointed at the cluster (`_helm_runner`, `_helm_target`).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        manifests: Manifests | None,
        progress: ProgressFn | None,
        ready_timeout_s: float,
        run: Callable[..., Any],
        cluster: KubeCluster | None = None,
    ) -> None:
        self.workdir = workdir
        self._manifests = manifests
        self.progress: ProgressFn = progress or (lambda _m: None)
        self.ready_timeout_s = ready_timeout_s
        self._run_fn = run
        self._cluster = cluster
        self._inventory: Inventory | None = None
        self._watcher: InventoryWatcher | None = None
        self._logs: KubeLogSources | None = None

    # -- what subclasses say -------------------------------------------------
    @property
    @abstractmethod
    def _where(self) -> str:
        """The cluster as error messages name it (e.g. `kind cluster edge`, `context eks-a`)."""

    @abstractmethod
    def _connect(self) -> KubeCluster:
        """A client for the cluster (called once, on first use of `cluster`)."""

    @abstractmethod
    def _helm_runner(self, manifests: Manifests, chart: dict[str, Any]) -> HelmRun:
        """Check helm can run (before anything is written) and return what runs one helm command."""

    @abstractmethod
    def _helm_target(self) -> list[str]:
        """helm flags that point it at this cluster."""

    # -- state ---------------------------------------------------------------
    @property
    def _state_file(self) -> Path:
        return self.workdir / "state.json"

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, **changes: Any) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = {**self._state(), **changes}
        self._state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")

    def manifests(self) -> Manifests:
        """The manifests `up` applied (kept by path in the state file, for later processes)."""
        if self._manifests is None:
            root = self._state().get("manifests")
            if not root:
                raise BackendError(f"{self._where}: no manifests recorded in {self._state_file}; run up first")
            from harness.render.manifests import load

            self._manifests = load(root)
        return self._manifests

    @property
    def cluster(self) -> KubeCluster:
        if self._cluster is None:
            self._cluster = self._connect()
        return self._cluster

    def save_artifacts(self, out: Path) -> None:
        """Pod logs and events of every namespace the manifests use (for the post-mortem)."""
        namespaces = {str(o["metadata"]["name"]) for o in self.manifests().objects if o.get("kind") == "Namespace"}
        self.cluster.save_artifacts(out, namespaces)

    # -- lifecycle helpers ---------------------------------------------------
    def _helm_install(self, manifests: Manifests) -> None:
        """Install Consul from the pinned chart the manifests name, with their rendered values."""
        chart = manifests.meta.get("chart") or {}
        release = manifests.meta.get("release") or {"name": "consul", "namespace": "consul"}
        helm = self._helm_runner(manifests, chart)
        self.workdir.mkdir(parents=True, exist_ok=True)
        values = self.workdir / "consul-values.yaml"
        values.write_text(yaml.safe_dump(manifests.helm_values, sort_keys=False))
        helm(["repo", "add", "hashicorp", str(chart.get("repo")), "--force-update"])
        helm(
            [
                "upgrade", "--install", str(release["name"]), f"hashicorp/{chart.get('name', 'consul')}",
                "--version", str(chart.get("version")), "-n", str(release["namespace"]), "--create-namespace",
                "-f", str(values), *self._helm_target(), "--wait", "--timeout", "15m",
            ]
        )  # fmt: skip

    def _wait_ready(self, manifests: Manifests) -> None:
        """Wait until every rendered Deployment has all its replicas ready."""
        deployments = [
            (str(o["metadata"].get("namespace", "default")), str(o["metadata"]["name"]))
            for o in manifests.objects
            if o["kind"] == "Deployment"
        ]
        self.cluster.wait_deployments_ready(deployments, self.ready_timeout_s, self.progress)

    def close(self) -> None:
        """Stop background watchers and log followers (the cluster stays)."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._logs is not None:
            self._logs.close()
            self._logs = None
        if self._inventory is not None:
            self._inventory.close()
            self._inventory = None

    # -- observation ---------------------------------------------------------
    def inventory(self, path: Path | None = None) -> Inventory:
        """The live inventory, filled by a list now and kept current by a watch until `close`."""
        if self._inventory is None:
            self._inventory = Inventory(path)
            self.cluster.refresh_inventory(self._inventory)
            self._watcher = self.cluster.watch_inventory(self._inventory)
        return self._inventory

    def log_sources(self) -> list[LogSource]:
        if self._logs is None:
            self._logs = KubeLogSources(self.cluster)
        return self._logs.current()

    def nodes(self) -> dict[str, str]:
        return self.cluster.nodes()

    def _zone_nodes(self, zone: str) -> list[str]:
        names = [n.name for n in self.cluster.node_infos() if n.zone == zone]
        if not names:
            raise BackendError(f"{self._where}: no nodes in zone {zone}")
        return names

    # -- pod chaos (the same API calls on any cluster) -----------------------
    def capabilities(self) -> frozenset[str]:
        return CHAOS_PRIMITIVES

    def envoy_admin(self, pod: str, path: str, timeout_s: float = 5.0) -> bytes:
        raise BackendError("envoy_admin: not implemented yet on this backend")  # replaced in this round

    def consul_api(self) -> AbstractContextManager[str]:
        raise BackendError("consul_api: not implemented yet on this backend")  # replaced in this round

    def kill_pod(self, zone: str, service: str) -> list[str]:
        return self.cluster.kill_pods(zone, service)

    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        return self.cluster.set_serving(zone, service, False)

    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        return self.cluster.set_serving(zone, service, True)
