"""The `consul.hashicorp.com/connect-service-upstreams` annotation, parsed once.

The renderer writes it (`render.naming.upstream_annotation`), the renderer's
checks re-derive the call graph from it, and the local backend's sidecars
build their outbound listeners from it: one parser, so the three read the
same thing. Accepted: comma-separated `<service>:<port>` or
`<service>.<namespace>:<port>` (a namespace is Consul Enterprise only: the
caller decides whether that is allowed). Every other consul-k8s form
(partitions, peers, datacenters, the labelled syntax) is refused, because an
emulation would have to guess what it means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import InputError

FORMAT = "<name>[.<namespace>]:<port>"
_UPSTREAM = re.compile(
    r"^(?P<svc>[a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.(?P<ns>[a-z0-9]([a-z0-9-]*[a-z0-9])?))?:(?P<port>\d+)$"
)


@dataclass(frozen=True)
class Upstream:
    """One entry of the annotation.

    `namespace` None means the caller's own Consul namespace; `datacenter` None
    the local one (the accepted formats never name another).
    """

    name: str
    namespace: str | None
    local_port: int
    datacenter: str | None = None


def parse(value: str) -> tuple[list[Upstream], list[str]]:
    """The upstreams the annotation names, and one problem line per entry it cannot take."""
    out: list[Upstream] = []
    problems: list[str] = []
    ports: set[int] = set()
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        m = _UPSTREAM.match(item)
        if m is None:
            problems.append(f"upstream {item!r} is not {FORMAT}")
            continue
        port = int(m.group("port"))
        if not 0 < port < 65536:
            problems.append(f"upstream {item!r}: port out of range")
            continue
        if port in ports:
            problems.append(f"upstream {item!r}: local port {port} used twice")
            continue
        ports.add(port)
        out.append(Upstream(m.group("svc"), m.group("ns"), port))
    return out, problems


def parse_strict(value: str, source: str) -> list[Upstream]:
    """`parse`, where the first problem is an `InputError` (`source`: FILE: FIELD of the annotation)."""
    ups, problems = parse(value)
    if problems:
        raise InputError(source, "", problems[0])
    return ups
