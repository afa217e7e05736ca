"""Helm values for the official hashicorp/consul chart, pinned.

Chart 1.9.11 is consul-k8s v1.9.11 and ships Consul 1.22.7; images are pinned
to the same versions so a run tests exactly what the chart was released with.
Transparent proxy is off so every hop goes through an upstream named in the
pod annotation: that is what makes the per-zone upstream choice explicit and
its access log attributable. Every key used here exists in the chart's
values.yaml (the contract tests check it against the reference copy).

Placement. The control plane (server, connect injector, webhook cert
manager) runs in the Region's Availability Zones: an edge zone may be cut off
on purpose, and a Consul server stranded behind that cut would make every
chaos result mean something else. It is selected by
`topology.kubernetes.io/zone In [the Region's AZs]`, a label every kind node
here and every EKS node carries (the kubelet sets it from the instance's
zone); the harness's own `edge-harness.io/zone-type` label exists only on kind
nodes, so selecting on it left the server Pending on EKS. The chart types
`affinity` and `nodeSelector` as multi-line strings run through `tpl`
(templates/server-statefulset.yaml, connect-inject-deployment.yaml);
webhook-cert-manager has only a nodeSelector, so it is pinned to the first AZ.

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

# The chart's default server affinity (values.yaml `server.affinity`): one server per node.
SERVER_ANTI_AFFINITY = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {
                "labelSelector": {
                    "matchLabels": {
                        "app": '{{ template "consul.name" . }}',
                        "release": '"{{ .Release.Name }}"',
                        "component": "server",
                    }
                },
                "topologyKey": "kubernetes.io/hostname",
            }
        ]
    }
}


def region_azs(t: Topology) -> list[str]:
    return [z.name for z in t.zones if z.type is ZoneType.AVAILABILITY_ZONE]


def _region_affinity(t: Topology) -> dict[str, Any]:
    term = {"matchExpressions": [{"key": names.LABEL_ZONE, "operator": "In", "values": region_azs(t)}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def _yaml_string(value: dict[str, Any]) -> str:
    """The chart takes affinity/nodeSelector as YAML text it `tpl`s into the pod spec."""
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
        "affinity": _yaml_string(_region_affinity(t)),
        "envoyExtraArgs": ENVOY_EXTRA_ARGS,
    }
    if edition is Edition.ENTERPRISE:
        global_["enableConsulNamespaces"] = True
        global_["enterpriseLicense"] = dict(LICENSE_SECRET)
        connect_inject["consulNamespaces"] = {"mirroringK8S": True}
    return {
        "global": global_,
        "server": {"replicas": 1, "affinity": _yaml_string({**_region_affinity(t), **SERVER_ANTI_AFFINITY})},
        "connectInject": connect_inject,
        "webhookCertManager": {"nodeSelector": f"{names.LABEL_ZONE}: {region_azs(t)[0]}\n"},
    }
