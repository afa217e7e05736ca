"""Zones by role: experiments say "a Local Zone", the topology says which one.

An experiment that names `us-west-2-lax-1a` runs on one topology only. The
shipped experiments instead put *roles* in their chaostoolkit `configuration`
block and refer to them from the activities' arguments::

    "configuration": {"zone": "a Local Zone", "other_zone": "another Local Zone"},
    ...  "arguments": {"zone": "${zone}", "service": "product-api"}

A role is resolved against a topology, jointly over all the roles of one
experiment, in the order the configuration lists them:

- ``a <kind>`` / ``an <kind>``: the first zone of that kind (topology order)
  not already taken by an earlier role;
- ``another <kind>``, ``a second <kind>``, ``a third <kind>`` ...: the next
  zone of that kind not taken yet (so ``a Local Zone`` and ``another Local
  Zone`` are always two different zones);
- ``every <kind>``: all zones of that kind (a list; takes nothing);
- a zone name of the topology stands for itself (and is taken).

Kinds: ``Local Zone``, ``Wavelength Zone``, ``AZ`` / ``Availability Zone``,
``edge zone`` (Local or Wavelength).

An AZ can also be named by where a Region service runs (the renderer's
placement rule, `harness.render.naming.region_service_zones`): ``the AZ of
postgres`` / ``an AZ with postgres`` is the first AZ holding a postgres pod,
``an AZ without postgres`` the first AZ holding none (not taken yet): the
database primary's AZ and the one the Region carries on from. Case does not matter; the same phrase
under two keys is the same zone.

Resolution depends only on the topology and the experiment, so the harness
(`harness chaos` / `e2e`, before anything starts) and the actions themselves
(plain `chaos run`, from the running cluster's topology) reach the same zones.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.topology import Topology

KINDS: dict[str, frozenset[str]] = {
    "local zone": frozenset({"local-zone"}),
    "wavelength zone": frozenset({"wavelength-zone"}),
    "az": frozenset({"availability-zone"}),
    "availability zone": frozenset({"availability-zone"}),
    "edge zone": frozenset({"local-zone", "wavelength-zone"}),
}
_ORDINALS = ("second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
_ROLE = re.compile(
    r"^\s*(?P<det>an?|another|every|an?\s+(?:"
    + "|".join(_ORDINALS)
    + r"))\s+(?P<kind>"
    + "|".join(sorted((re.escape(k).replace(r"\ ", r"\s+") for k in KINDS), key=len, reverse=True))
    + r")s?\s*$",
    re.IGNORECASE,
)
ROLE_EXAMPLES = ("a Local Zone", "another Local Zone", "a third Local Zone", "every Local Zone", "an AZ",
                 "a Wavelength Zone", "an edge zone", "the AZ of postgres", "an AZ without postgres")  # fmt: skip


class RoleError(ValueError):
    """A role that does not parse, or that the topology cannot fill; the message is one line."""


@dataclass(frozen=True)
class Role:
    phrase: str
    every: bool
    kinds: frozenset[str]
    kind_name: str


def parse_role(value: object) -> Role | None:
    """The role a string names, or None when it is not a role phrase."""
    if not isinstance(value, str):
        return None
    m = _ROLE.match(value)
    if m is None:
        if _PLACED.match(value):
            return Role(value, False, KINDS["az"], "az")
        return None
    kind = " ".join(m.group("kind").lower().split())
    return Role(value, m.group("det").lower() == "every", KINDS[kind], kind)


def looks_like_role(value: object) -> bool:
    """A phrase that tries to be a role (starts like one) but may be misspelt: worth a clear error."""
    return isinstance(value, str) and bool(re.match(r"^\s*(an?|another|every|the)\s", value, re.IGNORECASE))


def _kind_label(kind_name: str) -> str:
    return {"az": "AZ", "availability zone": "Availability Zone", "edge zone": "edge zone"}.get(
        kind_name, kind_name.title()
    )


# "the AZ of postgres", "an AZ with postgres", "an AZ without postgres": an AZ by where a
# Region service's pods are, so an experiment about the database's primary follows it.
_PLACED = re.compile(
    r"^\s*(?P<det>the|an?|another)\s+(?P<kind>az|availability\s+zone)\s+(?P<rel>of|with|without)\s+"
    r"(?P<service>[a-z][a-z0-9-]*)\s*$",
    re.IGNORECASE,
)


def _placed_role(value: str, topology: Topology, taken: set[str]) -> str | None:
    """The zone a service-relative AZ role names; None when `value` is not one. RoleError when unfillable."""
    m = _PLACED.match(value)
    if m is None:
        return None
    from harness.render.naming import region_service_zones  # the renderer's placement rule, not a copy

    name = m.group("service").lower()
    try:
        svc = topology.service(name)
    except KeyError:
        raise RoleError(f"{value!r}: the topology has no service {name!r}") from None
    holding = [z.name for z in region_service_zones(svc, topology)]
    azs = [z.name for z in topology.region_zones]
    if m.group("rel").lower() == "without":
        free = [z for z in azs if z not in holding and z not in taken]
        if not free:
            raise RoleError(f"{value!r}: every AZ of the topology has {name} (or is taken by an earlier role)")
        return free[0]
    if not holding:
        raise RoleError(f"{value!r}: {name} has no pod in any AZ")
    return next((z for z in holding if z not in taken), holding[0])


def resolve_values(values: list[Any], topology: Topology) -> dict[str, str | list[str]]:
    """Resolve every role phrase (and zone name) among `values`, jointly, in order.

    Returns {phrase or zone name: zone name | [zone names]}; values that are
    neither a role nor a zone of the topology are left out (the caller decides
    whether that is an error). Raises RoleError when the topology has too few
    zones of a kind.
    """
    names = [z.name for z in topology.zones]
    taken: set[str] = {v for v in values if isinstance(v, str) and v in names}
    out: dict[str, str | list[str]] = {v: v for v in values if isinstance(v, str) and v in names}
    for v in values:
        placed = _placed_role(v, topology, taken) if isinstance(v, str) and v not in out else None
        if placed is not None:
            out[v] = placed
            taken.add(placed)
            continue
        role = parse_role(v)
        if role is None or role.phrase in out:
            continue
        zones = [z.name for z in topology.zones if z.type.value in role.kinds]
        if role.every:
            if not zones:
                raise RoleError(f"{role.phrase!r}: the topology has no {_kind_label(role.kind_name)}")
            out[role.phrase] = zones
            continue
        free = [z for z in zones if z not in taken]
        if not free:
            raise RoleError(
                f"{role.phrase!r}: the topology has {len(zones)} {_kind_label(role.kind_name)}"
                f"{'' if len(zones) == 1 else 's'} and the experiment needs one more"
            )
        out[role.phrase] = free[0]
        taken.add(free[0])
    return out


def config_roles(configuration: Mapping[str, Any] | None) -> list[Any]:
    """The configuration's values in order (the candidates for joint resolution)."""
    return list((configuration or {}).values())


def resolve_zone(value: object, topology: Topology, configuration: Mapping[str, Any] | None = None) -> str | list[str]:
    """The zone(s) `value` (a zone name or a role phrase) stands for, given the experiment's configuration.

    Used by the actions under plain `chaos run`, where chaostoolkit passes the
    configuration with the roles still in it.
    """
    values = config_roles(configuration)
    if value not in values:
        values.append(value)
    resolved = resolve_values(values, topology)
    if isinstance(value, str) and value in resolved:
        return resolved[value]
    if looks_like_role(value):
        raise RoleError(f"unknown role {value!r} (roles read like: {', '.join(ROLE_EXAMPLES)})")
    raise RoleError(f"zone {value!r} is not in the topology ({', '.join(z.name for z in topology.zones)})")
