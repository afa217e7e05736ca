"""Consul config entries → an in-memory mesh model and compiled discovery chains.

The local backend runs real Envoy sidecars without a Consul server, so this
module plays Consul's part: it reads the same ProxyDefaults, ServiceDefaults,
ServiceResolver, ServiceRouter and ServiceIntentions CRDs the kind and EKS
backends apply, and compiles, per (caller, upstream), the discovery chain
Consul CE would compile (redirects, failover targets, timeouts, retries,
outlier detection, intentions), following
shared/notes/consul-dataplane-semantics.md. `mesh_envoy` turns a compiled chain
into Envoy resources; `sidecar` writes them for one pod.

Everything the emulation does not implement is rejected with an `InputError`
naming the field, so that a passing local run never hides a config the real
mesh would have treated differently. docs/local-emulation.md lists every
remaining difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from harness.backends.local.mesh_spec import ENTERPRISE_ONLY, UNSUPPORTED, Spec
from harness.errors import InputError

CONSUL_GROUP = "consul.hashicorp.com"
DEFAULT_NAMESPACE = "default"
DEFAULT_DATACENTER = "dc1"
# Consul's trust domain is "<cluster id>.consul"; the emulation has no cluster, so a fixed fake id.
TRUST_DOMAIN = "7f3c1a52-4d1e-4b7a-9c31-5e2f0a9d6b10.consul"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
PROTOCOLS = ("tcp", "http", "http2", "grpc")
HTTP_PROTOCOLS = ("http", "http2", "grpc")
LB_POLICIES = ("round_robin", "least_request", "random", "ring_hash", "maglev")
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)


@dataclass(frozen=True, order=True)
class ServiceRef:
    """A Consul service: name plus Consul namespace (always ``default`` in CE)."""

    name: str
    namespace: str = DEFAULT_NAMESPACE

    def __str__(self) -> str:
        return self.name if self.namespace == DEFAULT_NAMESPACE else f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PassiveHealthCheck:
    """ServiceDefaults upstreamConfig.passiveHealthCheck; None = Envoy's default."""

    interval_s: float | None = None
    max_failures: int | None = None
    enforcing_consecutive_5xx: int | None = None
    max_ejection_percent: int | None = None
    base_ejection_time_s: float | None = None


@dataclass(frozen=True)
class Limits:
    """ServiceDefaults upstreamConfig.limits; None = Envoy's default circuit breaker."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_concurrent_requests: int | None = None

    @property
    def empty(self) -> bool:
        return self == Limits()


@dataclass(frozen=True)
class UpstreamConfig:
    """What a caller's ServiceDefaults says about calling one upstream.

    `passive_health_check` / `limits` are None when not given at all: Consul
    merges upstreamConfig defaults and the matching override key by key, an
    override's object replacing the default's object as a whole.
    """

    connect_timeout_ms: int | None = None
    passive_health_check: PassiveHealthCheck | None = None
    limits: Limits | None = None

    def merged(self, override: UpstreamConfig) -> UpstreamConfig:
        return UpstreamConfig(
            connect_timeout_ms=override.connect_timeout_ms or self.connect_timeout_ms,
            passive_health_check=override.passive_health_check or self.passive_health_check,
            limits=override.limits or self.limits,
        )


@dataclass(frozen=True)
class LoadBalancer:
    """ServiceResolver loadBalancer (the supported subset)."""

    policy: str
    choice_count: int | None = None
    ring_min: int | None = None
    ring_max: int | None = None


@dataclass(frozen=True)
class Resolver:
    ref: ServiceRef
    connect_timeout_s: float | None = None
    request_timeout_s: float | None = None
    redirect: ServiceRef | None = None
    # failover key ("*" only: subsets are not supported) -> ordered targets
    failover: Mapping[str, tuple[ServiceRef, ...]] = field(default_factory=dict)
    load_balancer: LoadBalancer | None = None


@dataclass(frozen=True)
class RouteDestination:
    service: ServiceRef
    num_retries: int = 0
    retry_on_connect_failure: bool = False
    retry_on: tuple[str, ...] = ()
    retry_on_status_codes: tuple[int, ...] = ()
    request_timeout_s: float | None = None

    @property
    def has_retry_features(self) -> bool:
        """Consul's HasRetryFeatures: only then is a retry policy emitted."""
        return bool(
            self.num_retries > 0 or self.retry_on_connect_failure or self.retry_on or self.retry_on_status_codes
        )


