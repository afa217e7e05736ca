"""Existing-cluster backend (EKS with Local Zones): a named kubeconfig context, handled with care.

The cluster belongs to someone else, so this backend:
- discovers the zones from node labels and checks them against the topology
  before touching anything (every topology zone must have nodes, of the same
  type; zones the topology does not mention are reported, not fatal);
- refuses destructive chaos (node kill, zone outage, partition) unless the
  context is on an explicit allow-list (`allow_destructive_contexts`, the CLI's
  `--allow-context`, plus the comma-separated env `EH_ALLOW_CONTEXTS`): a
  game day against production must be a deliberate act, never a default;
- deletes in `down` only what its own `up` created (recorded in the workdir,
  so it works from another process or after a crash).

Consul is assumed installed (the usual case on a shared cluster); with
`install_consul=True` the pinned chart is installed with helm instead.

Zone types on EKS: nodes do not carry `edge-harness.io/zone-type`, so the
type is taken from that label when present, else from AWS's zone naming:
`<region><letter>` is an Availability Zone, a name with `-wlz-` a Wavelength
Zone, anything else under the region a Local Zone.

Node kill on EKS = cordon + delete every (non-DaemonSet) pod on the node:
the node's workload dies and cannot come back there until `restore_node`
uncordons it. Stopping the EC2 instance would need AWS credentials and an
AWS client, which this harness does not take. Partition = NetworkPolicies in
the zone's namespace denying traffic with every other namespace (DNS
excepted), which needs a CNI that enforces NetworkPolicy (EKS VPC CNI with
network policy enabled, Calico, Cilium). Service-link latency cannot be
changed from inside Kubernetes: `set_link` says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.backends.base import Backend, Inventory, LogSource, Status
from harness.backends.kube import (
    LABEL_MANAGED_BY,
    AppliedObject,
    InventoryWatcher,
    KubeCluster,
    KubeLogSources,
    NodeInfo,
    ProgressFn,
    api_client_from_kubeconfig,
)
from harness.errors import BackendError

if TYPE_CHECKING:
    from harness.backends import BackendOptions
    from harness.render.manifests import Manifests
    from harness.topology.model import Topology

ALLOW_ENV = "EH_ALLOW_CONTEXTS"
PARTITION_POLICY = "edge-harness-partition"


def zone_type_of(node: NodeInfo) -> str:
    """The zone type of a node: its label, else inferred from AWS zone naming."""
    if node.zone_type:
        return node.zone_type
    if node.region and re.fullmatch(re.escape(node.region) + r"[a-z]", node.zone):
        return "availability-zone"
    if "-wlz-" in node.zone:
        return "wavelength-zone"
    return "local-zone"


@dataclass(frozen=True)
class ZoneCheck:
    """Zones of the cluster vs the topology: `problems` make `up` refuse, `extra` is informational."""

    zones: dict[str, str]  # zone -> type, as found in the cluster
    problems: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


def check_zones(nodes: Sequence[NodeInfo], topology: Topology) -> ZoneCheck:
    found: dict[str, str] = {}
    for n in nodes:
        if n.zone:
            found.setdefault(n.zone, zone_type_of(n))
    problems = []
    for z in topology.zones:
        have = found.get(z.name)
        if have is None:
            problems.append(f"zone {z.name} ({z.type.value}) has no nodes")
        elif have != z.type.value:
            problems.append(f"zone {z.name} is {have} in the cluster but {z.type.value} in the topology")
    regions = {n.region for n in nodes if n.zone in {z.name for z in topology.zones} and n.region}
    if regions and regions != {topology.region}:
        problems.append(f"nodes are in region {', '.join(sorted(regions))}, the topology says {topology.region}")
    extra = sorted(set(found) - {z.name for z in topology.zones})
    return ZoneCheck(found, problems, extra)


class ExistingBackend(Backend):
    """A cluster reached through kubeconfig context `context`."""

    name = "existing"

    def __init__(
        self,
        context: str,
        kubeconfig: Path | str | None = None,
        allow_destructive_contexts: Sequence[str] = (),
        *,
        workdir: Path | str = Path("runs/.backend"),
        manifests: Manifests | None = None,
        install_consul: bool = False,
        progress: ProgressFn | None = None,
        ready_timeout_s: float = 900.0,
        cluster: KubeCluster | None = None,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        if not context:
            raise BackendError("existing backend needs a kubeconfig context (--context)")
        self.context = context
        self.kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        env_allow = [c.strip() for c in os.environ.get(ALLOW_ENV, "").split(",") if c.strip()]
        self.allowed = sorted(set(allow_destructive_contexts) | set(env_allow))
        self.workdir = Path(workdir) / f"existing-{re.sub(r'[^A-Za-z0-9_.-]', '_', context)}"
        self._manifests = manifests
        self.install_consul = install_consul
        self.progress: ProgressFn = progress or (lambda _m: None)
        self.ready_timeout_s = ready_timeout_s
        self._cluster = cluster
        self._run_fn = run
        self._inventory: Inventory | None = None
        self._watcher: InventoryWatcher | None = None
        self._logs: KubeLogSources | None = None

    @classmethod
    def from_options(cls, opts: BackendOptions, manifests: Manifests | None = None) -> ExistingBackend:
        if not opts.context:
            raise BackendError("existing backend needs a kubeconfig context (--context or EH_CONTEXT)")
        return cls(opts.context, opts.kubeconfig, opts.allow_contexts, workdir=opts.workdir, manifests=manifests)

    @property
    def cluster(self) -> KubeCluster:
        if self._cluster is None:
            self._cluster = KubeCluster(api_client_from_kubeconfig(self.kubeconfig, self.context))
        return self._cluster

    # -- safety --------------------------------------------------------------
    @property
    def destructive_allowed(self) -> bool:
        return self.context in self.allowed

    def _require_destructive(self, action: str) -> None:
        if not self.destructive_allowed:
            raise BackendError(
                f"refusing {action} on context {self.context!r}: destructive chaos needs the context on the "
                f"allow-list (--allow-context {self.context} or {ALLOW_ENV}={self.context})"
            )

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
        self._state_file.write_text(json.dumps({**self._state(), **changes}, indent=2) + "\n", encoding="utf-8")

    def save_artifacts(self, out: Path) -> None:
        """Pod logs and events of every namespace the manifests use (for the post-mortem)."""
        namespaces = {str(o["metadata"]["name"]) for o in self.manifests().objects if o.get("kind") == "Namespace"}
        self.cluster.save_artifacts(out, namespaces)

    def manifests(self) -> Manifests:
        if self._manifests is None:
            root = self._state().get("manifests")
            if not root:
                raise BackendError(f"context {self.context}: no manifests recorded in {self._state_file}; run up first")
            from harness.render.manifests import load

            self._manifests = load(root)
        return self._manifests

    # -- zones ---------------------------------------------------------------
    def check_zones(self, topology: Topology | None = None) -> ZoneCheck:
        t = topology or self.manifests().topology
        return check_zones(self.cluster.node_infos(), t)

    def _require_zones(self, topology: Topology) -> ZoneCheck:
        result = self.check_zones(topology)
        if result.problems:
            raise BackendError(f"context {self.context} does not match the topology: " + "; ".join(result.problems))
        if result.extra:
            self.progress(f"zones not in the topology (left alone): {', '.join(result.extra)}")
        return result

    # -- lifecycle -----------------------------------------------------------
    def up(self, manifests: Manifests, progress: ProgressFn | None = None) -> None:
        if progress is not None:
            self.progress = progress
        self._manifests = manifests
        self._require_zones(manifests.topology)
        self._save_state(manifests=str(Path(manifests.root).resolve()))
        cluster = self.cluster
        if self.install_consul:
            self._helm_install(manifests)
            cluster.forget_discovery()
        applied: list[AppliedObject] = [AppliedObject.from_dict(d) for d in self._state().get("applied", [])]
        known = {(a.kind, a.namespace, a.name) for a in applied}
        for obj in cluster.apply_order(manifests.objects):
            a = cluster.apply_one(obj)
            if (a.kind, a.namespace, a.name) not in known:
                applied.append(a)
                known.add((a.kind, a.namespace, a.name))
            self._save_state(applied=[x.as_dict() for x in applied])  # after each: a crash keeps the record
            self.progress(f"applied {a.kind} {a.namespace + '/' if a.namespace else ''}{a.name}")
        deployments = [
            (str(o["metadata"].get("namespace", "default")), str(o["metadata"]["name"]))
            for o in manifests.objects
            if o["kind"] == "Deployment"
        ]
        cluster.wait_deployments_ready(deployments, self.ready_timeout_s, self.progress)

    def _helm_install(self, manifests: Manifests) -> None:
        helm = shutil.which("helm")
        if helm is None:
            raise BackendError("install_consul needs `helm` on PATH (https://helm.sh/docs/intro/install/)")
        chart = manifests.meta.get("chart") or {}
        release = manifests.meta.get("release") or {"name": "consul", "namespace": "consul"}
        self.workdir.mkdir(parents=True, exist_ok=True)
        values = self.workdir / "consul-values.yaml"
        values.write_text(yaml.safe_dump(manifests.helm_values, sort_keys=False))
        ctx = ["--kube-context", self.context] + (["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else [])
        for argv in (
            [helm, "repo", "add", "hashicorp", str(chart.get("repo")), "--force-update"],
            [
                helm, "upgrade", "--install", str(release["name"]), f"hashicorp/{chart.get('name', 'consul')}",
                "--version", str(chart.get("version")), "-n", str(release["namespace"]), "--create-namespace",
                "-f", str(values), *ctx, "--wait", "--timeout", "15m",
            ],
        ):  # fmt: skip
            proc = self._run_fn(argv, capture_output=True, text=True, timeout=1200, check=False)
            if proc.returncode != 0:
                err = (proc.stderr or "").strip().splitlines()
                raise BackendError(
                    f"`helm {' '.join(argv[1:3])}` failed (exit {proc.returncode}): {err[-1] if err else ''}"
                )

    def down(self) -> None:
        """Delete what `up` created: objects in reverse order, created namespaces last (they cascade)."""
        self.close()
        applied = [AppliedObject.from_dict(d) for d in self._state().get("applied", [])]
        created_ns = {a.name for a in applied if a.created and a.kind == "Namespace"}
        for a in reversed(applied):
            if not a.created or a.kind == "Namespace" or (a.namespace in created_ns):
                continue
            self.cluster.delete(a.api_version, a.kind, a.namespace, a.name)
        for a in reversed(applied):
            if a.created and a.kind == "Namespace":
                self.cluster.delete(a.api_version, a.kind, None, a.name)
        self._state_file.unlink(missing_ok=True)

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._logs is not None:
            self._logs.close()
            self._logs = None
        if self._inventory is not None:
            self._inventory.close()
            self._inventory = None

    def status(self) -> Status:
        try:
            pods = self.cluster.pod_phases()
            zones = self.check_zones() if self._manifests is not None or self._state().get("manifests") else None
        except BackendError as exc:
            return Status(self.name, False, f"context {self.context}: {exc}")
        running = sum(1 for p in pods.values() if p == "Running")
        detail = f"context {self.context}: {running}/{len(pods)} pods running"
        if zones is not None and zones.problems:
            detail += "; " + "; ".join(zones.problems)
        if zones is not None and zones.extra:
            detail += f"; extra zones: {', '.join(zones.extra)}"
        up = bool(pods) and running == len(pods) and not (zones and zones.problems)
        return Status(self.name, up, detail, pods)

    def inventory(self, path: Path | None = None) -> Inventory:
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

    def entrypoints(self) -> dict[str, str]:
        """Zone -> URL from `EH_ENTRYPOINTS` (JSON): on a shared cluster users enter through its own ingress.

        The harness does not create load balancers in someone else's account;
        the operator names the per-zone frontend URLs (e.g. the LZ ALBs).
        """
        raw = os.environ.get("EH_ENTRYPOINTS", "")
        if not raw:
            raise BackendError('existing backend: set EH_ENTRYPOINTS to a JSON map {"<zone>": "http://..."}')
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"EH_ENTRYPOINTS: not JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise BackendError("EH_ENTRYPOINTS: expected a JSON object of zone -> URL")
        return {str(k): v.rstrip("/") for k, v in data.items()}

    # -- chaos ---------------------------------------------------------------
    def kill_pod(self, zone: str, service: str) -> list[str]:
        return self.cluster.kill_pods(zone, service)

    def _zone_nodes(self, zone: str) -> list[str]:
        names = [n.name for n in self.cluster.node_infos() if n.zone == zone]
        if not names:
            raise BackendError(f"context {self.context}: no nodes in zone {zone}")
        return names

    def kill_node(self, node: str) -> None:
        self._require_destructive(f"kill_node {node}")
        self.cluster.drain(node)

    def restore_node(self, node: str) -> None:
        self.cluster.uncordon(node)

    def zone_outage(self, zone: str) -> None:
        self._require_destructive(f"zone_outage {zone}")
        nodes = self._zone_nodes(zone)
        for n in nodes:
            self.cluster.cordon(n)  # all first: killed pods must not land on a sibling node
        for n in nodes:
            self.cluster.drain(n)

    def restore_zone(self, zone: str) -> None:
        for n in self._zone_nodes(zone):
            self.cluster.uncordon(n)

    def _zone_namespace(self, zone: str) -> str:
        namespaces = {
            str(o["metadata"].get("namespace"))
            for o in self.manifests().objects
            if o["kind"] == "Deployment"
            and ((o["spec"]["template"]["metadata"].get("labels") or {}).get("edge-harness.io/zone") == zone)
        }
        if len(namespaces) != 1:
            raise BackendError(
                f"partition needs exactly one namespace for zone {zone}, the manifests have {sorted(namespaces)}"
            )
        return namespaces.pop()

    def partition_zone(self, zone: str) -> None:
        self._require_destructive(f"partition_zone {zone}")
        if not self.manifests().topology.zone(zone).is_edge:
            raise BackendError(f"partition_zone: {zone} is not an edge zone (only edge zones have a service link)")
        ns = self._zone_namespace(zone)
        self.cluster.apply_one(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": PARTITION_POLICY, "namespace": ns, "labels": {LABEL_MANAGED_BY: "edge-harness"}},
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Ingress", "Egress"],
                    "ingress": [{"from": [{"podSelector": {}}]}],
                    "egress": [
                        {"to": [{"podSelector": {}}]},
                        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
                    ],
                },
            }
        )

    def heal_zone(self, zone: str) -> None:
        self.cluster.delete("networking.k8s.io/v1", "NetworkPolicy", self._zone_namespace(zone), PARTITION_POLICY)

    def set_link(self, zone: str, latency_ms: float, loss_percent: float = 0.0) -> None:
        raise BackendError(
            "set_link is not available on the existing backend: a real service link's latency cannot be changed "
            "from inside Kubernetes (use the kind or local backend, or an AWS fault-injection experiment)"
        )

    def clear_link(self, zone: str) -> None:
        self.set_link(zone, 0.0)

    def set_pod_unready(self, zone: str, service: str) -> list[str]:
        return self.cluster.set_serving(zone, service, False)

    def set_pod_ready(self, zone: str, service: str) -> list[str]:
        return self.cluster.set_serving(zone, service, True)
