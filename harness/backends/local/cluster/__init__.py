"""The local cluster (what kubelet, the Deployment controller and Consul do, in one process: see `core`).

Modules: `base` (the pod record, shared fields), `pods` (pod lifecycle),
`control` (the control loop), `chaos` (primitives), `core` (`LocalCluster`,
`validate`).
"""

from harness.backends.local.cluster.control import _check
from harness.backends.local.cluster.core import LocalCluster, ensure_inotify_instances, validate

__all__ = ["LocalCluster", "_check", "ensure_inotify_instances", "validate"]
