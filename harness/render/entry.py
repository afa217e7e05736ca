"""Where users enter each zone: per-zone frontend Services, and optional ALB Ingresses (files under `entry/`).

The frontend's own Service (`frontend` in `hashicups`) selects the pods of
*both* Region AZs, and a port-forward to one pod dies with that pod, so
neither pins an entry zone that survives chaos. An entry point per zone is a
Service selecting exactly that zone's ready frontend pods
(`edge-harness.io/zone` + `edge-harness.io/serving=true`): any pod of the zone
can serve, a replacement is picked up when it is Ready, and a zone with none
is "entry down", which is what the records must say.

Two variants, because the way in differs and a NodePort number cannot be
shared between them:

- `entry/kind.yaml` (kind backend): `type: NodePort` with a fixed nodePort per
  zone (`NODE_PORT_BASE` + zone index). The kind config publishes each of
  these ports on the control-plane node with `extraPortMappings`
  (`render.kind`), the node chaos never stops; kube-proxy there forwards to
  the zone's pods wherever they run (externalTrafficPolicy Cluster: the
  control-plane runs none of them). kind documents that NodePort needs
  `nodePort == containerPort` and that port mappings are the cross-platform
  way in (Docker Desktop cannot reach node IPs):
  kind site/content/docs/user/configuration.md, "Extra Port Mappings".
- `entry/cluster.yaml` (existing/EKS backend): `type: ClusterIP` (no node port
  taken on somebody's shared cluster) and, for a zone with `albSubnets` in the
  topology, an Ingress for the AWS Load Balancer Controller
  (`ingressClassName: alb`, `alb.ingress.kubernetes.io/scheme`, `target-type:
  ip` so the ALB sends to pod IPs and needs no NodePort, `subnets` = that
  zone's subnets, `healthcheck-path`). AWS facts that drive it: in a Local
  Zone only an ALB can be deployed (no NLB), with one subnet, and only in the
  Local Zones that offer ELB at all, so the ALB is opt-in per zone and every
  other zone's URL is given by the operator (`--entrypoint ZONE=URL`).
  Annotations: kubernetes-sigs/aws-load-balancer-controller
  docs/guide/ingress/annotation.md.

The local backend does not read `entry/`: it emulates the same per-zone entry
itself (docs/local-emulation.md).
"""

from __future__ import annotations

from typing import Any

from harness.contract import names
from harness.render import naming
from harness.render.hashicups import NGINX_PORT
from harness.topology.model import ENTRY_SERVICE, Edition, Topology, Zone

KIND_VARIANT = "kind.yaml"
CLUSTER_VARIANT = "cluster.yaml"
NODE_PORT_BASE = 30100
LABEL_ENTRY = "edge-harness.io/entry"
ALB_ANNOTATION_PREFIX = "alb.ingress.kubernetes.io/"


def service_name(t: Topology, zone: Zone) -> str:
    """The zone's entry Service: `entry-<zone.short>`, in the zone's namespace."""
    return f"entry-{t.short(zone)}"


def node_port(t: Topology, zone: Zone) -> int:
    """kind: the zone's fixed nodePort (also the control-plane's containerPort in the kind config)."""
    return NODE_PORT_BASE + [z.name for z in t.zones].index(zone.name)


def entry_zones(t: Topology) -> list[Zone]:
    """Zones with an entry point: every zone that runs the frontend (edge-placed: all of them)."""
    if not any(s.name == ENTRY_SERVICE for s in t.services):
        return []
    front = t.service(ENTRY_SERVICE)
    return [z for z in t.zones if naming.serving_zone(front, z)]


def _service(t: Topology, zone: Zone, node_ports: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {
            names.LABEL_APP: ENTRY_SERVICE,
            names.LABEL_POD_ZONE: zone.name,
            names.LABEL_SERVING: "true",
        },
        "ports": [{"name": "http", "port": NGINX_PORT, "targetPort": "http", "protocol": "TCP"}],
    }
    if node_ports:
        spec["type"] = "NodePort"
        spec["externalTrafficPolicy"] = "Cluster"
        spec["ports"][0]["nodePort"] = node_port(t, zone)
    else:
        spec["type"] = "ClusterIP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(t, zone),
            "namespace": naming.namespace(t, zone),
            "labels": {
                names.LABEL_MANAGED_BY: names.MANAGED_BY,
                names.LABEL_POD_ZONE: zone.name,
                LABEL_ENTRY: "true",
            },
        },
        "spec": spec,
    }


def alb_ingress(t: Topology, zone: Zone) -> dict[str, Any]:
    """The zone's ALB (AWS Load Balancer Controller) in front of its entry Service."""
    name = service_name(t, zone)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": naming.namespace(t, zone),
            "labels": {
                names.LABEL_MANAGED_BY: names.MANAGED_BY,
                names.LABEL_POD_ZONE: zone.name,
                LABEL_ENTRY: "true",
            },
            "annotations": {
                ALB_ANNOTATION_PREFIX + "scheme": "internet-facing",
                ALB_ANNOTATION_PREFIX + "target-type": "ip",
                ALB_ANNOTATION_PREFIX + "subnets": ",".join(zone.alb_subnets),
                ALB_ANNOTATION_PREFIX + "healthcheck-path": "/",
                ALB_ANNOTATION_PREFIX + "listen-ports": '[{"HTTP": 80}]',
            },
        },
        "spec": {
            "ingressClassName": "alb",
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": name, "port": {"number": NGINX_PORT}}},
                            }
                        ]
                    }
                }
            ],
        },
    }


def render_entry(t: Topology, edition: Edition) -> dict[str, list[dict[str, Any]]]:
    """File name (under entry/) -> objects: the kind variant and the cluster (EKS) variant."""
    del edition  # same in both editions: the entry Service selects pods by zone, not by Consul name
    zones = entry_zones(t)
    if not zones:
        return {}
    cluster: list[dict[str, Any]] = [_service(t, z, node_ports=False) for z in zones]
    cluster += [alb_ingress(t, z) for z in zones if z.alb_subnets]
    return {KIND_VARIANT: [_service(t, z, node_ports=True) for z in zones], CLUSTER_VARIANT: cluster}


def kind_port_mappings(t: Topology) -> list[dict[str, Any]]:
    """extraPortMappings of the control-plane: each zone's nodePort, host port left to kind (kept across restarts)."""
    return [{"containerPort": node_port(t, z), "listenAddress": "127.0.0.1", "protocol": "TCP"} for z in entry_zones(t)]
