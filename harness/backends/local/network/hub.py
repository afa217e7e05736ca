"""`Network`: the hub, the zone bridges, pod namespaces and the rules between them.

The layout is described in the package docstring; addresses come from
`addresses`, the rules from `nft`, the link latency from `relay` or `netem`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Literal

from harness.backends.local.network import netns as nsutil
from harness.backends.local.network.addresses import CLUSTER_RE, LinkMode, PodNet, ZoneNet, ZoneSpec, _mac
from harness.backends.local.network.netem import NetemControl
from harness.backends.local.network.nft import NftRules
from harness.backends.local.network.relay import RelayControl
from harness.backends.local.state import State, record_process, terminate
from harness.errors import BackendError
from harness.topology.model import ServiceLink


class Network(NftRules, RelayControl, NetemControl):
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
        self._zones: dict[str, ZoneNet] = {}
        for i, spec in enumerate(zones):
            sub = subnets[i + 1]
            self._zones[spec.name] = ZoneNet(spec, i, f"br{i}", sub, sub.network_address + 1, spec.link)
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
            self._stop_relay()
            if nsutil.ns_exists(self.hub):
                nsutil.run(nsutil.exec_argv(self.hub, ["nft", "delete", "table", "inet", self.table]), check=False)
            # every pod's namespace and the hub in one go (a veth goes with its namespace), pods first
            pods = [pn.ns for pn in self._pods.values()]
            _remove_ns(*pods, self.hub)
            for ns in pods:
                if not nsutil.ns_exists(ns):
                    self.state.discard_netns(ns)
            self._pods.clear()
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
            # one `ip -batch` per namespace instead of a process per command: bring-up spawns 3, not 8, per pod
            hub_cmds = (
                f"link add {host_if} address {_mac(0x06, ip)} type veth peer name eth0 address {pn.mac} netns {ns}\n"
                f"link set {host_if} master {z.bridge} up\n"
            )
            nsutil.run(["ip", "-n", self.hub, "-batch", "-"], input=hub_cmds)
            pod_cmds = (
                f"link set lo up\naddr add {ip}/24 dev eth0\nlink set eth0 up\nroute add default via {z.gateway}\n"
            )
            nsutil.run(["ip", "-n", ns, "-batch", "-"], input=pod_cmds)
        except BaseException:
            self.remove_pod(pod)
            raise
        return pn

    def _alloc_ip(self, z: ZoneNet) -> ipaddress.IPv4Address:
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
            if nsutil.ns_exists(self.hub):
                nsutil.run(["ip", "-n", self.hub, "link", "del", pn.host_if], check=False)
            _remove_ns(pn.ns)
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


def _remove_ns(*names: str) -> None:
    """Delete namespaces of ours and kill whatever still holds them (it would keep one alive, unnamed).

    The names go first, so nothing new can enter; then everything inside
    or on its way in (`netns.ns_holders`) is ended, again until none is
    left: a process forking while it is killed can leave a child behind.
    Given a whole cluster's namespaces this costs one `ip` process and one
    pass over /proc per round, not one of each per namespace (an
    interrupted `up` must stop at once).
    """
    idents = nsutil.delete_ns(*names)
    for _ in range(5):
        recs = [r for r in map(record_process, nsutil.ns_holders(idents)) if r.starttime >= 0]
        if not recs:
            return
        terminate(recs, grace_s=1.0)
