"""The local cluster: pods as processes in network namespaces, with a control loop.

This is what kubelet, the Deployment controller, the consul-k8s endpoints
controller and Consul's xDS server do, reduced to one process:

- pods are created from the rendered Deployments, placed by `sched`, each in its
  own network namespace (`network`), with one process per container (`apps`) and,
  for meshed pods, a real Envoy sidecar (`sidecar`/`mesh`);
- a control loop runs the readiness probes, notices dead processes, re-creates
  pods of a Deployment after a realistic delay, keeps the catalog (Consul
  service -> endpoints with health) and pushes changes to every sidecar;
- chaos primitives act on real processes and real links.

It runs inside the daemon process (`daemon.py`) so that it outlives the
`harness up` command; `LocalBackend` talks to it over a Unix socket.

Modules: `base` (the pod record, shared fields), `pods` (pod lifecycle),
`control` (the control loop), `chaos` (primitives), `core` (`LocalCluster`,
`validate`).
"""

from harness.backends.local.cluster.control import _check
from harness.backends.local.cluster.core import LocalCluster, ensure_inotify_instances, validate

__all__ = ["LocalCluster", "_check", "ensure_inotify_instances", "validate"]