@dataclass(frozen=True)
class Route:
    path_prefix: str | None
    path_exact: str | None
    destination: RouteDestination


@dataclass(frozen=True)
class Intention:
    source: ServiceRef  # name (or namespace) may be "*"
    allow: bool


@dataclass(frozen=True)
class AccessLogs:
    """ProxyDefaults accessLogs. The sink is always the sidecar's file (see the doc)."""

    enabled: bool = False
    disable_listener_logs: bool = False
    json_format: Mapping[str, str] | None = None
    text_format: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """One registered instance of a service: the pod's sidecar address and its health.

    `port` is the sidecar's inbound (public listener) port, as Consul registers
    it; `healthy` is the pod's readiness (critical check → UNHEALTHY in EDS).
    `zone` is informational: Consul CE sends no locality to Envoy.
    """

    pod: str
    ip: str
    port: int
    healthy: bool
    zone: str


# Service → instances. Key: the Consul service name (CE), or (Kubernetes namespace,
# Consul name) when the mesh is namespaced (Enterprise, mirroring k8s namespaces).
CatalogKey = str | tuple[str, str]
Catalog = dict[CatalogKey, list[Endpoint]]


def catalog_endpoints(catalog: Mapping[CatalogKey, list[Endpoint]], ref: ServiceRef) -> list[Endpoint]:
    """The instances of `ref`, accepting both key styles (a bare name means ``default``)."""
    found = catalog.get((ref.namespace, ref.name))
    if found is None and ref.namespace == DEFAULT_NAMESPACE:
        found = catalog.get(ref.name)
    return list(found or [])


# --- compiled chain -------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One resolved target service, as Envoy sees it: SNI and expected SPIFFE ID."""

    service: ServiceRef
    sni: str
    spiffe_id: str


@dataclass(frozen=True)
class ResolverNode:
    """A resolver node of the chain: one (possibly aggregate) Envoy cluster.

    `targets[0]` is the primary; more than one target makes `cluster_name` an
    `envoy.clusters.aggregate` whose children are `child_names`.
    """

    cluster_name: str
    targets: tuple[Target, ...]
    connect_timeout_s: float
    request_timeout_s: float | None
    load_balancer: LoadBalancer | None

    @property
    def aggregate(self) -> bool:
        return len(self.targets) > 1

    @property
    def child_names(self) -> tuple[str, ...]:
        if not self.aggregate:
            return (self.cluster_name,)
        return tuple(f"failover-target~{i}~{self.cluster_name}" for i in range(len(self.targets)))


@dataclass(frozen=True)
class RetryPolicy:
    num_retries: int | None  # None = Envoy's default (1)
    retry_on: tuple[str, ...]
    retriable_status_codes: tuple[int, ...]


@dataclass(frozen=True)
class CompiledRoute:
    path_prefix: str | None
    path_exact: str | None
    node: ResolverNode
    timeout_s: float | None  # None = Envoy's default 15 s
    retry: RetryPolicy | None


@dataclass(frozen=True)
class Chain:
    """The compiled discovery chain of one upstream for one caller."""

    upstream: ServiceRef
    protocol: str
    routes: tuple[CompiledRoute, ...]  # TCP: exactly one, prefix "/"
    upstream_config: UpstreamConfig

    @property
    def nodes(self) -> list[ResolverNode]:
        """Distinct resolver nodes in route order (each is one cluster set)."""
        seen: dict[str, ResolverNode] = {}
        for r in self.routes:
            seen.setdefault(r.node.cluster_name, r.node)
        return list(seen.values())


@dataclass(frozen=True)
class IntentionRules:
    """Inbound RBAC for one destination: `allow_listed` True = RBAC ALLOW (default deny)."""

    allow_listed: bool
    principals: tuple[ServiceRef, ...]


# --- the mesh -------------------------------------------------------------


