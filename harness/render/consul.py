"""Consul config-entry CRDs (consul.hashicorp.com/v1alpha1) that make routing edge-aware.

What each kind is for here:
- ProxyDefaults `global`: JSON access logs from every sidecar, with the exact
  field list observe parses (pinned rather than left to Consul's default, so a
  Consul upgrade cannot silently change the records), and http as the mesh
  default protocol (L7 routing needs it).
- ServiceDefaults: the protocol per service (postgres is tcp) and, on callers,
  passive health checking (outlier detection) tuned from Consul's defaults
  (= Envoy's: 5 consecutive 5xx, 10 s interval, 30 s base ejection, 10 % max
  ejection; shared/notes/consul-dataplane-semantics.md §5), value by value:
  - `maxEjectionPercent: 100`: with Envoy's 10 % a target with fewer than ten
    hosts never has a host ejected (`ejections_overflow`), so a one-replica
    zone whose app dies behind a live pod would never fail over
    (docs/local-emulation.md, "max_ejection_percent").
  - `maxFailures: 2` (Consul: 5; this harness used to render 1), equal to the
    ServiceRouter's `numRetries`: a request whose first attempt and first
    retry both fail on a host (a pod killed mid-flight: reset, then refused)
    has that host ejected in time for its last retry to go to the failover
    target, so the user sees no error; a single stray 5xx never ejects a
    healthy host. Consul's 5 would spend every retry of the first requests on
    a dead host before the catalog removes it. Ejecting on one 5xx was the
    "cascading ejection" of issue 7: when a zone's product-api died, a burst
    of 5xx answers from the zone's healthy public-api pods got both of them
    ejected by the frontend and sent the zone's users to the Region. (The real
    public-api answers upstream failures with HTTP 200 and GraphQL errors, so
    the frontend does not see them as 5xx at all; the threshold is the
    second guard.)
  - `interval: 1s` (Consul: 10 s): the sweep that un-ejects hosts; at 10 s a
    5 s ejection would last 10 s.
  - `baseEjectionTime: 5s` (Consul: 30 s): a recovered host gets traffic back
    within seconds, inside the recovery SLO, instead of after half a minute.
  - `enforcingConsecutive5xx: 100`: Envoy's default, stated so it is visible.
  - ...except toward a Region-only service with a single pod (postgres), in
    an override with `enforcingConsecutive5xx: 0`: with the 100 % above the
    only host can be ejected too, and ejecting it redirects nothing (a
    Region-only service has no failover target), it black-holes the caller
    (`UH`, no healthy upstream) for the whole ejection. Seen on a loaded node: two postgres handshakes
    over the connect timeout got a new product-api pod's only database
    ejected, its readiness (a database ping) failed, and the pod flapped
    in and out of service for the rest of the run.
- ServiceResolver: on each edge copy, failover to the Region. In CE that is
  another service name (`targets: [{service: product-api}]`); Enterprise names
  the Region namespace, and redirects Region-only services from edge
  namespaces to the Region namespace.
- ServiceRouter: retries for HTTP services, so a request caught by a pod dying
  mid-flight is retried (possibly on the failover target) instead of lost.
- ServiceIntentions: exactly the call graph, everything else denied. With ACLs
  off Consul's default is allow, so the `*` deny is what makes a wrong route
  (e.g. to another Local Zone) fail loudly.
CE must not contain Enterprise-only fields (namespaces in targets/redirects,
sameness groups, prioritizeByLocality, failover policy): CE and the consul-k8s
webhook reject them. CE config-entry names are unique cluster-wide because
every Kubernetes namespace maps to the one `default` Consul namespace.
"""

from __future__ import annotations

import json
from typing import Any

from harness.contract import names
from harness.contract.clusters import ChainClusters, Ref, chain_clusters
from harness.contract.rundir import ACCESS_LOG_FIELDS
from harness.render import naming
from harness.render.naming import ConsulService
from harness.topology.model import Edition, Placement, Service, Topology

