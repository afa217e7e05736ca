"""Consul's HTTP API, answered from what the local backend compiled (no Consul server runs here).

Preflight (`harness.preflight`) reads Consul's own view of the mesh through
py-consul: config entries, compiled discovery chains, instance health and
intention decisions. On kind/EKS that is the real Consul server behind a
port-forward; on the local backend it is this server, on a loopback TCP port
of the cluster daemon, so the *same client code* runs against both. It
answers in Consul's JSON shapes (shared/reference/consul-http-api-subset.md):

- ``GET /v1/status/leader``: the (fake) server address as a JSON string.
- ``GET /v1/catalog/services``: name -> tags for every registered service and
  its ``-sidecar-proxy`` twin, plus ``consul``.
- ``GET /v1/health/service/:service`` (``?passing``): one entry per pod as
  consul-k8s' endpoints controller registers it (synthetic node
  ``<node>-virtual``, one ``kubernetes-readiness`` check that is passing while
  the pod is Ready); ``?passing`` keeps the passing ones; unknown: ``[]``.
- ``GET /v1/config/:kind`` and ``/v1/config/:kind/:name``: the config-entry
  CRDs the backend compiled, converted as consul-k8s writes them (PascalCase,
  ``Meta`` of the Kubernetes source); a missing entry is 404
  ``Config entry not found for "<kind>" / "<name>"``.
- ``GET|POST /v1/discovery-chain/:service``: the chain compiled by
  `mesh.MeshConfig` (the same compiler that feeds the sidecars): StartNode,
  router and resolver Nodes, Targets, and each resolver's failover targets in
  order. A chain is compiled for any name, like Consul.
- ``GET /v1/connect/intentions/check?source=&destination=``: ``{"Allowed": b}``,
  decided with Consul's precedence (exact source over ``*``, else the
  default: allow, as with ACLs off).

Anything else is 404 (an unknown path) or 405 (another method). Differences
from Consul are listed in docs/local-emulation.md.

`refused_probe` is the local backend's half of preflight's ``refused-probe``
check: a real mTLS request with the source identity's leaf certificate to a
destination pod's inbound listener.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from harness.backends.local.mesh import DEFAULT_NAMESPACE, HTTP_PROTOCOLS, MeshConfig, ServiceRef
from harness.contract import names
from harness.errors import InputError

PARTITION = "default"
LEADER = "127.0.0.1:8300"
SIDECAR_PORT = 20000
SIDECAR_SUFFIX = "-sidecar-proxy"
SERVE_POLL_S = 0.05  # how often the daemon's HTTP servers look for their shutdown (socketserver's default: 0.5 s)
KINDS = names.CONSUL_KINDS
# CRD keys whose Consul JSON name is not the key with its first letter upper-cased.
_KEY_NAMES = {"http": "HTTP", "jsonFormat": "JSONFormat", "textFormat": "TextFormat"}
# CRD keys holding Go durations (Consul writes them back normalised, e.g. "2000ms" -> "2s").
_DURATION_KEYS = {"connectTimeout", "requestTimeout", "idleTimeout", "interval", "baseEjectionTime"}
# Keys whose value is a free-form map: its keys are data, not field names.
_RAW_MAPS = {"config", "meta"}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def go_duration(seconds: float) -> str:
    """Go's time.Duration.String() for the values config entries hold (``5s``, ``500ms``, ``1m30s``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}µs"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{int(hours)}h" if hours else ""
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + f"{secs:g}s"


def _parse_duration(text: str) -> float | None:
    if not _DURATION.match(text):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(text))


