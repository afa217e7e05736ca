"""Helm values for the official hashicorp/consul chart, pinned.

Chart 1.9.11 is consul-k8s v1.9.11 and ships Consul 1.22.7; images are pinned
to the same versions so a run tests exactly what the chart was released with.
Transparent proxy is off so every hop goes through an upstream named in the
pod annotation: that is what makes the per-zone upstream choice explicit and
its access log attributable. Every key used here exists in the chart's
values.yaml (the contract tests check it against the reference copy).

Placement. The control plane (server, connect injector, webhook cert
manager) never runs in an edge zone: an edge zone may be cut off on purpose,
and a Consul server stranded behind that cut would make every chaos result
mean something else. The server and the injector (whose endpoints controller
is what tells Consul a killed pod is gone) must not sit on a node a shipped
experiment stops either, and on kind every Region node is one: the default
topology has one node per AZ, and az-node-loss and az-primary-loss each stop
one. kube-scheduler picks at random among equally scored nodes
(pkg/scheduler/schedule_one.go selectHost), so "any AZ node" put the single
server on a stopped node in about half the runs of each. So they may run
(required node affinity, whose terms are ORed) in the Region's AZs *or* on a
control-plane node, prefer the control-plane (weight 100: NodeAffinity's
score, weighted 2 in the default profile, outweighs what the resource scores
differ by), and tolerate its `node-role.kubernetes.io/control-plane:NoSchedule`
taint, which kind keeps on a cluster with workers (kind
pkg/cluster/internal/create/actions/kubeadminit/init.go removes it only when
the cluster has one node). kind's control-plane belongs to no zone, so chaos
never stops it. EKS shows no control-plane node: that preference is void
there, and among the AZs the tie would again decide between the node
az-node-loss stops and the one az-primary-loss stops, a different fault each
night. So they prefer next (weight 50, below the control-plane's) the AZ of
the database primary (`primary_azs`), whose node loss is already the declared
single point of failure: with one node per AZ, az-node-loss never meets the
control plane and az-primary-loss always does, and the chaos action refuses
it (harness.chaos.actions.kill_node, docs/CONTRACTS.md "Node faults and the
control plane") rather than judging a control-plane outage as a node loss.
The injector prefers the server's node (`INJECTOR_WITH_SERVER`), and the
Region-only workloads a node other than theirs
(render.hashicups.away_from_control_plane): with two or more nodes in the
primary's AZ, az-primary-loss then stops a node the control plane is not on.
NodeAffinity's score is the matching weights normalised to the best node's
(pkg/scheduler/framework/plugins/nodeaffinity NormalizeScore), so on kind the
control-plane node (100) still beats a primary-AZ worker (50). The AZs are selected by
`topology.kubernetes.io/zone`, a label every kind node here and every EKS
node carries (the kubelet sets it from the instance's zone); the harness's own
`edge-harness.io/zone-type` label exists only on kind nodes, so selecting on
it left the server Pending on EKS. The chart types `affinity`, `tolerations`
and `nodeSelector` as multi-line strings run through `tpl`
(templates/server-statefulset.yaml, connect-inject-deployment.yaml);
webhook-cert-manager has only a nodeSelector (no OR, no preference), so it
stays pinned to the first AZ: it keeps the injector's webhook certificate and
CA bundle current, and is on the path of no request and no failover. But it
is on the path of every pod created after it restarts: it keeps its CA in
memory only, so a restart (its node stopped and started: az-primary-loss,
the first AZ's zone-outage) puts a new CA into the pod webhook's caBundle
while the injector serves its old certificate until the kubelet refreshes
its Secret volume, and the webhook (failurePolicy Fail) refuses every new pod
meanwhile. The backends' restores wait that window out
(`KubeBackend._wait_pod_admission`); a control-plane-only nodeSelector would
avoid it on kind but leave the manager Pending on EKS, which shows no
control-plane node.

Access logs. Envoy writes access logs through a buffer flushed every
`--file-flush-interval-msec` (default 10000 ms); the chart hands
`connectInject.envoyExtraArgs` to the injector as `-envoy-extra-args`, which
appends it after `--` to every consul-dataplane command line
(connect-inject/webhook/consul_dataplane_sidecar.go), so the sidecars flush
every second and a run's tail is readable soon after its last request.
"""

