"""Locust workers inside each entry zone (kind/EKS, `--workers-in-zone`).

A Local Zone's users reach it from its city, not from the Region: load driven
from a CI runner in the Region measures the Region's distance to every zone.
With this option the harness runs locust in its own distributed mode: the
**master** where the harness runs (it owns the run directory and the stop),
and one **worker pod per entry zone**, pinned to that zone's nodes (required
node affinity on `topology.kubernetes.io/zone`, the edge taint tolerated;
preferring the node of its zone's frontend, whose sidecar's logs measure that
node's clock, which stamps the worker's records),
each sending every one of its users to its own zone's entry Service inside
the cluster (`entry-<zone.short>`, harness/render/entry.py).

Records: a worker is not where `requests.jsonl` is, so it forwards each
record to the master over locust's own worker -> master channel (a custom
message, `harness.traffic.recorder.ForwardingRecorder`); the master appends
them. Each record names the worker's node (`node`, from the downward API):
its clock stamped the record's time. Nothing is collected from pod logs afterwards, so a run stopped early
still has every record sent before the stop.

The workers must reach the master: `master_host` is an address of the
harness's machine that pods can connect to (kind: the Docker network's
gateway; EKS: an address of the runner inside the VPC, e.g. a self-hosted
runner), port `MASTER_PORT` unless told. Locust's master and workers must run
the same locust version: the image is pinned to the venv's (`LOCUST_IMAGE`).

The locustfile, its shapes module and the harness modules it imports
(`LOCUST_SIDE`: the recorder, the probe budget's reader and what it reads)
travel in one ConfigMap (`locust-files`), mounted where the locustfile's own
imports find them. Every object carries `app.kubernetes.io/managed-by:
edge-harness` and lives in its own namespace (`NAMESPACE`), so `stop()`
deletes exactly what `start()` created.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from harness.contract import names as naming
from harness.errors import InputError
from harness.render.entry import entry_zones, service_name
from harness.render.hashicups import NGINX_PORT
from harness.topology.model import ENTRY_SERVICE, Topology, Zone
from harness.traffic.recorder import NODE_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUST_IMAGE = "locustio/locust:2.47.0"  # = the venv's locust (pyproject): the master/worker protocol must match
NAMESPACE = "edge-harness-load"
CONFIGMAP = "locust-files"
MASTER_PORT = 5557
MOUNT = "/mnt/locust"
LABEL_ROLE = "edge-harness.io/role"
ROLE = "locust-worker"


class WorkerCluster(Protocol):
    """What `InZoneWorkers` needs of a cluster (`harness.backends.kube.KubeCluster` has it)."""

    def apply(self, objects: Iterable[Mapping[str, Any]]) -> Any: ...

    def wait_deployments_ready(
        self, deployments: Sequence[tuple[str, str]], timeout: float, progress: Any = ..., poll: float = ...
    ) -> Any: ...

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool: ...

    def pods(self, namespace: str | None = None, selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]: ...


def entry_url(t: Topology, zone: Zone) -> str:
    """The zone's entry Service as a pod in the cluster reaches it (cluster DNS)."""
    return f"http://{service_name(t, zone)}.{naming.namespace(t, zone)}.svc.cluster.local:{NGINX_PORT}"


def cluster_entrypoints(t: Topology) -> dict[str, str]:
    """{zone: in-cluster entry URL} of every entry zone: what the master and the records name."""
    return {z.name: entry_url(t, z) for z in entry_zones(t)}


def worker_name(t: Topology, zone: Zone) -> str:
    return f"locust-worker-{t.short(zone)}"


