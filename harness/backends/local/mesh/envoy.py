"""Compiled Consul chains → Envoy v3 resources (the JSON Consul's xDS server would send).

Kept apart from `mesh` so the Consul semantics (what the chain is) and the
Envoy encoding (how Consul expresses it to Envoy: aggregate clusters,
panic threshold 0, retry policies, RBAC, access-log formats) can each be read
against their part of shared/notes/consul-dataplane-semantics.md. Every
function returns plain dicts ready for a filesystem-xDS DiscoveryResponse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends.local.mesh import (
    HTTP_PROTOCOLS,
    AccessLogs,
    Chain,
    CompiledRoute,
    IntentionRules,
    LoadBalancer,
    MeshConfig,
    ResolverNode,
    ServiceRef,
    UpstreamConfig,
)
from harness.contract.rundir import ACCESS_LOG_FIELDS

T_CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
T_CLA = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
T_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
T_TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
T_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
T_AGGREGATE = "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
T_UP_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
T_DOWN_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
T_HTTP_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
T_NET_RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
T_HTTP_OPTS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

LOCAL_APP_CLUSTER = "local_app"

# Consul's default JSON access-log format: the renderer's copy is the one place it is written down.
CONSUL_JSON_LOG_FORMAT: dict[str, str] = ACCESS_LOG_FIELDS


@dataclass(frozen=True)
class TlsFiles:
    """Where one sidecar's CA bundle, leaf certificate and key live on disk."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class LogContext:
    """The sidecar identity stamped on every access-log line, and the file it goes to."""

    path: Path
    pod: str
    service: str


def duration(seconds: float) -> str:
    """Envoy's JSON Duration string (``"1.5s"``)."""
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text or '0'}s"


# --- access logs ----------------------------------------------------------


def access_logs(cfg: AccessLogs, ctx: LogContext, direction: str, listener_level: bool) -> list[dict[str, Any]]:
    """The access-log list for one HCM/tcp_proxy (or, with `listener_level`, its listener).

    Consul attaches "Consul Listener Filter Log" to every HCM/tcp_proxy and
    "Consul Listener Log" (response flag NR only) to the listener itself.
    """
    if not cfg.enabled or (listener_level and cfg.disable_listener_logs):
        return []
    log_format: dict[str, Any]
    if cfg.text_format is not None:
        log_format = {"text_format_source": {"inline_string": cfg.text_format}}
    else:
        fields = dict(cfg.json_format if cfg.json_format is not None else CONSUL_JSON_LOG_FORMAT)
        fields.update({"caller_pod": ctx.pod, "caller_service": ctx.service, "direction": direction})
        log_format = {"json_format": fields}
    entry: dict[str, Any] = {
        "name": "Consul Listener Log" if listener_level else "Consul Listener Filter Log",
        "typed_config": {"@type": T_FILE_LOG, "path": str(ctx.path), "log_format": log_format},
    }
    if listener_level:
        entry["filter"] = {"response_flag_filter": {"flags": ["NR"]}}
    return [entry]


# --- clusters -------------------------------------------------------------


def outlier_detection(cfg: UpstreamConfig) -> dict[str, Any]:
    """Always present (Consul's ToOutlierDetection(..., true)); unset fields keep Envoy defaults."""
    out: dict[str, Any] = {}
    phc = cfg.passive_health_check
    if phc is None:
        return out
    if phc.interval_s is not None:
        out["interval"] = duration(phc.interval_s)
    if phc.max_failures is not None:
        out["consecutive_5xx"] = phc.max_failures
    if phc.enforcing_consecutive_5xx is not None:
        out["enforcing_consecutive_5xx"] = phc.enforcing_consecutive_5xx
    if phc.max_ejection_percent is not None:
        out["max_ejection_percent"] = phc.max_ejection_percent
    if phc.base_ejection_time_s is not None:
        out["base_ejection_time"] = duration(phc.base_ejection_time_s)
    return out


