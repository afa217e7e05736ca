"""Users in their own city: one user namespace per zone, behind that zone's own access link.

A Local Zone exists because its city's users reach it in a few milliseconds
where the Region is tens away (`zones[].userLatencyMs`). For the report's
fallback penalty to mean anything, that distance must be on the wire of every
user request, not added by arithmetic afterwards. So the local backend gives
each zone a user namespace ``<cluster>-u<i>``: a veth pair (the *access link*,
``ua<i>`` on the hub side, ``eth0`` inside) with a /30 from the first /24 of
the topology's address range (zone subnets start at the second /24, see
network/addresses.py), and a default route via the hub. The zone's entry relay (entry.py)
opens its upstream sockets *inside* that namespace, so every user connection
into zone Z crosses Z's access link: locust (and the zone probes) → the entry
relay on the host's loopback → Z's user namespace → access link → hub → Z's
frontend pod.

The latency on the access link, like the service link's (network/relay.py, network/netem.py):
- where the kernel has ``sch_netem``: a netem qdisc on the hub end of the
  access link delays hub → users packets by the whole round trip;
- here (no netem): the hub's nat prerouting redirects TCP arriving from the
  access link to a second `linkrelay` process (its own config file, one
  listener per zone with a latency) that holds data latency/2 each way. Its
  differences are the service link relay's (docs/local-emulation.md): the
  user's TCP handshake completes at the hub, so a frontend that is in the
  entry's list but unreachable resets the request (after
  `USER_CONNECT_TIMEOUT_S`) rather than the entry trying the next one; the
  entry's list follows readiness within milliseconds, so this only matters
  at the instant of a node kill.
A zone with ``userLatencyMs: 0`` still enters through its user namespace, with
no redirect (its traffic is forwarded, not relayed). Users are never
partitioned (network/nft.py exempts the access network, as it exempts the hub's own
traffic): users of a zone enter it directly, not through the Region.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.backends.local import linkrelay
from harness.backends.local.network import netns as nsutil
from harness.backends.local.state import State, process_alive, record_process, terminate
from harness.errors import BackendError

if TYPE_CHECKING:
    from harness.backends.local.network import Network

USER_RELAY_BASE_PORT = 15200  # in the hub namespace, next to the service-link relay's 15000+i
USER_CONNECT_TIMEOUT_S = 1.0  # as the entry relay's own connect timeout: a live frontend answers in << 1 ms
MAX_ZONES = 64  # /30s in one /24


@dataclass(frozen=True)
class AccessLink:
    """One zone's user namespace and access link (addresses, names, latency)."""

    zone: str
    index: int
    ns: str
    hub_if: str
    hub_ip: str
    user_ip: str
    latency_ms: float

    @property
    def relay_port(self) -> int:
        return USER_RELAY_BASE_PORT + self.index


def access_network(address_range: str) -> ipaddress.IPv4Network:
    """The first /24 of the range: never a zone's (zone i has the (i+1)-th), so it holds the access links."""
    net = ipaddress.ip_network(address_range, strict=True)
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 23:
        raise BackendError(f"address range {address_range}: need an IPv4 range larger than one /24")
    return next(net.subnets(new_prefix=24))


def plan_links(cluster: str, address_range: str, zones: list[tuple[str, float]]) -> list[AccessLink]:
    """Names and addresses of every zone's access link, in topology order (pure: no kernel calls)."""
    if len(zones) > MAX_ZONES:
        raise BackendError(f"{len(zones)} zones: at most {MAX_ZONES} user access links fit in one /24")
    base = access_network(address_range).network_address
    out = []
    for i, (zone, latency_ms) in enumerate(zones):
        if latency_ms < 0:
            raise BackendError(f"zone {zone}: user latency {latency_ms} ms is negative")
        out.append(
            AccessLink(
                zone=zone,
                index=i,
                ns=f"{cluster}-u{i}",
                hub_if=f"ua{i}",
                hub_ip=str(base + 4 * i + 1),
                user_ip=str(base + 4 * i + 2),
                latency_ms=float(latency_ms),
            )
        )
    return out


def link_commands(hub: str, link: AccessLink) -> list[list[str]]:
    """The `ip` commands that build one access link (pure)."""
    return [
        ["ip", "netns", "add", link.ns],
        ["ip", "-n", hub, "link", "add", link.hub_if, "type", "veth", "peer", "name", "eth0", "netns", link.ns],
        ["ip", "-n", hub, "addr", "add", f"{link.hub_ip}/30", "dev", link.hub_if],
        ["ip", "-n", hub, "link", "set", link.hub_if, "up"],
        ["ip", "-n", link.ns, "link", "set", "lo", "up"],
        ["ip", "-n", link.ns, "addr", "add", f"{link.user_ip}/30", "dev", "eth0"],
        ["ip", "-n", link.ns, "link", "set", "eth0", "up"],
        ["ip", "-n", link.ns, "route", "add", "default", "via", link.hub_ip],
    ]


