"""Kubernetes API logic shared by the kind and existing (EKS) backends.

Both backends talk to a real API server; only how the cluster comes to exist
and how a node is "killed" differ. Everything else lives here, once: applying
the rendered objects, waiting for Deployments, mapping nodes to zones, the pod
inventory (with history, from a watch), the pod-level chaos primitives and the
sidecar log sources.

Why raw REST calls instead of the typed `CoreV1Api` methods: the rendered
objects include Consul CRDs whose kinds the typed client does not know, and
the harness must apply whatever a (possibly hand-edited) rendered directory
holds. One generic path — discover `kind -> plural` from the API server, then
POST / PATCH / DELETE by URL — treats Deployments and ServiceResolvers alike
and needs nothing per kind. Selectors are always re-checked on the client
side: it costs nothing on a real server and keeps the logic honest against
fakes that ignore them.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from harness.backends.base import ConfigEntryStatus, Inventory, LogSource, PodInfo
from harness.errors import BackendError

FIELD_MANAGER = "edge-harness"

# Labels the renderer puts on nodes and pods (docs/CONTRACTS.md §2). Repeated
# here rather than imported from harness.render.naming so a backend depends on
# the rendered *output* contract, not on renderer internals.
LABEL_REGION = "topology.kubernetes.io/region"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_ZONE_TYPE = "edge-harness.io/zone-type"
LABEL_APP = "app"
LABEL_POD_ZONE = "edge-harness.io/zone"
LABEL_CONSUL_SERVICE = "edge-harness.io/consul-service"
ANN_CONSUL_SERVICE = "consul.hashicorp.com/connect-service"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Pod label in the Service selector but NOT in the Deployment selector: setting
# it to "false" takes a pod out of its Service's Endpoints (so consul-k8s
# deregisters the instance) while the ReplicaSet keeps owning it (no
# replacement pod appears). See `KubeCluster.set_serving`.
LABEL_SERVING = "edge-harness.io/serving"

DATAPLANE_CONTAINER = "consul-dataplane"
CONSUL_API_GROUP = "consul.hashicorp.com"

ProgressFn = Callable[[str], None]


def _no_progress(_msg: str) -> None:
    """Default progress sink: long steps report progress only when someone listens."""


class KubeApiError(BackendError):
    """A non-2xx answer from the API server, with the status the caller may branch on."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.api_message = message
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


