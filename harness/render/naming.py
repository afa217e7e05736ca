"""Every name the rendered manifests use, in one place (docs/CONTRACTS.md §2).

Backends, observe and the local emulator all have to agree on these names
(which namespace a zone's pods live in, which Consul name a zone's copy of a
service registers under, which label carries the zone). Computing them in one
module keeps the renderer's parts consistent with each other and lets other
stages import the rule instead of re-deriving it from examples.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.contract.names import consul_name, namespace
from harness.topology.model import Edition, Placement, Service, Topology, Zone


def deployment_name(t: Topology, service: Service, zone: Zone, edition: Edition) -> str:
    """One Deployment per (service, zone); Region AZs share a Service, so the AZ is appended."""
    base = consul_name(t, service, zone, edition)
    return base if zone.is_edge else f"{base}-{t.short(zone)}"


def serving_zone(service: Service, caller_zone: Zone) -> bool:
    """Whether `service` has instances in `caller_zone` (edge-placed: everywhere; else AZs only)."""
    return service.placement is Placement.EDGE or not caller_zone.is_edge


def upstream_target(t: Topology, upstream: Service, caller_zone: Zone, edition: Edition) -> tuple[str, str]:
    """(Consul name, Kubernetes/Consul namespace) a caller in `caller_zone` names as its upstream.

    CE: the zone's own copy of an edge-placed service, the Region service for a
    Region-only one. Enterprise: always the plain name in the caller's own
    namespace; a Region-only service is reached through a ServiceResolver
    redirect in edge namespaces, as the reference design has it.
    """
    if edition is Edition.ENTERPRISE:
        return upstream.name, namespace(t, caller_zone)
    zone = caller_zone if serving_zone(upstream, caller_zone) else t.region_zones[0]
    return consul_name(t, upstream, zone, edition), namespace(t, zone)


def upstream_annotation(t: Topology, service: Service, zone: Zone, edition: Edition) -> str:
    """Value of `connect-service-upstreams`: `<name>:<port>` (CE) or `<name>.<ns>:<port>` (Enterprise)."""
    parts = []
    for up_name in service.upstreams:
        up = t.service(up_name)
        name, ns = upstream_target(t, up, zone, edition)
        ref = f"{name}.{ns}" if edition is Edition.ENTERPRISE else name
        parts.append(f"{ref}:{up.container_port}")
    return ",".join(parts)


def region_replicas(service: Service, t: Topology) -> list[int]:
    """Replicas per AZ (topology order): edge-placed get `replicas` in each AZ;
    Region-only spread `replicas` in total over the AZs, earlier AZs first;
    a read replica (`replicaOf`) spreads over the AZs its primary has no pod in."""
    azs = t.region_zones
    if service.placement is Placement.EDGE:
        return [service.replicas] * len(azs)
    if service.replica_of is not None:
        # A read replica goes where its primary is not: the AZs after the primary's, in order.
        taken = [n > 0 for n in region_replicas(t.service(service.replica_of), t)]
        free = [i for i, used in enumerate(taken) if not used]
        base, extra = divmod(service.replicas, len(free))
        out = [0] * len(azs)
        for k, i in enumerate(free):
            out[i] = base + (1 if k < extra else 0)
        return out
    base, extra = divmod(service.replicas, len(azs))
    return [base + (1 if i < extra else 0) for i in range(len(azs))]


def region_service_zones(service: Service, t: Topology) -> list[Zone]:
    """The AZs a Region-only service has pods in (topology order): where a node loss takes it."""
    return [z for z, n in zip(t.region_zones, region_replicas(service, t), strict=True) if n > 0]


@dataclass(frozen=True)
class Workload:
    """One Deployment: a service's pods in one zone."""

    service: Service
    zone: Zone
    namespace: str
    consul_name: str
    deployment: str
    replicas: int


def workloads(t: Topology, edition: Edition) -> list[Workload]:
    """Every Deployment the topology needs, in topology order (services, then zones).

    Region-only services get no Deployment in an AZ whose share is zero
    replicas: an empty Deployment would only suggest capacity that is not there.
    """
    out: list[Workload] = []
    for svc in t.services:
        az_replicas = iter(region_replicas(svc, t))
        for zone in t.zones:
            if zone.is_edge:
                if svc.placement is not Placement.EDGE:
                    continue
                replicas = svc.replicas
            else:
                replicas = next(az_replicas)
                if replicas == 0:
                    continue
            out.append(
                Workload(
                    service=svc,
                    zone=zone,
                    namespace=namespace(t, zone),
                    consul_name=consul_name(t, svc, zone, edition),
                    deployment=deployment_name(t, svc, zone, edition),
                    replicas=replicas,
                )
            )
    return out


@dataclass(frozen=True)
class ConsulService:
    """One Consul service registration (a k8s Service) and the zones its pods run in."""

    service: Service
    name: str
    namespace: str
    zones: tuple[Zone, ...]

    @property
    def is_edge_copy(self) -> bool:
        """An edge zone's copy of an edge-placed service (the ones that fail over)."""
        return any(z.is_edge for z in self.zones)


def consul_services(t: Topology, edition: Edition) -> list[ConsulService]:
    """Distinct (namespace, Consul name) pairs, in first-seen workload order."""
    seen: dict[tuple[str, str], ConsulService] = {}
    for w in workloads(t, edition):
        key = (w.namespace, w.consul_name)
        prev = seen.get(key)
        zones = (*prev.zones, w.zone) if prev else (w.zone,)
        seen[key] = ConsulService(w.service, w.consul_name, w.namespace, zones)
    return list(seen.values())


def callers(t: Topology, dest: ConsulService, edition: Edition) -> list[tuple[str, str]]:
    """(Consul name, namespace) of every workload allowed to call `dest`.

    An edge copy is called by its own zone's caller. A Region service is
    called by the Region's caller and by every edge zone's caller too, because
    edge callers fail over (edge-placed upstream) or go straight (Region-only
    upstream) to the Region.
    """
    out: list[tuple[str, str]] = []
    for caller in t.services:
        if dest.service.name not in caller.upstreams:
            continue
        for zone in t.zones:
            if not serving_zone(caller, zone):
                continue
            if dest.is_edge_copy and zone not in dest.zones:
                continue
            pair = (consul_name(t, caller, zone, edition), namespace(t, zone))
            if pair not in out:
                out.append(pair)
    return out
