"""Pod- and node-level chaos through the API: cordon, drain, kill, take out of the Service.

The node/zone/link primitives that need more than the API (docker +
iptables on kind, NetworkPolicy on a shared cluster) stay in the backends.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from harness.backends.kube.api import (
    KubeApi,
    KubeApiError,
    _labels,
    _meta,
)
from harness.contract import names
from harness.contract.names import (
    LABEL_APP,
    LABEL_POD_ZONE,
    LABEL_SERVING,
)
from harness.errors import BackendError

# The grace of every pod this harness deletes (a pod kill, a node drain): the shortest graceful deletion, never 0.
# 0 is a force deletion (kubernetes pkg/registry/core/pod/strategy.go CheckGracefulDelete keeps it): the API server
# drops the object at once, before the kubelet has stopped anything; the kubelet kills the containers only when it
# notices, with the pod's own grace (kubelet pod_workers.go calculateEffectiveGracePeriod: the object carries no
# deletionGracePeriodSeconds, so spec.terminationGracePeriodSeconds, 30 s by default), and consul-dataplane keeps
# Envoy up meanwhile, draining listeners for its shutdown grace (consul-k8s v1.9.11 consul_dataplane_sidecar.go
# `-shutdown-drain-listeners -shutdown-grace-period-seconds`, on by default; consul-dataplane lifecycle.go
# gracefulShutdown). So a "killed" pod runs on beside its replacement, answers on connections it had open, and
# its sidecar logs on, while the inventory already says `removed`; a StatefulSet's replacement of the same
# identity runs beside the old one. kubectl sends 0 only with --force and otherwise turns it into 1
# (pkg/cmd/delete/delete.go, "to prevent accidental data loss").
# With 1 the API sets deletionTimestamp at once (Endpoints and Consul drop the pod: the inventory's `unready`),
# the kubelet sends SIGTERM and SIGKILL at its floor of 2 s (kuberuntime_manager.go minimumGracePeriodInSeconds,
# killContainer; consul-k8s v1.9.11 gives the dataplane no preStop hook to run first), and only then removes the
# object: the inventory's `removed` is when nothing of the pod runs any more.
KILL_GRACE_S = 1


# The chart's components a node fault must not take unnoticed (names.CONTROL_PLANE_COMPONENTS: the chart labels
# their pods app=consul, component=<these>): the server holds the catalog (consul-k8s v1.9.11 runs one with
# `server.replicas: 1`: no quorum survives its node), and the injector's endpoints controller is what deregisters
# a dead pod's instance. The webhook-cert-manager is on no request's path.
CONTROL_PLANE_COMPONENTS = names.CONTROL_PLANE_COMPONENTS


def control_plane_of(pods: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Node -> `namespace/pod (component)` of the Consul control-plane pods bound to it, from a pod list.

    Found by the chart's labels, as `find_consul` finds the server. A pod being deleted is leaving its node
    already (its replacement is what a later fault meets); a Pending pod is on no node yet.
    """
    out: dict[str, list[str]] = {}
    for p in pods:
        labels = _labels(p)
        component = labels.get(names.LABEL_COMPONENT, "")
        if labels.get(LABEL_APP) != names.CONSUL_APP or component not in CONTROL_PLANE_COMPONENTS:
            continue
        meta = _meta(p)
        node = (p.get("spec") or {}).get("nodeName")
        if not node or meta.get("deletionTimestamp"):
            continue
        out.setdefault(str(node), []).append(f"{meta.get('namespace')}/{meta.get('name')} ({component})")
    return {n: sorted(v) for n, v in sorted(out.items())}


def unmanaged(pod: dict[str, Any]) -> bool:
    """A pod no controller owns (no ownerReference with `controller: true`: a `kubectl run`, an operator's debug
    pod) and not the harness's own: deleted, nothing would re-create it, so a node fault of seconds would destroy
    it for good, where a node back within seconds loses no pod. `kubectl drain` refuses such a pod without
    --force ("Pods not managed by ReplicationController, ReplicaSet, Job, DaemonSet or StatefulSet ... will be
    lost forever", kubectl drain's help; pkg/drain/filters.go unreplicatedFilter). Finished pods are not
    counted (nothing runs)."""
    meta = _meta(pod)
    if any(o.get("controller") for o in meta.get("ownerReferences") or []):
        return False
    if _labels(pod).get(names.LABEL_MANAGED_BY) == names.MANAGED_BY:
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