from __future__ import annotations

from typing import Any

import yaml

from harness.contract import names
from harness.contract.scheduling import CONTROL_PLANE_TAINT_KEY
from harness.render.naming import region_service_zones
from harness.topology.model import Edition, Topology, ZoneType

CHART_REPO = "https://helm.releases.hashicorp.com"
CHART_NAME = "consul"
CHART_VERSION = "1.9.11"
CONSUL_VERSION = "1.22.7"
# The Kubernetes minor versions consul-k8s 1.9.x supports (oldest, newest), from HashiCorp's compatibility matrix
# (https://developer.hashicorp.com/consul/docs/k8s/compatibility): 1.30.x-1.34.x. The one place the range lives:
# the renderer writes it into manifest.json beside the chart pin, where the kind backend picks its node image by
# it and the kube backends check the cluster's /version against it. Change it with CHART_VERSION.
KUBERNETES_SUPPORTED = ("1.30", "1.34")

IMAGES: dict[Edition, dict[str, str]] = {
    Edition.CE: {
        "consul": f"hashicorp/consul:{CONSUL_VERSION}",
        "consulK8s": f"hashicorp/consul-k8s-control-plane:{CHART_VERSION}",
        "dataplane": f"hashicorp/consul-dataplane:{CHART_VERSION}",
    },
    Edition.ENTERPRISE: {
        "consul": f"hashicorp/consul-enterprise:{CONSUL_VERSION}-ent",
        "consulK8s": f"hashicorp/consul-k8s-control-plane:{CHART_VERSION}",
        "dataplane": f"hashicorp/consul-dataplane:{CHART_VERSION}",
    },
}

# The backend creates this Secret (in the Consul namespace) from the licence it is given.
LICENSE_SECRET = {"secretName": "consul-ent-license", "secretKey": "key"}


def datacenter(t: Topology) -> str:
    """One Consul datacenter per Region: Local Zones are part of their parent Region's cluster."""
    return t.region


ENVOY_EXTRA_ARGS = names.ENVOY_EXTRA_ARGS  # also on every meshed pod (names.ANN_ENVOY_EXTRA_ARGS)


def _server_pods_per_node() -> dict[str, Any]:
    """A pod affinity term for the chart's server pods (its own labels, as Helm templates them), per node; a new
    object each time (safe_dump would write a shared one as an anchor)."""
    return {
        "labelSelector": {
            "matchLabels": {
                "app": '{{ template "consul.name" . }}',
                "release": '"{{ .Release.Name }}"',
                "component": "server",
            }
        },
        "topologyKey": "kubernetes.io/hostname",
    }


# The chart's default server affinity (values.yaml `server.affinity`): one server per node.
SERVER_ANTI_AFFINITY = {
    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [_server_pods_per_node()]}
}


def region_azs(t: Topology) -> list[str]:
    return [z.name for z in t.zones if z.type is ZoneType.AVAILABILITY_ZONE]


# kubeadm labels and taints its control-plane nodes with this key (kind's too); EKS shows no such node
CONTROL_PLANE_KEY = CONTROL_PLANE_TAINT_KEY
CONTROL_PLANE_PREFERENCE = 100  # the highest weight a preferred term may have
CONTROL_PLANE_TOLERATIONS = [{"key": CONTROL_PLANE_KEY, "operator": "Exists", "effect": "NoSchedule"}]
# below the control-plane's: on kind the control-plane node still wins (NodeAffinity's score is the matching
# weights normalised to the best node's: 100 against 50), on EKS, with no such node, the primary's AZ does
PRIMARY_AZ_PREFERENCE = 50