def circuit_breakers(cfg: UpstreamConfig) -> dict[str, Any]:
    """Thresholds only when limits are set (makeThresholdsIfNeeded); else Envoy's defaults."""
    lim = cfg.limits
    if lim is None or lim.empty:
        return {}
    t: dict[str, Any] = {}
    if lim.max_connections is not None:
        t["max_connections"] = lim.max_connections
    if lim.max_pending_requests is not None:
        t["max_pending_requests"] = lim.max_pending_requests
    if lim.max_concurrent_requests is not None:
        t["max_requests"] = lim.max_concurrent_requests
    return {"thresholds": [t]}


def _inject_lb(cluster: dict[str, Any], lb: LoadBalancer | None) -> None:
    if lb is None or lb.policy == "round_robin":
        return
    if lb.policy == "least_request":
        cluster["lb_policy"] = "LEAST_REQUEST"
        if lb.choice_count:
            cluster["least_request_lb_config"] = {"choice_count": lb.choice_count}
    elif lb.policy == "random":
        cluster["lb_policy"] = "RANDOM"
    elif lb.policy == "ring_hash":
        cluster["lb_policy"] = "RING_HASH"
        ring: dict[str, Any] = {}
        if lb.ring_min:
            ring["minimum_ring_size"] = lb.ring_min
        if lb.ring_max:
            ring["maximum_ring_size"] = lb.ring_max
        if ring:
            cluster["ring_hash_lb_config"] = ring
    elif lb.policy == "maglev":
        cluster["lb_policy"] = "MAGLEV"


def upstream_tls(tls: TlsFiles, sni: str, spiffe_id: str) -> dict[str, Any]:
    """mTLS to one target: SNI = target SNI, the caller's cert, the server's SPIFFE ID checked."""
    return {
        "name": "tls",
        "typed_config": {
            "@type": T_UP_TLS,
            "sni": sni,
            "common_tls_context": {
                "tls_params": {},
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(tls.cert)}, "private_key": {"filename": str(tls.key)}}
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(tls.ca)},
                    "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": spiffe_id}}],
                },
            },
        },
    }


def eds_config(eds_dir: Path, cluster_name: str) -> dict[str, Any]:
    """Filesystem EDS: one directory per cluster, watched for atomic renames."""
    d = eds_dir / cluster_name
    return {
        "eds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(d / "cla.json"), "watched_directory": {"path": str(d)}},
        },
        "service_name": cluster_name,
    }


def chain_clusters(chain: Chain, tls: TlsFiles, eds_dir: Path) -> tuple[list[dict[str, Any]], dict[str, ServiceRef]]:
    """All clusters of one chain, and the EDS cluster name → target service map."""
    clusters: list[dict[str, Any]] = []
    eds: dict[str, ServiceRef] = {}
    for node in chain.nodes:
        children = node.child_names
        for name, target in zip(children, node.targets, strict=True):
            c: dict[str, Any] = {
                "name": name,
                "alt_stat_name": name,
                "type": "EDS",
                "eds_cluster_config": eds_config(eds_dir, name),
                "connect_timeout": duration(node.connect_timeout_s),
                "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
                "outlier_detection": outlier_detection(chain.upstream_config),
                "transport_socket": upstream_tls(tls, target.sni, target.spiffe_id),
            }
            cb = circuit_breakers(chain.upstream_config)
            if cb:
                c["circuit_breakers"] = cb
            _inject_lb(c, node.load_balancer)
            if chain.protocol in ("http2", "grpc"):
                c["typed_extension_protocol_options"] = {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": T_HTTP_OPTS,
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                }
            clusters.append(c)
            eds[name] = target.service
        if node.aggregate:
            clusters.append(
                {
                    "name": node.cluster_name,
                    "alt_stat_name": node.cluster_name,
                    "connect_timeout": duration(node.connect_timeout_s),
                    "lb_policy": "CLUSTER_PROVIDED",
                    "cluster_type": {
                        "name": "envoy.clusters.aggregate",
                        "typed_config": {"@type": T_AGGREGATE, "clusters": list(children)},
                    },
                }
            )
    return clusters, eds


def local_app_cluster(app_port: int, connect_timeout_s: float = 5.0) -> dict[str, Any]:
    """The inbound listener's destination: the app on 127.0.0.1 inside the pod."""
    return {
        "name": LOCAL_APP_CLUSTER,
        "type": "STATIC",
        "connect_timeout": duration(connect_timeout_s),
        "load_assignment": {
            "cluster_name": LOCAL_APP_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr("127.0.0.1", app_port)}}]}],
        },
    }


