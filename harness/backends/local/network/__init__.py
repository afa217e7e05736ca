"""The local backend's network: a hub router with one bridge per zone.

Layout (all inside namespaces created here; the host's own interfaces, routes
and nftables ruleset are never touched):

* one hub namespace ``<cluster>-hub``; inside it one Linux bridge per zone
  (``br<i>``) holding the zone gateway ``.1`` of the zone's /24, taken in order
  from the topology's address range (zone i -> the (i+1)-th /24), and
  ip_forward on. Same-zone traffic is bridged; cross-zone traffic is routed by
  the hub, which is where AWS's rules are enforced.
* one namespace per pod ``<cluster>-p<N>`` with ``eth0`` (veth; the peer
  ``vp<N>`` sits in the hub on the zone's bridge), a MAC derived from its IP
  (a re-created namespace with a random MAC stays unreachable for seconds
  because of stale neighbour entries) and a default route via the gateway.
* an nftables table ``inet <cluster>`` in the hub only:
  - forward: every LZ <-> other LZ pair is dropped (with a counter), because
    Local Zones are hub-and-spoke: such traffic just fails on AWS;
  - partition / heal and service-link loss are rules in prerouting (before
    NAT, so they see the real destination) and postrouting (after NAT undo,
    so relayed replies carry the real source); traffic the hub itself
    originates (health checks, user entry) is never affected;
  - in relay mode, nat prerouting redirects edge <-> Region TCP to the
    `linkrelay` process (`relay`), which adds the service-link latency (this kernel has
    no netem). Where netem works, a netem qdisc on the edge bridge does it (`netem`).

Pods are kept apart from everything else by their namespace: a caller (the
local backend) starts pod processes with `netns.exec_argv(pod.ns, argv)`.

Modules: `addresses` (zones, subnets, pod addresses), `hub` (`Network`:
lifecycle, pods, chaos), `nft` (the rules), `relay` and `netem` (link
latency), `netns` (entering namespaces).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.backends.local.network.addresses import LinkMode, PodNet, ZoneSpec, zone_specs
    from harness.backends.local.network.hub import Network

# Loaded on first use: `state` imports `network.netns`, and `hub` imports `state`, so importing the
# package must not import `hub` (or `addresses`) eagerly.
_LAZY = {
    "LinkMode": "addresses", "PodNet": "addresses", "ZoneSpec": "addresses", "zone_specs": "addresses",
    "Network": "hub",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LinkMode", "Network", "PodNet", "ZoneSpec", "zone_specs"]
