"""Topology model, loading and validation.

The file is YAML with camelCase keys (it sits next to Kubernetes manifests and
is read by the same people). Validation is strict: an unknown key is an error,
because a typo that silently falls back to a default would make a run test
something other than what its author meant. Every error is one line naming the
file and the field (``fixtures/topology.yaml: zones[2].type: ...``).
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from harness.errors import InputError
from harness.topology.yamlload import safe_load

# Package data (pyproject [tool.setuptools.package-data]): found the same in a checkout and in an install.
DEFAULT_TOPOLOGY = Path(str(files("harness").joinpath("fixtures", "topology.yaml")))

# The service users enter every zone through (nginx on port 80, `/api` to public-api): the renderer's entry
# points, the backends' entry pods, the faults that take a zone's entry down and the verifier's entry lines all
# mean this one. A topology must place it in the zones (`_check_cross_fields`).
ENTRY_SERVICE = "frontend"
# ... and where its nginx sends `/api` (the GraphQL requests, the zone probes): the renderer's nginx config and the
# verifier's entry lines mean this one
ENTRY_API_UPSTREAM = "public-api"

# HashiCups images as published by HashiCorp (hashicorp-demoapp/hashicups-setups
# and consul tutorials). Pinned: a moving tag would change what a run tests.
KNOWN_IMAGES: dict[str, str] = {
    "frontend": "hashicorpdemoapp/frontend:v1.0.9",
    "public-api": "hashicorpdemoapp/public-api:v0.0.7",
    "product-api": "hashicorpdemoapp/product-api:v0.0.22",
    "postgres": "hashicorpdemoapp/product-api-db:v0.0.22",
    # The read replica runs the same image (same PostgreSQL binaries as the primary: a
    # physical replica must), started as a standby (harness/render/database.py).
    "postgres-replica": "hashicorpdemoapp/product-api-db:v0.0.22",
}
KNOWN_PORTS: dict[str, int] = {
    "frontend": 3000,
    "public-api": 8080,
    "product-api": 9090,
    "postgres": 5432,
    # Not 5432: the replica's own sidecar listens on localhost:5432 for its upstream, the primary.
    "postgres-replica": 5433,
}

# The label `app` of the Consul chart's own pods (its `consul.name`): the chart's pod webhook skips every pod so
# labelled (objectSelector `app NotIn [consul]`, consul-k8s v1.9.11 templates/connect-inject-
# mutatingwebhookconfiguration.yaml), and the renderer labels a service's pods `app: <service name>`
CHART_APP = "consul"
# Ports the injected sidecar binds in every meshed pod, beside the app's own and one Envoy listener per upstream on
# 127.0.0.1:<the upstream's port> (consul-k8s v1.9.11 connect-inject webhook consul_dataplane_sidecar.go; consul-
# dataplane cmd/consul-dataplane/config.go and pkg/consuldp/lifecycle.go, which "always starts" the graceful port's
# listener). A service on one of them meets EADDRINUSE in its own pod or in its callers' (`_check_pod_ports`).
SIDECAR_PORTS: dict[int, str] = {
    19000: "Envoy's admin (127.0.0.1:19000)",
    20000: "Envoy's public mTLS listener (constants.ProxyDefaultInboundPort)",
    20600: "consul-dataplane's graceful-shutdown listener (127.0.0.1, the chart's lifecycle.defaultGracefulPort)",
}
# The frontend pod's nginx, the zone's way in (render.hashicups, render.entry); product-api's conf.json
# `metrics_address` (render.hashicups.product_api_conf)
NGINX_PORT = 80
PRODUCT_API_METRICS_PORT = 9103
# What else the renderer binds in a HashiCups service's pod, beside its own port
POD_PORTS: dict[str, dict[int, str]] = {
    "frontend": {NGINX_PORT: "the frontend pod's nginx (the zone's way in)"},
    "product-api": {PRODUCT_API_METRICS_PORT: "product-api's metrics listener (its conf.json metrics_address)"},
}


_NUMBER_TYPES = (int, float, int | None, float | None)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A number field takes a YAML number only: pydantic's lax mode reads `nodes: yes` (YAML 1.1's true) as 1
        and `replicas: "2"` as 2, so a typo would be brought up silently as something else."""
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and field.annotation in _NUMBER_TYPES and isinstance(value, bool | str):
            raise ValueError(f"expected a number, got {value!r}")
        return value