def load_assignment(cluster_name: str, endpoints: list[tuple[str, int, bool]]) -> dict[str, Any]:
    """One priority-0 group without locality, every instance with its health (Consul EDS)."""
    lb = [
        {
            "endpoint": {"address": _addr(ip, port)},
            "health_status": "HEALTHY" if healthy else "UNHEALTHY",
            "load_balancing_weight": 1,
        }
        for ip, port, healthy in endpoints
    ]
    return {"@type": T_CLA, "cluster_name": cluster_name, "endpoints": [{"lb_endpoints": lb}] if lb else []}


# --- listeners ------------------------------------------------------------


def _addr(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _route(r: CompiledRoute) -> dict[str, Any]:
    match: dict[str, Any] = {"path": r.path_exact} if r.path_exact else {"prefix": r.path_prefix or "/"}
    action: dict[str, Any] = {"cluster": r.node.cluster_name}
    if r.timeout_s is not None:
        action["timeout"] = duration(r.timeout_s)
    if r.retry is not None:
        policy: dict[str, Any] = {"retry_on": ",".join(r.retry.retry_on)}
        if r.retry.num_retries is not None:
            policy["num_retries"] = r.retry.num_retries
        if r.retry.retriable_status_codes:
            policy["retriable_status_codes"] = list(r.retry.retriable_status_codes)
        action["retry_policy"] = policy
    return {"match": match, "route": action}


def upstream_id(upstream: ServiceRef) -> str:
    """Consul's upstream EnvoyID: the name, namespace-qualified outside ``default``."""
    return str(upstream)


def outbound_listener(chain: Chain, mesh: MeshConfig, ip: str, port: int, log: LogContext) -> dict[str, Any]:
    """One upstream's local listener: HCM for HTTP chains, tcp_proxy otherwise."""
    uid = upstream_id(chain.upstream)
    logs = access_logs(mesh.access_logs, log, "outbound", listener_level=False)
    if chain.protocol in HTTP_PROTOCOLS:
        hcm: dict[str, Any] = {
            "@type": T_HCM,
            "stat_prefix": f"upstream.{uid}",
            "codec_type": "AUTO",
            "route_config": {
                "name": uid,
                "virtual_hosts": [{"name": uid, "domains": ["*"], "routes": [_route(r) for r in chain.routes]}],
            },
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}}],
            "tracing": {"random_sampling": {"value": 0}},
        }
        if chain.protocol in ("http2", "grpc"):
            hcm["http2_protocol_options"] = {}
        if logs:
            hcm["access_log"] = logs
        filt = {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
    else:
        tcp: dict[str, Any] = {
            "@type": T_TCP_PROXY,
            "stat_prefix": f"upstream.{uid}",
            "cluster": chain.routes[0].node.cluster_name,
        }
        if logs:
            tcp["access_log"] = logs
        filt = {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}
    listener: dict[str, Any] = {
        "@type": T_LISTENER,
        "name": f"{uid}:{ip}:{port}",
        "address": _addr(ip, port),
        "traffic_direction": "OUTBOUND",
        "filter_chains": [{"filters": [filt]}],
    }
    listener_logs = access_logs(mesh.access_logs, log, "outbound", listener_level=True)
    if listener_logs:
        listener["access_log"] = listener_logs
    return listener


def _principal(mesh: MeshConfig, src: ServiceRef) -> dict[str, Any]:
    ns = "[^/]+" if src.namespace == "*" else _re_escape(src.namespace)
    name = "[^/]+" if src.name == "*" else _re_escape(src.name)
    regex = f"^spiffe://{_re_escape(mesh.trust_domain)}/ns/{ns}/dc/[^/]+/svc/{name}$"
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": regex}}}}


def _re_escape(text: str) -> str:
    return "".join("\\" + ch if ch in ".^$*+?()[]{}|\\" else ch for ch in text)


def rbac_rules(mesh: MeshConfig, rules: IntentionRules) -> dict[str, Any]:
    """Envoy RBAC rules for a destination's intentions (see MeshConfig.intention_rules)."""
    out: dict[str, Any] = {"action": "ALLOW" if rules.allow_listed else "DENY", "policies": {}}
    if rules.principals:
        out["policies"]["consul-intentions-layer4"] = {
            "permissions": [{"any": True}],
            "principals": [_principal(mesh, p) for p in rules.principals],
        }
    return out


def inbound_listener(
    mesh: MeshConfig,
    service: ServiceRef,
    ip: str,
    port: int,
    tls: TlsFiles,
    log: LogContext,
    local_request_timeout_s: float | None = None,
) -> dict[str, Any]:
    """The public listener: mTLS (client cert signed by the CA required), intentions, then the app."""
    protocol = mesh.protocol(service)
    rbac = rbac_rules(mesh, mesh.intention_rules(service))
    logs = access_logs(mesh.access_logs, log, "inbound", listener_level=False)
    filters: list[dict[str, Any]]
    if protocol in HTTP_PROTOCOLS:
        route: dict[str, Any] = {"cluster": LOCAL_APP_CLUSTER}
        if local_request_timeout_s is not None:
            route["timeout"] = duration(local_request_timeout_s)
        hcm: dict[str, Any] = {
            "@type": T_HCM,
            "stat_prefix": "public_listener",
            "codec_type": "AUTO",
            "route_config": {
                "name": "public_listener",
                "virtual_hosts": [
                    {
                        "name": "public_listener",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": route}],
                    }
                ],
            },
            "http_filters": [
                {"name": "envoy.filters.http.rbac", "typed_config": {"@type": T_HTTP_RBAC, "rules": rbac}},
                {"name": "envoy.filters.http.router", "typed_config": {"@type": T_ROUTER}},
            ],
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": True, "cert": True, "chain": True, "dns": True, "uri": True},
            "tracing": {"random_sampling": {"value": 0}},
        }
        if protocol in ("http2", "grpc"):
            hcm["http2_protocol_options"] = {}
        if logs:
            hcm["access_log"] = logs
        filters = [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    else:
        tcp: dict[str, Any] = {"@type": T_TCP_PROXY, "stat_prefix": "public_listener", "cluster": LOCAL_APP_CLUSTER}
        if logs:
            tcp["access_log"] = logs
        filters = [
            {
                "name": "envoy.filters.network.rbac",
                "typed_config": {"@type": T_NET_RBAC, "stat_prefix": "connect_authz", "rules": rbac},
            },
            {"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp},
        ]
    listener: dict[str, Any] = {
        "@type": T_LISTENER,
        "name": f"public_listener:{ip}:{port}",
        "address": _addr(ip, port),
        "traffic_direction": "INBOUND",
        # Consul's public listener inspects TLS (SNI → %REQUESTED_SERVER_NAME% in the logs)
        "listener_filters": [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                },
            }
        ],
        "filter_chains": [
            {
                "filters": filters,
                "transport_socket": {
                    "name": "tls",
                    "typed_config": {
                        "@type": T_DOWN_TLS,
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "tls_params": {},
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": str(tls.cert)},
                                    "private_key": {"filename": str(tls.key)},
                                }
                            ],
                            "validation_context": {"trusted_ca": {"filename": str(tls.ca)}},
                        },
                    },
                },
            }
        ],
    }
    listener_logs = access_logs(mesh.access_logs, log, "inbound", listener_level=True)
    if listener_logs:
        listener["access_log"] = listener_logs
    return listener


def discovery_response(type_url: str, resources: Sequence[Mapping[str, Any]], version: str) -> dict[str, Any]:
    """The document a filesystem xDS subscription reads."""
    return {"version_info": version, "type_url": type_url, "resources": [dict(r) for r in resources]}


__all__ = [
    "CONSUL_JSON_LOG_FORMAT",
    "LOCAL_APP_CLUSTER",
    "LogContext",
    "ResolverNode",
    "TlsFiles",
    "access_logs",
    "chain_clusters",
    "inbound_listener",
    "load_assignment",
    "local_app_cluster",
    "outbound_listener",
    "rbac_rules",
]
