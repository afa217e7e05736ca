"""The Kubernetes API core the kind and existing (EKS) backends share: raw REST, discovery, nodes, pods.

Why raw REST calls instead of the typed `CoreV1Api` methods: the rendered
objects include Consul CRDs whose kinds the typed client does not know, and
the harness must apply whatever a (possibly hand-edited) rendered directory
holds. One generic path — discover `kind -> plural` from the API server, then
POST / PATCH / DELETE by URL — treats Deployments and ServiceResolvers alike
and needs nothing per kind. Selectors are always re-checked on the client
side: it costs nothing on a real server and keeps the logic honest against
fakes that ignore them.

The other concerns (apply, pod chaos, inventory watch, log streaming) are
mixins over `KubeApi` in their own modules; `cluster.KubeCluster` joins them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from harness.backends.base import ProgressFn as ProgressFn
from harness.contract.names import LABEL_REGION, LABEL_ZONE, LABEL_ZONE_TYPE
from harness.contract.scheduling import Taint
from harness.errors import BackendError, InputError
from harness.interrupt import nap

FIELD_MANAGER = "edge-harness"
# How often one call is sent again when the API server asks the client to come back later (429, or a 5xx with a
# Retry-After header): client-go's default (rest/request.go NewRequest `maxRetries: 10`), which kubectl and helm use.
MAX_RETRIES = 10


def retry_after_s(status: int, headers: Mapping[str, str] | None) -> int | None:
    """Seconds the API server asked the client to wait before sending the request again, None when it did not.

    What client-go honours (rest/with_retry.go checkWait, retryAfterSeconds): a 429 or any 5xx answer with a
    `Retry-After` header in whole seconds. kube-apiserver says it where nothing of the request was done: API
    Priority and Fairness and max-in-flight reject a request before serving it with 429 `Retry-After: 1`
    (k8s.io/apiserver pkg/server/filters maxinflight.go tooManyRequests), a busy or starting storage answers
    429/5xx with `RetryAfterSeconds`. A 5xx without the header (a webhook that failed) is an answer, not a
    request to come back.
    """
    if status != 429 and status < 500:
        return None
    value = str((headers or {}).get("Retry-After") or "").strip()
    try:
        return max(0, int(value))
    except ValueError:
        return None


def pod_finished(pod: Mapping[str, Any]) -> bool:
    """A run-to-completion pod is done (Succeeded or Failed)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class KubeApiError(BackendError):
    """A non-2xx answer from the API server, with the status the caller may branch on."""

    def __init__(self, status: int, method: str, path: str, message: str, causes: tuple[str, ...] = ()) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.api_message = message
        self.causes = causes  # the types of the Status' details.causes (e.g. NamespaceTerminating)
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


class KubeUnreachable(BackendError):
    """No answer from the API server (refused, reset, timed out): a backend error (exit 3), one line, where it
    used to surface as urllib3's traceback from whichever command asked first (`status`, `chaos`)."""


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
    # what the scheduler reads of it (`harness.contract.scheduling.SchedNode`): every label, the taints, and
    # whether its Ready condition is True (a node without one, as some fakes seed them, counts as Ready)
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    taints: tuple[Taint, ...] = ()
    ready: bool = True


def kubeconfig_user(kubeconfig: str | Path | None, context: str, field: str = "--context") -> dict[str, Any]:
    """The user entry (`users[].user`) that `context` names, read as kubectl reads the kubeconfig; InputError
    (`field` names where the context came from) for a file that is not there or not a kubeconfig, or a context
    it does not have.

    Why here and not at the first API call: a context that is not in the kubeconfig used to reach no cluster at
    all on paths that need none (`down` with nothing recorded under that name said "down"), and a file that
    cannot be read showed as a backend error deep in a command. The files are kubectl's (client-go
    `clientcmd.ClientConfigLoadingRules.Load`): the one given, else each of `KUBECONFIG`'s paths (a missing one
    skipped, the first to name a context or user wins), else ~/.kube/config.
    """
    import os

    import yaml

    if kubeconfig is not None:
        paths, explicit = [Path(kubeconfig)], True
    else:
        env = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        paths, explicit = ([Path(p) for p in env] or [Path("~/.kube/config").expanduser()]), False
    where = os.pathsep.join(map(str, paths))
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in paths:
        if path.is_dir():
            raise InputError(str(path), "", "a directory, not a kubeconfig file")
        if not path.exists():
            if explicit:
                raise InputError(str(path), "", "no such file")
            continue
        try:
            doc = yaml.safe_load(path.read_bytes()) or {}
        except yaml.YAMLError as exc:
            raise InputError(str(path), "", f"not YAML ({str(exc).splitlines()[0]})") from None
        except OSError as exc:
            raise InputError(str(path), "", f"unreadable: {exc.strerror}") from None
        lists = {k: doc.get(k) or [] for k in ("contexts", "users")} if isinstance(doc, dict) else None
        if lists is None or not all(isinstance(v, list) and all(isinstance(e, dict) for e in v)
                                    for v in lists.values()):  # fmt: skip
            raise InputError(str(path), "", "not a kubeconfig (contexts and users must be lists of entries)")
        for entry in lists["contexts"]:
            contexts.setdefault(str(entry.get("name")), entry.get("context") or {})
        for entry in lists["users"]:
            user = entry.get("user") or {}
            cmd = (user.get("exec") or {}).get("command") if isinstance(user, dict) else None
            if isinstance(cmd, str) and "/" in cmd and not Path(cmd).is_absolute():
                # a plugin named by path is relative to its kubeconfig (client-go `GetAuthInfoFileReferences`)
                user = {**user, "exec": {**user["exec"], "command": str(path.parent / cmd)}}
            users.setdefault(str(entry.get("name")), user)
    if context not in contexts:
        have = ", ".join(sorted(contexts)) or "no contexts"
        raise InputError(where, field, f"no context {context!r} (it has: {have})")
    ctx = contexts[context]
    user = users.get(str(ctx.get("user"))) if isinstance(ctx, dict) else None
    return user if isinstance(user, dict) else {}


