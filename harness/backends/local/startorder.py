"""In which order the local cluster creates its pods: the services others wait on first.

Why: `up` creates pods with a pool of a few workers, so the last Deployment
in the manifests starts a pool's worth of creation time after the first. In
HashiCups that is postgres, and the whole start-up chain hangs off it (the
product-api image retries its database once a second and only then listens;
its startup probe follows). Started last, that chain runs after every other
pod was created, and `up` on a 49-pod topology spent seconds waiting for it
at the end. Kubernetes has no such order (the scheduler and kubelets start
everything at once); creating the upstreams of the call graph first brings
the stand-in closer to that, and takes the chain off the critical path.

The order: by height in the call graph of the upstream annotations (a
service without upstreams, such as postgres, has height 0; a caller is one
higher than its highest upstream), ties kept in manifest order. Unknown
upstream names (another namespace spelled differently) count as height 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.backends.local.sched import UPSTREAMS
from harness.backends.local.sidecar import parse_upstreams

if TYPE_CHECKING:
    from harness.backends.local.sched import DeploymentSpec


def start_order(deployments: Sequence[DeploymentSpec]) -> list[DeploymentSpec]:
    """`deployments` with every Deployment after the ones its upstreams run in (stable otherwise)."""
    upstreams: dict[str, set[str]] = {}
    for d in deployments:
        names = {u.name for u in parse_upstreams(d.annotations.get(UPSTREAMS, ""), d.where)} if d.meshed else set()
        upstreams.setdefault(d.consul_service, set()).update(names)
    height: dict[str, int] = {}

    def h(name: str, seen: frozenset[str]) -> int:
        if name in height:
            return height[name]
        if name in seen:  # a cycle in the annotations: no order to find, keep what we have
            return 0
        deps = [u for u in upstreams.get(name, ()) if u in upstreams]
        height[name] = value = 1 + max((h(u, seen | {name}) for u in deps), default=-1)
        return value

    index = {id(d): i for i, d in enumerate(deployments)}
    return sorted(deployments, key=lambda d: (h(d.consul_service, frozenset()), index[id(d)]))
