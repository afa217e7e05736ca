"""The topology file: Region, zones, services, service link, edition and SLOs.

This package imports nothing else of the harness: every other stage reads a
`Topology` (or the normalised copy the renderer writes next to the manifests).
"""

from harness.topology.model import (
    DEFAULT_TOPOLOGY,
    ENTRY_API_UPSTREAM,
    ENTRY_SERVICE,
    Edition,
    LocalSettings,
    Placement,
    Service,
    ServiceLink,
    Slo,
    Topology,
    Zone,
    ZoneType,
    dump_topology,
    load_topology,
    parse_topology,
)

__all__ = [
    "DEFAULT_TOPOLOGY",
    "ENTRY_API_UPSTREAM",
    "ENTRY_SERVICE",
    "Edition",
    "LocalSettings",
    "Placement",
    "Service",
    "ServiceLink",
    "Slo",
    "Topology",
    "Zone",
    "ZoneType",
    "dump_topology",
    "load_topology",
    "parse_topology",
]