@dataclass(frozen=True)
class ResourceRef:
    """Where objects of one kind live in the API (from discovery)."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def prefix(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def collection(self, namespace: str | None) -> str:
        if self.namespaced:
            return f"{self.prefix}/namespaces/{quote(namespace or 'default')}/{self.plural}"
        return f"{self.prefix}/{self.plural}"

    def item(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name)}"


@dataclass(frozen=True)
class AppliedObject:
    """One object `apply` sent; `created` is False when it existed before (so `down` must leave it)."""

    api_version: str
    kind: str
    namespace: str | None
    name: str
    created: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AppliedObject:
        return cls(str(d["apiVersion"]), str(d["kind"]), d.get("namespace"), str(d["name"]), bool(d["created"]))


@dataclass(frozen=True)
class NodeInfo:
    """A node as the chaos primitives need it: its zone, and how to reach it on the network."""

    name: str
    zone: str
    region: str
    zone_type: str  # label edge-harness.io/zone-type; "" when the node does not carry it
    internal_ip: str
    pod_cidrs: tuple[str, ...]
    unschedulable: bool


def api_client_from_kubeconfig(kubeconfig: str | Path | None, context: str | None) -> k8s_client.ApiClient:
    """An ApiClient for one kubeconfig context (its own Configuration: no process-wide globals)."""
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_kube_config(
            config_file=str(kubeconfig) if kubeconfig is not None else None,
            context=context,
            client_configuration=cfg,
            persist_config=False,
        )
    except k8s_config.ConfigException as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "default kubeconfig"
        raise BackendError(f"{where}: cannot use context {context or '(current)'}: {exc}") from None
    except FileNotFoundError:
        raise BackendError(f"kubeconfig {kubeconfig}: no such file") from None
    return k8s_client.ApiClient(cfg)


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def parse_k8s_time(value: str | None) -> float | None:
    """RFC 3339 (as the API writes `startTime`, `deletionTimestamp`) -> epoch seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class KubeCluster:
    """One cluster behind an ApiClient: apply, wait, nodes, inventory, pod chaos.

    Thread-safe for concurrent calls: the ApiClient's urllib3 pool is, and the
    discovery cache is guarded by a lock.
    """

    def __init__(self, api_client: k8s_client.ApiClient, *, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self._lock = threading.Lock()
        self._discovery: dict[str, dict[str, ResourceRef]] = {}  # apiVersion -> kind -> ref

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | Path | None, context: str | None) -> KubeCluster:
        return cls(api_client_from_kubeconfig(kubeconfig, context))

    # -- raw REST ------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Sequence[tuple[str, str]] = (),
        content_type: str | None = None,
        stream: bool = False,
        timeout: float | tuple[float, float] | None = 60.0,
    ) -> Any:
        """One API call; JSON answers are decoded; non-2xx raises `KubeApiError`.

        With `stream` the urllib3 response comes back unread (for follows and watches).
        """
        headers: dict[str, str | None] = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        req = self.api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query),
            header_params=headers,
            body=body,  # serialised by the REST layer (JSON is valid YAML for apply-patch+yaml)
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(*req, _request_timeout=timeout)
        if not 200 <= resp.status <= 299:
            data = resp.read()
            message = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            with contextlib.suppress(ValueError, AttributeError):
                message = str(json.loads(message).get("message", message))
            first = message.splitlines()[0][:300] if message else ""
            raise KubeApiError(resp.status, method, path, first)
        if stream:
            return resp.response  # urllib3 HTTPResponse, unread
        data = resp.read()
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else data

    # -- discovery -----------------------------------------------------------
    def _load_group_version(self, api_version: str) -> dict[str, ResourceRef]:
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            doc = self.request("GET", prefix)
        except KubeApiError as exc:
            if exc.status == 404:
                return {}
            raise
        refs: dict[str, ResourceRef] = {}
        for entry in (doc or {}).get("resources", []):
            name = str(entry.get("name", ""))
            if not name or "/" in name or not entry.get("kind"):
                continue  # subresources (pods/log) are not object kinds
            refs[str(entry["kind"])] = ResourceRef(api_version, str(entry["kind"]), name, bool(entry.get("namespaced")))
        return refs

    def resource(self, api_version: str, kind: str) -> ResourceRef:
        """Where `kind` lives; discovery is cached but re-read once on a miss (CRDs arrive with Helm)."""
        with self._lock:
            cached = self._discovery.get(api_version, {}).get(kind)
        if cached is not None:
            return cached
        refs = self._load_group_version(api_version)
        with self._lock:
            self._discovery[api_version] = refs
        if kind not in refs:
            hint = " (Consul's CRDs come with its Helm chart: is Consul installed?)" if "consul" in api_version else ""
            raise BackendError(f"the cluster does not serve {kind} ({api_version}){hint}")
        return refs[kind]

    def forget_discovery(self) -> None:
        """Drop cached discovery (after CRDs were installed)."""
        with self._lock:
            self._discovery.clear()

    # -- apply / delete ------------------------------------------------------
    @staticmethod
    def apply_order(objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Namespaces first, then CRDs, then everything else in the given (rendered) order.

        A namespaced object cannot be created before its namespace exists, and a
        custom resource not before its definition; the rest keeps the renderer's
        order, which is already meaningful (ConfigMaps before the Deployments
        mounting them, Consul config entries last).
        """
        objs = list(objects)
        rank = {"Namespace": 0, "CustomResourceDefinition": 1}
        return sorted(objs, key=lambda o: rank.get(str(o.get("kind")), 2))  # sorted() is stable

    def apply_one(self, obj: Mapping[str, Any]) -> AppliedObject:
        """Create the object, or server-side apply it when it exists (idempotent re-`up`).

        Create-then-apply rather than apply-only: it tells us whether the object
        existed before, which is what lets `down` remove only what we created.
        Server-side apply with force makes the harness the owner of every field
        it sets, so a re-applied (possibly edited) manifest wins over drift.
        """
        api_version, kind = str(obj["apiVersion"]), str(obj["kind"])
        meta = _meta(obj)
        name = str(meta["name"])
        ref = self.resource(api_version, kind)
        namespace = (meta.get("namespace") or "default") if ref.namespaced else None
        body = dict(obj)
        if ref.namespaced:
            body["metadata"] = {**meta, "namespace": namespace}
        try:
            self.request("POST", ref.collection(namespace), body=body, query=[("fieldManager", self.field_manager)])
            created = True
        except KubeApiError as exc:
            if exc.status != 409:
                raise BackendError(
                    f"cannot create {kind} {namespace + '/' if namespace else ''}{name}: {exc}"
                ) from None
            self.request(
                "PATCH",
                ref.item(namespace, name),
                body=body,
                query=[("fieldManager", self.field_manager), ("force", "true")],
                content_type="application/apply-patch+yaml",
            )
            created = False
        if kind == "CustomResourceDefinition":
            self.forget_discovery()
        return AppliedObject(api_version, kind, namespace, name, created)

    def apply(self, objects: Iterable[Mapping[str, Any]], progress: ProgressFn = _no_progress) -> list[AppliedObject]:
        ordered = self.apply_order(objects)
        out: list[AppliedObject] = []
        for i, obj in enumerate(ordered, 1):
            applied = self.apply_one(obj)
            out.append(applied)
            where = f"{applied.namespace}/" if applied.namespace else ""
            progress(f"applied {i}/{len(ordered)} {applied.kind} {where}{applied.name}")
        return out

    def _on_item(self, method: str, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """`method` on one object's URL; False on 404, so a missing object is an answer, not an error."""
        ref = self.resource(api_version, kind)
        try:
            self.request(method, ref.item(namespace if ref.namespaced else None, name))
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        """Delete one object; False when it was already gone (so `down` is idempotent)."""
        return self._on_item("DELETE", api_version, kind, namespace, name)

    def exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        return self._on_item("GET", api_version, kind, namespace, name)

    # -- readiness -----------------------------------------------------------
    def deployments_ready(self, deployments: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
        """(namespace, name) -> (ready replicas, desired replicas; -1 when missing), from one list call."""
        items = (self.request("GET", "/apis/apps/v1/deployments") or {}).get("items", [])
        found = {(str(_meta(d).get("namespace")), str(_meta(d).get("name"))): d for d in items}
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for key in deployments:
            d = found.get(key)
            if d is None:
                out[key] = (0, -1)
                continue
            desired = int((d.get("spec") or {}).get("replicas", 1))
            status = d.get("status") or {}
            ready = int(status.get("readyReplicas") or 0)
            generation = _meta(d).get("generation")
            observed = status.get("observedGeneration")
            if generation is not None and observed is not None and int(observed) < int(generation):
                ready = 0  # the controller has not seen the latest spec yet: its counts are stale
            out[key] = (ready, desired)
        return out

    def wait_deployments_ready(
        self,
        deployments: Sequence[tuple[str, str]],
        timeout: float,
        progress: ProgressFn = _no_progress,
        poll: float = 2.0,
    ) -> None:
        """Block until every Deployment has all replicas ready; BackendError naming the laggards on timeout."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            state = self.deployments_ready(deployments)
            pending = {k: v for k, v in state.items() if v[1] < 0 or v[0] < v[1]}
            msg = f"deployments ready {len(state) - len(pending)}/{len(state)}"
            if msg != last:
                progress(msg)
                last = msg
            if not pending:
                return
            if time.monotonic() >= deadline:
                detail = ", ".join(
                    f"{ns}/{name} " + ("missing" if desired < 0 else f"{ready}/{desired} ready")
                    for (ns, name), (ready, desired) in sorted(pending.items())
                )
                raise BackendError(f"not ready after {timeout:.0f}s: {detail}")
            time.sleep(poll)

    # -- nodes ---------------------------------------------------------------
    def node_infos(self) -> list[NodeInfo]:
        items = (self.request("GET", "/api/v1/nodes") or {}).get("items", [])
        out = []
        for n in items:
            labels = _labels(n)
            addresses = ((n.get("status") or {}).get("addresses")) or []
            ip = next((a.get("address", "") for a in addresses if a.get("type") == "InternalIP"), "")
            spec = n.get("spec") or {}
            cidrs = tuple(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
            out.append(
                NodeInfo(
                    name=str(_meta(n)["name"]),
                    zone=labels.get(LABEL_ZONE, ""),
                    region=labels.get(LABEL_REGION, ""),
                    zone_type=labels.get(LABEL_ZONE_TYPE, ""),
                    internal_ip=str(ip),
                    pod_cidrs=cidrs,
                    unschedulable=bool(spec.get("unschedulable")),
                )
            )
        return out

    def nodes(self) -> dict[str, str]:
        """Node name -> zone (nodes without a zone label map to "")."""
        return {n.name: n.zone for n in self.node_infos()}

    def cordon(self, node: str, unschedulable: bool = True) -> None:
        self.request(
            "PATCH",
            f"/api/v1/nodes/{quote(node)}",
            body={"spec": {"unschedulable": unschedulable}},
            content_type="application/merge-patch+json",
        )

    def uncordon(self, node: str) -> None:
        self.cordon(node, unschedulable=False)

    def drain(self, node: str, grace_period_seconds: int = 0) -> list[str]:
        """Cordon `node` and delete its pods (DaemonSet and mirror pods stay, as `kubectl drain` does).

        Deletion, not eviction: this is chaos, a PodDisruptionBudget must not
        be able to veto it. Returns `namespace/pod` names.
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
            self.delete_pod(str(meta.get("namespace")), str(meta["name"]), grace_period_seconds)
            killed.append(f"{meta.get('namespace')}/{meta['name']}")
        return killed

    # -- pods ----------------------------------------------------------------
    def pods(self, namespace: str | None = None, selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Pods (all namespaces when None) whose labels include `selector` (checked here too)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods" if namespace else "/api/v1/pods"
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in selector.items()))] if selector else []
        items = (self.request("GET", path, query=query) or {}).get("items", [])
        want = dict(selector or {})
        return [p for p in items if all(_labels(p).get(k) == v for k, v in want.items())]

    def save_artifacts(self, out: Path, namespaces: Iterable[str]) -> list[str]:
        """For the post-mortem: events and every container's log of every pod in `namespaces`.

        Envoy's config dumps come from the backend (`KubeBackend.save_artifacts`,
        through a port-forward to each sidecar's admin). Each failure is written
        down instead of aborting, since artifacts are collected precisely when
        things are broken.
        """
        saved: list[str] = []
        for ns in sorted(set(namespaces)):
            nsdir = out / ns
            nsdir.mkdir(parents=True, exist_ok=True)
            try:
                events = self.request("GET", f"/api/v1/namespaces/{quote(ns)}/events")
                (nsdir / "events.json").write_text(json.dumps(events, indent=2, default=str))
            except (KubeApiError, BackendError) as exc:
                (nsdir / "events.json").write_text(json.dumps({"error": str(exc)}))
            for pod in self.pods(ns):
                name = str(_meta(pod)["name"])
                for c in (pod.get("spec") or {}).get("containers") or []:
                    cname = str(c.get("name"))
                    try:
                        text = self.request(
                            "GET",
                            f"/api/v1/namespaces/{quote(ns)}/pods/{quote(name)}/log",
                            query=[("container", cname)],
                        )
                    except (KubeApiError, BackendError) as exc:
                        text = f"log unavailable: {exc}"
                    body = text if isinstance(text, str) else json.dumps(text)
                    (nsdir / f"{name}.{cname}.log").write_text(body)
                saved.append(f"{ns}/{name}")
        return saved

    def pods_of(self, zone: str, service: str) -> list[dict[str, Any]]:
        """HashiCups pods of logical `service` in `zone` (by the renderer's pod labels)."""
        return self.pods(selector={LABEL_POD_ZONE: zone, LABEL_APP: service})

    def delete_pod(self, namespace: str, name: str, grace_period_seconds: int | None = 0) -> bool:
        query = [("gracePeriodSeconds", str(grace_period_seconds))] if grace_period_seconds is not None else []
        try:
            self.request("DELETE", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}", query=query)
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def kill_pods(self, zone: str, service: str) -> list[str]:
        """Delete every pod of `service` in `zone` with no grace period (a crash, not a shutdown)."""
        names = []
        for p in self.pods_of(zone, service):
            meta = _meta(p)
            if self.delete_pod(str(meta.get("namespace")), str(meta["name"]), 0):
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
        controller drops the pod, consul-k8s deregisters its instance (exactly
        what a failing readiness probe leads to), while the ReplicaSet keeps
        owning the running pod, so no replacement hides the fault. Setting it
        back to "true" restores it.
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

    def pod_phases(self, namespaces: Iterable[str] | None = None) -> dict[str, str]:
        """Pod name -> its state as the chaos probes read it, for HashiCups pods (those with a zone label).

        `Ready` is the pod's Ready condition (what the Endpoints controller and
        so consul-k8s go by), never the phase: a Running pod can be unready for
        a long time (readiness probe failing, a node the control plane lost).
        States: Ready, Unready (taken out of its Service by the unready chaos),
        NotReady, Terminating, or the phase (Pending, ...). Keyed by pod name,
        the inventory's key, which the chaos actions join on.
        """
        items: list[dict[str, Any]] = []
        if namespaces is None:
            items = self.pods()
        else:
            for ns in namespaces:
                items += self.pods(ns)
        return {str(_meta(p)["name"]): pod_state(p) for p in items if LABEL_POD_ZONE in _labels(p)}

    def config_entry_status(self, objects: Iterable[Mapping[str, Any]]) -> list[ConfigEntryStatus]:
        """The consul-k8s sync status of each Consul config-entry CRD among `objects`, read from the API.

        consul-k8s writes `status.conditions[type=Synced]` ("True" once the
        entry is in Consul; "False" with reason/message when Consul refused it;
        "Unknown" while it is being written): consul-http-api-subset.md §6.
        A missing object or condition is reported as not synced, never skipped.
        """
        out: list[ConfigEntryStatus] = []
        for obj in objects:
            api_version = str(obj.get("apiVersion", ""))
            if not api_version.startswith(CONSUL_API_GROUP + "/"):
                continue
            kind, meta = str(obj["kind"]), _meta(obj)
            ns, name = str(meta.get("namespace") or "default"), str(meta["name"])
            try:
                ref = self.resource(api_version, kind)
                live = self.request("GET", ref.item(ns, name))
            except KubeApiError as exc:
                if exc.status != 404:
                    raise
                out.append(ConfigEntryStatus(kind, ns, name, False, "NotFound", "the object does not exist"))
                continue
            cond = next(
                (c for c in ((live or {}).get("status") or {}).get("conditions") or [] if c.get("type") == "Synced"),
                None,
            )
            if cond is None:
                out.append(
                    ConfigEntryStatus(kind, ns, name, False, "NoSyncedCondition", "consul-k8s has not synced it")
                )
                continue
            out.append(
                ConfigEntryStatus(
                    kind, ns, name, cond.get("status") == "True", str(cond.get("reason") or ""),
                    str(cond.get("message") or ""),
                )
            )  # fmt: skip
        return out

    def find_consul(self) -> ConsulInstall | None:
        """The Consul the chart installed, found by the chart's labels (any namespace); None when absent.

        The chart labels its objects `app=consul`, `release=<release>` and
        `component=server|connect-injector|ui` (charts/consul/templates/
        server-statefulset.yaml, connect-inject-deployment.yaml, ui-service.yaml);
        the server's image tag is the Consul version.
        """
        servers = [p for p in self.pods(selector={"component": "server"}) if _labels(p).get("app") == "consul"]
        if not servers:
            return None
        server = servers[0]
        ns = str(_meta(server).get("namespace"))
        release = _labels(server).get("release", "consul")
        image = next(
            (str(c.get("image")) for c in (server.get("spec") or {}).get("containers") or [] if c.get("image")), ""
        )
        version = image.rsplit(":", 1)[-1] if ":" in image else ""
        injectors = [
            p for p in self.pods(ns, selector={"component": "connect-injector"}) if _labels(p).get("app") == "consul"
        ]
        ui = [
            svc
            for svc in (self.request("GET", f"/api/v1/namespaces/{quote(ns)}/services") or {}).get("items") or []
            if _labels(svc).get("app") == "consul" and _labels(svc).get("component") == "ui"
        ]
        ui_port = 80
        if ui:
            ports = (ui[0].get("spec") or {}).get("ports") or []
            http = [int(x["port"]) for x in ports if x.get("name") == "http" or int(x.get("targetPort") or 0) == 8500]
            ui_port = http[0] if http else 80
        return ConsulInstall(
            namespace=ns,
            release=release,
            image=image,
            version=version,
            servers_ready=sum(1 for p in servers if pod_condition(p, "Ready")[0] == "True"),
            injectors_ready=sum(1 for p in injectors if pod_condition(p, "Ready")[0] == "True"),
            ui_service=str(_meta(ui[0])["name"]) if ui else "",
            ui_port=ui_port,
        )

    # -- inventory -----------------------------------------------------------
    @staticmethod
    def pod_info(pod: Mapping[str, Any], node_zones: Mapping[str, str]) -> PodInfo | None:
        """PodInfo of a HashiCups pod with an IP, else None (not ours, or not scheduled yet).

        The zone comes from the node the pod runs on (the truth about where it
        served from); the pod's own zone label is only the fallback for a node
        whose labels we do not know.
        """
        labels = _labels(pod)
        if LABEL_POD_ZONE not in labels:
            return None
        meta = _meta(pod)
        status = pod.get("status") or {}
        ip = status.get("podIP")
        node = (pod.get("spec") or {}).get("nodeName") or ""
        if not ip:
            return None
        ann = meta.get("annotations") or {}
        started = parse_k8s_time(status.get("startTime")) or parse_k8s_time(meta.get("creationTimestamp"))
        return PodInfo(
            pod=str(meta["name"]),
            ip=str(ip),
            node=str(node),
            zone=node_zones.get(node) or labels[LABEL_POD_ZONE],
            service=labels.get(LABEL_APP, ""),
            consul_service=labels.get(LABEL_CONSUL_SERVICE) or str(ann.get(ANN_CONSUL_SERVICE, "")),
            namespace=str(meta.get("namespace", "")),
            started=started if started is not None else time.time(),
        )

    def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        """All pods and the list's resourceVersion (where a watch continues without a gap)."""
        doc = self.request("GET", "/api/v1/pods") or {}
        return list(doc.get("items") or []), str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def refresh_inventory(self, inventory: Inventory) -> None:
        """One list, folded into `inventory` (pods gone since are removed): a catch-up, not a history."""
        items, _rv = self.list_pods()
        PodTracker(inventory, self.nodes()).sync(items, initial=True)

    def watch_inventory(self, inventory: Inventory) -> InventoryWatcher:
        """List now (so the inventory is current when this returns), then keep it current until `.stop()`."""
        w = InventoryWatcher(self, inventory)
        w.start()
        return w

    def stream_lines(
        self, path: str, query: Sequence[tuple[str, str]], read_timeout: float | None = None
    ) -> LineStream:
        """Open a streaming GET (watch, follow) and hand back its lines."""
        resp = self.request(
            "GET", path, query=query, stream=True, timeout=(10.0, read_timeout) if read_timeout else None
        )
        return LineStream(resp)