API_VERSION = "consul.hashicorp.com/v1alpha1"
NUM_RETRIES = 2
CONNECT_TIMEOUT_MS = 2000
PASSIVE_HEALTH_CHECK: dict[str, Any] = {
    "interval": "1s",
    "maxFailures": 2,  # = NUM_RETRIES, see the module docstring
    "enforcingConsecutive5xx": 100,
    "maxEjectionPercent": 100,
    "baseEjectionTime": "5s",
}
# isValidRetryCondition values; gateway-error covers a 502/503/504 from a pod
# that is shutting down, reset/refused-stream a connection it dropped.
RETRY_ON = ["reset", "connect-failure", "refused-stream", "gateway-error"]


def _crd(kind: str, name: str, ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    labels = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": spec,
    }


def proxy_defaults() -> dict[str, Any]:
    spec = {
        "config": {"protocol": "http"},
        "accessLogs": {"enabled": True, "jsonFormat": json.dumps(ACCESS_LOG_FIELDS, indent=2) + "\n"},
    }
    return _crd("ProxyDefaults", "global", names.CONSUL_NAMESPACE, spec)


def _redirected_region_services(t: Topology, edition: Edition) -> list[tuple[str, str]]:
    """Enterprise: (service, edge namespace) of each Region-only service named from an edge namespace."""
    if edition is not Edition.ENTERPRISE:
        return []
    return [
        (svc.name, naming.namespace(t, zone))
        for zone in t.edge_zones
        for svc in t.services
        if svc.placement is Placement.REGION
    ]


def _single_region_pod(service: Service) -> bool:
    """A Region-only service with one pod: ejecting it cannot redirect anything (see the module docstring)."""
    return service.placement is Placement.REGION and service.replicas == 1


def service_defaults(t: Topology, services: list[ConsulService], edition: Edition) -> list[dict[str, Any]]:
    out = []
    for cs in services:
        spec: dict[str, Any] = {"protocol": cs.service.protocol}
        if cs.service.upstreams:
            spec["upstreamConfig"] = {
                "defaults": {"connectTimeoutMs": CONNECT_TIMEOUT_MS, "passiveHealthCheck": dict(PASSIVE_HEALTH_CHECK)}
            }
            single = [u for u in map(t.service, cs.service.upstreams) if _single_region_pod(u)]
            if single:
                spec["upstreamConfig"]["overrides"] = [
                    {"name": naming.upstream_target(t, u, cs.zones[0], edition)[0],
                     "passiveHealthCheck": {**PASSIVE_HEALTH_CHECK, "enforcingConsecutive5xx": 0}}
                    for u in single
                ]  # fmt: skip
        out.append(_crd("ServiceDefaults", cs.name, cs.namespace, spec))
    # The redirected name needs a protocol too: the discovery chain starts there.
    for name, ns in _redirected_region_services(t, edition):
        out.append(_crd("ServiceDefaults", name, ns, {"protocol": t.service(name).protocol}))
    return out


def _region_copy(t: Topology, cs: ConsulService, edition: Edition) -> tuple[str, str]:
    """(Consul name, namespace) of the Region copy an edge copy fails over to."""
    region = t.region_zones[0]
    return naming.consul_name(t, cs.service, region, edition), naming.namespace(t, region)


def service_resolvers(t: Topology, services: list[ConsulService], edition: Edition) -> list[dict[str, Any]]:
    out = []
    timeout = f"{CONNECT_TIMEOUT_MS // 1000}s" if CONNECT_TIMEOUT_MS % 1000 == 0 else f"{CONNECT_TIMEOUT_MS}ms"
    for cs in services:
        if not cs.is_edge_copy:
            continue
        name, ns = _region_copy(t, cs, edition)
        target: dict[str, str] = {"service": name}
        if edition is Edition.ENTERPRISE:
            target["namespace"] = ns
        spec = {"connectTimeout": timeout, "failover": {"*": {"targets": [target]}}}
        out.append(_crd("ServiceResolver", cs.name, cs.namespace, spec))
    for name, ns in _redirected_region_services(t, edition):
        spec = {"redirect": {"service": name, "namespace": names.REGION_NAMESPACE}}
        out.append(_crd("ServiceResolver", name, ns, spec))
    return out


