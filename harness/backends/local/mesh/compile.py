"""Discovery-chain compilation: what Consul CE compiles per (caller, upstream), from the parsed entries.

Redirects, failover targets, connect and request timeouts, retries and
intentions, following shared/notes/consul-dataplane-semantics.md. The
queries are a mixin of `MeshConfig` so that the parser (which fills the
fields) and the compiler (which reads them) stay in separate modules.
"""

from __future__ import annotations

from dataclasses import replace

from harness.backends.local.mesh.types import (
    HTTP_PROTOCOLS,
    Chain,
    CompiledRoute,
    Intention,
    IntentionRules,
    Resolver,
    ResolverNode,
    RetryPolicy,
    Route,
    RouteDestination,
    ServiceRef,
    Target,
    UpstreamConfig,
)
from harness.contract.clusters import customization_tag, customized_name, is_customized, own_connect_timeout_s
from harness.errors import InputError


class ChainCompiler:
    """The query half of `MeshConfig`: protocols, names, compiled chains, intention rules."""

    # Filled by the parser (`MeshConfig` fields); declared here for the type checker.
    source: str
    datacenter: str
    trust_domain: str
    default_intention_allow: bool
    global_protocol: str | None
    service_protocols: dict[ServiceRef, str]
    upstream_defaults: dict[ServiceRef, UpstreamConfig]
    upstream_overrides: dict[tuple[ServiceRef, ServiceRef], UpstreamConfig]
    resolvers: dict[ServiceRef, Resolver]
    routers: dict[ServiceRef, tuple[Route, ...]]
    intentions: dict[ServiceRef, tuple[Intention, ...]]
    entry_names: dict[ServiceRef, str]

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

    def own_connect_timeout(self, resolved: ServiceRef) -> float:
        """The connect timeout of an already redirected target's own resolver, or Consul's 5 s without one.

        Consul's getResolverNode writes it for every target it resolves, the
        primary and each failover target alike (a value under 1 ns means 5 s).
        """
        res = self.resolvers.get(resolved)
        return own_connect_timeout_s(res.connect_timeout_s if res is not None else None)

    def resolver_node(self, start: ServiceRef, override_ct_s: float | None) -> tuple[ResolverNode, bool]:
        """The resolver node for `start`, and whether the upstream override changed it.

        Changed (Consul's customizedBy.ConnectTimeout, which hash-prefixes every
        cluster name of the chain) when the override differs from the connect
        timeout of *any* target resolved here: Consul compares it in
        getResolverNode for the primary and again for each failover target
        (recursedForFailover), each with its own resolver. So a failover target
        without a resolver (5 s) customizes a chain whose primary's resolver
        already says what the caller's upstream config says.
        """
        primary = self._redirected(start)
        res = self.resolvers.get(primary, Resolver(primary))
        connect_timeout = self.own_connect_timeout(primary)
        targets = [primary]
        for t in res.failover.get("*", ()):
            # each failover target applies its own redirect, but never its own failover
            resolved = self._redirected(t)
            if resolved != primary:
                targets.append(resolved)
        customized = is_customized(override_ct_s, (self.own_connect_timeout(t) for t in targets))
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
            node, changed = self.resolver_node(ref, override_ct)
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
            # "<8 hex>~" (CustomizeClusterName), a failover chain's children too
            # ("failover-target~N~<8 hex>~<primary>"); the hex is Consul's struct hash, ours differs.
            tag = customization_tag(cfg.connect_timeout_ms)
            routes = [
                replace(r, node=replace(r.node, cluster_name=customized_name(r.node.cluster_name, tag))) for r in routes
            ]
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
