"""Parsing the Consul CRDs (ProxyDefaults, ServiceDefaults, ServiceResolver, ServiceRouter, ServiceIntentions).

Into a `MeshConfig`, with Consul CE/Enterprise semantics. Everything the
emulation does not implement is rejected with an `InputError` naming the
field, so that a passing local run never hides a config the real mesh would
have treated differently. docs/local-emulation.md lists every remaining
difference.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.backends.local.mesh.compile import ChainCompiler
from harness.backends.local.mesh.spec import UNSUPPORTED, Spec
from harness.backends.local.mesh.types import (
    CONSUL_GROUP,
    DEFAULT_DATACENTER,
    DEFAULT_NAMESPACE,
    LB_POLICIES,
    PROTOCOLS,
    RETRY_ON,
    TRUST_DOMAIN,
    AccessLogs,
    Intention,
    Limits,
    LoadBalancer,
    PassiveHealthCheck,
    Resolver,
    Route,
    RouteDestination,
    ServiceRef,
    UpstreamConfig,
)
from harness.errors import InputError


@dataclass
class MeshConfig(ChainCompiler):
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


def _protocol(spec: Spec, key: str, value: str) -> str:
    if value not in PROTOCOLS:
        raise spec.error(key, f"protocol {value!r} {UNSUPPORTED} (tcp, http, http2, grpc)")
    return value