@dataclass
class MeshConfig:
    """All Consul config entries of a run, understood with Consul CE/Enterprise semantics."""

    source: str
    edition: str = "ce"
    datacenter: str = DEFAULT_DATACENTER
    trust_domain: str = TRUST_DOMAIN
    default_intention_allow: bool = True
    global_protocol: str | None = None
    access_logs: AccessLogs = field(default_factory=AccessLogs)
    service_protocols: dict[ServiceRef, str] = field(default_factory=dict)
    upstream_defaults: dict[ServiceRef, UpstreamConfig] = field(default_factory=dict)
    upstream_overrides: dict[tuple[ServiceRef, ServiceRef], UpstreamConfig] = field(default_factory=dict)
    resolvers: dict[ServiceRef, Resolver] = field(default_factory=dict)
    routers: dict[ServiceRef, tuple[Route, ...]] = field(default_factory=dict)
    intentions: dict[ServiceRef, tuple[Intention, ...]] = field(default_factory=dict)
    local_connect_timeout_ms: dict[ServiceRef, int] = field(default_factory=dict)
    local_request_timeout_ms: dict[ServiceRef, int] = field(default_factory=dict)
    entry_names: dict[ServiceRef, str] = field(default_factory=dict)  # for error messages

    KINDS: ClassVar[tuple[str, ...]] = (
        "ProxyDefaults",
        "ServiceDefaults",
        "ServiceResolver",
        "ServiceRouter",
        "ServiceIntentions",
    )

    @property
    def enterprise(self) -> bool:
        return self.edition == "enterprise"

    @property
    def namespaced(self) -> bool:
        """Whether Consul namespaces are in play (Enterprise): catalog keys are then (namespace, name)."""
        return self.enterprise

    # ---- construction ----

    @classmethod
    def from_objects(
        cls,
        objects: Iterable[Mapping[str, Any]],
        source: str,
        *,
        edition: str = "ce",
        datacenter: str = DEFAULT_DATACENTER,
        trust_domain: str = TRUST_DOMAIN,
        default_intention_allow: bool = True,
    ) -> MeshConfig:
        """Parse the consul.hashicorp.com objects among `objects` (others are skipped).

        `edition` is ``"ce"`` or ``"enterprise"`` (an `Edition` enum works too).
        `default_intention_allow` mirrors ACL default policy "allow" (or ACLs
        off), Consul's default; a ``*`` deny intention makes a destination
        default-deny regardless. Raises `InputError` for anything the local
        backend does not emulate.
        """
        ed = str(getattr(edition, "value", edition))
        if ed not in ("ce", "enterprise"):
            raise InputError(source, "edition", f"unknown Consul edition {ed!r}")
        mesh = cls(
            source=source,
            edition=ed,
            datacenter=datacenter,
            trust_domain=trust_domain,
            default_intention_allow=default_intention_allow,
        )
        seen: dict[tuple[str, ServiceRef], str] = {}
        for obj in objects:
            api = str(obj.get("apiVersion", ""))
            if not api.startswith(CONSUL_GROUP + "/"):
                continue
            kind = str(obj.get("kind", ""))
            meta = obj.get("metadata") or {}
            name = str(meta.get("name", ""))
            where = f"{kind}/{name}"
            if api != f"{CONSUL_GROUP}/v1alpha1":
                raise InputError(source, f"{where}: apiVersion", f"{api} {UNSUPPORTED}")
            if kind not in cls.KINDS:
                raise InputError(source, f"{where}: kind", f"{kind} {UNSUPPORTED}")
            if not name:
                raise InputError(source, f"{where}: metadata.name", "missing")
            ns = mesh.consul_namespace(str(meta.get("namespace") or DEFAULT_NAMESPACE))
            spec = Spec(obj.get("spec"), source, where, "spec")
            key = getattr(mesh, "_parse_" + kind)(spec, name, ns)
            spec.finish()
            if key is not None:
                if (kind, key) in seen:
                    raise InputError(
                        source, f"{where}: metadata.name", f"second {kind} for {key} (first: {seen[(kind, key)]})"
                    )
                seen[(kind, key)] = where
        return mesh

    def consul_namespace(self, k8s_namespace: str) -> str:
        """Consul namespace of a Kubernetes namespace: mirrored in Enterprise, ``default`` in CE."""
        return k8s_namespace if self.enterprise else DEFAULT_NAMESPACE

    def _ns_field(self, spec: Spec, key: str, default: str) -> str:
        """A namespace field: Enterprise only; defaults to the entry's namespace."""
        spec.enterprise_only(key, self.enterprise)
        return spec.text(key) or default

    def _no_dc_peer_partition(self, spec: Spec) -> None:
        for key in ("datacenter", "peer", "partition", "samenessGroup"):
            if key in ("partition", "samenessGroup"):
                spec.enterprise_only(key, self.enterprise)
            if spec.has(key) and not (key == "datacenter" and spec.text(key) == self.datacenter):
                raise spec.error(key, UNSUPPORTED)

    def _parse_ProxyDefaults(self, spec: Spec, name: str, ns: str) -> ServiceRef | None:
        if name != "global":
            raise InputError(self.source, f"ProxyDefaults/{name}: metadata.name", "must be global")
        config = spec.sub("config")
        proto = config.text("protocol")
        if proto is not None:
            self.global_protocol = _protocol(config, "protocol", proto)
        config.finish()
        mode = spec.text("mode")
        if mode not in (None, "direct"):
            raise spec.error("mode", f"{mode} {UNSUPPORTED} (no transparent proxy)")
        spec.enterprise_only("prioritizeByLocality", self.enterprise)
        spec.enterprise_only("failoverPolicy", self.enterprise)
        mgw = spec.sub("meshGateway")
        if mgw.text("mode") not in (None, "none", "local"):
            raise mgw.error("mode", f"{mgw.text('mode')} {UNSUPPORTED} (no mesh gateways)")
        mgw.finish()
        logs = spec.sub("accessLogs")
        enabled = logs.flag("enabled")
        disable_listener = logs.flag("disableListenerLogs")
        sink = logs.text("type") or "stdout"
        if sink not in ("stdout", "stderr", "file"):
            raise logs.error("type", f"unknown access log type {sink!r}")
        path = logs.text("path")
        if sink == "file" and not path:
            raise logs.error("path", "required when type is file")
        json_text = logs.text("jsonFormat")
        text_format = logs.text("textFormat")
        if json_text and text_format:
            raise logs.error("textFormat", "jsonFormat and textFormat are exclusive")
        json_format: dict[str, str] | None = None
        if json_text:
            try:
                loaded = json.loads(json_text)
            except ValueError as exc:
                raise logs.error("jsonFormat", f"not JSON: {exc}") from exc
            if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
                raise logs.error("jsonFormat", "expected a JSON object of strings " + UNSUPPORTED)
            json_format = {str(k): v for k, v in loaded.items()}
        logs.finish()
        self.access_logs = AccessLogs(enabled, disable_listener, json_format, text_format)
        return ServiceRef("global", DEFAULT_NAMESPACE)

    def _parse_ServiceDefaults(self, spec: Spec, name: str, ns: str) -> ServiceRef:
        ref = ServiceRef(name, ns)
        proto = spec.text("protocol")
        if proto is not None:
            self.service_protocols[ref] = _protocol(spec, "protocol", proto)
        mode = spec.text("mode")
        if mode not in (None, "direct"):
            raise spec.error("mode", f"{mode} {UNSUPPORTED} (no transparent proxy)")
        mgw = spec.sub("meshGateway")
        if mgw.text("mode") not in (None, "none", "local"):
            raise mgw.error("mode", f"{mgw.text('mode')} {UNSUPPORTED} (no mesh gateways)")
        mgw.finish()
        lct = spec.integer("localConnectTimeoutMs")
        if lct is not None:
            self.local_connect_timeout_ms[ref] = lct
        lrt = spec.integer("localRequestTimeoutMs")
        if lrt is not None:
            self.local_request_timeout_ms[ref] = lrt
        up = spec.sub("upstreamConfig")
        defaults = up.sub("defaults")
        if defaults.data:
            self.upstream_defaults[ref] = self._upstream_config(defaults, named=False)
        for item in up.items("overrides"):
            target_name = item.text("name")
            if not target_name:
                raise item.error("name", "missing")
            target = ServiceRef(target_name, self._ns_field(item, "namespace", ns))
            self.upstream_overrides[(ref, target)] = self._upstream_config(item, named=True)
        up.finish()
        self.entry_names[ref] = f"ServiceDefaults/{name}"
        return ref

    def _upstream_config(self, spec: Spec, named: bool) -> UpstreamConfig:
        if not named:
            for key in ("name", "namespace"):
                if spec.has(key):
                    raise spec.error(key, "only allowed in overrides")
        self._no_dc_peer_partition(spec)
        proto = spec.text("protocol")
        if proto is not None:
            raise spec.error("protocol", UNSUPPORTED + " (set the protocol in the upstream's ServiceDefaults)")
        mgw = spec.sub("meshGateway")
        if mgw.text("mode") not in (None, "none", "local"):
            raise mgw.error("mode", UNSUPPORTED + " (no mesh gateways)")
        mgw.finish()
        phc_spec = spec.sub("passiveHealthCheck")
        phc = None
        if phc_spec.data:
            phc = PassiveHealthCheck(
                interval_s=phc_spec.duration("interval"),
                max_failures=phc_spec.integer("maxFailures"),
                enforcing_consecutive_5xx=phc_spec.integer("enforcingConsecutive5xx", zero_is_set=True),
                max_ejection_percent=phc_spec.integer("maxEjectionPercent", zero_is_set=True),
                base_ejection_time_s=phc_spec.duration("baseEjectionTime"),
            )
        phc_spec.finish()
        lim_spec = spec.sub("limits")
        limits = None
        if lim_spec.data:
            limits = Limits(
                max_connections=lim_spec.integer("maxConnections"),
                max_pending_requests=lim_spec.integer("maxPendingRequests"),
                max_concurrent_requests=lim_spec.integer("maxConcurrentRequests"),
            )
        lim_spec.finish()
        cfg = UpstreamConfig(spec.integer("connectTimeoutMs"), phc, limits)
        spec.finish()
        return cfg

    def _parse_ServiceResolver(self, spec: Spec, name: str, ns: str) -> ServiceRef:
        ref = ServiceRef(name, ns)
        for key in ("subsets", "defaultSubset"):
            if spec.has(key):
                raise spec.error(key, UNSUPPORTED + " (no service subsets)")
        spec.enterprise_only("prioritizeByLocality", self.enterprise)
        if spec.has("prioritizeByLocality"):
            raise spec.error("prioritizeByLocality", UNSUPPORTED)
        redirect = None
        red = spec.sub("redirect")
        if red.data:
            if red.has("serviceSubset"):
                raise red.error("serviceSubset", UNSUPPORTED + " (no service subsets)")
            self._no_dc_peer_partition(red)
            red_ns = self._ns_field(red, "namespace", ns)
            redirect = ServiceRef(red.text("service") or name, red_ns)
            red.finish()
            if redirect == ref:
                redirect = None
        failover: dict[str, tuple[ServiceRef, ...]] = {}
        for key, fo in spec.map_items("failover"):
            if key != "*":
                raise spec.error(f"failover.{key}", UNSUPPORTED + " (no service subsets: use '*')")
            fo.enterprise_only("policy", self.enterprise)
            fo.enterprise_only("samenessGroup", self.enterprise)
            for k in ("policy", "samenessGroup", "serviceSubset"):
                if fo.has(k):
                    raise fo.error(k, UNSUPPORTED)
            if fo.seq("datacenters"):
                raise fo.error("datacenters", UNSUPPORTED + " (one datacenter)")
            fo_ns = self._ns_field(fo, "namespace", ns)
            targets: list[ServiceRef] = []
            for t in fo.items("targets"):
                if t.has("serviceSubset"):
                    raise t.error("serviceSubset", UNSUPPORTED + " (no service subsets)")
                self._no_dc_peer_partition(t)
                t_ns = self._ns_field(t, "namespace", ns)
                targets.append(ServiceRef(t.text("service") or name, t_ns))
                t.finish()
            svc = fo.text("service")
            if targets and (svc or fo.has("namespace")):
                raise fo.error("service", "service/namespace cannot be combined with targets")
            if not targets:
                targets = [ServiceRef(svc or name, fo_ns)]
            fo.finish()
            failover[key] = tuple(targets)
        lb = None
        lb_spec = spec.sub("loadBalancer")
        if lb_spec.data:
            policy = lb_spec.text("policy") or "round_robin"
            if policy not in LB_POLICIES:
                raise lb_spec.error("policy", f"unknown policy {policy!r}")
            if lb_spec.seq("hashPolicies"):
                raise lb_spec.error("hashPolicies", UNSUPPORTED)
            lr = lb_spec.sub("leastRequestConfig")
            rh = lb_spec.sub("ringHashConfig")
            lb = LoadBalancer(
                policy, lr.integer("choiceCount"), rh.integer("minimumRingSize"), rh.integer("maximumRingSize")
            )
            lr.finish()
            rh.finish()
            lb_spec.finish()
        ct = spec.duration("connectTimeout")
        self.resolvers[ref] = Resolver(
            ref=ref,
            connect_timeout_s=ct,
            request_timeout_s=spec.duration("requestTimeout"),
            redirect=redirect,
            failover=failover,
            load_balancer=lb,
        )
        self.entry_names.setdefault(ref, f"ServiceResolver/{name}")
        return ref

    def _parse_ServiceRouter(self, spec: Spec, name: str, ns: str) -> ServiceRef:
        ref = ServiceRef(name, ns)
        routes: list[Route] = []
        for r in spec.items("routes"):
            match = r.sub("match")
            http = match.sub("http")
            prefix = http.text("pathPrefix")
            exact = http.text("pathExact")
            if prefix and exact:
                raise http.error("pathExact", "pathPrefix and pathExact are exclusive")
            for k in ("pathRegex", "header", "queryParam", "methods", "caseInsensitive"):
                if http.has(k):
                    raise http.error(k, UNSUPPORTED)
            http.finish()
            match.finish()
            dest = r.sub("destination")
            for k in ("serviceSubset", "prefixRewrite", "idleTimeout", "requestHeaders", "responseHeaders"):
                if dest.has(k):
                    raise dest.error(k, UNSUPPORTED)
            dest.enterprise_only("partition", self.enterprise)
            if dest.has("partition"):
                raise dest.error("partition", UNSUPPORTED)
            d_ns = self._ns_field(dest, "namespace", ns)
            retry_on = tuple(dest.strings("retryOn"))
            for cond in retry_on:
                if cond not in RETRY_ON:
                    raise dest.error("retryOn", f"invalid retry condition {cond!r}")
            codes = dest.seq("retryOnStatusCodes")
            if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
                raise dest.error("retryOnStatusCodes", "expected a list of integers")
            num = dest.integer("numRetries") or 0
            if num < 0:
                raise dest.error("numRetries", "must not be negative")
            destination = RouteDestination(
                service=ServiceRef(dest.text("service") or name, d_ns),
                num_retries=num,
                retry_on_connect_failure=dest.flag("retryOnConnectFailure"),
                retry_on=retry_on,
                retry_on_status_codes=tuple(codes),
                request_timeout_s=dest.duration("requestTimeout"),
            )
            dest.finish()
            r.finish()
            routes.append(Route(prefix, exact, destination))
        self.routers[ref] = tuple(routes)
        return ref

    def _parse_ServiceIntentions(self, spec: Spec, name: str, ns: str) -> ServiceRef:
        dest_spec = spec.sub("destination")
        dest_name = dest_spec.text("name")
        if not dest_name:
            raise dest_spec.error("name", "missing")
        dest = ServiceRef(dest_name, self._ns_field(dest_spec, "namespace", ns))
        dest_spec.finish()
        if spec.has("jwt"):
            raise spec.error("jwt", UNSUPPORTED)
        sources: list[Intention] = []
        for s in spec.items("sources"):
            src_name = s.text("name")
            if not src_name:
                raise s.error("name", "missing")
            s_ns = self._ns_field(s, "namespace", dest.namespace)
            for k in ("peer", "partition", "samenessGroup"):
                if k != "peer":
                    s.enterprise_only(k, self.enterprise)
                if s.has(k):
                    raise s.error(k, UNSUPPORTED)
            if s.seq("permissions"):
                raise s.error("permissions", UNSUPPORTED + " (L7 intentions)")
            action = s.text("action")
            if action not in ("allow", "deny"):
                raise s.error("action", f"must be allow or deny (L7 permissions are {UNSUPPORTED})")
            s.text("description")
            s.finish()
            sources.append(Intention(ServiceRef(src_name, s_ns), action == "allow"))
        self.intentions[dest] = tuple(sources)
        return dest

    # ---- queries ----

    def protocol(self, ref: ServiceRef) -> str:
        """Service protocol: its ServiceDefaults, else ProxyDefaults config.protocol, else tcp."""
        return self.service_protocols.get(ref) or self.global_protocol or "tcp"

    def sni(self, ref: ServiceRef) -> str:
        return f"{ref.name}.{ref.namespace}.{self.datacenter}.internal.{self.trust_domain}"

    def spiffe_id(self, ref: ServiceRef) -> str:
        return f"spiffe://{self.trust_domain}/ns/{ref.namespace}/dc/{self.datacenter}/svc/{ref.name}"

    def target(self, ref: ServiceRef) -> Target:
        return Target(ref, self.sni(ref), self.spiffe_id(ref))

    def upstream_config(self, caller: ServiceRef, upstream: ServiceRef) -> UpstreamConfig:
        """The caller's ServiceDefaults upstreamConfig for `upstream` (defaults, then the override)."""
        base = self.upstream_defaults.get(caller, UpstreamConfig())
        override = self.upstream_overrides.get((caller, upstream))
        return base.merged(override) if override is not None else base

    def _where(self, ref: ServiceRef) -> str:
        return self.entry_names.get(ref, f"service {ref}")

    def _redirected(self, ref: ServiceRef) -> ServiceRef:
        """Follow resolver redirects from `ref`; a cycle is an error, as in Consul's compiler."""
        path = [ref]
        while True:
            res = self.resolvers.get(path[-1])
            if res is None or res.redirect is None:
                return path[-1]
            if res.redirect in path:
                cycle = " -> ".join(str(p) for p in [*path, res.redirect])
                where = f"ServiceResolver/{res.ref.name}: spec.redirect"
                raise InputError(self.source, where, f"redirect cycle {cycle}")
            path.append(res.redirect)

    def _resolver_node(self, start: ServiceRef, override_ct_s: float | None) -> tuple[ResolverNode, bool]:
        """The resolver node for `start`, and whether the upstream override changed it."""
        primary = self._redirected(start)
        res = self.resolvers.get(primary, Resolver(primary))
        ct = res.connect_timeout_s if res.connect_timeout_s and res.connect_timeout_s >= 1e-9 else None
        connect_timeout = ct if ct is not None else DEFAULT_CONNECT_TIMEOUT_S
        targets = [primary]
        for t in res.failover.get("*", ()):
            # each failover target applies its own redirect, but never its own failover
            resolved = self._redirected(t)
            if resolved != primary:
                targets.append(resolved)
        customized = override_ct_s is not None and abs(override_ct_s - connect_timeout) > 1e-9
        if override_ct_s is not None:
            connect_timeout = override_ct_s
        node = ResolverNode(
            cluster_name=self.sni(primary),
            targets=tuple(self.target(t) for t in targets),
            connect_timeout_s=connect_timeout,
            request_timeout_s=res.request_timeout_s,
            load_balancer=res.load_balancer,
        )
        return node, customized

    def compile_chain(self, caller: ServiceRef, upstream: ServiceRef) -> Chain:
        """Compile the discovery chain `caller` gets for `upstream`, Consul-style.

        Raises `InputError` for redirect cycles and for chains that mix protocols
        (Consul refuses to compile those too).
        """
        protocol = self.protocol(upstream)
        cfg = self.upstream_config(caller, upstream)
        override_ct = cfg.connect_timeout_ms / 1000.0 if cfg.connect_timeout_ms else None
        routes: list[CompiledRoute] = []
        customized = False

        def node_for(ref: ServiceRef) -> ResolverNode:
            nonlocal customized
            node, changed = self._resolver_node(ref, override_ct)
            customized = customized or changed
            return node

        router = self.routers.get(upstream)
        if router is not None and protocol not in HTTP_PROTOCOLS:
            raise InputError(
                self.source,
                f"ServiceRouter/{upstream.name}",
                f"service {upstream} has protocol {protocol}: a router needs http, http2 or grpc",
            )
        if router is not None:
            for r in router:
                node = node_for(r.destination.service)
                routes.append(
                    CompiledRoute(
                        r.path_prefix if (r.path_prefix or r.path_exact) else "/",
                        r.path_exact,
                        node,
                        r.destination.request_timeout_s,
                        _retry_policy(r.destination),
                    )
                )
            # implicit final route to the router's own service: no timeout, no retries
            routes.append(CompiledRoute("/", None, node_for(upstream), None, None))
        else:
            node = node_for(upstream)
            routes.append(CompiledRoute("/", None, node, node.request_timeout_s, None))
        for route in routes:
            for t in route.node.targets:
                p = self.protocol(t.service)
                if p != protocol:
                    raise InputError(
                        self.source,
                        self._where(t.service),
                        f"chain for {upstream} mixes protocols {protocol} and {p} ({t.service})",
                    )
        if protocol not in HTTP_PROTOCOLS:
            routes = [replace(routes[0], timeout_s=None)]
        if customized and cfg.connect_timeout_ms:
            # Consul prefixes every cluster of a chain its upstream overrides changed with
            # "<8 hex>~" (CustomizeClusterName); the hex is Consul's struct hash, ours differs.
            tag = hashlib.sha256(f"connect_timeout_ms={cfg.connect_timeout_ms}".encode()).hexdigest()[:8]
            routes = [replace(r, node=replace(r.node, cluster_name=f"{tag}~{r.node.cluster_name}")) for r in routes]
        return Chain(upstream=upstream, protocol=protocol, routes=tuple(routes), upstream_config=cfg)

    def intention_rules(self, destination: ServiceRef) -> IntentionRules:
        """RBAC for `destination`'s inbound listener.

        Exact sources beat the wildcard. The effective default is the ``*``
        source's action when there is one, else the global default; a
        default-deny destination lists its allowed sources (RBAC ALLOW), a
        default-allow one lists its denied sources (RBAC DENY).
        """
        entries = self.intentions.get(destination, ())
        default_allow = self.default_intention_allow
        for it in entries:
            if it.source.name == "*" and it.source.namespace in ("*", destination.namespace):
                default_allow = it.allow
        listed = [it.source for it in entries if it.allow != default_allow and it.source.name != "*"]
        return IntentionRules(allow_listed=not default_allow, principals=tuple(listed))


