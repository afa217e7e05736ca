"""Applying the rendered objects and reading back what became of them (readiness, sync status, artifacts).

Create-then-apply, the apply order, idempotent delete, waiting for
Deployments, the consul-k8s `Synced` condition of config-entry CRDs, finding
an installed Consul, and the post-mortem artifacts: everything that treats
the rendered directory as a set of API objects.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.backends.base import ConfigEntryStatus, ProgressFn
from harness.backends.base import no_progress as _no_progress
from harness.backends.kube.api import AppliedObject, KubeApi, KubeApiError, _labels, _meta
from harness.backends.kube.helmwait import FINAL_WAITING, _container_line, _last_warning
from harness.backends.kube.inventory import pod_condition
from harness.contract.names import (
    CONSUL_API_GROUP,
)
from harness.errors import BackendError
from harness.interrupt import nap

NO_CAUSE_WAITING = frozenset({"ContainerCreating", "PodInitializing"})
"""Waiting reasons that name no cause: still starting, or waiting for the pod's init containers (whose own status
says why)."""
PULL_WAITING = frozenset({"ImagePullBackOff", "ErrImagePull"})
"""Waiting reasons of a pull the runtime refused: its error is only in the kubelet's Warning event "Failed"."""


@dataclass(frozen=True)
class DeploymentState:
    """One Deployment as `kubectl rollout status` judges it (kubectl polymorphichelpers/rollout_status.go
    DeploymentStatusViewer), with its ready count for the progress line.

    Rolled out only when the controller has seen the latest spec (observedGeneration >= generation), every
    replica runs the current template (updatedReplicas >= spec.replicas), no pod of an older one is left
    (status.replicas <= updatedReplicas) and the updated ones are available (availableReplicas >=
    updatedReplicas). readyReplicas alone counts the old template's pods too: a re-`up` whose template changed
    (a new image) was ready as soon as the old pods were, mid-rollout, while they alone served.
    """

    desired: int  # spec.replicas; -1: no such Deployment
    ready: int  # status.readyReplicas, old pods included
    waiting: str = ""  # what the rollout still waits for, in kubectl's terms; "" once rolled out

    @property
    def done(self) -> bool:
        return self.desired >= 0 and not self.waiting

    def text(self) -> str:
        """`missing`, or `<ready>/<desired> ready` and what the rollout waits for."""
        if self.desired < 0:
            return "missing"
        return f"{self.ready}/{self.desired} ready" + (f", {self.waiting}" if self.waiting else "")

    @classmethod
    def of(cls, d: Mapping[str, Any]) -> DeploymentState:
        desired = int((d.get("spec") or {}).get("replicas", 1))
        status = d.get("status") or {}

        def count(key: str) -> int:
            return int(status.get(key) or 0)

        ready = count("readyReplicas")
        if int(status.get("observedGeneration") or 0) < int(_meta(d).get("generation") or 0):
            # the controller has not seen the latest spec: every count is of the previous one
            return cls(desired, ready, "spec update not observed yet")
        updated, replicas, available = count("updatedReplicas"), count("replicas"), count("availableReplicas")
        if updated < desired:
            return cls(desired, ready, f"{updated} of {desired} new replicas updated")
        if replicas > updated:
            return cls(desired, ready, f"{replicas - updated} old replicas pending termination")
        if available < updated:
            return cls(desired, ready, f"{available} of {updated} updated replicas available")
        return cls(desired, ready)