def netem_command(hub: str, link: AccessLink) -> list[str]:
    """Netem mode: hub -> users packets wait the whole round trip on the hub end of the access link."""
    return [
        "tc",
        "qdisc",
        "replace",
        "dev",
        link.hub_if,
        "root",
        "netem",
        "limit",
        "100000",
        "delay",
        f"{link.latency_ms:g}ms",
    ]


def relay_rules(table: str, links: list[AccessLink]) -> str:
    """Relay mode: nft commands redirecting TCP from each delayed access link to its relay listener."""
    return "".join(
        f'add rule inet {table} nat_pre iifname "{k.hub_if}" meta l4proto tcp redirect to :{k.relay_port}\n'
        for k in links
        if k.latency_ms > 0
    )


class UserAccess:
    """Every zone's user namespace and access link of one local cluster.

    Built after `Network.create()` (it lives in the network's hub and nft
    table) and removed before `Network.destroy()`; every namespace and the
    relay process are recorded in `state` first, so a crash leaves nothing
    that `state.cleanup` does not remove.
    """

    def __init__(self, network: Network, address_range: str, zones: list[tuple[str, float]], state: State) -> None:
        self.network = network
        self.state = state
        self.links = {k.zone: k for k in plan_links(network.cluster, address_range, zones)}
        self._relay: subprocess.Popen[bytes] | None = None
        self.created = False

    def ns(self, zone: str) -> str:
        """The namespace users of `zone` connect from."""
        try:
            return self.links[zone].ns
        except KeyError:
            raise BackendError(f"no user access link for zone {zone!r}") from None

    @property
    def delayed(self) -> list[AccessLink]:
        return [k for k in self.links.values() if k.latency_ms > 0]

    def create(self) -> None:
        if not self.network.created:
            raise BackendError("user access links need the network first")
        hub = self.network.hub_ns
        try:
            for link in self.links.values():
                self.state.add_netns(link.ns)
                for argv in link_commands(hub, link):
                    nsutil.run(argv)
            if self.network.link_mode == "netem":
                for link in self.delayed:
                    nsutil.run(nsutil.exec_argv(hub, netem_command(hub, link)))
            elif self.delayed:
                self._start_relay()
                nsutil.run(
                    nsutil.exec_argv(hub, ["nft", "-f", "-"]), input=relay_rules(self.network.table, self.delayed)
                )
        except BaseException:
            self.destroy()
            raise
        self.created = True

    def _files(self) -> tuple[Path, Path, Path]:
        assert self.network.workdir is not None
        w = self.network.workdir
        return w / "userrelay.json", w / "userrelay.ready", w / "userrelay.log"

    def _start_relay(self) -> None:
        cfg, ready, logf = self._files()
        ready.unlink(missing_ok=True)
        zones = {
            f"users:{k.zone}": linkrelay.ZoneLink(port=k.relay_port, latency_ms=k.latency_ms) for k in self.delayed
        }
        linkrelay.write_config(cfg, zones, ready_file=ready, generation=1)
        argv = [
            sys.executable,
            linkrelay.__file__,
            "--config",
            str(cfg),
            "--connect-timeout",
            f"{USER_CONNECT_TIMEOUT_S:g}",
        ]
        with logf.open("ab") as log:
            self._relay = subprocess.Popen(
                nsutil.exec_argv(self.network.hub_ns, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.state.add_process(self._relay.pid, "userrelay")
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if self._relay.poll() is not None:
                tail = logf.read_text(errors="replace")[-2000:] if logf.exists() else ""
                raise BackendError(f"user access relay exited with {self._relay.returncode}: {tail.strip()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(ready.read_text().split()[0]) >= 1:
                    return
            time.sleep(0.01)
        raise BackendError(f"user access relay did not start within 15 s (see {logf})")

    def relay_alive(self) -> bool:
        """True when no relay is needed or it runs (users of delayed zones need it)."""
        return self._relay is None or self._relay.poll() is None

    def destroy(self) -> None:
        """Stop the relay, remove the namespaces (the hub ends go with them). Idempotent."""
        if self._relay is not None:
            rec = record_process(self._relay.pid, "userrelay")
            if process_alive(rec):
                terminate([rec], grace_s=2.0)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._relay.wait(timeout=5)
            self.state.discard_process(self._relay.pid)
            self._relay = None
        for link in self.links.values():
            if nsutil.ns_exists(link.ns):
                nsutil.run(["ip", "netns", "del", link.ns], check=False)
            if not nsutil.ns_exists(link.ns):
                self.state.discard_netns(link.ns)
        self.created = False


__all__ = ["AccessLink", "UserAccess", "access_network", "link_commands", "netem_command", "plan_links", "relay_rules"]