def api_client_from_kubeconfig(kubeconfig: str | Path | None, context: str | None) -> k8s_client.ApiClient:
    """An ApiClient for one kubeconfig context (its own Configuration: no process-wide globals)."""
    cfg = k8s_client.Configuration()
    # urllib3's own retries (Retry.DEFAULT: 3) for a connection that fails, but none by status: its default sends a
    # GET, PUT or DELETE again on 429/503 with Retry-After (at most 3 times) and never a POST or PATCH, where
    # client-go sends any verb again up to 10 times; `KubeApi.request` does that, once for every verb.
    cfg.retries = urllib3.util.Retry.DEFAULT.new(status=0, status_forcelist=(), respect_retry_after_header=False)
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


class KubeApi:
    """One cluster behind an ApiClient: raw REST, discovery, nodes and pods (the base of every mixin).

    Thread-safe for concurrent calls: the ApiClient's urllib3 pool is, and the
    discovery cache is guarded by a lock.
    """

    def __init__(self, api_client: k8s_client.ApiClient, *, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api_client
        self.field_manager = field_manager
        self._lock = threading.Lock()
        self._discovery: dict[str, dict[str, ResourceRef]] = {}  # apiVersion -> kind -> ref

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
        An answer that asks the client to come back later (`retry_after_s`: a throttled request's 429) is
        waited out and the call sent again, whatever its verb, up to MAX_RETRIES times, as kubectl does: a
        busy API server failed a throttled POST or PATCH at once (an `up`'s apply, a chaos action's cordon or
        label) and any call throttled a fourth time in a row (urllib3's own 3 retries, GET/PUT/DELETE only),
        where kubectl rode both out.
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
        for attempt in range(MAX_RETRIES + 1):
            try:
                resp = self.api.call_api(*req, _request_timeout=timeout)
            except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out, TLS: no answer at all
                reason = getattr(exc, "reason", None) or exc
                host = getattr(self.api.configuration, "host", "?")
                raise KubeUnreachable(f"{method} {path}: the API server at {host} did not answer ({reason})") from None
            wait = retry_after_s(resp.status, resp.headers)
            if wait is None or attempt == MAX_RETRIES:
                break
            resp.read()  # the answer is read to its end, so the connection goes back to the pool
            nap(wait)
        if not 200 <= resp.status <= 299:
            data = resp.read()
            message = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
            causes: tuple[str, ...] = ()
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                body = json.loads(message)
                message = str(body.get("message", message))
                causes = tuple(str(c.get("type")) for c in (body.get("details") or {}).get("causes") or [])
            first = message.splitlines()[0][:300] if message else ""
            raise KubeApiError(resp.status, method, path, first, causes)
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
            ready = next((c.get("status") == "True" for c in (n.get("status") or {}).get("conditions") or []
                          if c.get("type") == "Ready"), True)  # fmt: skip
            taints = tuple(
                Taint(str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
                for t in spec.get("taints") or []
            )
            out.append(
                NodeInfo(
                    name=str(_meta(n)["name"]),
                    zone=labels.get(LABEL_ZONE, ""),
                    region=labels.get(LABEL_REGION, ""),
                    zone_type=labels.get(LABEL_ZONE_TYPE, ""),
                    internal_ip=str(ip),
                    pod_cidrs=cidrs,
                    unschedulable=bool(spec.get("unschedulable")),
                    labels=labels,
                    taints=taints,
                    ready=ready,
                )
            )
        return out

    def nodes(self) -> dict[str, str]:
        """Node name -> zone (nodes without a zone label map to "")."""
        return {n.name: n.zone for n in self.node_infos()}

    # -- pods ----------------------------------------------------------------
    def pods(self, namespace: str | None = None, selector: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Pods (all namespaces when None) whose labels include `selector` (checked here too)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods" if namespace else "/api/v1/pods"
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in selector.items()))] if selector else []
        items = (self.request("GET", path, query=query) or {}).get("items", [])
        want = dict(selector or {})
        return [p for p in items if all(_labels(p).get(k) == v for k, v in want.items())]

    def wait_pod(
        self, namespace: str, name: str, cond: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        """Poll one pod until `cond` holds (a missing pod is not yet there); BackendError naming `what` after the bound.

        For the harness's own one-shot pods (the NetworkPolicy probe, the edge probe).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pod = self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}")
            except KubeApiError:
                pod = None
            if pod and cond(pod):
                return dict(pod)
            if time.monotonic() > deadline:
                phase = ((pod or {}).get("status") or {}).get("phase", "absent")
                raise BackendError(f"{what}: pod {namespace}/{name} not there after {timeout_s:.0f} s ({phase})")
            time.sleep(0.2)

    def stream_lines(
        self, path: str, query: Sequence[tuple[str, str]], read_timeout: float | None = None
    ) -> LineStream:
        """Open a streaming GET (watch, follow) and hand back its lines."""
        resp = self.request(
            "GET", path, query=query, stream=True, timeout=(10.0, read_timeout) if read_timeout else None
        )
        return LineStream(resp)


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
