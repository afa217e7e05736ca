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

from harness.backends.base import Status
from harness.backends.kube import (
    LABEL_MANAGED_BY,
    AppliedObject,
    KubeCluster,
    NodeInfo,
    ProgressFn,
    api_client_from_kubeconfig,
)
from harness.backends.kubebackend import HelmRun, KubeBackend
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


class ExistingBackend(KubeBackend):
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
        super().__init__(
            Path(workdir) / f"existing-{re.sub(r'[^A-Za-z0-9_.-]', '_', context)}",
            manifests=manifests,
            progress=progress,
            ready_timeout_s=ready_timeout_s,
            run=run,
            cluster=cluster,
        )
        self.context = context
        self.kubeconfig = Path(kubeconfig) if kubeconfig is not None else None
        env_allow = [c.strip() for c in os.environ.get(ALLOW_ENV, "").split(",") if c.strip()]
        self.allowed = sorted(set(allow_destructive_contexts) | set(env_allow))
        self.install_consul = install_consul

    @classmethod
    def from_options(cls, opts: BackendOptions, manifests: Manifests | None = None) -> ExistingBackend:
        if not opts.context:
            raise BackendError("existing backend needs a kubeconfig context (--context or EH_CONTEXT)")
        return cls(opts.context, opts.kubeconfig, opts.allow_contexts, workdir=opts.workdir, manifests=manifests)

    # -- the cluster ---------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"context {self.context}"

    def _connect(self) -> KubeCluster:
        """Through the named context (of `kubeconfig`, else the default kubeconfig)."""
        return KubeCluster(api_client_from_kubeconfig(self.kubeconfig, self.context))

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

    # -- zones ---------------------------------------------------------------
    def check_zones(self, topology: Topology | None = None) -> ZoneCheck:
        t = topology or self.manifests().topology
        return check_zones(self.cluster.node_infos(), t)

    def _require_zones(self, topology: Topology) -> ZoneCheck:
        result = self.check_zones(topology)
        if result.problems:
            raise BackendError(f"{self._where} does not match the topology: " + "; ".join(result.problems))
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
        self._wait_ready(manifests)

    def _helm_runner(self, manifests: Manifests, chart: dict[str, Any]) -> HelmRun:
        """helm from PATH, only needed with `install_consul` (Consul is usually there already)."""
        helm = shutil.which("helm")
        if helm is None:
            raise BackendError("install_consul needs `helm` on PATH (https://helm.sh/docs/intro/install/)")

        def run(args: Sequence[str]) -> None:
            proc = self._run_fn([helm, *args], capture_output=True, text=True, timeout=1200, check=False)
            if proc.returncode != 0:
                err = (proc.stderr or "").strip().splitlines()
                raise BackendError(
                    f"`helm {' '.join(args[:2])}` failed (exit {proc.returncode}): {err[-1] if err else ''}"
                )

        return run

    def _helm_target(self) -> list[str]:
        return ["--kube-context", self.context] + (["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else [])

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

    def status(self) -> Status:
        try:
            pods = self.cluster.pod_phases()
            zones = self.check_zones() if self._manifests is not None or self._state().get("manifests") else None
        except BackendError as exc:
            return Status(self.name, False, f"{self._where}: {exc}")
        running = sum(1 for p in pods.values() if p == "Running")
        detail = f"{self._where}: {running}/{len(pods)} pods running"
        if zones is not None and zones.problems:
            detail += "; " + "; ".join(zones.problems)
        if zones is not None and zones.extra:
            detail += f"; extra zones: {', '.join(zones.extra)}"
        up = bool(pods) and running == len(pods) and not (zones and zones.problems)
        return Status(self.name, up, detail, pods)

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