def _consul_value(key: str, value: Any) -> Any:
    if key in _RAW_MAPS:
        return value
    if isinstance(value, dict):
        return {
            _KEY_NAMES.get(k, k[:1].upper() + k[1:]) if k != "*" else k: _consul_value(k, v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_consul_value(key, v) for v in value]
    if key in _DURATION_KEYS and isinstance(value, str):
        secs = _parse_duration(value)
        return go_duration(secs) if secs is not None else value
    return value


def config_entry(obj: Mapping[str, Any], mesh: MeshConfig, index: int) -> tuple[str, str, str, dict[str, Any]]:
    """(kind, Consul namespace, name, entry) of one config-entry CRD, as consul-k8s writes it to Consul."""
    kind = KINDS[str(obj["kind"])]
    meta = obj.get("metadata") or {}
    spec = dict(obj.get("spec") or {})
    ns = mesh.consul_namespace(str(meta.get("namespace") or DEFAULT_NAMESPACE))
    name = str(meta.get("name"))
    entry: dict[str, Any] = {"Kind": kind}
    if kind == "service-intentions":
        dest = spec.pop("destination", {}) or {}
        name = str(dest.get("name") or name)
        ns = str(dest.get("namespace") or ns) if mesh.enterprise else DEFAULT_NAMESPACE
        sources = []
        for src in spec.pop("sources", []) or []:
            s = {k[:1].upper() + k[1:]: _consul_value(k, v) for k, v in src.items()}
            exact = src.get("name") != "*"
            s["Precedence"] = 9 if exact else 8  # CE, both namespaces exact: exact name 9, wildcard name 8
            s["Type"] = "consul"
            sources.append(s)
        entry["Name"] = name
        if sources:
            entry["Sources"] = sources
    else:
        entry["Name"] = name
    for k, v in spec.items():
        entry[_KEY_NAMES.get(k, k[:1].upper() + k[1:])] = _consul_value(k, v)
    if mesh.enterprise and kind != "proxy-defaults":
        entry["Namespace"] = ns
    entry["Meta"] = {"consul.hashicorp.com/source-datacenter": mesh.datacenter, "external-source": "kubernetes"}
    entry["CreateIndex"] = entry["ModifyIndex"] = index
    return kind, ns, name, entry


# --------------------------------------------------------------------------- discovery chain


def target_id(ref: ServiceRef, datacenter: str) -> str:
    return f"{ref.name}.{ref.namespace}.{PARTITION}.{datacenter}"


def discovery_chain(mesh: MeshConfig, ref: ServiceRef) -> dict[str, Any]:
    """``{"Chain": CompiledDiscoveryChain}`` for `ref`, from the compiler that feeds the sidecars.

    Raises InputError where Consul refuses to compile (redirect cycle, mixed protocols).
    """
    dc = mesh.datacenter
    mesh.compile_chain(ServiceRef("<discovery-chain>"), ref)  # the errors Consul's compiler raises
    protocol = mesh.protocol(ref)
    nodes: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    default = True

    def resolver_node(start: ServiceRef) -> str:
        nonlocal default
        node, _ = mesh.resolver_node(start, None)
        primary = node.targets[0].service
        has_resolver = primary in mesh.resolvers or start in mesh.resolvers
        default = default and not has_resolver
        tid = target_id(primary, dc)
        ct = go_duration(node.connect_timeout_s)
        resolver: dict[str, Any] = {"ConnectTimeout": ct, "Target": tid}
        if not has_resolver:
            resolver = {"Default": True, **resolver}
        if node.request_timeout_s:
            resolver["RequestTimeout"] = go_duration(node.request_timeout_s)
        if len(node.targets) > 1:
            resolver["Failover"] = {"Targets": [target_id(t.service, dc) for t in node.targets[1:]]}
        nodes[f"resolver:{tid}"] = {"Type": "resolver", "Name": tid, "Resolver": resolver}
        for i, t in enumerate(node.targets):
            # Consul resolves each failover target through its own resolver (getResolverNode), which sets the
            # target's ConnectTimeout; the Envoy child clusters still take the primary's (mesh.envoy).
            own = ct if i == 0 else go_duration(mesh.own_connect_timeout(t.service))
            targets[target_id(t.service, dc)] = {
                "ID": target_id(t.service, dc),
                "Service": t.service.name,
                "Namespace": t.service.namespace,
                "Partition": PARTITION,
                "Datacenter": dc,
                "MeshGateway": {},
                "Subset": {},
                "TransparentProxy": {},
                "ConnectTimeout": own,
                "SNI": t.sni,
                "Name": t.sni,
            }
        return f"resolver:{tid}"

    router = mesh.routers.get(ref) if protocol in HTTP_PROTOCOLS else None
    if router is not None:
        default = False
        name = f"{ref.name}.{ref.namespace}.{PARTITION}"
        routes = []
        for r in router:
            http: dict[str, Any] = {}
            if r.path_exact:
                http["PathExact"] = r.path_exact
            elif r.path_prefix:
                http["PathPrefix"] = r.path_prefix
            d = r.destination
            dest: dict[str, Any] = {"Service": d.service.name, "Namespace": d.service.namespace, "Partition": PARTITION}
            if d.request_timeout_s:
                dest["RequestTimeout"] = go_duration(d.request_timeout_s)
            if d.num_retries:
                dest["NumRetries"] = d.num_retries
            if d.retry_on_connect_failure:
                dest["RetryOnConnectFailure"] = True
            if d.retry_on:
                dest["RetryOn"] = list(d.retry_on)
            if d.retry_on_status_codes:
                dest["RetryOnStatusCodes"] = list(d.retry_on_status_codes)
            routes.append({"Definition": {"Match": {"HTTP": http}, "Destination": dest},
                           "NextNode": resolver_node(d.service)})  # fmt: skip
        catch_all = {"Service": ref.name, "Namespace": ref.namespace, "Partition": PARTITION}
        routes.append({"Definition": {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": catch_all},
                       "NextNode": resolver_node(ref)})  # fmt: skip
        start = f"router:{name}"
        nodes[start] = {"Type": "router", "Name": name, "Routes": routes}
    else:
        start = resolver_node(ref)
    chain: dict[str, Any] = {
        "ServiceName": ref.name,
        "Namespace": ref.namespace,
        "Partition": PARTITION,
        "Datacenter": dc,
    }
    if default:
        chain["Default"] = True
    chain.update({"Protocol": protocol, "StartNode": start, "Nodes": nodes, "Targets": targets})
    return {"Chain": chain}


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class Instance:
    """One registered pod of a Consul service, as consul-k8s' endpoints controller sees it."""

    pod: str
    node: str
    ip: str
    port: int  # the app port (consul.hashicorp.com/connect-service-port)
    service: str  # Consul name
    k8s_namespace: str
    passing: bool
    region: str = ""  # the node's topology.kubernetes.io/region label ("" = none: no Locality)
    zone: str = ""  # the node's topology.kubernetes.io/zone label


class ConsulView(Protocol):
    """What the API reads from the running cluster."""

    mesh: MeshConfig

    def config_objects(self) -> list[dict[str, Any]]: ...

    def instances(self) -> list[Instance]: ...


def pod_uid(inst: Instance) -> str:
    """A stand-in for the pod's Kubernetes UID (local pods have none): stable per pod name and namespace."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pod:{inst.k8s_namespace}/{inst.pod}"))


def _check(inst: Instance, service: str, service_id: str, node: str) -> dict[str, Any]:
    """consul-k8s' one check per registration: CheckID ``<k8s namespace>/<service ID>`` (the sidecar's own)."""
    return {
        "Node": node,
        "CheckID": f"{inst.k8s_namespace}/{service_id}",
        "Name": "Kubernetes Readiness Check",
        "Status": "passing" if inst.passing else "critical",
        "Notes": "",
        "Output": "Kubernetes health checks passing"
        if inst.passing
        else f'Pod "{inst.k8s_namespace}/{inst.pod}" is not ready',
        "ServiceID": service_id,
        "ServiceName": service,
        "ServiceTags": [],
        "Type": "kubernetes-readiness",
    }


def health_entries(view: ConsulView, service: str, namespace: str, passing_only: bool) -> list[dict[str, Any]]:
    """``/v1/health/service/:service`` for the app service or its ``-sidecar-proxy``."""
    sidecar = service.endswith(SIDECAR_SUFFIX)
    app = service[: -len(SIDECAR_SUFFIX)] if sidecar else service
    out = []
    for inst in sorted(view.instances(), key=lambda i: i.pod):
        if inst.service != app or view.mesh.consul_namespace(inst.k8s_namespace) != namespace:
            continue
        if passing_only and not inst.passing:
            continue
        node = f"{inst.node}-virtual"
        app_id = f"{inst.pod}-{inst.service}"
        meta = {
            "k8s-namespace": inst.k8s_namespace,
            "k8s-service-name": inst.service,
            "managed-by": "consul-k8s-endpoints-controller",
            "pod-name": inst.pod,
            "pod-uid": pod_uid(inst),
            "synthetic-node": "true",
        }
        svc: dict[str, Any] = {
            "ID": f"{app_id}-sidecar-proxy" if sidecar else app_id,
            "Service": service,
            "Tags": [],
            "Address": inst.ip,
            "Meta": meta,
            "Port": SIDECAR_PORT if sidecar else inst.port,
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
        }
        if inst.region:  # consul-k8s' parseLocality: the node's region/zone labels, none without a region
            svc["Locality"] = {"Region": inst.region, "Zone": inst.zone}
        if sidecar:
            svc = {"Kind": "connect-proxy", **svc}
            svc["Proxy"] = {
                "DestinationServiceName": inst.service,
                "DestinationServiceID": app_id,
                "LocalServiceAddress": "127.0.0.1",
                "LocalServicePort": inst.port,
            }
        if view.mesh.enterprise:
            svc["Namespace"] = namespace
        out.append(
            {
                "Node": {
                    "ID": "",
                    "Node": node,
                    "Address": inst.ip,
                    "Datacenter": view.mesh.datacenter,
                    "TaggedAddresses": None,
                    "Meta": {"synthetic-node": "true"},
                },
                "Service": svc,
                "Checks": [_check(inst, service, svc["ID"], node)],
            }
        )
    return out


def intention_allowed(mesh: MeshConfig, source: ServiceRef, destination: ServiceRef) -> bool:
    """Consul's decision for source -> destination: exact source beats ``*``, else the default."""
    rules = mesh.intention_rules(destination)
    listed = source in rules.principals
    return listed if rules.allow_listed else not listed


# --------------------------------------------------------------------------- HTTP server


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def _ref(mesh: MeshConfig, text: str, ns: str | None) -> ServiceRef:
    """``name`` or, in Enterprise, ``ns/name`` (intentions' format)."""
    if "/" in text and mesh.enterprise:
        ns_part, name = text.split("/", 1)
        return ServiceRef(name, ns_part)
    return ServiceRef(text, ns or DEFAULT_NAMESPACE)


_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _passing(query: dict[str, list[str]]) -> bool:
    """Consul's ``?passing``: bare means true, else Go's strconv.ParseBool; anything else is a 400."""
    if "passing" not in query:
        return False
    value = query["passing"][0]
    if value == "" or value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise ApiError(400, "Invalid value for ?passing")


class ConsulApi:
    """Routes of the emulated HTTP API over a `ConsulView` (kept apart from the socket for tests)."""

    def __init__(self, view: ConsulView) -> None:
        self.view = view

    @property
    def mesh(self) -> MeshConfig:
        return self.view.mesh

    def entries(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        return [config_entry(o, self.mesh, i + 10) for i, o in enumerate(self.view.config_objects())]

    def get(self, path: str, query: dict[str, list[str]]) -> Any:
        """The JSON body for GET `path`; ApiError for 4xx/5xx answers."""
        asked = (query.get("ns") or [""])[0]
        if asked and not self.mesh.enterprise:
            raise ApiError(400, "Namespaces are a Consul Enterprise feature")
        ns = asked or DEFAULT_NAMESPACE
        parts = [unquote(p) for p in path.split("/")[1:]]
        if parts[:1] != ["v1"]:
            raise ApiError(404, "")
        rest = parts[1:]
        if rest == ["status", "leader"]:
            return LEADER
        if rest == ["catalog", "services"]:
            names: dict[str, list[str]] = {"consul": []}
            for inst in self.view.instances():
                if self.mesh.consul_namespace(inst.k8s_namespace) == ns:
                    names[inst.service] = []
                    names[inst.service + SIDECAR_SUFFIX] = []
            return dict(sorted(names.items()))
        if len(rest) == 3 and rest[:2] == ["health", "service"]:
            return health_entries(self.view, rest[2], ns, _passing(query))
        if rest[:1] == ["config"] and len(rest) in (2, 3):
            kind = rest[1]
            if kind not in KINDS.values():
                raise ApiError(400, f"invalid config entry kind: {kind}")
            found = [e for k, n, _name, e in self.entries() if k == kind and (n == ns or kind == "proxy-defaults")]
            if len(rest) == 2:
                return found
            for e in found:
                if e["Name"] == rest[2]:
                    return e
            raise ApiError(404, f'Config entry not found for "{kind}" / "{rest[2]}"')
        if len(rest) == 2 and rest[0] == "discovery-chain":
            if not rest[1]:
                raise ApiError(400, "Missing chain name")
            try:
                return discovery_chain(self.mesh, ServiceRef(rest[1], ns))
            except InputError as exc:
                raise ApiError(500, str(exc)) from exc
        if rest == ["connect", "intentions", "check"]:
            src = (query.get("source") or [""])[0]
            dst = (query.get("destination") or [""])[0]
            if not src:
                raise ApiError(400, "required query parameter 'source' not set")
            if not dst:
                raise ApiError(400, "required query parameter 'destination' not set")
            return {"Allowed": intention_allowed(self.mesh, _ref(self.mesh, src, None), _ref(self.mesh, dst, None))}
        raise ApiError(404, "")


class ConsulApiServer:
    """`ConsulApi` on a loopback TCP port, in a thread of the cluster daemon."""

    def __init__(self, view: ConsulView, host: str = "127.0.0.1", port: int = 0) -> None:
        api = ConsulApi(view)
        index = [1]

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without NODELAY each answer waits ~40 ms (delayed ACK)
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Vary", "Accept-Encoding")
                if status == 200:
                    self.send_header("X-Consul-Index", str(index[0]))
                    self.send_header("X-Consul-KnownLeader", "true")
                    self.send_header("X-Consul-LastContact", "0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)  # discovery-chain overrides are not emulated: read and ignore
                allowed = self.command == "GET" or (
                    self.command == "POST" and parts.path.startswith("/v1/discovery-chain/")
                )
                if not allowed:
                    self._send(405, b"method not allowed\n", "text/plain; charset=utf-8")
                    return
                try:
                    body = json.dumps(api.get(parts.path, parse_qs(parts.query, keep_blank_values=True)))
                except ApiError as exc:
                    self._send(exc.status, (str(exc) + "\n" if str(exc) else "").encode(), "text/plain; charset=utf-8")
                    return
                except Exception as exc:  # an emulation bug answers 500, as a Consul error would
                    self._send(500, f"{type(exc).__name__}: {exc}\n".encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, body.encode(), "application/json")

            do_GET = do_POST = do_PUT = do_DELETE = _answer

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ConsulApiServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(SERVE_POLL_S,), name="consul-api", daemon=True
        )  # `stop` waits for the loop to notice: 50 ms, not socketserver's 0.5 s, on every `down`
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


# --------------------------------------------------------------------------- the local cluster as a view


class ClusterView:
    """A `ConsulView` over a running `LocalCluster` (pods as the endpoints controller registers them)."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.mesh: MeshConfig = cluster.mesh

    def config_objects(self) -> list[dict[str, Any]]:
        # everything the backend compiled; a manifest it rejected never started a cluster
        return list(self.cluster.spec.consul_objects)

    def instances(self) -> list[Instance]:
        with self.cluster.lock:
            pods = [p for p in self.cluster.pods.values() if p.alive and p.dep.meshed]
        return [
            Instance(
                pod=p.name,
                node=p.node.name,
                ip=p.net.ip,
                port=self.cluster._app_port(p.dep),
                service=p.dep.consul_service,
                k8s_namespace=p.dep.namespace,
                passing=p.healthy,
                region=p.node.labels.get(names.LABEL_REGION, ""),
                zone=p.node.labels.get(names.LABEL_ZONE, ""),
            )
            for p in pods
        ]


# --------------------------------------------------------------------------- refused probe


def mtls_request(
    ip: str, port: int, sni: str, cert: str, key: str, ca: str, expect_spiffe: str, timeout_s: float = 3.0
) -> tuple[int | None, str]:
    """GET / over mTLS to a sidecar's inbound listener: (HTTP status or None when refused, detail)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = False  # Consul leaves carry only the SPIFFE URI SAN: checked below
    ctx.load_cert_chain(cert, key)
    try:
        with (
            socket.create_connection((ip, port), timeout=timeout_s) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            peer = tls.getpeercert() or {}
            sans: Any = peer.get("subjectAltName") or ()
            uris = [str(pair[1]) for pair in sans if pair[0] == "URI"]
            if expect_spiffe not in uris:
                return None, f"server identity {uris} is not {expect_spiffe}"
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            resp = http.client.HTTPResponse(tls)
            resp.begin()
            body = resp.read(200).decode(errors="replace")
            return resp.status, body.strip()
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def refused_probe(cluster: Any, source: str, destination: str, call_in: Callable[..., Any]) -> dict[str, Any]:
    """One real call `source` -> `destination` with `source`'s leaf certificate, to a live destination pod.

    ``{"possible": bool, "refused": bool, "status": int | None, "detail": str}``: refused means the
    destination's RBAC answered 403 (HTTP) or closed the connection (TCP) after a good TLS handshake
    with the right server identity.
    """
    mesh: MeshConfig = cluster.mesh
    src_ref, dest_ref = _ref(mesh, source, None), _ref(mesh, destination, None)

    def is_dest(p: Any) -> bool:
        ns = mesh.consul_namespace(p.dep.namespace)
        return bool(p.dep.consul_service == dest_ref.name and ns == dest_ref.namespace)

    with cluster.lock:
        pods = [p for p in cluster.pods.values() if p.alive and p.healthy and p.dep.meshed and is_dest(p)]
    if not pods:
        return {"possible": False, "refused": False, "status": None, "detail": f"no ready pod of {destination}"}
    leaf = cluster.certs.leaf(src_ref.name, namespace=src_ref.namespace, datacenter=mesh.datacenter)
    target = sorted(pods, key=lambda p: p.name)[0]
    status, detail = call_in(
        cluster.network.hub_ns, mtls_request, target.net.ip, SIDECAR_PORT, mesh.sni(dest_ref),
        str(leaf.cert), str(leaf.key), str(leaf.ca), mesh.spiffe_id(dest_ref),
    )  # fmt: skip
    http_dest = mesh.protocol(dest_ref) in HTTP_PROTOCOLS
    refused = status == 403 if http_dest else status is None and "identity" not in detail
    what = f"{source} -> {destination} ({target.name}): {status or 'no response'} {detail}"
    return {"possible": True, "refused": refused, "status": status, "pod": target.name, "detail": what[:300]}