def primary_azs(t: Topology) -> list[str]:
    """The AZs of the Region's database primaries (a Region-only service another one is `replicaOf`), in topology
    order: where a node loss is already the declared single point of failure."""
    primaries = {s.replica_of for s in t.services if s.replica_of is not None}
    return [z.name for z in t.region_zones if any(z in region_service_zones(t.service(p), t) for p in primaries)]


def _control_plane_affinity(t: Topology) -> dict[str, Any]:
    """Required: a Region AZ or a control-plane node (terms are ORed); preferred: the control-plane, then the
    AZ of the database primary (`primary_azs`)."""
    in_azs = {"matchExpressions": [{"key": names.LABEL_ZONE, "operator": "In", "values": region_azs(t)}]}

    def control_plane() -> dict[str, Any]:  # a new object each time: safe_dump would write a shared one as an anchor
        return {"matchExpressions": [{"key": CONTROL_PLANE_KEY, "operator": "Exists"}]}

    preferred: list[dict[str, Any]] = [{"weight": CONTROL_PLANE_PREFERENCE, "preference": control_plane()}]
    if primary := primary_azs(t):
        in_primary = {"matchExpressions": [{"key": names.LABEL_ZONE, "operator": "In", "values": primary}]}
        preferred.append({"weight": PRIMARY_AZ_PREFERENCE, "preference": in_primary})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [in_azs, control_plane()]},
            "preferredDuringSchedulingIgnoredDuringExecution": preferred,
        }
    }


# The injector prefers the server's node (weight: the highest): a node fault meets the control plane on one node,
# not two. On EKS both prefer the primary's AZ; with two nodes there, the resource scores (LeastAllocated) sent
# the second of them to the other node, and the primary, which keeps off both (render.hashicups.
# away_from_control_plane), had no node left: az-primary-loss was refused however many nodes the AZ had.
# InterPodAffinity scores this term for the injector and, from the other side, for a server placed after it.
INJECTOR_WITH_SERVER = {
    "podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": _server_pods_per_node()}]
    }
}


def _yaml_string(value: dict[str, Any] | list[Any]) -> str:
    """The chart takes affinity/tolerations/nodeSelector as YAML text it `tpl`s into the pod spec."""
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False)
    # safe_dump quotes the template strings; the chart's default writes them bare, tpl renders either.
    return text.replace("'{{ template \"consul.name\" . }}'", '{{ template "consul.name" . }}').replace(
        "'\"{{ .Release.Name }}\"'", '"{{ .Release.Name }}"'
    )


def render_helm_values(t: Topology, edition: Edition) -> dict[str, Any]:
    images = IMAGES[edition]
    global_: dict[str, Any] = {
        "name": "consul",
        "datacenter": datacenter(t),
        "image": images["consul"],
        "imageK8S": images["consulK8s"],
        "imageConsulDataplane": images["dataplane"],
    }
    connect_inject: dict[str, Any] = {
        "enabled": True,  # also installs and reconciles the config-entry CRDs in this chart version
        "default": False,  # only pods annotated connect-inject=true join the mesh
        "transparentProxy": {"defaultEnabled": False},
        "affinity": _yaml_string({**_control_plane_affinity(t), **INJECTOR_WITH_SERVER}),
        "tolerations": _yaml_string(CONTROL_PLANE_TOLERATIONS),
        "envoyExtraArgs": ENVOY_EXTRA_ARGS,
    }
    if edition is Edition.ENTERPRISE:
        global_["enableConsulNamespaces"] = True
        global_["enterpriseLicense"] = dict(LICENSE_SECRET)
        connect_inject["consulNamespaces"] = {"mirroringK8S": True}
    return {
        "global": global_,
        "server": {
            "replicas": 1,
            "affinity": _yaml_string({**_control_plane_affinity(t), **SERVER_ANTI_AFFINITY}),
            "tolerations": _yaml_string(CONTROL_PLANE_TOLERATIONS),
        },
        "connectInject": connect_inject,
        "webhookCertManager": {"nodeSelector": f"{names.LABEL_ZONE}: {region_azs(t)[0]}\n"},
    }
