"""kind cluster config: one control-plane plus one worker per topology node.

kind nodes are containers on one host, so zones are only labels and taints;
the hub-and-spoke network is not modelled here (the kind backend's chaos does
that). Workers get the same labels a real EKS node carries (region, zone) plus
the zone type, so the manifests' node affinity works unchanged on both.
kind's node config has no taints field; the edge taint goes in through a
kubeadm JoinConfiguration patch (nodeRegistration.taints), which kind applies
to that node only.
"""

from __future__ import annotations

from typing import Any

from harness.contract import names
from harness.render import entry
from harness.render.yamlio import dump
from harness.topology.model import Topology, Zone

KIND_API_VERSION = "kind.x-k8s.io/v1alpha4"


def cluster_name(t: Topology) -> str:
    return t.name


def node_labels(t: Topology, zone: Zone) -> dict[str, str]:
    return {
        names.LABEL_REGION: t.region,
        names.LABEL_ZONE: zone.name,
        names.LABEL_ZONE_TYPE: zone.type.value,
    }


def edge_taint(zone: Zone) -> dict[str, str]:
    """The taint every edge node carries (as a Kubernetes Taint object)."""
    return {"key": names.TAINT_EDGE, "value": zone.name, "effect": "NoSchedule"}


def _worker(t: Topology, zone: Zone) -> dict[str, Any]:
    node: dict[str, Any] = {"role": "worker", "labels": node_labels(t, zone)}
    if zone.is_edge:
        patch = {"kind": "JoinConfiguration", "nodeRegistration": {"taints": [edge_taint(zone)]}}
        node["kubeadmConfigPatches"] = [dump(patch)]
    return node


def worker_zones(t: Topology) -> list[Zone]:
    """Zone of each worker, in the order kind creates (and names) them."""
    return [zone for zone in t.zones for _ in range(zone.nodes)]


def kind_worker_names(t: Topology) -> list[str]:
    """kind's node names for the workers: `<cluster>-worker`, `<cluster>-worker2`, ..."""
    base = f"{cluster_name(t)}-worker"
    return [base if i == 0 else f"{base}{i + 1}" for i in range(len(worker_zones(t)))]


def control_plane(t: Topology) -> dict[str, Any]:
    """The control-plane node: it publishes each zone's entry nodePort on the host.

    Chaos never stops the control-plane (it belongs to no zone), so the way
    into every zone survives pod, node and zone loss; `hostPort` is left to
    kind, which picks a free one and keeps it across container restarts
    (kind pkg/apis/config/v1alpha4/types.go, PortMapping). The kind backend
    reads it back with `docker port`.
    """
    node: dict[str, Any] = {"role": "control-plane"}
    mappings = entry.kind_port_mappings(t)
    if mappings:
        node["extraPortMappings"] = mappings
    return node


def render_kind_config(t: Topology) -> dict[str, Any]:
    return {
        "kind": "Cluster",
        "apiVersion": KIND_API_VERSION,
        "name": cluster_name(t),
        "nodes": [control_plane(t), *(_worker(t, z) for z in worker_zones(t))],
    }


def header_lines(t: Topology) -> list[str]:
    """Which kind node will be which zone, so a reader can map node names to zones."""
    lines = ["Workers in creation order (kind names them; zone from the node's labels):"]
    lines += [f"  {n} -> {z.name} ({z.type.value})" for n, z in zip(kind_worker_names(t), worker_zones(t), strict=True)]
    return lines