class ApplyMixin(KubeApi):
    """Apply / delete / wait / sync status / artifacts over the raw API."""

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
        A Namespace that exists is left as it is: it may be the operator's
        (the release namespace of the Consul the existing backend uses), whose
        labels are not the harness's to take over, and `down` deletes only the
        namespaces it created (a re-`up` finds its own with the same labels).
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
            if kind == "Namespace":
                return AppliedObject(api_version, kind, namespace, name, False)
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
    def deployments_ready(self, deployments: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeploymentState]:
        """(namespace, name) -> its rollout as kubectl judges it (`DeploymentState`), from one list call."""
        items = (self.request("GET", "/apis/apps/v1/deployments") or {}).get("items", [])
        found = {(str(_meta(d).get("namespace")), str(_meta(d).get("name"))): d for d in items}
        return {key: DeploymentState.of(found[key]) if key in found else DeploymentState(-1, 0) for key in deployments}

    def wait_deployments_ready(
        self,
        deployments: Sequence[tuple[str, str]],
        timeout: float,
        progress: ProgressFn = _no_progress,
        poll: float = 2.0,
    ) -> None:
        """Block until every Deployment is rolled out (`DeploymentState`: all replicas updated, available, none of
        an older template left); BackendError naming the laggards, and what each waits for, on timeout."""
        deadline = time.monotonic() + timeout
        last = ""
        said: set[tuple[str, str, str]] = set()  # (namespace, pod, scheduler's message or container's reason) said
        while True:
            state = self.deployments_ready(deployments)
            pending = {k: v for k, v in state.items() if not v.done}
            msg = f"deployments ready {len(state) - len(pending)}/{len(state)}"
            if msg != last:
                progress(msg)
                last = msg
            if not pending:
                return
            self._say_stuck_pods({ns for ns, _name in pending}, said, progress)
            if time.monotonic() >= deadline:
                detail = ", ".join(
                    f"{ns}/{name} {st.text()}" + self._why_not_ready(ns, name)
                    for (ns, name), st in sorted(pending.items())
                )
                raise BackendError(f"not ready after {timeout:.0f}s: {detail}")
            nap(poll)

    def _say_stuck_pods(self, namespaces: Iterable[str], said: set[tuple[str, str, str]], progress: ProgressFn) -> None:
        """Each pod in `namespaces` kube-scheduler could not place, or whose container the kubelet cannot start, said
        in one line with their own words, once per message (per container and reason for the kubelet), while the
        wait goes on.

        The scheduler records it on the pod as it gives up on a scheduling attempt: phase Pending, condition
        PodScheduled False, reason Unschedulable (v1.PodReasonUnschedulable), message "0/N nodes are available:
        ..." (pkg/scheduler/schedule_one.go handleSchedulingFailure). It retries, and a pod may still be placed
        (a node added, another pod gone), so the wait goes on; but a host too small for the cluster ("Insufficient
        cpu"), an untolerated taint or a zone without nodes is otherwise named only after the whole ready
        timeout. The kubelet's ImagePullBackOff or CrashLoopBackOff (init containers first: they run first) is
        said as helm's wait says it for Consul's pods (`helmwait._container_line`: the runtime's pull error, the
        last exit code), and waited on too: a pull Docker Hub refused over its hourly limit succeeds once the hour
        is through. A list the API refuses is skipped: the timeout's message still names the laggards."""
        for ns in sorted(namespaces):
            try:
                pods = self.pods(ns)
            except (KubeApiError, BackendError):
                continue
            for p in pods:
                status = p.get("status") or {}
                if _meta(p).get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
                    continue
                name = str(_meta(p).get("name"))
                for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                    reason = str(((cs.get("state") or {}).get("waiting") or {}).get("reason") or "")
                    key = (ns, name, f"container {cs.get('name')}: {reason}")
                    if reason not in FINAL_WAITING or key in said:
                        continue
                    line = _container_line(self, ns, name, cs)
                    if line:
                        said.add(key)
                        progress(f"{line} (waiting on)")
                if status.get("phase") != "Pending":
                    continue
                for c in status.get("conditions") or []:
                    if (c.get("type"), c.get("status"), c.get("reason")) != ("PodScheduled", "False", "Unschedulable"):
                        continue
                    why = " ".join(str(c.get("message") or "").split())[:400]
                    key = (ns, name, why)
                    if key not in said:
                        said.add(key)
                        progress(f"{ns}/{name} cannot be scheduled: {why or 'Unschedulable'}")

    def _why_not_ready(self, namespace: str, deployment: str) -> str:
        """ " (<why>)" for a Deployment that is not ready: the first of its pods the scheduler left Pending, with
        the scheduler's own message (PodScheduled False: untolerated taints, too little CPU on a Local Zone's
        instance), else a container's waiting reason (ImagePullBackOff, CrashLoopBackOff), init containers first,
        an image pull's with the runtime's error from the kubelet's Warning event (Docker Hub's "toomanyrequests"
        is only there), else an init container that has not completed; "" when none says.

        Init containers first because the kubelet runs them before the app containers (pkg/kubelet/kuberuntime
        computePodActions): while a meshed pod's consul-connect-inject-init cannot be pulled or keeps exiting,
        every app container only waits "PodInitializing" (kubelet_pods.go convertToAPIContainerStatuses), which
        names no cause, and so does "ContainerCreating" (still starting)."""
        try:
            # a list, as `deployments_ready` reads them (the nightly's role may list Deployments, not get one)
            items = (self.request("GET", f"/apis/apps/v1/namespaces/{quote(namespace)}/deployments") or {}).get("items")
            dep = next((d for d in items or [] if _meta(d).get("name") == deployment), None)
            match = dict((((dep or {}).get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
            pods = self.pods(namespace, match) if match else []
        except (KubeApiError, BackendError):
            return ""
        for p in pods:
            for c in (p.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("status") == "False":
                    return f" (Pending: {' '.join(str(c.get('message') or c.get('reason') or '').split())[:400]})"
        for p in pods:
            status = p.get("status") or {}
            for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") and waiting.get("reason") not in NO_CAUSE_WAITING:
                    msg = " ".join(str(waiting.get("message") or "").split())[:200]
                    said = f"{cs.get('name')}: {waiting['reason']}{': ' + msg if msg else ''}"
                    if waiting["reason"] in PULL_WAITING:
                        failed = _last_warning(self, namespace, str(_meta(p).get("name")), "Failed")
                        said += f"; the kubelet: {failed}" if failed else ""
                    return f" ({said})"
        for p in pods:
            sidecars = {c.get("name") for c in (p.get("spec") or {}).get("initContainers") or []
                        if c.get("restartPolicy") == "Always"}  # fmt: skip
            for cs in (p.get("status") or {}).get("initContainerStatuses") or []:
                if "running" in (cs.get("state") or {}) and cs.get("name") not in sidecars:
                    name = str(_meta(p).get("name"))
                    return (f" (init container {cs.get('name')} has not completed: kubectl logs -n {namespace} {name} "
                            f"-c {cs.get('name')})")  # fmt: skip
        for p in pods:
            for cs in (p.get("status") or {}).get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") == "PodInitializing":
                    return f" ({cs.get('name')}: PodInitializing)"
        return ""

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

    def config_entry_status(self, objects: Iterable[Mapping[str, Any]]) -> list[ConfigEntryStatus]:
        """The consul-k8s sync status of each Consul config-entry CRD among `objects`, read from the API.

        consul-k8s writes `status.conditions[type=Synced]` ("True" once the
        entry is in Consul; "False" with reason/message when Consul refused it;
        "Unknown" while it is being written, or when an update of it failed):
        consul-http-api-subset.md §6. Unknown, and no condition at all, are
        `synced` None (not yet); a missing object is False; none is skipped.
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
            if cond is None:  # no controller has reached it (down, or not yet): not yet, as Unknown
                out.append(
                    ConfigEntryStatus(
                        kind, ns, name, None, "NoSyncedCondition",
                        "no Synced condition: no consul-k8s controller has reconciled it yet (or it is down)",
                    )
                )  # fmt: skip
                continue
            # "Unknown" (a new entry before its write, a failed update) is not yet, never False (refused)
            synced = {"True": True, "False": False}.get(str(cond.get("status")))
            out.append(
                ConfigEntryStatus(
                    kind, ns, name, synced, str(cond.get("reason") or ""), str(cond.get("message") or ""),
                )
            )  # fmt: skip
        return out

    def find_consul(self) -> ConsulInstall | None:
        """The Consul the chart installed, found by the chart's labels (any namespace); None when absent.

        The chart labels its objects `app=consul`, `release=<release>` and
        `component=server|connect-injector|ui` (charts/consul/templates/
        server-statefulset.yaml, connect-inject-deployment.yaml, ui-service.yaml);
        the server's image tag is the Consul version. The UI Service fronts
        the servers' HTTP API: `http` (-> 8500) unless TLS is on with
        `global.tls.httpsOnly` (the default once TLS is on), `https` (-> 8501)
        when TLS is on (ui-service.yaml@v1.9.11); plain HTTP is used when it
        is offered, else HTTPS (`ui_port` 0: the Service offers neither).
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
        version = image_tag(image)
        injectors = [
            p for p in self.pods(ns, selector={"component": "connect-injector"}) if _labels(p).get("app") == "consul"
        ]
        ui = [
            svc
            for svc in (self.request("GET", f"/api/v1/namespaces/{quote(ns)}/services") or {}).get("items") or []
            if _labels(svc).get("app") == "consul" and _labels(svc).get("component") == "ui"
        ]
        ui_scheme, ui_port = "http", 0
        if ui:
            ports = (ui[0].get("spec") or {}).get("ports") or []
            for scheme, target in (("http", 8500), ("https", 8501)):
                match = [int(x["port"]) for x in ports if x.get("name") == scheme or _port_number(x) == target]
                if match:
                    ui_scheme, ui_port = scheme, match[0]
                    break
        pod_name = str(_meta(server).get("name") or "")
        return ConsulInstall(
            namespace=ns,
            release=release,
            image=image,
            version=version,
            servers_ready=sum(1 for p in servers if pod_condition(p, "Ready")[0] == "True"),
            injectors_ready=sum(1 for p in injectors if pod_condition(p, "Ready")[0] == "True"),
            ui_service=str(_meta(ui[0])["name"]) if ui else "",
            ui_port=ui_port,
            ui_scheme=ui_scheme,
            # the chart's `consul.fullname` (its objects' prefix): the server StatefulSet is `<fullname>-server`
            fullname=pod_name.rsplit("-server-", 1)[0] if "-server-" in pod_name else release,
            tproxy_default=_injector_flag(injectors, "default-enable-transparent-proxy"),
        )


def _injector_flag(injectors: Sequence[Mapping[str, Any]], flag: str) -> bool | None:
    """A boolean flag of the connect-injector's command line (the chart passes them in a `/bin/sh -ec` script:
    templates/connect-inject-deployment.yaml); None when no injector pod shows it."""
    for pod in injectors:
        for c in (pod.get("spec") or {}).get("containers") or []:
            words = " ".join(str(x) for x in [*(c.get("command") or []), *(c.get("args") or [])])
            m = re.search(rf"-{re.escape(flag)}=(true|false)\b", words)
            if m:
                return m.group(1) == "true"
    return None


def _port_number(port: Mapping[str, Any]) -> int:
    """A Service port's numeric targetPort (0 for a named one: the chart's UI ports are numbers)."""
    target = port.get("targetPort")
    return int(str(target)) if str(target).isdigit() else 0


@dataclass(frozen=True)
class ConsulInstall:
    """A Consul found in the cluster (existing backend: used as it is, after checks)."""

    namespace: str
    release: str
    image: str
    version: str  # the server image's tag, e.g. 1.22.7 or 1.22.7-ent
    servers_ready: int
    injectors_ready: int  # connect-injector pods Ready: without one, no pod gets a sidecar
    ui_service: str  # the chart's UI Service, which fronts the servers' HTTP API ("" when not rendered)
    ui_port: int  # its port for the API (0: neither http nor https offered)
    ui_scheme: str = "http"  # "https" when the Service offers HTTPS only (TLS with httpsOnly)
    fullname: str = "consul"  # the chart's name prefix: Secrets `<fullname>-ca-cert`, `<fullname>-bootstrap-acl-token`
    # the injector's `-default-enable-transparent-proxy` (connectInject.transparentProxy.defaultEnabled, true in the
    # chart); None when its pods do not say. The rendered pods turn it off each (names.ANN_TRANSPARENT_PROXY).
    tproxy_default: bool | None = None


def image_tag(image: str) -> str:
    """The tag of a container image reference, "" without one.

    A reference is `[host[:port]/]path[:tag][@digest]` (distribution/reference, reference.go's grammar): the tag
    follows the last ':' of the last path component, and a digest follows '@'. Read as "after the last ':'", an
    image pinned by digest (`hashicorp/consul:1.22.7@sha256:<hex>`, as operators pin images in production) gave
    the digest's hex as Consul's version, and `check_consul` refused a current Consul as "too old" (an Enterprise
    one as "not Enterprise"); a registry with a port and no tag gave `5000/hashicorp/consul`.
    """
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""
