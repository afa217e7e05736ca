"""Consul config entries → an in-memory mesh model and compiled discovery chains.

The local backend runs real Envoy sidecars without a Consul server, so this
module plays Consul's part: it reads the same ProxyDefaults, ServiceDefaults,
ServiceResolver, ServiceRouter and ServiceIntentions CRDs the kind and EKS
backends apply, and compiles, per (caller, upstream), the discovery chain
Consul CE would compile (redirects, failover targets, timeouts, retries,
outlier detection, intentions), following
shared/notes/consul-dataplane-semantics.md. `envoy` turns a compiled chain
into Envoy resources; `sidecar` writes them for one pod.

Everything the emulation does not implement is rejected with an `InputError`
naming the field, so that a passing local run never hides a config the real
mesh would have treated differently. docs/local-emulation.md lists every
remaining difference.

Modules: `types` (the model), `spec` (typed reading of a CRD spec),
`parse` (CRDs -> `MeshConfig`), `compile` (discovery chains, intentions),
`envoy` (chain -> Envoy resources). The names below are the public face.
"""

from harness.backends.local.mesh.parse import MeshConfig
from harness.backends.local.mesh.spec import ENTERPRISE_ONLY, UNSUPPORTED
from harness.backends.local.mesh.types import (
    CONSUL_GROUP,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_DATACENTER,
    DEFAULT_NAMESPACE,
    HTTP_PROTOCOLS,
    PROTOCOLS,
    TRUST_DOMAIN,
    AccessLogs,
    Catalog,
    CatalogKey,
    Chain,
    CompiledRoute,
    Endpoint,
    Intention,
    IntentionRules,
    Limits,
    LoadBalancer,
    PassiveHealthCheck,
    Resolver,
    ResolverNode,
    RetryPolicy,
    Route,
    RouteDestination,
    ServiceRef,
    Target,
    UpstreamConfig,
    catalog_endpoints,
)

__all__ = [
    "CONSUL_GROUP",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_DATACENTER",
    "DEFAULT_NAMESPACE",
    "ENTERPRISE_ONLY",
    "HTTP_PROTOCOLS",
    "PROTOCOLS",
    "TRUST_DOMAIN",
    "UNSUPPORTED",
    "AccessLogs",
    "Catalog",
    "CatalogKey",
    "Chain",
    "CompiledRoute",
    "Endpoint",
    "Intention",
    "IntentionRules",
    "Limits",
    "LoadBalancer",
    "MeshConfig",
    "PassiveHealthCheck",
    "Resolver",
    "ResolverNode",
    "RetryPolicy",
    "Route",
    "RouteDestination",
    "ServiceRef",
    "Target",
    "UpstreamConfig",
    "catalog_endpoints",
]
