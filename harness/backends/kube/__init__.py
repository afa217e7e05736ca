"""The Kubernetes-API side the kind and existing (EKS) backends share.

Both backends talk to a real API server; only how the cluster comes to exist
and how a node is "killed" differ. Everything else lives here, once, one
concern per module:

- `api`: raw REST, discovery, nodes and pods, the label constants (`KubeApi`);
- `apply`: apply the rendered objects, wait for them, read their status back;
- `chaos`: the pod- and node-level chaos primitives done through the API;
- `inventory`: the pod history from a list + watch (`InventoryWatcher`);
- `logs`: sidecar access logs followed across restarts (`KubeLogSources`);
- `cluster`: `KubeCluster`, the mixins joined;
- `forward`: `kubectl port-forward` relays (Consul UI, Envoy admin);
- `backend`: `KubeBackend`, the base class of `KindBackend` and `ExistingBackend`.

The names below are the package's public face (what the backends and the
test fakes use).
"""

from harness.backends.kube.api import (
    FIELD_MANAGER,
    AppliedObject,
    KubeApi,
    KubeApiError,
    LineStream,
    NodeInfo,
    ProgressFn,
    ResourceRef,
    api_client_from_kubeconfig,
    kubeconfig_user,
    parse_k8s_time,
)
from harness.backends.kube.apply import ConsulInstall
from harness.backends.kube.cluster import KubeCluster
from harness.backends.kube.inventory import InventoryWatcher, PodTracker, pod_condition, pod_serving, pod_state
from harness.backends.kube.logs import KubeLogSource, KubeLogSources, PodGone, access_log_record, split_timestamp
from harness.contract.names import ANN_SERVICE as ANN_CONSUL_SERVICE
from harness.contract.names import (
    CONSUL_API_GROUP,
    DATAPLANE_CONTAINER,
    LABEL_APP,
    LABEL_CONSUL_SERVICE,
    LABEL_MANAGED_BY,
    LABEL_POD_ZONE,
    LABEL_REGION,
    LABEL_SERVING,
    LABEL_ZONE,
    LABEL_ZONE_TYPE,
)

__all__ = [
    "ANN_CONSUL_SERVICE",
    "CONSUL_API_GROUP",
    "DATAPLANE_CONTAINER",
    "FIELD_MANAGER",
    "LABEL_APP",
    "LABEL_CONSUL_SERVICE",
    "LABEL_MANAGED_BY",
    "LABEL_POD_ZONE",
    "LABEL_REGION",
    "LABEL_SERVING",
    "LABEL_ZONE",
    "LABEL_ZONE_TYPE",
    "AppliedObject",
    "ConsulInstall",
    "InventoryWatcher",
    "KubeApi",
    "KubeApiError",
    "KubeCluster",
    "KubeLogSource",
    "KubeLogSources",
    "LineStream",
    "NodeInfo",
    "PodGone",
    "PodTracker",
    "ProgressFn",
    "ResourceRef",
    "access_log_record",
    "api_client_from_kubeconfig",
    "kubeconfig_user",
    "parse_k8s_time",
    "pod_condition",
    "pod_serving",
    "pod_state",
    "split_timestamp",
]