class ZoneType(StrEnum):
    AVAILABILITY_ZONE = "availability-zone"
    LOCAL_ZONE = "local-zone"
    WAVELENGTH_ZONE = "wavelength-zone"


class Edition(StrEnum):
    CE = "ce"
    ENTERPRISE = "enterprise"


class Placement(StrEnum):
    EDGE = "edge"  # replicas in every zone (each AZ and each edge zone)
    REGION = "region"  # replicas in the Region's AZs only


class ServiceLink(_Model):
    """The edge zone's link to its parent Region (AWS calls it the service link)."""

    latency_ms: float = Field(default=10.0, ge=0, le=5000)
    jitter_ms: float = Field(default=0.0, ge=0, le=5000)
    loss_percent: float = Field(default=0.0, ge=0, le=100)


class Zone(_Model):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    type: ZoneType
    nodes: int = Field(default=1, ge=1, le=20)
    service_link: ServiceLink | None = None
    short_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    # Subnets of an Application Load Balancer for this zone's entry point (AWS Load Balancer
    # Controller). Only ALBs exist in Local Zones (no NLB), and only in some: empty = no ALB,
    # the operator names the zone's URL instead (harness/render/entry.py).
    alb_subnets: tuple[str, ...] = Field(default=(), max_length=16)
    # Round-trip time between this zone's users (its city) and the zone's entry point. Local
    # Zones exist to make it small; a request the zone serves from the Region pays it plus the
    # service link's round trip per crossing. The local backend puts it on the wire of each
    # zone's user access link (harness/backends/local/access.py); kind/EKS measure the real one.
    user_latency_ms: float = Field(default=0.0, ge=0, le=5000)

    @field_validator("alb_subnets")
    @classmethod
    def _subnet_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for s in value:
            if not re.fullmatch(r"subnet-[0-9a-f]{8,17}", s):
                raise ValueError(f"{s!r} is not a subnet ID (subnet-<8 or 17 hex digits>)")
        return value

    @property
    def is_edge(self) -> bool:
        return self.type is not ZoneType.AVAILABILITY_ZONE

    @property
    def link(self) -> ServiceLink:
        """The service link of an edge zone (defaults when not given)."""
        return self.service_link or ServiceLink()


