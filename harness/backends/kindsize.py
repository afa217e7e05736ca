"""What a kind cluster of the rendered manifests asks of the Docker host, summed before `kind create`.

Why: every kind node is a container on one Docker host (a laptop's Docker Desktop / colima / podman VM of 2-4
CPUs and 2-8 GiB), and every node's kubelet reports that host's whole CPU count and memory as its own capacity
(the container reads the VM's /proc). So kube-scheduler counts each node as if it had the host to itself and
places pods whose requests together the host cannot hold; memory, which is not compressible, then runs out in
the VM (OOM kills, pods restarting, `up` waiting for Ready until its timeout with a generic message). The sum
of the requests over all nodes is what the one host must hold, and is a lower bound of what it uses (only
requests are counted; kubelet, containerd and systemd in each node use memory no request names).

Counted, all from real sources (no guess):
- the rendered workloads: each pod's effective request, as kube-scheduler computes it (the larger of its
  containers' sum and its largest init container; pkg/api/v1/resource PodRequests), times its replicas;
  meshed pods (connect-inject "true") with what consul-k8s injects: the `consul-connect-inject-init` init
  container (chart `connectInject.initContainer.resources`, 50m / 25Mi) and the consul-dataplane container
  (`connectInject.sidecarProxy.resources`, no requests by default), or the pod's own sidecar-proxy annotations;
- the chart's long-running pods (consul-k8s v1.9.11 values.yaml): server 100m / 200Mi per replica,
  connect-injector 50m / 200Mi per replica, webhook-cert-manager 100m / 50Mi; the manifests' helm values
  override them where they set `resources` or `replicas`;
- kind's own: on the control-plane node kubeadm's static pods (cmd/kubeadm/app/phases/controlplane/manifests.go
  ComponentResources: kube-apiserver 250m, kube-controller-manager 200m, kube-scheduler 100m; etcd
  phases/etcd/local.go: 100m / 100Mi) and CoreDNS (kubeadm's addon manifest: 2 replicas of 100m / 70Mi); on every
  node kindnet (kind's DaemonSet manifest: 100m / 50Mi, tolerating every taint); kube-proxy and kind's
  local-path-provisioner request nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.contract.names import ANN_INJECT
from harness.render.manifests import Manifests

MI = 1024**2
_MEM_UNITS = {
    "Ki": 1024, "Mi": MI, "Gi": 1024**3, "Ti": 1024**4,
    "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "": 1,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|K|M|G|T|)$")
# consul-k8s' per-pod overrides of the injected dataplane's requests (connect-inject/constants annotations)
ANN_SIDECAR_CPU = "consul.hashicorp.com/sidecar-proxy-cpu-request"
ANN_SIDECAR_MEMORY = "consul.hashicorp.com/sidecar-proxy-memory-request"


@dataclass(frozen=True)
class Need:
    """CPU in millicores and memory in bytes; summed with `+`."""

    cpu_m: int = 0
    mem: int = 0

    def __add__(self, other: Need) -> Need:
        return Need(self.cpu_m + other.cpu_m, self.mem + other.mem)

    def times(self, n: int) -> Need:
        return Need(self.cpu_m * n, self.mem * n)

    def max(self, other: Need) -> Need:
        return Need(max(self.cpu_m, other.cpu_m), max(self.mem, other.mem))


def cpu_millis(value: Any) -> int:
    """A CPU quantity ("250m", "1", "0.5") in millicores; 0 for none (None, "")."""
    m = _QUANTITY.match(str(value).strip()) if value not in (None, "") else None
    if m is None:
        return 0
    num = float(m.group(1))
    return round(num) if m.group(2) == "m" else round(num * 1000)


def mem_bytes(value: Any) -> int:
    """A memory quantity ("70Mi", "1Gi", "100M", "1048576") in bytes; 0 for none."""
    m = _QUANTITY.match(str(value).strip()) if value not in (None, "") else None
    if m is None or m.group(2) == "m":
        return 0
    return round(float(m.group(1)) * _MEM_UNITS[m.group(2)])


def _requests(resources: Any) -> Need:
    req = (resources or {}).get("requests") if isinstance(resources, Mapping) else None
    req = req if isinstance(req, Mapping) else {}
    return Need(cpu_millis(req.get("cpu")), mem_bytes(req.get("memory")))


# kind's own pods, by where they run (module docstring: kubeadm's manifests, kind's kindnet manifest)
KIND_CONTROL_PLANE = Need(250 + 200 + 100 + 100, 100 * MI) + Need(100, 70 * MI).times(2)
KIND_PER_NODE = Need(100, 50 * MI)
# the chart's defaults (consul-k8s v1.9.11 values.yaml): component -> (values path, requests, default replicas)
CHART_COMPONENTS: dict[str, tuple[tuple[str, ...], Need, int]] = {
    "consul server": (("server",), Need(100, 200 * MI), 1),
    "connect-injector": (("connectInject",), Need(50, 200 * MI), 1),
    "webhook-cert-manager": (("webhookCertManager",), Need(100, 50 * MI), 1),
}
INJECT_INIT = Need(50, 25 * MI)  # connectInject.initContainer.resources
SIDECAR = Need()  # connectInject.sidecarProxy.resources: null requests


def _at(values: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    for key in path:
        got = values.get(key) if isinstance(values, Mapping) else None
        values = got if isinstance(got, Mapping) else {}
    return values


def _override(values: Mapping[str, Any], default: Need) -> Need:
    """The chart's `resources.requests` where the values set them, else the chart's default, per resource."""
    req = (values.get("resources") or {}) if isinstance(values.get("resources"), Mapping) else {}
    req = req.get("requests") if isinstance(req.get("requests"), Mapping) else None
    if req is None:
        return default
    return Need(
        cpu_millis(req["cpu"]) if "cpu" in req else default.cpu_m,
        mem_bytes(req["memory"]) if "memory" in req else default.mem,
    )


def pod_need(spec: Mapping[str, Any], annotations: Mapping[str, Any], helm_values: Mapping[str, Any]) -> Need:
    """One pod's effective request as kube-scheduler counts it: its containers' sum against its largest init
    container, each resource apart; a meshed pod with the containers consul-k8s injects."""
    containers = [_requests(c.get("resources")) for c in spec.get("containers") or []]
    inits = [_requests(c.get("resources")) for c in spec.get("initContainers") or []]
    if str(annotations.get(ANN_INJECT, "")).lower() == "true":
        inject = _at(helm_values, ("connectInject",))
        inits.append(_override(_at(inject, ("initContainer",)), INJECT_INIT))
        sidecar = _override(_at(inject, ("sidecarProxy",)), SIDECAR)
        containers.append(
            Need(
                cpu_millis(annotations[ANN_SIDECAR_CPU]) if ANN_SIDECAR_CPU in annotations else sidecar.cpu_m,
                mem_bytes(annotations[ANN_SIDECAR_MEMORY]) if ANN_SIDECAR_MEMORY in annotations else sidecar.mem,
            )
        )
    total = Need()
    for c in containers:
        total = total + c
    for i in inits:
        total = total.max(i)
    return total


def cluster_need(manifests: Manifests) -> dict[str, Need]:
    """What a kind cluster of `manifests` requests, in three parts: "workloads" (the rendered pods),
    "Consul chart" and "kind" (its nodes' own pods; one node per entry of the kind config)."""
    values = manifests.helm_values or {}
    workloads = Need()
    for o in manifests.objects:
        if o.get("kind") not in ("Deployment", "StatefulSet", "ReplicaSet", "Pod"):
            continue  # (the rendered directory has no DaemonSet or Job; a new kind is counted when it is added)
        spec = o.get("spec") or {}
        template = spec if o["kind"] == "Pod" else (spec.get("template") or {}).get("spec") or {}
        meta = o.get("metadata") if o["kind"] == "Pod" else (spec.get("template") or {}).get("metadata")
        replicas = 1 if o["kind"] == "Pod" else int(spec.get("replicas", 1))
        workloads = workloads + pod_need(template, (meta or {}).get("annotations") or {}, values).times(replicas)
    chart = Need()
    for path, default, replicas in CHART_COMPONENTS.values():
        at = _at(values, path)
        chart = chart + _override(at, default).times(int(at.get("replicas", replicas)))
    nodes = (manifests.kind_config or {}).get("nodes") or [{}]  # kind's default: one control-plane node
    controls = [n for n in nodes if n.get("role", "control-plane") == "control-plane"]
    kind = KIND_CONTROL_PLANE.times(len(controls)) + KIND_PER_NODE.times(len(nodes))
    return {"workloads": workloads, "Consul chart": chart, "kind": kind}


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _cpus(m: int) -> str:
    return f"{m / 1000:g} CPUs"


def shortfall(need: Mapping[str, Need], ncpu: int, mem_total: int) -> tuple[str, str]:
    """(memory, cpu) sentences for a Docker host of `ncpu` CPUs and `mem_total` bytes; "" where it suffices.

    Memory short is a refusal (the caller's): pods' memory cannot be squeezed, the VM's OOM killer takes them.
    CPU short is said: kube-scheduler on kind accepts it (each node counts the host's CPUs as its own) and the
    pods get less CPU than they asked for, slower, not failing by itself."""
    total = Need()
    for n in need.values():
        total = total + n
    parts = ", ".join(f"{k} {_gib(n.mem)}" for k, n in need.items())
    mem = ""
    if total.mem > mem_total:
        mem = (f"memory: the pods request {_gib(total.mem)} ({parts}), the Docker host has {_gib(mem_total)}: "
               f"{_gib(total.mem - mem_total)} short")  # fmt: skip
    cpu = ""
    if total.cpu_m > ncpu * 1000:
        cparts = ", ".join(f"{k} {_cpus(n.cpu_m)}" for k, n in need.items())
        cpu = (f"CPU: the pods request {_cpus(total.cpu_m)} ({cparts}), the Docker host has {_cpus(ncpu * 1000)}: "
               f"{_cpus(total.cpu_m - ncpu * 1000)} short")  # fmt: skip
    return mem, cpu