class PodChaosMixin(KubeApi):
    """The chaos primitives the kind and existing backends share."""

    def control_plane_nodes(self) -> dict[str, list[str]]:
        """Node -> the Consul control-plane pods on it (`control_plane_of`), over every namespace."""
        return control_plane_of(self.pods(selector={LABEL_APP: "consul"}))

    def cordon(self, node: str, unschedulable: bool = True) -> None:
        self.request(
            "PATCH",
            f"/api/v1/nodes/{quote(node)}",
            body={"spec": {"unschedulable": unschedulable}},
            content_type="application/merge-patch+json",
        )

    def uncordon(self, node: str) -> None:
        self.cordon(node, unschedulable=False)

    def drain(self, node: str, grace_period_seconds: int = KILL_GRACE_S) -> list[str]:
        """Cordon `node` and delete its pods (DaemonSet and mirror pods stay, as `kubectl drain` does, and so does a
        pod no controller would re-create: `unmanaged`).

        Deletion, not eviction: this is chaos, a PodDisruptionBudget must not
        be able to veto it. Graceful, not forced (KILL_GRACE_S): every pod of
        the node goes, other teams' StatefulSets too. Returns `namespace/pod` names.
        """
        self.cordon(node)
        killed = []
        for p in self.pods():
            if ((p.get("spec") or {}).get("nodeName")) != node:
                continue
            meta = _meta(p)
            owners = meta.get("ownerReferences") or []
            if any(o.get("kind") == "DaemonSet" for o in owners):
                continue
            if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
                continue
            if unmanaged(p):
                continue
            self.delete_pod(str(meta.get("namespace")), str(meta["name"]), grace_period_seconds)
            killed.append(f"{meta.get('namespace')}/{meta['name']}")
        return killed

    def unmanaged_on(self, nodes: list[str]) -> list[str]:
        """`namespace/pod` of each running pod on `nodes` that `drain` leaves because nothing would bring it back."""
        return sorted(
            f"{_meta(p).get('namespace')}/{_meta(p).get('name')}"
            for p in self.pods()
            if (p.get("spec") or {}).get("nodeName") in nodes and unmanaged(p)
        )

    def pods_of(self, zone: str, service: str) -> list[dict[str, Any]]:
        """HashiCups pods of logical `service` in `zone` (by the renderer's pod labels)."""
        return self.pods(selector={LABEL_POD_ZONE: zone, LABEL_APP: service})

    def delete_pod(self, namespace: str, name: str, grace_period_seconds: int | None = KILL_GRACE_S) -> bool:
        """Delete a pod (False: it was gone already). Graceful by default (KILL_GRACE_S); 0 forces (see there),
        None leaves the grace to the pod's terminationGracePeriodSeconds."""
        query = [("gracePeriodSeconds", str(grace_period_seconds))] if grace_period_seconds is not None else []
        try:
            self.request("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}", query=query)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def kill_pods(self, zone: str, service: str) -> list[str]:
        """Delete every pod of `service` in `zone` with the shortest graceful deletion (KILL_GRACE_S); the
        ReplicaSet replaces them.

        Not a force deletion (gracePeriodSeconds=0): that removes only the API object, and the pod runs on for
        its own grace, consul-dataplane draining for 30 s, while the inventory says `removed` (KILL_GRACE_S). Not
        a kill of the containers' processes either (kind: `crictl stop --timeout 0` in the node): the kubelet
        restarts them in the same pod (restartPolicy Always: same name and IP, restartCount + 1, no replacement),
        another fault than this one, and EKS gives no node access. So SIGTERM, SIGKILL at most 2 s later: the
        pod leaves the Endpoints and Consul's catalog at once (deletionTimestamp) and the API once its
        containers have stopped, the same on kind and EKS. A pod already Terminating (an earlier kill, its
        node's kubelet not yet confirming) is being killed already: it is not killed again nor reported.
        """
        names = []
        for p in self.pods_of(zone, service):
            meta = _meta(p)
            if meta.get("deletionTimestamp"):
                continue
            if self.delete_pod(str(meta.get("namespace")), str(meta["name"]), KILL_GRACE_S):
                names.append(str(meta["name"]))
        if not names:
            raise BackendError(f"no pods of {service} in zone {zone} to kill")
        return names

    def set_serving(self, zone: str, service: str, serving: bool) -> list[str]:
        """Take pods out of (or back into) their Service without stopping them.

        How "unready" is done on a real cluster: HashiCups images give no hook
        to fail a readiness probe from outside (no exec-able health file), and a
        status patch of the Ready condition is overwritten by the kubelet. So
        the pod's `edge-harness.io/serving` label — part of the Service selector
        but not of the Deployment selector — is set to "false": the Endpoints
        controller drops the pod and consul-k8s deregisters its instance, while
        the ReplicaSet keeps owning the running pod, so no replacement hides the
        fault. A failing readiness probe would instead keep the instance with a
        critical check (notReadyAddresses; consul-k8s v1.9.11 endpoints_controller.go
        `mapAddresses`), as the local backend does; Envoy routes both alike here
        because every pod of the service in the zone is taken (docs/local-emulation.md).
        Setting it back to "true" restores it.
        """
        pods = self.pods_of(zone, service)
        if not pods:
            raise BackendError(f"no pods of {service} in zone {zone}")
        missing = [str(_meta(p)["name"]) for p in pods if LABEL_SERVING not in _labels(p)]
        if missing:
            raise BackendError(
                f"pods {', '.join(missing)} lack the {LABEL_SERVING} label (it must be in the pod template and the "
                "Service selector, not the Deployment selector): re-render the manifests with a renderer that adds it"
            )
        names = []
        for p in pods:
            meta = _meta(p)
            self.request(
                "PATCH",
                f"/api/v1/namespaces/{quote(str(meta.get('namespace')))}/pods/{quote(str(meta['name']))}",
                body={"metadata": {"labels": {LABEL_SERVING: "true" if serving else "false"}}},
                content_type="application/merge-patch+json",
            )
            names.append(str(meta["name"]))
        return names