NODE_NAME_ENV = {"name": NODE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
"""The worker's node (downward API), which its recorder writes into every request (`node`): on EKS each node keeps
its own clock, so the verifier puts a request on the runner's clock by the offset measured for that node, not by
its zone's (another node of the zone may be tens of ms apart), and a worker on a node never measured is unverified."""

LOCUST_SIDE = (
    "harness/traffic/recorder.py",
    "harness/traffic/budget.py",
    "harness/contract/hostcpu.py",
    "harness/contract/files.py",
    "harness/contract/requestid.py",
    "harness/contract/settled.py",
)
"""The harness modules the locustfile imports, with nothing but the standard library below them: they travel
with it (a worker pod has no harness installed); each package on their paths gets an empty __init__.py."""


def _files(locustfile_dir: Path) -> dict[str, str]:
    data = {
        "hashicups.py": (locustfile_dir / "hashicups.py").read_text(encoding="utf-8"),
        "shapes.py": (locustfile_dir / "shapes.py").read_text(encoding="utf-8"),
        "init.py": "",
    }
    for path in LOCUST_SIDE:
        data[Path(path).name] = (REPO_ROOT / path).read_text(encoding="utf-8")
    return data


def _mounts() -> list[dict[str, str]]:
    """ConfigMap key -> path under the mount: the locustfile beside its shapes, the modules at their import paths."""
    items = [{"key": "hashicups.py", "path": "hashicups.py"}, {"key": "shapes.py", "path": "shapes.py"}]
    packages: list[str] = []
    for path in LOCUST_SIDE:
        items.append({"key": Path(path).name, "path": path})
        for parent in reversed(Path(path).parents[:-1]):
            if str(parent) not in packages:
                packages.append(str(parent))
    return items + [{"key": "init.py", "path": f"{p}/__init__.py"} for p in packages]


def _meta(name: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    labels = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY, **(extra or {})}
    return {"name": name, "namespace": NAMESPACE, "labels": labels}


def worker_objects(
    t: Topology,
    master_host: str,
    master_port: int = MASTER_PORT,
    *,
    image: str = LOCUST_IMAGE,
    locustfile_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Namespace, ConfigMap and one worker Deployment per entry zone, in apply order (pure)."""
    if not master_host or any(c.isspace() for c in master_host):
        raise InputError("--locust-master-host", "", f"not a host address: {master_host!r}")
    if not 1 <= master_port <= 65535:
        raise InputError("--locust-master-port", "", f"not a port: {master_port}")
    zones = entry_zones(t)
    if not zones:
        raise InputError("topology", "services", "no frontend: no zone has an entry point for users")
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": _meta("")["labels"]}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(CONFIGMAP),
            "data": _files(locustfile_dir or REPO_ROOT / "loadtests"),
        },
    ]
    items = _mounts()
    worker_args = ["-f", f"{MOUNT}/hashicups.py", "--worker", "--master-host", master_host]
    worker_args += ["--master-port", str(master_port)]
    for zone in zones:
        labels = {naming.LABEL_APP: ROLE, LABEL_ROLE: ROLE, naming.LABEL_POD_ZONE: zone.name}
        container_env = {
            "EH_ENTRYPOINTS": json.dumps({zone.name: entry_url(t, zone)}),
            "EH_FORWARD_RECORDS": "1",
            "EH_ZONE": zone.name,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        pod_spec: dict[str, Any] = {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": naming.LABEL_ZONE, "operator": "In", "values": [zone.name]}]}
                        ]
                    }
                },
                # its records carry its node's clock, and only nodes whose sidecars logged probes or request pairs
                # are measured (harness.contract.clock): on a node with no HashiCups pod its zone was unverified
                "podAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {
                                    "matchLabels": {naming.LABEL_APP: ENTRY_SERVICE, naming.LABEL_POD_ZONE: zone.name}
                                },
                                "namespaceSelector": {},
                                "topologyKey": naming.LABEL_HOSTNAME,
                            },
                        }
                    ]
                },
            },
            "containers": [
                {
                    "name": "locust",
                    "image": image,
                    "args": worker_args,
                    "env": [{"name": k, "value": v} for k, v in container_env.items()] + [NODE_NAME_ENV],
                    "volumeMounts": [{"name": "locust-files", "mountPath": MOUNT, "readOnly": True}],
                    "resources": {"requests": {"cpu": "250m", "memory": "128Mi"}},
                }
            ],
            "volumes": [{"name": "locust-files", "configMap": {"name": CONFIGMAP, "items": items}}],
            "terminationGracePeriodSeconds": 5,
        }
        if zone.is_edge:
            pod_spec["tolerations"] = [
                {"key": naming.TAINT_EDGE, "operator": "Equal", "value": zone.name, "effect": "NoSchedule"}
            ]
        objs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": _meta(worker_name(t, zone), labels),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        # users are outside the mesh: no Consul sidecar, whatever the namespace defaults say
                        "metadata": {"labels": labels, "annotations": {"consul.hashicorp.com/connect-inject": "false"}},
                        "spec": pod_spec,
                    },
                },
            }
        )
    return objs


class InZoneWorkers:
    """Start the worker pods (and wait until each runs in its zone), stop them afterwards.

    ::

        workers = InZoneWorkers(cluster, topology, master_host="172.18.0.1")
        with workers:  # applied, Ready, each pod on a node of its zone
            with TrafficRunner(workers.entrypoints, run_dir, ..., master=workers.master()):
                ...
    """

    def __init__(
        self,
        cluster: WorkerCluster,
        topology: Topology,
        master_host: str,
        master_port: int = MASTER_PORT,
        ready_timeout_s: float = 300.0,
        poll_s: float = 2.0,
        **kw: Any,
    ) -> None:
        self.cluster = cluster
        self.topology = topology
        self.master_port = master_port
        self.objects = worker_objects(topology, master_host, master_port, **kw)
        self.ready_timeout_s = ready_timeout_s
        self.poll_s = poll_s
        self.entrypoints = cluster_entrypoints(topology)
        self.started = False

    @property
    def deployments(self) -> list[tuple[str, str]]:
        return [(NAMESPACE, o["metadata"]["name"]) for o in self.objects if o["kind"] == "Deployment"]

    def master(self) -> tuple[str, int, int]:
        """(bind host, bind port, workers to expect) for `TrafficRunner(master=...)`."""
        return "0.0.0.0", self.master_port, len(self.deployments)

    def start(self) -> InZoneWorkers:
        self.started = True  # from the first write on, stop() must clean up
        try:
            self.cluster.apply(self.objects)
            self.cluster.wait_deployments_ready(self.deployments, timeout=self.ready_timeout_s, poll=self.poll_s)
            self.check_placement()
        except BaseException:
            self.stop()  # never leave half a fleet of workers on somebody's cluster
            raise
        return self

    def check_placement(self) -> dict[str, str]:
        """{worker pod: its node's zone}; raises if a worker runs outside the zone it stands for."""
        from harness.errors import BackendError

        node_zone = {}
        for n in getattr(self.cluster, "node_infos", lambda: [])():
            node_zone[n.name] = n.zone
        out: dict[str, str] = {}
        for pod in self.cluster.pods(NAMESPACE, {LABEL_ROLE: ROLE}):
            meta = pod.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            want = (meta.get("labels") or {}).get(naming.LABEL_POD_ZONE)
            node = (pod.get("spec") or {}).get("nodeName")
            got = node_zone.get(node) if node_zone else want
            if got != want:
                raise BackendError(f"locust worker {meta.get('name')} runs in {got or '?'} (node {node}), not {want}")
            out[str(meta.get("name"))] = str(got)
        return out

    def stop(self) -> None:
        """Delete the workers, the ConfigMap and the namespace (idempotent)."""
        if not self.started:
            return
        for o in reversed(self.objects):
            meta = o["metadata"]
            self.cluster.delete(o["apiVersion"], o["kind"], meta.get("namespace"), meta["name"])
        self.started = False

    def __enter__(self) -> InZoneWorkers:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


__all__ = ["LOCUST_IMAGE", "InZoneWorkers", "cluster_entrypoints", "entry_url", "worker_objects"]
