"""Service-link latency with a netem qdisc on the edge bridge (kernels that have netem)."""

from __future__ import annotations

import subprocess

from harness.backends.local.network import netns as nsutil
from harness.backends.local.network.addresses import NetBase, ZoneNet
from harness.errors import BackendError


class NetemControl(NetBase):
    """Probes for netem and sets the edge bridges' delay qdiscs."""

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

    def _netem_setup(self, z: ZoneNet) -> None:
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

    def _netem_apply(self, z: ZoneNet, verb: str = "change") -> None:
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