@dataclass(frozen=True)
class ConsulInstall:
    """A Consul found in the cluster (existing backend: used as it is, after checks)."""

    namespace: str
    release: str
    image: str
    version: str  # the server image's tag, e.g. 1.22.7 or 1.22.7-ent
    servers_ready: int
    injectors_ready: int  # connect-injector pods Ready: without one, no pod gets a sidecar
    ui_service: str
    ui_port: int


def pod_condition(pod: Mapping[str, Any], kind: str) -> tuple[str, float | None]:
    """(status, lastTransitionTime) of a pod condition; ("", None) when the pod has none of that type."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status") or ""), parse_k8s_time(c.get("lastTransitionTime"))
    return "", None


def pod_serving(pod: Mapping[str, Any]) -> bool:
    """Whether the pod is an Endpoints address of its Service, i.e. what consul-k8s registers as passing.

    Ready condition True, the `edge-harness.io/serving` label (part of the
    Service selector) not "false", and not terminating: the Endpoints
    controller drops terminating pods from `addresses` at once.
    """
    return (
        pod_condition(pod, "Ready")[0] == "True"
        and _labels(pod).get(LABEL_SERVING) != "false"
        and not _meta(pod).get("deletionTimestamp")
    )


def pod_state(pod: Mapping[str, Any]) -> str:
    """Ready / Unready / NotReady / Terminating / <phase>: one word per pod for status and probes."""
    if _meta(pod).get("deletionTimestamp"):
        return "Terminating"
    phase = str((pod.get("status") or {}).get("phase") or "Unknown")
    if phase != "Running":
        return phase
    if pod_condition(pod, "Ready")[0] != "True":
        return "NotReady"
    if _labels(pod).get(LABEL_SERVING) == "false":
        return "Unready"
    return "Ready"


class PodTracker:
    """Turns pod snapshots (a list, watch events) into inventory events (docs/CONTRACTS.md, inventory.jsonl).

    - `added` when a HashiCups pod first has an IP; `ip` when the same pod
      later holds another one (its sandbox was re-created on a restarted node);
    - `ready` / `unready` when `pod_serving` changes, at the Ready condition's
      `lastTransitionTime` when that is what changed (metav1.Time has second
      precision, so it can be up to 1 s early; it is kept within the pod's own
      history and never later than now), else when it was observed (a label
      flip or a deletion carries no time of its own);
    - `removed` when the pod is deleted, failed or succeeded.
    Times of pods found by the first list are the cluster's (startTime,
    lastTransitionTime), so history before the watch began is not guessed.
    """

    def __init__(self, inventory: Inventory, zones: Mapping[str, str]) -> None:
        self.inventory = inventory
        self.zones = dict(zones)
        self._last_ts: dict[str, float] = {}

    def _at(self, pod: str, ts: float | None, now: float) -> float:
        t = now if ts is None else min(max(ts, self._last_ts.get(pod, ts)), now)
        self._last_ts[pod] = max(t, self._last_ts.get(pod, t))
        return t

    def observe(self, pod: Mapping[str, Any], *, initial: bool = False, now: float | None = None) -> None:
        now = time.time() if now is None else now
        name = str(_meta(pod).get("name", ""))
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self.gone(name, now)
            return
        info = pod_info_of(pod, self.zones)
        if info is None:
            return
        known = self.inventory.get(name)
        if known is None or known.ended is not None:
            started = self._at(name, info.started if initial else None, now)
            self.inventory.added(PodInfo(**{**asdict(info), "started": started}))
        elif known.ip != info.ip:
            self.inventory.ip_changed(info, self._at(name, None, now))
        serving = pod_serving(pod)
        if serving == self.inventory.is_ready(name):
            return
        status, changed_at = pod_condition(pod, "Ready")
        by_condition = (status == "True") == serving and changed_at is not None
        ts = self._at(name, changed_at if by_condition else None, now)
        if serving:
            self.inventory.ready(name, ts)
        else:
            self.inventory.unready(name, ts)

    def gone(self, name: str, now: float | None = None) -> None:
        info = self.inventory.get(name)
        if info is None or info.ended is not None:
            return
        self.inventory.removed(name, self._at(name, None, time.time() if now is None else now))

    def sync(self, items: Iterable[Mapping[str, Any]], *, initial: bool = False) -> None:
        """A full list: observe each pod, end the live ones the list no longer has."""
        now = time.time()
        seen = set()
        for p in items:
            self.observe(p, initial=initial, now=now)
            seen.add(str(_meta(p).get("name", "")))
        for info in self.inventory.pods(alive_only=True):
            if info.pod not in seen:
                self.gone(info.pod, now)


def pod_info_of(pod: Mapping[str, Any], zones: Mapping[str, str]) -> PodInfo | None:
    """`KubeCluster.pod_info` without a cluster (the logic needs only the pod and the node zones)."""
    return KubeCluster.pod_info(pod, zones)


class LineStream:
    """Lines of a streaming HTTP response; `close()` from another thread unblocks the reader."""

    def __init__(self, response: Any) -> None:
        self._resp = response

    def lines(self) -> Iterator[str]:
        buf = b""
        try:
            while True:
                chunk = self._resp.read1(65536) if hasattr(self._resp, "read1") else self._resp.read(65536)
                if not chunk:
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    yield raw.decode("utf-8", "replace").rstrip("\r")
        except Exception:  # closed under us, reset, or a chunked body cut short (urllib3 ProtocolError:
            pass  # the pod went mid-follow): whatever the cause, the stream simply ends
        if buf.strip():
            yield buf.decode("utf-8", "replace")

    def close(self) -> None:
        for method in ("shutdown", "close", "release_conn"):
            with contextlib.suppress(Exception):
                getattr(self._resp, method)()


class InventoryWatcher:
    """List + watch of pods feeding an Inventory through a `PodTracker`, until stopped.

    Kubernetes' list/watch contract (api-concepts, "Efficient detection of
    changes"): the list's `metadata.resourceVersion` is where the watch
    starts, so nothing between the two is missed; every event's object
    carries its resourceVersion, and a watch that ends (the server's
    `timeoutSeconds`, a dropped connection) resumes from the last one seen,
    with `allowWatchBookmarks` keeping it current through quiet periods; a
    version the server no longer has answers `ERROR` 410 Expired, and only
    then is the whole list read again (pods gone meanwhile are removed). The
    first list happens in `start()`, so the inventory is complete when the
    caller goes on to send traffic.
    """

    def __init__(self, cluster: KubeCluster, inventory: Inventory, watch_timeout_s: int = 300) -> None:
        self.cluster = cluster
        self.inventory = inventory
        self.watch_timeout_s = watch_timeout_s
        self.tracker = PodTracker(inventory, {})
        self._stop = threading.Event()
        self._stream: LineStream | None = None
        self._rv = ""
        self._thread = threading.Thread(target=self._run, name="eh-inventory-watch", daemon=True)
        self.errors: list[str] = []
        self.relists = 0

    def _relist(self, initial: bool) -> None:
        self.tracker.zones = self.cluster.nodes()
        items, self._rv = self.cluster.list_pods()
        self.tracker.sync(items, initial=initial)
        self.relists += 1

    def start(self) -> None:
        self._relist(initial=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if not self._rv:
                    self._relist(initial=False)
                query = [
                    ("watch", "true"),
                    ("resourceVersion", self._rv),
                    ("allowWatchBookmarks", "true"),
                    ("timeoutSeconds", str(self.watch_timeout_s)),
                ]
                stream = self.cluster.stream_lines("/api/v1/pods", query, read_timeout=self.watch_timeout_s + 30)
                self._stream = stream
                if self._stop.is_set():
                    stream.close()
                    break
                for line in stream.lines():
                    if self._stop.is_set():
                        break
                    self._handle(line)
                backoff = 0.5
            except Exception as exc:  # a watch must outlive API hiccups; the error is kept for status
                self.errors.append(str(exc))
                self._rv = ""
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _handle(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        obj = event.get("object") or {}
        kind = event.get("type")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            self.errors.append(f"watch: {obj.get('message') if isinstance(obj, dict) else obj}")
            if code == 410:
                self._rv = ""  # expired: list again
                if self._stream is not None:
                    self._stream.close()
            return
        if not isinstance(obj, dict) or "metadata" not in obj:
            return
        rv = str(obj["metadata"].get("resourceVersion") or "")
        if rv:
            self._rv = rv
        if kind == "BOOKMARK":
            return
        name = str(obj["metadata"].get("name", ""))
        if kind == "DELETED":
            self.tracker.gone(name)
            return
        node = (obj.get("spec") or {}).get("nodeName")
        if node and node not in self.tracker.zones:
            self.tracker.zones.update(self.cluster.nodes())  # a node joined since we looked
        self.tracker.observe(obj)


# -- sidecar access logs ------------------------------------------------------

ACCESS_LOG_KEYS = frozenset({"start_time", "response_code", "upstream_cluster"})


def access_log_record(text: str, pod: str) -> str | None:
    """The line as JSON with `caller_pod` added, when it is an Envoy access-log line; else None.

    consul-dataplane's container log mixes its own (hclog) lines and Envoy's
    with the access log; only JSON objects carrying access-log fields count.
    """
    s = text.strip()
    if not s.startswith("{"):
        return None
    try:
        rec = json.loads(s)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not rec.keys() >= ACCESS_LOG_KEYS:
        return None
    rec["caller_pod"] = pod
    return json.dumps(rec, separators=(",", ":"))


def split_timestamp(line: str) -> tuple[int, str] | None:
    """`2026-11-25T20:26:03.123456789Z text` (logs with timestamps=true) -> (epoch ns, text)."""
    stamp, sep, text = line.partition(" ")
    if not sep or not stamp.endswith("Z") or "T" not in stamp:
        return None
    base, _, frac = stamp[:-1].partition(".")
    try:
        secs = int(datetime.fromisoformat(base + "+00:00").timestamp())
    except ValueError:
        return None
    nanos = int((frac + "000000000")[:9]) if frac.isdigit() else 0
    return secs * 1_000_000_000 + nanos, text


def since_time(ns: int) -> str:
    """sinceTime for the log API (RFC 3339, second precision: the server truncates anyway)."""
    return datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class LogStream(Protocol):
    def lines(self) -> Iterator[str]: ...
    def close(self) -> None: ...


# since_time (None: from the container's start) -> an open follow stream with timestamps.
LogOpener = Callable[[str | None], LogStream]


class PodGone(Exception):
    """Raised by a LogOpener when the pod no longer exists: the source is finished."""


def api_log_opener(cluster: KubeCluster, namespace: str, pod: str, container: str) -> LogOpener:
    """Follow a container's log through the API (timestamps on, for resuming and dedupe)."""

    def open_(since: str | None) -> LogStream:
        query = [("container", container), ("follow", "true"), ("timestamps", "true")]
        if since is not None:
            query.append(("sinceTime", since))
        try:
            return cluster.stream_lines(f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}/log", query)
        except KubeApiError as exc:
            if exc.status == 404:
                raise PodGone(pod) from None
            raise

    return open_


