"""Zones, subnets and pod addresses of the local network (no kernel calls here).

Zone i gets the (i+1)-th /24 of the topology's address range, with its
gateway at .1; pod MACs derive from their IPs (a re-created namespace with a
random MAC stays unreachable for seconds because of stale neighbour entries).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.errors import BackendError
from harness.topology.model import ServiceLink

if TYPE_CHECKING:
    from harness.backends.local.state import State
    from harness.topology.model import Topology

RELAY_BASE_PORT = 15000  # relay listeners live in the hub namespace: no clash with anything on the host
CLUSTER_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")

LinkMode = Literal["auto", "relay", "netem"]


@dataclass(frozen=True)
class ZoneSpec:
    """What the network needs to know about a zone."""

    name: str
    short: str
    is_edge: bool
    link: ServiceLink


@dataclass(frozen=True)
class PodNet:
    """A pod's network identity. Start the pod's processes inside `ns`."""

    pod: str
    zone: str
    ns: str
    ip: str
    mac: str
    host_if: str  # veth peer in the hub namespace


def zone_specs(topology: Topology) -> list[ZoneSpec]:
    """The topology's zones in file order (which fixes their subnets)."""
    return [ZoneSpec(z.name, topology.short(z), z.is_edge, z.link) for z in topology.zones]


def _mac(prefix: int, ip: ipaddress.IPv4Address) -> str:
    """A locally administered unicast MAC derived from an IP: stable across re-creation."""
    b = ip.packed
    return f"{prefix:02x}:eb:{b[0]:02x}:{b[1]:02x}:{b[2]:02x}:{b[3]:02x}"


@dataclass
class ZoneNet:
    spec: ZoneSpec
    index: int
    bridge: str
    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    link: ServiceLink
    cursor: int = 2  # next host number to try (.1 is the gateway)

    @property
    def relay_port(self) -> int:
        return RELAY_BASE_PORT + self.index


class NetBase:
    """The state every part of the network reads: zones, pods, partitions, the relay process.

    `hub.Network` sets these in its constructor; the rule (`nft`), relay
    (`relay`) and netem (`netem`) parts are mixins over this base, so each
    concern reads the same fields without owning them.
    """

    cluster: str
    state: State
    hub: str
    table: str
    requested_mode: LinkMode
    link_mode: Literal["relay", "netem"]
    _zones: dict[str, ZoneNet]
    _pods: dict[str, PodNet]
    _partitioned: set[str]
    _lock: threading.RLock
    workdir: Path | None
    _relay: subprocess.Popen[bytes] | None
    _relay_gen: int
    created: bool
    users_net: ipaddress.IPv4Network  # users' access links (harness/backends/local/access.py): never partitioned

    def _zone(self, zone: str) -> ZoneNet:
        try:
            return self._zones[zone]
        except KeyError:
            raise BackendError(f"unknown zone {zone!r} (known: {', '.join(self._zones)})") from None

    def _edge(self, zone: str) -> ZoneNet:
        z = self._zone(zone)
        if not z.spec.is_edge:
            raise BackendError(f"zone {zone!r} is not an edge zone: it has no service link")
        return z

    @property
    def _region(self) -> list[ZoneNet]:
        return [z for z in self._zones.values() if not z.spec.is_edge]

    @property
    def _edges(self) -> list[ZoneNet]:
        return [z for z in self._zones.values() if z.spec.is_edge]