def service_routers(services: list[ConsulService]) -> list[dict[str, Any]]:
    out = []
    for cs in services:
        if cs.service.protocol != "http":
            continue
        route = {
            "match": {"http": {"pathPrefix": "/"}},
            "destination": {"numRetries": NUM_RETRIES, "retryOnConnectFailure": True, "retryOn": list(RETRY_ON)},
        }
        out.append(_crd("ServiceRouter", cs.name, cs.namespace, {"routes": [route]}))
    return out


def _source(name: str, ns: str, action: str, enterprise: bool) -> dict[str, str]:
    """An intention source; CE has one Consul namespace, so naming one is Enterprise-only."""
    return {"name": name, "namespace": ns, "action": action} if enterprise else {"name": name, "action": action}


def service_intentions(t: Topology, services: list[ConsulService], edition: Edition) -> list[dict[str, Any]]:
    out = []
    enterprise = edition is Edition.ENTERPRISE
    for cs in services:
        sources = [_source(name, ns, "allow", enterprise) for name, ns in naming.callers(t, cs, edition)]
        sources.append(_source("*", "*", "deny", enterprise))
        destination = {"name": cs.name, "namespace": cs.namespace} if enterprise else {"name": cs.name}
        out.append(_crd("ServiceIntentions", cs.name, cs.namespace, {"destination": destination, "sources": sources}))
    return out


def render_consul(t: Topology, edition: Edition) -> dict[str, list[dict[str, Any]]]:
    """File name (under consul/) -> config-entry CRDs, in apply order."""
    services = naming.consul_services(t, edition)
    files = {
        "00-proxy-defaults.yaml": [proxy_defaults()],
        "10-service-defaults.yaml": service_defaults(t, services, edition),
        "20-service-resolvers.yaml": service_resolvers(t, services, edition),
        "30-service-routers.yaml": service_routers(services),
        "40-service-intentions.yaml": service_intentions(t, services, edition),
    }
    return {name: objs for name, objs in files.items() if objs}


class RenderedChains:
    """The Envoy clusters Consul compiles from the rendered config entries, for models of a run without Consul.

    The synthetic runs (`harness.verify.synth`) and the test kit's fake backend write the access-log lines and
    upstream counters a real sidecar would: their cluster names must be the ones Consul gives the rendered config
    (`harness.contract.clusters`: every chain of a caller with `connectTimeoutMs` whose targets include one without
    a resolver is hash-prefixed), read here off the same entries `render_consul` writes, so a change to them
    changes the names the models write. Consul CE holds every entry in its one namespace (keyed by name
    alone); Enterprise in the mirrored Kubernetes namespace.
    """

    def __init__(self, t: Topology, edition: Edition, trust_domain: str, datacenter: str = "dc1") -> None:
        self.t = t
        self.edition = edition
        self.trust_domain = trust_domain
        self.datacenter = datacenter
        self._entries: dict[tuple[str, Ref], dict[str, Any]] = {}
        for objs in render_consul(t, edition).values():
            for obj in objs:
                meta = obj["metadata"]
                self._entries[(str(obj["kind"]), self._ref(str(meta["name"]), str(meta["namespace"])))] = obj["spec"]
        self._chains: dict[tuple[str, str, str], ChainClusters] = {}

    def _ref(self, name: str, namespace: str) -> Ref:
        return (name, namespace if self.edition is Edition.ENTERPRISE else None)

    def _sni(self, ref: Ref) -> str:
        return f"{ref[0]}.{ref[1] or names.CE_CONSUL_NAMESPACE}.{self.datacenter}.internal.{self.trust_domain}"

    def chain(self, caller: str, zone: str, upstream: str) -> ChainClusters:
        """The chain a `caller` pod in `zone` gets for `upstream` (service names of the topology)."""
        key = (caller, zone, upstream)
        if key not in self._chains:
            t, z = self.t, self.t.zone(zone)
            src = self._ref(names.consul_name(t, t.service(caller), z, self.edition), names.namespace(t, z))
            dst = self._ref(*naming.upstream_target(t, t.service(upstream), z, self.edition))
            self._chains[key] = chain_clusters(lambda kind, ref: self._entries.get((kind, ref)), src, dst, self._sni)
        return self._chains[key]