class Service(_Model):
    name: str = Field(min_length=1, max_length=40, pattern=r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
    placement: Placement
    replicas: int = Field(default=1, ge=1, le=10)
    port: int | None = Field(default=None, ge=1, le=65535)
    protocol: str = Field(default="http", pattern=r"^(http|tcp)$")
    upstreams: tuple[str, ...] = ()
    image: str | None = None
    # A streaming read replica of another Region-only service (postgres): cloned from it with
    # pg_basebackup and fed by its WAL stream through the mesh, placed in AZs the primary is not in.
    replica_of: str | None = None

    @property
    def container_port(self) -> int:
        if self.port is not None:
            return self.port
        return KNOWN_PORTS[self.name]

    @property
    def container_image(self) -> str:
        return self.image or KNOWN_IMAGES[self.name]


class Slo(_Model):
    in_zone_share: float = Field(default=0.999, gt=0, le=1)
    error_budget: float = Field(default=0.01, ge=0, le=1)
    max_failover_s: float = Field(default=5.0, gt=0)
    max_recovery_s: float = Field(default=60.0, gt=0)


class LocalSettings(_Model):
    """Settings only the local backend reads."""

    address_range: str = "10.213.0.0/16"
    pod_restart_delay_s: float = Field(default=2.0, ge=0, le=120)
    # how long a killed node's pods stay Ready and registered (Kubernetes' node-monitor-grace-period)
    node_grace_period_s: float = Field(default=40.0, ge=0, le=600)

    @field_validator("address_range")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a network address range: {exc}") from None
        if net.version != 4 or net.prefixlen > 20:
            raise ValueError("must be an IPv4 range of /20 or larger")
        return value


class Topology(_Model):
    api_version: str = Field(default="edge-harness/v1", pattern=r"^edge-harness/v1$")
    name: str = Field(default="edge", pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", max_length=30)
    region: str = Field(default="us-west-2", pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    edition: Edition = Edition.CE
    zones: tuple[Zone, ...]
    services: tuple[Service, ...]
    slo: Slo = Slo()
    local: LocalSettings = LocalSettings()

    @model_validator(mode="after")
    def _cross_fields(self) -> Topology:
        _check_cross_fields(self)
        return self

    # -- helpers -------------------------------------------------------------
    @property
    def edge_zones(self) -> list[Zone]:
        return [z for z in self.zones if z.is_edge]

    @property
    def region_zones(self) -> list[Zone]:
        return [z for z in self.zones if not z.is_edge]

    @property
    def entry_services(self) -> frozenset[str]:
        """The services users enter through: ENTRY_SERVICE, the one the entry points send users to.

        Not "every edge service no one calls": an extra such service gets no
        user at all, and counting it as an entry made a fault that killed it
        look like the zone's entry going down, which excuses the zone's
        failed user requests and missing entry lines.
        """
        return frozenset({ENTRY_SERVICE})  # `_check_cross_fields` requires it in every topology

    def zone(self, name: str) -> Zone:
        for z in self.zones:
            if z.name == name:
                return z
        raise KeyError(name)

    def service(self, name: str) -> Service:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)

    def short(self, zone: Zone | str) -> str:
        """Short zone name used in object names: `lax-1a` for `us-west-2-lax-1a`."""
        z = self.zone(zone) if isinstance(zone, str) else zone
        if z.short_name:
            return z.short_name
        prefix = self.region + "-"
        if z.name.startswith(prefix) and len(z.name) > len(prefix):
            return z.name[len(prefix) :]
        if z.name.startswith(self.region) and len(z.name) > len(self.region):
            return self.region.rsplit("-", 1)[-1] + z.name[len(self.region) :]
        return z.name


class _CrossFieldError(ValueError):
    """A rule across fields; `field` is the path to report."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# Kubernetes takes a label value (and a Service's or a namespace's name, a DNS label) of at most 63 characters
# (apimachinery IsValidLabelValue, IsDNS1035Label/IsDNS1123Label). A longer one is refused by the API server
# mid-apply, and in a kind node's labels by the API server when the kubelet registers the node: `kind create`
# fails with a line naming `kubeadm join`, not the topology.
K8S_LABEL_MAX = 63


def _check_kubernetes_names(t: Topology) -> None:
    """The topology's values that become label values or DNS-label names fit Kubernetes' 63 characters.

    The region and each zone's name are node labels (topology.kubernetes.io/region, /zone, as on every cloud)
    and pod labels; a zone's short name ends the names of its copies of the services: in CE, `<service>-<short>`
    (contract.names.consul_name: a Service's name, a label value, a Consul service name), and in the Region the
    AZ's Deployments take the same suffix.
    """
    if len(t.region) > K8S_LABEL_MAX:
        raise _CrossFieldError("region", f"{len(t.region)} characters: the nodes' topology.kubernetes.io/region label "
                               f"takes at most {K8S_LABEL_MAX}")  # fmt: skip
    longest = max(t.services, key=lambda s: len(s.name), default=None)
    for i, z in enumerate(t.zones):
        if len(z.name) > K8S_LABEL_MAX:
            raise _CrossFieldError(
                f"zones[{i}].name",
                f"{len(z.name)} characters: the nodes' topology.kubernetes.io/zone label takes at most {K8S_LABEL_MAX}",
            )
        short = t.short(z)
        if longest is not None and len(longest.name) + 1 + len(short) > K8S_LABEL_MAX:
            name = f"{longest.name}-{short}"
            raise _CrossFieldError(
                f"zones[{i}].shortName" if z.short_name else f"zones[{i}].name",
                f"the zone's short name {short!r} makes {name!r}, {len(name)} characters: a Kubernetes Service name "
                f"and label value take at most {K8S_LABEL_MAX} (set a shorter zones[{i}].shortName)",
            )


def _check_cross_fields(t: Topology) -> None:
    seen: dict[str, int] = {}
    for i, z in enumerate(t.zones):
        if z.name in seen:
            raise _CrossFieldError(f"zones[{i}].name", f"duplicate zone name {z.name!r} (also zones[{seen[z.name]}])")
        seen[z.name] = i
        if not z.name.startswith(t.region):
            raise _CrossFieldError(f"zones[{i}].name", f"zone {z.name!r} is not in region {t.region!r}")
        if not z.is_edge and z.service_link is not None:
            raise _CrossFieldError(
                f"zones[{i}].serviceLink", "only edge zones (local-zone, wavelength-zone) have a service link"
            )
        if z.is_edge and len(z.alb_subnets) > 1:
            # the zone's ALB is in the zone's own subnet: an edge zone's subnets are all in that one zone, and the
            # AWS Load Balancer Controller refuses two of one zone (pkg/networking/subnet_resolver.go
            # validateSubnetsAZExclusivity), so the Ingress never got an address and `up` waited out its bound
            raise _CrossFieldError(
                f"zones[{i}].albSubnets",
                f"an edge zone's ALB takes one subnet, the zone's own ({len(z.alb_subnets)} given): the AWS Load "
                "Balancer Controller refuses two subnets of one zone (multiple subnets in same Availability Zone)",
            )
    shorts: dict[str, int] = {}
    for i, z in enumerate(t.zones):
        short = t.short(z)
        if short in shorts:
            raise _CrossFieldError(f"zones[{i}].shortName", f"short name {short!r} clashes with zones[{shorts[short]}]")
        shorts[short] = i
    if not t.region_zones:
        raise _CrossFieldError("zones", "at least one availability-zone (the Region) is required")
    if not t.edge_zones:
        raise _CrossFieldError("zones", "at least one edge zone (local-zone or wavelength-zone) is required")
    names: dict[str, int] = {}
    for i, s in enumerate(t.services):
        if s.name == CHART_APP:
            raise _CrossFieldError(
                f"services[{i}].name",
                f"{CHART_APP!r} is the Consul chart's own pods' label (app={CHART_APP}), which consul-k8s' injector "
                "webhook skips: its pods would run without a sidecar; name the service otherwise",
            )
        if s.name in names:
            raise _CrossFieldError(
                f"services[{i}].name", f"duplicate service name {s.name!r} (also services[{names[s.name]}])"
            )
        names[s.name] = i
        if s.image is None and s.name not in KNOWN_IMAGES:
            raise _CrossFieldError(
                f"services[{i}].image", f"required for {s.name!r} (no HashiCups image is known by that name)"
            )
        if s.port is None and s.name not in KNOWN_PORTS:
            raise _CrossFieldError(f"services[{i}].port", f"required for {s.name!r}")
    _check_kubernetes_names(t)
    entry = names.get(ENTRY_SERVICE)
    if entry is None:
        raise _CrossFieldError(
            "services",
            f"{ENTRY_SERVICE!r} is required: users enter every zone through it (nginx, /api to its upstream)",
        )
    if t.services[entry].placement is not Placement.EDGE:
        raise _CrossFieldError(
            f"services[{entry}].placement", f"{ENTRY_SERVICE!r} must be edge: users enter every zone through its own"
        )
    if not any(s.placement is Placement.REGION for s in t.services):
        raise _CrossFieldError("services", "at least one Region-only service (placement: region) is required")
    for i, s in enumerate(t.services):
        for j, up in enumerate(s.upstreams):
            if up not in names:
                raise _CrossFieldError(f"services[{i}].upstreams[{j}]", f"unknown service {up!r}")
            if up == s.name:
                raise _CrossFieldError(f"services[{i}].upstreams[{j}]", "a service cannot be its own upstream")
        if s.placement is Placement.REGION:
            for j, up in enumerate(s.upstreams):
                if t.service(up).placement is Placement.EDGE:
                    raise _CrossFieldError(
                        f"services[{i}].upstreams[{j}]",
                        f"Region-only service {s.name!r} cannot call edge-placed {up!r} "
                        "(Region -> edge is never allowed)",
                    )
    _check_replicas(t)
    ports: dict[int, str] = {}
    for i, s in enumerate(t.services):
        if s.container_port in ports:
            raise _CrossFieldError(
                f"services[{i}].port", f"port {s.container_port} already used by {ports[s.container_port]!r}"
            )
        ports[s.container_port] = s.name
    _check_pod_ports(t)
    # cycles in the call graph would make the mesh loop forever
    graph = {s.name: list(s.upstreams) for s in t.services}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise _CrossFieldError("services", f"call graph has a cycle: {' -> '.join([*path, n, m])}")
            if m not in state:
                visit(m, [*path, n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def _check_pod_ports(t: Topology) -> None:
    """No two listeners of one meshed pod on one port: the app's own, what the renderer adds beside it
    (`POD_PORTS`), the sidecar's (`SIDECAR_PORTS`) and one Envoy listener per upstream on 127.0.0.1:<its port>.

    The field named is the port of the service whose number collides: the pod's own service, or the upstream.
    """
    index = {s.name: i for i, s in enumerate(t.services)}
    for s in t.services:
        taken = {**SIDECAR_PORTS, **POD_PORTS.get(s.name, {})}
        wanted = [(s, "its own port")] + [(t.service(u), f"{s.name}'s upstream listener for {u}") for u in s.upstreams]
        for svc, what in wanted:
            port = svc.container_port
            if port in taken:
                where = "every meshed pod" if port in SIDECAR_PORTS else f"the {s.name} pod"
                binder = "the injected consul-dataplane binds it there for " if port in SIDECAR_PORTS else ""
                raise _CrossFieldError(
                    f"services[{index[svc.name]}].port",
                    f"port {port} ({what}) is taken in {where}: {binder}{taken[port]}; choose another port",
                )


def _check_replicas(t: Topology) -> None:
    """A read replica streams from a Region-only TCP primary, through the mesh, from another AZ."""
    for i, s in enumerate(t.services):
        if s.replica_of is None:
            continue
        where = f"services[{i}].replicaOf"
        try:
            primary = t.service(s.replica_of)
        except KeyError:
            raise _CrossFieldError(where, f"unknown service {s.replica_of!r}") from None
        if primary.name == s.name:
            raise _CrossFieldError(where, "a service cannot be a replica of itself")
        if primary.replica_of is not None:
            raise _CrossFieldError(
                where, f"{primary.name!r} is itself a replica (cascading replicas are not supported)"
            )
        if s.placement is not Placement.REGION or primary.placement is not Placement.REGION:
            raise _CrossFieldError(where, "a replica and its primary must both be Region-only (placement: region)")
        if s.protocol != "tcp" or primary.protocol != "tcp":
            raise _CrossFieldError(where, "a database replica and its primary speak tcp (protocol: tcp)")
        if primary.name not in s.upstreams:
            raise _CrossFieldError(
                f"services[{i}].upstreams",
                f"must include {primary.name!r}: the replica's WAL stream is a call to its primary through the mesh",
            )
        if primary.replicas >= len(t.region_zones):
            raise _CrossFieldError(
                where,
                f"{primary.name!r} has {primary.replicas} replica(s) over {len(t.region_zones)} AZ(s): "
                "no AZ is left for its read replica (it must run in another AZ than the primary)",
            )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def parse_topology(data: Any, source: str = "<topology>") -> Topology:
    """Validate already-parsed YAML data; raise `InputError` on the first problem."""
    if data is None:
        raise InputError(source, "", "file is empty (expected a mapping with zones and services)")
    if not isinstance(data, dict):
        raise InputError(source, "", f"expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _CrossFieldError):
            raise InputError(source, ctx_err.field, str(ctx_err)) from None
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "enum":
            msg = f"{msg}, got {err.get('input')!r}"
        raise InputError(source, _loc(tuple(err["loc"])), msg) from None


def load_topology(path: str | Path | None = None) -> Topology:
    """Read and validate a topology file (the default one when `path` is None)."""
    p = Path(path) if path is not None else DEFAULT_TOPOLOGY
    source = str(path) if path is not None else _display(p)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(source, "", "no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise InputError(source, "", f"cannot read: {exc.__class__.__name__}") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(source, where, f"YAML syntax error: {problem}") from None
    return parse_topology(data, source)


def _display(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def dump_topology(t: Topology) -> str:
    """Normalised YAML (every default spelled out) that `load_topology` reads back."""
    data = t.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