class KubeLogSource(LogSource):
    """One sidecar's access-log lines, followed through the API across container restarts.

    A follow stream ends when the container restarts (or the connection
    drops); the source re-opens it with sinceTime = the last line's second
    and drops lines it already delivered (same timestamp and text), so a
    restart neither loses nor duplicates lines. It stops for good when the
    pod is gone. `read()` never blocks: a background thread does the following.
    """

    def __init__(
        self,
        pod: str,
        namespace: str,
        container: str = DATAPLANE_CONTAINER,
        *,
        cluster: KubeCluster | None = None,
        opener: LogOpener | None = None,
        retry_s: float = 1.0,
    ) -> None:
        if opener is None:
            if cluster is None:
                raise ValueError("KubeLogSource needs a cluster or an opener")
            opener = api_log_opener(cluster, namespace, pod, container)
        self.pod = pod
        self.namespace = namespace
        self.container = container
        self._opener = opener
        self._retry_s = retry_s
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._stream: LogStream | None = None
        self._thread: threading.Thread | None = None
        self._last_ns = -1
        self._seen_at_last: set[str] = set()
        self._accept_lock = threading.Lock()
        self._cluster = cluster
        self.opens = 0
        self.errors: list[str] = []

    def _accept(self, line: str) -> str | None:
        """Dedupe by timestamp: lines at or before the last delivered instant were delivered already."""
        parsed = split_timestamp(line)
        if parsed is None:
            return None
        ns, text = parsed
        with self._accept_lock:
            if ns < self._last_ns or (ns == self._last_ns and text in self._seen_at_last):
                return None
            if ns > self._last_ns:
                self._last_ns = ns
                self._seen_at_last = set()
            self._seen_at_last.add(text)
        return text

    def _deliver(self, line: str) -> None:
        text = self._accept(line)
        if text is None:
            return
        rec = access_log_record(text, self.pod)
        if rec is not None:
            self._queue.put(rec)

    def catch_up(self) -> bool:
        """Read the container log once (not following) from the last delivered second: nothing is left behind.

        The follow stream delivers lines as the API server relays them, with
        no way to tell "all caught up" from "nothing new"; a plain read of the
        log now returns every line the runtime holds, and the timestamp dedupe
        drops what was delivered already. False when the pod is gone (its log
        went with it) or the read failed.
        """
        if self._cluster is None:
            return False
        query = [("container", self.container), ("timestamps", "true")]
        if self._last_ns >= 0:
            query.append(("sinceTime", since_time(self._last_ns)))
        try:
            text = self._cluster.request(
                "GET", f"/api/v1/namespaces/{quote(self.namespace)}/pods/{quote(self.pod)}/log", query=query
            )
        except BackendError as exc:
            self.errors.append(str(exc))
            return False
        for line in (text if isinstance(text, str) else "").splitlines():
            self._deliver(line)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self._opener(since_time(self._last_ns) if self._last_ns >= 0 else None)
            except PodGone:
                break
            except Exception as exc:  # container not started yet, API hiccup: try again shortly
                self.errors.append(str(exc))
                self._stop.wait(self._retry_s)
                continue
            self.opens += 1
            self._stream = stream
            try:
                for line in stream.lines():
                    self._deliver(line)
            finally:
                stream.close()
            self._stop.wait(self._retry_s)  # ended: container restarting, or we are stopping
        self._finished.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"eh-logs-{self.pod}", daemon=True)
            self._thread.start()

    def read(self) -> Iterator[str]:
        self.start()
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    @property
    def finished(self) -> bool:
        """True once the pod is gone (or `close` was called) and no line is left to read."""
        return self._finished.is_set() and self._queue.empty()

    def wait_finished(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        if self._stream is not None:
            self._stream.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._finished.set()


class KubeLogSources:
    """The set of sidecar log sources of a cluster, stable across calls.

    `log_sources()` is called repeatedly to pick up new pods; returning the
    same object for a pod already followed is what keeps lines from being
    delivered twice. Finished sources (pod gone, all lines read) are dropped.
    """

    def __init__(self, cluster: KubeCluster, container: str = DATAPLANE_CONTAINER) -> None:
        self.cluster = cluster
        self.container = container
        self._sources: dict[tuple[str, str], KubeLogSource] = {}
        self._lock = threading.Lock()

    def current(self) -> list[LogSource]:
        meshed = []
        for p in self.cluster.pods():
            meta = _meta(p)
            if LABEL_POD_ZONE not in _labels(p):
                continue
            containers = {c.get("name") for c in ((p.get("spec") or {}).get("containers") or [])}
            if self.container not in containers:
                continue  # not injected (yet): nothing to follow
            meshed.append((str(meta.get("namespace")), str(meta["name"])))
        with self._lock:
            for key in meshed:
                if key not in self._sources:
                    self._sources[key] = KubeLogSource(key[1], key[0], self.container, cluster=self.cluster)
            for key, src in list(self._sources.items()):
                if src.finished:
                    del self._sources[key]
            return list(self._sources.values())

    def known(self) -> list[KubeLogSource]:
        """The sources followed now (without listing pods again)."""
        with self._lock:
            return list(self._sources.values())

    def close(self) -> None:
        with self._lock:
            for src in self._sources.values():
                src.close()
            self._sources.clear()