def _protocol(spec: Spec, key: str, value: str) -> str:
    if value not in PROTOCOLS:
        raise spec.error(key, f"protocol {value!r} {UNSUPPORTED} (tcp, http, http2, grpc)")
    return value


def _retry_policy(dest: RouteDestination) -> RetryPolicy | None:
    """Consul's getRetryPolicyForDestination: only when the destination has retry features."""
    if not dest.has_retry_features:
        return None
    retry_on = list(dest.retry_on)
    if dest.retry_on_connect_failure and "connect-failure" not in retry_on:
        retry_on.append("connect-failure")
    if dest.retry_on_status_codes:
        retry_on.append("retriable-status-codes")
    return RetryPolicy(
        num_retries=dest.num_retries if dest.num_retries > 0 else None,
        retry_on=tuple(retry_on),
        retriable_status_codes=dest.retry_on_status_codes,
    )


__all__ = [
    "ENTERPRISE_ONLY",
    "TRUST_DOMAIN",
    "UNSUPPORTED",
    "AccessLogs",
    "Catalog",
    "CatalogKey",
    "Chain",
    "CompiledRoute",
    "Endpoint",
    "IntentionRules",
    "Limits",
    "LoadBalancer",
    "MeshConfig",
    "PassiveHealthCheck",
    "ResolverNode",
    "RetryPolicy",
    "ServiceRef",
    "Target",
    "UpstreamConfig",
    "catalog_endpoints",
]
