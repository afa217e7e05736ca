"""The mesh model: Consul config entries as typed values, and the compiled discovery chain.

Plain data shared by the parser (`parse`), the compiler (`compile`), Envoy
resource generation (`envoy`) and the local Consul API: no logic beyond
small derived properties.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.contract.clusters import DEFAULT_CONNECT_TIMEOUT_S as DEFAULT_CONNECT_TIMEOUT_S  # re-exported
from harness.contract.clusters import failover_children

CONSUL_GROUP = "consul.hashicorp.com"
DEFAULT_NAMESPACE = "default"
DEFAULT_DATACENTER = "dc1"
# Consul's trust domain is "<cluster id>.consul"; the emulation has no cluster, so a fixed fake id.
TRUST_DOMAIN = "7f3c1a52-4d1e-4b7a-9c31-5e2f0a9d6b10.consul"
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
        return failover_children(self.cluster_name, len(self.targets))


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
