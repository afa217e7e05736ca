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
    `linkrelay` process, which adds the service-link latency (this kernel has
    no netem). Where netem works, a netem qdisc on the edge bridge does it.

Pods are kept apart from everything else by their namespace: a caller (the
local backend) starts pod processes with `netns.exec_argv(pod.ns, argv)`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from harness.backends.local import linkrelay
from harness.backends.local import netns as nsutil
from harness.backends.local.state import State, process_alive, record_process, terminate
from harness.errors import BackendError
from harness.topology.model import ServiceLink

if TYPE_CHECKING:
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
class _Zone:
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


class Network:
    """The hub, the zone bridges, pod namespaces and the rules between them.

    Every kernel object and process is recorded in `state` before (or right
    after) it is created, so `state.cleanup(path)` removes it all even if this
    process dies. Methods are thread-safe.
    """

    def __init__(
        self,
        cluster: str,
        address_range: str,
        zones: list[ZoneSpec],
        state: State,
        workdir: str | Path | None = None,
        link_mode: LinkMode = "auto",
    ) -> None:
        if not CLUSTER_RE.match(cluster):
            # namespace names, interface names (15 chars) and the nft table name derive from it
            raise BackendError(f"cluster name {cluster!r}: must match {CLUSTER_RE.pattern} (names derive from it)")
        if not zones:
            raise BackendError("network needs at least one zone")
        names = [z.name for z in zones]
        if len(set(names)) != len(names):
            raise BackendError(f"duplicate zone names: {names}")
        net = ipaddress.ip_network(address_range, strict=True)
        if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 23:
            raise BackendError(f"address range {address_range}: need an IPv4 range larger than one /24")
        subnets = list(net.subnets(new_prefix=24))
        if len(zones) + 1 > len(subnets):
            raise BackendError(
                f"address range {address_range} holds {len(subnets) - 1} zone subnets, need {len(zones)}"
            )
        self.cluster = cluster
        self.state = state
        self.users_net = subnets[0]  # users' access links (access.py): never partitioned
        self.hub = f"{cluster}-hub"
        self.table = cluster
        self.requested_mode: LinkMode = link_mode
        self.link_mode: Literal["relay", "netem"] = "relay"
        self._zones: dict[str, _Zone] = {}
        for i, spec in enumerate(zones):
            sub = subnets[i + 1]
            self._zones[spec.name] = _Zone(spec, i, f"br{i}", sub, sub.network_address + 1, spec.link)
        self._pods: dict[str, PodNet] = {}
        self._partitioned: set[str] = set()
        self._next_pod = 1
        self._lock = threading.RLock()
        self._workdir_given = workdir is not None
        self.workdir: Path | None = Path(workdir) if workdir is not None else None
        self._relay: subprocess.Popen[bytes] | None = None
        self._relay_gen = 0
        self.created = False

    # -- queries --------------------------------------------------------------
    @property
    def hub_ns(self) -> str:
        """The hub namespace: where health checks and user entry connect from."""
        return self.hub

    @property
    def zones(self) -> list[str]:
        return list(self._zones)

    def subnet(self, zone: str) -> str:
        return str(self._zone(zone).subnet)

    def gateway(self, zone: str) -> str:
        return str(self._zone(zone).gateway)

    def link(self, zone: str) -> ServiceLink:
        """The zone's current service-link settings (after any `set_link`)."""
        return self._zone(zone).link

    def pod(self, pod: str) -> PodNet:
        with self._lock:
            try:
                return self._pods[pod]
            except KeyError:
                raise BackendError(f"no such pod in the network: {pod}") from None

    def pods(self) -> dict[str, PodNet]:
        with self._lock:
            return dict(self._pods)

    @property
    def partitioned(self) -> set[str]:
        with self._lock:
            return set(self._partitioned)

    def zone_of_ip(self, ip: str) -> str | None:
        addr = ipaddress.ip_address(ip)
        for z in self._zones.values():
            if addr in z.subnet:
                return z.spec.name
        return None

    def _zone(self, zone: str) -> _Zone:
        try:
            return self._zones[zone]
        except KeyError:
            raise BackendError(f"unknown zone {zone!r} (known: {', '.join(self._zones)})") from None

    def _edge(self, zone: str) -> _Zone:
        z = self._zone(zone)
        if not z.spec.is_edge:
            raise BackendError(f"zone {zone!r} is not an edge zone: it has no service link")
        return z

    @property
    def _region(self) -> list[_Zone]:
        return [z for z in self._zones.values() if not z.spec.is_edge]

    @property
    def _edges(self) -> list[_Zone]:
        return [z for z in self._zones.values() if z.spec.is_edge]

    # -- lifecycle ------------------------------------------------------------
    def create(self) -> None:
        """Build the hub, bridges, rules and (relay mode) the link relay.

        On any failure whatever was built is removed again before raising.
        """
        missing = nsutil.tools_missing()
        if missing:
            raise BackendError(f"local network needs {' and '.join(missing)} (apt-get install nftables iproute2)")
        if os.geteuid() != 0:
            raise BackendError("local network needs root (network namespaces, nftables)")
        with self._lock:
            if nsutil.ns_exists(self.hub):
                raise BackendError(
                    f"network namespace {self.hub} already exists: cluster {self.cluster!r} is up or was left over "
                    "(run the local backend's cleanup first)"
                )
            try:
                self._create()
            except BaseException:
                self.destroy()
                raise
            self.created = True

    def _create(self) -> None:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"eh-{self.cluster}-net-"))
            self.state.add_dir(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        hub = self.hub
        self.state.add_netns(hub)
        nsutil.run(["ip", "netns", "add", hub])
        nsutil.run(["ip", "-n", hub, "link", "set", "lo", "up"])
        nsutil.run(nsutil.exec_argv(hub, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        # bridged (same-zone) frames need not pass the hub's IP rules: cheaper, and
        # it keeps the rules about routed (cross-zone) traffic only. Absent without br_netfilter.
        nsutil.run(nsutil.exec_argv(hub, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]), check=False)
        for z in self._zones.values():
            nsutil.run(["ip", "-n", hub, "link", "add", z.bridge, "address", _mac(0x02, z.gateway), "type", "bridge"])
            nsutil.run(["ip", "-n", hub, "addr", "add", f"{z.gateway}/24", "dev", z.bridge])
            nsutil.run(["ip", "-n", hub, "link", "set", z.bridge, "up"])
        if self.requested_mode == "auto":
            self.link_mode = "netem" if self._netem_works() else "relay"
        else:
            self.link_mode = self.requested_mode
        self.state.add_nft_table(hub, "inet", self.table)
        nsutil.run(nsutil.exec_argv(hub, ["nft", "-f", "-"]), input=self._base_ruleset())
        self._apply_dynamic()
        if self.link_mode == "relay":
            self._start_relay()
        else:
            for z in self._edges:
                self._netem_setup(z)

    def destroy(self) -> None:
        """Remove pods, relay, rules and hub. Idempotent.

        Processes still inside a pod namespace are killed (they would keep the
        namespace alive); the caller normally stops them first.
        """
        with self._lock:
            for name in list(self._pods):
                self.remove_pod(name)
            self._stop_relay()
            if nsutil.ns_exists(self.hub):
                nsutil.run(nsutil.exec_argv(self.hub, ["nft", "delete", "table", "inet", self.table]), check=False)
                _kill_ns_processes(self.hub)
                nsutil.run(["ip", "netns", "del", self.hub], check=False)
            self.state.discard_nft_table(self.hub, "inet", self.table)
            if not nsutil.ns_exists(self.hub):
                self.state.discard_netns(self.hub)
            if self.workdir is not None and not self._workdir_given:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.state.discard_dir(self.workdir)
            self._partitioned.clear()
            self.created = False

    # -- pods -----------------------------------------------------------------
    def add_pod(self, pod: str, zone: str) -> PodNet:
        """A new namespace wired into `zone`, with a fresh IP (never a live pod's)."""
        with self._lock:
            if pod in self._pods:
                raise BackendError(f"pod {pod} already has a network")
            z = self._zone(zone)
            ip = self._alloc_ip(z)
            while nsutil.ns_exists(f"{self.cluster}-p{self._next_pod}"):
                self._next_pod += 1
            n = self._next_pod
            self._next_pod += 1
            ns, host_if = f"{self.cluster}-p{n}", f"vp{n}"
            pn = PodNet(pod=pod, zone=zone, ns=ns, ip=str(ip), mac=_mac(0x02, ip), host_if=host_if)
            self._pods[pod] = pn  # reserves the IP
        try:
            self.state.add_netns(ns)
            nsutil.run(["ip", "netns", "add", ns])
            nsutil.run(
                [
                    "ip",
                    "-n",
                    self.hub,
                    "link",
                    "add",
                    host_if,
                    "address",
                    _mac(0x06, ip),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "address",
                    pn.mac,
                    "netns",
                    ns,
                ]
            )
            nsutil.run(["ip", "-n", self.hub, "link", "set", host_if, "master", z.bridge, "up"])
            nsutil.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            nsutil.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            nsutil.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            nsutil.run(["ip", "-n", ns, "route", "add", "default", "via", str(z.gateway)])
        except BaseException:
            self.remove_pod(pod)
            raise
        return pn

    def _alloc_ip(self, z: _Zone) -> ipaddress.IPv4Address:
        """Next free host address after the last one handed out (like Kubernetes, a
        re-created pod gets a new IP, so records of the old one stay unambiguous)."""
        used = {p.ip for p in self._pods.values()}
        hosts = z.subnet.num_addresses - 2  # .1 .. .254; .1 is the gateway
        for _ in range(hosts):
            n = z.cursor
            z.cursor = n + 1 if n + 1 <= hosts else 2
            ip = z.subnet.network_address + n
            if str(ip) not in used:
                return ip
        raise BackendError(f"zone {z.spec.name}: no free address left in {z.subnet}")

    def remove_pod(self, pod: str) -> None:
        """Delete the pod's namespace and veth. Idempotent; frees its IP."""
        with self._lock:
            pn = self._pods.get(pod)
            if pn is None:
                return
            _kill_ns_processes(pn.ns)
            if nsutil.ns_exists(self.hub):
                nsutil.run(["ip", "-n", self.hub, "link", "del", pn.host_if], check=False)
            if nsutil.ns_exists(pn.ns):
                nsutil.run(["ip", "netns", "del", pn.ns], check=False)
            if not nsutil.ns_exists(pn.ns):
                self.state.discard_netns(pn.ns)
            del self._pods[pod]

    def set_pod_link(self, pod: str, up: bool) -> None:
        """Plug / unplug a pod (node kill): with the hub end down the pod is unreachable."""
        pn = self.pod(pod)
        nsutil.run(["ip", "-n", self.hub, "link", "set", pn.host_if, "up" if up else "down"])

    # -- chaos ----------------------------------------------------------------
    def partition(self, zone: str) -> None:
        """Drop all traffic between `zone` and every other zone (it still talks to itself,
        and the hub still reaches it: health checks and user entry keep working)."""
        with self._lock:
            self._zone(zone)
            self._partitioned.add(zone)
            self._apply_dynamic()

    def heal(self, zone: str) -> None:
        with self._lock:
            self._zone(zone)
            self._partitioned.discard(zone)
            self._apply_dynamic()

    def set_link(self, zone: str, latency_ms: float, jitter_ms: float = 0.0, loss_percent: float = 0.0) -> None:
        """Change an edge zone's service link; applies to new and existing connections."""
        if latency_ms < 0 or jitter_ms < 0 or not 0 <= loss_percent <= 100:
            raise BackendError(
                f"bad link settings: latency {latency_ms} ms, jitter {jitter_ms} ms, loss {loss_percent} %"
            )
        with self._lock:
            z = self._edge(zone)
            old = z.link
            z.link = ServiceLink(latency_ms=latency_ms, jitter_ms=jitter_ms, loss_percent=loss_percent)
            if not self.created:
                return
            try:
                self._apply_dynamic()
                if self.link_mode == "relay":
                    self._push_relay_config()
                else:
                    self._netem_apply(z)
            except BaseException:
                z.link = old  # what `link()` reports must match what is applied
                raise

    def clear_link(self, zone: str) -> None:
        """Back to the topology's service-link settings."""
        z = self._edge(zone)
        base = z.spec.link
        self.set_link(zone, base.latency_ms, base.jitter_ms, base.loss_percent)

    def counters(self) -> dict[str, int]:
        """Packets dropped by the hub's rules, by kind: `lz-lz`, `partition`, `loss`.

        `partition` and `loss` restart from 0 whenever partitions or links change.
        """
        out = nsutil.run(nsutil.exec_argv(self.hub, ["nft", "-j", "list", "table", "inet", self.table]))
        totals = {"lz-lz": 0, "partition": 0, "loss": 0}
        for item in json.loads(out).get("nftables", []):
            rule = item.get("rule")
            if not rule or rule.get("comment") not in totals:
                continue
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    totals[rule["comment"]] += int(expr["counter"]["packets"])
        return totals

    # -- nftables -------------------------------------------------------------
    def _base_ruleset(self) -> str:
        t = self.table
        lines = [f"table inet {t} {{"]
        for c in ("partition_in", "partition_out", "loss_in", "loss_out"):
            lines.append(f"  chain {c} {{\n  }}")
        lines.append(
            "  chain guard_pre {\n    type filter hook prerouting priority -150; policy accept;\n"
            "    jump partition_in\n    jump loss_in\n  }"
        )
        lines.append(
            "  chain guard_post {\n    type filter hook postrouting priority 150; policy accept;\n"
            "    jump partition_out\n    jump loss_out\n  }"
        )
        fwd = ["  chain forward {", "    type filter hook forward priority 0; policy accept;"]
        for a in self._edges:
            for b in self._edges:
                if a is not b:
                    fwd.append(f'    iifname "{a.bridge}" oifname "{b.bridge}" counter drop comment "lz-lz"')
        fwd.append("  }")
        lines.append("\n".join(fwd))
        nat = ["  chain nat_pre {", "    type nat hook prerouting priority dstnat; policy accept;"]
        if self.link_mode == "relay" and self._region:
            region_nets = _set(str(r.subnet) for r in self._region)
            region_brs = _set(f'"{r.bridge}"' for r in self._region)
            for z in self._edges:
                to = f"meta l4proto tcp redirect to :{z.relay_port}"
                nat.append(f'    iifname "{z.bridge}" ip daddr {region_nets} {to}')
                nat.append(f"    iifname {region_brs} ip daddr {z.subnet} {to}")
        nat.append("  }")
        lines.append("\n".join(nat))
        # registers the NAT undo on the way out, so postrouting rules see real addresses
        lines.append("  chain nat_post {\n    type nat hook postrouting priority srcnat; policy accept;\n  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _apply_dynamic(self) -> None:
        """Rewrite the partition and loss chains in one nft transaction."""
        t = self.table
        cmds = [f"flush chain inet {t} {c}" for c in ("partition_in", "partition_out", "loss_in", "loss_out")]
        for name in sorted(self._partitioned):
            z = self._zones[name]
            others = [o for o in self._zones.values() if o is not z]
            drop = 'counter drop comment "partition"'
            own = f"{{ {z.subnet}, {self.users_net} }}"  # the zone itself and its users
            cmds.append(f'add rule inet {t} partition_in iifname "{z.bridge}" ip daddr != {own} {drop}')
            cmds.append(f'add rule inet {t} partition_out oifname "{z.bridge}" ip saddr != {own} {drop}')
            if others:
                brs = _set(f'"{o.bridge}"' for o in others)
                cmds.append(f"add rule inet {t} partition_in iifname {brs} ip daddr {z.subnet} {drop}")
                cmds.append(f"add rule inet {t} partition_out oifname {brs} ip saddr {z.subnet} {drop}")
        region = self._region
        if region:
            nets = _set(str(r.subnet) for r in region)
            brs = _set(f'"{r.bridge}"' for r in region)
            for z in self._edges:
                n = round(z.link.loss_percent * 100)
                if n <= 0:
                    continue
                rnd = "" if n >= 10000 else f"numgen random mod 10000 < {n} "
                drop = f'{rnd}counter drop comment "loss"'
                # each direction of the link loses packets once: on entering the hub before NAT,
                # and (relay mode only: `ct status dnat`) the relayed replies on leaving it
                cmds.append(f'add rule inet {t} loss_in iifname "{z.bridge}" ip daddr {nets} {drop}')
                cmds.append(f"add rule inet {t} loss_in iifname {brs} ip daddr {z.subnet} {drop}")
                cmds.append(f'add rule inet {t} loss_out oifname "{z.bridge}" ip saddr {nets} ct status dnat {drop}')
                cmds.append(f"add rule inet {t} loss_out oifname {brs} ip saddr {z.subnet} ct status dnat {drop}")
        nsutil.run(nsutil.exec_argv(self.hub, ["nft", "-f", "-"]), input="\n".join(cmds) + "\n")

    # -- link relay -----------------------------------------------------------
    def _relay_files(self) -> tuple[Path, Path, Path]:
        assert self.workdir is not None
        return self.workdir / "linkrelay.json", self.workdir / "linkrelay.ready", self.workdir / "linkrelay.log"

    def _write_relay_config(self) -> None:
        cfg, ready, _ = self._relay_files()
        self._relay_gen += 1
        zones = {
            z.spec.name: linkrelay.ZoneLink(port=z.relay_port, latency_ms=z.link.latency_ms, jitter_ms=z.link.jitter_ms)
            for z in self._edges
        }
        linkrelay.write_config(cfg, zones, ready_file=ready, generation=self._relay_gen)

    def _start_relay(self) -> None:
        cfg, ready, logf = self._relay_files()
        ready.unlink(missing_ok=True)
        self._write_relay_config()
        # run the file as a script: `-m` would import the harness package (and all it pulls in) first
        argv = [sys.executable, linkrelay.__file__, "--config", str(cfg)]
        with logf.open("ab") as log:
            self._relay = subprocess.Popen(
                nsutil.exec_argv(self.hub, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                start_new_session=True,
            )
        self.state.add_process(self._relay.pid, "linkrelay")
        self._wait_relay(self._relay_gen, timeout=15.0)

    def _wait_relay(self, generation: int, timeout: float = 5.0) -> None:
        """Until the relay reports it applied config `generation` (so set_link is synchronous)."""
        _, ready, logf = self._relay_files()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._relay is not None and self._relay.poll() is not None:
                tail = logf.read_text(errors="replace")[-2000:] if logf.exists() else ""
                raise BackendError(f"link relay exited with {self._relay.returncode}: {tail.strip()}")
            try:
                if int(ready.read_text().split()[0]) >= generation:
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.01)
        raise BackendError(f"link relay did not apply its configuration within {timeout:.0f}s (see {logf})")

    def _push_relay_config(self) -> None:
        if self.ensure_relay():
            return  # a restarted relay read the current config at start
        self._write_relay_config()
        assert self._relay is not None
        self._relay.send_signal(signal.SIGHUP)
        self._wait_relay(self._relay_gen)

    def ensure_relay(self) -> bool:
        """Restart the link relay if it died (every edge <-> Region TCP connection needs it).

        Returns True if it had to be restarted. The control loop may call this
        periodically; `set_link` does. A no-op in netem mode.
        """
        with self._lock:
            if not self.created or self.link_mode != "relay":
                return False
            if self._relay is not None and self._relay.poll() is None:
                return False
            if self._relay is not None:
                self.state.discard_process(self._relay.pid)
            self._start_relay()
            return True

    def _stop_relay(self) -> None:
        if self._relay is None:
            return
        rec = record_process(self._relay.pid, "linkrelay")
        if process_alive(rec):
            terminate([rec], grace_s=3.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._relay.wait(timeout=5)
        self.state.discard_process(self._relay.pid)
        self._relay = None

    # -- netem (kernels that have it) ----------------------------------------
    def _netem_works(self) -> bool:
        """Probe once, on a throw-away veth pair inside the hub."""
        hub = self.hub
        try:
            nsutil.run(["ip", "-n", hub, "link", "add", "ehprobe0", "type", "veth", "peer", "name", "ehprobe1"])
        except BackendError:
            return False
        try:
            out = subprocess.run(
                nsutil.exec_argv(hub, ["tc", "qdisc", "add", "dev", "ehprobe0", "root", "netem", "delay", "1ms"]),
                capture_output=True,
                check=False,
            )
            return out.returncode == 0
        except FileNotFoundError:
            return False
        finally:
            nsutil.run(["ip", "-n", hub, "link", "del", "ehprobe0"], check=False)

    def _netem_setup(self, z: _Zone) -> None:
        """Region -> edge packets leave the hub through the edge bridge: delay them there by
        the whole latency (the round trip grows by `latency_ms`, as in relay mode)."""
        tc = ["tc"]
        hub, dev = self.hub, z.bridge
        priomap = ["1"] * 16
        root = ["qdisc", "replace", "dev", dev, "root", "handle", "1:", "prio", "bands", "3", "priomap", *priomap]
        nsutil.run(nsutil.exec_argv(hub, [*tc, *root]))
        self._netem_apply(z, verb="add")
        for r in self._region:
            flt = ["filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1"]
            match = ["u32", "match", "ip", "src", str(r.subnet), "flowid", "1:3"]
            nsutil.run(nsutil.exec_argv(hub, [*tc, *flt, *match]))

    def _netem_apply(self, z: _Zone, verb: str = "change") -> None:
        delay = [f"{z.link.latency_ms:g}ms"]
        if z.link.jitter_ms > 0:
            delay.append(f"{z.link.jitter_ms:g}ms")
        nsutil.run(
            nsutil.exec_argv(
                self.hub,
                [
                    "tc",
                    "qdisc",
                    verb,
                    "dev",
                    z.bridge,
                    "parent",
                    "1:3",
                    "handle",
                    "30:",
                    "netem",
                    "limit",
                    "100000",
                    "delay",
                    *delay,
                ],
            )
        )


def _set(items: Iterable[str]) -> str:
    """An nft value or anonymous set (a one-element set is written as the value)."""
    values = list(items)
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _kill_ns_processes(ns: str) -> None:
    """Kill whatever still runs in one of our namespaces (it would pin the namespace)."""
    recs = [r for r in (record_process(p) for p in nsutil.ns_pids(ns) if p != os.getpid()) if r.starttime >= 0]
    if recs:
        terminate(recs, grace_s=1.0)
