"""Helm values for the official hashicorp/consul chart, pinned.

Chart 1.9.11 is consul-k8s v1.9.11 and ships Consul 1.22.7; images are pinned
to the same versions so a run tests exactly what the chart was released with.
The control plane (server, connect injector, webhook cert manager) is pinned
to Region nodes: an edge zone may be cut off from the Region on purpose, and a
Consul server stranded behind that cut would make every chaos result mean
something else. Transparent proxy is off so every hop goes through an upstream
named in the pod annotation: that is what makes the per-zone upstream choice
explicit and its access log attributable. Every key used here exists in the
chart's values.yaml (the contract tests check it against the reference copy).
"""

from __future__ import annotations

from typing import Any

from harness.render import naming
from harness.topology.model import Edition, Topology, ZoneType

CHART_REPO = "https://helm.releases.hashicorp.com"
CHART_NAME = "consul"
CHART_VERSION = "1.9.11"
CONSUL_VERSION = "1.22.7"

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


def _region_node_selector() -> str:
    # The chart types nodeSelector as a multi-line YAML string, not a map.
    return f"{naming.LABEL_ZONE_TYPE}: {ZoneType.AVAILABILITY_ZONE.value}\n"


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
        "nodeSelector": _region_node_selector(),
    }
    if edition is Edition.ENTERPRISE:
        global_["enableConsulNamespaces"] = True
        global_["enterpriseLicense"] = dict(LICENSE_SECRET)
        connect_inject["consulNamespaces"] = {"mirroringK8S": True}
    return {
        "global": global_,
        "server": {"replicas": 1, "nodeSelector": _region_node_selector()},
        "connectInject": connect_inject,
        "webhookCertManager": {"nodeSelector": _region_node_selector()},
    }
